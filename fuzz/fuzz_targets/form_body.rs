//! cargo fuzz run form_body — the check is `headgate::fuzz::form_body` (also run on stable by tests/it/fuzz_corpus.rs).
//! Without the `libfuzzer` feature: `form_body <file or directory>...` runs the body over those inputs.
#![cfg_attr(feature = "libfuzzer", no_main)]

#[cfg(feature = "libfuzzer")]
libfuzzer_sys::fuzz_target!(|data: &[u8]| headgate::fuzz::form_body(data));

#[cfg(not(feature = "libfuzzer"))]
fn main() {
    headgate::fuzz::replay_args("form_body", headgate::fuzz::form_body);
}
