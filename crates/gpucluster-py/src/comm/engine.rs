//! `Engine` and `Channel`: one process's end of the transport (a local listener and the
//! channels it opens and accepts) and one direction of device frames between two processes.
//!
//! **Pointers from Python.** `Channel.send` and `Channel.recv` take device addresses
//! from `__cuda_array_interface__`; the comm passes those of arrays it holds for the whole call
//! (that is the contract of `transport::Connection::send_raw`). On simulated devices the
//! transport checks every address against its own allocations, so a wrong one is an exception,
//! not a stray write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use transport::device::{self, Device};
use transport::{Address, Connection, Listener, Options, TransferPath, TransportError};

use super::DeviceBuffer;
use crate::exceptions::{self, from_transport};

/// Bytes of a channel's token: the first message on every channel, naming it to the acceptor.
pub(crate) const TOKEN_BYTES: usize = 16;
/// How long the acceptor waits for a new channel's token.
const TOKEN_WAIT: Duration = Duration::from_secs(10);
/// Channels nobody claimed are dropped after this long (their comm was closed first).
const UNCLAIMED: Duration = Duration::from_secs(120);

fn device_kind(kind: &str) -> PyResult<(Arc<dyn Device>, &'static str)> {
    let device: device::WorkerDevice =
        kind.parse().map_err(|e: TransportError| PyValueError::new_err(e.to_string()))?;
    Ok((device.open().map_err(from_transport)?, device.name()))
}

fn path_of(name: &str) -> PyResult<TransferPath> {
    match name.parse::<TransferPath>() {
        // cuda-ipc where it works: the transport falls back to host-staged, with the reason.
        _ if name == "auto" => Ok(TransferPath::CudaIpc),
        Ok(path @ (TransferPath::CudaIpc | TransferPath::HostStaged)) => Ok(path),
        _ => Err(PyValueError::new_err(format!(
            "unknown path `{}`: expected auto, cuda-ipc or host-staged",
            name.escape_debug()
        ))),
    }
}

fn seconds(timeout: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| PyValueError::new_err(format!("a timeout must be a positive number of seconds, not {timeout}")))
}

/// Channels accepted but not yet claimed by their comm, by token.
#[derive(Default)]
struct Arrivals {
    channels: Mutex<HashMap<[u8; TOKEN_BYTES], (Connection, Instant)>>,
    arrived: Condvar,
}

impl Arrivals {
    fn put(&self, token: [u8; TOKEN_BYTES], conn: Connection) {
        if let Ok(mut map) = self.channels.lock() {
            map.retain(|_, (_, at)| at.elapsed() < UNCLAIMED);
            map.insert(token, (conn, Instant::now()));
        }
        self.arrived.notify_all();
    }

    fn take(
        &self,
        token: &[u8; TOKEN_BYTES],
        timeout: Duration,
        stop: &AtomicBool,
    ) -> Result<Connection, TransportError> {
        let deadline = Instant::now() + timeout;
        let poisoned = || TransportError::PeerGone("the engine failed".into());
        let mut map = self.channels.lock().map_err(|_| poisoned())?;
        loop {
            if let Some((conn, _)) = map.remove(token) {
                return Ok(conn);
            }
            if stop.load(Ordering::Acquire) {
                return Err(TransportError::PeerGone("the engine was closed".into()));
            }
            let left = deadline.checked_duration_since(Instant::now()).ok_or(TransportError::Timeout(timeout))?;
            // Short waits, so that closing the engine is noticed.
            map = self.arrived.wait_timeout(map, left.min(Duration::from_millis(200))).map_err(|_| poisoned())?.0;
        }
    }
}

/// Reads a new connection's token (its first message) and files the connection under it.
fn file_arrival(conn: Connection, device: &Arc<dyn Device>, arrivals: &Arrivals) -> Result<(), TransportError> {
    let buf = device::DeviceBuffer::new(device, TOKEN_BYTES)?;
    let got = conn.recv_blocking_timeout(&buf, TOKEN_WAIT)?;
    if got.len != TOKEN_BYTES {
        return Err(TransportError::Protocol("a channel that did not begin with its token".into()));
    }
    let mut token = [0u8; TOKEN_BYTES];
    buf.read(&mut token)?;
    arrivals.put(token, conn);
    Ok(())
}

/// One process's end of the transport: a local listener (an unguessable abstract socket name,
/// open to this user only) and the channels it opens and accepts.
#[pyclass(frozen, module = "gpucluster._native")]
pub(crate) struct Engine {
    device: Arc<dyn Device>,
    kind: &'static str,
    local_name: String,
    arrivals: Arc<Arrivals>,
    stop: Arc<AtomicBool>,
}

#[pymethods]
impl Engine {
    /// Opens `device` (`cuda`: CUDA device 0 of this process; `sim`: simulated device memory;
    /// `sim-mig`: a simulated MIG instance, on which cuda-ipc fails as it does on MIG) and starts
    /// listening.
    #[new]
    fn new(py: Python<'_>, device: &str) -> PyResult<Self> {
        let (device, kind) = py.detach(|| device_kind(device))?;
        let listener =
            Listener::bind_local("gpucluster-comm", device.clone(), Options::default()).map_err(from_transport)?;
        let local_name = match listener.address() {
            Address::Local(name) => name.clone(),
            other => other.to_string(),
        };
        let arrivals = Arc::new(Arrivals::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s, d) = (arrivals.clone(), stop.clone(), device.clone());
        std::thread::Builder::new()
            .name("gpucluster-accept".into())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    match listener.accept_timeout(Duration::from_millis(200)) {
                        Ok(conn) => {
                            let (a, d) = (a.clone(), d.clone());
                            // A peer slow to send its token holds up only its own thread.
                            let _ = std::thread::Builder::new()
                                .name("gpucluster-token".into())
                                .spawn(move || drop(file_arrival(conn, &d, &a)));
                        }
                        Err(TransportError::Timeout(_)) => {}
                        // Our own device failed: nothing more can be accepted.
                        Err(_) => break,
                    }
                }
            })
            .map_err(|e| exceptions::TransportError::new_err(format!("cannot start the accepting thread: {e}")))?;
        Ok(Self { device, kind, local_name, arrivals, stop })
    }

    /// The name peers of this host and user connect to.
    #[getter]
    fn local_name(&self) -> &str {
        &self.local_name
    }

    /// `cuda`, `sim` or `sim-mig`.
    #[getter]
    fn device(&self) -> &str {
        self.kind
    }

    /// Opens a channel to the engine listening at `peer`, naming it `token` (16 bytes), over
    /// `path` (`auto`: cuda-ipc where it works, else host-staged; `host-staged`; `cuda-ipc`).
    #[pyo3(signature = (peer, token, path = "auto", timeout = 30.0))]
    fn connect(&self, py: Python<'_>, peer: &str, token: &[u8], path: &str, timeout: f64) -> PyResult<Channel> {
        let token: [u8; TOKEN_BYTES] =
            token.try_into().map_err(|_| PyValueError::new_err(format!("a token has {TOKEN_BYTES} bytes")))?;
        let options = Options { path: path_of(path)?, handshake_timeout: seconds(timeout)?, ..Options::default() };
        let (device, peer) = (self.device.clone(), Address::Local(peer.to_owned()));
        let conn = py
            .detach(|| {
                let conn = transport::connect_blocking(&peer, device.clone(), &options)?;
                let buf = device::DeviceBuffer::new(&device, TOKEN_BYTES)?;
                buf.write(&token)?;
                conn.send_blocking(0, &buf, TOKEN_BYTES)?;
                Ok(conn)
            })
            .map_err(from_transport)?;
        Ok(Channel { conn, device: self.device.clone() })
    }

    /// Waits for the channel a peer opened with `token`.
    #[pyo3(signature = (token, timeout = 30.0))]
    fn accept(&self, py: Python<'_>, token: &[u8], timeout: f64) -> PyResult<Channel> {
        let token: [u8; TOKEN_BYTES] =
            token.try_into().map_err(|_| PyValueError::new_err(format!("a token has {TOKEN_BYTES} bytes")))?;
        let timeout = seconds(timeout)?;
        let conn = py.detach(|| self.arrivals.take(&token, timeout, &self.stop)).map_err(from_transport)?;
        Ok(Channel { conn, device: self.device.clone() })
    }

    /// `nbytes` of this engine's device memory (at least one byte is reserved).
    fn alloc(&self, py: Python<'_>, nbytes: usize) -> PyResult<DeviceBuffer> {
        let buffer = py.detach(|| device::DeviceBuffer::new(&self.device, nbytes)).map_err(from_transport)?;
        Ok(DeviceBuffer { buffer })
    }

    /// Stops listening; channels already open go on until closed.
    fn close(&self) {
        self.stop.store(true, Ordering::Release);
        self.arrivals.arrived.notify_all();
    }

    fn __repr__(&self) -> String {
        format!("Engine(device={:?}, local_name={:?})", self.kind, self.local_name)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

/// One direction of device frames between two processes (a transport connection).
#[pyclass(frozen, module = "gpucluster._native")]
pub(crate) struct Channel {
    conn: Connection,
    device: Arc<dyn Device>,
}

#[pymethods]
impl Channel {
    /// `host-staged`, `cuda-ipc` or `tcp`.
    #[getter]
    fn path(&self) -> &'static str {
        self.conn.path().name()
    }

    /// Why the channel is not on the path asked for, if it fell back.
    #[getter]
    fn fallback(&self) -> Option<&str> {
        self.conn.fallback()
    }

    /// Sends `nbytes` at device address `ptr`, once the work queued on `stream` (the array's
    /// `__cuda_array_interface__` stream; 0 for the legacy default stream) has finished. Returns
    /// when the memory may be reused. The caller holds the array for the whole call.
    #[pyo3(signature = (ptr, nbytes, stream = 0))]
    fn send(&self, py: Python<'_>, ptr: u64, nbytes: usize, stream: u64) -> PyResult<()> {
        py.detach(|| {
            // SAFETY: `stream` comes from the array's interface (a stream of this device, or a
            // special value); the caller holds the array, which covers `ptr..ptr+nbytes`, for the
            // whole call (the module's contract). The simulated device checks the range.
            unsafe {
                self.device.synchronize_foreign(stream)?;
                self.conn.send_raw(0, ptr, nbytes)
            }
        })
        .map_err(from_transport)
    }

    /// Receives the next message into the device memory at `ptr` (`capacity` bytes) and returns
    /// its size; the bytes are in place when it returns. `timeout` bounds the wait for the
    /// message to begin (None: unbounded; a stall once it has begun is bounded anyway).
    #[pyo3(signature = (ptr, capacity, timeout = None))]
    fn recv(&self, py: Python<'_>, ptr: u64, capacity: usize, timeout: Option<f64>) -> PyResult<usize> {
        let wait = timeout.map(seconds).transpose()?;
        py.detach(|| {
            // SAFETY: the caller holds the array covering `ptr..ptr+capacity` for the whole call
            // and nothing else uses it meanwhile (the module's contract).
            unsafe { self.conn.recv_raw(ptr, capacity, wait) }
        })
        .map(|r| r.len)
        .map_err(from_transport)
    }

    /// Ends the channel at once, from any thread: a send or receive in flight on either side
    /// fails with PeerGone.
    fn abort(&self) {
        self.conn.abort();
    }

    /// As abort: a channel carries nothing once its comm is done.
    fn close(&self) {
        self.conn.abort();
    }

    fn __repr__(&self) -> String {
        format!("Channel(path={:?})", self.path())
    }
}
