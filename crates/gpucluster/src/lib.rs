//! The `gpucluster` command line: parses arguments, calls the library crates, formats output.
//!
//! This crate owns the user-facing text and JSON, exit statuses and the glue between the
//! libraries. It holds no policy and touches no device itself: measuring is
//! `transport::measure` (driven for `bench transport` by `launcher::transport_bench`), a plan's
//! paths `launcher::plan_paths`. [`run`] is the whole program, so tests can drive it
//! in process; `main.rs` only hands it the real arguments and streams.

mod args;
mod bench;
mod bench_dask;
mod cli;
mod dask;
mod doctor;
mod list;
mod logging;
mod plan;
mod table;
mod up;

use std::ffi::OsString;
use std::io::Write;

use clap::Parser;
use cluster_core::wording::topology_remedy;

pub use cli::Cli;

/// Runs the program with `args` (the first is the program name), writing to `out` and `err`.
/// Returns the exit status.
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // `gpucluster guard ...` stands between the launcher and a worker (see `launcher::guard`). It
    // must start fast and stay single-threaded, so it runs before clap and before any runtime.
    if args.get(1).is_some_and(|a| a == "guard") {
        return launcher::guard::run(&args[2..]);
    }
    let cli_args = args.clone();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // clap renders help and version as "errors" that go to stdout with status 0.
            let mut text = e.render().to_string();
            // `gpucluster up python train.py`: the worker command goes after `--`.
            let is_up = cli_args.iter().any(|a| a == "up");
            let positional =
                e.get(clap::error::ContextKind::InvalidArg).is_some_and(|v| !v.to_string().starts_with('-'));
            if e.kind() == clap::error::ErrorKind::UnknownArgument
                && is_up
                && positional
                && !cli_args.iter().any(|a| a == "--")
            {
                text.push_str("\ntip: to run a command in every worker, put it after `--`: gpucluster up [OPTIONS] -- CMD ARGS...\n");
            }
            let _ = if e.use_stderr() { err.write_all(text.as_bytes()) } else { out.write_all(text.as_bytes()) };
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = runtime.block_on(cli::execute(cli, out));
    // Blocking work still running (a benchmark interrupted by a signal) must not hold the exit.
    runtime.shutdown_background();
    match result {
        Ok(status) => status,
        // The reader went away (`gpucluster list | head`): nothing left to say to anyone, and
        // the status a program killed by SIGPIPE has (141), as `set -o pipefail` expects:
        // `up | true` never ran its job, and must not look as if it had.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                    // JSON written straight to the reader fails as serde_json's error.
                    || c.downcast_ref::<serde_json::Error>()
                        .is_some_and(|e| e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
            }) =>
        {
            launcher::exit_status_after(libc::SIGPIPE)
        }
        Err(e) => {
            // Messages quote input (names, addresses, file contents): whatever escaped the
            // escaping at its source is escaped here, keeping only the message's own line breaks.
            // A topology error says what was seen; what to pass instead comes after it, in the
            // command line's words. It is a root cause (it has no source), so the last in the chain.
            let remedy = e.root_cause().downcast_ref::<gpu_topology::TopologyError>().and_then(topology_remedy);
            let text = format!("{e:#}{}", remedy.map(|r| r.to_string()).unwrap_or_default());
            let safe: String =
                text.split('\n').map(|line| table::escape(line).into_owned()).collect::<Vec<_>>().join("\n");
            let _ = writeln!(err, "error: {safe}");
            1
        }
    }
}
