//! The `gpucluster` binary: hands the real arguments and streams to [`gpucluster::run`].

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Neither stream is locked for the whole run: `up` forwards workers' output from its tasks,
    // the built-in worker reports from a blocking thread, and `bench` draws its progress bar on
    // stderr from another thread. A lock held here would make every one of them wait for ever.
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let status = gpucluster::run(std::env::args_os(), &mut out, &mut err);
    // A closed pipe (`gpucluster list | head`) is not worth a second error.
    let _ = out.flush();
    ExitCode::from(status)
}
