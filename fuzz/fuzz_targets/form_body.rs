//! cargo fuzz run form_body — the check is `headgate::fuzz::form_body` (also run on stable by tests/it/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| headgate::fuzz::form_body(data));
