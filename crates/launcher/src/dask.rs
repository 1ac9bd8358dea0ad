//! The Dask adapter: the plan's workers as Dask workers (`dask cuda worker` where dask-cuda is
//! installed, else `dask worker`), one per device, and for `dask local` a scheduler beside them.
//!
//! Every worker gets `--nthreads 1`, its name from the plan, a host memory limit (this host's
//! memory split between its workers), its device memory limit (`--device-memory-limit` for
//! dask-cuda, `GPUCLUSTER_DEVICE_MEMORY_LIMIT` for both), its Dask resources, and its plan's
//! environment, so a MIG worker sees exactly its own instance. Workers talk TCP: the path a MIG
//! cluster has anyway (UCX with NVLink needs whole, NVLinked GPUs and distributed-ucxx).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use cluster_core::WorkerPlan;

use crate::{LauncherError, ProcessSpec};

/// What the Python environment offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonInfo {
    /// The interpreter.
    pub python: OsString,
    /// `distributed.__version__`.
    pub distributed: String,
    /// Whether `dask_cuda` can be imported.
    pub dask_cuda: bool,
    /// Whether `distributed_ucxx` (Dask's UCX comm) can be imported.
    pub ucxx: bool,
}

/// The comm protocol for a local cluster, and why.
///
/// UCX pays off only where it can use NVLink: between whole GPUs with P2P over NVLink. MIG
/// instances have no CUDA IPC, and UCX without it is slower than Dask's TCP comm path for large
/// GPU messages on some sizes and no faster on others (`docs/benchmarks.md`), so anything else
/// gets TCP.
pub fn choose_protocol(all_pairs_nvlink: bool, workers: usize, python: &PythonInfo) -> (&'static str, String) {
    match (all_pairs_nvlink && workers > 1, python.ucxx) {
        (true, true) => (
            "ucx",
            "every pair of workers is two whole GPUs with P2P over NVLink, and distributed-ucxx is installed".into(),
        ),
        (true, false) => (
            "tcp",
            "the GPUs are NVLinked, but distributed-ucxx is not installed (pip install distributed-ucxx-cu13 for UCX)"
                .into(),
        ),
        (false, _) => (
            "tcp",
            "MIG instances, GPUs without NVLink, or one worker: nothing for UCX's cuda_ipc/NVLink to use".into(),
        ),
    }
}

/// Checks that `python` can run Dask.
///
/// # Errors
/// [`LauncherError::Dask`] saying how to install it.
pub fn probe_python(python: &OsString) -> Result<PythonInfo, LauncherError> {
    let script = "import dask, distributed, importlib.util; print(distributed.__version__); \
                  print(importlib.util.find_spec('dask_cuda') is not None); \
                  print(importlib.util.find_spec('distributed_ucxx') is not None)";
    let how = format!(
        "install it with `{0} -m pip install \"dask[distributed]\"` (and `dask-cuda` for GPU workers), \
         or pass --python with an interpreter that has it",
        python.to_string_lossy()
    );
    let output = Command::new(python)
        .args(["-c", script])
        .output()
        .map_err(|e| LauncherError::Dask(format!("cannot run `{}` ({e}); {how}", python.to_string_lossy())))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim().to_owned();
        return Err(LauncherError::Dask(format!(
            "Dask is not installed for `{}` ({last}); {how}",
            python.to_string_lossy()
        )));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    Ok(PythonInfo {
        python: python.clone(),
        distributed: lines.next().unwrap_or("").trim().to_owned(),
        dask_cuda: lines.next().is_some_and(|l| l.trim() == "True"),
        ucxx: lines.next().is_some_and(|l| l.trim() == "True"),
    })
}

/// Reads a scheduler file and returns the scheduler's address.
///
/// # Errors
/// [`LauncherError::Dask`] naming the file and what is wrong with it.
pub fn scheduler_address(file: &Path) -> Result<String, LauncherError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        LauncherError::Dask(format!(
            "cannot read the scheduler file {}: {e}; it is written by `dask scheduler --scheduler-file FILE`",
            file.display()
        ))
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| LauncherError::Dask(format!("{} is not a Dask scheduler file (not JSON: {e})", file.display())))?;
    json.get("address").and_then(|a| a.as_str()).map(str::to_owned).ok_or_else(|| {
        LauncherError::Dask(format!("{} is not a Dask scheduler file: it has no \"address\"", file.display()))
    })
}

/// How to start the workers.
#[derive(Debug, Clone)]
pub struct DaskWorkers {
    /// The interpreter and what it has.
    pub python: PythonInfo,
    /// The scheduler file the workers read.
    pub scheduler_file: PathBuf,
    /// The address workers listen on (`--host`), if not the default.
    pub host: Option<String>,
    /// Host memory per worker, bytes.
    pub host_memory_per_worker: Option<u64>,
    /// `--protocol` for the workers, where it must be set (a local cluster on UCX).
    pub protocol: Option<&'static str>,
}

fn resources(w: &WorkerPlan) -> String {
    w.resources().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// One process per planned worker.
pub fn worker_specs(workers: &[WorkerPlan], config: &DaskWorkers) -> Vec<ProcessSpec> {
    workers
        .iter()
        .map(|w| {
            // The CLI entry points directly: `python -m dask` imports every CLI plugin first.
            let mut args: Vec<OsString> = vec!["-c".into()];
            if config.python.dask_cuda {
                args.push(cli_entry("dask_cuda.cli", "worker", "dask-cuda-worker").into());
            } else {
                args.push(cli_entry("distributed.cli.dask_worker", "main", "dask-worker").into());
            }
            args.extend(["--scheduler-file".into(), config.scheduler_file.clone().into_os_string()]);
            args.extend(["--name".into(), w.name.clone().into(), "--nthreads".into(), "1".into()]);
            args.extend(["--resources".into(), resources(w).into(), "--no-dashboard".into()]);
            if let Some(bytes) = config.host_memory_per_worker {
                args.extend(["--memory-limit".into(), bytes.to_string().into()]);
            }
            // The nanny forks its worker instead of spawning a fresh interpreter that imports
            // Dask (and dask-cuda, pandas, ...) all over again: that halves start-up. The nanny
            // never touches CUDA (dask-cuda reads the device through NVML), so forking is safe.
            if config.python.dask_cuda {
                let limit = w.device_memory_limit_bytes.map_or_else(|| "0".to_owned(), |b| b.to_string());
                args.extend(["--device-memory-limit".into(), limit.into()]);
                args.extend(["--multiprocessing-method".into(), "fork".into()]);
            } else {
                args.extend(["--nworkers".into(), "1".into()]);
            }
            if let Some(host) = &config.host {
                args.extend(["--host".into(), host.clone().into()]);
            }
            if let Some(protocol) = config.protocol {
                args.extend(["--protocol".into(), protocol.into()]);
            }
            let mut env: BTreeMap<String, String> = w.env();
            env.insert("DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD".into(), "fork".into());
            env.insert(
                "GPUCLUSTER_DEVICE_MEMORY_LIMIT".into(),
                w.device_memory_limit_bytes.map(|b| b.to_string()).unwrap_or_default(),
            );
            ProcessSpec {
                name: w.name.clone(),
                program: config.python.python.clone(),
                args,
                env,
                cpu_affinity: w.cpu_affinity.clone(),
            }
        })
        .collect()
}

/// Python that runs a Dask CLI command with the arguments after `-c CODE`. `python -m dask`
/// would import every installed CLI plugin (dask-cuda's among them, about 2 s on the H100 machine)
/// before starting even a scheduler.
fn cli_entry(module: &str, function: &str, program: &str) -> String {
    format!("import sys; sys.argv[0] = '{program}'; from {module} import {function}; sys.exit({function}())")
}

/// The scheduler of `dask local`, writing `scheduler_file`.
pub fn scheduler_spec(python: &PythonInfo, scheduler_file: &Path, host: Option<&str>, protocol: &str) -> ProcessSpec {
    let mut args: Vec<OsString> =
        vec!["-c".into(), cli_entry("distributed.cli.dask_scheduler", "main", "dask-scheduler").into()];
    args.extend(["--scheduler-file".into(), scheduler_file.as_os_str().to_owned(), "--no-dashboard".into()]);
    args.extend(["--host".into(), host.unwrap_or("127.0.0.1").into(), "--port".into(), "0".into()]);
    args.extend(["--protocol".into(), protocol.into()]);
    ProcessSpec {
        name: "scheduler".into(),
        program: python.python.clone(),
        args,
        env: BTreeMap::new(),
        cpu_affinity: None,
    }
}

/// This host's memory, from `/proc/meminfo`.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("gpucluster-dask-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good.json");
        std::fs::write(&good, r#"{"type": "Scheduler", "address": "tcp://10.0.0.1:8786"}"#).expect("write");
        assert_eq!(scheduler_address(&good).expect("good"), "tcp://10.0.0.1:8786");
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{\"id\": 1}").expect("write");
        assert!(scheduler_address(&bad).expect_err("bad").to_string().contains("no \"address\""));
        std::fs::write(&bad, "not json").expect("write");
        assert!(scheduler_address(&bad).expect_err("bad").to_string().contains("not JSON"));
        let err = scheduler_address(&dir.join("missing.json")).expect_err("missing");
        assert!(err.to_string().contains("dask scheduler --scheduler-file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ucx_only_for_nvlinked_whole_gpus_with_ucxx() {
        let mut python = PythonInfo { python: "python3".into(), distributed: "x".into(), dask_cuda: true, ucxx: true };
        assert_eq!(choose_protocol(true, 8, &python).0, "ucx");
        assert_eq!(choose_protocol(false, 8, &python).0, "tcp");
        assert_eq!(choose_protocol(true, 1, &python).0, "tcp");
        python.ucxx = false;
        let (protocol, why) = choose_protocol(true, 8, &python);
        assert_eq!(protocol, "tcp");
        assert!(why.contains("distributed-ucxx"), "{why}");
    }

    #[test]
    fn a_missing_python_or_dask_says_how_to_install() {
        let err = probe_python(&"/nonexistent/python3".into()).expect_err("no python");
        assert!(err.to_string().contains("pip install"), "{err}");
        let err = probe_python(&"false".into()).expect_err("no dask");
        assert!(err.to_string().contains("Dask is not installed"), "{err}");
    }
}
