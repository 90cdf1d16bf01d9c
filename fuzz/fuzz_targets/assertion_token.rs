//! cargo fuzz run assertion_token — the check is `headgate::fuzz::assertion_token` (also run on stable by tests/it/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| headgate::fuzz::assertion_token(data));
