//! The Dask bindings: what `gpucluster.dask.LocalCluster` asks the launcher so that it starts
//! workers as `gpucluster dask local` does (the host's memory, private directories, CPU lists,
//! each worker's device environment, the dashboard's address).
//!
//! Every rule here is `launcher::dask`'s or `launcher::workdir`'s; the binding only converts.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// This host's memory in bytes, as `gpucluster dask local` reads it to split it between workers.
#[pyfunction]
pub(crate) fn host_memory() -> Option<u64> {
    launcher::dask::host_memory()
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

/// The CPUs of a Linux cpulist (`0-3,8,10-11`), as the launcher pins workers to them.
#[pyfunction]
pub(crate) fn cpu_list(list: &str) -> Vec<usize> {
    launcher::parse_cpus(list)
}

/// The environment a Dask worker gets for its device (`launcher::dask::worker_device_env`, the
/// one definition `gpucluster dask local` uses too): `kind` is the plan's `"gpu"` or `"mig"`.
#[pyfunction]
#[pyo3(signature = (kind, *, simulated, host_staged_only, ucx, device_memory_limit = None))]
pub(crate) fn worker_device_env(
    kind: &str,
    simulated: bool,
    host_staged_only: bool,
    ucx: bool,
    device_memory_limit: Option<u64>,
) -> PyResult<std::collections::BTreeMap<String, String>> {
    let kind = match kind {
        "gpu" => cluster_core::WorkerKind::Gpu,
        "mig" => cluster_core::WorkerKind::Mig,
        other => return Err(PyValueError::new_err(format!("kind: \"gpu\" or \"mig\", not {other:?}"))),
    };
    Ok(launcher::dask::worker_device_env(&launcher::dask::WorkerDeviceEnv {
        kind,
        simulated,
        host_staged_only,
        ucx,
        device_memory_limit,
    }))
}

/// Where a scheduler serves its dashboard (`launcher::dask::dashboard_address`, the one rule
/// `gpucluster dask local --dashboard` follows too): a bare port on `host`, not every interface.
#[pyfunction]
pub(crate) fn dashboard_address(address: &str, host: &str) -> String {
    launcher::dask::dashboard_address(address, Some(host))
}
