//! Feeds arbitrary bytes to the archive verifier: it must return a result,
//! never panic, hang or allocate without bound, whatever the input.
//!
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run verify` from the repo root
//! (cargo-fuzz needs nightly flags; the stable toolchain takes them with
//! RUSTC_BOOTSTRAP). Seed inputs: any backstop archives, copied into
//! `fuzz/corpus/verify/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = backstop_core::archive::reader::verify_bytes(data);
});
