//! headgate's one integration test binary. Every test runs the real pieces it needs (the headgate binary or
//! library server, the real test IdP, fake Headscale, echo upstream) on its own ephemeral ports and temp
//! directory; processes are killed when their guard drops and their logs are printed when a test fails.

mod gated;
mod harness;
mod wire;

mod admission;
mod api_key_login;
mod assertion;
mod backchannel;
mod backup;
mod bench_bodies;
mod bridge;
mod bridge_signals;
mod browser_e2e;
mod check_config;
mod cli;
mod config;
mod corpora;
mod crash;
mod deploy_files;
mod fake_headscale;
mod forward_auth;
mod front_proxies;
mod fuzz_corpus;
mod gate;
mod headplane_double;
mod identity;
mod identity_headers;
mod idp;
mod limits;
mod log_secrets;
mod login_page;
mod onboarding;
mod operations;
mod outages;
mod own_rights;
mod policy_matrix;
mod properties;
mod proxy_corpora;
mod replicas;
mod serve;
mod sessions;
mod signin;
mod store;
mod streams;
mod unix_upstream;
mod users_page;
