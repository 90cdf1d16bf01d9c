//! `headgate`: only turns the outcome of `cli::run` into an exit code.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match headgate::cli::run(headgate::cli::Cli::parse()) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("headgate: {}", failure.message.trim_end());
            ExitCode::from(failure.code)
        }
    }
}
