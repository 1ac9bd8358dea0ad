//! Cross-crate tests live in `it/`; the library holds what other crates' tests and xtask share:
//! the golden-scenario runner (`scenarios`), the runner of the Dask spec's cases (`dask_specs`),
//! the Dask tests' interpreter (`dask_env`), and the command that runs the built binary with the
//! processes it leaves, found through `/proc` (`process`).

pub mod dask_env;
pub mod dask_specs;
pub mod process;
pub mod scenarios;
