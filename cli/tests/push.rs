//! `ferroformers push` against the fake Hub of the library's tests (`tests/upload_hub/`): the
//! folder ends up in the repository, the commit's URL is the one line on stdout, the Hub and
//! the token come from HF_ENDPOINT and HF_TOKEN (--token first), and a refused token is one
//! line on stderr with exit code 1.

#[path = "../../tests/upload_hub/mod.rs"]
mod upload_hub;

use std::process::{Command, Output};

use upload_hub::*;

/// `ferroformers push ARGS` against `hub`, with `HF_TOKEN` set to `token`, and nothing else
/// of the environment's Hub settings.
fn push(hub: &FakeHub, args: &[&str], token: Option<&str>) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferroformers"));
    command
        .arg("push")
        .args(args)
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", &hub.endpoint)
        .env_remove("HF_TOKEN")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("HF_HUB_OFFLINE");
    if let Some(token) = token {
        command.env("HF_TOKEN", token);
    }
    command.output().unwrap()
}

#[test]
fn push_uploads_the_folder_in_one_commit_and_prints_its_url() {
    let hub = FakeHub::start();
    let folder = model_folder();
    let path = folder.path().to_str().unwrap();
    let args = [
        path,
        "org/tiny",
        "--private",
        "--commit-message",
        "From the CLI",
    ];

    let output = push(&hub, &args, Some(WRITE_TOKEN));

    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stderr}");
    let commits = hub.commits("model:org/tiny");
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].summary, "From the CLI");
    assert_eq!(hub.files("model:org/tiny"), expected_files(folder.path()));
    assert!(hub.is_private("model:org/tiny"));
    let url = format!("{}/org/tiny/commit/{}\n", hub.endpoint, commits[0].oid);
    assert_eq!(String::from_utf8(output.stdout).unwrap(), url);
    let summary = "Pushed 7 files to org/tiny: 4 inline, 3 through LFS; 1 ignored";
    assert!(stderr.contains(summary), "{stderr}");
}

#[test]
fn the_token_flag_goes_first_and_a_refused_token_is_one_line_with_exit_code_1() {
    let hub = FakeHub::start();
    let folder = model_folder();
    let path = folder.path().to_str().unwrap();
    let args = [path, "org/tiny", "--repo-type", "dataset"];

    let refused = push(
        &hub,
        &[&args[..], &["--token", READ_TOKEN]].concat(),
        Some(WRITE_TOKEN),
    );

    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let start =
        "error: pushing to `org/tiny` failed at repository creation: the token cannot write";
    assert!(stderr.starts_with(start), "{stderr}");

    let pushed = push(&hub, &[&args[..], &["--quiet"]].concat(), Some(WRITE_TOKEN));

    assert!(pushed.status.success());
    assert!(
        pushed.stderr.is_empty(),
        "--quiet prints nothing but the URL"
    );
    assert_eq!(hub.commits("dataset:org/tiny").len(), 1);
}
