//! `ghvmm-remote --api-socket PATH <command>`: ch-remote's commands for ghvmm. Prints the
//! response (pretty JSON where there is one); exit code 0 on success, 1 with one error line
//! on stderr otherwise.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use vmm::api::client::{arg_error_line, run, RemoteCli};

fn main() -> ExitCode {
    let cli = match RemoteCli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&arg_error_line(&e)),
    };
    match run(&cli) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ExitCode {
    let line = vmm::config::cli::error_line(msg);
    eprintln!("ghvmm-remote: error: {line}");
    ExitCode::from(1)
}
