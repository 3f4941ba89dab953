//! Pushing a folder without the internet, against the fake Hub of `upload_hub/`: what ends up
//! in the repository (byte for byte, in one commit), which requests carried the token, retries
//! of dropped uploads, resuming a failed push, and the errors of 401, 403 and 409.

mod upload_hub;

use std::path::Path;
use std::time::Duration;

use ferroformers::{push_folder, CommitInfo, Error, HubOptions, RepoKind, UploadOptions};
use serde_json::{json, Value};
use upload_hub::*;

fn hub_options(hub: &FakeHub, token: Option<&str>) -> HubOptions {
    HubOptions::default()
        .with_endpoint(hub.endpoint.clone())
        .with_token(token.map(String::from))
        .with_offline(false)
        .with_progress(false)
}

/// Retries that wait 10 ms, not seconds.
fn options() -> UploadOptions {
    UploadOptions::default().with_retries(3, Duration::from_millis(10))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_folder_goes_up_in_one_commit_small_files_inline_and_large_ones_through_lfs() {
    let hub = FakeHub::start();
    let folder = model_folder();
    let options = options()
        .with_private(true)
        .with_commit_message("Add tiny model")
        .with_commit_description(Some("from the tests".into()));

    let info = push_folder(
        folder.path(),
        "org/tiny",
        &hub_options(&hub, Some(WRITE_TOKEN)),
        &options,
    )
    .unwrap();

    let key = "model:org/tiny";
    assert_eq!(
        hub.files(key),
        expected_files(folder.path()),
        "byte-identical on the Hub"
    );
    let commits = hub.commits(key);
    assert_eq!(commits.len(), 1, "one commit");
    assert_eq!(commits[0].summary, "Add tiny model");
    let regular = strings(&[
        "README.md",
        "config.json",
        "empty.txt",
        "tokenizer/vocab.txt",
    ]);
    let lfs = strings(&["big.bin", "copy/model.safetensors", "model.safetensors"]);
    assert_eq!(commits[0].inline, regular);
    assert_eq!(commits[0].lfs, lfs);
    assert_eq!(
        info,
        CommitInfo {
            commit_url: format!("{}/org/tiny/commit/{}", hub.endpoint, commits[0].oid),
            commit_oid: commits[0].oid.clone(),
            regular_files: regular,
            lfs_files: lfs,
            lfs_already_on_hub: Vec::new(),
            ignored_files: strings(&["train.log"]),
        }
    );
    assert!(hub.is_private(key));

    let requests = hub.take_requests();
    // The repository first; the big file in ten parts and a completion; the single object of
    // the two copies once, in one PUT; each verified; then the commit.
    let mut expected = vec!["create", "preupload", "batch"];
    expected.extend(["part"; 10]);
    expected.extend(["complete", "verify", "put", "verify", "commit"]);
    assert_eq!(routes(&requests), expected);
    assert_eq!(
        requests[0].json(),
        json!({ "name": "tiny", "organization": "org", "type": "model", "private": true })
    );
    for request in &requests {
        let authorization = request.header("authorization");
        match request.server {
            Server::Hub => assert_eq!(authorization, Some("Bearer hf_write"), "{request:?}"),
            // Storage is another host: it must never see the token.
            Server::Storage => assert_eq!(authorization, None, "{}", request.path),
        }
    }
    let commit = String::from_utf8(requests.last().unwrap().body.clone()).unwrap();
    let header: Value = serde_json::from_str(commit.lines().next().unwrap()).unwrap();
    assert_eq!(
        header,
        json!({ "key": "header", "value": { "summary": "Add tiny model", "description": "from the tests" } })
    );
}

#[test]
fn an_existing_repository_is_fine() {
    let hub = FakeHub::start();
    hub.add_repo("model", "org/tiny");
    let folder = model_folder();

    push_folder(
        folder.path(),
        "org/tiny",
        &hub_options(&hub, Some(WRITE_TOKEN)),
        &options(),
    )
    .unwrap();

    let requests = hub.take_requests();
    assert_eq!(route_name(&requests[0]), "create");
    assert_eq!(requests[0].status, 409);
    assert_eq!(hub.files("model:org/tiny"), expected_files(folder.path()));
}

#[test]
fn a_token_that_cannot_create_repositories_pushes_to_an_existing_one() {
    let hub = FakeHub::start();
    hub.add_repo("model", "org/tiny");
    let folder = model_folder();

    push_folder(
        folder.path(),
        "org/tiny",
        &hub_options(&hub, Some(SCOPED_TOKEN)),
        &options(),
    )
    .unwrap();

    let requests = hub.take_requests();
    assert_eq!(routes(&requests[..2]), ["create", "repo_info"]);
    assert_eq!((requests[0].status, requests[1].status), (403, 200));
    assert_eq!(hub.commits("model:org/tiny").len(), 1);
}

#[test]
fn a_dataset_goes_to_the_dataset_endpoints_at_the_revision_given() {
    let hub = FakeHub::start();
    let folder = model_folder();
    let options = options()
        .with_repo_type(RepoKind::Dataset)
        .with_revision("refs/pr/1");
    // A progress bar on: it draws nothing where stderr is not a terminal, and must not get in
    // the way.
    let hub_options = hub_options(&hub, Some(WRITE_TOKEN)).with_progress(true);

    let info = push_folder(folder.path(), "org/data", &hub_options, &options).unwrap();

    assert_eq!(hub.files("dataset:org/data"), expected_files(folder.path()));
    assert!(info.commit_url.contains("/datasets/org/data/commit/"));
    let requests = hub.take_requests();
    assert_eq!(requests[0].json()["type"], "dataset");
    let paths: Vec<&str> = requests
        .iter()
        .filter(|r| r.server == Server::Hub)
        .map(|r| r.path.as_str())
        .collect();
    // The revision is one path segment, and the batch names it as git does.
    assert!(paths.contains(&"/api/datasets/org/data/preupload/refs%2Fpr%2F1"));
    assert!(paths.contains(&"/datasets/org/data.git/info/lfs/objects/batch"));
    assert!(paths.contains(&"/api/datasets/org/data/commit/refs%2Fpr%2F1"));
    let batch = requests.iter().find(|r| route_name(r) == "batch").unwrap();
    assert_eq!(batch.json()["ref"], json!({ "name": "refs/pr/1" }));
}

#[test]
fn a_dropped_upload_and_server_errors_are_retried_until_the_push_completes() {
    let hub = FakeHub::start();
    let folder = model_folder();
    hub.fail_once("batch", Fault::Answer(503, "busy"));
    hub.fail_once("put", Fault::Drop);
    hub.fail_once("part", Fault::Answer(500, "internal error"));

    push_folder(
        folder.path(),
        "org/tiny",
        &hub_options(&hub, Some(WRITE_TOKEN)),
        &options(),
    )
    .unwrap();

    assert_eq!(hub.files("model:org/tiny"), expected_files(folder.path()));
    let requests = hub.take_requests();
    assert_eq!(count(&requests, "batch"), 2);
    let puts: Vec<u16> = requests
        .iter()
        .filter(|r| route_name(r) == "put")
        .map(|r| r.status)
        .collect();
    assert_eq!(puts, [0, 200], "the dropped PUT, then its retry");
    assert_eq!(count(&requests, "part"), 11, "the first part twice");
    assert_eq!(count(&requests, "commit"), 1);
}

#[test]
fn a_push_that_failed_at_the_commit_completes_when_run_again_without_uploading_twice() {
    let hub = FakeHub::start();
    let folder = model_folder();
    let hub_options = hub_options(&hub, Some(WRITE_TOKEN));
    hub.fail_once(
        "commit",
        Fault::Answer(500, r#"{"error": "Internal Error"}"#),
    );

    let error = push_folder(folder.path(), "org/tiny", &hub_options, &options()).unwrap_err();
    let Error::Upload { step, source, .. } = &error else {
        panic!("not an upload error: {error:?}");
    };
    assert_eq!((step.as_str(), source.status()), ("commit", Some(500)));
    assert!(error.to_string().contains("Internal Error"), "{error}");
    assert!(
        error.to_string().contains("pushing again resumes"),
        "{error}"
    );
    let first = hub.take_requests();
    assert_eq!(count(&first, "commit"), 1, "a commit is not retried");
    assert!(hub.commits("model:org/tiny").is_empty());

    let info = push_folder(folder.path(), "org/tiny", &hub_options, &options()).unwrap();

    assert_eq!(hub.files("model:org/tiny"), expected_files(folder.path()));
    assert_eq!(info.lfs_already_on_hub, info.lfs_files);
    let second = hub.take_requests();
    assert!(
        second.iter().all(|r| r.server == Server::Hub),
        "nothing sent to storage again: {:?}",
        routes(&second)
    );
    assert_eq!(routes(&second), ["create", "preupload", "batch", "commit"]);
}

#[test]
fn a_missing_token_says_to_set_hf_token_or_log_in() {
    let hub = FakeHub::start();
    let folder = model_folder();

    let error = push_folder(
        folder.path(),
        "org/tiny",
        &hub_options(&hub, None),
        &options(),
    )
    .unwrap_err();

    let Error::UploadUnauthorized { source, .. } = &error else {
        panic!("not UploadUnauthorized: {error:?}");
    };
    assert_eq!(source.status(), Some(401));
    let message = error.to_string();
    for needle in ["HF_TOKEN", "huggingface-cli login", "missing or invalid"] {
        assert!(message.contains(needle), "{needle}: {message}");
    }
}

#[test]
fn a_read_only_token_says_a_write_token_is_needed() {
    let hub = FakeHub::start();
    let folder = model_folder();

    let error = push_folder(
        folder.path(),
        "org/tiny",
        &hub_options(&hub, Some(READ_TOKEN)),
        &options(),
    )
    .unwrap_err();

    let Error::UploadForbidden { step, source, .. } = &error else {
        panic!("not UploadForbidden: {error:?}");
    };
    assert_eq!(
        (step.as_str(), source.status()),
        ("repository creation", Some(403))
    );
    let message = error.to_string();
    assert!(message.contains("write role"), "{message}");
    assert!(
        message.contains("rights to create"),
        "the Hub's words: {message}"
    );
}

#[test]
fn a_branch_that_moved_since_the_parent_commit_is_a_conflict_that_says_to_push_again() {
    let hub = FakeHub::start();
    let folder = model_folder();
    let hub_options = hub_options(&hub, Some(WRITE_TOKEN));
    let first = push_folder(folder.path(), "org/tiny", &hub_options, &options()).unwrap();
    std::fs::write(folder.path().join("README.md"), "# tiny, again\n").unwrap();
    let stale = options().with_parent_commit(Some("f".repeat(40)));

    let error = push_folder(folder.path(), "org/tiny", &hub_options, &stale).unwrap_err();

    let Error::UploadConflict { step, source, .. } = &error else {
        panic!("not UploadConflict: {error:?}");
    };
    assert_eq!((step.as_str(), source.status()), ("commit", Some(409)));
    assert!(error.to_string().contains("push again"), "{error}");
    // On top of the branch's head, the same push goes through.
    let fresh = options().with_parent_commit(Some(first.commit_oid));
    push_folder(folder.path(), "org/tiny", &hub_options, &fresh).unwrap();
    assert_eq!(hub.files("model:org/tiny")["README.md"], b"# tiny, again\n");
}

#[test]
fn answers_that_are_not_what_the_hub_sends_are_errors_not_panics() {
    let hub = FakeHub::start();
    let folder = model_folder();
    let hub_options = hub_options(&hub, Some(WRITE_TOKEN));
    let cases = [
        ("preupload", "not json"),
        (
            "preupload",
            r#"{"files": [{"path": "README.md", "uploadMode": "carrier-pigeon"}]}"#,
        ),
        ("preupload", r#"{"files": []}"#),
        ("batch", r#"{"objects": 3}"#),
        ("commit", r#"{"commitUrl": 1}"#),
    ];
    for (route, body) in cases {
        hub.fail_once(route, Fault::Answer(200, body));
        let error = push_folder(folder.path(), "org/tiny", &hub_options, &options()).unwrap_err();
        assert!(
            matches!(error, Error::Upload { .. }),
            "{route} {body}: {error:?}"
        );
        assert!(
            error.to_string().contains("is not what the Hub sends"),
            "{route} {body}: {error}"
        );
    }
}

#[test]
fn what_can_be_told_wrong_before_any_request_is_invalid_input() {
    let hub = FakeHub::start();
    let folder = model_folder();
    let online = hub_options(&hub, Some(WRITE_TOKEN));
    let only_git = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(only_git.path().join(".git")).unwrap();
    std::fs::write(only_git.path().join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    let cases = [
        (only_git.path(), "org/tiny", online.clone(), options()),
        (folder.path(), "no-namespace", online.clone(), options()),
        (folder.path(), "org/a?b=c", online.clone(), options()),
        (
            Path::new("/no/such/folder"),
            "org/tiny",
            online.clone(),
            options(),
        ),
        (
            folder.path(),
            "org/tiny",
            online.clone().with_offline(true),
            options(),
        ),
        (
            folder.path(),
            "org/space",
            online.clone(),
            options().with_repo_type(RepoKind::Space),
        ),
    ];
    for (folder, repo, hub_options, options) in cases {
        let error = push_folder(folder, repo, &hub_options, &options).unwrap_err();
        assert!(matches!(error, Error::InvalidInput(_)), "{repo}: {error:?}");
    }
    assert!(hub.take_requests().is_empty());
}
