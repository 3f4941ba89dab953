//! Finding a model's files: a local folder, or a Hub repository through `hf-hub`, sharing the
//! cache of Python's `huggingface_hub` (`models--org--name/{refs,blobs,snapshots}`).
//!
//! The cache is read first, so a file that is already there costs no request, and a file the
//! Hub said does not exist is remembered under `.no_exist/<commit>/`, as `huggingface_hub` does.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};

use crate::error::{Error, HubError, Result};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How to reach the Hub. [`HubOptions::default`] reads the same environment variables as
/// Python's `huggingface_hub`: `HF_ENDPOINT`, `HF_TOKEN` (else the token file), `HF_HUB_CACHE`
/// (else `HF_HOME/hub`, else `~/.cache/huggingface/hub`) and `HF_HUB_OFFLINE`.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// A branch, tag or commit hash.
    pub revision: String,
    /// Bearer token for gated or private repositories, and for pushing (a write token).
    pub token: Option<String>,
    /// Folder of the Hub cache (the one holding `models--org--name` folders).
    pub cache_dir: PathBuf,
    /// Base URL of the Hub.
    pub endpoint: String,
    /// Use only the cache; never send a request.
    pub offline: bool,
    /// Show a progress bar while downloading or pushing.
    pub progress: bool,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self::from_env()
    }
}

impl HubOptions {
    /// Options taken from the environment, as `huggingface_hub` reads them.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let hf_home = var("HF_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home_dir().join(".cache").join("huggingface"));
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| {
            let path = var("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home.join("token"));
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        Self {
            revision: "main".to_string(),
            token,
            cache_dir,
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            offline,
            progress: true,
        }
    }

    /// Branch, tag or commit to load (default `main`).
    pub fn with_revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }

    /// Hub access token for gated or private repositories (default `HF_TOKEN`, else the
    /// token file `huggingface-cli login` writes).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The Hub cache folder, shared with Python (default `HF_HUB_CACHE`, else
    /// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub fn with_cache_dir(mut self, cache_dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = cache_dir.into();
        self
    }

    /// The Hub's URL (default `HF_ENDPOINT`, else `https://huggingface.co`): a mirror or a
    /// local server.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// Read only the cache, never the network (default `HF_HUB_OFFLINE`).
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// Show download and upload progress bars on stderr.
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where a model's files come from: a local folder or a Hub repository.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A local folder holding the files.
    Folder(PathBuf),
    /// A Hub repository at one revision, read through the cache.
    Hub(Box<HubRepo>),
}

impl ModelSource {
    /// A local folder when `model` names one, else a Hub model id, as `from_pretrained` decides.
    pub fn new(model: &str, options: &HubOptions) -> Result<Self> {
        let path = Path::new(model);
        if path.is_dir() {
            return Ok(ModelSource::Folder(path.to_path_buf()));
        }
        Ok(ModelSource::Hub(Box::new(HubRepo::new(model, options)?)))
    }

    /// The name to show in messages.
    pub fn name(&self) -> String {
        match self {
            ModelSource::Folder(path) => path.display().to_string(),
            ModelSource::Hub(repo) => repo.model_id.clone(),
        }
    }

    /// The local path of `file`, downloading it if needed; `None` when the model has no such file.
    ///
    /// Every file must resolve inside the model folder (for a Hub model, inside its cache
    /// folder): a symlink or a `..` that leads elsewhere is an error. A folder that is a
    /// snapshot of the Hub cache (`models--org--name/snapshots/<commit>`, as transformers
    /// users pass it) links each file to `../../blobs/`: its repository's cache folder is the
    /// bound then.
    pub fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        let (path, root) = match self {
            ModelSource::Folder(folder) => {
                let path = folder.join(file);
                let root = cache_repo_of_snapshot(folder).unwrap_or_else(|| folder.clone());
                (path.is_file().then_some(path), root)
            }
            ModelSource::Hub(repo) => (repo.get(file)?, repo.repo_dir()),
        };
        match path {
            Some(path) => ensure_inside(&path, &root).map(Some),
            None => Ok(None),
        }
    }

    /// Like [`ModelSource::get`], but a missing file is an error that says where we looked.
    pub fn require(&self, file: &str) -> Result<PathBuf> {
        self.get(file)?
            .ok_or_else(|| self.missing(file, "the model has no such file"))
    }

    /// The error for a file the model needs but does not have.
    pub(crate) fn missing(&self, file: &str, what: &str) -> Error {
        match self {
            ModelSource::Folder(folder) => Error::MissingFile {
                model: self.name(),
                file: file.to_string(),
                hint: format!("{what}; add it to {}", folder.display()),
            },
            ModelSource::Hub(repo) if repo.offline => Error::NotCached {
                model: repo.model_id.clone(),
                revision: repo.revision.clone(),
                file: file.to_string(),
                cache: repo.cache_dir.clone(),
            },
            ModelSource::Hub(repo) => Error::MissingFile {
                model: self.name(),
                file: file.to_string(),
                hint: format!(
                    "{what} at revision `{}` on {}; check the model id and revision",
                    repo.revision, repo.endpoint
                ),
            },
        }
    }
}

/// A Hub model repository at one revision, with the cache that mirrors it.
#[derive(Debug, Clone)]
pub struct HubRepo {
    model_id: String,
    revision: String,
    cache_dir: PathBuf,
    endpoint: String,
    offline: bool,
    api: Option<Api>,
}

impl HubRepo {
    /// The repository `model_id` (`org/name` or `name`) at `options.revision`; an invalid id is
    /// [`Error::InvalidInput`].
    pub fn new(model_id: &str, options: &HubOptions) -> Result<Self> {
        if model_id.is_empty() || model_id.split('/').count() > 2 || model_id.contains("..") {
            return Err(Error::InvalidInput(format!(
                "`{model_id}` is neither a local folder nor a Hub model id like `org/name`"
            )));
        }
        let api = if options.offline {
            None
        } else {
            let api = ApiBuilder::from_cache(hf_hub::Cache::new(options.cache_dir.clone()))
                .with_endpoint(options.endpoint.trim_end_matches('/').to_string())
                .with_token(options.token.clone())
                .with_progress(options.progress)
                .build()
                .map_err(|source| Error::Hub {
                    model: model_id.to_string(),
                    file: String::new(),
                    source: HubError::new(source),
                })?;
            Some(api)
        };
        Ok(Self {
            model_id: model_id.to_string(),
            revision: options.revision.clone(),
            cache_dir: options.cache_dir.clone(),
            endpoint: options.endpoint.clone(),
            offline: options.offline,
            api,
        })
    }

    /// `<cache>/models--org--name`
    fn repo_dir(&self) -> PathBuf {
        self.cache_dir
            .join(format!("models--{}", self.model_id.replace('/', "--")))
    }

    /// The commit the revision points to in the cache: the revision itself when it is a commit
    /// hash, else the content of `refs/<revision>`.
    fn cached_commit(&self) -> Option<String> {
        if is_commit_hash(&self.revision) {
            return Some(self.revision.clone());
        }
        let reference = self.repo_dir().join("refs").join(&self.revision);
        let commit = std::fs::read_to_string(reference).ok()?;
        let commit = commit.trim();
        is_commit_hash(commit).then(|| commit.to_string())
    }

    /// What the cache knows of `file`: `Some(Some(path))` cached, `Some(None)` known to be
    /// absent, `None` unknown.
    fn cached(&self, file: &str) -> Option<Option<PathBuf>> {
        let commit = self.cached_commit()?;
        let path = self.repo_dir().join("snapshots").join(&commit).join(file);
        if path.is_file() {
            return Some(Some(path));
        }
        let marker = self.repo_dir().join(".no_exist").join(&commit).join(file);
        marker.is_file().then_some(None)
    }

    fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        let (model, revision) = (self.model_id.as_str(), self.revision.as_str());
        if let Some(known) = self.cached(file) {
            match &known {
                Some(path) => {
                    tracing::debug!(model, revision, file, path = %path.display(), "cache hit")
                }
                None => tracing::debug!(model, revision, file, "cache: known to be absent"),
            }
            return Ok(known);
        }
        let Some(api) = &self.api else {
            // Offline: a file the cache lacks is a file we do not have.
            tracing::debug!(model, revision, file, "offline and not cached");
            return Ok(None);
        };
        let repo = Repo::with_revision(
            self.model_id.clone(),
            RepoType::Model,
            self.revision.clone(),
        );
        tracing::info!(model, revision, file, endpoint = %self.endpoint, "downloading");
        match api.repo(repo).download(file) {
            Ok(path) => {
                tracing::info!(model, revision, file, path = %path.display(), "downloaded");
                Ok(Some(path))
            }
            Err(ApiError::RequestError(error)) if is_not_found(&error) => {
                tracing::debug!(model, revision, file, "not in the repository (404)");
                self.remember_missing(file, &error);
                Ok(None)
            }
            Err(source) => Err(Error::Hub {
                model: self.model_id.clone(),
                file: file.to_string(),
                source: HubError::new(source),
            }),
        }
    }

    /// Record a 404 under `.no_exist/<commit>/<file>` so the next load asks nothing.
    fn remember_missing(&self, file: &str, error: &ureq::Error) {
        let commit = match error {
            ureq::Error::Status(_, response) => response
                .header("x-repo-commit")
                .map(str::to_string)
                .filter(|c| is_commit_hash(c)),
            ureq::Error::Transport(_) => None,
        };
        let Some(commit) = commit.or_else(|| self.cached_commit()) else {
            return;
        };
        let marker = self.repo_dir().join(".no_exist").join(commit).join(file);
        // The marker is only an optimisation: failing to write it must not fail the load.
        if let Some(parent) = marker.parent() {
            let _ = std::fs::create_dir_all(parent).and_then(|_| std::fs::write(&marker, b""));
        }
    }
}

/// The cache folder of the repository (`models--org--name`) when `folder` is one of its
/// snapshots (`<repo>/snapshots/<commit>`).
fn cache_repo_of_snapshot(folder: &Path) -> Option<PathBuf> {
    let snapshots = folder.parent()?;
    let repo = snapshots.parent()?;
    let repo_name = repo.file_name()?.to_str()?;
    (snapshots.file_name()? == "snapshots" && repo_name.starts_with("models--"))
        .then(|| repo.to_path_buf())
}

/// `path`, after following links, must lie under `root`.
fn ensure_inside(path: &Path, root: &Path) -> Result<PathBuf> {
    let resolved = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    let root = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
    if resolved.starts_with(&root) {
        Ok(path.to_path_buf())
    } else {
        Err(Error::UnsafePath {
            path: path.to_path_buf(),
            root,
        })
    }
}

fn is_not_found(error: &ureq::Error) -> bool {
    matches!(error, ureq::Error::Status(404, _))
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}
