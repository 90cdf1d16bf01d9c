//! cargo fuzz run path_policy — the check is `headgate::fuzz::path_policy` (also run on stable by tests/it/fuzz_corpus.rs).
//! Without the `libfuzzer` feature: `path_policy <file or directory>...` runs the body over those inputs.
#![cfg_attr(feature = "libfuzzer", no_main)]

#[cfg(feature = "libfuzzer")]
libfuzzer_sys::fuzz_target!(|data: &[u8]| headgate::fuzz::path_policy(data));

#[cfg(not(feature = "libfuzzer"))]
fn main() {
    headgate::fuzz::replay_args("path_policy", headgate::fuzz::path_policy);
}
