//! `bench dask`: the same question as `bench transport`, asked inside Dask: how fast does a
//! device array move from one worker to another, over each comm protocol.
//!
//! For each variant (a protocol, and how it is set up), this starts a real cluster as
//! `gpucluster dask local` starts one: the cluster spec of the variant's request
//! ([`crate::dask::cluster_spec`]), brought up with [`crate::dask::session`] and supervised with
//! [`crate::supervise`]. Once its workers have registered it runs `python -m gpucluster.bench` as
//! a client of it (an array made on one worker and taken by a task on another; one warm-up, then
//! the median of the repeats, from the receiving worker's transfer log and from wall time),
//! optionally dask-cuda's `local_cupy transpose_sum` benchmark against the same cluster, and stops
//! the cluster as SIGINT would. The variants run one after the other, never at once.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dask::python::Interpreter;
use crate::dask::{Credentials, HostFacts, ProtocolRequest, Request, SchedulerRequest, session};
use crate::workdir::PrivateDir;
use crate::{LauncherError, RestartFlag, Signals, Stop, StopWhen, Supervision};

/// One way to run the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// Its name in reports: `gpucluster`, `gpucluster-host-staged`, `tcp`, `tls`, `ucx`,
    /// `ucx-no-ipc`.
    pub name: String,
    /// The protocol asked for.
    pub protocol: ProtocolRequest,
    /// Whether the cluster is declared insecure (plain TCP and UCX cannot be secured).
    pub insecure: bool,
    /// Extra environment of the cluster's processes.
    pub env: Vec<(String, String)>,
}

impl Variant {
    /// The variant called `name`.
    ///
    /// # Errors
    /// [`LauncherError::Bench`] naming the variants there are.
    pub fn named(name: &str) -> Result<Self, LauncherError> {
        let v = |protocol: ProtocolRequest, insecure: bool, env: &[(&str, &str)]| Variant {
            name: name.to_owned(),
            protocol,
            insecure,
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        };
        // The client speaks UCX too, and needs the CUDA context the cluster's processes get.
        let ucx_context: Vec<(String, String)> = crate::dask::spec::ucx_cuda_context()
            .iter()
            .map(|(k, v)| (crate::dask::spec::dask_env_name(k), v.env_value()))
            .collect();
        let with_context = |mut variant: Variant| {
            variant.env.extend(ucx_context.iter().cloned());
            variant
        };
        Ok(match name {
            "gpucluster" => v(ProtocolRequest::Gpucluster, false, &[]),
            // What MIG instances get, forced between two workers of one whole GPU.
            "gpucluster-host-staged" => {
                v(ProtocolRequest::Gpucluster, false, &[(crate::worker_env::COMM_PATH, "host-staged")])
            }
            "tcp" => v(ProtocolRequest::Tcp, true, &[]),
            "tls" => v(ProtocolRequest::Tcp, false, &[]),
            "ucx" => with_context(v(ProtocolRequest::Ucx, true, &[])),
            "ucx-no-ipc" => with_context(v(ProtocolRequest::Ucx, true, &[("UCX_TLS", "^cuda_ipc")])),
            other => {
                return Err(LauncherError::Bench(format!(
                    "unknown variant `{}`: gpucluster, gpucluster-host-staged, tcp, tls, ucx or ucx-no-ipc",
                    other.escape_debug()
                )));
            }
        })
    }
}

/// One size's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaskMeasurement {
    /// Bytes moved.
    pub bytes: u64,
    /// From the receiving worker's transfer log, GB/s (median).
    pub log_gbps: Option<f64>,
    /// From submitting the consuming task to its result, GB/s (median).
    pub wall_gbps: f64,
    /// Timed runs.
    pub repeats: u32,
}

/// One variant's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantResult {
    /// The variant.
    pub variant: Variant,
    /// Per size.
    pub results: Vec<DaskMeasurement>,
    /// The summary lines of dask-cuda's `local_cupy transpose_sum` benchmark, where it ran.
    pub transpose_sum: Vec<String>,
    /// Why a part did not run, if one did not.
    pub notes: Vec<String>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DaskBench {
    /// The machine the plan describes (`nvml`: this one, real devices).
    pub topology: gpu_topology::TopologySpec,
    /// Its snapshot.
    pub snapshot: gpu_topology::Snapshot,
    /// The Python with Dask and the gpucluster package, and what it has.
    pub python: Interpreter,
    /// The program that runs the guard between the launcher and each process (`gpucluster`).
    pub guard: OsString,
    /// Sizes in bytes.
    pub sizes: Vec<u64>,
    /// Timed runs per size.
    pub repeats: u32,
    /// `cupy` on GPUs, `sim` on simulated devices.
    pub array: &'static str,
    /// Workers per device (2 where there is one device).
    pub workers_per_device: u32,
    /// Also run dask-cuda's `transpose_sum` benchmark.
    pub transpose_sum: bool,
}

/// How long a cluster may take to come up.
const READY: Duration = Duration::from_secs(180);
/// Lines of the cluster's output kept to say why it could not start.
const LAST_LINES: usize = 20;

/// The cluster's output, of which only the last lines are kept (the reason a cluster could not
/// start is in them); nothing reaches the terminal.
#[derive(Debug, Clone, Default)]
struct LastLines(Arc<Mutex<VecDeque<String>>>);

impl std::io::Write for LastLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut lines) = self.0.lock() {
            for line in String::from_utf8_lossy(buf).lines().filter(|l| !l.trim().is_empty()) {
                if lines.len() == LAST_LINES {
                    lines.pop_front();
                }
                lines.push_back(line.to_owned());
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LastLines {
    fn text(&self) -> String {
        self.0.lock().map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default()
    }
}

/// Runs one variant to the end: `Err(signal)` where a stop signal came first (the cluster and
/// the client are stopped, and nothing is reported).
///
/// # Errors
/// [`LauncherError::Bench`] with what failed (the cluster, with its last lines, or the client's
/// own message); the spec's refusals as they are.
pub async fn run_variant(
    bench: &DaskBench,
    variant: &Variant,
    signals: &mut Signals,
) -> Result<Result<VariantResult, LauncherError>, i32> {
    let prepared = match prepare(bench, variant) {
        Ok(prepared) => prepared,
        Err(e) => return Ok(Err(e)),
    };
    let Prepared { dir, session, supervision, expected, notes } = prepared;
    let spared = supervision.spared.clone();
    let Some(file) = session.scheduler_file.clone() else {
        return Ok(Err(LauncherError::Bench("the cluster has no scheduler of its own".into())));
    };
    let tls = session.tls.as_ref().map(|_| dir.path().to_owned());
    let output = LastLines::default();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let sink: crate::Sink = Arc::new(Mutex::new(session::Registrations::new(
        output.clone(),
        expected,
        Box::new(move |_| {
            let _ = ready_tx.send(());
            Ok(())
        }),
    )));
    let stopper = signals.stopper();
    let cancel = Arc::new(AtomicBool::new(false));
    let supervising = {
        let cancel = cancel.clone();
        let watched = &mut *signals;
        async move {
            let supervised = crate::supervise(session.processes, &supervision, sink, watched).await;
            // The cluster is gone: a client still waiting on it is stopped too.
            cancel.store(true, Ordering::SeqCst);
            supervised
        }
    };
    let measuring = {
        let cancel = cancel.clone();
        let (bench, variant) = (bench.clone(), variant.clone());
        let output = output.clone();
        let spared = spared.clone();
        async move {
            let measured = match tokio::time::timeout(READY, ready_rx).await {
                Ok(Ok(())) => tokio::task::spawn_blocking(move || {
                    measure(&bench, &variant, &file, tls.as_deref(), &Client { cancel: &cancel, spared: &spared })
                })
                .await
                .unwrap_or_else(|e| Err(LauncherError::Bench(format!("the benchmark client failed: {e}")))),
                // The sink went with the cluster: it ended before its workers were ready (and said
                // why in its last lines).
                Ok(Err(_)) => Err(LauncherError::Bench(format!(
                    "the cluster ended before its workers were ready; its last lines:\n{}",
                    output.text()
                ))),
                Err(_) => Err(LauncherError::Bench(format!(
                    "the cluster was not ready within {} s; its last lines:\n{}",
                    READY.as_secs(),
                    output.text()
                ))),
            };
            stopper.stop();
            measured
        }
    };
    let (supervised, measured) = tokio::join!(supervising, measuring);
    drop(dir);
    // A stop signal (not the measuring's own stop), whenever it came, ends the bench: what the
    // client saw of a cluster going away is no result.
    if let Some(signal) = signals.signalled() {
        return Err(signal);
    }
    let supervised = match supervised {
        Ok(supervised) => supervised,
        Err(e) => return Ok(Err(e)),
    };
    // A cluster that stopped by itself (its scheduler ended, no worker could run) is what went
    // wrong, rather than what its client then saw.
    let measured = match (measured, &supervised.stop) {
        (Err(_), Some(stop)) if !matches!(stop, Stop::Signal(_)) => Err(LauncherError::Bench(format!(
            "the cluster stopped ({stop}) before the client was done; its last lines:\n{}",
            output.text()
        ))),
        (measured, _) => measured,
    };
    Ok(measured.map(|mut result| {
        result.notes.extend(notes);
        result
    }))
}

/// A variant's cluster, ready to start.
struct Prepared {
    /// Its private directory.
    dir: PrivateDir,
    /// Its processes, with the variant's environment.
    session: session::Session,
    /// Their supervision.
    supervision: Supervision,
    /// How many workers will register.
    expected: usize,
    /// What its spec says of it (a protocol open to every user of the host, say).
    notes: Vec<String>,
}

/// The variant's cluster, ready to start.
fn prepare(bench: &DaskBench, variant: &Variant) -> Result<Prepared, LauncherError> {
    let request = cluster_core::PlanRequest { workers_per_device: bench.workers_per_device, ..Default::default() };
    let plan = cluster_core::plan(&bench.snapshot, &request).map_err(|e| LauncherError::Bench(e.to_string()))?;
    let output = crate::plan_paths::PlanOutput::new(&bench.snapshot, &plan);
    let dir = PrivateDir::create("gpucluster-dask")?;
    let request = Request {
        protocol: variant.protocol,
        insecure: variant.insecure,
        credentials: Credentials::CanGenerate,
        ..Request::new(bench.topology.clone(), SchedulerRequest::Local, dir.path().display().to_string())
    };
    let spec = crate::dask::cluster_spec(&output, &request, &bench.python.facts, &HostFacts::of_this_process())?;
    let mut session = session::prepare(&spec, &bench.python, &dir, None, &[])?;
    for process in &mut session.processes {
        process.env.extend(variant.env.iter().cloned());
    }
    let mut supervision = Supervision::from_flags(10.0, RestartFlag::Never, 0)?;
    supervision.stop_when = StopWhen::EssentialEndsOrNoneLeft;
    supervision.guard = Some(bench.guard.clone());
    supervision.private_dir = Some(dir.path().to_owned());
    supervision.essentials_first = true;
    // What the spec says of the cluster (a protocol open to every user of the host, say) goes
    // with the variant's figures.
    let notes = spec.notes.iter().map(|n| n.0.to_string()).collect();
    Ok(Prepared { dir, session, supervision, expected: spec.workers.len(), notes })
}

/// The client's figures, then dask-cuda's `transpose_sum` where asked for, against the cluster
/// of `file` (whose TLS credentials lie in `tls`, if it speaks TLS); stops when `cancel` is set.
fn measure(
    bench: &DaskBench,
    variant: &Variant,
    file: &Path,
    tls: Option<&Path>,
    how: &Client<'_>,
) -> Result<VariantResult, LauncherError> {
    let output = run_until(client(bench, variant, file, tls), how)
        .map_err(|e| LauncherError::Bench(format!("cannot run the benchmark client: {e}")))?;
    if !output.success {
        let last: Vec<&str> = output.stderr.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(LauncherError::Bench(format!("{}: the client failed:\n{}", variant.name, last.join("\n"))));
    }
    let mut results = Vec::new();
    for line in output.stdout.lines().filter(|l| l.starts_with('{')) {
        let m: DaskMeasurement = serde_json::from_str(line)
            .map_err(|e| LauncherError::Bench(format!("{}: an unreadable result ({e}): {line}", variant.name)))?;
        results.push(m);
    }
    let mut notes = Vec::new();
    let mut transpose_sum = Vec::new();
    if bench.transpose_sum {
        match run_transpose_sum(bench, variant, file, tls, how) {
            Ok(lines) => transpose_sum = lines,
            Err(why) => notes.push(format!("transpose_sum: {why}")),
        }
    }
    Ok(VariantResult { variant: variant.clone(), results, transpose_sum, notes })
}

fn client(bench: &DaskBench, variant: &Variant, file: &Path, tls: Option<&Path>) -> Command {
    let mut command = Command::new(&bench.python.program);
    command.envs(variant.env.iter().map(|(k, v)| (k, v)));
    command.arg("-m").arg("gpucluster.bench").arg("--scheduler-file").arg(file);
    if let Some(dir) = tls {
        command.arg("--security").arg(dir);
    }
    let sizes: Vec<String> = bench.sizes.iter().map(u64::to_string).collect();
    command.args(["--sizes", &sizes.join(","), "--repeats", &bench.repeats.to_string(), "--array", bench.array]);
    command
}

/// What a client printed, and whether it succeeded.
struct ClientOutput {
    success: bool,
    stdout: String,
    stderr: String,
}

/// How the bench's clients run beside the cluster.
struct Client<'a> {
    /// Set once the cluster is gone: a client still running is killed.
    cancel: &'a AtomicBool,
    /// Where a running client's pid is kept, so that the supervisor's clean-up spares it.
    spared: &'a crate::SparedChildren,
}

/// Runs `command` from `/` to its end, or until the cluster is gone (then it is killed); it
/// dies with this process.
fn run_until(mut command: Command, how: &Client<'_>) -> std::io::Result<ClientOutput> {
    command.current_dir("/").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: setpgid and prctl are async-signal-safe. A process group of its own: a Ctrl-C
    // typed into the terminal stops the bench, which stops the client (`cancel`), rather than
    // reaching the client first as its own KeyboardInterrupt; and it dies with this process.
    unsafe {
        command.pre_exec(|| {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pid = child.id() as i32;
    if let Ok(mut spared) = how.spared.lock() {
        spared.push(pid);
    }
    let output = wait_for_client(&mut child, how.cancel);
    if let Ok(mut spared) = how.spared.lock() {
        spared.retain(|p| *p != pid);
    }
    output
}

/// The client's output, once it ended or was killed because `cancel` was set.
fn wait_for_client(child: &mut std::process::Child, cancel: &AtomicBool) -> std::io::Result<ClientOutput> {
    let reader = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = reader(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let stderr = reader(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if cancel.load(Ordering::SeqCst) {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(ClientOutput {
        success: status.success(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// dask-cuda's `local_cupy transpose_sum` against the running cluster; its summary lines.
fn run_transpose_sum(
    bench: &DaskBench,
    variant: &Variant,
    file: &Path,
    tls: Option<&Path>,
    how: &Client<'_>,
) -> Result<Vec<String>, String> {
    let mut command = Command::new(&bench.python.program);
    command.envs(variant.env.iter().map(|(k, v)| (k, v)));
    command.args(["-m", "dask_cuda.benchmarks.local_cupy", "--operation", "transpose_sum", "-s", "20000"]);
    // Chunks of 4000 x 4000 float64 (128 MB), as dask-cuda counts them: elements per side.
    command.args(["-c", "4000", "--runs", "3", "--scheduler-file"]).arg(file);
    if let Some(dir) = tls {
        command.arg("--tls-ca-file").arg(dir.join("ca.pem"));
        command.arg("--tls-cert").arg(dir.join("cert.pem"));
        command.arg("--tls-key").arg(dir.join("key.pem"));
    }
    let output = run_until(command, how).map_err(|e| format!("cannot run it: {e}"))?;
    if !output.success {
        return Err(output.stderr.lines().last().unwrap_or("it failed").to_owned());
    }
    // The lines worth keeping: wall clock and the point-to-point summary.
    Ok(output
        .stdout
        .lines()
        .filter(|l| {
            l.contains("Wall clock") || l.contains("Bandwidth") || l.contains("Data processed") || l.contains("|")
        })
        .map(|l| l.trim_end().to_owned())
        .take(40)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_named_and_unknown_ones_listed() {
        let v = Variant::named("gpucluster-host-staged").expect("variant");
        assert_eq!((v.protocol, v.insecure), (ProtocolRequest::Gpucluster, false));
        assert_eq!(v.env, [("GPUCLUSTER_COMM_PATH".to_owned(), "host-staged".to_owned())]);
        assert!(Variant::named("tcp").expect("tcp").insecure, "plain TCP, as Dask's anchors measure it");
        let err = Variant::named("carrier-pigeon").expect_err("unknown");
        assert!(err.to_string().contains("ucx-no-ipc"), "{err}");
    }
}
