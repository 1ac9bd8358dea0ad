//! Supervision: start one process per worker, prefix and forward their output, restart the
//! ones that fail (when asked), forward SIGINT and SIGTERM with a grace period, and make sure
//! none outlives the launcher.
//!
//! Each worker runs in its own process group (so the whole group, with anything it started, is
//! signalled together) and with `PR_SET_PDEATHSIG = SIGKILL` (so the kernel kills it if the
//! launcher dies, even by SIGKILL). The launcher also becomes a child subreaper, so processes a
//! worker orphans are reparented to it rather than to init.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::LauncherError;

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
}

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

/// How to supervise.
#[derive(Debug, Clone)]
pub struct Supervision {
    /// How long workers get between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// The restart policy.
    pub restart: Restart,
}

impl Supervision {
    /// From command-line flags: a grace period in seconds (0 to 3600), whether to restart failed
    /// workers, and at most how often (waiting 0.5 s before the first restart).
    ///
    /// # Errors
    /// [`LauncherError::Grace`] for a grace period out of range.
    pub fn from_flags(grace_seconds: f64, restart_on_failure: bool, max_restarts: u32) -> Result<Self, LauncherError> {
        if !(0.0..=3600.0).contains(&grace_seconds) {
            return Err(LauncherError::Grace(grace_seconds));
        }
        Ok(Self {
            grace: Duration::from_secs_f64(grace_seconds),
            restart: if restart_on_failure {
                Restart::OnFailure { max: max_restarts, backoff: Duration::from_millis(500) }
            } else {
                Restart::Never
            },
        })
    }
}

impl Default for Supervision {
    fn default() -> Self {
        Self { grace: Duration::from_secs(10), restart: Restart::Never }
    }
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
    fn from(status: ExitStatus) -> Self {
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
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::NotStarted => f.write_str("could not be started"),
        }
    }
}

/// Where prefixed output goes.
pub type Sink = Arc<Mutex<dyn Write + Send>>;

fn parse_cpus(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                    cpus.extend(a..=b.min(a + 4096));
                }
            }
            None => cpus.extend(part.trim().parse::<usize>().ok()),
        }
    }
    cpus
}

fn spawn(spec: &ProcessSpec) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args).envs(&spec.env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let cpus = spec.cpu_affinity.as_deref().map(parse_cpus).unwrap_or_default();
    // SAFETY: the closure runs in the child between fork and exec and only makes async-signal-safe
    // system calls (setpgid, prctl, getppid, sched_setaffinity, kill).
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The launcher may have died between fork and prctl.
            if libc::getppid() == 1 {
                libc::kill(libc::getpid(), libc::SIGKILL);
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

fn forward<R: AsyncRead + Unpin + Send + 'static>(reader: R, name: String, sink: Sink) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // One write per line, so lines of different workers never interleave.
            let text = format!("[{name}] {line}\n");
            if let Ok(mut out) = sink.lock() {
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
        }
    });
}

enum Event {
    Exited(usize, u64, ExitStatus),
    Restart(usize),
}

struct Slot {
    spec: ProcessSpec,
    pid: Option<i32>,
    generation: u64,
    restarts: u32,
    last: Option<Exit>,
    done: bool,
}

fn signal_group(pid: i32, sig: i32) {
    // SAFETY: signalling a process group we created (the child's pid is its group id).
    unsafe { libc::kill(-pid, sig) };
}

/// Runs every process to the end and reports how each ended.
///
/// # Errors
/// [`LauncherError::Signals`] if the signal handlers cannot be installed.
pub async fn supervise(
    specs: Vec<ProcessSpec>,
    config: &Supervision,
    sink: Sink,
) -> Result<Vec<Outcome>, LauncherError> {
    // SAFETY: prctl on ourselves; failure only loses the reparenting of orphans.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let mut interrupt = signal(SignalKind::interrupt()).map_err(LauncherError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(LauncherError::Signals)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut slots: Vec<Slot> = specs
        .into_iter()
        .map(|spec| Slot { spec, pid: None, generation: 0, restarts: 0, last: None, done: false })
        .collect();

    let start = |i: usize, slots: &mut Vec<Slot>, tx: &mpsc::UnboundedSender<Event>| {
        let slot = &mut slots[i];
        slot.generation += 1;
        match spawn(&slot.spec) {
            Ok(mut child) => {
                slot.pid = child.id().map(|p| p as i32);
                if let Some(out) = child.stdout.take() {
                    forward(out, slot.spec.name.clone(), sink.clone());
                }
                if let Some(err) = child.stderr.take() {
                    forward(err, slot.spec.name.clone(), sink.clone());
                }
                let (tx, generation) = (tx.clone(), slot.generation);
                tokio::spawn(async move {
                    let status = child.wait().await.unwrap_or_else(|_| ExitStatus::from_raw(1 << 8));
                    let _ = tx.send(Event::Exited(i, generation, status));
                });
            }
            Err(e) => {
                if let Ok(mut out) = sink.lock() {
                    let _ = writeln!(out, "[{}] cannot start {:?}: {e}", slot.spec.name, slot.spec.program);
                }
                slot.last = Some(Exit::NotStarted);
                slot.done = true;
            }
        }
    };
    for i in 0..slots.len() {
        start(i, &mut slots, &tx);
    }

    let mut stopping: Option<Instant> = None;
    let mut killed = false;
    while slots.iter().any(|s| !s.done) {
        let deadline = stopping.map(|t| t + config.grace);
        let sleep = async {
            match deadline {
                Some(d) if !killed => tokio::time::sleep_until(d.into()).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(event) = rx.recv() => match event {
                Event::Exited(i, generation, status) => {
                    let slot = &mut slots[i];
                    if generation != slot.generation {
                        continue;
                    }
                    slot.pid = None;
                    let exit = Exit::from(status);
                    slot.last = Some(exit);
                    let retry = match config.restart {
                        Restart::OnFailure { max, backoff } if stopping.is_none() && !exit.success() && slot.restarts < max => {
                            Some(backoff.saturating_mul(1 << slot.restarts.min(16)).min(Duration::from_secs(30)))
                        }
                        _ => None,
                    };
                    match retry {
                        Some(wait) => {
                            slot.restarts += 1;
                            if let Ok(mut out) = sink.lock() {
                                let _ = writeln!(out, "[{}] {exit}; restarting in {:.1} s ({} of {})", slot.spec.name, wait.as_secs_f64(), slot.restarts, match config.restart { Restart::OnFailure { max, .. } => max, Restart::Never => 0 });
                            }
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(wait).await;
                                let _ = tx.send(Event::Restart(i));
                            });
                        }
                        None => slot.done = true,
                    }
                }
                Event::Restart(i) => {
                    if stopping.is_none() {
                        start(i, &mut slots, &tx);
                    } else {
                        slots[i].done = true;
                    }
                }
            },
            _ = interrupt.recv() => stopping = Some(stop(&slots, stopping, libc::SIGINT, &sink)),
            _ = terminate.recv() => stopping = Some(stop(&slots, stopping, libc::SIGTERM, &sink)),
            () = sleep => {
                killed = true;
                for slot in &slots {
                    if let Some(pid) = slot.pid {
                        signal_group(pid, libc::SIGKILL);
                    }
                }
                if let Ok(mut out) = sink.lock() {
                    let _ = writeln!(out, "grace period of {:.0} s over: killed the workers still running", config.grace.as_secs_f64());
                }
            }
        }
        // Workers waiting for a restart when a stop arrives stay down.
        if stopping.is_some() {
            for slot in &mut slots {
                if slot.pid.is_none() && !slot.done {
                    slot.done = true;
                }
            }
        }
    }
    Ok(slots
        .into_iter()
        .map(|s| Outcome { name: s.spec.name, exit: s.last.unwrap_or(Exit::NotStarted), restarts: s.restarts })
        .collect())
}

fn stop(slots: &[Slot], already: Option<Instant>, sig: i32, sink: &Sink) -> Instant {
    if let Ok(mut out) = sink.lock() {
        let _ = writeln!(
            out,
            "stopping {} worker(s): signal {sig} forwarded",
            slots.iter().filter(|s| s.pid.is_some()).count()
        );
    }
    for slot in slots {
        if let Some(pid) = slot.pid {
            signal_group(pid, sig);
        }
    }
    already.unwrap_or_else(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(name: &str, script: &str) -> ProcessSpec {
        ProcessSpec {
            name: name.into(),
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
            cpu_affinity: Some("0".into()),
        }
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn run(specs: Vec<ProcessSpec>, config: Supervision) -> (Vec<Outcome>, String) {
        let buffer = Buffer::default();
        let sink: Sink = Arc::new(Mutex::new(buffer.clone()));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let outcomes = rt.block_on(supervise(specs, &config, sink)).expect("supervise");
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf8");
        (outcomes, text)
    }

    #[test]
    fn output_is_prefixed_and_exits_reported() {
        let (outcomes, text) =
            run(vec![sh("a", "echo $GREETING from a; echo oops >&2"), sh("b", "exit 3")], Supervision::default());
        assert!(text.contains("[a] hello from a"), "{text}");
        assert!(text.contains("[a] oops"), "{text}");
        assert_eq!(outcomes[0].exit, Exit::Code(0));
        assert_eq!(outcomes[1].exit, Exit::Code(3));
    }

    #[test]
    fn failures_are_restarted_up_to_the_bound() {
        let dir = std::env::temp_dir().join(format!("gpucluster-restart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let counter = dir.join("runs");
        // Fails twice, then succeeds.
        let script = format!("echo x >> {0}; test $(wc -l < {0}) -ge 3", counter.display());
        let config = Supervision {
            restart: Restart::OnFailure { max: 5, backoff: Duration::from_millis(10) },
            ..Supervision::default()
        };
        let (outcomes, text) = run(vec![sh("flaky", &script)], config.clone());
        assert_eq!(outcomes[0].exit, Exit::Code(0));
        assert_eq!(outcomes[0].restarts, 2);
        assert!(text.contains("restarting in"), "{text}");
        let (outcomes, _) = run(
            vec![sh("doomed", "exit 1")],
            Supervision { restart: Restart::OnFailure { max: 2, backoff: Duration::from_millis(5) }, ..config },
        );
        assert_eq!((outcomes[0].exit, outcomes[0].restarts), (Exit::Code(1), 2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_program_that_does_not_exist_is_reported() {
        let spec = ProcessSpec { program: "/nonexistent/program".into(), ..sh("ghost", "") };
        let (outcomes, text) = run(vec![spec], Supervision::default());
        assert_eq!(outcomes[0].exit, Exit::NotStarted);
        assert!(text.contains("cannot start"), "{text}");
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpus("0-3,8,10-11"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert!(parse_cpus("x").is_empty());
    }
}
