//! The package's exceptions, named as `gpucluster` exports them (so that they pickle, and
//! tracebacks say `gpucluster.PlanError`), and the one mapping of a transport failure to them.
//!
//! Only the types and their mapping live here; which core error becomes which exception for
//! planning is `planning`'s choice. `python/gpucluster/__init__.py` re-exports them.

use pyo3::PyErr;
use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyValueError};

pyo3::create_exception!(gpucluster, TransportError, PyConnectionError, "A transport failure (base class).");
pyo3::create_exception!(gpucluster, PeerGone, TransportError, "The peer closed the channel, died, or it was aborted.");
pyo3::create_exception!(gpucluster, Timeout, TransportError, "The peer did not answer in time.");
pyo3::create_exception!(
    gpucluster,
    AuthenticationError,
    TransportError,
    "The peer does not hold the cluster's secret."
);
pyo3::create_exception!(
    gpucluster,
    PlanError,
    PyValueError,
    "No plan can be made as asked: unknown devices, slices that are not alike under the policy, a limit that cannot be meant."
);
pyo3::create_exception!(
    gpucluster,
    TopologyError,
    PyRuntimeError,
    "The machine's topology could not be read: an unknown source, a malformed file, no driver."
);

/// The exception Python sees for a failure of the transport: the peer gone (or the channel
/// aborted), a timeout and a failed authentication each have their own, anything else is the
/// base class.
pub(crate) fn from_transport(e: transport::TransportError) -> PyErr {
    use transport::TransportError as E;
    match e {
        E::PeerGone(_) | E::Aborted(_) => PeerGone::new_err(e.to_string()),
        E::Timeout(_) => Timeout::new_err(e.to_string()),
        E::Authentication(_) => AuthenticationError::new_err(e.to_string()),
        other => TransportError::new_err(other.to_string()),
    }
}
