//! The Dask bindings: what `gpucluster.dask.LocalCluster` asks the launcher so that it starts
//! the cluster `gpucluster dask local` would start: the cluster spec (`cluster_spec`, which runs
//! `launcher::dask::cluster_spec`, the one function both front ends run) and private directories.
//!
//! Every rule here is `launcher::dask`'s or `launcher::workdir`'s; the binding only converts:
//! Python's arguments into the launcher's `Request`, the spec into JSON, and the launcher's
//! refusals into Python's words (`crate::terms::PythonTerms`: `protocol="ucx"`, `insecure=True`).

use cluster_core::wording::Setting;
use launcher::LauncherError;
use launcher::dask::spec::MAX_THREADS_PER_WORKER;
use launcher::dask::{self, Credentials, HostFacts, PythonFacts, Request, SchedulerRequest, settings};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::exceptions::{PlanError, TopologyError};
use crate::terms::PythonTerms;

/// A launcher refusal as the `ValueError` a Python caller gets, in Python's words.
fn refused(error: &LauncherError) -> PyErr {
    PyValueError::new_err(error.message().render(&PythonTerms))
}

/// A private directory of this user's (`launcher::workdir`: mode 0700, an unguessable name in
/// `$XDG_RUNTIME_DIR` or the temporary directory, an `owner` file naming this process), removed by
/// `remove()` or when collected; one left by a process killed with SIGKILL is removed by the next
/// one made with the same prefix (by `LocalCluster` or `gpucluster dask local`).
#[pyclass(frozen, module = "gpucluster._native")]
pub(crate) struct PrivateDirectory {
    dir: std::sync::Mutex<Option<launcher::workdir::PrivateDir>>,
    path: String,
}

#[pymethods]
impl PrivateDirectory {
    #[new]
    fn new(prefix: &str) -> PyResult<Self> {
        let dir = launcher::workdir::PrivateDir::create(prefix)
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?;
        let path = dir.path().to_string_lossy().into_owned();
        Ok(Self { dir: std::sync::Mutex::new(Some(dir)), path })
    }

    /// Its path.
    #[getter]
    fn path(&self) -> String {
        self.path.clone()
    }

    /// Removes it with everything inside (once; later calls do nothing).
    fn remove(&self) {
        if let Ok(mut dir) = self.dir.lock() {
            dir.take();
        }
    }
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
    threads: &str,
    workers: Option<&str>,
    rmm_pool_size: Option<String>,
    local_directory: String,
    facts: &str,
) -> PyResult<String> {
    let python: PythonFacts = serde_json::from_str(facts).map_err(|e| {
        PyValueError::new_err(format!("facts: not what gpucluster._facts.python_facts() returns ({e})"))
    })?;
    let topology: gpu_topology::TopologySpec =
        source.parse().map_err(|e: gpu_topology::TopologyError| TopologyError::new_err(e.to_string()))?;
    let protocol = match protocol.parse::<dask::ProtocolRequest>() {
        Ok(p) => p,
        Err(e) => return Err(refused(&LauncherError::Protocol(dask::ProtocolRefusal::Unknown(e.0)))),
    };
    let plan_request =
        crate::planning::plan_request(devices, policy, memory_tolerance, device_memory_limit, workers_per_device)?;
    let request = Request {
        protocol,
        insecure,
        credentials: if credentials_given { Credentials::Given } else { Credentials::Absent },
        host,
        dashboard,
        memory_limit,
        threads: u32::try_from(
            settings::whole(Setting::Threads, threads, 1, Some(MAX_THREADS_PER_WORKER.into()))
                .map_err(|e| refused(&e))?,
        )
        .unwrap_or(MAX_THREADS_PER_WORKER),
        workers: match workers {
            Some(text) => Some(
                usize::try_from(settings::whole(Setting::Workers, text, 1, None).map_err(|e| refused(&e))?)
                    .unwrap_or(usize::MAX),
            ),
            None => None,
        },
        rmm_pool_size,
        device_memory_limit_asked: plan_request.device_memory_limit
            != cluster_core::PlanRequest::default().device_memory_limit,
        ..Request::new(topology, SchedulerRequest::Local, local_directory)
    };
    let source = source.to_owned();
    py.detach(move || {
        let snapshot = crate::planning::read_topology(&source)?;
        let plan = cluster_core::plan(&snapshot, &plan_request)
            .map_err(|e| PlanError::new_err(e.message().render(&PythonTerms)))?;
        let output = launcher::plan_paths::PlanOutput::new(&snapshot, &plan);
        let spec =
            dask::cluster_spec(&output, &request, &python, &HostFacts::of_this_process()).map_err(|e| refused(&e))?;
        dask::session::check_addresses(&spec).map_err(|e| refused(&e))?;
        Ok(spec.to_json(&PythonTerms).to_string())
    })
}
