//! The `gpucluster` binary: hands the real arguments and streams to [`gpucluster::run`].

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let status = gpucluster::run(std::env::args_os(), &mut out, &mut err);
    // A closed pipe (`gpucluster list | head`) is not worth a second error.
    let _ = out.flush();
    ExitCode::from(status)
}
