//! The `gpucluster` binary: hands the real arguments and streams to [`gpucluster::run`].

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Not locked for the whole run: `up` forwards workers' output to stdout from its tasks.
    let mut out = std::io::stdout();
    let mut err = std::io::stderr().lock();
    let status = gpucluster::run(std::env::args_os(), &mut out, &mut err);
    // A closed pipe (`gpucluster list | head`) is not worth a second error.
    let _ = out.flush();
    ExitCode::from(status)
}
