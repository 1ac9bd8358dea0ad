//! Connections between two worker processes: addresses, listening, connecting, and the async
//! send and receive that every path shares.
//!
//! A local address (`local:NAME`) is a Unix socket in the abstract namespace: it leaves no file
//! behind, and both ends check with `SO_PEERCRED` that the other runs as the same user. It
//! carries only the setup (the shared segment's descriptor, the CUDA IPC probe) and then watches
//! the peer's liveness; data moves through the shared ring. A TCP address (`tcp:HOST:PORT`)
//! carries everything, after authentication with the cluster's secret.
//!
//! Names of local listeners are not guessable ([`Listener::bind_local`]: a prefix and 128 random
//! bits), so nobody can take a worker's name before it binds it; connecting to a name that
//! another user holds fails at once (its `SO_PEERCRED` is wrong), and to one that nobody answers
//! within [`Options::handshake_timeout`].
//!
//! A [`Listener`] never lets one peer hold up another: its gate (`gate.rs`) accepts and
//! authenticates every connection concurrently, without a thread per connection, and a bounded
//! set of threads finishes the setup of those that pass; [`Listener::accept_blocking`] returns
//! only connections that are fully set up. Connections that fail are dropped and counted
//! ([`Listener::refused`]); they are never an error of `accept`.

use std::collections::VecDeque;
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::device::{Device, DeviceBuffer, DevicePtr};
use crate::gate::{self, Admitted, Check, Deadline, Gate, Limits, RefusalLog, Refusals, Workers};
use crate::ring::{self, Geometry, Liveness, Received};
use crate::shm::{self, Segment};
use crate::tcp::{self, Secret};
use crate::{TransferPath, TransportError};

/// Where a worker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// An abstract Unix socket on this host: `local:NAME`.
    Local(String),
    /// A TCP socket: `tcp:HOST:PORT`.
    Tcp(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Local(name) => write!(f, "local:{name}"),
            Address::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

impl FromStr for Address {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, TransportError> {
        let bad = || {
            TransportError::InvalidArgument(format!("`{s}` is not an address: expected local:NAME or tcp:HOST:PORT"))
        };
        match s.split_once(':') {
            Some(("local", name)) if !name.is_empty() => Ok(Address::Local(name.to_owned())),
            Some(("tcp", addr)) if addr.contains(':') => Ok(Address::Tcp(addr.to_owned())),
            _ => Err(bad()),
        }
    }
}

/// How a connection is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// The path to use between two local workers: `cuda-ipc` or `host-staged` (a `cuda-ipc`
    /// request falls back to `host-staged` if IPC handles cannot be opened). Ignored for TCP.
    pub path: TransferPath,
    /// Slots of the shared ring, per direction.
    pub slots: usize,
    /// Bytes per slot.
    pub chunk: usize,
    /// The cluster's secret, required for TCP.
    pub secret: Option<Secret>,
    /// How long setting up one connection may take, from connect or accept until it is ready:
    /// the peer check, the hello, the shared segment and the IPC probe, or the TCP challenge.
    /// A peer that takes longer is dropped. Default 5 s.
    pub handshake_timeout: Duration,
    /// How long a message under way may make no progress before it fails with
    /// [`TransportError::Timeout`] (on both sides; the connection is then unusable). Waiting for
    /// the *next* message is not bounded by it: see [`Connection::recv_blocking_timeout`].
    /// A peer that dies is noticed at once, whatever this is. Default 30 s.
    pub stall_timeout: Duration,
    /// Most connections a listener holds before they have authenticated; past it, the oldest is
    /// dropped. Default 64.
    pub max_handshakes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            path: TransferPath::HostStaged,
            slots: 4,
            chunk: 4 << 20,
            secret: None,
            handshake_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(30),
            max_handshakes: 64,
        }
    }
}

const HELLO: u32 = 0x4743_4c31; // "GCL1"

/// Largest ring slot a peer may propose (the segment is mapped whole).
const MAX_CHUNK: usize = 1 << 30;

/// How many random names [`Listener::bind_local`] tries.
const LOCAL_NAME_TRIES: usize = 8;

/// Threads per listener that finish setting up authenticated connections.
const SETUP_THREADS: usize = 4;

fn put_u64s(stream: &mut UnixStream, words: &[u64], deadline: &Deadline) -> Result<(), TransportError> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    deadline.arm(stream)?;
    stream.write_all(&bytes).map_err(|e| deadline.explain(TransportError::io("write setup")(e)))
}

fn get_u64s<const N: usize>(stream: &mut UnixStream, deadline: &Deadline) -> Result<[u64; N], TransportError> {
    let mut bytes = vec![0u8; N * 8];
    deadline.arm(stream)?;
    stream.read_exact(&mut bytes).map_err(|e| deadline.explain(TransportError::io("read setup")(e)))?;
    Ok(words(&bytes))
}

fn words<const N: usize>(bytes: &[u8]) -> [u64; N] {
    let mut out = [0u64; N];
    for (w, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_le_bytes(b.try_into().unwrap_or_default());
    }
    out
}

/// Tries CUDA IPC in both directions: each side exports a small allocation and opens the
/// other's. `Ok(None)` when both work, `Ok(Some(reason))` when either fails.
fn probe_ipc(
    stream: &mut UnixStream,
    device: &Arc<dyn Device>,
    deadline: &Deadline,
) -> Result<Option<String>, TransportError> {
    let probe = DeviceBuffer::new(device, 4096)?;
    let (handle, _) = device.ipc_export(probe.ptr())?;
    let io = |call: &'static str| move |e| deadline.explain(TransportError::io(call)(e));
    deadline.arm(stream)?;
    stream.write_all(&handle.0).map_err(io("send probe handle"))?;
    let mut theirs = [0u8; 64];
    deadline.arm(stream)?;
    stream.read_exact(&mut theirs).map_err(io("read probe handle"))?;
    let mine = match device.ipc_open(&crate::device::IpcHandle(theirs)) {
        Ok((ptr, _)) => {
            // SAFETY: just opened, closed once, never used for a copy.
            unsafe { device.ipc_close(ptr) };
            None
        }
        Err(e) => Some(e.to_string()),
    };
    let report = mine.clone().unwrap_or_default();
    put_u64s(stream, &[u64::from(mine.is_none()), report.len() as u64], deadline)?;
    deadline.arm(stream)?;
    stream.write_all(report.as_bytes()).map_err(io("send probe result"))?;
    let [ok, len] = get_u64s::<2>(stream, deadline)?;
    let mut text = vec![0u8; len.min(4096) as usize];
    deadline.arm(stream)?;
    stream.read_exact(&mut text).map_err(io("read probe result"))?;
    Ok(match (mine, ok == 1) {
        (None, true) => None,
        (Some(e), _) => Some(format!("opening the peer's IPC handle failed here ({e})")),
        (None, false) => Some(format!("the peer could not open our IPC handle ({})", String::from_utf8_lossy(&text))),
    })
}

enum Halves {
    Local { sender: Mutex<ring::Sender>, receiver: Mutex<ring::Receiver> },
    Tcp { sender: Mutex<tcp::TcpSender>, receiver: Mutex<tcp::TcpReceiver> },
}

/// Unpins the shared segment once both halves are gone.
struct Pinned {
    device: Arc<dyn Device>,
    segment: Arc<Segment>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: registered in `local_connection`; both halves (and their streams, which wait
        // for their copies before returning) are gone by the time the last `Pinned` drops.
        unsafe { self.device.unregister_host(self.segment.as_ptr()) };
    }
}

/// The socket whose shutdown ends a connection at once ([`Connection::abort`]): the control
/// socket of a local connection (both rings watch it), the TCP stream itself.
enum AbortHandle {
    Local(Arc<UnixStream>),
    Tcp(TcpStream),
}

impl AbortHandle {
    fn shutdown(&self) -> std::io::Result<()> {
        match self {
            AbortHandle::Local(s) => s.shutdown(std::net::Shutdown::Both),
            AbortHandle::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        }
    }
}

struct Inner {
    path: TransferPath,
    fallback: Option<String>,
    abort: AbortHandle,
    aborted: std::sync::atomic::AtomicBool,
    // Field order is drop order: the halves first, then the pinning, then the socket.
    halves: Halves,
    _pinned: Option<Pinned>,
    _control: Option<Arc<UnixStream>>,
}

/// A connection to one peer worker: messages in order, each with a tag, in both directions at once.
///
/// Sends on one connection are serialised, and so are receives; a send and a receive run at
/// the same time. After an error in the middle of a message (the peer stalled past
/// [`Options::stall_timeout`], or went away) that direction is unusable and says so.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").field("path", &self.inner.path).field("fallback", &self.inner.fallback).finish()
    }
}

impl Connection {
    /// The path this connection uses.
    pub fn path(&self) -> TransferPath {
        self.inner.path
    }

    /// Why the connection is not on the path that was asked for, if it fell back.
    pub fn fallback(&self) -> Option<&str> {
        self.inner.fallback.as_deref()
    }

    /// Sends the first `len` bytes of `buf` with `tag`, blocking until the buffer may be reused.
    ///
    /// # Errors
    /// [`TransportError::PeerGone`] if the peer closed or died, [`TransportError::Timeout`] if it
    /// stopped taking the message for [`Options::stall_timeout`], or a device failure.
    pub fn send_blocking(&self, tag: u64, buf: &DeviceBuffer, len: usize) -> Result<(), TransportError> {
        if len > buf.len() {
            return Err(TransportError::BufferTooSmall { needed: len as u64, capacity: buf.len() as u64 });
        }
        // SAFETY: `buf` owns at least `len` bytes (checked) and is borrowed for the whole call.
        unsafe { self.send_raw(tag, buf.ptr(), len) }
    }

    /// Sends `len` bytes at the device address `src` (memory this process did not allocate
    /// through [`DeviceBuffer`]: a CuPy or RMM array), blocking until that memory may be reused.
    ///
    /// # Safety
    /// `src..src+len` must lie in one live allocation of this connection's device, hold the data
    /// already (every write to it finished, on any stream), and stay allocated, unwritten, for
    /// the whole call. The simulated device checks the range and fails instead.
    ///
    /// # Errors
    /// As [`Connection::send_blocking`].
    pub unsafe fn send_raw(&self, tag: u64, src: DevicePtr, len: usize) -> Result<(), TransportError> {
        self.check_aborted()?;
        match &self.inner.halves {
            Halves::Local { sender, .. } => {
                let mut s = sender.lock().map_err(|_| TransportError::poisoned())?;
                match self.inner.path {
                    // Small messages go host-staged on a cuda-ipc connection too (`ring::eager`).
                    TransferPath::CudaIpc if !ring::eager(len) => s.send_ipc(tag, src, len),
                    _ => s.send_staged(tag, src, len),
                }
            }
            Halves::Tcp { sender, .. } => sender.lock().map_err(|_| TransportError::poisoned())?.send(tag, src, len),
        }
    }

    /// Receives the next message into the device memory at `dst` (of `capacity` bytes), waiting
    /// at most `wait` for it to begin (unbounded with `None`). When it returns, the bytes are in
    /// place: the copies into `dst` have finished. Bytes past the message, up to `capacity`, may
    /// be overwritten: a message shorter than [`crate::COPY_ENGINE_MIN`] is copied padded to that
    /// size where the capacity allows, so that it lands at copy-engine speed (about 10 us instead
    /// of 140 between two processes on one GPU). Give small receives that much room.
    ///
    /// # Safety
    /// `dst..dst+capacity` must lie in one live allocation of this connection's device, which
    /// nothing else reads or writes during the call. The simulated device checks the range and
    /// fails instead.
    ///
    /// # Errors
    /// As [`Connection::recv_blocking_timeout`].
    pub unsafe fn recv_raw(
        &self,
        dst: DevicePtr,
        capacity: usize,
        wait: Option<Duration>,
    ) -> Result<Received, TransportError> {
        self.check_aborted()?;
        match &self.inner.halves {
            Halves::Local { receiver, .. } => {
                receiver.lock().map_err(|_| TransportError::poisoned())?.recv(dst, capacity, wait)
            }
            Halves::Tcp { receiver, .. } => {
                receiver.lock().map_err(|_| TransportError::poisoned())?.recv(dst, capacity, wait)
            }
        }
    }

    /// Ends the connection now, from any thread: a send or receive under way on either side
    /// fails with [`TransportError::PeerGone`] within milliseconds, and so does every later one.
    /// (Dropping the last clone also ends it, but only once no call holds it.)
    pub fn abort(&self) {
        self.inner.aborted.store(true, std::sync::atomic::Ordering::Release);
        let _ = self.inner.abort.shutdown();
    }

    fn check_aborted(&self) -> Result<(), TransportError> {
        if self.inner.aborted.load(std::sync::atomic::Ordering::Acquire) {
            return Err(TransportError::PeerGone("the connection was aborted here".into()));
        }
        Ok(())
    }

    /// Receives the next message into `buf`, blocking until it has arrived; waiting for it to
    /// begin is unbounded (see [`Connection::recv_blocking_timeout`]). Bytes of `buf` past the
    /// message may be overwritten (see [`Connection::recv_raw`]).
    ///
    /// # Errors
    /// [`TransportError::BufferTooSmall`] if it does not fit (the connection is then unusable),
    /// [`TransportError::PeerGone`], [`TransportError::Timeout`] if the peer stopped in the middle
    /// of the message for [`Options::stall_timeout`], or a device failure.
    pub fn recv_blocking(&self, buf: &DeviceBuffer) -> Result<Received, TransportError> {
        self.recv_within(buf, None)
    }

    /// As [`Connection::recv_blocking`], but gives up with [`TransportError::Timeout`] if no
    /// message has begun to arrive within `timeout`; the connection stays usable then.
    ///
    /// # Errors
    /// As [`Connection::recv_blocking`].
    pub fn recv_blocking_timeout(&self, buf: &DeviceBuffer, timeout: Duration) -> Result<Received, TransportError> {
        self.recv_within(buf, Some(timeout))
    }

    fn recv_within(&self, buf: &DeviceBuffer, wait: Option<Duration>) -> Result<Received, TransportError> {
        // SAFETY: `buf` owns `buf.len()` bytes and is borrowed for the whole call.
        unsafe { self.recv_raw(buf.ptr(), buf.len(), wait) }
    }

    /// Sends the first `len` bytes of `buf` with `tag`.
    ///
    /// # Errors
    /// As [`Connection::send_blocking`].
    pub async fn send(&self, tag: u64, buf: Arc<DeviceBuffer>, len: usize) -> Result<(), TransportError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.send_blocking(tag, &buf, len))
            .await
            .map_err(|e| TransportError::Internal(format!("the send task failed: {e}")))?
    }

    /// Receives the next message into `buf`.
    ///
    /// # Errors
    /// As [`Connection::recv_blocking`].
    pub async fn recv(&self, buf: Arc<DeviceBuffer>) -> Result<Received, TransportError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.recv_blocking(&buf))
            .await
            .map_err(|e| TransportError::Internal(format!("the receive task failed: {e}")))?
    }

    /// Receives the next message into `buf`, giving up if none begins within `timeout`.
    ///
    /// # Errors
    /// As [`Connection::recv_blocking_timeout`].
    pub async fn recv_timeout(&self, buf: Arc<DeviceBuffer>, timeout: Duration) -> Result<Received, TransportError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.recv_blocking_timeout(&buf, timeout))
            .await
            .map_err(|e| TransportError::Internal(format!("the receive task failed: {e}")))?
    }
}

fn check_options(options: &Options) -> Result<(), TransportError> {
    if options.slots < 2
        || options.slots > ring::MAX_SLOTS
        || options.chunk < 4096
        || !options.chunk.is_multiple_of(4096)
    {
        return Err(TransportError::InvalidArgument(format!(
            "a ring needs 2 to {} slots of a multiple of 4096 bytes (asked: {} slots of {} bytes)",
            ring::MAX_SLOTS,
            options.slots,
            options.chunk
        )));
    }
    if options.chunk > MAX_CHUNK {
        return Err(TransportError::InvalidArgument(format!("a ring slot holds at most {MAX_CHUNK} bytes")));
    }
    let ms = Duration::from_millis(1);
    if options.handshake_timeout < ms || options.stall_timeout < ms || options.max_handshakes == 0 {
        return Err(TransportError::InvalidArgument(
            "handshake and stall timeouts need at least 1 ms, and a listener at least one handshake".into(),
        ));
    }
    Ok(())
}

/// Set-up connections (or errors of our own device) waiting for `accept`.
#[derive(Default)]
struct Ready {
    queue: Mutex<VecDeque<Result<Connection, TransportError>>>,
    arrived: Condvar,
}

impl Ready {
    fn push(&self, item: Result<Connection, TransportError>) {
        if let Ok(mut q) = self.queue.lock() {
            q.push_back(item);
        }
        self.arrived.notify_one();
    }

    fn pop(&self, timeout: Option<Duration>) -> Result<Connection, TransportError> {
        let deadline = timeout.map(|t| (Instant::now() + t, t));
        let mut q = self.queue.lock().map_err(|_| TransportError::poisoned())?;
        loop {
            if let Some(item) = q.pop_front() {
                return item;
            }
            q = match deadline {
                None => self.arrived.wait(q).map_err(|_| TransportError::poisoned())?,
                Some((at, total)) => {
                    let left = at.checked_duration_since(Instant::now()).ok_or(TransportError::Timeout(total))?;
                    self.arrived.wait_timeout(q, left).map_err(|_| TransportError::poisoned())?.0
                }
            };
        }
    }
}

/// A bound address that accepts connections.
pub struct Listener {
    address: Address,
    refusals: Arc<RefusalLog>,
    ready: Arc<Ready>,
    gate: Gate,
    workers: Workers,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener").field("address", &self.address).field("refused", &self.refused().count).finish()
    }
}

/// Delivers a finished setup: a connection to `accept`; a failure of our own device to `accept`
/// too (no peer could cause it, and the caller must hear of it); anything else, which a peer can
/// cause, to the refusals.
fn deliver(ready: &Ready, refusals: &RefusalLog, result: Result<Connection, TransportError>) {
    match result {
        Ok(conn) => ready.push(Ok(conn)),
        Err(e @ (TransportError::Device { .. } | TransportError::CudaUnavailable { .. })) => ready.push(Err(e)),
        Err(e) => refusals.record(format!("a connection failed during setup: {e}")),
    }
}

impl Listener {
    /// Binds `address` (`tcp:HOST:0` picks a free port; see [`Listener::address`]) and starts
    /// accepting connections in the background.
    ///
    /// A `local:NAME` chosen by the caller is only as private as the name is unguessable: prefer
    /// [`Listener::bind_local`].
    ///
    /// # Errors
    /// The address is taken or invalid; TCP without a secret; invalid options.
    pub fn bind(address: &Address, device: Arc<dyn Device>, options: Options) -> Result<Self, TransportError> {
        check_options(&options)?;
        let (socket, address, check): (OwnedFd, Address, Check) = match address {
            Address::Local(name) => {
                let addr = UnixAddr::from_abstract_name(name.as_bytes())
                    .map_err(TransportError::io("abstract socket name"))?;
                let listener =
                    UnixListener::bind_addr(&addr).map_err(|error| TransportError::Io { call: "bind", error })?;
                (listener.into(), address.clone(), Check::Local)
            }
            Address::Tcp(addr) => {
                let Some(secret) = options.secret.clone() else {
                    return Err(TransportError::Authentication("a TCP listener needs the cluster's secret".into()));
                };
                let listener =
                    TcpListener::bind(addr.as_str()).map_err(|error| TransportError::Io { call: "bind", error })?;
                let local: SocketAddr = listener.local_addr().map_err(TransportError::io("getsockname"))?;
                (listener.into(), Address::Tcp(local.to_string()), Check::Tcp(secret))
            }
        };
        let refusals = Arc::new(RefusalLog::default());
        let ready = Arc::new(Ready::default());
        let workers = Workers::new(SETUP_THREADS);
        let limits = Limits { timeout: options.handshake_timeout, max_pending: options.max_handshakes };
        let over_tcp = matches!(check, Check::Tcp(_));
        let admit = {
            let (ready, refusals, workers) = (ready.clone(), refusals.clone(), workers.clone());
            move |admitted: Admitted| {
                let (ready, refusals, device, options) =
                    (ready.clone(), refusals.clone(), device.clone(), options.clone());
                let watch = admitted.socket.try_clone().ok();
                workers.submit(
                    watch,
                    Box::new(move |hold| {
                        let result = if over_tcp {
                            // Authenticated by the gate; only our own staging is left to set up.
                            tcp_connection(TcpStream::from(admitted.socket), &device, options.stall_timeout)
                        } else {
                            setup_local(admitted, &device, &options)
                        };
                        // Once handed out, a connection is no longer the listener's to shut down;
                        // if the listener is closing, nobody will accept it.
                        if hold.detach() {
                            deliver(&ready, &refusals, result);
                        }
                    }),
                );
            }
        };
        let gate = Gate::start(socket, check, limits, refusals.clone(), admit)?;
        Ok(Self { address, refusals, ready, gate, workers })
    }

    /// Binds a local address no other user can guess: `local:<prefix>-<128 random bits in hex>`,
    /// drawing a new name if one is taken.
    ///
    /// # Errors
    /// Every one of a few fresh names was taken (someone is binding names at random, or the
    /// system is out of randomness), or as [`Listener::bind`].
    pub fn bind_local(prefix: &str, device: Arc<dyn Device>, options: Options) -> Result<Self, TransportError> {
        Self::bind_first_free(prefix, device, options, || {
            Ok(tcp::random_bytes::<16>()?.iter().map(|b| format!("{b:02x}")).collect())
        })
    }

    fn bind_first_free(
        prefix: &str,
        device: Arc<dyn Device>,
        options: Options,
        mut suffix: impl FnMut() -> Result<String, TransportError>,
    ) -> Result<Self, TransportError> {
        let mut taken = None;
        for _ in 0..LOCAL_NAME_TRIES {
            let address = Address::Local(format!("{prefix}-{}", suffix()?));
            match Self::bind(&address, device.clone(), options.clone()) {
                Err(TransportError::Io { error, .. }) if error.kind() == std::io::ErrorKind::AddrInUse => {
                    taken = Some(error);
                }
                other => return other,
            }
        }
        Err(TransportError::Io {
            call: "bind a local socket (8 fresh random names were all taken)",
            error: taken.unwrap_or_else(|| std::io::ErrorKind::AddrInUse.into()),
        })
    }

    /// The address peers connect to (with the port filled in for `tcp:HOST:0`).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits for the next connection that is fully set up.
    ///
    /// Connections that fail the peer check, the secret or the handshake never end this wait:
    /// they are dropped and counted in [`Listener::refused`].
    ///
    /// # Errors
    /// Only a failure of this process's own device while setting a connection up.
    pub fn accept_blocking(&self) -> Result<Connection, TransportError> {
        self.ready.pop(None)
    }

    /// As [`Listener::accept_blocking`], giving up after `timeout`.
    ///
    /// # Errors
    /// [`TransportError::Timeout`] if no connection was ready in time, or as
    /// [`Listener::accept_blocking`].
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Connection, TransportError> {
        self.ready.pop(Some(timeout))
    }

    /// Accepts one connection.
    ///
    /// # Errors
    /// As [`Listener::accept_blocking`].
    pub async fn accept(self: &Arc<Self>) -> Result<Connection, TransportError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.accept_blocking())
            .await
            .map_err(|e| TransportError::Internal(format!("the accept task failed: {e}")))?
    }

    /// Connections refused or dropped so far, with the first reasons (for a report such as
    /// "refused 3 connections").
    pub fn refused(&self) -> Refusals {
        self.refusals.get()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Stop accepting (closing the socket frees the name), then end the setups under way.
        self.gate.stop();
        self.workers.close(Duration::from_secs(2));
    }
}

fn path_to_wire(path: TransferPath) -> u64 {
    match path {
        TransferPath::CudaIpc => 1,
        TransferPath::HostStaged | TransferPath::Tcp => 2,
    }
}

fn path_from_wire(w: u64) -> TransferPath {
    if w == 1 { TransferPath::CudaIpc } else { TransferPath::HostStaged }
}

/// The listener's side of a local connection that passed the gate (same user, hello received).
fn setup_local(admitted: Admitted, device: &Arc<dyn Device>, options: &Options) -> Result<Connection, TransportError> {
    let deadline = admitted.deadline;
    let stream = UnixStream::from(admitted.socket);
    let [magic, requested] = words::<2>(&admitted.hello);
    if magic != u64::from(HELLO) {
        return Err(TransportError::Protocol("the peer is not a gpucluster worker".into()));
    }
    let geometry = Geometry { slots: options.slots, chunk: options.chunk };
    let segment = Segment::create("gpucluster-ring", geometry.segment_bytes())?;
    let header: Vec<u8> = [geometry.slots as u64, geometry.chunk as u64].iter().flat_map(|w| w.to_le_bytes()).collect();
    deadline.arm(&stream)?;
    shm::send_fd(&stream, segment.fd(), &header).map_err(|e| deadline.explain(e))?;
    let requested = path_from_wire(requested);
    local_connection(stream, Arc::new(segment), geometry, 0, device, requested, &deadline, options.stall_timeout)
}

#[allow(clippy::too_many_arguments)] // One call per side; a struct would only rename them.
fn local_connection(
    mut stream: UnixStream,
    segment: Arc<Segment>,
    geometry: Geometry,
    send_direction: usize,
    device: &Arc<dyn Device>,
    requested: TransferPath,
    deadline: &Deadline,
    stall: Duration,
) -> Result<Connection, TransportError> {
    // SAFETY: the segment stays mapped while `Pinned` (which unregisters it) holds it.
    unsafe { device.register_host(segment.as_ptr(), segment.len())? };
    let pinned = Pinned { device: device.clone(), segment: segment.clone() };
    let (path, fallback) = match requested {
        TransferPath::CudaIpc => match probe_ipc(&mut stream, device, deadline)? {
            None => (TransferPath::CudaIpc, None),
            Some(reason) => {
                (TransferPath::HostStaged, Some(format!("cuda-ipc unavailable, using host-staged: {reason}")))
            }
        },
        _ => (TransferPath::HostStaged, None),
    };
    let control = Arc::new(stream);
    let live = Liveness::new(control.clone());
    let (sender, receiver) = ring::halves(segment, geometry, send_direction, device, &live, stall)?;
    Ok(Connection {
        inner: Arc::new(Inner {
            path,
            fallback,
            halves: Halves::Local { sender: Mutex::new(sender), receiver: Mutex::new(receiver) },
            abort: AbortHandle::Local(control.clone()),
            aborted: false.into(),
            _pinned: Some(pinned),
            _control: Some(control),
        }),
    })
}

fn tcp_connection(stream: TcpStream, device: &Arc<dyn Device>, stall: Duration) -> Result<Connection, TransportError> {
    let abort = AbortHandle::Tcp(stream.try_clone().map_err(TransportError::io("dup socket"))?);
    let (sender, receiver) = tcp::halves(stream, device, stall)?;
    Ok(Connection {
        inner: Arc::new(Inner {
            path: TransferPath::Tcp,
            fallback: None,
            halves: Halves::Tcp { sender: Mutex::new(sender), receiver: Mutex::new(receiver) },
            abort,
            aborted: false.into(),
            _pinned: None,
            _control: None,
        }),
    })
}

/// Connects to the abstract Unix socket `name`. The connect itself is bounded by the deadline:
/// a listener that never accepts (someone squatting a name) fills its backlog, and a connect to
/// a full backlog blocks until `SO_SNDTIMEO` runs out.
fn connect_local(name: &str, deadline: &Deadline) -> Result<UnixStream, TransportError> {
    // SAFETY: a zeroed sockaddr_un is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = name.as_bytes();
    if bytes.len() + 1 > addr.sun_path.len() {
        return Err(TransportError::Protocol(format!(
            "`{name}` is too long for a local address ({} bytes at most)",
            addr.sun_path.len() - 1
        )));
    }
    // The abstract namespace: a NUL, then the name (not NUL-terminated).
    for (slot, &b) in addr.sun_path[1..].iter_mut().zip(bytes) {
        *slot = b as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + 1 + bytes.len();
    // SAFETY: plain call; the descriptor is owned at once.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(TransportError::io("socket")(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    deadline.arm(&socket)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    let r = unsafe {
        libc::connect(socket.as_fd().as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len as libc::socklen_t)
    };
    if r != 0 {
        return Err(deadline.explain(TransportError::io("connect")(std::io::Error::last_os_error())));
    }
    Ok(UnixStream::from(socket))
}

/// Connects to a listening peer, blocking for at most [`Options::handshake_timeout`].
///
/// # Errors
/// Nobody listens there; the peer is another user ([`TransportError::Authentication`]) or lacks
/// the secret; it did not answer in time ([`TransportError::Timeout`]); or setup failed.
pub fn connect_blocking(
    address: &Address,
    device: Arc<dyn Device>,
    options: &Options,
) -> Result<Connection, TransportError> {
    check_options(options)?;
    let deadline = Deadline::after(options.handshake_timeout);
    match address {
        Address::Local(name) => {
            let mut stream = connect_local(name, &deadline)?;
            // Before a byte is sent: whoever holds the name must be us.
            gate::check_user(gate::peer_uid(stream.as_fd())?, gate::my_uid())?;
            put_u64s(&mut stream, &[u64::from(HELLO), path_to_wire(options.path)], &deadline)?;
            deadline.arm(&stream)?;
            let (fd, header) = shm::recv_fd(&stream, 16).map_err(|e| deadline.explain(e))?;
            let [slots, chunk] = words::<2>(&header);
            let (slots, chunk) = (usize::try_from(slots).unwrap_or(0), usize::try_from(chunk).unwrap_or(0));
            if !(2..=ring::MAX_SLOTS).contains(&slots) || chunk < 4096 || chunk % 4096 != 0 || chunk > MAX_CHUNK {
                return Err(TransportError::Protocol("the peer proposed an invalid ring".into()));
            }
            let geometry = Geometry { slots, chunk };
            let segment = Segment::from_fd(fd, geometry.segment_bytes())?;
            local_connection(
                stream,
                Arc::new(segment),
                geometry,
                1,
                &device,
                options.path,
                &deadline,
                options.stall_timeout,
            )
        }
        Address::Tcp(addr) => {
            let secret = options.secret.as_ref().ok_or_else(|| {
                TransportError::Authentication("connecting over TCP needs the cluster's secret".into())
            })?;
            let target = addr
                .to_socket_addrs()
                .map_err(TransportError::io("resolve"))?
                .next()
                .ok_or_else(|| TransportError::InvalidArgument(format!("`{addr}` resolves to no address")))?;
            let mut stream = TcpStream::connect_timeout(&target, deadline.remaining()?)
                .map_err(|e| deadline.explain(TransportError::io("connect")(e)))?;
            deadline.arm(&stream)?;
            tcp::authenticate_client(&mut stream, secret).map_err(|e| deadline.explain(e))?;
            tcp_connection(stream, &device, options.stall_timeout)
        }
    }
}

/// Connects to a listening peer.
///
/// # Errors
/// As [`connect_blocking`].
pub async fn connect(
    address: Address,
    device: Arc<dyn Device>,
    options: Options,
) -> Result<Connection, TransportError> {
    tokio::task::spawn_blocking(move || connect_blocking(&address, device, &options))
        .await
        .map_err(|e| TransportError::Internal(format!("the connect task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::sim::SimDevice;

    #[test]
    fn a_taken_name_is_skipped_and_all_taken_is_a_clear_error() {
        let device: Arc<dyn Device> = Arc::new(SimDevice::new());
        let prefix = format!("gpucluster-unit-{}", std::process::id());
        let squatter = Listener::bind(&Address::Local(format!("{prefix}-aaaa")), device.clone(), Options::default())
            .expect("bind");
        let mut names = ["aaaa", "bbbb"].into_iter().map(|s| Ok(s.to_owned()));
        let second = Listener::bind_first_free(&prefix, device.clone(), Options::default(), || {
            names.next().unwrap_or_else(|| Ok("zzzz".into()))
        })
        .expect("the second name");
        assert_eq!(second.address().to_string(), format!("local:{prefix}-bbbb"));
        let err = Listener::bind_first_free(&prefix, device.clone(), Options::default(), || Ok("aaaa".into()))
            .expect_err("every name taken");
        assert!(err.to_string().contains("8 fresh random names were all taken"), "{err}");
        drop(squatter);
        let random = Listener::bind_local("gpucluster-unit", device, Options::default()).expect("bind_local");
        let name = random.address().to_string();
        let suffix = name.strip_prefix("local:gpucluster-unit-").expect("prefix");
        assert!(suffix.len() == 32 && suffix.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    }
}
