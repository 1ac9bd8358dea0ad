//! The planning bindings: the machine a topology source describes (`topology_json`), the
//! simulated presets (`presets`), and the plan `gpucluster plan --json` prints with its warnings
//! (`plan`), each the command line's JSON, turned into Python objects by
//! `python/gpucluster/__init__.py`.
//!
//! Reading and planning are `gpu-topology`'s and `cluster-core`'s; joining plans and paths is
//! `launcher::plan_paths`'. This module only crosses the boundary: arguments in, JSON out, the
//! core crates' errors as `TopologyError` and `PlanError`, and the plan's warnings, rendered in
//! a Python caller's words (`crate::terms`).

use cluster_core::wording::topology_remedy;
use pyo3::prelude::*;

use crate::exceptions::{PlanError, TopologyError};
use crate::terms::PythonTerms;

/// The machine that `source` describes, as `gpucluster list --json` prints it (the snapshot's
/// JSON text; the Python side turns it into objects): `nvml` (this machine, through the driver),
/// `sim:NAME`, `file:PATH` or `smi:PATH`, as `--topology` takes them.
#[pyfunction]
#[pyo3(signature = (source = "nvml"))]
pub(crate) fn topology_json(py: Python<'_>, source: &str) -> PyResult<String> {
    let source = source.to_owned();
    py.detach(move || {
        let snapshot = read_topology(&source)?;
        serde_json::to_string_pretty(&snapshot).map_err(|e| TopologyError::new_err(format!("{e}")))
    })
}

/// The snapshot of `source`, or its error in a Python caller's words: the error's own text,
/// then its remedy ([`topology_remedy`]) and the hints only Python needs, in [`PythonTerms`].
pub(crate) fn read_topology(source: &str) -> PyResult<gpu_topology::Snapshot> {
    let spec: gpu_topology::TopologySpec =
        source.parse().map_err(|e: gpu_topology::TopologyError| TopologyError::new_err(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| TopologyError::new_err(format!("cannot start a runtime to read the topology: {e}")))?;
    runtime.block_on(async { spec.open()?.snapshot().await }).map_err(|e| {
        let shown = gpu_topology::text::printable(&spec.to_string()).into_owned();
        let remedy = topology_remedy(&e).map(|r| r.render(&PythonTerms)).unwrap_or_default();
        let hint = match &e {
            // `sim:list` lists the presets on the command line; Python has a function for it.
            gpu_topology::TopologyError::UnknownPreset { name, .. } if name == "list" => {
                "; `sim:list` lists them on the command line only: in Python, `gpucluster.presets()` returns them"
            }
            gpu_topology::TopologyError::UnknownPreset { .. } => "; `gpucluster.presets()` describes each",
            _ => "",
        };
        TopologyError::new_err(format!("reading the topology from {shown}: {e}{remedy}{hint}"))
    })
}

/// The built-in simulated machines, as `gpucluster list --presets` shows them: each preset's
/// name (`sim:NAME` reads it) and its one-line description.
#[pyfunction]
pub(crate) fn presets() -> Vec<(&'static str, String)> {
    gpu_topology::sim::PRESETS.iter().map(|p| (p.name, p.description())).collect()
}

/// What `gpucluster plan --json` prints for the machine `source` describes (the workers, each
/// with its device, environment, limits and resources, what was left out and why, and the path
/// between every pair of workers), and each finding of severity warning or error in a Python
/// caller's words (`"message; fix"`, for `PlanWarning`). `devices` is the device list (when
/// `None`, `CUDA_VISIBLE_DEVICES` as the command line reads it); the rest are `plan`'s settings
/// of the same names. The JSON is the command line's, findings' text included; errors are the
/// core's messages in [`PythonTerms`].
#[pyfunction]
#[pyo3(signature = (source = "nvml", devices = None, policy = "strict", memory_tolerance = 2.0,
                    device_memory_limit = "default", workers_per_device = 1))]
pub(crate) fn plan(
    py: Python<'_>,
    source: &str,
    devices: Option<String>,
    policy: &str,
    memory_tolerance: f64,
    device_memory_limit: &str,
    workers_per_device: u32,
) -> PyResult<(String, Vec<String>)> {
    let request = plan_request(devices, policy, memory_tolerance, device_memory_limit, workers_per_device)?;
    let source = source.to_owned();
    py.detach(move || {
        let snapshot = read_topology(&source)?;
        let plan = cluster_core::plan(&snapshot, &request)
            .map_err(|e| PlanError::new_err(e.message().render(&PythonTerms)))?;
        let warnings = plan
            .findings
            .iter()
            .filter(|f| f.severity >= cluster_core::Severity::Warning)
            .map(|f| format!("{}; {}", f.message.render(&PythonTerms), f.fix.render(&PythonTerms)))
            .collect();
        let output = launcher::plan_paths::PlanOutput::new(&snapshot, &plan);
        let json = serde_json::to_string_pretty(&output).map_err(|e| PlanError::new_err(format!("{e}")))?;
        Ok((json, warnings))
    })
}

/// `gpucluster.plan()`'s arguments as the planner's request, their ranges checked (`devices`:
/// when `None`, `CUDA_VISIBLE_DEVICES`, as the command line reads it); `LocalCluster` plans with
/// the same.
pub(crate) fn plan_request(
    devices: Option<String>,
    policy: &str,
    memory_tolerance: f64,
    device_memory_limit: &str,
    workers_per_device: u32,
) -> PyResult<cluster_core::PlanRequest> {
    let policy: cluster_core::Policy = policy.parse().map_err(|e| PlanError::new_err(format!("policy: {e}")))?;
    let (tolerances, counts) = (cluster_core::MEMORY_TOLERANCE_PCT, cluster_core::WORKERS_PER_DEVICE);
    if !tolerances.contains(&memory_tolerance) {
        return Err(PlanError::new_err(format!(
            "memory_tolerance {memory_tolerance} is out of range: give a percentage from {} to {}",
            tolerances.start(),
            tolerances.end()
        )));
    }
    if !counts.contains(&workers_per_device) {
        return Err(PlanError::new_err(format!(
            "workers_per_device {workers_per_device} is out of range: give {} to {}",
            counts.start(),
            counts.end()
        )));
    }
    let devices = match devices {
        Some(d) => Some((d, cluster_core::SpecSource::Flag)),
        None => std::env::var("CUDA_VISIBLE_DEVICES").ok().map(|d| (d, cluster_core::SpecSource::Environment)),
    };
    Ok(cluster_core::PlanRequest {
        devices,
        policy,
        memory_tolerance_pct: memory_tolerance,
        device_memory_limit: device_memory_limit.to_owned(),
        workers_per_device,
    })
}
