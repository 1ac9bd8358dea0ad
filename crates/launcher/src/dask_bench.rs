//! `bench dask`: the same question as `bench transport`, asked inside Dask: how fast does a
//! device array move from one worker to another, over each comm protocol.
//!
//! For each variant (a protocol, and how it is set up), this starts a real cluster with
//! `gpucluster dask local` (the launcher users run), waits until its workers have registered, runs
//! `python -m gpucluster.bench` as a client of it (an array made on one worker and taken by a
//! task on another; one warm-up, then the median of the repeats, from the receiving worker's
//! transfer log and from wall time), optionally dask-cuda's `local_cupy transpose_sum` benchmark
//! against the same cluster, and stops the cluster with SIGINT. The variants run one after the
//! other, never at once.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::LauncherError;

/// One way to run the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// Its name in reports: `gpucluster`, `gpucluster-host-staged`, `tcp`, `tls`, `ucx`,
    /// `ucx-no-ipc`.
    pub name: String,
    /// `--protocol` of `dask local`.
    pub protocol: String,
    /// `--insecure` (plain TCP and UCX cannot be secured).
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
        let v = |protocol: &str, insecure: bool, env: &[(&str, &str)]| Variant {
            name: name.to_owned(),
            protocol: protocol.to_owned(),
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
            "gpucluster" => v("gpucluster", false, &[]),
            // What MIG instances get, forced between two workers of one whole GPU.
            "gpucluster-host-staged" => v("gpucluster", false, &[("GPUCLUSTER_COMM_PATH", "host-staged")]),
            "tcp" => v("tcp", true, &[]),
            "tls" => v("tcp", false, &[]),
            "ucx" => with_context(v("ucx", true, &[])),
            "ucx-no-ipc" => with_context(v("ucx", true, &[("UCX_TLS", "^cuda_ipc")])),
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
    /// The gpucluster program (to start `dask local`).
    pub program: OsString,
    /// Arguments before `dask local` (`--topology ...`).
    pub global_args: Vec<OsString>,
    /// The Python with Dask and the gpucluster package.
    pub python: OsString,
    /// Sizes in bytes.
    pub sizes: Vec<u64>,
    /// Timed runs per size.
    pub repeats: u32,
    /// `cupy` on GPUs, `sim` on simulated devices.
    pub array: &'static str,
    /// `--workers-per-device` (2 where there is one device).
    pub workers_per_device: u32,
    /// Also run dask-cuda's `transpose_sum` benchmark.
    pub transpose_sum: bool,
}

/// How long a cluster may take to come up.
const READY: Duration = Duration::from_secs(180);

/// The cluster of one variant, stopped (SIGINT, then SIGKILL) when dropped.
struct Cluster {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: signalling our own child (the launcher, which stops its workers).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cluster {
    fn start(bench: &DaskBench, variant: &Variant) -> Result<Self, LauncherError> {
        let mut command = Command::new(&bench.program);
        command.args(&bench.global_args).args(["dask", "local", "--protocol", &variant.protocol]);
        command.arg("--python").arg(&bench.python).args(["--restart", "never"]);
        command.args(["--workers-per-device", &bench.workers_per_device.to_string()]);
        if variant.insecure {
            command.arg("--insecure");
        }
        command.envs(variant.env.iter().map(|(k, v)| (k, v)));
        // Both streams are read: the reason a cluster could not start is on its stderr.
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; the cluster dies with this process.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| LauncherError::Bench(format!("cannot start dask local: {e}")))?;
        let (tx, lines) = std::sync::mpsc::channel();
        let streams: [Option<Box<dyn std::io::Read + Send>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self { child, lines })
    }

    /// Waits for the scheduler file and every worker; returns the file.
    fn ready(&mut self) -> Result<PathBuf, LauncherError> {
        let deadline = Instant::now() + READY;
        let mut file = None;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(path) = line.strip_prefix("scheduler file: ") {
                        file = path.split(' ').next().map(PathBuf::from);
                    }
                    if line.contains("Dask worker(s) registered after") {
                        return file.ok_or_else(|| LauncherError::Bench("no scheduler file was printed".into()));
                    }
                    if seen.len() == 20 {
                        seen.remove(0);
                    }
                    seen.push(line);
                }
                Err(e) => {
                    // Disconnected: the launcher closed its output, so it ended before its
                    // workers were ready (it said why in its last lines).
                    let what = if matches!(e, std::sync::mpsc::RecvTimeoutError::Disconnected) {
                        "the cluster ended before its workers were ready".to_owned()
                    } else {
                        format!("the cluster was not ready within {} s", READY.as_secs())
                    };
                    return Err(LauncherError::Bench(format!("{what}; its last lines:\n{}", seen.join("\n"))));
                }
            }
        }
    }
}

fn client(bench: &DaskBench, variant: &Variant, file: &std::path::Path) -> Command {
    let mut command = Command::new(&bench.python);
    command.envs(variant.env.iter().map(|(k, v)| (k, v)));
    command.arg("-m").arg("gpucluster.bench").arg("--scheduler-file").arg(file);
    // A TLS cluster's credentials lie beside its scheduler file.
    if let Some(dir) = file.parent().filter(|d| d.join("ca.pem").is_file()) {
        command.arg("--security").arg(dir);
    }
    let sizes: Vec<String> = bench.sizes.iter().map(u64::to_string).collect();
    command.args(["--sizes", &sizes.join(","), "--repeats", &bench.repeats.to_string(), "--array", bench.array]);
    command.current_dir("/").stdin(Stdio::null());
    command
}

/// Runs one variant to the end.
///
/// # Errors
/// [`LauncherError::Bench`] with what failed (the cluster, or the client's own message).
pub fn run_variant(bench: &DaskBench, variant: &Variant) -> Result<VariantResult, LauncherError> {
    let mut cluster = Cluster::start(bench, variant)?;
    let file = cluster.ready()?;
    let output = client(bench, variant, &file)
        .output()
        .map_err(|e| LauncherError::Bench(format!("cannot run the benchmark client: {e}")))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let last: Vec<&str> = err.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(LauncherError::Bench(format!("{}: the client failed:\n{}", variant.name, last.join("\n"))));
    }
    let mut results = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines().filter(|l| l.starts_with('{')) {
        let m: DaskMeasurement = serde_json::from_str(line)
            .map_err(|e| LauncherError::Bench(format!("{}: an unreadable result ({e}): {line}", variant.name)))?;
        results.push(m);
    }
    let mut notes = Vec::new();
    let mut transpose_sum = Vec::new();
    if bench.transpose_sum {
        match run_transpose_sum(bench, variant, &file) {
            Ok(lines) => transpose_sum = lines,
            Err(why) => notes.push(format!("transpose_sum: {why}")),
        }
    }
    drop(cluster);
    Ok(VariantResult { variant: variant.clone(), results, transpose_sum, notes })
}

/// dask-cuda's `local_cupy transpose_sum` against the running cluster; its summary lines.
fn run_transpose_sum(bench: &DaskBench, variant: &Variant, file: &std::path::Path) -> Result<Vec<String>, String> {
    let mut command = Command::new(&bench.python);
    command.envs(variant.env.iter().map(|(k, v)| (k, v)));
    command.args(["-m", "dask_cuda.benchmarks.local_cupy", "--operation", "transpose_sum", "-s", "20000"]);
    // Chunks of 4000 x 4000 float64 (128 MB), as dask-cuda counts them: elements per side.
    command.args(["-c", "4000", "--runs", "3", "--scheduler-file"]).arg(file);
    if let Some(dir) = file.parent().filter(|d| d.join("ca.pem").is_file()) {
        command.arg("--tls-ca-file").arg(dir.join("ca.pem"));
        command.arg("--tls-cert").arg(dir.join("cert.pem"));
        command.arg("--tls-key").arg(dir.join("key.pem"));
    }
    let output = command.current_dir("/").output().map_err(|e| format!("cannot run it: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(err.lines().last().unwrap_or("it failed").to_owned());
    }
    // The lines worth keeping: wall clock and the point-to-point summary.
    Ok(text
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
        assert_eq!((v.protocol.as_str(), v.insecure), ("gpucluster", false));
        assert_eq!(v.env, [("GPUCLUSTER_COMM_PATH".to_owned(), "host-staged".to_owned())]);
        assert!(Variant::named("tcp").expect("tcp").insecure, "plain TCP, as Dask's anchors measure it");
        let err = Variant::named("carrier-pigeon").expect_err("unknown");
        assert!(err.to_string().contains("ucx-no-ipc"), "{err}");
    }
}
