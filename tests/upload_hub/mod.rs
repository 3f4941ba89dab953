//! A fake Hub for pushes, shared by the library's tests (`tests/hub_upload.rs`) and the
//! command's (`cli/tests/push.rs`): a local HTTP server that answers the Hub's upload API
//! (repository creation, preupload, git-lfs batch and verify, multipart completion, commit)
//! and a second one that plays the storage LFS objects are PUT to. Both record what they
//! received, and the Hub keeps each repository's files and commits, so the tests check what
//! ends up on the Hub, byte for byte.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// May create repositories and push anywhere.
pub const WRITE_TOKEN: &str = "hf_write";
/// May only read.
pub const READ_TOKEN: &str = "hf_read";
/// May push to repositories that exist but not create any (a fine-grained token).
pub const SCOPED_TOKEN: &str = "hf_scoped";
/// Files above this go through LFS (the Hub's threshold is 10 MB; small keeps the test fast).
pub const LFS_THRESHOLD: usize = 4096;
/// LFS objects above this are uploaded in parts of `PART_SIZE` bytes: ten for `big.bin`, so
/// that part 10 sorts after part 9 only when compared as numbers.
pub const MULTIPART_THRESHOLD: usize = 16 * 1024;
pub const PART_SIZE: usize = 2048;
/// The repository's `.gitignore`, as the fake Hub applies it: files ending so are ignored.
pub const IGNORED_SUFFIX: &str = ".log";
pub const LFS_JSON: &str = "application/vnd.git-lfs+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Hub,
    Storage,
}

/// One request a fake server received, and its answer's status (0: dropped).
#[derive(Debug, Clone)]
pub struct Request {
    pub server: Server,
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A failure the fake servers play once, on the next request of a route.
#[derive(Debug, Clone)]
pub enum Fault {
    Answer(u16, &'static str),
    /// Read half of the body, then close the connection without an answer.
    Drop,
}

#[derive(Debug, Default)]
struct Repo {
    files: BTreeMap<String, Vec<u8>>,
    commits: Vec<Commit>,
    private: bool,
}

#[derive(Debug, Clone)]
pub struct Commit {
    pub oid: String,
    pub summary: String,
    /// Files sent inline, in base64.
    pub inline: Vec<String>,
    /// Files sent by their LFS object.
    pub lfs: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    hub: String,
    storage: String,
    /// By `{kind}:{namespace}/{name}`.
    repos: BTreeMap<String, Repo>,
    /// The LFS storage, by sha256.
    objects: BTreeMap<String, Vec<u8>>,
    /// Parts of multipart uploads, by (oid, part number).
    parts: BTreeMap<(String, usize), Vec<u8>>,
    requests: Vec<Request>,
    faults: Vec<(&'static str, Fault)>,
    commits_made: usize,
}

pub struct FakeHub {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    pub fn start() -> Self {
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let storage = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", hub.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            hub: endpoint.clone(),
            storage: format!("http://{}", storage.local_addr().unwrap()),
            ..State::default()
        }));
        // The threads end with the test process; each connection gets one answer and is closed.
        for (listener, server) in [(hub, Server::Hub), (storage, Server::Storage)] {
            let state = state.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    serve(stream, server, &state);
                }
            });
        }
        Self { endpoint, state }
    }

    pub fn add_repo(&self, kind: &str, id: &str) {
        let mut state = self.state.lock().unwrap();
        state.repos.insert(format!("{kind}:{id}"), Repo::default());
    }

    /// Play `fault` on the next request of `route`.
    pub fn fail_once(&self, route: &'static str, fault: Fault) {
        self.state.lock().unwrap().faults.push((route, fault));
    }

    pub fn take_requests(&self) -> Vec<Request> {
        std::mem::take(&mut self.state.lock().unwrap().requests)
    }

    pub fn files(&self, key: &str) -> BTreeMap<String, Vec<u8>> {
        self.state.lock().unwrap().repos[key].files.clone()
    }

    pub fn commits(&self, key: &str) -> Vec<Commit> {
        self.state.lock().unwrap().repos[key].commits.clone()
    }

    pub fn is_private(&self, key: &str) -> bool {
        self.state.lock().unwrap().repos[key].private
    }
}

/// An answer: status, extra headers, body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

fn answer(status: u16, body: Value) -> Answer {
    (status, Vec::new(), body.to_string().into_bytes())
}

fn error(status: u16, message: &str) -> Answer {
    answer(status, json!({ "error": message }))
}

fn serve(stream: TcpStream, server: Server, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut request = Request {
        server,
        method,
        path,
        headers,
        body: Vec::new(),
        status: 0,
    };
    let route = route_name(&request);
    let fault = {
        let mut state = state.lock().unwrap();
        let index = state.faults.iter().position(|(r, _)| *r == route);
        index.map(|i| state.faults.remove(i).1)
    };
    if let Some(Fault::Drop) = fault {
        // The upload is cut halfway: closing with unread bytes resets the connection.
        let mut half = vec![0; length / 2];
        let _ = reader.read_exact(&mut half);
        state.lock().unwrap().requests.push(request);
        return;
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    request.body = body;
    let (status, extra, body) = match fault {
        Some(Fault::Answer(status, body)) => (status, Vec::new(), body.as_bytes().to_vec()),
        _ => handle(&request, route, &mut state.lock().unwrap()),
    };
    request.status = status;
    state.lock().unwrap().requests.push(request);
    let mut head = format!(
        "HTTP/1.1 {status} Status\r\nContent-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = stream;
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

/// Which endpoint a request is for, by its method and path.
pub fn route_name(request: &Request) -> &'static str {
    let path = request.path.as_str();
    match (request.server, request.method.as_str()) {
        (Server::Storage, "PUT") if path.starts_with("/upload/") => "put",
        (Server::Storage, "PUT") if path.starts_with("/part/") => "part",
        (Server::Hub, "POST") if path == "/api/repos/create" => "create",
        (Server::Hub, "GET") if path.starts_with("/api/") => "repo_info",
        (Server::Hub, "POST") if path.contains("/preupload/") => "preupload",
        (Server::Hub, "POST") if path.ends_with(".git/info/lfs/objects/batch") => "batch",
        (Server::Hub, "POST") if path.ends_with(".git/info/lfs/verify") => "verify",
        (Server::Hub, "POST") if path.starts_with("/lfs-complete/") => "complete",
        (Server::Hub, "POST") if path.contains("/commit/") => "commit",
        _ => "unknown",
    }
}

/// What a token may do: `None` when the Hub does not know it (401).
fn rights(request: &Request) -> Option<(bool, bool)> {
    let token = request.header("authorization")?.strip_prefix("Bearer ")?;
    match token {
        WRITE_TOKEN => Some((true, true)),
        SCOPED_TOKEN => Some((false, true)),
        READ_TOKEN => Some((false, false)),
        _ => None,
    }
}

/// The repository key and the rest of an API path: `/api/{kind}s/{ns}/{name}/{rest}`.
fn api_repo(path: &str) -> Option<(String, &str)> {
    let rest = path.strip_prefix("/api/")?;
    let (kinds, rest) = rest.split_once('/')?;
    let (namespace, rest) = rest.split_once('/')?;
    let (name, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let kind = kinds.strip_suffix('s')?;
    Some((format!("{kind}:{namespace}/{name}"), rest))
}

/// The repository key of a git path: `/{prefix}{ns}/{name}.git/...`.
fn git_repo(path: &str) -> Option<String> {
    let repo = path.strip_prefix('/')?.split(".git/").next()?;
    let (kind, id) = match repo.split_once('/')? {
        ("datasets", id) => ("dataset", id.to_string()),
        ("spaces", id) => ("space", id.to_string()),
        _ => ("model", repo.to_string()),
    };
    Some(format!("{kind}:{id}"))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn handle(request: &Request, route: &str, state: &mut State) -> Answer {
    if request.server == Server::Storage {
        return store(request, route, state);
    }
    if route == "complete" {
        return complete_multipart(request, state);
    }
    let Some((may_create, may_write)) = rights(request) else {
        return error(401, "Invalid credentials in Authorization header");
    };
    match route {
        "create" => create(request, may_create, state),
        "repo_info" => match api_repo(&request.path) {
            Some((key, _)) if state.repos.contains_key(&key) => answer(200, json!({})),
            _ => error(404, "Repository not found"),
        },
        _ if !may_write => error(403, "You don't have the rights to write to this repository"),
        "preupload" => preupload(request, state),
        "batch" => batch(request, state),
        "verify" => verify(request, state),
        "commit" => commit(request, state),
        _ => error(400, "unknown route"),
    }
}

fn create(request: &Request, may_create: bool, state: &mut State) -> Answer {
    if !may_create {
        return error(403, "You don't have the rights to create a repository here");
    }
    let body = request.json();
    let key = format!(
        "{}:{}/{}",
        body["type"].as_str().unwrap(),
        body["organization"].as_str().unwrap(),
        body["name"].as_str().unwrap()
    );
    if state.repos.contains_key(&key) {
        return error(409, "You already created this repo");
    }
    let repo = Repo {
        private: body["private"].as_bool().unwrap(),
        ..Repo::default()
    };
    state.repos.insert(key, repo);
    answer(200, json!({ "url": "created" }))
}

fn preupload(request: &Request, state: &State) -> Answer {
    let Some((key, _)) = api_repo(&request.path) else {
        return error(400, "bad path");
    };
    if !state.repos.contains_key(&key) {
        return error(404, "Repository not found");
    }
    let files: Vec<Value> = request.json()["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| {
            let path = file["path"].as_str().unwrap();
            let size = file["size"].as_u64().unwrap() as usize;
            // The sample is the first 512 bytes, base64: check it decodes to that.
            let sample = BASE64.decode(file["sample"].as_str().unwrap()).unwrap();
            assert_eq!(sample.len(), size.min(512), "sample of {path}");
            let mode = if size > LFS_THRESHOLD { "lfs" } else { "regular" };
            json!({ "path": path, "uploadMode": mode, "shouldIgnore": path.ends_with(IGNORED_SUFFIX) })
        })
        .collect();
    answer(200, json!({ "files": files, "commitOid": "0".repeat(40) }))
}

fn batch(request: &Request, state: &State) -> Answer {
    assert_eq!(request.header("accept"), Some(LFS_JSON));
    assert_eq!(request.header("content-type"), Some(LFS_JSON));
    let body = request.json();
    assert_eq!(body["operation"], "upload");
    assert_eq!(body["hash_algo"], "sha256");
    assert_eq!(body["transfers"], json!(["basic", "multipart"]));
    let repo = git_repo(&request.path).unwrap();
    if !state.repos.contains_key(&repo) {
        return error(404, "Repository not found");
    }
    let git = request.path.trim_end_matches("/objects/batch");
    let verify = json!({ "href": format!("{}{git}/verify", state.hub) });
    let objects: Vec<Value> = body["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|object| {
            let oid = object["oid"].as_str().unwrap();
            let size = object["size"].as_u64().unwrap() as usize;
            if state.objects.get(oid).is_some_and(|o| o.len() == size) {
                return json!({ "oid": oid, "size": size });
            }
            let upload = if size > MULTIPART_THRESHOLD {
                let mut header = json!({ "chunk_size": PART_SIZE.to_string() });
                for part in 1..=size.div_ceil(PART_SIZE) {
                    header[part.to_string()] =
                        json!(format!("{}/part/{oid}/{part}", state.storage));
                }
                json!({ "href": format!("{}/lfs-complete/{oid}", state.hub), "header": header })
            } else {
                json!({
                    "href": format!("{}/upload/{oid}?X-Signature=secret", state.storage),
                    "header": { "x-storage-check": oid },
                })
            };
            json!({ "oid": oid, "size": size, "actions": { "upload": upload, "verify": verify } })
        })
        .collect();
    answer(200, json!({ "transfer": "basic", "objects": objects }))
}

fn store(request: &Request, route: &str, state: &mut State) -> Answer {
    assert!(
        request.header("content-length").is_some(),
        "storage needs Content-Length"
    );
    let mut segments = request.path.trim_start_matches('/').split(['/', '?']);
    let (_, oid) = (segments.next(), segments.next().unwrap().to_string());
    if route == "part" {
        let part: usize = segments.next().unwrap().parse().unwrap();
        let etag = format!("\"etag-{part}-{}\"", request.body.len());
        state.parts.insert((oid, part), request.body.clone());
        return (200, vec![("ETag".to_string(), etag)], Vec::new());
    }
    if request.header("x-storage-check") != Some(oid.as_str()) {
        return error(400, "the upload action's header was not sent");
    }
    if sha256_hex(&request.body) != oid {
        return error(400, "content does not match its oid");
    }
    state.objects.insert(oid, request.body.clone());
    (200, Vec::new(), Vec::new())
}

fn complete_multipart(request: &Request, state: &mut State) -> Answer {
    let body = request.json();
    let oid = body["oid"].as_str().unwrap().to_string();
    let mut content = Vec::new();
    for (index, part) in body["parts"].as_array().unwrap().iter().enumerate() {
        let number = part["partNumber"].as_u64().unwrap() as usize;
        assert_eq!(number, index + 1, "parts in order");
        let bytes = &state.parts[&(oid.clone(), number)];
        let etag = format!("\"etag-{number}-{}\"", bytes.len());
        assert_eq!(part["etag"], json!(etag));
        content.extend_from_slice(bytes);
    }
    if sha256_hex(&content) != oid {
        return error(400, "the parts do not make the object");
    }
    state.objects.insert(oid, content);
    answer(200, json!({}))
}

fn verify(request: &Request, state: &State) -> Answer {
    let body = request.json();
    let stored = state.objects.get(body["oid"].as_str().unwrap());
    match stored {
        Some(bytes) if bytes.len() as u64 == body["size"].as_u64().unwrap() => {
            answer(200, json!({}))
        }
        _ => error(404, "object not stored"),
    }
}

fn commit(request: &Request, state: &mut State) -> Answer {
    assert_eq!(request.header("content-type"), Some("application/x-ndjson"));
    let Some((key, _)) = api_repo(&request.path) else {
        return error(400, "bad path");
    };
    let head = match state.repos.get(&key) {
        Some(repo) => repo.commits.last().map(|c| c.oid.clone()),
        None => return error(404, "Repository not found"),
    };
    let text = String::from_utf8(request.body.clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["key"], "header", "the header comes first");
    let header = &lines[0]["value"];
    if let Some(parent) = header.get("parentCommit") {
        if Some(parent.as_str().unwrap()) != head.as_deref() {
            return error(
                409,
                "A commit has happened since. Please refresh and try again.",
            );
        }
    }
    let (mut files, mut inline, mut lfs) = (BTreeMap::new(), Vec::new(), Vec::new());
    for line in &lines[1..] {
        let value = &line["value"];
        let path = value["path"].as_str().unwrap().to_string();
        match line["key"].as_str().unwrap() {
            "file" => {
                assert_eq!(value["encoding"], "base64");
                let content = BASE64.decode(value["content"].as_str().unwrap()).unwrap();
                files.insert(path.clone(), content);
                inline.push(path);
            }
            "lfsFile" => {
                assert_eq!(value["algo"], "sha256");
                let Some(content) = state.objects.get(value["oid"].as_str().unwrap()) else {
                    return error(422, "LFS object not uploaded");
                };
                assert_eq!(value["size"].as_u64(), Some(content.len() as u64));
                files.insert(path.clone(), content.clone());
                lfs.push(path);
            }
            other => panic!("unexpected commit line {other}"),
        }
    }
    state.commits_made += 1;
    let oid = format!("{:040x}", state.commits_made);
    let repo = state.repos.get_mut(&key).unwrap();
    repo.files.extend(files);
    repo.commits.push(Commit {
        oid: oid.clone(),
        summary: header["summary"].as_str().unwrap().to_string(),
        inline,
        lfs,
    });
    let (kind, id) = key.split_once(':').unwrap();
    let prefix = match kind {
        "model" => String::new(),
        kind => format!("{kind}s/"),
    };
    let url = format!("{}/{prefix}{id}/commit/{oid}", state.hub);
    answer(200, json!({ "commitUrl": url, "commitOid": oid }))
}

// ---- folders and requests, as the tests look at them ----

/// `len` bytes that do not repeat (a hash of the position), different for each `seed`.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A model folder: small files, an empty one, two LFS files with one content (one object), a
/// multipart LFS file, a file the repository's `.gitignore` ignores, and `.git/` and
/// `.cache/` folders that never go up.
pub fn model_folder() -> tempfile::TempDir {
    let folder = tempfile::tempdir().unwrap();
    let weights = bytes(10_000, 1);
    let files: [(&str, Vec<u8>); 10] = [
        ("config.json", br#"{"model_type": "bert"}"#.to_vec()),
        ("README.md", b"# tiny\n".to_vec()),
        ("tokenizer/vocab.txt", b"[PAD]\n[UNK]\nhello\n".to_vec()),
        ("empty.txt", Vec::new()),
        ("model.safetensors", weights.clone()),
        ("copy/model.safetensors", weights),
        ("big.bin", bytes(20_000, 2)),
        ("train.log", b"step 1\n".to_vec()),
        (".git/HEAD", b"ref: refs/heads/main\n".to_vec()),
        (".cache/huggingface/upload/config.json.lock", Vec::new()),
    ];
    for (path, content) in files {
        let path = folder.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    folder
}

/// What should be on the Hub after pushing `folder`: every file but the ignored and skipped.
pub fn expected_files(folder: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![PathBuf::from(folder)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let relative = path
                .strip_prefix(folder)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if path.is_dir() {
                if !relative.ends_with(".git") && !relative.ends_with(".cache") {
                    dirs.push(path);
                }
            } else if !relative.ends_with(IGNORED_SUFFIX) {
                files.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

pub fn routes(requests: &[Request]) -> Vec<&'static str> {
    requests.iter().map(route_name).collect()
}

pub fn count(requests: &[Request], route: &str) -> usize {
    requests.iter().filter(|r| route_name(r) == route).count()
}
