//! `ClusterSecret` and challenges: the cluster's secret stays in Rust (`transport::Secret`),
//! Python sees only challenges, answers and proofs.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use transport::Secret;

use crate::exceptions::from_transport;

/// The cluster's secret, held here: Python sees only challenges, answers and proofs.
#[pyclass(frozen, module = "gpucluster._native")]
pub(crate) struct ClusterSecret {
    secret: Secret,
}

#[pymethods]
impl ClusterSecret {
    /// The answer to a listener's `challenge`.
    fn answer<'py>(&self, py: Python<'py>, challenge: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.secret.answer(challenge).map_err(from_transport)?))
    }

    /// Checks the `answer` to our `challenge`; returns the proof to send back.
    fn check_answer<'py>(&self, py: Python<'py>, challenge: &[u8], answer: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.secret.check_answer(challenge, answer).map_err(from_transport)?))
    }

    /// Checks the listener's `proof`, given the `challenge` received and the `answer` sent.
    fn check_proof(&self, challenge: &[u8], answer: &[u8], proof: &[u8]) -> PyResult<()> {
        self.secret.check_proof(challenge, answer, proof).map_err(from_transport)
    }

    fn __repr__(&self) -> &'static str {
        "ClusterSecret(..)"
    }
}

/// The secret of this process's cluster: `GPUCLUSTER_SECRET`, else the file named by
/// `GPUCLUSTER_SECRET_FILE`, else the user's own (`~/.config/gpucluster/secret`, made on first
/// use, readable by this user only).
#[pyfunction]
pub(crate) fn cluster_secret() -> PyResult<ClusterSecret> {
    Ok(ClusterSecret { secret: Secret::for_this_user().map_err(from_transport)? })
}

/// A fresh challenge for a connecting peer.
#[pyfunction]
pub(crate) fn challenge(py: Python<'_>) -> PyResult<Bound<'_, PyBytes>> {
    Ok(PyBytes::new(py, &Secret::challenge().map_err(from_transport)?))
}
