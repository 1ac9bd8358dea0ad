//! The Python with Dask that the Dask end-to-end tests run, found one way for every test, and
//! skipping said out loud where there is none.

use std::io::Write;
use std::path::{Path, PathBuf};

/// What a test prints when it skips itself, after `SKIPPED <test>: `.
pub const SKIPPED: &str = "no Python with Dask (run `cargo xtask dask-env`, or set GPUCLUSTER_TEST_PYTHON)";

/// The interpreter of `GPUCLUSTER_TEST_PYTHON`, else of `target/dask-venv` (made by
/// `cargo xtask dask-env`), if there is one.
///
/// Without one, the calling test should return at once: this prints
/// `SKIPPED <test>: no Python with Dask ...` straight to the process's stderr, past the test
/// harness's capture, so a plain `cargo test` shows every skipped test (libtest cannot mark a
/// test ignored once it runs, and counts it as passed).
///
/// # Panics
/// Where `GPUCLUSTER_REQUIRE_DASK` is set (CI sets it after making the environment) and there is
/// no interpreter: there, a missing Python is a failure, not a skip.
pub fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dask-venv/bin/python");
    let found = std::env::var_os("GPUCLUSTER_TEST_PYTHON").map(PathBuf::from).or_else(|| venv.exists().then_some(venv));
    if found.is_none() {
        assert!(std::env::var_os("GPUCLUSTER_REQUIRE_DASK").is_none(), "GPUCLUSTER_REQUIRE_DASK is set, but {SKIPPED}");
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("a Dask test");
        // Not `eprintln!`: the harness captures that and shows it only for failed tests.
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {SKIPPED}");
    }
    found
}
