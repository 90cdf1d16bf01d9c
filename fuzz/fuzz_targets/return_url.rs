//! cargo fuzz run return_url — the check is `headgate::fuzz::return_url` (also run on stable by tests/it/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| headgate::fuzz::return_url(data));
