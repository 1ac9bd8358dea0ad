//! How bytes move between workers: the path choice for every pair of workers, and the data
//! plane that carries device buffers over `cuda-ipc`, `host-staged` and `tcp` connections.
//!
//! **Architecture invariant:** the path choice ([`choose_path`]) is a pure function of
//! `gpu-topology` types (no IO); the data plane is the only part of the workspace that touches
//! device memory and sockets. The crate depends on `gpu-topology` only, never on `cluster-core`:
//! the binary (or the launcher) puts plans and paths together. CUDA is loaded at run time, so the
//! crate builds and its protocol tests run on simulated device memory without a driver.

mod conn;
pub mod device;
mod error;
mod gate;
mod path;
pub mod peer;
pub mod rendezvous;
mod ring;
pub mod shm;
mod tcp;

pub use conn::{Address, Connection, Listener, Options, connect, connect_blocking};
pub use error::TransportError;
pub use gate::Refusals;
pub use path::{Endpoint, Path, PathChoice, PathRule, choose_path};
pub use ring::Received;
pub use tcp::{SECRET_ENV, Secret};
