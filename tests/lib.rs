//! Cross-crate tests live in `it/`; the library holds what other crates' tests and xtask share:
//! the golden-scenario runner (`scenarios`) and the Dask tests' interpreter (`dask_env`).

pub mod dask_env;
pub mod scenarios;
