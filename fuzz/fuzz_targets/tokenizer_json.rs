//! `tokenizer.json` text, loaded through the crate's `Tokenizer` (from a folder holding only
//! that file), then used to encode and decode a text with accents, CJK and emoji. Every step
//! returns a result or a library error, never a panic.
#![no_main]

use std::sync::{Once, OnceLock};

use ferroformers::{EncodeOptions, HubOptions, Tokenizer};
use libfuzzer_sys::fuzz_target;

fn folder() -> &'static tempfile::TempDir {
    static FOLDER: OnceLock<tempfile::TempDir> = OnceLock::new();
    FOLDER.get_or_init(|| tempfile::tempdir().unwrap())
}

fuzz_target!(|text: &[u8]| {
    // libfuzzer-sys's panic hook aborts at the panic, before any `catch_unwind` can catch it.
    // The crate loads tokenizer.json under `catch_unwind` because the tokenizers crate panics
    // on some malformed fields (a documented guarantee, see SECURITY.md), so restore the
    // default hook: a panic the crate catches is its error path, and one it does not catch
    // still reaches libfuzzer-sys's own `catch_unwind`, which aborts and reports the crash.
    static DEFAULT_HOOK: Once = Once::new();
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));

    let folder = folder();
    std::fs::write(folder.path().join("tokenizer.json"), text).unwrap();
    let hub = HubOptions::default().with_offline(true);
    let Ok(tokenizer) = Tokenizer::from_pretrained(&folder.path().to_string_lossy(), &hub) else {
        return;
    };
    let options = EncodeOptions {
        truncation: true,
        max_length: Some(16),
        ..EncodeOptions::default()
    };
    if let Ok(encoding) = tokenizer.encode(("Héllo, wörld! 中文", "🦀 crab"), &options) {
        let _ = tokenizer.decode(encoding.get_ids(), true);
    }
});
