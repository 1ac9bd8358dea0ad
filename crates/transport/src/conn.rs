//! Connections between two worker processes: addresses, listening, connecting, and the async
//! send and receive that every path shares.
//!
//! A local address (`local:NAME`) is a Unix socket in the abstract namespace: it leaves no file
//! behind, and both ends check with `SO_PEERCRED` that the other runs as the same user. It
//! carries only the setup (the shared segment's descriptor, the CUDA IPC probe) and then watches
//! the peer's liveness; data moves through the shared ring. A TCP address (`tcp:HOST:PORT`)
//! carries everything, after authentication with the cluster's secret.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::device::{Device, DeviceBuffer};
use crate::ring::{self, Geometry, Liveness, Received};
use crate::shm::{self, Segment};
use crate::tcp::{self, Secret};
use crate::{Path, TransportError};

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
        let bad = || TransportError::Protocol(format!("`{s}` is not an address: expected local:NAME or tcp:HOST:PORT"));
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
    pub path: Path,
    /// Slots of the shared ring, per direction.
    pub slots: usize,
    /// Bytes per slot.
    pub chunk: usize,
    /// The cluster's secret, required for TCP.
    pub secret: Option<Secret>,
}

impl Default for Options {
    fn default() -> Self {
        Self { path: Path::HostStaged, slots: 4, chunk: 4 << 20, secret: None }
    }
}

const HELLO: u32 = 0x4743_4c31; // "GCL1"

fn same_user(stream: &UnixStream) -> Result<(), TransportError> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: out-pointer of the right size for SO_PEERCRED.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(TransportError::io("getsockopt SO_PEERCRED")(std::io::Error::last_os_error()));
    }
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    if cred.uid != me {
        return Err(TransportError::Authentication(format!("the peer runs as user {}, not {me}", cred.uid)));
    }
    Ok(())
}

fn put_u64s(stream: &mut UnixStream, words: &[u64]) -> Result<(), TransportError> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    stream.write_all(&bytes).map_err(TransportError::io("write setup"))
}

fn get_u64s<const N: usize>(stream: &mut UnixStream) -> Result<[u64; N], TransportError> {
    let mut bytes = vec![0u8; N * 8];
    stream.read_exact(&mut bytes).map_err(TransportError::io("read setup"))?;
    let mut out = [0u64; N];
    for (i, w) in out.iter_mut().enumerate() {
        *w = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    }
    Ok(out)
}

/// Tries CUDA IPC in both directions: each side exports a small allocation and opens the
/// other's. `Ok(None)` when both work, `Ok(Some(reason))` when either fails.
fn probe_ipc(stream: &mut UnixStream, device: &Arc<dyn Device>) -> Result<Option<String>, TransportError> {
    let probe = DeviceBuffer::new(device, 4096)?;
    let (handle, _) = device.ipc_export(probe.ptr())?;
    stream.write_all(&handle.0).map_err(TransportError::io("send probe handle"))?;
    let mut theirs = [0u8; 64];
    stream.read_exact(&mut theirs).map_err(TransportError::io("read probe handle"))?;
    let mine = match device.ipc_open(&crate::device::IpcHandle(theirs)) {
        Ok((ptr, _)) => {
            // SAFETY: just opened, closed once, never used for a copy.
            unsafe { device.ipc_close(ptr) };
            None
        }
        Err(e) => Some(e.to_string()),
    };
    let report = mine.clone().unwrap_or_default();
    put_u64s(stream, &[u64::from(mine.is_none()), report.len() as u64])?;
    stream.write_all(report.as_bytes()).map_err(TransportError::io("send probe result"))?;
    let [ok, len] = get_u64s::<2>(stream)?;
    let mut text = vec![0u8; len.min(4096) as usize];
    stream.read_exact(&mut text).map_err(TransportError::io("read probe result"))?;
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

struct Inner {
    path: Path,
    fallback: Option<String>,
    // Field order is drop order: the halves first, then the pinning, then the socket.
    halves: Halves,
    _pinned: Option<Pinned>,
    _control: Option<Arc<UnixStream>>,
}

/// A connection to one peer worker: messages in order, each with a tag, in both directions at once.
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
    pub fn path(&self) -> Path {
        self.inner.path
    }

    /// Why the connection is not on the path that was asked for, if it fell back.
    pub fn fallback(&self) -> Option<&str> {
        self.inner.fallback.as_deref()
    }

    /// Sends the first `len` bytes of `buf` with `tag`, blocking until the buffer may be reused.
    ///
    /// # Errors
    /// [`TransportError::PeerGone`] if the peer closed or died, or a device failure.
    pub fn send_blocking(&self, tag: u64, buf: &DeviceBuffer, len: usize) -> Result<(), TransportError> {
        if len > buf.len() {
            return Err(TransportError::BufferTooSmall { needed: len as u64, capacity: buf.len() as u64 });
        }
        match &self.inner.halves {
            Halves::Local { sender, .. } => {
                let mut s = sender.lock().map_err(|_| TransportError::poisoned())?;
                match self.inner.path {
                    Path::CudaIpc => s.send_ipc(tag, buf.ptr(), len),
                    _ => s.send_staged(tag, buf.ptr(), len),
                }
            }
            Halves::Tcp { sender, .. } => {
                sender.lock().map_err(|_| TransportError::poisoned())?.send(tag, buf.ptr(), len)
            }
        }
    }

    /// Receives the next message into `buf`, blocking until it has arrived.
    ///
    /// # Errors
    /// [`TransportError::BufferTooSmall`] if it does not fit (the connection is then unusable),
    /// [`TransportError::PeerGone`], or a device failure.
    pub fn recv_blocking(&self, buf: &DeviceBuffer) -> Result<Received, TransportError> {
        match &self.inner.halves {
            Halves::Local { receiver, .. } => {
                receiver.lock().map_err(|_| TransportError::poisoned())?.recv(buf.ptr(), buf.len())
            }
            Halves::Tcp { receiver, .. } => {
                receiver.lock().map_err(|_| TransportError::poisoned())?.recv(buf.ptr(), buf.len())
            }
        }
    }

    /// Sends the first `len` bytes of `buf` with `tag`.
    ///
    /// # Errors
    /// As [`Connection::send_blocking`].
    pub async fn send(&self, tag: u64, buf: Arc<DeviceBuffer>, len: usize) -> Result<(), TransportError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.send_blocking(tag, &buf, len))
            .await
            .map_err(|e| TransportError::Protocol(format!("the send task failed: {e}")))?
    }

    /// Receives the next message into `buf`.
    ///
    /// # Errors
    /// As [`Connection::recv_blocking`].
    pub async fn recv(&self, buf: Arc<DeviceBuffer>) -> Result<Received, TransportError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.recv_blocking(&buf))
            .await
            .map_err(|e| TransportError::Protocol(format!("the receive task failed: {e}")))?
    }
}

fn check_options(options: &Options) -> Result<(), TransportError> {
    if options.slots < 2 || options.slots > ring::MAX_SLOTS || options.chunk < 4096 || options.chunk % 4096 != 0 {
        return Err(TransportError::Protocol(format!(
            "a ring needs 2 to {} slots of a multiple of 4096 bytes (asked: {} slots of {} bytes)",
            ring::MAX_SLOTS,
            options.slots,
            options.chunk
        )));
    }
    Ok(())
}

/// A bound address that accepts connections.
#[derive(Debug)]
pub struct Listener {
    address: Address,
    socket: Either,
    device: Arc<dyn Device>,
    options: Options,
}

#[derive(Debug)]
enum Either {
    Local(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Binds `address` (`tcp:HOST:0` picks a free port; see [`Listener::address`]).
    ///
    /// # Errors
    /// The address is taken or invalid; TCP without a secret.
    pub fn bind(address: &Address, device: Arc<dyn Device>, options: Options) -> Result<Self, TransportError> {
        check_options(&options)?;
        let (socket, address) = match address {
            Address::Local(name) => {
                let addr = UnixAddr::from_abstract_name(name.as_bytes())
                    .map_err(TransportError::io("abstract socket name"))?;
                (Either::Local(UnixListener::bind_addr(&addr).map_err(TransportError::io("bind"))?), address.clone())
            }
            Address::Tcp(addr) => {
                if options.secret.is_none() {
                    return Err(TransportError::Authentication("a TCP listener needs the cluster's secret".into()));
                }
                let listener = TcpListener::bind(addr.as_str()).map_err(TransportError::io("bind"))?;
                let local: SocketAddr = listener.local_addr().map_err(TransportError::io("getsockname"))?;
                (Either::Tcp(listener), Address::Tcp(local.to_string()))
            }
        };
        Ok(Self { address, socket, device, options })
    }

    /// The address peers connect to (with the port filled in for `tcp:HOST:0`).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Accepts one connection, blocking.
    ///
    /// # Errors
    /// Setup failed: the peer is another user, lacks the secret, or went away.
    pub fn accept_blocking(&self) -> Result<Connection, TransportError> {
        match &self.socket {
            Either::Local(listener) => {
                let (mut stream, _) = listener.accept().map_err(TransportError::io("accept"))?;
                same_user(&stream)?;
                let [magic, requested] = get_u64s::<2>(&mut stream)?;
                if magic != u64::from(HELLO) {
                    return Err(TransportError::Protocol("the peer is not a gpucluster worker".into()));
                }
                let geometry = Geometry { slots: self.options.slots, chunk: self.options.chunk };
                let segment = Segment::create("gpucluster-ring", geometry.segment_bytes())?;
                let header: Vec<u8> =
                    [geometry.slots as u64, geometry.chunk as u64].iter().flat_map(|w| w.to_le_bytes()).collect();
                shm::send_fd(&stream, segment.fd(), &header)?;
                local_connection(stream, Arc::new(segment), geometry, 0, &self.device, path_from_wire(requested))
            }
            Either::Tcp(listener) => {
                let (mut stream, _) = listener.accept().map_err(TransportError::io("accept"))?;
                let secret =
                    self.options.secret.as_ref().ok_or_else(|| TransportError::Authentication("no secret".into()))?;
                tcp::authenticate_server(&mut stream, secret)?;
                tcp_connection(stream, &self.device)
            }
        }
    }

    /// Accepts one connection.
    ///
    /// # Errors
    /// As [`Listener::accept_blocking`].
    pub async fn accept(self: &Arc<Self>) -> Result<Connection, TransportError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.accept_blocking())
            .await
            .map_err(|e| TransportError::Protocol(format!("the accept task failed: {e}")))?
    }
}

fn path_to_wire(path: Path) -> u64 {
    match path {
        Path::CudaIpc => 1,
        Path::HostStaged | Path::Tcp => 2,
    }
}

fn path_from_wire(w: u64) -> Path {
    if w == 1 { Path::CudaIpc } else { Path::HostStaged }
}

fn local_connection(
    mut stream: UnixStream,
    segment: Arc<Segment>,
    geometry: Geometry,
    send_direction: usize,
    device: &Arc<dyn Device>,
    requested: Path,
) -> Result<Connection, TransportError> {
    // SAFETY: the segment stays mapped while `Pinned` (which unregisters it) holds it.
    unsafe { device.register_host(segment.as_ptr(), segment.len())? };
    let pinned = Pinned { device: device.clone(), segment: segment.clone() };
    let (path, fallback) = match requested {
        Path::CudaIpc => match probe_ipc(&mut stream, device)? {
            None => (Path::CudaIpc, None),
            Some(reason) => (Path::HostStaged, Some(format!("cuda-ipc unavailable, using host-staged: {reason}"))),
        },
        _ => (Path::HostStaged, None),
    };
    let control = Arc::new(stream);
    let live = Liveness::new(control.clone());
    let (sender, receiver) = ring::halves(segment, geometry, send_direction, device, &live)?;
    Ok(Connection {
        inner: Arc::new(Inner {
            path,
            fallback,
            halves: Halves::Local { sender: Mutex::new(sender), receiver: Mutex::new(receiver) },
            _pinned: Some(pinned),
            _control: Some(control),
        }),
    })
}

fn tcp_connection(stream: TcpStream, device: &Arc<dyn Device>) -> Result<Connection, TransportError> {
    let (sender, receiver) = tcp::halves(stream, device)?;
    Ok(Connection {
        inner: Arc::new(Inner {
            path: Path::Tcp,
            fallback: None,
            halves: Halves::Tcp { sender: Mutex::new(sender), receiver: Mutex::new(receiver) },
            _pinned: None,
            _control: None,
        }),
    })
}

/// Connects to a listening peer, blocking.
///
/// # Errors
/// Nobody listens there, the peer is another user or lacks the secret, or setup failed.
pub fn connect_blocking(
    address: &Address,
    device: Arc<dyn Device>,
    options: &Options,
) -> Result<Connection, TransportError> {
    check_options(options)?;
    match address {
        Address::Local(name) => {
            let addr =
                UnixAddr::from_abstract_name(name.as_bytes()).map_err(TransportError::io("abstract socket name"))?;
            let mut stream = UnixStream::connect_addr(&addr).map_err(TransportError::io("connect"))?;
            same_user(&stream)?;
            put_u64s(&mut stream, &[u64::from(HELLO), path_to_wire(options.path)])?;
            let (fd, header) = shm::recv_fd(&stream, 16)?;
            let word = |i: usize| u64::from_le_bytes(header[i * 8..i * 8 + 8].try_into().unwrap_or_default()) as usize;
            let geometry = Geometry { slots: word(0), chunk: word(1) };
            if geometry.slots < 2 || geometry.slots > ring::MAX_SLOTS || geometry.chunk == 0 {
                return Err(TransportError::Protocol("the peer proposed an invalid ring".into()));
            }
            let segment = Segment::from_fd(fd, geometry.segment_bytes())?;
            local_connection(stream, Arc::new(segment), geometry, 1, &device, options.path)
        }
        Address::Tcp(addr) => {
            let secret = options.secret.as_ref().ok_or_else(|| {
                TransportError::Authentication("connecting over TCP needs the cluster's secret".into())
            })?;
            let target = addr
                .to_socket_addrs()
                .map_err(TransportError::io("resolve"))?
                .next()
                .ok_or_else(|| TransportError::Protocol(format!("`{addr}` resolves to no address")))?;
            let mut stream = TcpStream::connect(target).map_err(TransportError::io("connect"))?;
            tcp::authenticate_client(&mut stream, secret)?;
            tcp_connection(stream, &device)
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
        .map_err(|e| TransportError::Protocol(format!("the connect task failed: {e}")))?
}
