//! Benchmarks live in `root.rs` (criterion); see README.md for what each one guards.
