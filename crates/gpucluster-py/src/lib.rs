//! `gpucluster._native`: the transport, bound for Python, so that Dask's `gpucluster://` comm
//! (`python/gpucluster/comm.py`) moves device frames between worker processes over the same
//! host-staged and cuda-ipc connections as gpucluster's own workers.
//!
//! This crate owns only the binding: what Python sees (`Engine`, `Channel`, `DeviceBuffer`,
//! `ClusterSecret`, `topology`, `plan`, the exceptions) and the rule that no copy or driver call ever
//! holds the GIL. Rings, IPC, authentication and the secret's file are `transport`'s; the Dask glue is
//! Python's. The type stubs (`python/gpucluster/_native.pyi`) say the same in Python terms.
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
use pyo3::types::{PyBytes, PyDict};
use transport::device::{self, Device};
use transport::{Address, Connection, Listener, Options, Secret, TransferPath, TransportError};

mod cluster;

/// The package's exceptions, named as `gpucluster` exports them (so that they pickle, and
/// tracebacks say `gpucluster.PlanError`).
mod exceptions {
    use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyValueError};

    pyo3::create_exception!(gpucluster, TransportError, PyConnectionError, "A transport failure (base class).");
    pyo3::create_exception!(
        gpucluster,
        PeerGone,
        TransportError,
        "The peer closed the channel, died, or it was aborted."
    );
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
}
use exceptions::TransportError as TransportError_;
use exceptions::{AuthenticationError, PeerGone, PlanError, Timeout, TopologyError};

/// Bytes of a channel's token: the first message on every channel, naming it to the acceptor.
const TOKEN_BYTES: usize = 16;
/// How long the acceptor waits for a new channel's token.
const TOKEN_WAIT: Duration = Duration::from_secs(10);
/// Channels nobody claimed are dropped after this long (their comm was closed first).
const UNCLAIMED: Duration = Duration::from_secs(120);

fn py_err(e: TransportError) -> PyErr {
    match e {
        TransportError::PeerGone(_) | TransportError::Aborted(_) => PeerGone::new_err(e.to_string()),
        TransportError::Timeout(_) => Timeout::new_err(e.to_string()),
        TransportError::Authentication(_) => AuthenticationError::new_err(e.to_string()),
        other => TransportError_::new_err(other.to_string()),
    }
}

fn device_kind(kind: &str) -> PyResult<(Arc<dyn Device>, &'static str)> {
    let device: device::WorkerDevice =
        kind.parse().map_err(|e: TransportError| PyValueError::new_err(e.to_string()))?;
    Ok((device.open().map_err(py_err)?, device.name()))
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

/// A command-line flag of the core crates' messages and the keyword argument a Python caller
/// gives the same value with (`gpucluster.plan`, `gpucluster.dask.LocalCluster`).
struct Keyword {
    /// The flag as the messages spell it.
    flag: &'static str,
    /// The keyword argument.
    keyword: &'static str,
    /// Whether a word after the flag is its value (one the flag accepts) rather than prose:
    /// `--policy warn to go on` has a value, `lower --workers-per-device or` has none.
    accepts: fn(&str) -> bool,
    /// Whether the value is a Python string even when it looks like a number (`devices="0"`).
    string: bool,
}

/// Every flag that the messages of `gpu-topology` and `cluster-core` reaching Python name.
const KEYWORDS: &[Keyword] = &[
    Keyword {
        flag: "--topology",
        keyword: "topology",
        accepts: |v| v.contains(':') && v.parse::<gpu_topology::TopologySpec>().is_ok(),
        string: true,
    },
    Keyword {
        flag: "--devices",
        keyword: "devices",
        // The refusal of a large mix shortens its list to `a,b,c,...`.
        accepts: |v| v.trim_end_matches(",...").parse::<cluster_core::DeviceSpec>().is_ok(),
        string: true,
    },
    Keyword {
        flag: "--policy",
        keyword: "policy",
        accepts: |v| v.parse::<cluster_core::Policy>().is_ok(),
        string: true,
    },
    Keyword {
        flag: "--memory-tolerance",
        keyword: "memory_tolerance",
        accepts: |v| v.parse::<f64>().is_ok(),
        string: false,
    },
    Keyword {
        flag: "--device-memory-limit",
        keyword: "device_memory_limit",
        accepts: |v| cluster_core::memory::validate(v).is_ok(),
        string: false,
    },
    Keyword {
        flag: "--workers-per-device",
        keyword: "workers_per_device",
        accepts: |v| v.parse::<u32>().is_ok(),
        string: false,
    },
];

/// Commands of the messages and the Python calls that return the same, longest phrase first.
const CALLS: &[(&str, &str)] = &[
    ("the JSON `gpucluster list --json` prints", "the JSON of `gpucluster.topology()`"),
    ("as `gpucluster list --json` writes them", "as `gpucluster.topology()` returns them"),
    ("`gpucluster list --presets`", "`gpucluster.presets()`"),
    ("`gpucluster list --json`", "`gpucluster.topology()`"),
    ("`gpucluster list`", "`gpucluster.topology()`"),
];

/// A message of the core crates (written for the command line, whose golden tests fix its
/// text) in the terms of a Python caller: `--policy largest-group` becomes
/// `policy="largest-group"`, `--memory-tolerance 13` becomes `memory_tolerance=13`, a flag
/// without a value (`(in --devices)`) becomes `devices=...` (or the bare keyword before a colon),
/// and `gpucluster list` commands become `gpucluster.topology()` / `gpucluster.presets()`.
///
/// The core crates build these messages deep inside (a refused mix lists the flags that would
/// make it work, beside each class's devices), so the binding rewrites the finished text rather
/// than each error variant; the tables above ([`KEYWORDS`], [`CALLS`]) are the whole vocabulary.
/// A flag's value is the next word only when the flag accepts it, so prose after a flag stays
/// prose. Columns stay aligned: a rewritten flag followed by two or more spaces keeps the text
/// after those spaces where it was.
fn in_python_terms(message: &str) -> String {
    let mut text = message.to_owned();
    for (command, call) in CALLS {
        text = text.replace(command, call);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text.as_str();
    while let Some(at) = rest.find("--") {
        out.push_str(&rest[..at]);
        let here = &rest[at..];
        let Some(k) = KEYWORDS.iter().find(|k| {
            here.strip_prefix(k.flag)
                .is_some_and(|after| !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-'))
        }) else {
            out.push_str("--");
            rest = &here[2..];
            continue;
        };
        let after = &here[k.flag.len()..];
        // The next word, less the punctuation of the sentence around it.
        let word = after.strip_prefix(' ').map(|w| w.split(char::is_whitespace).next().unwrap_or(""));
        let value = word.map(|w| w.trim_end_matches([',', ';', ')', '`'])).filter(|v| !v.is_empty() && (k.accepts)(v));
        let (written, used) = match value {
            Some(v) if !k.string && v.parse::<f64>().is_ok() => (format!("{}={v}", k.keyword), 1 + v.len()),
            Some(v) => (format!("{}=\"{}\"", k.keyword, v.replace('\\', "\\\\").replace('"', "\\\"")), 1 + v.len()),
            None if after.starts_with(':') => (k.keyword.to_owned(), 0),
            None => (format!("{}=...", k.keyword), 0),
        };
        out.push_str(&written);
        rest = &after[used..];
        let spaces = rest.len() - rest.trim_start_matches(' ').len();
        if spaces >= 2 {
            let was = here[..k.flag.len() + used].chars().count() + spaces;
            out.push_str(&" ".repeat(was.saturating_sub(written.chars().count()).max(2)));
            rest = &rest[spaces..];
        }
    }
    out.push_str(rest);
    out
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
struct Engine {
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
        let listener = Listener::bind_local("gpucluster-comm", device.clone(), Options::default()).map_err(py_err)?;
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
            .map_err(|e| TransportError_::new_err(format!("cannot start the accepting thread: {e}")))?;
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
            .map_err(py_err)?;
        Ok(Channel { conn, device: self.device.clone() })
    }

    /// Waits for the channel a peer opened with `token`.
    #[pyo3(signature = (token, timeout = 30.0))]
    fn accept(&self, py: Python<'_>, token: &[u8], timeout: f64) -> PyResult<Channel> {
        let token: [u8; TOKEN_BYTES] =
            token.try_into().map_err(|_| PyValueError::new_err(format!("a token has {TOKEN_BYTES} bytes")))?;
        let timeout = seconds(timeout)?;
        let conn = py.detach(|| self.arrivals.take(&token, timeout, &self.stop)).map_err(py_err)?;
        Ok(Channel { conn, device: self.device.clone() })
    }

    /// `nbytes` of this engine's device memory (at least one byte is reserved).
    fn alloc(&self, py: Python<'_>, nbytes: usize) -> PyResult<DeviceBuffer> {
        let buffer = py.detach(|| device::DeviceBuffer::new(&self.device, nbytes)).map_err(py_err)?;
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
struct Channel {
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
        .map_err(py_err)
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
        .map_err(py_err)
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

/// Device memory of an engine (simulated device memory, in tests), with a
/// `__cuda_array_interface__` (a 1-D array of bytes).
#[pyclass(frozen, module = "gpucluster._native")]
struct DeviceBuffer {
    buffer: device::DeviceBuffer,
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
            return py.detach(|| self.buffer.write(data)).map_err(py_err);
        }
        // Rare (tests): read, patch, write back, keeping the device interface offset-free.
        let mut whole = vec![0u8; self.buffer.len()];
        py.detach(|| {
            self.buffer.read(&mut whole)?;
            whole[offset..offset + data.len()].copy_from_slice(data);
            self.buffer.write(&whole)
        })
        .map_err(py_err)
    }

    /// Reads `n` bytes at `offset`.
    #[pyo3(signature = (n, offset = 0))]
    fn read<'py>(&self, py: Python<'py>, n: usize, offset: usize) -> PyResult<Bound<'py, PyBytes>> {
        let end = offset.checked_add(n).filter(|&e| e <= self.buffer.len()).ok_or_else(|| {
            PyValueError::new_err(format!("{n} bytes at offset {offset} are past a buffer of {}", self.buffer.len()))
        })?;
        let mut bytes = vec![0u8; end];
        py.detach(|| self.buffer.read(&mut bytes)).map_err(py_err)?;
        Ok(PyBytes::new(py, &bytes[offset..end]))
    }

    fn __len__(&self) -> usize {
        self.buffer.len()
    }

    fn __repr__(&self) -> String {
        format!("DeviceBuffer({} bytes)", self.buffer.len())
    }
}

/// The cluster's secret, held here: Python sees only challenges, answers and proofs.
#[pyclass(frozen, module = "gpucluster._native")]
struct ClusterSecret {
    secret: Secret,
}

#[pymethods]
impl ClusterSecret {
    /// The answer to a listener's `challenge`.
    fn answer<'py>(&self, py: Python<'py>, challenge: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.secret.answer(challenge).map_err(py_err)?))
    }

    /// Checks the `answer` to our `challenge`; returns the proof to send back.
    fn check_answer<'py>(&self, py: Python<'py>, challenge: &[u8], answer: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.secret.check_answer(challenge, answer).map_err(py_err)?))
    }

    /// Checks the listener's `proof`, given the `challenge` received and the `answer` sent.
    fn check_proof(&self, challenge: &[u8], answer: &[u8], proof: &[u8]) -> PyResult<()> {
        self.secret.check_proof(challenge, answer, proof).map_err(py_err)
    }

    fn __repr__(&self) -> &'static str {
        "ClusterSecret(..)"
    }
}

/// The secret of this process's cluster: `GPUCLUSTER_SECRET`, else the file named by
/// `GPUCLUSTER_SECRET_FILE`, else the user's own (`~/.config/gpucluster/secret`, made on first
/// use, readable by this user only).
#[pyfunction]
fn cluster_secret() -> PyResult<ClusterSecret> {
    Ok(ClusterSecret { secret: Secret::for_this_user().map_err(py_err)? })
}

/// A fresh challenge for a connecting peer.
#[pyfunction]
fn challenge(py: Python<'_>) -> PyResult<Bound<'_, PyBytes>> {
    Ok(PyBytes::new(py, &Secret::challenge().map_err(py_err)?))
}

/// This boot of this host (`/proc/sys/kernel/random/boot_id`): two processes with the same one
/// run on the same machine.
#[pyfunction]
fn boot_id() -> PyResult<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .map_err(|e| TransportError_::new_err(format!("cannot read this host's boot id: {e}")))
}

/// This process's network namespace (`/proc/self/ns/net`): abstract sockets reach only
/// processes of the same one.
#[pyfunction]
fn net_namespace() -> PyResult<String> {
    std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| TransportError_::new_err(format!("cannot read this process's network namespace: {e}")))
}

/// This process's effective user id.
#[pyfunction]
fn uid() -> u32 {
    // SAFETY: a plain call without arguments.
    unsafe { libc::geteuid() }
}

/// Whether this process sees a CUDA device (asks the driver without making a context).
#[pyfunction]
fn cuda_available(py: Python<'_>) -> bool {
    py.detach(|| device::cuda_device_count() > 0)
}

/// The machine that `source` describes, as `gpucluster list --json` prints it (the snapshot's
/// JSON text; the Python side turns it into objects): `nvml` (this machine, through the driver),
/// `sim:NAME`, `file:PATH` or `smi:PATH`, as `--topology` takes them.
#[pyfunction]
#[pyo3(signature = (source = "nvml"))]
fn topology_json(py: Python<'_>, source: &str) -> PyResult<String> {
    let source = source.to_owned();
    py.detach(move || {
        let snapshot = read_topology(&source)?;
        serde_json::to_string_pretty(&snapshot).map_err(|e| TopologyError::new_err(format!("{e}")))
    })
}

/// The snapshot of `source`, or the command line's error for it in Python terms
/// ([`in_python_terms`]).
fn read_topology(source: &str) -> PyResult<gpu_topology::Snapshot> {
    let spec: gpu_topology::TopologySpec = source
        .parse()
        .map_err(|e: gpu_topology::TopologyError| TopologyError::new_err(in_python_terms(&e.to_string())))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| TopologyError::new_err(format!("cannot start a runtime to read the topology: {e}")))?;
    runtime.block_on(async { spec.open()?.snapshot().await }).map_err(|e| {
        let shown = gpu_topology::text::printable(&spec.to_string()).into_owned();
        let hint = match &e {
            // `sim:list` lists the presets on the command line; Python has a function for it.
            gpu_topology::TopologyError::UnknownPreset { name, .. } if name == "list" => {
                "; `sim:list` lists them on the command line only: in Python, `gpucluster.presets()` returns them"
            }
            gpu_topology::TopologyError::UnknownPreset { .. } => "; `gpucluster.presets()` describes each",
            _ => "",
        };
        TopologyError::new_err(in_python_terms(&format!("reading the topology from {shown}: {e}{hint}")))
    })
}

/// The built-in simulated machines, as `gpucluster list --presets` shows them: each preset's
/// name (`sim:NAME` reads it) and its one-line description.
#[pyfunction]
fn presets() -> Vec<(&'static str, String)> {
    gpu_topology::sim::PRESETS.iter().map(|p| (p.name, p.description())).collect()
}

/// `text` (a message of the core crates, such as a plan finding's) in a Python caller's terms:
/// keyword arguments for flags, `gpucluster.topology()` and `gpucluster.presets()` for commands.
#[pyfunction(name = "in_python_terms")]
fn in_python_terms_py(text: &str) -> String {
    in_python_terms(text)
}

/// What `gpucluster plan --json` prints for the machine `source` describes: the workers, each
/// with its device, environment, limits and resources, what was left out and why, and the path
/// between every pair of workers. `devices` is `--devices` (when `None`, `CUDA_VISIBLE_DEVICES`
/// as the command line reads it); the rest are `plan`'s flags of the same names. The JSON is the
/// command line's, findings' text included; errors say the command line's message in Python
/// terms ([`in_python_terms`]).
#[pyfunction]
#[pyo3(signature = (source = "nvml", devices = None, policy = "strict", memory_tolerance = 2.0,
                    device_memory_limit = "default", workers_per_device = 1))]
fn plan_json(
    py: Python<'_>,
    source: &str,
    devices: Option<String>,
    policy: &str,
    memory_tolerance: f64,
    device_memory_limit: &str,
    workers_per_device: u32,
) -> PyResult<String> {
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
    let request = cluster_core::PlanRequest {
        devices,
        policy,
        memory_tolerance_pct: memory_tolerance,
        device_memory_limit: device_memory_limit.to_owned(),
        workers_per_device,
    };
    let source = source.to_owned();
    py.detach(move || {
        let snapshot = read_topology(&source)?;
        let plan =
            cluster_core::plan(&snapshot, &request).map_err(|e| PlanError::new_err(in_python_terms(&e.to_string())))?;
        let output = launcher::plan_paths::PlanOutput::new(&snapshot, &plan);
        serde_json::to_string_pretty(&output).map_err(|e| PlanError::new_err(format!("{e}")))
    })
}

/// A private directory of this user's (`launcher::workdir`: mode 0700, an unguessable name in
/// `$XDG_RUNTIME_DIR` or the temporary directory, an `owner` file naming this process), removed by
/// `remove()` or when collected; one left by a process killed with SIGKILL is removed by the next
/// one made with the same prefix (by `LocalCluster` or `gpucluster dask local`).
#[pyclass(frozen, module = "gpucluster._native")]
struct PrivateDirectory {
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

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TransportError", py.get_type::<TransportError_>())?;
    m.add("PeerGone", py.get_type::<PeerGone>())?;
    m.add("Timeout", py.get_type::<Timeout>())?;
    m.add("AuthenticationError", py.get_type::<AuthenticationError>())?;
    m.add("TopologyError", py.get_type::<TopologyError>())?;
    m.add("PlanError", py.get_type::<PlanError>())?;
    m.add_class::<Engine>()?;
    m.add_class::<Channel>()?;
    m.add_class::<DeviceBuffer>()?;
    m.add_class::<ClusterSecret>()?;
    m.add_class::<PrivateDirectory>()?;
    m.add_function(wrap_pyfunction!(cluster_secret, m)?)?;
    m.add_function(wrap_pyfunction!(challenge, m)?)?;
    m.add_function(wrap_pyfunction!(boot_id, m)?)?;
    m.add_function(wrap_pyfunction!(net_namespace, m)?)?;
    m.add_function(wrap_pyfunction!(uid, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(topology_json, m)?)?;
    m.add_function(wrap_pyfunction!(plan_json, m)?)?;
    m.add_function(wrap_pyfunction!(presets, m)?)?;
    m.add_function(wrap_pyfunction!(in_python_terms_py, m)?)?;
    m.add_function(wrap_pyfunction!(cluster::cluster_spec, m)?)?;
    m.add("DEVICE_KINDS", device::WorkerDevice::ALL.map(device::WorkerDevice::name))?;
    m.add("ENV", launcher::worker_env::ALL.iter().copied().collect::<std::collections::BTreeMap<_, _>>())?;
    m.add("TOKEN_BYTES", TOKEN_BYTES)?;
    m.add("COPY_ENGINE_MIN", transport::COPY_ENGINE_MIN)?;
    Ok(())
}
