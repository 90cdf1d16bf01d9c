//! cargo fuzz run config_text — the check is `headgate::fuzz::config_text` (also run on stable by tests/it/fuzz_corpus.rs).
//! Without the `libfuzzer` feature: `config_text <file or directory>...` runs the body over those inputs.
#![cfg_attr(feature = "libfuzzer", no_main)]

#[cfg(feature = "libfuzzer")]
libfuzzer_sys::fuzz_target!(|data: &[u8]| headgate::fuzz::config_text(data));

#[cfg(not(feature = "libfuzzer"))]
fn main() {
    headgate::fuzz::replay_args("config_text", headgate::fuzz::config_text);
}
