//! headgate's one integration test binary. Every test runs the real pieces it needs (the headgate binary or
//! library server, the real test IdP, fake Headscale, echo upstream) on its own ephemeral ports and temp
//! directory; processes are killed when their guard drops and their logs are printed when a test fails.

mod harness;

mod api_key_login;
mod assertion;
mod bridge;
mod check_config;
mod cli;
mod config;
mod deploy_files;
mod fake_headscale;
mod gate;
mod headplane_double;
mod identity;
mod identity_headers;
mod idp;
mod login_page;
mod onboarding;
mod serve;
mod sessions;
mod signin;
mod store;
mod streams;
mod users_page;
