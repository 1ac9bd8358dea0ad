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

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::LauncherError;
use crate::guard;

/// Lines of each worker's output kept for the summary of a failure.
const LAST_LINES: usize = 40;
/// Of those, how many a summary shows.
const SHOWN_LINES: usize = 6;
/// How long guards get to kill their subtrees after the grace period before they are killed.
const GUARD_GRACE: Duration = Duration::from_secs(2);

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
    /// The job cannot go on without it (a Dask scheduler): see [`StopWhen::EssentialEndsOrNoneLeft`].
    pub essential: bool,
    /// Its working directory, if not the launcher's.
    pub cwd: Option<std::path::PathBuf>,
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
}

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
            Exit::Signal(s) => write!(f, "killed by signal {s} ({})", signal_name(*s)),
            Exit::NotStarted => f.write_str("could not be started"),
        }
    }
}

/// `SIGINT`, `SIGTERM`, ... for the signals users meet.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

/// Why a job stopped before every process had ended on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The launcher received this signal (SIGINT, SIGTERM or SIGHUP) and passed it on.
    Signal(i32),
    /// A process failed for good, and the job cannot go on without it ([`StopWhen::AnyFails`]).
    Failed {
        /// The process.
        name: String,
        /// How it ended.
        exit: Exit,
    },
    /// An essential process ended ([`StopWhen::EssentialEndsOrNoneLeft`]).
    EssentialEnded {
        /// The process.
        name: String,
        /// How it ended.
        exit: Exit,
    },
    /// Every non-essential process has ended ([`StopWhen::EssentialEndsOrNoneLeft`]).
    NoneLeft,
    /// The job ran past [`Supervision::time_limit`].
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
    /// The exit status the launcher should end with after this stop: 128 + the signal for a
    /// signal (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP), as shells report them.
    pub fn exit_status(&self) -> Option<u8> {
        match self {
            Stop::Signal(s) => Some(128u8.saturating_add(*s as u8)),
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

/// Where prefixed output goes.
pub type Sink = Arc<Mutex<dyn Write + Send>>;

/// Parses a Linux cpulist (`0-3,8,10-11`) for pinning; nonsense parts are skipped
/// ([`gpu_topology::cpulist::parse_lenient`]: the CPUs come back in order and once each).
pub fn parse_cpus(list: &str) -> Vec<usize> {
    gpu_topology::cpulist::parse_lenient(list)
}

fn spawn(spec: &ProcessSpec, config: &Supervision) -> std::io::Result<Child> {
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

type LastLines = Arc<Mutex<VecDeque<String>>>;

/// Longest line forwarded as one; a longer one (a progress bar that never ends its line, a
/// binary dump) is cut into pieces of this size, so memory stays bounded whatever a worker prints.
const MAX_LINE: usize = 16 << 10;
/// Bytes of workers' output waiting for the writer at most; beyond that a worker's forwarding
/// waits, and so, through its pipe, does the worker.
const IN_FLIGHT: usize = 1 << 20;

/// How long the output may make no progress at all before the launcher stops waiting for it.
const OUTPUT_STUCK: Duration = Duration::from_secs(5);

/// Where supervision's output goes: one writer thread owns the sink, so a reader that does not
/// read (a full pipe, a stopped terminal) holds up the workers whose output waits, never the
/// supervision loop that handles signals and exits.
#[derive(Clone)]
struct Output {
    tx: tokio::sync::mpsc::UnboundedSender<(Vec<u8>, Option<tokio::sync::OwnedSemaphorePermit>)>,
    room: Arc<tokio::sync::Semaphore>,
    /// Bytes the writer has written: its progress.
    written: Arc<std::sync::atomic::AtomicU64>,
}

impl Output {
    fn start(sink: Sink) -> (Self, std::thread::JoinHandle<()>) {
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, Option<tokio::sync::OwnedSemaphorePermit>)>();
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let progress = written.clone();
        let writer = std::thread::spawn(move || {
            while let Some((bytes, permit)) = rx.blocking_recv() {
                if let Ok(mut out) = sink.lock() {
                    let _ = out.write_all(&bytes);
                    let _ = out.flush();
                }
                progress.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                drop(permit);
            }
        });
        (Self { tx, room: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)), written }, writer)
    }

    /// A line of the supervisor's own: never waits.
    fn say(&self, text: std::fmt::Arguments<'_>) {
        let _ = self.tx.send((format!("{text}\n").into_bytes(), None));
    }

    /// A line of a worker's: waits while too many bytes are in flight.
    async fn line(&self, bytes: Vec<u8>) {
        let weight = u32::try_from(bytes.len().clamp(1, IN_FLIGHT)).unwrap_or(u32::MAX);
        let permit = self.room.clone().acquire_many_owned(weight).await.ok();
        let _ = self.tx.send((bytes, permit));
    }
}

/// Splits what a worker prints into lines at `\n` or `\r` (a progress bar redraws with `\r`),
/// at most [`MAX_LINE`] bytes each, whatever the bytes are (they need not be UTF-8).
async fn next_line<R: AsyncRead + Unpin>(reader: &mut BufReader<R>, line: &mut Vec<u8>) -> std::io::Result<bool> {
    use tokio::io::AsyncBufReadExt as _;
    line.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(!line.is_empty());
        }
        let room = MAX_LINE - line.len();
        match available.iter().take(room).position(|&b| b == b'\n' || b == b'\r') {
            Some(end) => {
                line.extend_from_slice(&available[..end]);
                reader.consume(end + 1);
                return Ok(true);
            }
            None => {
                let take = available.len().min(room);
                line.extend_from_slice(&available[..take]);
                reader.consume(take);
                if line.len() == MAX_LINE {
                    return Ok(true);
                }
            }
        }
    }
}

fn forward<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    name: String,
    output: Output,
    last: LastLines,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(MAX_LINE, reader);
        let mut line = Vec::new();
        while let Ok(true) = next_line(&mut reader, &mut line).await {
            if line.is_empty() {
                // The `\n` of a `\r\n`, or a blank line.
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            // One write per line, so lines of different workers never interleave.
            output.line(format!("[{name}] {text}\n").into_bytes()).await;
            if let Ok(mut last) = last.lock() {
                if last.len() == LAST_LINES {
                    last.pop_front();
                }
                last.push_back(text.into_owned());
            }
        }
    })
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
    last_lines: LastLines,
}

/// The state of one supervised job.
struct Job<'a> {
    slots: Vec<Slot>,
    config: &'a Supervision,
    output: Output,
    /// The tasks forwarding workers' output, to let them finish before the job's summary.
    forwarding: Vec<tokio::task::JoinHandle<()>>,
    tx: mpsc::UnboundedSender<Event>,
    /// Set once the job is stopping: why, and when the stop signal went out.
    stopping: Option<(Stop, Instant)>,
    /// The grace period is over and the remaining processes were told to die.
    killed: Option<Instant>,
    /// When the job started, for its time limit.
    started: Instant,
    /// The signal the job is being stopped with.
    stop_signal: i32,
    /// While stopping: whether the essential processes were signalled first (else the others).
    first_stopped: Option<bool>,
    /// Whether the rest have been signalled too.
    rest_stopped: bool,
}

impl Job<'_> {
    fn start(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.generation += 1;
        match spawn(&slot.spec, self.config) {
            Ok(mut child) => {
                slot.pid = child.id().map(|p| p as i32);
                if let Some(out) = child.stdout.take() {
                    self.forwarding.push(forward(
                        out,
                        slot.spec.name.clone(),
                        self.output.clone(),
                        slot.last_lines.clone(),
                    ));
                }
                if let Some(err) = child.stderr.take() {
                    self.forwarding.push(forward(
                        err,
                        slot.spec.name.clone(),
                        self.output.clone(),
                        slot.last_lines.clone(),
                    ));
                }
                let (tx, generation) = (self.tx.clone(), slot.generation);
                tokio::spawn(async move {
                    let status = child.wait().await.unwrap_or_else(|_| ExitStatus::from_raw(1 << 8));
                    let _ = tx.send(Event::Exited(i, generation, status));
                });
            }
            Err(e) => {
                self.output.say(format_args!("[{}] cannot start {:?}: {e}", slot.spec.name, slot.spec.program));
                slot.last = Some(Exit::NotStarted);
                slot.done = true;
                self.after_end(i);
            }
        }
    }

    /// Sends `signal` to every running process: to its guard, which passes it on, or to its group.
    fn signal_all(&self, signal: i32) {
        self.signal_where(signal, |_| true);
    }

    /// Sends `signal` to the running processes that `pick` chooses.
    fn signal_where(&self, signal: i32, pick: impl Fn(&Slot) -> bool) {
        for slot in self.slots.iter().filter(|s| pick(s)) {
            if let Some(pid) = slot.pid {
                if self.config.guard.is_some() {
                    // SAFETY: signalling a guard we started; it passes the signal on.
                    unsafe { libc::kill(pid, signal) };
                } else {
                    // SAFETY: signalling the process group we created, and waking it if stopped.
                    unsafe {
                        libc::kill(-pid, signal);
                        libc::kill(-pid, libc::SIGCONT);
                    }
                }
            }
        }
    }

    fn stop(&mut self, why: Stop, signal: i32) {
        // Stopping essentials first (a Dask cluster), every process gets SIGTERM whatever the
        // launcher got: Dask's CLIs stop on it as on SIGINT once started, and a Python process
        // still importing ends on it quietly, where SIGINT prints a KeyboardInterrupt traceback.
        let signal = if self.config.essentials_first { libc::SIGTERM } else { signal };
        if self.stopping.is_some() {
            // A second signal while stopping is passed on too, but changes nothing else.
            self.signal_all(signal);
            return;
        }
        let running =
            |essential: bool| self.slots.iter().filter(move |s| s.pid.is_some() && s.spec.essential == essential);
        let (others, essentials): (usize, Vec<&str>) =
            (running(false).count(), running(true).map(|s| s.spec.name.as_str()).collect());
        let essentials_first = self.config.essentials_first && !essentials.is_empty();
        let then = match (others > 0 && !essentials.is_empty(), essentials_first) {
            (true, false) => format!(", then to {} once they have ended", essentials.join(", ")),
            (true, true) => format!(", then to the {others} other process(es) still running once it has ended"),
            (false, _) => String::new(),
        };
        let first = if essentials_first || others == 0 {
            essentials.join(", ")
        } else {
            format!("{others} running process(es)")
        };
        self.output.say(format_args!("stopping: {why}; {} sent to {first}{then}", signal_name(signal)));
        if let Some(hook) = &self.config.on_stop {
            hook(&why);
        }
        self.stop_signal = signal;
        self.stopping = Some((why, Instant::now()));
        self.first_stopped = Some(essentials_first);
        // By default workers first, essentials (a Dask scheduler) once they are gone: a scheduler
        // that goes first leaves its workers retrying it until they are killed. With
        // `essentials_first`, the scheduler first, which stops its workers itself.
        self.signal_where(signal, |s| s.spec.essential == essentials_first);
        self.stop_the_rest_when_the_first_are_gone();
        // Processes waiting for a restart stay down.
        for slot in &mut self.slots {
            if slot.pid.is_none() {
                slot.done = true;
            }
        }
    }

    /// While stopping, once the processes signalled first have all ended, the rest get the stop
    /// signal: the essential ones after the others, or, with `essentials_first`, the others after
    /// the essential ones.
    fn stop_the_rest_when_the_first_are_gone(&mut self) {
        let Some(first_essential) = self.first_stopped else { return };
        let first_running = self.slots.iter().any(|s| s.spec.essential == first_essential && s.pid.is_some());
        if !self.rest_stopped && !first_running {
            self.rest_stopped = true;
            self.signal_where(self.stop_signal, |s| s.spec.essential != first_essential);
        }
    }

    fn exited(&mut self, i: usize, status: ExitStatus) {
        let (config, output) = (self.config, self.output.clone());
        let slot = &mut self.slots[i];
        if config.guard.is_none()
            && let Some(pid) = slot.pid
        {
            // Whatever the worker left in its group goes with it.
            // SAFETY: killing the process group we created for this worker.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        slot.pid = None;
        let exit = Exit::from(status);
        slot.last = Some(exit);
        let retry = match config.restart {
            Restart::OnFailure { max, backoff }
                if self.stopping.is_none() && !exit.success() && slot.restarts < max && !slot.spec.essential =>
            {
                Some(backoff.saturating_mul(1 << slot.restarts.min(16)).min(Duration::from_secs(30)))
            }
            _ => None,
        };
        match retry {
            Some(wait) => {
                let max = match config.restart {
                    Restart::OnFailure { max, .. } => max,
                    Restart::Never => 0,
                };
                // Counted when it happens: a job may stop before a scheduled restart.
                output.say(format_args!(
                    "[{}] {exit}; restarting in {:.1} s ({} of {max})",
                    slot.spec.name,
                    wait.as_secs_f64(),
                    slot.restarts + 1
                ));
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = tx.send(Event::Restart(i));
                });
            }
            None => {
                slot.done = true;
                self.after_end(i);
            }
        }
    }

    /// A process has ended for good: does the job go on?
    fn after_end(&mut self, i: usize) {
        if self.stopping.is_some() {
            return;
        }
        let slot = &self.slots[i];
        let exit = slot.last.unwrap_or(Exit::NotStarted);
        let why = match self.config.stop_when {
            StopWhen::Signalled => None,
            StopWhen::AnyFails => (!exit.success()).then(|| Stop::Failed { name: slot.spec.name.clone(), exit }),
            StopWhen::EssentialEndsOrNoneLeft if slot.spec.essential => {
                Some(Stop::EssentialEnded { name: slot.spec.name.clone(), exit })
            }
            StopWhen::EssentialEndsOrNoneLeft => {
                let others = self.slots.iter().filter(|s| !s.spec.essential);
                let essentials_running = self.slots.iter().any(|s| s.spec.essential && !s.done);
                (others.clone().all(|s| s.done) && essentials_running).then_some(Stop::NoneLeft)
            }
        };
        if let Some(why) = why
            && self.slots.iter().any(|s| !s.done)
        {
            self.stop(why, libc::SIGTERM);
        }
    }

    /// The grace period is over: kill what still runs (a guard kills its subtree first).
    fn kill_remaining(&mut self) {
        let first = self.killed.is_none();
        let signal = if self.config.guard.is_some() && first { guard::KILL_NOW } else { libc::SIGKILL };
        for slot in &self.slots {
            if let Some(pid) = slot.pid {
                // SAFETY: signalling a process group we created (guard or worker).
                unsafe { libc::kill(if signal == libc::SIGKILL { -pid } else { pid }, signal) };
            }
        }
        if first {
            self.output.say(format_args!(
                "grace period of {:.1} s over: killed the processes still running",
                self.config.grace.as_secs_f64()
            ));
        }
        self.killed = Some(Instant::now());
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.stopping.is_none() {
            return self.config.time_limit.map(|limit| self.started + limit);
        }
        match (&self.stopping, self.killed) {
            (Some((_, since)), None) => Some(*since + self.config.grace),
            // Guards that have not killed their subtree in time are killed themselves.
            (Some(_), Some(at)) if self.config.guard.is_some() => Some(at + GUARD_GRACE),
            _ => None,
        }
    }
}

/// The signals that stop a launcher: SIGINT (Ctrl-C), SIGTERM, SIGHUP and SIGQUIT (Ctrl-\\),
/// watched from the moment this is made. Make it first, before any set-up that leaves something
/// behind (a private directory, a child process): a signal that arrives during set-up is then not
/// lost, nor does it kill the launcher mid-way; it stops the job as soon as the launcher looks.
#[derive(Debug)]
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts watching (inside a tokio runtime with signals enabled).
    ///
    /// # Errors
    /// [`LauncherError::Signals`] if the handlers cannot be installed.
    pub fn install() -> Result<Self, LauncherError> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).map_err(LauncherError::Signals)?,
            terminate: signal(SignalKind::terminate()).map_err(LauncherError::Signals)?,
            hangup: signal(SignalKind::hangup()).map_err(LauncherError::Signals)?,
            quit: signal(SignalKind::quit()).map_err(LauncherError::Signals)?,
        })
    }

    /// The next stop signal (at once if one arrived since the last call).
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.hangup.recv() => libc::SIGHUP,
            _ = self.quit.recv() => libc::SIGQUIT,
        }
    }

    /// Runs `work` on a blocking thread; `Err(signal)` if a stop signal comes first. Then the
    /// flag `work` was given is set, and `work` gets two seconds to stop what it started (a child
    /// process) before it is abandoned.
    pub async fn or_blocking<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&std::sync::atomic::AtomicBool) -> T + Send + 'static,
    ) -> Result<T, i32> {
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cancel.clone();
        let mut task = tokio::task::spawn_blocking(move || work(&flag));
        tokio::select! {
            done = &mut task => done.map_err(|_| libc::SIGABRT),
            signal = self.recv() => {
                cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
                Err(signal)
            }
        }
    }
}

/// Runs every process to the end and reports how each ended and why the job stopped, if it
/// stopped early. A stop signal already waiting in `signals` stops the job at once.
///
/// # Errors
/// None yet; the `Result` leaves room for set-up failures.
pub async fn supervise(
    specs: Vec<ProcessSpec>,
    config: &Supervision,
    sink: Sink,
    signals: &mut Signals,
) -> Result<Supervised, LauncherError> {
    // SAFETY: prctl on ourselves; failure only loses the reparenting of orphans.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let (output, writer) = Output::start(sink);
    let mut job = Job::new(specs, config, output, tx);
    for i in 0..job.slots.len() {
        job.start(i);
    }
    while job.slots.iter().any(|s| !s.done) {
        job.next_event(&mut rx, signals).await;
    }
    if config.guard.is_some() {
        kill_orphans(&[]);
    }
    let forwarding = std::mem::take(&mut job.forwarding);
    drain_output(forwarding, job.output, writer).await;
    let stop = job.stopping.map(|(why, _)| why);
    let outcomes = job
        .slots
        .into_iter()
        .map(|s| Outcome {
            name: s.spec.name,
            exit: s.last.unwrap_or(Exit::NotStarted),
            restarts: s.restarts,
            last_lines: s.last_lines.lock().map(|l| l.iter().cloned().collect()).unwrap_or_default(),
        })
        .collect();
    Ok(Supervised { outcomes, stop })
}

/// Once every process is gone, their pipes close and forwarding ends; then the writer drains.
/// Nothing is dropped while the reader of our output takes it, however slowly; a reader that
/// takes nothing for `OUTPUT_STUCK` does not keep the job open.
async fn drain_output(
    forwarding: Vec<tokio::task::JoinHandle<()>>,
    output: Output,
    writer: std::thread::JoinHandle<()>,
) {
    let written = output.written.clone();
    let drained = async move {
        for task in forwarding {
            let _ = task.await;
        }
        drop(output);
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    };
    tokio::pin!(drained);
    let (mut seen, mut since) = (written.load(std::sync::atomic::Ordering::Relaxed), Instant::now());
    while tokio::time::timeout(Duration::from_millis(100), &mut drained).await.is_err() {
        let now = written.load(std::sync::atomic::Ordering::Relaxed);
        if now != seen {
            (seen, since) = (now, Instant::now());
        } else if since.elapsed() > OUTPUT_STUCK {
            break;
        }
    }
}

impl<'a> Job<'a> {
    fn new(specs: Vec<ProcessSpec>, config: &'a Supervision, output: Output, tx: mpsc::UnboundedSender<Event>) -> Self {
        let slots = specs
            .into_iter()
            .map(|spec| Slot {
                spec,
                pid: None,
                generation: 0,
                restarts: 0,
                last: None,
                done: false,
                last_lines: Arc::default(),
            })
            .collect();
        Job {
            slots,
            config,
            output,
            forwarding: Vec::new(),
            tx,
            stopping: None,
            killed: None,
            started: Instant::now(),
            stop_signal: libc::SIGTERM,
            first_stopped: None,
            rest_stopped: false,
        }
    }

    /// Waits for the next thing that happens (a process exits or is due a restart, a signal
    /// comes, a deadline passes: the time limit, or the grace period of a stop) and acts on it.
    async fn next_event(&mut self, rx: &mut mpsc::UnboundedReceiver<Event>, signals: &mut Signals) {
        let deadline = self.next_deadline();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(event) = rx.recv() => self.handle(event),
            signal = signals.recv() => self.stop(Stop::Signal(signal), signal),
            () = sleep => match (self.stopping.is_some(), self.config.time_limit) {
                (false, Some(limit)) => self.stop(Stop::TimeLimit(limit), libc::SIGTERM),
                _ => self.kill_remaining(),
            },
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Exited(i, generation, status) if generation == self.slots[i].generation => {
                self.exited(i, status);
                self.stop_the_rest_when_the_first_are_gone();
                // Only a guard that died of a signal can have left orphans to us (one that
                // exits, however its worker ended, has cleaned up first).
                if self.config.guard.is_some() && status.signal().is_some() {
                    // A guard killed outright leaves its worker's children to us: they go now,
                    // not when the job ends.
                    let guards: Vec<i32> = self.slots.iter().filter_map(|s| s.pid).collect();
                    kill_orphans(&guards);
                }
            }
            Event::Exited(..) => {}
            Event::Restart(i) if self.stopping.is_none() => {
                self.slots[i].restarts += 1;
                self.start(i);
            }
            Event::Restart(i) => self.slots[i].done = true,
        }
    }
}

/// Kills and reaps whatever was reparented to the launcher, `keep` apart (the running guards):
/// a guard that was itself killed leaves its worker's descendants to us, the subreaper. Only for
/// a launcher process whose children are all its workers' guards.
fn kill_orphans(keep: &[i32]) {
    let me = std::process::id() as i32;
    for _ in 0..100 {
        let orphans: Vec<i32> = guard::children_of(me).into_iter().filter(|p| !keep.contains(p)).collect();
        if orphans.is_empty() {
            return;
        }
        for pid in orphans {
            // SAFETY: killing and reaping a child of ours that no task waits for.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
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
            essential: false,
            cwd: None,
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

    fn run(specs: Vec<ProcessSpec>, config: Supervision) -> (Supervised, String) {
        let buffer = Buffer::default();
        let sink: Sink = Arc::new(Mutex::new(buffer.clone()));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let supervised = rt
            .block_on(async {
                let mut signals = Signals::install().expect("signals");
                supervise(specs, &config, sink, &mut signals).await
            })
            .expect("supervise");
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf8");
        (supervised, text)
    }

    /// Processes whose command line is exactly `sleep <marker>`.
    fn sleeping(marker: &str) -> usize {
        let wanted = format!("sleep\0{marker}\0");
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted.as_bytes()))
            .count()
    }

    fn marker(n: u32) -> String {
        format!("{}.{}{n}", 40 + n, std::process::id())
    }

    #[test]
    fn output_is_prefixed_and_exits_reported() {
        let (done, text) =
            run(vec![sh("a", "echo $GREETING from a; echo oops >&2"), sh("b", "exit 3")], Supervision::default());
        assert!(text.contains("[a] hello from a"), "{text}");
        assert!(text.contains("[a] oops"), "{text}");
        assert_eq!(done.outcomes[0].exit, Exit::Code(0));
        assert_eq!(done.outcomes[1].exit, Exit::Code(3));
        assert_eq!(done.stop, None);
        assert_eq!(done.outcomes[0].last_lines.len(), 2, "{:?}", done.outcomes[0].last_lines);
        let traceback = Outcome {
            name: "w".into(),
            exit: Exit::Code(1),
            restarts: 0,
            last_lines: ["start", "ValueError: name taken, w", "Traceback (most recent call last):"]
                .into_iter()
                .chain(["  File x"; 8])
                .map(String::from)
                .collect(),
        };
        assert_eq!(traceback.cause_lines()[0], "ValueError: name taken, w", "the error before a long traceback tail");
        assert_eq!(traceback.cause_lines().len(), 2 + SHOWN_LINES);
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
        let (done, text) = run(vec![sh("flaky", &script)], config.clone());
        assert_eq!(done.outcomes[0].exit, Exit::Code(0));
        assert_eq!(done.outcomes[0].restarts, 2);
        assert!(text.contains("restarting in"), "{text}");
        let (done, _) = run(
            vec![sh("doomed", "exit 1")],
            Supervision { restart: Restart::OnFailure { max: 2, backoff: Duration::from_millis(5) }, ..config },
        );
        assert_eq!((done.outcomes[0].exit, done.outcomes[0].restarts), (Exit::Code(1), 2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_program_that_does_not_exist_is_reported() {
        let spec = ProcessSpec { program: "/nonexistent/program".into(), ..sh("ghost", "") };
        let (done, text) = run(vec![spec], Supervision::default());
        assert_eq!(done.outcomes[0].exit, Exit::NotStarted);
        assert!(text.contains("cannot start"), "{text}");
    }

    #[test]
    fn a_failure_stops_the_others_when_the_job_is_all_or_nothing() {
        let m = marker(1);
        let hooked = Arc::new(Mutex::new(Vec::new()));
        let seen = hooked.clone();
        let config = Supervision {
            stop_when: StopWhen::AnyFails,
            grace: Duration::from_secs(5),
            on_stop: Some(Arc::new(move |why: &Stop| seen.lock().expect("lock").push(why.to_string()))),
            ..Supervision::default()
        };
        let started = Instant::now();
        let (done, text) = run(vec![sh("dies", "sleep 0.2; exit 3"), sh("waits", &format!("exec sleep {m}"))], config);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the job stopped at once, not after {:?}",
            started.elapsed()
        );
        assert_eq!(done.stop, Some(Stop::Failed { name: "dies".into(), exit: Exit::Code(3) }));
        assert_eq!(done.outcomes[1].exit, Exit::Signal(libc::SIGTERM));
        assert!(text.contains("stopping: dies failed (exit 3)"), "{text}");
        assert_eq!(hooked.lock().expect("lock").as_slice(), ["dies failed (exit 3)"]);
        assert_eq!(sleeping(&m), 0);
    }

    #[test]
    fn a_cluster_stops_without_its_scheduler_or_without_any_worker() {
        let m = marker(2);
        let config = Supervision { stop_when: StopWhen::EssentialEndsOrNoneLeft, ..Supervision::default() };
        let scheduler = ProcessSpec { essential: true, ..sh("scheduler", &format!("exec sleep {m}")) };
        let (done, _) = run(vec![scheduler.clone(), sh("w0", "exit 1"), sh("w1", "exit 2")], config.clone());
        assert_eq!(done.stop, Some(Stop::NoneLeft));
        assert_eq!(done.outcomes[0].exit, Exit::Signal(libc::SIGTERM));
        let essential = ProcessSpec { essential: true, ..sh("scheduler", "exit 4") };
        let (done, _) = run(vec![essential, sh("w0", &format!("exec sleep {m}"))], config);
        assert_eq!(done.stop, Some(Stop::EssentialEnded { name: "scheduler".into(), exit: Exit::Code(4) }));
        assert_eq!(sleeping(&m), 0);
    }

    #[test]
    fn a_job_past_its_time_limit_is_stopped() {
        let m = marker(4);
        let config = Supervision { time_limit: Some(Duration::from_millis(300)), ..Supervision::default() };
        let started = Instant::now();
        let (done, text) = run(vec![sh("stuck", &format!("exec sleep {m}")), sh("quick", "true")], config);
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(done.stop, Some(Stop::TimeLimit(Duration::from_millis(300))));
        assert_eq!(done.outcomes[0].exit, Exit::Signal(libc::SIGTERM));
        assert!(text.contains("did not end within its time limit"), "{text}");
        assert_eq!(sleeping(&m), 0);
    }

    #[test]
    fn a_stop_reaches_essential_processes_last() {
        let config = Supervision { time_limit: Some(Duration::from_millis(300)), ..Supervision::default() };
        let scheduler = ProcessSpec {
            essential: true,
            ..sh("scheduler", "trap 'echo scheduler stopped; exit 0' TERM; while :; do sleep 0.02; done")
        };
        let worker = sh("worker", "trap 'sleep 0.3; echo worker stopped; exit 0' TERM; while :; do sleep 0.02; done");
        let (done, text) = run(vec![scheduler, worker], config);
        assert_eq!(done.stop, Some(Stop::TimeLimit(Duration::from_millis(300))));
        let (w, s) = (text.find("worker stopped"), text.find("scheduler stopped"));
        assert!(w.is_some() && s.is_some() && w < s, "the worker stops before its scheduler:\n{text}");
    }

    #[test]
    fn essentials_first_stops_the_scheduler_then_what_it_left_running() {
        let config = Supervision {
            time_limit: Some(Duration::from_millis(300)),
            essentials_first: true,
            stop_when: StopWhen::EssentialEndsOrNoneLeft,
            ..Supervision::default()
        };
        // The scheduler takes its time to close its workers; one worker ends when told by it (here:
        // on its own, like a worker the scheduler closed), the other only on a signal.
        let scheduler = ProcessSpec {
            essential: true,
            ..sh("scheduler", "trap 'sleep 0.3; echo scheduler stopped; exit 0' TERM; while :; do sleep 0.02; done")
        };
        let worker = sh("worker", "trap 'echo worker stopped; exit 0' TERM; while :; do sleep 0.02; done");
        let (done, text) = run(vec![scheduler, worker], config);
        assert_eq!(done.stop, Some(Stop::TimeLimit(Duration::from_millis(300))));
        let (w, s) = (text.find("[worker] worker stopped"), text.find("[scheduler] scheduler stopped"));
        assert!(w.is_some() && s.is_some() && s < w, "the scheduler stops before its workers:\n{text}");
        assert!(text.contains("SIGTERM sent to scheduler, then to the 1 other process(es) still running"), "{text}");
    }

    #[test]
    fn output_is_bounded_per_line_and_need_not_be_text() {
        // Bytes that are not UTF-8, a 100 KB line without an end, and a progress bar's `\r`.
        let script = "printf 'before\\n\\377\\376 binary\\n'; head -c 100000 /dev/zero | tr '\\0' a; \\
                      printf '\\n10%%\\r20%%\\r\\n'; echo after";
        let (done, text) = run(vec![sh("noisy", script)], Supervision::default());
        assert_eq!(done.outcomes[0].exit, Exit::Code(0), "{text}");
        assert!(text.contains("[noisy] before\n[noisy] \u{fffd}\u{fffd} binary\n"), "{text}");
        assert!(text.contains("[noisy] after"), "the worker lived on: {text}");
        assert!(text.contains("[noisy] 10%\n[noisy] 20%\n"), "{text}");
        let longest = text.lines().map(str::len).max().unwrap_or(0);
        assert!(longest <= MAX_LINE + 16, "lines are cut at {MAX_LINE} bytes, not {longest}");
        let a_bytes: usize = text
            .lines()
            .filter_map(|l| l.strip_prefix("[noisy] "))
            .filter(|l| l.starts_with("aaa"))
            .map(str::len)
            .sum();
        assert_eq!(a_bytes, 100_000, "nothing of the long line is lost");
    }

    #[test]
    fn what_a_worker_leaves_in_its_group_goes_with_it() {
        let m = marker(3);
        let (done, _) = run(vec![sh("parent", &format!("sleep {m} & sleep {m} & exit 0"))], Supervision::default());
        assert_eq!(done.outcomes[0].exit, Exit::Code(0));
        let deadline = Instant::now() + Duration::from_secs(2);
        while sleeping(&m) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(sleeping(&m), 0, "background children of an exited worker are killed");
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpus("0-3,8,10-11"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert!(parse_cpus("x").is_empty());
    }

    #[test]
    fn signal_stops_exit_as_shells_report_them() {
        assert_eq!(Stop::Signal(libc::SIGINT).exit_status(), Some(130));
        assert_eq!(Stop::Signal(libc::SIGTERM).exit_status(), Some(143));
        assert_eq!(Stop::Signal(libc::SIGHUP).exit_status(), Some(129));
        assert_eq!(Stop::NoneLeft.exit_status(), None);
    }
}
