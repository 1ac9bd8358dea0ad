//! The Dask cluster spec for Python: `_native.cluster_spec` runs `launcher::dask::cluster_spec`,
//! the one function `gpucluster dask local` runs too, on the plan of a topology, and returns the
//! spec as JSON for `gpucluster.dask.LocalCluster` to map onto `distributed` Nannies.
//!
//! This module decides nothing: it turns Python's arguments into the launcher's `Request` and the
//! launcher's refusals into Python's words ([`Keywords`]: `protocol='ucx'`, `insecure=True`).

use launcher::LauncherError;
use launcher::dask::{self, Credentials, HostFacts, PythonFacts, Request, SchedulerRequest};
use launcher::words::{Setting, Terms};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// How Python spells the launcher's settings: as `LocalCluster`'s keyword arguments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keywords;

impl Terms for Keywords {
    fn setting(&self, setting: Setting, value: Option<&str>) -> String {
        let keyword = match setting {
            Setting::Protocol => "protocol",
            Setting::Insecure => return value.map_or_else(|| "insecure=True".to_owned(), |v| format!("insecure={v}")),
            Setting::Credentials => {
                return "security=distributed.Security(...) with the cluster's certificates".to_owned();
            }
            Setting::Host => "host",
            Setting::Dashboard => "dashboard_address",
            Setting::MemoryLimit => "memory_limit",
            Setting::Threads => "threads_per_worker",
            Setting::Workers => "n_workers",
            Setting::WorkersPerDevice => "workers_per_device",
            Setting::RmmPoolSize => "rmm_pool_size",
            Setting::DeviceMemoryLimit => "device_memory_limit",
            Setting::Python => return "a Python that has it".to_owned(),
            Setting::Grace => "grace",
            _ => "an argument",
        };
        match value {
            // Numbers as Python writes them, text as its repr does.
            Some(v) if v.parse::<f64>().is_ok() => format!("{keyword}={v}"),
            Some(v) => format!("{keyword}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")),
            None => keyword.to_owned(),
        }
    }
}

/// A launcher error as the Python exception a caller gets (`ValueError` for a request that
/// cannot be met), in Python's words.
pub(crate) fn py_error(error: &LauncherError) -> PyErr {
    PyValueError::new_err(error.words().render(&Keywords))
}

/// Threads, workers: a count Python passed (`-1` for what is no count at all), as the request's.
fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// The spec of `LocalCluster` on `source`'s plan (planned with the same arguments as
/// `gpucluster.plan`), as JSON: the protocol and why, the scheduler, one spec per worker, and the
/// notes to show. `facts` is `gpucluster._facts.python_facts()` as JSON.
#[pyfunction]
#[pyo3(signature = (source, *, devices, policy, memory_tolerance, device_memory_limit, workers_per_device,
                    protocol, insecure, credentials_given, host, dashboard, memory_limit, threads, workers,
                    rmm_pool_size, local_directory, facts))]
#[allow(clippy::too_many_arguments)] // LocalCluster's keyword arguments, each a setting of the request.
pub(crate) fn cluster_spec(
    py: Python<'_>,
    source: &str,
    devices: Option<String>,
    policy: &str,
    memory_tolerance: f64,
    device_memory_limit: &str,
    workers_per_device: u32,
    protocol: &str,
    insecure: bool,
    credentials_given: bool,
    host: Option<String>,
    dashboard: Option<String>,
    memory_limit: Option<String>,
    threads: i64,
    workers: Option<i64>,
    rmm_pool_size: Option<String>,
    local_directory: String,
    facts: &str,
) -> PyResult<String> {
    let python: PythonFacts = serde_json::from_str(facts).map_err(|e| {
        PyValueError::new_err(format!("facts: not what gpucluster._facts.python_facts() returns ({e})"))
    })?;
    let topology: gpu_topology::TopologySpec =
        source.parse().map_err(|e: gpu_topology::TopologyError| crate::TopologyError::new_err(e.to_string()))?;
    let protocol = match protocol.parse::<dask::ProtocolRequest>() {
        Ok(p) => p,
        Err(e) => return Err(py_error(&LauncherError::Protocol(dask::ProtocolRefusal::Unknown(e.0)))),
    };
    let plan_request = plan_request(devices, policy, memory_tolerance, device_memory_limit, workers_per_device)?;
    let request = Request {
        protocol,
        insecure,
        credentials: if credentials_given { Credentials::Given } else { Credentials::Absent },
        host,
        dashboard,
        memory_limit,
        threads: count(threads),
        workers: workers.map(|n| usize::try_from(n).unwrap_or(0)),
        rmm_pool_size,
        device_memory_limit_asked: plan_request.device_memory_limit
            != cluster_core::PlanRequest::default().device_memory_limit,
        ..Request::new(topology, SchedulerRequest::Local, local_directory)
    };
    let source = source.to_owned();
    py.detach(move || {
        let snapshot = crate::read_topology(&source)?;
        let plan = cluster_core::plan(&snapshot, &plan_request)
            .map_err(|e| crate::PlanError::new_err(crate::in_python_terms(&e.to_string())))?;
        let output = launcher::plan_paths::PlanOutput::new(&snapshot, &plan);
        let spec =
            dask::cluster_spec(&output, &request, &python, &HostFacts::of_this_process()).map_err(|e| py_error(&e))?;
        Ok(spec.to_json(&Keywords).to_string())
    })
}

/// `gpucluster.plan`'s arguments as the planner's request (`devices`: when `None`,
/// `CUDA_VISIBLE_DEVICES`, as the command line reads it).
fn plan_request(
    devices: Option<String>,
    policy: &str,
    memory_tolerance: f64,
    device_memory_limit: &str,
    workers_per_device: u32,
) -> PyResult<cluster_core::PlanRequest> {
    let policy: cluster_core::Policy = policy.parse().map_err(|e| crate::PlanError::new_err(format!("policy: {e}")))?;
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
