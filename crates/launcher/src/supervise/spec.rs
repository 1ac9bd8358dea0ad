//! What to run and how it went: one process's [`ProcessSpec`], how it ended ([`Exit`],
//! [`Outcome`]), why a job stopped early ([`Stop`]) and the job's result ([`Supervised`]). Plain
//! data: nothing here starts, signals or waits for a process.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use super::signals::signal_name;

/// Of the last lines kept of a worker's output, how many a summary shows.
pub(super) const SHOWN_LINES: usize = 6;

/// One process to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// The worker's name; prefixes its output.
    pub name: String,
    /// The program.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Variables added to the launcher's environment.
    pub env: BTreeMap<String, String>,
    /// CPUs to pin it to (Linux cpulist, `0-15,32-47`), where known.
    pub cpu_affinity: Option<String>,
    /// The job cannot go on without it (a Dask scheduler): see
    /// [`StopWhen::EssentialEndsOrNoneLeft`](crate::StopWhen::EssentialEndsOrNoneLeft).
    pub essential: bool,
    /// Its working directory, if not the launcher's.
    pub cwd: Option<std::path::PathBuf>,
}

/// How one worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The worker.
    pub name: String,
    /// Its last exit.
    pub exit: Exit,
    /// How often it was restarted.
    pub restarts: u32,
    /// The last lines it printed (stdout and stderr), for explaining a failure.
    pub last_lines: Vec<String>,
}

impl Outcome {
    /// What to show of its last lines to explain a failure: the last few, and before them the
    /// last line that names an error if none of those does (a traceback's tail often does not).
    pub fn cause_lines(&self) -> Vec<&str> {
        let names_error = |l: &str| l.contains("rror") || l.contains("xception") || l.contains("failed");
        let tail = &self.last_lines[self.last_lines.len().saturating_sub(SHOWN_LINES)..];
        let mut lines: Vec<&str> = Vec::new();
        if !tail.iter().any(|l| names_error(l))
            && let Some(cause) =
                self.last_lines[..self.last_lines.len() - tail.len()].iter().rev().find(|l| names_error(l))
        {
            lines.push(cause);
            lines.push("...");
        }
        lines.extend(tail.iter().map(String::as_str));
        lines
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.exit)?;
        if self.restarts > 0 {
            write!(f, " after {} restart(s)", self.restarts)?;
        }
        Ok(())
    }
}

/// A process's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It could not be started.
    NotStarted,
}

impl Exit {
    pub(super) fn from(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Code(-1),
        }
    }

    /// Whether it ended well.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s} ({})", signal_name(*s)),
            Exit::NotStarted => f.write_str("could not be started"),
        }
    }
}

/// Why a job stopped before every process had ended on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The launcher received this signal (SIGINT, SIGTERM or SIGHUP) and passed it on.
    Signal(i32),
    /// A process failed for good, and the job cannot go on without it
    /// ([`StopWhen::AnyFails`](crate::StopWhen::AnyFails)).
    Failed {
        /// The process.
        name: String,
        /// How it ended.
        exit: Exit,
    },
    /// An essential process ended ([`StopWhen::EssentialEndsOrNoneLeft`](crate::StopWhen::EssentialEndsOrNoneLeft)).
    EssentialEnded {
        /// The process.
        name: String,
        /// How it ended.
        exit: Exit,
    },
    /// Every non-essential process has ended
    /// ([`StopWhen::EssentialEndsOrNoneLeft`](crate::StopWhen::EssentialEndsOrNoneLeft)).
    NoneLeft,
    /// The job ran past [`Supervision::time_limit`](crate::Supervision::time_limit).
    TimeLimit(Duration),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Signal(s) => write!(f, "{} received", signal_name(*s)),
            Stop::Failed { name, exit } => write!(f, "{name} failed ({exit})"),
            Stop::EssentialEnded { name, exit } => write!(f, "{name} ended ({exit})"),
            Stop::NoneLeft => f.write_str("no worker is left running"),
            Stop::TimeLimit(limit) => write!(
                f,
                "the job did not end within its time limit of {:.0} s (a worker stopped, stuck or waiting for one that is)",
                limit.as_secs_f64()
            ),
        }
    }
}

impl Stop {
    /// The exit status the launcher should end with after this stop: for a signal,
    /// [`exit_status_after`](crate::exit_status_after) it (130 for SIGINT, 143 for SIGTERM, 129
    /// for SIGHUP), as shells report them.
    pub fn exit_status(&self) -> Option<u8> {
        match self {
            Stop::Signal(s) => Some(crate::exit_status_after(*s)),
            _ => None,
        }
    }
}

/// How a supervised job went.
#[derive(Debug, Clone)]
pub struct Supervised {
    /// How each process ended, in the order given.
    pub outcomes: Vec<Outcome>,
    /// Why the job stopped early, if it did.
    pub stop: Option<Stop>,
}
