//! Sharing: a local folder pushed to a Hub repository in one commit, as `huggingface_hub`'s
//! `upload_folder` pushes it (its `push_to_hub` for a saved folder).
//!
//! The steps, and the Hub endpoints they call (the request and answer fields are those of
//! `huggingface_hub`'s
//! [`_commit_api.py`](https://github.com/huggingface/huggingface_hub/blob/ee0a4510f4bc15e26cb722be2efc2bdb01383ca0/src/huggingface_hub/_commit_api.py),
//! [`lfs.py`](https://github.com/huggingface/huggingface_hub/blob/ee0a4510f4bc15e26cb722be2efc2bdb01383ca0/src/huggingface_hub/lfs.py)
//! and `create_repo` in
//! [`hf_api.py`](https://github.com/huggingface/huggingface_hub/blob/ee0a4510f4bc15e26cb722be2efc2bdb01383ca0/src/huggingface_hub/hf_api.py#L4734)):
//!
//! 1. create the repository (`POST /api/repos/create`); a 409 says it exists, which is fine;
//! 2. preupload (`POST /api/{type}s/{id}/preupload/{revision}`): from each file's size and first
//!    512 bytes the Hub says whether it goes through git-lfs or inline in the commit, and
//!    whether the repository's `.gitignore` ignores it;
//! 3. git-lfs's batch API (`POST /{id}.git/info/lfs/objects/batch`) gives upload URLs for the
//!    LFS objects the Hub does not store yet, and none for those it stores: a push that failed
//!    after its uploads sends nothing twice when run again. Each object goes up in one PUT,
//!    or in parts when the Hub asks for it (`chunk_size`), then is verified;
//! 4. one commit (`POST /api/{type}s/{id}/commit/{revision}`, NDJSON): a header line, the small
//!    files inline in base64, the LFS files by their sha256.
//!
//! Why not hf-hub: the 0.4 we pin (see Cargo.toml) only downloads. The protocol is a handful of
//! JSON requests, so we speak it with the same ureq 2 that hf-hub uses (no second HTTP stack),
//! `sha2` for git-lfs's object ids and `base64` for the inline files.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, HubError, Result};
use crate::loading::hub::HubOptions;

/// The Hub's own address, which its answers use in URLs: a request to another endpoint (a
/// mirror, a proxy) goes there instead, as `huggingface_hub` sends it.
const HUB_ENDPOINT: &str = "https://huggingface.co";
/// Files per preupload or LFS batch request, as `huggingface_hub` sends them.
const FILES_PER_REQUEST: usize = 256;
/// The bytes of each file the preupload step sees (the Hub sniffs them for binary content).
const SAMPLE_BYTES: u64 = 512;
const LFS_JSON: &str = "application/vnd.git-lfs+json";
/// Folders never uploaded, at any depth: git's own, and caches (`huggingface_hub` refuses
/// paths under either).
const SKIPPED_FOLDERS: [&str; 2] = [".git", ".cache"];
/// The longest wait between two tries of a request.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(8);

/// The kind of a Hub repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RepoKind {
    /// A model repository (`org/name`).
    #[default]
    Model,
    /// A dataset repository (`datasets/org/name`).
    Dataset,
    /// A Space (`spaces/org/name`).
    Space,
}

impl RepoKind {
    /// The name the Hub API gives it: `model`, `dataset` or `space`.
    pub fn as_str(self) -> &'static str {
        match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
            RepoKind::Space => "space",
        }
    }

    /// The prefix of the repository's URLs (and git remote): models have none.
    fn url_prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "",
            RepoKind::Dataset => "datasets/",
            RepoKind::Space => "spaces/",
        }
    }
}

impl fmt::Display for RepoKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RepoKind {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "model" => Ok(RepoKind::Model),
            "dataset" => Ok(RepoKind::Dataset),
            "space" => Ok(RepoKind::Space),
            _ => Err(Error::InvalidInput(format!(
                "`{name}` is not a repository type: use model, dataset or space"
            ))),
        }
    }
}

/// How [`push_folder`] commits. The Hub's address and token are [`HubOptions`]'
/// (`endpoint`, `token`, `progress`); its `revision` is for downloads, this one's for the push.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Model, dataset or Space (default model).
    pub repo_type: RepoKind,
    /// The branch to commit to (default `main`); it must exist.
    pub revision: String,
    /// Create the repository private when it does not exist (an existing one keeps its
    /// visibility).
    pub private: bool,
    /// The commit's title.
    pub commit_message: String,
    /// The commit's longer description.
    pub commit_description: Option<String>,
    /// Commit only if the branch still points to this commit: the Hub answers 409 when it
    /// moved meanwhile.
    pub parent_commit: Option<String>,
    /// Create the repository first when it does not exist (default true).
    pub create_repo: bool,
    /// The SDK a new Space runs (`gradio`, `streamlit`, `docker` or `static`): creating a
    /// Space needs one.
    pub space_sdk: Option<String>,
    /// How many times a request that can safely be sent again is retried after a dropped
    /// connection, a 408, 429 or 5xx (default 5; the commit itself never is).
    pub max_retries: u32,
    /// The wait before the first retry, doubled at each of the next ones up to 8 s (default 1 s).
    pub retry_wait: Duration,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            repo_type: RepoKind::Model,
            revision: "main".to_string(),
            private: false,
            commit_message: "Upload folder using ferroformers".to_string(),
            commit_description: None,
            parent_commit: None,
            create_repo: true,
            space_sdk: None,
            max_retries: 5,
            retry_wait: Duration::from_secs(1),
        }
    }
}

impl UploadOptions {
    /// Model, dataset or Space.
    pub fn with_repo_type(mut self, repo_type: RepoKind) -> Self {
        self.repo_type = repo_type;
        self
    }

    /// The branch to commit to.
    pub fn with_revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }

    /// Create the repository private.
    pub fn with_private(mut self, private: bool) -> Self {
        self.private = private;
        self
    }

    /// The commit's title.
    pub fn with_commit_message(mut self, message: impl Into<String>) -> Self {
        self.commit_message = message.into();
        self
    }

    /// The commit's description.
    pub fn with_commit_description(mut self, description: Option<String>) -> Self {
        self.commit_description = description;
        self
    }

    /// Commit only on top of this commit.
    pub fn with_parent_commit(mut self, parent_commit: Option<String>) -> Self {
        self.parent_commit = parent_commit;
        self
    }

    /// Whether to create the repository when it does not exist.
    pub fn with_create_repo(mut self, create_repo: bool) -> Self {
        self.create_repo = create_repo;
        self
    }

    /// The SDK of a new Space.
    pub fn with_space_sdk(mut self, space_sdk: Option<String>) -> Self {
        self.space_sdk = space_sdk;
        self
    }

    /// Retries of each request that can be sent again, and the first wait between them.
    pub fn with_retries(mut self, max_retries: u32, first_wait: Duration) -> Self {
        self.max_retries = max_retries;
        self.retry_wait = first_wait;
        self
    }
}

/// The commit [`push_folder`] made, and how each file went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// The commit's page on the Hub.
    pub commit_url: String,
    /// The commit's hash.
    pub commit_oid: String,
    /// Files sent inline in the commit, as paths in the repository (`/`-separated).
    pub regular_files: Vec<String>,
    /// Files committed through git-lfs.
    pub lfs_files: Vec<String>,
    /// The LFS files whose content the Hub already stored, so were not sent again (a subset
    /// of `lfs_files`).
    pub lfs_already_on_hub: Vec<String>,
    /// Files left out because the repository's `.gitignore` ignores them.
    pub ignored_files: Vec<String>,
}

/// Push every file of `folder` (but those under `.git/` and `.cache/`) to the Hub repository
/// `repo_id` (`namespace/name`) in one commit, creating the repository first unless
/// [`UploadOptions::create_repo`] is off.
///
/// Needs a token with write access ([`HubOptions::token`]: `HF_TOKEN` or the file
/// `huggingface-cli login` writes). A push that fails can be run again: the LFS files the
/// first one uploaded are not sent twice.
pub fn push_folder(
    folder: &Path,
    repo_id: &str,
    hub: &HubOptions,
    options: &UploadOptions,
) -> Result<CommitInfo> {
    check_request(repo_id, hub, options)?;
    let files = list_folder(folder)?;
    let pusher = Pusher::new(repo_id, hub, options);
    tracing::info!(repo = repo_id, files = files.len(), endpoint = %pusher.endpoint, "pushing");
    if options.create_repo {
        pusher.create_repo()?;
    }
    let plan = pusher.preupload(files)?;
    let lfs_already_on_hub = pusher.upload_lfs_files(&plan.lfs)?;
    pusher.commit(&plan, lfs_already_on_hub)
}

/// What can be told wrong before any request.
fn check_request(repo_id: &str, hub: &HubOptions, options: &UploadOptions) -> Result<()> {
    check_repo_id(repo_id)?;
    if hub.offline {
        return Err(Error::InvalidInput(
            "HF_HUB_OFFLINE is set, and pushing to the Hub needs the network: unset it".into(),
        ));
    }
    if options.revision.is_empty() {
        return Err(Error::InvalidInput(
            "the revision to push to is empty: name a branch, such as main".into(),
        ));
    }
    if options.create_repo && options.repo_type == RepoKind::Space && options.space_sdk.is_none() {
        return Err(Error::InvalidInput(
            "creating a Space needs its SDK: gradio, streamlit, docker or static".into(),
        ));
    }
    Ok(())
}

/// `namespace/name`, each part as the Hub allows it (letters, digits, `-`, `_`, `.`; no `--`
/// or `..`; neither `-` nor `.` first or last; at most 96 characters). It goes into URLs, so
/// it must not carry anything else.
fn check_repo_id(repo_id: &str) -> Result<()> {
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= 96
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !part.contains("--")
            && !part.contains("..")
            && !part.starts_with(['-', '.'])
            && !part.ends_with(['-', '.'])
    };
    match repo_id.split_once('/') {
        Some((namespace, name)) if valid(namespace) && valid(name) => Ok(()),
        _ => Err(Error::InvalidInput(format!(
            "`{repo_id}` is not a Hub repository id to push to: give it as namespace/name (your \
             user name or an organization, then the repository's name: letters, digits, `-`, \
             `_` and `.`)"
        ))),
    }
}

/// A file of the folder to push.
#[derive(Debug)]
struct LocalFile {
    path: PathBuf,
    /// Its path in the repository, `/`-separated.
    path_in_repo: String,
    size: u64,
}

/// An LFS file with its git-lfs object id (the sha256 of its content).
#[derive(Debug)]
struct LfsFile {
    file: LocalFile,
    oid: String,
}

/// How the Hub said each file goes.
#[derive(Debug, Default)]
struct Plan {
    regular: Vec<LocalFile>,
    lfs: Vec<LfsFile>,
    ignored: Vec<String>,
}

/// Every file under `folder`, sorted by path (the commit lists them in a stable order).
fn list_folder(folder: &Path) -> Result<Vec<LocalFile>> {
    if !folder.is_dir() {
        return Err(Error::InvalidInput(format!(
            "{} is not a folder: push the folder that holds the files",
            folder.display()
        )));
    }
    let mut files = Vec::new();
    collect_files(folder, "", &mut files)?;
    if files.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{} has no files to push (besides .git/ and .cache/)",
            folder.display()
        )));
    }
    files.sort_by(|a, b| a.path_in_repo.cmp(&b.path_in_repo));
    Ok(files)
}

fn collect_files(dir: &Path, prefix: &str, files: &mut Vec<LocalFile>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(Error::InvalidInput(format!(
                "{} is not a UTF-8 name, which a Hub path must be: rename it",
                path.display()
            )));
        };
        let path_in_repo = match prefix {
            "" => name.to_string(),
            _ => format!("{prefix}/{name}"),
        };
        let file_type = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if file_type.is_dir() {
            if !SKIPPED_FOLDERS.contains(&name) {
                collect_files(&path, &path_in_repo, files)?;
            }
            continue;
        }
        // A link counts as the file it points to; links to folders are not followed (a loop
        // would never end) and broken ones are skipped, as `upload_folder` does.
        if let Ok(metadata) = std::fs::metadata(&path) {
            if metadata.is_file() {
                files.push(LocalFile {
                    path,
                    path_in_repo,
                    size: metadata.len(),
                });
            }
        }
    }
    Ok(())
}

/// The first bytes of `path`, which the preupload step sends.
fn read_sample(path: &Path) -> Result<Vec<u8>> {
    let mut sample = Vec::new();
    File::open(path)
        .and_then(|file| file.take(SAMPLE_BYTES).read_to_end(&mut sample))
        .map_err(|e| Error::io(path, e))?;
    Ok(sample)
}

/// The git-lfs object id of `path`: the hex sha256 of its content.
fn sha256_hex(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    File::open(path)
        .and_then(|mut file| std::io::copy(&mut file, &mut hasher))
        .map_err(|e| Error::io(path, e))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// The preupload answer: how each file goes.
#[derive(Debug, Deserialize)]
struct PreuploadAnswer {
    files: Vec<PreuploadFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PreuploadFile {
    path: String,
    upload_mode: UploadMode,
    #[serde(default)]
    should_ignore: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum UploadMode {
    Lfs,
    Regular,
}

/// The git-lfs batch answer: what to do with each object.
#[derive(Debug, Deserialize)]
struct BatchAnswer {
    objects: Vec<BatchObject>,
}

#[derive(Debug, Deserialize)]
struct BatchObject {
    oid: String,
    /// None: the Hub stores this object already.
    #[serde(default)]
    actions: Option<LfsActions>,
    #[serde(default)]
    error: Option<BatchObjectError>,
}

#[derive(Debug, Clone, Deserialize)]
struct LfsActions {
    upload: LfsAction,
    #[serde(default)]
    verify: Option<LfsAction>,
}

#[derive(Debug, Clone, Deserialize)]
struct LfsAction {
    href: String,
    /// Headers to send; for a multipart upload, `chunk_size` and the URL of each part by its
    /// number instead.
    #[serde(default)]
    header: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
struct BatchObjectError {
    code: u16,
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommitAnswer {
    commit_url: String,
    commit_oid: String,
}

/// The Hub answered a request with an error status.
#[derive(Debug, thiserror::Error)]
#[error("{url} answered {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
struct Refused {
    url: String,
    status: u16,
    /// What the Hub said (`X-Error-Message`, or the body's `error`).
    message: String,
}

/// The request got no answer.
#[derive(Debug, thiserror::Error)]
#[error("no answer from {url}: {detail}")]
struct Unreachable {
    url: String,
    detail: String,
    #[source]
    source: ureq::Transport,
}

/// The Hub answered, but not what it sends.
#[derive(Debug, thiserror::Error)]
#[error("the answer of {url} is not what the Hub sends: {what}")]
struct BadAnswer {
    url: String,
    what: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// One push: the HTTP agent and what every request needs.
struct Pusher<'a> {
    agent: ureq::Agent,
    /// The Hub's base URL, without a trailing `/`.
    endpoint: &'a str,
    token: Option<&'a str>,
    repo_id: &'a str,
    options: &'a UploadOptions,
    progress: bool,
}

impl<'a> Pusher<'a> {
    fn new(repo_id: &'a str, hub: &'a HubOptions, options: &'a UploadOptions) -> Self {
        let agent = ureq::AgentBuilder::new()
            .try_proxy_from_env(true)
            .timeout_connect(Duration::from_secs(30))
            // The Hub's redirects stay on the Hub: keep the token across them, as hf-hub does.
            .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
            .user_agent(concat!(
                "ferroformers/",
                env!("CARGO_PKG_VERSION"),
                "; rust"
            ))
            .build();
        Self {
            agent,
            endpoint: hub.endpoint.trim_end_matches('/'),
            token: hub.token.as_deref(),
            repo_id,
            options,
            progress: hub.progress,
        }
    }

    /// `/api/{models,datasets,spaces}/{repo_id}/{action}/{revision}`
    fn api_url(&self, action: &str) -> String {
        format!(
            "{}/api/{}s/{}/{action}/{}",
            self.endpoint,
            self.options.repo_type.as_str(),
            self.repo_id,
            percent_encode(&self.options.revision)
        )
    }

    /// A URL the Hub answered with, sent to our endpoint when it names the Hub's own.
    fn hub_url(&self, url: &str) -> String {
        match url.strip_prefix(HUB_ENDPOINT) {
            Some(rest) if self.endpoint != HUB_ENDPOINT && rest.starts_with('/') => {
                format!("{}{rest}", self.endpoint)
            }
            _ => url.to_string(),
        }
    }

    fn is_hub_url(&self, url: &str) -> bool {
        url.strip_prefix(self.endpoint)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// A request to `url`, with the token when `url` is on the Hub: upload URLs may lead to
    /// storage elsewhere, which must never see it.
    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let request = self.agent.request(method, url);
        match self.token {
            Some(token) if self.is_hub_url(url) => {
                request.set("Authorization", &format!("Bearer {token}"))
            }
            _ => request,
        }
    }

    /// POST `body` as JSON (`content_type` names which JSON), retried as [`Self::retrying`] does.
    fn post_json(
        &self,
        step: &str,
        url: &str,
        content_type: &str,
        body: &Value,
    ) -> Result<ureq::Response> {
        let body = body.to_string();
        self.retrying(step, || {
            self.request("POST", url)
                .set("Accept", content_type)
                .set("Content-Type", content_type)
                .send_string(&body)
                .map_err(Box::new)
        })
    }

    /// `send`, sent again after a transient failure (a dropped connection, 408, 429, 5xx) up
    /// to `max_retries` times, each wait twice the last; then its failure as our error for
    /// `step`. Only for requests that do the same thing when repeated: everything but the
    /// commit. (`send` boxes ureq's error, which holds the whole response.)
    fn retrying(
        &self,
        step: &str,
        mut send: impl FnMut() -> std::result::Result<ureq::Response, Box<ureq::Error>>,
    ) -> Result<ureq::Response> {
        let mut wait = self.options.retry_wait;
        let mut retries_left = self.options.max_retries;
        loop {
            match send() {
                Ok(response) => return Ok(response),
                Err(error) if retries_left > 0 && is_transient(&error) => {
                    tracing::warn!(
                        repo = self.repo_id,
                        step,
                        failure = %describe(&error),
                        ?wait,
                        retries_left,
                        "retrying"
                    );
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(MAX_RETRY_WAIT);
                    retries_left -= 1;
                }
                Err(error) => return Err(self.failure(step, *error)),
            }
        }
    }

    /// Our error for a failed request.
    fn failure(&self, step: &str, error: ureq::Error) -> Error {
        let source = match error {
            ureq::Error::Status(status, response) => {
                let url = shown_url(response.get_url());
                let message = server_message(response);
                HubError::with_status(
                    Some(status),
                    Refused {
                        url,
                        status,
                        message,
                    },
                )
            }
            ureq::Error::Transport(transport) => HubError::with_status(
                None,
                Unreachable {
                    url: transport
                        .url()
                        .map_or_else(String::new, |url| shown_url(url.as_str())),
                    detail: transport_detail(&transport),
                    source: transport,
                },
            ),
        };
        self.error(step, source)
    }

    /// The error variant that says what to do about `source`'s status.
    fn error(&self, step: &str, source: HubError) -> Error {
        let (repo, step) = (self.repo_id.to_string(), step.to_string());
        match source.status() {
            Some(401) => Error::UploadUnauthorized { repo, step, source },
            Some(403) => Error::UploadForbidden { repo, step, source },
            Some(409) => Error::UploadConflict { repo, step, source },
            _ => Error::Upload { repo, step, source },
        }
    }

    /// The Hub answered `url` with something it does not send.
    fn bad_answer(
        &self,
        step: &str,
        url: &str,
        what: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        let source = BadAnswer {
            url: shown_url(url),
            what: what.into(),
            source,
        };
        self.error(step, HubError::with_status(None, source))
    }

    /// The JSON body of a successful answer.
    fn read_json<T: DeserializeOwned>(&self, step: &str, response: ureq::Response) -> Result<T> {
        let url = response.get_url().to_string();
        let body = response.into_string().map_err(|e| {
            self.bad_answer(step, &url, "its body cannot be read", Some(Box::new(e)))
        })?;
        serde_json::from_str(&body).map_err(|e| {
            let what = format!("not the JSON expected ({e})");
            self.bad_answer(step, &url, what, Some(Box::new(e)))
        })
    }

    /// Create the repository; one that exists already is fine.
    fn create_repo(&self) -> Result<()> {
        const STEP: &str = "repository creation";
        let (namespace, name) = self.repo_id.split_once('/').unwrap_or(("", self.repo_id));
        let mut body = json!({
            "name": name,
            "organization": namespace,
            "type": self.options.repo_type.as_str(),
            "private": self.options.private,
        });
        if let Some(sdk) = &self.options.space_sdk {
            body["sdk"] = json!(sdk);
        }
        let url = format!("{}/api/repos/create", self.endpoint);
        match self.post_json(STEP, &url, "application/json", &body) {
            Ok(_) => {
                tracing::info!(repo = self.repo_id, "created the repository");
                Ok(())
            }
            Err(Error::UploadConflict { .. }) => {
                tracing::debug!(repo = self.repo_id, "the repository exists");
                Ok(())
            }
            // A token that may write to this repository but not create repositories (a
            // fine-grained one) is refused here: push when the repository exists, as
            // `create_repo(exist_ok=True)` does.
            Err(error) if cannot_create(&error) && self.repo_exists() => {
                tracing::debug!(repo = self.repo_id, %error, "cannot create the repository, but it exists");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    fn repo_exists(&self) -> bool {
        let url = format!(
            "{}/api/{}s/{}",
            self.endpoint,
            self.options.repo_type.as_str(),
            self.repo_id
        );
        self.request("GET", &url).call().is_ok()
    }

    /// Ask the Hub how each file goes: inline, through LFS, or not at all.
    fn preupload(&self, files: Vec<LocalFile>) -> Result<Plan> {
        const STEP: &str = "preupload";
        let url = self.api_url("preupload");
        let mut answers = HashMap::new();
        for chunk in files.chunks(FILES_PER_REQUEST) {
            let mut described = Vec::with_capacity(chunk.len());
            for file in chunk {
                described.push(json!({
                    "path": file.path_in_repo,
                    "sample": BASE64.encode(read_sample(&file.path)?),
                    "size": file.size,
                }));
            }
            let response = self.post_json(
                STEP,
                &url,
                "application/json",
                &json!({ "files": described }),
            )?;
            let answer: PreuploadAnswer = self.read_json(STEP, response)?;
            for file in answer.files {
                answers.insert(file.path.clone(), file);
            }
        }
        let mut plan = Plan::default();
        for file in files {
            let Some(answer) = answers.get(&file.path_in_repo) else {
                let what = format!("it says nothing of {}", file.path_in_repo);
                return Err(self.bad_answer(STEP, &url, what, None));
            };
            if answer.should_ignore {
                plan.ignored.push(file.path_in_repo);
            } else if answer.upload_mode == UploadMode::Regular || file.size == 0 {
                // Empty files go inline whatever the answer: storage refuses empty uploads.
                plan.regular.push(file);
            } else {
                let oid = sha256_hex(&file.path)?;
                plan.lfs.push(LfsFile { file, oid });
            }
        }
        Ok(plan)
    }

    /// Upload the LFS files the Hub does not store yet; the paths of those it stores already.
    fn upload_lfs_files(&self, files: &[LfsFile]) -> Result<Vec<String>> {
        let mut already_on_hub = Vec::new();
        let mut uploads = Vec::new();
        for chunk in files.chunks(FILES_PER_REQUEST) {
            for (file, actions) in self.lfs_batch(chunk)? {
                match actions {
                    Some(actions) => uploads.push((file, actions)),
                    None => already_on_hub.push(file.file.path_in_repo.clone()),
                }
            }
        }
        // Files with the same content share their object: it goes up once.
        let mut uploaded = std::collections::HashSet::new();
        uploads.retain(|(file, _)| uploaded.insert(file.oid.clone()));
        let total = uploads.iter().map(|(file, _)| file.file.size).sum();
        let bar = self.progress_bar(total, uploads.len());
        for (file, actions) in &uploads {
            self.upload_lfs_object(file, actions, &bar)?;
        }
        bar.finish();
        Ok(already_on_hub)
    }

    fn progress_bar(&self, bytes: u64, files: usize) -> ProgressBar {
        if !self.progress || files == 0 {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(bytes);
        let template =
            "{msg} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_message(format!("Uploading {files} LFS file(s)"));
        bar
    }

    /// The batch answer for `files`: each file with its upload actions, none when the Hub
    /// stores its content already.
    fn lfs_batch<'f>(
        &self,
        files: &'f [LfsFile],
    ) -> Result<Vec<(&'f LfsFile, Option<LfsActions>)>> {
        const STEP: &str = "LFS batch";
        let url = format!(
            "{}/{}{}.git/info/lfs/objects/batch",
            self.endpoint,
            self.options.repo_type.url_prefix(),
            self.repo_id
        );
        // Files with the same content share one object: ask for it once.
        let mut asked = std::collections::HashSet::new();
        let objects: Vec<Value> = files
            .iter()
            .filter(|f| asked.insert(&f.oid))
            .map(|f| json!({ "oid": f.oid, "size": f.file.size }))
            .collect();
        let body = json!({
            "operation": "upload",
            "transfers": ["basic", "multipart"],
            "objects": objects,
            "hash_algo": "sha256",
            "ref": { "name": self.options.revision },
        });
        let response = self.post_json(STEP, &url, LFS_JSON, &body)?;
        let answer: BatchAnswer = self.read_json(STEP, response)?;
        let mut actions_by_oid = HashMap::new();
        for object in answer.objects {
            if let Some(error) = object.error {
                let refused = Refused {
                    url: shown_url(&url),
                    status: error.code,
                    message: format!("object {}: {}", object.oid, error.message),
                };
                return Err(self.error(STEP, HubError::with_status(Some(error.code), refused)));
            }
            actions_by_oid.insert(object.oid, object.actions);
        }
        let mut planned = Vec::with_capacity(files.len());
        for file in files {
            let Some(actions) = actions_by_oid.get(&file.oid) else {
                let what = format!(
                    "it says nothing of the object of {}",
                    file.file.path_in_repo
                );
                return Err(self.bad_answer(STEP, &url, what, None));
            };
            planned.push((file, actions.clone()));
        }
        Ok(planned)
    }

    /// Upload one LFS object as the batch answer says, in one PUT or in parts, then verify it.
    fn upload_lfs_object(
        &self,
        file: &LfsFile,
        actions: &LfsActions,
        bar: &ProgressBar,
    ) -> Result<()> {
        let path = &file.file.path_in_repo;
        let step = format!("LFS upload of {path}");
        let upload = &actions.upload;
        let url = self.hub_url(&upload.href);
        match chunk_size(&upload.header) {
            Err(what) => return Err(self.bad_answer(&step, &url, what, None)),
            Ok(Some(chunk_size)) => self.upload_parts(&step, file, upload, chunk_size, bar)?,
            Ok(None) => {
                let headers = header_values(&upload.header);
                self.put_range(&step, &url, &headers, &file.file, 0..file.file.size, bar)?;
            }
        }
        if let Some(verify) = &actions.verify {
            let step = format!("LFS verification of {path}");
            let url = self.hub_url(&verify.href);
            let body = json!({ "oid": file.oid, "size": file.file.size }).to_string();
            self.retrying(&step, || {
                let mut request = self.request("POST", &url);
                for (name, value) in header_values(&verify.header) {
                    request = request.set(&name, &value);
                }
                request
                    .set("Accept", LFS_JSON)
                    .set("Content-Type", LFS_JSON)
                    .send_string(&body)
                    .map_err(Box::new)
            })?;
        }
        tracing::debug!(repo = self.repo_id, path, oid = file.oid, "uploaded");
        Ok(())
    }

    /// A multipart upload: each part PUT to its URL, then the parts' ETags POSTed to `href`.
    fn upload_parts(
        &self,
        step: &str,
        file: &LfsFile,
        upload: &LfsAction,
        chunk_size: u64,
        bar: &ProgressBar,
    ) -> Result<()> {
        let completion_url = self.hub_url(&upload.href);
        let part_urls = part_urls(&upload.header, file.file.size, chunk_size)
            .map_err(|what| self.bad_answer(step, &completion_url, what, None))?;
        let mut parts = Vec::with_capacity(part_urls.len());
        for (index, url) in part_urls.iter().enumerate() {
            let start = index as u64 * chunk_size;
            let end = (start + chunk_size).min(file.file.size);
            let response = self.put_range(step, url, &[], &file.file, start..end, bar)?;
            let Some(etag) = response.header("etag").filter(|etag| !etag.is_empty()) else {
                let what = format!("no ETag for part {}", index + 1);
                return Err(self.bad_answer(step, url, what, None));
            };
            parts.push(json!({ "partNumber": index + 1, "etag": etag }));
        }
        let completion = json!({ "oid": file.oid, "parts": parts });
        self.post_json(step, &completion_url, LFS_JSON, &completion)?;
        Ok(())
    }

    /// PUT the `bytes` of `file`, read again from the file at each try.
    fn put_range(
        &self,
        step: &str,
        url: &str,
        headers: &[(String, String)],
        file: &LocalFile,
        bytes: Range<u64>,
        bar: &ProgressBar,
    ) -> Result<ureq::Response> {
        let (offset, length) = (bytes.start, bytes.end - bytes.start);
        let content = File::open(&file.path).map_err(|e| Error::io(&file.path, e))?;
        let start = bar.position();
        self.retrying(step, || {
            bar.set_position(start);
            let mut content = &content;
            content
                .seek(SeekFrom::Start(offset))
                .map_err(|e| Box::new(e.into()))?;
            let mut request = self.request("PUT", url);
            for (name, value) in headers {
                request = request.set(name, value);
            }
            // Storage wants the length up front: no chunked bodies.
            request
                .set("Content-Length", &length.to_string())
                .send(bar.wrap_read(content.take(length)))
                .map_err(Box::new)
        })
    }

    /// The one commit: a header line, then a line per file, inline or by its LFS object.
    fn commit(&self, plan: &Plan, lfs_already_on_hub: Vec<String>) -> Result<CommitInfo> {
        const STEP: &str = "commit";
        let body = self.commit_body(plan)?;
        let url = self.api_url("commit");
        tracing::info!(
            repo = self.repo_id,
            regular = plan.regular.len(),
            lfs = plan.lfs.len(),
            "committing"
        );
        // Sent once: a commit whose answer got lost would be made twice. Pushing again is
        // what to do instead, and costs little (the LFS objects are on the Hub by then).
        let response = self
            .request("POST", &url)
            .set("Content-Type", "application/x-ndjson")
            .send_bytes(&body)
            .map_err(|e| self.failure(STEP, e))?;
        let answer: CommitAnswer = self.read_json(STEP, response)?;
        Ok(CommitInfo {
            commit_url: answer.commit_url,
            commit_oid: answer.commit_oid,
            regular_files: plan
                .regular
                .iter()
                .map(|f| f.path_in_repo.clone())
                .collect(),
            lfs_files: plan
                .lfs
                .iter()
                .map(|f| f.file.path_in_repo.clone())
                .collect(),
            lfs_already_on_hub,
            ignored_files: plan.ignored.clone(),
        })
    }

    fn commit_body(&self, plan: &Plan) -> Result<Vec<u8>> {
        let options = self.options;
        let mut header = json!({
            "summary": options.commit_message,
            "description": options.commit_description.as_deref().unwrap_or(""),
        });
        if let Some(parent) = &options.parent_commit {
            header["parentCommit"] = json!(parent);
        }
        let mut lines = vec![json!({ "key": "header", "value": header })];
        for file in &plan.regular {
            let content = std::fs::read(&file.path).map_err(|e| Error::io(&file.path, e))?;
            lines.push(json!({ "key": "file", "value": {
                "content": BASE64.encode(content),
                "path": file.path_in_repo,
                "encoding": "base64",
            }}));
        }
        for file in &plan.lfs {
            lines.push(json!({ "key": "lfsFile", "value": {
                "path": file.file.path_in_repo,
                "algo": "sha256",
                "oid": file.oid,
                "size": file.file.size,
            }}));
        }
        let mut body = Vec::new();
        for line in lines {
            body.extend_from_slice(line.to_string().as_bytes());
            body.push(b'\n');
        }
        Ok(body)
    }
}

/// The Hub's refusals of a repository creation that an existing repository may lie behind:
/// 401 and 403 (the token may not create repositories), 402 (a paid Space).
fn cannot_create(error: &Error) -> bool {
    match error {
        Error::UploadUnauthorized { .. } | Error::UploadForbidden { .. } => true,
        Error::Upload { source, .. } => source.status() == Some(402),
        _ => false,
    }
}

/// A dropped connection or a status that says "try again later".
fn is_transient(error: &ureq::Error) -> bool {
    match error {
        ureq::Error::Status(status, _) => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
        ureq::Error::Transport(transport) => matches!(
            transport.kind(),
            ureq::ErrorKind::Io | ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::BadStatus
        ),
    }
}

/// A failure in a log line: no URL (an upload URL's query is a credential).
fn describe(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Status(status, _) => format!("status {status}"),
        ureq::Error::Transport(transport) => transport_detail(transport),
    }
}

/// Why a request got no answer, without its URL: the kind, the client's message, and the
/// first cause ("Network Error: Connection reset by peer (os error 104)").
fn transport_detail(transport: &ureq::Transport) -> String {
    let mut detail = transport.kind().to_string();
    if let Some(message) = transport.message() {
        detail.push_str(&format!(": {message}"));
    }
    let mut cause = std::error::Error::source(transport);
    while let Some(next) = cause.and_then(std::error::Error::source) {
        cause = Some(next);
    }
    if let Some(cause) = cause {
        detail.push_str(&format!(": {cause}"));
    }
    detail
}

/// A URL to show in a message: without its query, which for storage URLs is a signature.
fn shown_url(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

/// What the Hub said about an error: its `X-Error-Message` header, else the body's `error`
/// (a string or a list of them), else the body itself, shortened.
fn server_message(response: ureq::Response) -> String {
    if let Some(message) = response.header("x-error-message") {
        return message.to_string();
    }
    let body = response.into_string().unwrap_or_default();
    match serde_json::from_str::<Value>(&body)
        .ok()
        .map(|v| v["error"].clone())
    {
        Some(Value::String(message)) => message,
        Some(Value::Array(messages)) => messages
            .iter()
            .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join("; "),
        _ => body.trim().chars().take(300).collect(),
    }
}

/// The `chunk_size` of an upload action's header: there, the upload goes in parts.
fn chunk_size(header: &BTreeMap<String, Value>) -> std::result::Result<Option<u64>, String> {
    let Some(value) = header.get("chunk_size") else {
        return Ok(None);
    };
    let size = match value {
        Value::String(s) => s.parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    match size {
        Some(size) if size > 0 => Ok(Some(size)),
        _ => Err(format!("chunk_size `{value}` is not a positive integer")),
    }
}

/// The URL of each part, in order: the header's numbered entries, one per `chunk_size` bytes.
fn part_urls(
    header: &BTreeMap<String, Value>,
    size: u64,
    chunk_size: u64,
) -> std::result::Result<Vec<String>, String> {
    let mut parts: Vec<(u64, String)> = Vec::new();
    for (name, value) in header {
        if let Ok(number) = name.parse::<u64>() {
            let Some(url) = value.as_str() else {
                return Err(format!("the URL of part {number} is not a string"));
            };
            parts.push((number, url.to_string()));
        }
    }
    parts.sort_by_key(|(number, _)| *number);
    let expected = size.div_ceil(chunk_size);
    if parts.len() as u64 != expected {
        return Err(format!(
            "{} part URLs for {size} bytes in chunks of {chunk_size} (expected {expected})",
            parts.len()
        ));
    }
    Ok(parts.into_iter().map(|(_, url)| url).collect())
}

/// An action's headers as strings (the Hub may write numbers).
fn header_values(header: &BTreeMap<String, Value>) -> Vec<(String, String)> {
    header
        .iter()
        .map(|(name, value)| match value {
            Value::String(s) => (name.clone(), s.clone()),
            other => (name.clone(), other.to_string()),
        })
        .collect()
}

/// `text` as one URL path segment: every byte but the unreserved ones escaped (a branch
/// such as `refs/pr/1` stays one segment), as `huggingface_hub` quotes revisions.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_must_be_namespace_and_name_without_anything_a_url_would_read() {
        for good in ["org/name", "user/my-model.v2", "a/b_c"] {
            assert!(check_repo_id(good).is_ok(), "{good}");
        }
        for bad in [
            "name",
            "org/",
            "/name",
            "a/b/c",
            "org/na--me",
            "org/a..b",
            "org/-x",
            "org/x.",
            "org/a?b",
            "org/a b",
            "org/a#b",
        ] {
            assert!(check_repo_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn revisions_stay_one_path_segment() {
        assert_eq!(percent_encode("main"), "main");
        assert_eq!(percent_encode("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(percent_encode("v1.0 beta"), "v1.0%20beta");
    }

    #[test]
    fn part_urls_come_in_order_and_must_cover_the_file() {
        let header: BTreeMap<String, Value> = serde_json::from_str(
            r#"{"chunk_size": "4", "10": "u10", "2": "u2", "1": "u1", "3": "u3", "4": "u4",
                "5": "u5", "6": "u6", "7": "u7", "8": "u8", "9": "u9"}"#,
        )
        .unwrap();
        assert_eq!(chunk_size(&header), Ok(Some(4)));
        let urls = part_urls(&header, 40, 4).unwrap();
        assert_eq!(urls[..3], ["u1", "u2", "u3"]);
        assert_eq!(urls[9], "u10");
        assert!(part_urls(&header, 41, 4).is_err());
        let zero: BTreeMap<String, Value> = serde_json::from_str(r#"{"chunk_size": 0}"#).unwrap();
        assert!(chunk_size(&zero).is_err());
    }
}
