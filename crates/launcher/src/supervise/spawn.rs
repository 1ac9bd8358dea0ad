//! Starting one process: under its guard, or in a process group of its own that dies with the
//! launcher, with its environment, working directory and CPU affinity. What happens once it runs
//! (its output, its exit, stopping it) is `output`'s and `job`'s.

use std::process::Stdio;

use tokio::process::{Child, Command};

use super::config::Supervision;
use super::spec::ProcessSpec;
use crate::guard;

/// Parses a Linux cpulist (`0-3,8,10-11`) for pinning; nonsense parts are skipped
/// ([`gpu_topology::cpulist::parse_lenient`]: the CPUs come back in order and once each).
pub fn parse_cpus(list: &str) -> Vec<usize> {
    gpu_topology::cpulist::parse_lenient(list)
}

pub(super) fn spawn(spec: &ProcessSpec, config: &Supervision) -> std::io::Result<Child> {
    let mut cmd = match &config.guard {
        Some(guard_program) => {
            let mut cmd = Command::new(guard_program);
            let dir = config.private_dir.as_deref();
            cmd.args(guard::arguments(std::process::id(), config.grace, dir, &spec.program, &spec.args));
            cmd
        }
        None => {
            let mut cmd = Command::new(&spec.program);
            cmd.args(&spec.args);
            cmd
        }
    };
    cmd.envs(&spec.env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    let cpus = spec.cpu_affinity.as_deref().map(parse_cpus).unwrap_or_default();
    let guarded = config.guard.is_some();
    // The guard's own signals are blocked before it runs, so none can end it before it watches.
    let blocked = guard::handled_signals();
    // SAFETY: getpid cannot fail.
    let launcher = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the child between fork and exec and only makes async-signal-safe
    // system calls (setpgid, prctl, getppid, kill, getpid, pthread_sigmask, sched_setaffinity).
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, if guarded { libc::SIGUSR2 } else { libc::SIGKILL });
            // The launcher may have died between fork and prctl (compared with its pid, not 1:
            // with a subreaper above us an orphan is not reparented to init).
            if libc::getppid() != launcher {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            if guarded {
                libc::pthread_sigmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
            }
            if !cpus.is_empty() {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                for &c in &cpus {
                    if c < libc::CPU_SETSIZE as usize {
                        libc::CPU_SET(c, &mut set);
                    }
                }
                // Best effort: a cgroup may forbid some of these CPUs.
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            Ok(())
        });
    }
    cmd.spawn()
}
