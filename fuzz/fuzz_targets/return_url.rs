//! cargo fuzz run return_url — the check is `headgate::fuzz::return_url` (also run on stable by tests/it/fuzz_corpus.rs).
//! Without the `libfuzzer` feature: `return_url <file or directory>...` runs the body over those inputs.
#![cfg_attr(feature = "libfuzzer", no_main)]

#[cfg(feature = "libfuzzer")]
libfuzzer_sys::fuzz_target!(|data: &[u8]| headgate::fuzz::return_url(data));

#[cfg(not(feature = "libfuzzer"))]
fn main() {
    headgate::fuzz::replay_args("return_url", headgate::fuzz::return_url);
}
