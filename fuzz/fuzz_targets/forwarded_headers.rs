//! cargo fuzz run forwarded_headers — the check is `headgate::fuzz::forwarded_headers` (also run on stable by tests/it/fuzz_corpus.rs).
//! Without the `libfuzzer` feature: `forwarded_headers <file or directory>...` runs the body over those inputs.
#![cfg_attr(feature = "libfuzzer", no_main)]

#[cfg(feature = "libfuzzer")]
libfuzzer_sys::fuzz_target!(|data: &[u8]| headgate::fuzz::forwarded_headers(data));

#[cfg(not(feature = "libfuzzer"))]
fn main() {
    headgate::fuzz::replay_args("forwarded_headers", headgate::fuzz::forwarded_headers);
}
