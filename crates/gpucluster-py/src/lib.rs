//! `gpucluster._native`: the transport, bound for Python, so that Dask's `gpucluster://` comm
//! (`python/gpucluster/comm.py`) moves device frames between worker processes over the same
//! host-staged and cuda-ipc connections as gpucluster's own workers; and the planner and the
//! launcher's Dask rules, so that `gpucluster.plan()` and `gpucluster.dask.LocalCluster` decide
//! as the command line does.
//!
//! This crate owns only the binding: what Python sees and the rule that no copy or driver call
//! ever holds the GIL. Rings, IPC, authentication and the secret's file are `transport`'s, plans
//! are `cluster-core`'s, Dask workers' rules are `launcher`'s; the Dask glue is Python's. The
//! type stubs (`python/gpucluster/_native.pyi`) say the same in Python terms.
//!
//! **Layout** (as pydantic-core lays out its bindings): this file holds only the module; `comm`
//! binds the transport (`Engine`, `Channel`, `DeviceBuffer`, `ClusterSecret`, the facts about this
//! process), `planning` the topology and the planner, `dask` the Dask cluster spec and private directories,
//! `exceptions` the exceptions every binding raises, and `terms` the Python words in which the
//! core crates' messages are rendered (keyword arguments where the command line has flags).

mod comm;
mod dask;
mod exceptions;
mod planning;
mod terms;

/// gpucluster's native module: the transport, the planner and the launcher's Dask rules, as
/// the `gpucluster` package uses them.
#[pyo3::pymodule]
mod _native {
    #[pymodule_export]
    use crate::comm::{
        Channel, ClusterSecret, DeviceBuffer, Engine, boot_id, challenge, cluster_secret, cuda_available,
        net_namespace, uid,
    };
    #[pymodule_export]
    use crate::dask::{PrivateDirectory, cluster_spec};
    #[pymodule_export]
    use crate::exceptions::{AuthenticationError, PeerGone, PlanError, Timeout, TopologyError, TransportError};
    #[pymodule_export]
    use crate::planning::{plan, presets, topology_json};

    /// Bytes of a channel's token: the first message on every channel, naming it to the acceptor.
    #[pymodule_export]
    const TOKEN_BYTES: usize = crate::comm::TOKEN_BYTES;
    /// Smallest host-to-device copy that runs on a copy engine (`transport::COPY_ENGINE_MIN`).
    #[pymodule_export]
    const COPY_ENGINE_MIN: usize = transport::COPY_ENGINE_MIN;

    /// The names of the environment variables a launcher gives its workers, by role
    /// (`launcher::worker_env`), and the device names of `GPUCLUSTER_DEVICE`, so that the comm
    /// spells none of its own.
    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        let env: std::collections::BTreeMap<&str, &str> = launcher::worker_env::ALL.iter().copied().collect();
        m.add("ENV", env)?;
        m.add("DEVICE_KINDS", transport::device::WorkerDevice::ALL.map(transport::device::WorkerDevice::name))?;
        Ok(())
    }
}
