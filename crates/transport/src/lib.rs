//! How bytes move between workers: the path choice for every pair of workers, and the data
//! plane that carries device buffers over `cuda-ipc`, `host-staged` and `tcp` connections.
//!
//! **Architecture invariant:** the path choice ([`choose_path`]) is a pure function of
//! `gpu-topology` types (no IO); the data plane is the only part of the workspace that touches
//! device memory and sockets. The crate depends on `gpu-topology` only, never on `cluster-core`:
//! the binary (or the launcher) puts plans and paths together. CUDA is loaded at run time, so the
//! crate builds and its protocol tests run on simulated device memory without a driver.

mod path;

pub use path::{Endpoint, Path, PathChoice, PathRule, choose_path};
