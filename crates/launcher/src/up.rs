//! `up`: one process per planned worker, with its plan's environment and the cluster's
//! rendezvous, running either the built-in worker or the user's command.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::time::{Duration, Instant};

use cluster_core::{WorkerKind, WorkerPlan};
use transport::TransferPath;
use transport::rendezvous::RendezvousServer;

use crate::builtin::{Assignment, DeviceCheck, PairResult, Report};
use crate::worker_env;
use std::sync::Arc;

use crate::{LauncherError, Outcome, ProcessSpec, Signals, Sink, Stop, StopHook, StopWhen, Supervision, supervise};

use transport::device::DeviceKind;

/// What to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The planned workers, in rank order.
    pub workers: Vec<WorkerPlan>,
    /// The planned path between two workers, by their ranks (places in `workers`), the lower
    /// first ([`crate::plan_paths::PlanOutput::paths_by_rank`]).
    pub paths: HashMap<(usize, usize), TransferPath>,
    /// Which device memory the workers use (simulated MIG workers get simulated MIG instances,
    /// where IPC does not open: [`transport::device::WorkerDevice`]).
    pub memory: DeviceKind,
    /// The user's command and arguments; `None` runs the built-in worker.
    pub command: Option<Vec<OsString>>,
    /// The program that runs the built-in worker (`gpucluster`, with `worker` as argument).
    pub program: OsString,
    /// Supervision. `up` makes a job all or nothing: a worker that fails for good stops the
    /// others ([`StopWhen::AnyFails`]), whatever this says.
    pub supervision: Supervision,
}

/// How a job went.
#[derive(Debug)]
pub struct UpReport {
    /// Worker names by rank.
    pub names: Vec<String>,
    /// How each process ended.
    pub outcomes: Vec<Outcome>,
    /// Device checks of the built-in workers.
    pub checks: Vec<DeviceCheck>,
    /// Measured pairs.
    pub pairs: Vec<PairResult>,
    /// Failures the built-in workers reported.
    pub failures: Vec<String>,
    /// From the start until every worker had joined the rendezvous (built-in workers join).
    pub ready_after: Option<Duration>,
    /// From the start until every process had ended.
    pub total: Duration,
    /// Pairs the built-in workers were to measure (0 when running a command).
    pub expected_pairs: usize,
    /// Why the job stopped before every worker ended on its own, if it did.
    pub stop: Option<Stop>,
    /// Connections to the rendezvous that never proved they hold the job's secret (another
    /// user, a port scanner): refused, and no part of the job's outcome.
    pub refused: transport::Refusals,
}

impl UpReport {
    /// Whether every process ended well and every planned pair was measured.
    pub fn success(&self) -> bool {
        self.stop.is_none()
            && self.outcomes.iter().all(|o| o.exit.success())
            && self.failures.is_empty()
            && self.pairs.len() >= self.expected_pairs
    }
}

/// How long the built-in acceptance test may run, plus a quarter of a second per worker.
pub const BUILTIN_TIME_LIMIT: Duration = Duration::from_secs(60);

/// The pairs the built-in workers measure: all of them for up to 8 workers, else a ring.
pub fn pairs_to_measure(world: usize) -> Vec<(usize, usize)> {
    if world <= 8 {
        (0..world).flat_map(|a| (a + 1..world).map(move |b| (a, b))).collect()
    } else {
        (0..world).map(|a| (a, (a + 1) % world)).collect()
    }
}

/// Starts the workers and supervises them to the end.
///
/// # Errors
/// The rendezvous or the signal handlers cannot be set up.
pub async fn up(job: Job, sink: Sink, signals: &mut Signals) -> Result<UpReport, LauncherError> {
    let started = Instant::now();
    let world = job.workers.len();
    let names: Vec<String> = job.workers.iter().map(|w| w.name.clone()).collect();
    let assignment = assignment(&job, &names);
    let expected_pairs = if job.command.is_none() { assignment.pairs.len() } else { 0 };
    let secret = transport::Secret::random().map_err(LauncherError::Transport)?;
    let server = start_rendezvous(&secret, world, &assignment)?;
    let specs = worker_specs(&job, server.address(), &secret);
    let server = Arc::new(server);
    let ready = watch_ready(server.clone(), world, started);
    let supervision = supervision_for(&job, server.clone());
    let supervised = supervise(specs, &supervision, sink, signals).await?;
    let (outcomes, stop) = (supervised.outcomes, supervised.stop);
    let ready_after = if ready.is_finished() {
        ready.await.ok()
    } else {
        ready.abort();
        None
    };
    // A stopped job's missing reports will never come.
    let expected_reports = if job.command.is_none() && stop.is_none() { world + expected_pairs } else { 0 };
    wait_for_reports(&server, expected_reports).await;
    let (checks, measured, failures) = read_reports(&server, &names);
    Ok(UpReport {
        names,
        outcomes,
        checks,
        pairs: measured,
        failures,
        ready_after,
        total: started.elapsed(),
        expected_pairs,
        stop,
        refused: server.refused(),
    })
}

/// What the built-in workers do: the pairs to measure, each with its planned path (host-staged
/// where the plan has none), and how much to send (less on simulated memory).
fn assignment(job: &Job, names: &[String]) -> Assignment {
    let simulated = job.memory == DeviceKind::Simulated;
    let pairs: Vec<(usize, usize, TransferPath)> = pairs_to_measure(names.len())
        .into_iter()
        .map(|(a, b)| {
            let path = job.paths.get(&(a.min(b), a.max(b))).copied().unwrap_or(TransferPath::HostStaged);
            (a, b, path)
        })
        .collect();
    Assignment {
        names: names.to_vec(),
        pairs,
        bytes: if simulated { 1 << 20 } else { 64 << 20 },
        messages: if simulated { 4 } else { 16 },
        round_trips: if simulated { 20 } else { 200 },
    }
}

/// The job's rendezvous on loopback, handing every worker the assignment.
fn start_rendezvous(
    secret: &transport::Secret,
    world: usize,
    assignment: &Assignment,
) -> Result<RendezvousServer, LauncherError> {
    let extra = serde_json::to_value(assignment).unwrap_or_default();
    // Room for every worker's handshake at once, whatever strangers do meanwhile.
    let limits = transport::rendezvous::Limits {
        max_handshakes: (2 * world).max(transport::rendezvous::Limits::default().max_handshakes),
        ..transport::rendezvous::Limits::default()
    };
    RendezvousServer::start_with("127.0.0.1:0", secret.clone(), world, extra, limits).map_err(LauncherError::Transport)
}

/// One process per worker: the user's command or the built-in worker, with the plan's
/// environment and the job's (rank, world, rendezvous, secret, device).
fn worker_specs(job: &Job, rendezvous: &str, secret: &transport::Secret) -> Vec<ProcessSpec> {
    let world = job.workers.len();
    // Names the workers' abstract sockets; one launcher process runs one job.
    let job_id = std::process::id().to_string();
    job.workers
        .iter()
        .enumerate()
        .map(|(rank, w)| {
            let mut env: BTreeMap<String, String> = w.env();
            env.insert(worker_env::RANK.into(), rank.to_string());
            env.insert(worker_env::WORLD_SIZE.into(), world.to_string());
            env.insert(worker_env::RENDEZVOUS.into(), rendezvous.to_owned());
            env.insert(worker_env::SECRET.into(), secret.to_hex());
            env.insert(worker_env::JOB.into(), job_id.clone());
            env.insert(
                worker_env::DEVICE_MEMORY_LIMIT.into(),
                w.device_memory_limit_bytes.map(|b| b.to_string()).unwrap_or_default(),
            );
            let device = transport::device::WorkerDevice::of(job.memory, w.kind == WorkerKind::Mig);
            env.insert(worker_env::DEVICE.into(), device.name().into());
            let (program, args) = match &job.command {
                Some(cmd) => (cmd[0].clone(), cmd[1..].to_vec()),
                None => (job.program.clone(), vec![OsString::from("worker")]),
            };
            ProcessSpec {
                name: w.name.clone(),
                program,
                args,
                env,
                cpu_affinity: w.cpu_affinity.clone(),
                essential: false,
                cwd: None,
            }
        })
        .collect()
}

/// How long after `started` every worker had joined the rendezvous, once they all have.
fn watch_ready(server: Arc<RendezvousServer>, world: usize, started: Instant) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        while server.joined() < world {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        started.elapsed()
    })
}

/// `up` is all or nothing; a job that stops releases the workers waiting at the rendezvous with
/// the reason at once; the built-in test gets a time limit.
fn supervision_for(job: &Job, server: Arc<RendezvousServer>) -> Supervision {
    let earlier = job.supervision.on_stop.clone();
    let on_stop: StopHook = Arc::new(move |why: &Stop| {
        server.abort(&format!("the job is stopping: {why}"));
        if let Some(hook) = &earlier {
            hook(why);
        }
    });
    // The built-in test is meant to end: a worker that stops or hangs must not hold it for ever.
    let world = job.workers.len();
    let time_limit = job.command.is_none().then(|| BUILTIN_TIME_LIMIT + Duration::from_millis(250) * world as u32);
    Supervision {
        stop_when: StopWhen::AnyFails,
        on_stop: Some(on_stop),
        time_limit: job.supervision.time_limit.or(time_limit),
        ..job.supervision.clone()
    }
}

/// Reports travel on their own connections; gives the last ones a moment (500 ms) to land.
async fn wait_for_reports(server: &RendezvousServer, expected: usize) {
    let deadline = Instant::now() + Duration::from_millis(500);
    while server.reports().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The workers' reports, sorted: device checks by rank, pairs by ranks, and every failure (the
/// rendezvous' own errors first).
fn read_reports(server: &RendezvousServer, names: &[String]) -> (Vec<DeviceCheck>, Vec<PairResult>, Vec<String>) {
    let world = names.len();
    let mut checks = Vec::new();
    let mut measured = Vec::new();
    let mut failures: Vec<String> = server.errors();
    for r in server.reports() {
        match serde_json::from_value::<Report>(r) {
            Ok(Report::Device(c)) if c.rank < world => checks.push(c),
            Ok(Report::Pair(p)) if p.from < world && p.to < world => measured.push(p),
            Ok(Report::Device(_) | Report::Pair(_)) => failures.push("a report names a rank outside the job".into()),
            Ok(Report::Failed { rank, error }) => {
                failures.push(format!("{}: {error}", names.get(rank).cloned().unwrap_or_default()))
            }
            Err(e) => failures.push(format!("an unreadable report: {e}")),
        }
    }
    checks.sort_by_key(|c| c.rank);
    measured.sort_by_key(|p| (p.from, p.to));
    (checks, measured, failures)
}
