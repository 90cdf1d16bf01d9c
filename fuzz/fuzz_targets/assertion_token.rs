//! cargo fuzz run assertion_token — the check is `headgate::fuzz::assertion_token` (also run on stable by tests/it/fuzz_corpus.rs).
//! Without the `libfuzzer` feature: `assertion_token <file or directory>...` runs the body over those inputs.
#![cfg_attr(feature = "libfuzzer", no_main)]

#[cfg(feature = "libfuzzer")]
libfuzzer_sys::fuzz_target!(|data: &[u8]| headgate::fuzz::assertion_token(data));

#[cfg(not(feature = "libfuzzer"))]
fn main() {
    headgate::fuzz::replay_args("assertion_token", headgate::fuzz::assertion_token);
}
