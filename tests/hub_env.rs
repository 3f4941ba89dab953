//! `HubOptions::from_env` reads what Python's huggingface_hub reads. One test in its own binary,
//! since it changes the process environment.

use std::path::PathBuf;

use ferroformers::HubOptions;

#[test]
fn environment_variables_configure_the_hub_like_huggingface_hub() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), "hf_from_file\n").unwrap();
    for name in [
        "HF_HUB_CACHE",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_ENDPOINT",
        "HF_HUB_OFFLINE",
    ] {
        std::env::remove_var(name);
    }
    std::env::set_var("HF_HOME", home.path());

    let options = HubOptions::from_env();
    assert_eq!(options.cache_dir, home.path().join("hub"));
    assert_eq!(options.token.as_deref(), Some("hf_from_file"));
    assert_eq!(options.endpoint, "https://huggingface.co");
    assert_eq!(options.revision, "main");
    assert!(!options.offline);

    std::env::set_var("HF_HUB_CACHE", "/elsewhere/hub");
    std::env::set_var("HF_TOKEN", "hf_from_env");
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:8080");
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let options = HubOptions::from_env();
    assert_eq!(options.cache_dir, PathBuf::from("/elsewhere/hub"));
    assert_eq!(options.token.as_deref(), Some("hf_from_env"));
    assert_eq!(options.endpoint, "http://127.0.0.1:8080");
    assert!(options.offline);
}
