//! Verify an `X-Headgate-Assertion` the way an upstream should (S15), with `headgate::assertion::verify`:
//!
//! ```text
//! cargo run --example verify_assertion -- \
//!     --jwks https://headplane.example.com/_headgate/jwks.json \
//!     --issuer https://headplane.example.com --audience http://127.0.0.1:3000 <token>
//! ```
//!
//! `--jwks` is a URL (http or https) or a file; the token may be `-` to read it from stdin. The algorithm is
//! pinned to ES256 and `typ` to JWT; `jku`, `jwk`, `x5u` and `x5c` in the header are ignored (keys come only from
//! `--jwks`); `iss`, `aud`, `exp` and `nbf` are checked. Prints the claims and exits 0, or prints why the token
//! was refused and exits 1 (2 when the JWKS cannot be read).

#![forbid(unsafe_code)]

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Verify a headgate signed assertion (X-Headgate-Assertion)")]
struct Args {
    /// The JWKS: a URL (e.g. https://headplane.example.com/_headgate/jwks.json) or a file.
    #[arg(long)]
    jwks: String,
    /// The expected `iss`: headgate's server.base_url.
    #[arg(long)]
    issuer: String,
    /// The expected `aud`: this upstream's audience (headers.audience; default the upstream's origin).
    #[arg(long)]
    audience: String,
    /// The token, or `-` to read it from stdin.
    token: String,
}

fn read_jwks(source: &str) -> Result<String, String> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let resp = rt
            .block_on(headgate::http_client::HttpClient::new().get(
                source,
                &[("accept", "application/json")],
                Duration::from_secs(10),
            ))
            .map_err(|e| e.to_string())?;
        if !resp.status.is_success() {
            return Err(format!("{source} answered {}", resp.status));
        }
        Ok(resp.text())
    } else {
        std::fs::read_to_string(source).map_err(|e| format!("cannot read {source}: {e}"))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let token = if args.token == "-" {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            eprintln!("cannot read the token from stdin: {e}");
            return ExitCode::from(2);
        }
        s.trim().to_string()
    } else {
        args.token.trim().to_string()
    };
    let jwks = match read_jwks(&args.jwks) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("cannot get the JWKS: {e}");
            return ExitCode::from(2);
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match headgate::assertion::verify(&jwks, &token, &args.issuer, &args.audience, now) {
        Ok(claims) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&claims).expect("claims serialise")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("refused: {e}");
            ExitCode::from(1)
        }
    }
}
