//! Running workers: one process per planned device, supervised, and the Dask adapter.
//!
//! This crate owns process lifetimes: starting workers with their plan's environment, prefixing
//! and collecting their output, forwarding signals, restarting on failure, and making sure no
//! worker outlives the launcher ([`supervise`]). It turns a `cluster_core::Plan` into processes
//! (the built-in acceptance-test worker, a user's command, or Dask workers) and hosts the
//! rendezvous through which workers find their peers. It decides nothing about devices (that is
//! `cluster-core`'s plan) and moves no data itself (workers use `transport`). The benchmarks'
//! drivers live here too, as they start and watch processes of their own: [`transport_bench`]
//! (its peer worker) and [`dask_bench`] (its clusters).
//!
//! The binary runs the [`guard`] between the launcher and each worker (`gpucluster guard`), so
//! that nothing a worker starts outlives the launcher, however the launcher ends.

pub mod builtin;
pub mod dask;
pub mod dask_bench;
pub mod guard;
pub mod plan_paths;
mod supervise;
pub mod transport_bench;
mod up;
pub mod workdir;
pub mod worker_env;

use cluster_core::wording::{Message, Setting};
pub use supervise::{
    Exit, Outcome, ProcessSpec, Restart, RestartFlag, Signals, Sink, SparedChildren, Stop, StopHook, StopWhen, Stopper,
    Supervised, Supervision, parse_cpus, signal_name, supervise,
};
pub use up::{BUILTIN_TIME_LIMIT, Job, UpReport, pairs_to_measure, up};

/// The exit status of a program that ends because of signal `signal`: 128 + the signal, as
/// shells report a process that a signal ended (130 after SIGINT, 141 after SIGPIPE, 143 after
/// SIGTERM), saturating at 255.
///
/// gpucluster's exit statuses are 0 for success, 1 for a failure, 2 for a bad command line, and
/// this, 128 + N, after signal N: a launcher stopped by it (which passed it on to its workers), a
/// command it interrupted, a guard whose worker it ended. Defined here, below every module, so
/// that the launcher, its guard and the binary all compute it one way.
pub fn exit_status_after(signal: i32) -> u8 {
    128u8.saturating_add(signal as u8)
}

/// What can go wrong launching workers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LauncherError {
    /// Signal handlers could not be installed.
    #[error("cannot watch for SIGINT and SIGTERM: {0}")]
    Signals(std::io::Error),
    /// A grace period out of range.
    #[error("{}", grace_words(*.0))]
    Grace(f64),
    /// The Python interpreter cannot run Dask.
    #[error("cannot use `{}` for Dask: {detail}; {how}", gpu_topology::text::printable(&python.to_string_lossy()))]
    NoDask {
        /// The interpreter.
        python: std::ffi::OsString,
        /// What went wrong.
        detail: String,
        /// How to fix it.
        how: Message,
    },
    /// A scheduler file that cannot be used.
    #[error("the scheduler file {} {problem}", file.display())]
    SchedulerFile {
        /// The file.
        file: std::path::PathBuf,
        /// What is wrong with it, to follow its name.
        problem: String,
    },
    /// The scheduler does not answer.
    #[error(
        "the Dask scheduler at {address} does not answer ({reason}); is `dask scheduler` running there, \
         and is the scheduler file current?"
    )]
    SchedulerUnreachable {
        /// Its address.
        address: String,
        /// Why the connection failed.
        reason: String,
    },
    /// The scheduler speaks TLS and no credentials were given.
    #[error("{}", tls_needed(address))]
    TlsNeeded {
        /// The scheduler's address.
        address: String,
    },
    /// `bench dask` could not run a variant.
    #[error("bench dask: {0}")]
    Bench(String),
    /// A comm protocol that cannot be used as asked.
    #[error("{0}")]
    Protocol(dask::ProtocolRefusal),
    /// A setting of a Dask request that cannot be met: the words name it, and the fix.
    #[error("{0}")]
    Request(Message),
    /// TLS credentials that someone else could have changed.
    #[error("the TLS credentials cannot be trusted: {0}")]
    UntrustedCredentials(String),
    /// TLS credentials could not be generated.
    #[error("cannot generate the cluster's TLS credentials: {0}")]
    Tls(String),
    /// A private working directory could not be created or written.
    #[error("cannot set up the private directory {}: {error}", path.display())]
    PrivateDir {
        /// The directory or file.
        path: std::path::PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The rendezvous or a secret could not be set up; or, in `bench transport`, a listener or a
    /// ceiling failed.
    #[error(transparent)]
    Transport(transport::TransportError),
    /// A step of `bench transport` failed in the transport: opening the device, setting up a
    /// path, a transfer of one size.
    #[error("{doing}")]
    TransportBench {
        /// The step: "opening the device", "setting up host-staged", "tcp: 8 B".
        doing: String,
        /// What the transport said.
        #[source]
        source: transport::TransportError,
    },
    /// `bench transport`'s peer could not be started or watched, ended before it connected, or
    /// echoed bytes other than those it was sent.
    #[error("{0}")]
    TransportBenchPeer(String),
}

fn tls_needed(address: &str) -> Message {
    Message::from(format!("the Dask scheduler at {address} speaks TLS: give "))
        .setting(Setting::TlsCredentials)
        .text(" (`gpucluster dask local` writes them beside its scheduler file)")
}

fn grace_words(grace: f64) -> Message {
    Message::default().setting_to(Setting::Grace, grace.to_string()).text(" is out of range: give 0 to 3600 seconds")
}

impl LauncherError {
    /// The message with the settings it names, for a front end to say in its own words
    /// ([`Message::render`]); its `Display` says it in the command line's.
    pub fn message(&self) -> Message {
        match self {
            LauncherError::NoDask { python, detail, how } => Message::from(format!(
                "cannot use `{}` for Dask: {detail}; ",
                gpu_topology::text::printable(&python.to_string_lossy())
            ))
            .append(how.clone()),
            LauncherError::TlsNeeded { address } => tls_needed(address),
            LauncherError::Grace(grace) => grace_words(*grace),
            LauncherError::Protocol(refusal) => refusal.message(),
            LauncherError::Request(words) => words.clone(),
            other => Message::from(other.to_string()),
        }
    }
}
