//! The pickle of a `pytorch_model.bin`, vetted as loading vets it: refused or accepted, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|pickle: &[u8]| {
    let _ = ferroformers::loading::fuzzing::check_pickle(pickle);
});
