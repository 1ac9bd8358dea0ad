//! Facts about this process that the comm compares with a peer's (same boot, network namespace
//! and user: the peer is reachable over a local socket) or uses to pick its device.

use pyo3::prelude::*;
use transport::device;

use crate::exceptions::TransportError;

/// This boot of this host (`/proc/sys/kernel/random/boot_id`): two processes with the same one
/// run on the same machine.
#[pyfunction]
pub(crate) fn boot_id() -> PyResult<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .map_err(|e| TransportError::new_err(format!("cannot read this host's boot id: {e}")))
}

/// This process's network namespace (`/proc/self/ns/net`): abstract sockets reach only
/// processes of the same one.
#[pyfunction]
pub(crate) fn net_namespace() -> PyResult<String> {
    std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| TransportError::new_err(format!("cannot read this process's network namespace: {e}")))
}

/// This process's effective user id.
#[pyfunction]
pub(crate) fn uid() -> u32 {
    // SAFETY: a plain call without arguments.
    unsafe { libc::geteuid() }
}

/// Whether this process sees a CUDA device (asks the driver without making a context).
#[pyfunction]
pub(crate) fn cuda_available(py: Python<'_>) -> bool {
    py.detach(|| device::cuda_device_count() > 0)
}
