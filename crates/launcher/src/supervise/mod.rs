//! Supervision: start one process per worker, prefix and forward their output, restart the
//! ones that fail (when asked), stop the job when it cannot go on, forward SIGINT, SIGTERM and
//! SIGHUP with a grace period, and make sure nothing a worker started outlives the launcher.
//!
//! With a guard program configured (the binary passes itself), each worker runs under a
//! [`guard`](crate::guard) process: the guard owns the worker's subtree, forwards signals to it,
//! cleans up what the worker leaves behind when it exits, and kills the subtree when the launcher
//! dies, even by SIGKILL. Without one (library tests), each worker runs in its own process group
//! with `PR_SET_PDEATHSIG = SIGKILL`, and its group is killed once it has exited. Either way the
//! launcher is a child subreaper and, with a guard, kills whatever was reparented to it before it
//! returns.
//!
//! A stop, whatever its cause, is the same sequence: the signal (SIGTERM when the job stops on
//! its own) goes to every running worker, the grace period runs, and then whatever is still
//! running is killed.
//!
//! This module only declares its parts and re-exports what the crate offers; each part holds
//! one thing, and they import each other one way (tidy checks it), lowest first:
//!
//! - `signals`: the stop signals a launcher watches ([`Signals`]) and their names;
//! - `spec`: what to run ([`ProcessSpec`]) and how it went ([`Exit`], [`Outcome`], [`Stop`],
//!   [`Supervised`]);
//! - `config`: how to supervise ([`Supervision`]: grace, restarts, when the job stops);
//! - `spawn`: starting one process, under its guard or in its own group, pinned to its CPUs;
//! - `output`: prefixing workers' output and the writer thread that owns the [`Sink`];
//! - `job`: the supervision loop ([`supervise`]): exits, restarts, stops and what is left over.

mod config;
mod job;
mod output;
mod signals;
mod spawn;
mod spec;
#[cfg(test)]
mod tests;

pub use config::{Restart, RestartFlag, SparedChildren, StopHook, StopWhen, Supervision};
pub use job::supervise;
pub use output::Sink;
pub use signals::{Signals, Stopper, signal_name};
pub use spawn::parse_cpus;
pub use spec::{Exit, Outcome, ProcessSpec, Stop, Supervised};
