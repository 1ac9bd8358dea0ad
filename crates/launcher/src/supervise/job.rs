//! The supervision loop ([`supervise`]): starts every process, waits for exits, restart delays,
//! signals and deadlines, and acts on them: restarts a failed process, stops the job when it
//! cannot go on (the stop signal, the grace period, then SIGKILL), and kills what was left to
//! the launcher. Starting a process is `spawn`'s, forwarding its output `output`'s.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::config::{Restart, StopWhen, Supervision};
use super::output::{LastLines, Output, Sink, drain_output, forward};
use super::signals::{Signals, signal_name};
use super::spawn::spawn;
use super::spec::{Exit, Outcome, ProcessSpec, Stop, Supervised};
use crate::LauncherError;
use crate::guard;

/// How long guards get to kill their subtrees after the grace period before they are killed.
const GUARD_GRACE: Duration = Duration::from_secs(2);

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
                    let mut keep: Vec<i32> = self.slots.iter().filter_map(|s| s.pid).collect();
                    keep.extend(spared(self.config));
                    kill_orphans(&keep);
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
        kill_orphans(&spared(config));
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

/// The children the job's program runs beside it, which are no orphans of the job's.
fn spared(config: &Supervision) -> Vec<i32> {
    config.spared.lock().map(|pids| pids.clone()).unwrap_or_default()
}

/// Kills and reaps whatever was reparented to the launcher, `keep` apart (the running guards):
/// a guard that was itself killed leaves its worker's descendants to us, the subreaper. Only for
/// a launcher process whose children are its workers' guards and the children it spares
/// ([`Supervision::spared`]).
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
