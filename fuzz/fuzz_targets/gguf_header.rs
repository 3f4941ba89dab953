//! A GGUF file's header, metadata and tensor table, read as loading reads them: refused or
//! accepted, never a panic or an allocation larger than the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|file: &[u8]| {
    let _ = ferroformers::loading::gguf::GgufHeader::parse(file);
});
