//! cargo fuzz run session_cookie — the check is `headgate::fuzz::session_cookie` (also run on stable by tests/it/fuzz_corpus.rs).
//! Without the `libfuzzer` feature: `session_cookie <file or directory>...` runs the body over those inputs.
#![cfg_attr(feature = "libfuzzer", no_main)]

#[cfg(feature = "libfuzzer")]
libfuzzer_sys::fuzz_target!(|data: &[u8]| headgate::fuzz::session_cookie(data));

#[cfg(not(feature = "libfuzzer"))]
fn main() {
    headgate::fuzz::replay_args("session_cookie", headgate::fuzz::session_cookie);
}
