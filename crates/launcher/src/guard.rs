//! The guard: a small process between the launcher and each worker, so that nothing a worker
//! started outlives the launcher, however either of them ends.
//!
//! The kernel offers two tools, and neither is enough alone. `PR_SET_PDEATHSIG` kills a direct
//! child when its parent dies, but not the child's own children; a process group is signalled as
//! a whole, but a process can leave its group (`setsid`), and a group outlives its leader. So the
//! launcher starts `gpucluster guard` for each worker instead of the worker itself, and the guard:
//!
//! - is a *child subreaper*: whatever the worker starts and orphans (a background job, a daemon
//!   that double-forked into its own session) is reparented to the guard rather than to init;
//! - starts the worker in a process group of its own, with `PR_SET_PDEATHSIG = SIGKILL`;
//! - forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT from the launcher to the worker's group,
//!   with SIGCONT so a stopped process acts on it;
//! - once the worker has exited, stops everything left in its subtree: SIGTERM (and SIGCONT,
//!   so a stopped process sees it), then SIGKILL after the grace period, sweeping until the
//!   guard has no child left;
//! - kills the whole subtree at once on SIGUSR1 (the launcher's grace period is over) or on
//!   SIGUSR2, its own parent-death signal (the launcher died, even by SIGKILL);
//! - exits as the worker did: with its exit code, or killed by the same signal;
//! - given the launcher's private directory (`--private-dir`), removes it once its subtree is
//!   gone if the launcher died without doing so (SIGKILL leaves it no chance): the directory
//!   holds the cluster's credentials, and nothing may be left behind. Only a private directory
//!   of ours whose `owner` file names the dead launcher is removed ([`crate::workdir`]).
//!
//! The start-up race (the launcher dying between `fork` and `prctl`) is closed by comparing
//! `getppid()` with the launcher's pid, passed on the command line, not with 1: with a
//! subreaper among the launcher's ancestors, an orphan is not reparented to init.
//!
//! The guard is single-threaded and handles signals synchronously (blocked, then collected with
//! `sigtimedwait`), so no handler runs at an arbitrary point. It runs no async runtime and
//! touches no device.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The signal a guard gets when the launcher's grace period is over: kill everything now.
pub const KILL_NOW: i32 = libc::SIGUSR1;
/// The guard's parent-death signal.
const LAUNCHER_DIED: i32 = libc::SIGUSR2;
/// Signals forwarded to the worker's process group.
const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The signals a guard collects itself; the launcher blocks them in the guard before `exec`,
/// so none can kill it before it is ready.
pub fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED.iter().chain(&[KILL_NOW, LAUNCHER_DIED, libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

/// The arguments after `gpucluster guard`: the launcher's pid, the grace period, the launcher's
/// private directory if it has one, and the worker's program and arguments.
pub fn arguments(
    launcher: u32,
    grace: Duration,
    private_dir: Option<&Path>,
    program: &OsString,
    args: &[OsString],
) -> Vec<OsString> {
    let mut out: Vec<OsString> =
        vec!["guard".into(), launcher.to_string().into(), grace.as_millis().to_string().into()];
    if let Some(dir) = private_dir {
        out.extend(["--private-dir".into(), dir.as_os_str().to_owned()]);
    }
    out.extend(["--".into(), program.clone()]);
    out.extend(args.iter().cloned());
    out
}

struct Parsed {
    launcher: i32,
    grace: Duration,
    private_dir: Option<PathBuf>,
    program: OsString,
    args: Vec<OsString>,
}

fn parse(args: &[OsString]) -> Option<Parsed> {
    let number = |i: usize| args.get(i)?.to_str()?.parse::<u64>().ok();
    let launcher = i32::try_from(number(0)?).ok()?;
    let grace = Duration::from_millis(number(1)?.min(3_600_000));
    let (private_dir, rest) =
        if args.get(2)? == "--private-dir" { (Some(PathBuf::from(args.get(3)?)), 4) } else { (None, 2) };
    if args.get(rest)? != "--" {
        return None;
    }
    Some(Parsed { launcher, grace, private_dir, program: args.get(rest + 1)?.clone(), args: args[rest + 2..].to_vec() })
}

/// Runs the guard with the arguments after `gpucluster guard`; returns the exit status to use
/// (a worker killed by a signal makes the guard kill itself with the same signal instead).
pub fn run(args: &[OsString]) -> u8 {
    let Some(parsed) = parse(args) else {
        eprintln!(
            "gpucluster guard: started by gpucluster itself, as `guard LAUNCHER_PID GRACE_MS [--private-dir DIR] -- PROGRAM ARGS`"
        );
        return 2;
    };
    let set = handled_signals();
    // SAFETY: blocking signals in this single-threaded process, and prctl on ourselves.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, LAUNCHER_DIED);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
    }
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } != parsed.launcher {
        // The launcher died before we could ask to be told: start nothing.
        return 1;
    }
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    let mut command = Command::new(&parsed.program);
    command.args(&parsed.args);
    // SAFETY: between fork and exec the closure makes only async-signal-safe calls (setpgid,
    // prctl, getppid, kill, getpid, pthread_sigmask on a set built before the fork).
    unsafe {
        command.pre_exec(move || {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != me {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let worker = match command.spawn() {
        Ok(child) => child.id() as i32,
        Err(e) => {
            eprintln!("cannot start {:?}: {e}", parsed.program);
            return if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
        }
    };
    let status = watch(worker, &set, parsed.grace);
    // SAFETY: getppid cannot fail.
    if let Some(dir) = &parsed.private_dir
        && unsafe { libc::getppid() } != parsed.launcher
    {
        // The launcher is gone and everything under us with it: its directory goes too, if it
        // could not remove it itself.
        crate::workdir::remove_if_orphaned(dir, parsed.launcher.unsigned_abs());
    }
    finish(status)
}

/// Collects signals and children until the worker and everything it left behind are gone;
/// returns the worker's wait status.
fn watch(worker: i32, set: &libc::sigset_t, grace: Duration) -> i32 {
    let mut status: Option<i32> = None;
    // Set once the worker has exited (or we were told to stop): when leftovers get SIGKILL.
    let mut deadline: Option<Instant> = None;
    let mut hard = false;
    let mut asked = std::collections::HashSet::new();
    loop {
        let wait = match deadline {
            _ if hard => Duration::from_millis(10),
            Some(d) => d.saturating_duration_since(Instant::now()).min(Duration::from_millis(20)),
            None => Duration::from_secs(1),
        };
        match next_signal(set, wait) {
            Some(s) if FORWARDED.contains(&s) && status.is_none() => {
                signal_group(worker, s);
                // A stopped process acts on the signal only once it runs again (as shells do).
                signal_group(worker, libc::SIGCONT);
            }
            Some(s) if s == KILL_NOW || s == LAUNCHER_DIED => hard = true,
            _ => {}
        }
        // Reap every child that has ended: the worker, and orphans reparented to us.
        loop {
            let mut raw = 0;
            // SAFETY: waitpid with an out-pointer to a local.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid > 0 {
                if pid == worker {
                    status = Some(raw);
                }
                continue;
            }
            if pid < 0 && status.is_some() {
                // ECHILD: nothing is left.
                return status.unwrap_or(0);
            }
            break;
        }
        if status.is_some() && deadline.is_none() {
            // The worker is gone: what it left behind is asked to stop, then made to.
            deadline = Some(Instant::now() + grace);
            signal_group(worker, libc::SIGTERM);
            signal_group(worker, libc::SIGCONT);
        }
        if deadline.is_some() && !hard {
            // Each process handed to us (its parent died) is asked once, as it arrives: a shell
            // that dies of SIGTERM leaves its children to us, and they must hear it too.
            for child in children_of(std::process::id() as i32) {
                if asked.insert(child) {
                    // SAFETY: signalling a child of ours.
                    unsafe {
                        libc::kill(child, libc::SIGTERM);
                        libc::kill(child, libc::SIGCONT);
                    }
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            hard = true;
        }
        if hard {
            sweep(worker, libc::SIGKILL);
        }
    }
}

fn next_signal(set: &libc::sigset_t, wait: Duration) -> Option<i32> {
    let timeout = libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos() as _ };
    // SAFETY: a valid set and timeout; the info out-pointer may be null.
    let s = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
    (s > 0).then_some(s)
}

fn signal_group(leader: i32, signal: i32) {
    // SAFETY: signalling a process group we created; ESRCH (gone already) is fine.
    unsafe { libc::kill(-leader, signal) };
}

/// Signals the worker's group and every direct child of ours: the worker's orphans, in whatever
/// group or session they moved to, are our children because we are their subreaper.
fn sweep(worker: i32, signal: i32) {
    signal_group(worker, signal);
    for child in children_of(std::process::id() as i32) {
        // SAFETY: signalling a child of ours.
        unsafe { libc::kill(child, signal) };
    }
}

/// The pids whose parent is `parent`: from its threads' `/proc/PID/task/TID/children` lists
/// (cheap: a file per thread), or, where the kernel has none, by reading every process's `stat`.
pub(crate) fn children_of(parent: i32) -> Vec<i32> {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) {
        let mut found = false;
        let mut children = Vec::new();
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                found = true;
                children.extend(list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
        if found {
            return children;
        }
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // The command name may hold spaces and parentheses: the fields follow the last ')'.
            let ppid: i32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// Ends the guard as the worker ended.
fn finish(raw: i32) -> u8 {
    let status = std::process::ExitStatus::from_raw(raw);
    if let Some(code) = status.code() {
        return code as u8;
    }
    let signal = status.signal().unwrap_or(libc::SIGKILL);
    // SAFETY: restoring the default action of a signal, unblocking it, and raising it against
    // ourselves, so the launcher sees the worker's death; no core file of the guard's own.
    unsafe {
        let limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &limit);
        libc::signal(signal, libc::SIG_DFL);
        let mut only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut only);
        libc::sigaddset(&mut only, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
        libc::kill(libc::getpid(), signal);
    }
    crate::exit_status_after(signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let args = arguments(42, Duration::from_millis(2500), None, &"sh".into(), &["-c".into(), "true".into()]);
        assert_eq!(args[0], "guard");
        let parsed = parse(&args[1..]).expect("parse");
        assert_eq!((parsed.launcher, parsed.grace, parsed.program), (42, Duration::from_millis(2500), "sh".into()));
        assert_eq!(parsed.args, vec![OsString::from("-c"), "true".into()]);
        assert_eq!(parsed.private_dir, None);
        let dir = Path::new("/run/user/1/gpucluster-dask-0123456789abcdef");
        let args = arguments(42, Duration::ZERO, Some(dir), &"sh".into(), &["--".into()]);
        let parsed = parse(&args[1..]).expect("parse");
        assert_eq!((parsed.private_dir.as_deref(), parsed.program), (Some(dir), "sh".into()));
        assert_eq!(parsed.args, vec![OsString::from("--")]);
        assert!(parse(&["1".into(), "2".into(), "--private-dir".into()]).is_none());
        assert!(parse(&["x".into()]).is_none());
        assert!(parse(&["1".into(), "2".into(), "3".into()]).is_none());
    }

    #[test]
    fn children_are_found_through_proc() {
        let mut child = Command::new("sleep").arg("5").spawn().expect("sleep");
        assert!(children_of(std::process::id() as i32).contains(&(child.id() as i32)));
        let _ = child.kill();
        let _ = child.wait();
    }
}
