//! cargo fuzz run forwarded_headers — the check is `headgate::fuzz::forwarded_headers` (also run on stable by tests/it/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| headgate::fuzz::forwarded_headers(data));
