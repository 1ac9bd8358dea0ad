//! How to supervise: the grace period, the restart policy, when a job stops on its own, the
//! guard, and the hook called when a job starts stopping ([`Supervision`]). Configuration only:
//! the supervision loop that acts on it is `job`'s.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::spec::Stop;
use crate::LauncherError;

/// What to do when a worker fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Let it stay down.
    Never,
    /// Start it again after a failure (non-zero exit or a signal), at most `max` times, waiting
    /// `backoff` before the first restart and twice as long before each next one (at most 30 s).
    OnFailure {
        /// Most restarts per worker.
        max: u32,
        /// Wait before the first restart.
        backoff: Duration,
    },
}

/// When the job stops on its own, before every process has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopWhen {
    /// Never: each process runs until it ends (or a signal stops the launcher).
    Signalled,
    /// A process that fails for good (after its restarts) stops the others: a job of workers that
    /// need each other (`up`) is all or nothing.
    AnyFails,
    /// An essential process ending (a Dask scheduler), or every other process having ended, stops
    /// the rest: a cluster without its scheduler, or without a single worker, serves nobody.
    EssentialEndsOrNoneLeft,
}

/// Called once when a job starts stopping, with the reason (so the caller can, say, release
/// workers waiting at a rendezvous).
pub type StopHook = Arc<dyn Fn(&Stop) + Send + Sync>;

/// How to supervise.
#[derive(Clone)]
pub struct Supervision {
    /// How long workers get between the stop signal and SIGKILL.
    pub grace: Duration,
    /// The restart policy.
    pub restart: Restart,
    /// When the job stops on its own.
    pub stop_when: StopWhen,
    /// The program that runs `guard` (the gpucluster binary), if workers run under a guard.
    pub guard: Option<OsString>,
    /// The launcher's private directory (see [`crate::workdir`]), which the guards remove once
    /// their workers are gone if the launcher died without removing it (SIGKILL).
    pub private_dir: Option<PathBuf>,
    /// Called when the job starts stopping.
    pub on_stop: Option<StopHook>,
    /// Stops the job if it has not ended this long after it started (a job that is meant to end,
    /// like the built-in acceptance test, whose worker may be stopped or stuck).
    pub time_limit: Option<Duration>,
    /// Stop the essential processes first, the others once those have ended, all with SIGTERM
    /// whatever signal the launcher got: for a Dask scheduler that closes its workers itself,
    /// cleanly, before it goes (what `dask local` asks; a Python process still importing ends
    /// on SIGTERM quietly, where SIGINT prints a traceback). By default the others go first and
    /// the essential ones last, with the launcher's signal.
    pub essentials_first: bool,
    /// Processes this program runs beside the job (a benchmark's client): children of ours but
    /// no orphans of the job's, which the clean-up after a guard killed outright spares.
    pub spared: SparedChildren,
}

/// The pids of children a program runs beside a supervised job ([`Supervision::spared`]).
pub type SparedChildren = Arc<std::sync::Mutex<Vec<i32>>>;

impl std::fmt::Debug for Supervision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervision")
            .field("grace", &self.grace)
            .field("restart", &self.restart)
            .field("stop_when", &self.stop_when)
            .field("guard", &self.guard)
            .field("private_dir", &self.private_dir)
            .field("on_stop", &self.on_stop.as_ref().map(|_| ".."))
            .field("time_limit", &self.time_limit)
            .field("essentials_first", &self.essentials_first)
            .finish()
    }
}

impl Supervision {
    /// From command-line flags: a grace period in seconds (0 to 3600), the restart policy and at
    /// most how often (waiting 0.5 s before the first restart).
    ///
    /// # Errors
    /// [`LauncherError::Grace`] for a grace period out of range.
    pub fn from_flags(grace_seconds: f64, restart: RestartFlag, max_restarts: u32) -> Result<Self, LauncherError> {
        if !(0.0..=3600.0).contains(&grace_seconds) {
            return Err(LauncherError::Grace(grace_seconds));
        }
        Ok(Self {
            grace: Duration::from_secs_f64(grace_seconds),
            restart: match restart {
                RestartFlag::OnFailure => Restart::OnFailure { max: max_restarts, backoff: Duration::from_millis(500) },
                RestartFlag::Never => Restart::Never,
            },
            ..Self::default()
        })
    }
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(10),
            restart: Restart::Never,
            stop_when: StopWhen::Signalled,
            guard: None,
            private_dir: None,
            on_stop: None,
            time_limit: None,
            essentials_first: false,
            spared: SparedChildren::default(),
        }
    }
}

/// `--restart`: whether failed workers are started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartFlag {
    /// They stay down.
    Never,
    /// They are started again, up to `--max-restarts` times.
    OnFailure,
}
