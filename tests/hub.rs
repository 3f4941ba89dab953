//! Loading by Hub id without the internet: a local HTTP server that answers the Hub's file API
//! (`/{repo}/resolve/{revision}/{file}` with `X-Repo-Commit`, `ETag` and ranges), and caches
//! laid out like Python's `huggingface_hub`.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::*;
use ferroformers::{
    BertForTokenClassification, BertModel, Error, FromPretrained, HubOptions, LoadOptions,
    Pretrained, Tokenizer,
};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TAG: &str = "v1.0";

/// One request the fake Hub received.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    authorization: Option<String>,
}

/// A minimal Hub: serves `repos` (id -> folder) at `main`, the tag `v1.0` and `COMMIT`.
struct FakeHub {
    endpoint: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeHub {
    fn start(repos: &[(&str, PathBuf)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let repos: HashMap<String, PathBuf> = repos
            .iter()
            .map(|(id, path)| (id.to_string(), path.clone()))
            .collect();
        let log = requests.clone();
        // The thread ends with the test process; every request is answered and closed.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                serve(stream, &repos, &log);
            }
        });
        Self { endpoint, requests }
    }

    fn take_requests(&self) -> Vec<Request> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

fn serve(mut stream: TcpStream, repos: &HashMap<String, PathBuf>, log: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    log.lock().unwrap().push(Request {
        path: path.clone(),
        authorization: headers.get("authorization").cloned(),
    });

    let respond =
        |stream: &mut TcpStream, status: &str, extra: &[(String, String)], body: &[u8]| {
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (name, value) in extra {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        };

    // /{org}/{name}/resolve/{revision}/{file}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let [org, name, "resolve", revision, file] = parts[..] else {
        return respond(&mut stream, "400 Bad Request", &[], b"bad path");
    };
    let Some(folder) = repos.get(&format!("{org}/{name}")) else {
        let headers = [("X-Error-Code".to_string(), "RepositoryNotFound".to_string())];
        return respond(
            &mut stream,
            "404 Not Found",
            &headers,
            b"Repository not found",
        );
    };
    if ![COMMIT, TAG, "main"].contains(&revision) {
        let headers = [("X-Error-Code".to_string(), "RevisionNotFound".to_string())];
        return respond(
            &mut stream,
            "404 Not Found",
            &headers,
            b"Revision not found",
        );
    }
    let commit = ("X-Repo-Commit".to_string(), COMMIT.to_string());
    let Ok(content) = std::fs::read(folder.join(file)) else {
        let headers = [
            commit,
            ("X-Error-Code".to_string(), "EntryNotFound".to_string()),
        ];
        return respond(&mut stream, "404 Not Found", &headers, b"Entry not found");
    };
    let mut hasher = DefaultHasher::new();
    content.hash(&mut hasher);
    let etag = (
        "ETag".to_string(),
        format!("\"{:016x}{:08x}\"", hasher.finish(), content.len()),
    );
    // hf-hub asks `bytes=0-0` for metadata, then `bytes=N-` for the content.
    let range = headers.get("range").and_then(|r| r.strip_prefix("bytes="));
    let (start, end) = match range.and_then(|r| r.split_once('-')) {
        Some((start, end)) => {
            let start: usize = start.parse().unwrap_or(0);
            let end = end
                .parse::<usize>()
                .map_or(content.len() - 1, |e| e.min(content.len() - 1));
            (start, end)
        }
        None => (0, content.len() - 1),
    };
    let content_range = (
        "Content-Range".to_string(),
        format!("bytes {start}-{end}/{}", content.len()),
    );
    respond(
        &mut stream,
        "206 Partial Content",
        &[commit, etag, content_range],
        &content[start..=end],
    );
}

fn hub_options(hub: &FakeHub, cache: &Path) -> HubOptions {
    HubOptions::default()
        .with_endpoint(hub.endpoint.clone())
        .with_cache_dir(cache)
        .with_token(Some("hf_test_token".to_string()))
        .with_offline(false)
        .with_progress(false)
        .with_revision("main")
}

fn files(requests: &[Request]) -> BTreeSet<String> {
    requests
        .iter()
        .map(|r| r.path.rsplit_once('/').unwrap().1.to_string())
        .collect()
}

#[test]
fn downloads_exactly_what_is_needed_then_reuses_the_cache_without_requests() {
    let hub = FakeHub::start(&[("tiny/bert-ner", fixture("bert/token-classification"))]);
    let cache = tempfile::tempdir().unwrap();
    let options = LoadOptions::default().with_hub(hub_options(&hub, cache.path()));
    let reference = reference("bert/token-classification");

    let model = BertForTokenClassification::from_pretrained("tiny/bert-ner", &options).unwrap();
    let tokenizer = Tokenizer::from_pretrained("tiny/bert-ner", &options.hub).unwrap();
    let logits = model.forward(&reference_input(&reference)).unwrap();
    assert_close(&logits, &reference["logits"], 1e-4, "logits after download");
    assert_eq!(tokenizer.token_to_id("[CLS]"), Some(2));

    let requests = hub.take_requests();
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer hf_test_token")),
        "every request carries the token: {requests:?}"
    );
    let expected: BTreeSet<String> = [
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "model-00001-of-00005.safetensors",
        "model-00002-of-00005.safetensors",
        "model-00003-of-00005.safetensors",
        "model-00004-of-00005.safetensors",
        "model-00005-of-00005.safetensors",
        "tokenizer_config.json",
        "tokenizer.json",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // model.safetensors was asked for and is absent; pytorch_model.bin and vocab.txt never are.
    assert_eq!(files(&requests), expected);

    // The cache is laid out as huggingface_hub lays it out.
    let repo = cache.path().join("models--tiny--bert-ner");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let config = repo.join("snapshots").join(COMMIT).join("config.json");
    assert!(config.symlink_metadata().unwrap().file_type().is_symlink());
    assert!(std::fs::canonicalize(&config)
        .unwrap()
        .starts_with(std::fs::canonicalize(repo.join("blobs")).unwrap()));
    assert!(repo
        .join(".no_exist")
        .join(COMMIT)
        .join("model.safetensors")
        .is_file());

    // Second load: everything comes from the cache, the Hub hears nothing.
    let again = BertForTokenClassification::from_pretrained("tiny/bert-ner", &options).unwrap();
    Tokenizer::from_pretrained("tiny/bert-ner", &options.hub).unwrap();
    let logits = again.forward(&reference_input(&reference)).unwrap();
    assert_close(&logits, &reference["logits"], 1e-4, "logits from the cache");
    assert_eq!(
        hub.take_requests().len(),
        0,
        "the second load sent requests"
    );
}

#[test]
fn revision_is_sent_and_recorded_and_a_commit_revision_works_offline() {
    let hub = FakeHub::start(&[("tiny/bert", fixture("bert/base"))]);
    let cache = tempfile::tempdir().unwrap();
    let hub_options = hub_options(&hub, cache.path()).with_revision(TAG);
    let options = LoadOptions::default().with_hub(hub_options.clone());
    BertModel::from_pretrained("tiny/bert", &options).unwrap();
    let requests = hub.take_requests();
    assert!(
        requests.iter().all(|r| r.path.contains("/resolve/v1.0/")),
        "{requests:?}"
    );
    let repo = cache.path().join("models--tiny--bert");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs").join(TAG)).unwrap(),
        COMMIT
    );

    // Offline, by commit hash: straight to snapshots/<commit>, no refs file needed.
    let offline =
        LoadOptions::default().with_hub(hub_options.with_revision(COMMIT).with_offline(true));
    let model = BertModel::from_pretrained("tiny/bert", &offline).unwrap();
    assert_is_the_base_fixture(&model, "offline by commit");
    assert!(hub.take_requests().is_empty());
}

#[test]
fn unknown_repository_is_a_clear_error() {
    let hub = FakeHub::start(&[]);
    let cache = tempfile::tempdir().unwrap();
    let error =
        Pretrained::open("tiny/does-not-exist", &hub_options(&hub, cache.path())).unwrap_err();
    match &error {
        Error::MissingFile { model, file, .. } => {
            assert_eq!(model, "tiny/does-not-exist");
            assert_eq!(file, "config.json");
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }
    assert!(error.to_string().contains("check the model id"), "{error}");
}

/// A port on 127.0.0.1 that refuses connections for as long as the returned socket lives: the
/// socket is bound to it but never listens. A listener bound and dropped would free the port
/// for another test's server (tests run in parallel), which would then answer.
fn refusing_port() -> (OwnedFd, u16) {
    let error = |call: &str| format!("{call}: {}", std::io::Error::last_os_error());
    // SAFETY: plain socket calls on a socket this function owns, with buffers of the sizes
    // given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "{}", error("socket"));
        let socket = OwnedFd::from_raw_fd(fd);
        // No SO_REUSEADDR: no other socket may bind the port while this one holds it.
        let mut address: libc::sockaddr_in = std::mem::zeroed();
        address.sin_family = libc::AF_INET as libc::sa_family_t;
        address.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let mut size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let generic = &mut address as *mut libc::sockaddr_in as *mut libc::sockaddr;
        assert_eq!(libc::bind(fd, generic, size), 0, "{}", error("bind"));
        assert_eq!(
            libc::getsockname(fd, generic, &mut size),
            0,
            "{}",
            error("getsockname")
        );
        (socket, u16::from_be(address.sin_port))
    }
}

#[test]
fn unreachable_hub_is_a_hub_error_with_its_cause() {
    let (_bound, port) = refusing_port();
    let cache = tempfile::tempdir().unwrap();
    let options = HubOptions::default()
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_cache_dir(cache.path())
        .with_offline(false)
        .with_progress(false);
    let error = Pretrained::open("tiny/bert", &options).unwrap_err();
    let Error::Hub { source, .. } = &error else {
        panic!("expected a Hub error, got {error:?}");
    };
    assert_eq!(source.status(), None, "no server answered: {error}");
    // Error -> HubError -> the HTTP client's own error (and on to the OS's, for ureq).
    let chain: Vec<String> =
        std::iter::successors(Some(&error as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .map(|e| e.to_string())
        .collect();
    assert!(chain.len() >= 3, "the cause is kept: {chain:?}");
    assert!(
        chain
            .iter()
            .skip(2)
            .any(|e| e.contains(&port.to_string()) || e.to_ascii_lowercase().contains("refused")),
        "the client's error says what failed: {chain:?}"
    );
}

#[test]
fn server_error_is_a_hub_error_with_its_status() {
    // A Hub that answers every request with 503.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let options = HubOptions::default()
        .with_endpoint(endpoint)
        .with_cache_dir(cache.path())
        .with_offline(false)
        .with_progress(false);
    let error = Pretrained::open("tiny/bert", &options).unwrap_err();
    match &error {
        Error::Hub { source, file, .. } => {
            assert_eq!(source.status(), Some(503), "{error}");
            assert_eq!(file, "config.json");
        }
        other => panic!("expected a Hub error, got {other:?}"),
    }
}

/// A cache written by Python's huggingface_hub: blobs, snapshot symlinks and refs.
fn python_style_cache(root: &Path, repo_id: &str, folder: &Path, skip: &[&str]) {
    let repo = root.join(format!("models--{}", repo_id.replace('/', "--")));
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for entry in std::fs::read_dir(folder).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if skip.contains(&name.as_str()) || name == "reference.safetensors" || name == "inputs.json"
        {
            continue;
        }
        let blob = repo.join("blobs").join(format!("blob-{name}"));
        std::fs::copy(entry.path(), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob-{name}"), snapshot.join(&name))
            .unwrap();
    }
}

#[test]
fn offline_mode_loads_from_a_python_layout_cache() {
    let cache = tempfile::tempdir().unwrap();
    python_style_cache(cache.path(), "tiny/bert", &fixture("bert/base"), &[]);
    let hub = HubOptions::default()
        .with_cache_dir(cache.path())
        .with_offline(true)
        .with_endpoint("http://127.0.0.1:9");
    let options = LoadOptions::default().with_hub(hub.clone());
    let model = BertModel::from_pretrained("tiny/bert", &options).unwrap();
    assert_is_the_base_fixture(&model, "offline model");
    let tokenizer = Tokenizer::from_pretrained("tiny/bert", &hub).unwrap();
    assert_eq!(tokenizer.token_to_id("[MASK]"), Some(4));

    // A revision the cache has never seen.
    let error = Pretrained::open("tiny/bert", &hub.clone().with_revision("dev")).unwrap_err();
    assert!(matches!(error, Error::NotCached { .. }), "{error:?}");
    assert!(error.to_string().contains("HF_HUB_OFFLINE"), "{error}");
}

/// A snapshot folder of that cache, passed as a local folder (as transformers users pass
/// `.../snapshots/<commit>`), loads through its links into `blobs/`; a link out of the
/// repository's cache folder is still refused.
#[test]
fn a_cache_snapshot_loads_as_a_folder() {
    let cache = tempfile::tempdir().unwrap();
    python_style_cache(cache.path(), "tiny/bert", &fixture("bert/base"), &[]);
    let repo = cache.path().join("models--tiny--bert");
    let snapshot = repo.join("snapshots").join(COMMIT);
    let options = LoadOptions::default().with_hub(HubOptions::default().with_offline(true));
    let model = BertModel::from_pretrained(snapshot.to_str().unwrap(), &options).unwrap();
    assert_is_the_base_fixture(&model, "snapshot folder");

    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("config.json");
    std::fs::copy(fixture("bert/base/config.json"), &secret).unwrap();
    std::fs::remove_file(snapshot.join("config.json")).unwrap();
    std::os::unix::fs::symlink(&secret, snapshot.join("config.json")).unwrap();
    let error = BertModel::from_pretrained(snapshot.to_str().unwrap(), &options).unwrap_err();
    assert!(matches!(error, Error::UnsafePath { .. }), "{error:?}");
}

#[test]
fn offline_mode_with_missing_weights_says_so() {
    let cache = tempfile::tempdir().unwrap();
    python_style_cache(
        cache.path(),
        "tiny/bert",
        &fixture("bert/base"),
        &["model.safetensors"],
    );
    let hub = HubOptions::default()
        .with_cache_dir(cache.path())
        .with_offline(true);
    let error =
        BertModel::from_pretrained("tiny/bert", &LoadOptions::default().with_hub(hub)).unwrap_err();
    match &error {
        Error::NotCached { file, model, .. } => {
            assert_eq!(file, "model.safetensors");
            assert_eq!(model, "tiny/bert");
        }
        other => panic!("expected NotCached, got {other:?}"),
    }
}

#[test]
fn local_folder_without_weights_lists_what_was_looked_for() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("bert/base/config.json"),
        folder.path().join("config.json"),
    )
    .unwrap();
    let model = folder.path().to_string_lossy().into_owned();
    let error = BertModel::from_pretrained(&model, &LoadOptions::default()).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("model.safetensors.index.json") && message.contains("pytorch_model.bin"),
        "{message}"
    );
}
