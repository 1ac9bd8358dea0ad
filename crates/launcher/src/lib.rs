//! Running workers: one process per planned device, supervised, and the Dask adapter.
//!
//! This crate owns process lifetimes: starting workers with their plan's environment, prefixing
//! and collecting their output, forwarding signals, restarting on failure, and making sure no
//! worker outlives the launcher ([`supervise`]). It turns a `cluster_core::Plan` into processes
//! (the built-in acceptance-test worker, a user's command, or Dask workers) and hosts the
//! rendezvous through which workers find their peers. It decides nothing about devices (that is
//! `cluster-core`'s plan) and moves no data itself (workers use `transport`).

pub mod builtin;
pub mod dask;
mod supervise;
mod up;

pub use supervise::{Exit, Outcome, ProcessSpec, Restart, Sink, Supervision, supervise};
pub use up::{Job, Memory, UpReport, pairs_to_measure, up};

/// What can go wrong launching workers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LauncherError {
    /// Signal handlers could not be installed.
    #[error("cannot watch for SIGINT and SIGTERM: {0}")]
    Signals(std::io::Error),
    /// A grace period out of range.
    #[error("--grace {0} is out of range: give 0 to 3600 seconds")]
    Grace(f64),
    /// Dask is missing or misconfigured.
    #[error("{0}")]
    Dask(String),
    /// The rendezvous or a secret could not be set up.
    #[error("{0}")]
    Transport(transport::TransportError),
}
