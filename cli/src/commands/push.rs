//! `ferroformers push`: a folder to a Hub repository in one commit, created when missing, as
//! `huggingface-cli upload` pushes it. The commit's URL is the one line on stdout; the
//! summary and the progress bar go to stderr.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use ferroformers::{push_folder, CommitInfo, HubOptions, RepoKind, UploadOptions};

use crate::error::Result;

/// The options of `push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The folder to upload (everything in it but .git/ and .cache/).
    folder: PathBuf,
    /// The Hub repository, as namespace/name; created when it does not exist.
    repo_id: String,
    /// The branch to commit to.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Create the repository private (an existing one keeps its visibility).
    #[arg(long)]
    private: bool,
    /// The repository's type.
    #[arg(long, value_enum, default_value_t = RepoType::Model)]
    repo_type: RepoType,
    /// The commit's title.
    #[arg(long, default_value_t = UploadOptions::default().commit_message)]
    commit_message: String,
    /// The commit's description.
    #[arg(long)]
    commit_description: Option<String>,
    /// The SDK a new Space runs (--repo-type space).
    #[arg(long, value_parser = ["gradio", "streamlit", "docker", "static"])]
    space_sdk: Option<String>,
    /// A Hub token with write access (default: HF_TOKEN, else the token `huggingface-cli
    /// login` saved; prefer those: a command line is visible to other users).
    #[arg(long)]
    token: Option<String>,
    /// No progress bar, no summary, and no log lines but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RepoType {
    /// A model repository.
    Model,
    /// A dataset repository.
    Dataset,
    /// A Space.
    Space,
}

impl From<RepoType> for RepoKind {
    fn from(repo_type: RepoType) -> Self {
        match repo_type {
            RepoType::Model => RepoKind::Model,
            RepoType::Dataset => RepoKind::Dataset,
            RepoType::Space => RepoKind::Space,
        }
    }
}

/// `ferroformers push`.
pub fn push(args: PushArgs, out: &mut impl Write) -> Result<()> {
    // The Hub's address and the token as the downloads take them (HF_ENDPOINT, HF_TOKEN, the
    // token file), the token of the command line first.
    let hub = HubOptions::from_env().with_progress(!args.quiet);
    let hub = match args.token {
        Some(token) => hub.with_token(Some(token)),
        None => hub,
    };
    let options = UploadOptions::default()
        .with_repo_type(args.repo_type.into())
        .with_revision(args.revision)
        .with_private(args.private)
        .with_commit_message(args.commit_message)
        .with_commit_description(args.commit_description)
        .with_space_sdk(args.space_sdk);
    let info = push_folder(&args.folder, &args.repo_id, &hub, &options)?;
    if !args.quiet {
        eprintln!("{}", summary(&args.repo_id, &info));
    }
    writeln!(out, "{}", info.commit_url)?;
    Ok(())
}

/// "Pushed 7 files to org/name: 4 inline, 3 through LFS (1 already on the Hub); 1 ignored"
fn summary(repo_id: &str, info: &CommitInfo) -> String {
    let (regular, lfs) = (info.regular_files.len(), info.lfs_files.len());
    let mut summary = format!(
        "Pushed {} files to {repo_id}: {regular} inline, {lfs} through LFS",
        regular + lfs
    );
    if !info.lfs_already_on_hub.is_empty() {
        let already = info.lfs_already_on_hub.len();
        summary.push_str(&format!(" ({already} already on the Hub)"));
    }
    if !info.ignored_files.is_empty() {
        let ignored = info.ignored_files.len();
        summary.push_str(&format!(
            "; {ignored} ignored by the repository's .gitignore"
        ));
    }
    summary
}
