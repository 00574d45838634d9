//! `ghvmm-remote --api-socket PATH <command>`: ch-remote's commands for ghvmm. Prints the
//! response (pretty JSON where there is one); exit code 0 on success (a reader that closed
//! the pipe early included), 1 with one error line on stderr otherwise.

#![forbid(unsafe_code)]

use std::io::Write;
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
    let out = match run(&cli) {
        Ok(out) => out,
        Err(e) => return fail(&e.to_string()),
    };
    if out.is_empty() {
        return ExitCode::SUCCESS;
    }
    match writeln!(std::io::stdout().lock(), "{out}") {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`| head -1`) has what it wanted: no error, as for
        // any other command in a pipe.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(&format!("writing the response: {e}")),
    }
}

fn fail(msg: &str) -> ExitCode {
    let line = vmm::config::cli::error_line(msg);
    eprintln!("ghvmm-remote: error: {line}");
    ExitCode::from(1)
}
