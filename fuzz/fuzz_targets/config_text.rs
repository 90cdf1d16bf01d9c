//! cargo fuzz run config_text — the check is `headgate::fuzz::config_text` (also run on stable by tests/it/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| headgate::fuzz::config_text(data));
