//! Cross-crate tests live in `it/`; the library holds what other crates' tests and xtask share:
//! the golden-scenario runner (`scenarios`).

pub mod scenarios;
