//! `DeviceBuffer`: device memory of an engine, with a `__cuda_array_interface__`, through which
//! Python (tests, and the simulated arrays of `sim.py`) writes and reads device bytes.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use transport::device;

use crate::exceptions::from_transport;

/// Device memory of an engine (simulated device memory, in tests), with a
/// `__cuda_array_interface__` (a 1-D array of bytes).
#[pyclass(frozen, module = "gpucluster._native")]
pub(crate) struct DeviceBuffer {
    pub(super) buffer: device::DeviceBuffer,
}

#[pymethods]
impl DeviceBuffer {
    #[getter]
    fn ptr(&self) -> u64 {
        self.buffer.ptr()
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.buffer.len()
    }

    #[getter]
    fn __cuda_array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("shape", (self.buffer.len(),))?;
        d.set_item("typestr", "|u1")?;
        d.set_item("data", (self.buffer.ptr(), false))?;
        d.set_item("strides", py.None())?;
        d.set_item("stream", py.None())?;
        d.set_item("version", 3)?;
        Ok(d)
    }

    /// Writes `data` at `offset`.
    #[pyo3(signature = (data, offset = 0))]
    fn write(&self, py: Python<'_>, data: &[u8], offset: usize) -> PyResult<()> {
        let end = offset.checked_add(data.len()).filter(|&e| e <= self.buffer.len());
        if end.is_none() {
            return Err(PyValueError::new_err(format!(
                "{} bytes at offset {offset} do not fit a buffer of {}",
                data.len(),
                self.buffer.len()
            )));
        }
        if offset == 0 {
            return py.detach(|| self.buffer.write(data)).map_err(from_transport);
        }
        // Rare (tests): read, patch, write back, keeping the device interface offset-free.
        let mut whole = vec![0u8; self.buffer.len()];
        py.detach(|| {
            self.buffer.read(&mut whole)?;
            whole[offset..offset + data.len()].copy_from_slice(data);
            self.buffer.write(&whole)
        })
        .map_err(from_transport)
    }

    /// Reads `n` bytes at `offset`.
    #[pyo3(signature = (n, offset = 0))]
    fn read<'py>(&self, py: Python<'py>, n: usize, offset: usize) -> PyResult<Bound<'py, PyBytes>> {
        let end = offset.checked_add(n).filter(|&e| e <= self.buffer.len()).ok_or_else(|| {
            PyValueError::new_err(format!("{n} bytes at offset {offset} are past a buffer of {}", self.buffer.len()))
        })?;
        let mut bytes = vec![0u8; end];
        py.detach(|| self.buffer.read(&mut bytes)).map_err(from_transport)?;
        Ok(PyBytes::new(py, &bytes[offset..end]))
    }

    fn __len__(&self) -> usize {
        self.buffer.len()
    }

    fn __repr__(&self) -> String {
        format!("DeviceBuffer({} bytes)", self.buffer.len())
    }
}
