//! `tests/fixtures/MANIFEST.sha256` (written by `scripts/fixture_manifest.py`, which
//! `scripts/make_fixtures.py` runs last) against the files: every fixture has the SHA-256 the
//! manifest lists, none is missing from it, none it lists is absent. A fixture changed by
//! accident (an editor's line endings, a partial checkout, a Git LFS pointer in place of the
//! weights) fails here by name, rather than as a wrong number in some model's test.
//!
//! SHA-256 is computed here (FIPS 180-4, checked against NIST's examples below): the `sha2`
//! crate in Cargo.lock is only a build dependency of the `cuda` feature, so depending on it
//! would compile it and its `digest` stack for every `cargo test`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const MANIFEST: &str = "MANIFEST.sha256";

#[test]
fn every_fixture_matches_the_manifest() {
    let root = Path::new(FIXTURES);
    let text = std::fs::read_to_string(root.join(MANIFEST))
        .unwrap_or_else(|e| panic!("cannot read {FIXTURES}/{MANIFEST}: {e}"));
    let listed = parse(&text);
    let mut on_disk = BTreeSet::new();
    collect(root, "", &mut on_disk);
    on_disk.remove(MANIFEST);
    assert!(!on_disk.is_empty(), "no fixture under {FIXTURES}");

    let mut problems = Vec::new();
    for path in &on_disk {
        let Some(expected) = listed.get(path) else {
            problems.push(format!("{path}: not in {MANIFEST}"));
            continue;
        };
        let bytes = std::fs::read(root.join(path))
            .unwrap_or_else(|e| panic!("cannot read fixture {path}: {e}"));
        let actual = hex(&sha256(&bytes));
        if &actual != expected {
            problems.push(format!(
                "{path}: sha256 {actual}, {MANIFEST} lists {expected}"
            ));
        }
    }
    for path in listed.keys().filter(|path| !on_disk.contains(*path)) {
        problems.push(format!("{path}: in {MANIFEST} but not in tests/fixtures"));
    }
    assert!(
        problems.is_empty(),
        "{} fixture(s) differ from {MANIFEST} (if the change is meant, run \
         `python3 scripts/fixture_manifest.py` and commit the manifest with it):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The manifest's `<sha256>  <path>` lines, as `sha256sum` writes them, by path; it must be
/// sorted, without a path twice, so that regenerating it gives a readable diff.
fn parse(text: &str) -> BTreeMap<String, String> {
    let mut listed = BTreeMap::new();
    let mut previous: Option<&str> = None;
    for (index, line) in text.lines().enumerate() {
        let at = format!("{MANIFEST} line {}", index + 1);
        let (digest, path) = line
            .split_once("  ")
            .unwrap_or_else(|| panic!("{at}: not `<sha256>  <path>`: {line:?}"));
        assert!(
            digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{at}: not a lowercase hex SHA-256: {digest:?}"
        );
        assert!(
            previous.is_none_or(|previous| previous < path),
            "{at}: {path} comes after {previous:?}: the paths must be sorted, each once"
        );
        previous = Some(path);
        listed.insert(path.to_string(), digest.to_string());
    }
    listed
}

/// Every file under `folder`, as paths relative to the fixtures' root with `/` separators
/// (`prefix` is `folder`'s own).
fn collect(folder: &Path, prefix: &str, files: &mut BTreeSet<String>) {
    let entries =
        std::fs::read_dir(folder).unwrap_or_else(|e| panic!("cannot list {folder:?}: {e}"));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {folder:?}: {e}"));
        let name = entry.file_name();
        let name = name
            .to_str()
            .unwrap_or_else(|| panic!("a fixture name that is not UTF-8: {name:?}"));
        let path = format!("{prefix}{name}");
        // Followed like the tests that read them: a link to a folder is a folder.
        if entry.path().is_dir() {
            collect(&entry.path(), &format!("{path}/"), files);
        } else {
            files.insert(path);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (FIPS 180-4, section 6.2) of `message`.
fn sha256(message: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut state: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    // The message, a 1 bit, zeros up to 56 bytes mod 64, and its length in bits (big-endian).
    let mut padded = message.to_vec();
    padded.push(0x80);
    while padded.len() % 64 != 56 {
        padded.push(0);
    }
    padded.extend_from_slice(&((message.len() as u64) * 8).to_be_bytes());
    for block in padded.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (word, bytes) in w.iter_mut().zip(block.chunks_exact(4)) {
            *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        for t in 16..64 {
            let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
            let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
            w[t] = w[t - 16]
                .wrapping_add(s0)
                .wrapping_add(w[t - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = state;
        for t in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let choice = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(choice)
                .wrapping_add(K[t])
                .wrapping_add(w[t]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let majority = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(majority);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (word, value) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *word = word.wrapping_add(value);
        }
    }
    let mut digest = [0u8; 32];
    for (bytes, word) in digest.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    digest
}

/// NIST's SHA-256 examples (one block, two blocks, none), and a length where the padding
/// needs a block of its own (55, 56 and 64 bytes, against `sha256sum`).
#[test]
fn sha256_matches_the_standard() {
    for (message, expected) in [
        (
            b"abc".to_vec(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".to_vec(),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        ),
        (
            Vec::new(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        (
            vec![b'a'; 55],
            "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318",
        ),
        (
            vec![b'a'; 56],
            "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a",
        ),
        (
            vec![b'a'; 64],
            "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb",
        ),
    ] {
        assert_eq!(hex(&sha256(&message)), expected, "{message:?}");
    }
}
