//! How bytes move between workers: the path choice for every pair of workers, and the data
//! plane that carries device buffers over `cuda-ipc`, `host-staged` and `tcp` connections.
//!
//! **Architecture invariant:** the path choice ([`choose_path`]) is a pure function of
//! `gpu-topology` types (no IO); the data plane is the only part of the workspace that touches
//! device memory and sockets. The crate depends on `gpu-topology` only, never on `cluster-core`:
//! the binary (or the launcher) puts plans and paths together. CUDA is loaded at run time, so the
//! crate builds and its protocol tests run on simulated device memory without a driver.
//!
//! # Design
//!
//! - **A peer is checked before any data moves**, and a peer that fails changes nothing for
//!   anyone else. Every listening socket (a [`Listener`]'s, the rendezvous') sits behind a gate
//!   (`gate.rs`): one thread per socket accepts and authenticates all connections at once
//!   (`SO_PEERCRED` for local sockets, the HMAC challenge for TCP), at most
//!   [`Options::max_handshakes`] at a time, each within [`Options::handshake_timeout`]; no thread
//!   is spent on a connection before it authenticates. Refused connections are counted
//!   ([`Refusals`]), never returned as errors.
//! - **Every wait a peer controls is bounded**: connecting and setting up by the handshake
//!   timeout; a message under way by [`Options::stall_timeout`]. Waiting for the *next* message
//!   is the caller's choice ([`Connection::recv_blocking_timeout`]). A peer that dies is noticed
//!   within milliseconds (the ring watches the control socket; TCP sees the end of stream).
//! - **Local names are not guessable** ([`Listener::bind_local`]), and no secret is ever put on a
//!   command line ([`SECRET_ENV`]).
//! - **Raw device addresses are `unsafe`** ([`device`]): safe code moves bytes through
//!   [`device::DeviceBuffer`].

mod conn;
pub mod device;
mod error;
mod gate;
pub mod measure;
mod path;
pub mod peer;
pub mod rendezvous;
mod ring;
mod secret;
mod secret_file;
pub mod shm;
mod socket;
mod tcp;

pub use conn::{Address, Connection, Listener, Options, connect, connect_blocking};
pub use error::TransportError;
pub use gate::Refusals;
pub use path::{Endpoint, PathChoice, PathRule, TransferPath, UnknownPath, choose_path};
pub use ring::{COPY_ENGINE_MIN, EAGER_MAX, Received, RingGeometry};
pub use secret::{ANSWER_LEN, NONCE_BYTES, PROOF_BYTES, SECRET_ENV, Secret};
pub use secret_file::{SECRET_FILE_ENV, default_secret_file};
