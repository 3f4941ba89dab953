//! `rust-version` in Cargo.toml is checked here, since only one stable toolchain is at hand:
//! it is at least the highest `rust-version` among the crates we build on (else it promises
//! a toolchain that cannot build us), and at most the compiler running this test (else the
//! promise is untested).

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// `1.89` or `1.89.0` as (1, 89, 0).
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.trim().split('.').map(|p| p.parse::<u64>().unwrap());
    let major = parts.next().unwrap();
    (major, parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn rust_version_covers_every_dependency_and_is_this_compiler_or_older() {
    let cargo = env!("CARGO");
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages: HashMap<&str, &Value> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let ours = packages
        .values()
        .find(|p| p["name"] == "ferroformers")
        .unwrap();
    let declared = version(ours["rust_version"].as_str().expect("rust-version is set"));

    // Our dependencies of every kind, then theirs (normal and build) down the graph.
    let mut seen = BTreeSet::new();
    let mut todo = vec![ours["id"].as_str().unwrap()];
    while let Some(id) = todo.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let is_ours = id == ours["id"].as_str().unwrap();
            let kinds = dep["dep_kinds"].as_array().unwrap();
            let followed = is_ours || kinds.iter().any(|k| k["kind"] != "dev");
            let dep_id = dep["pkg"].as_str().unwrap();
            if followed && seen.insert(dep_id) {
                todo.push(dep_id);
            }
        }
    }
    assert!(
        seen.len() > 50,
        "the whole graph was walked: {}",
        seen.len()
    );
    let (needed, by) = seen
        .iter()
        .filter_map(|id| {
            let p = packages[id];
            Some((version(p["rust_version"].as_str()?), p["name"].as_str()?))
        })
        .max()
        .unwrap();
    assert!(
        declared >= needed,
        "rust-version {declared:?} is older than {by}'s {needed:?}: raise it"
    );

    // The rustc beside the cargo that runs this test.
    let rustc = std::path::Path::new(cargo).with_file_name("rustc");
    let output = Command::new(&rustc).arg("--version").output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let running = version(
        text.split_whitespace()
            .nth(1)
            .unwrap()
            .split('-')
            .next()
            .unwrap(),
    );
    assert!(
        declared <= running,
        "rust-version {declared:?} is newer than the compiler testing it ({text})"
    );
}
