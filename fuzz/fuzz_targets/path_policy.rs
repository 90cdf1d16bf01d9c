//! cargo fuzz run path_policy — the check is `headgate::fuzz::path_policy` (also run on stable by tests/it/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| headgate::fuzz::path_policy(data));
