//! cargo fuzz run session_cookie — the check is `headgate::fuzz::session_cookie` (also run on stable by tests/it/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| headgate::fuzz::session_cookie(data));
