//! The local handshake, both sides: how two workers on one host set up a connection over an
//! abstract Unix socket before any data moves through their shared ring.
//!
//! The connector checks with `SO_PEERCRED` that whoever holds the name runs as its user (the
//! listener's gate checks the connector the same way), then sends its hello: a magic word and the
//! path it asks for. The listener creates the shared segment and passes its descriptor with the
//! ring's geometry, which the connector checks against [`RingGeometry::new`], the rule both
//! sides share. Both pin the segment; on `cuda-ipc` both then probe CUDA IPC in each direction,
//! falling back to `host-staged` with the reason when either way fails. Every step runs under the
//! handshake's [`Deadline`]; afterwards the socket only watches the peer's liveness.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use super::address::Options;
use super::connection::{Connection, Pinned};
use crate::device::{Device, DeviceBuffer, IpcHandle};
use crate::gate::Admitted;
use crate::ring::{self, Liveness, RingGeometry};
use crate::shm::{self, Segment};
use crate::socket::{self, Deadline};
use crate::{TransferPath, TransportError};

const HELLO: u32 = 0x4743_4c31; // "GCL1"

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

fn path_to_wire(path: TransferPath) -> u64 {
    match path {
        TransferPath::CudaIpc => 1,
        TransferPath::HostStaged | TransferPath::Tcp => 2,
    }
}

fn path_from_wire(w: u64) -> TransferPath {
    if w == 1 { TransferPath::CudaIpc } else { TransferPath::HostStaged }
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
    let mine = match device.ipc_open(&IpcHandle(theirs)) {
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

/// The listener's side of a local connection that passed the gate (same user, hello received):
/// a fresh segment of `geometry` (the listener's, checked when it bound), sent with its geometry.
pub(super) fn accept(
    admitted: Admitted,
    device: &Arc<dyn Device>,
    geometry: RingGeometry,
    stall: Duration,
) -> Result<Connection, TransportError> {
    let deadline = admitted.deadline;
    let stream = UnixStream::from(admitted.socket);
    let [magic, requested] = words::<2>(&admitted.hello);
    if magic != u64::from(HELLO) {
        return Err(TransportError::Protocol("the peer is not a gpucluster worker".into()));
    }
    let segment = Segment::create("gpucluster-ring", geometry.segment_bytes())?;
    let header: Vec<u8> =
        [geometry.slots() as u64, geometry.chunk() as u64].iter().flat_map(|w| w.to_le_bytes()).collect();
    deadline.arm(&stream)?;
    shm::send_fd(&stream, segment.fd(), &header).map_err(|e| deadline.explain(e))?;
    let requested = path_from_wire(requested);
    finish(stream, Arc::new(segment), geometry, 0, device, requested, &deadline, stall)
}

/// The connector's side: connects to the abstract Unix socket `name`, checks who holds it, and
/// takes the ring the listener proposes if it is one ([`RingGeometry::new`]).
pub(super) fn connect(
    name: &str,
    device: &Arc<dyn Device>,
    options: &Options,
    deadline: &Deadline,
) -> Result<Connection, TransportError> {
    let mut stream = open_socket(name, deadline)?;
    // Before a byte is sent: whoever holds the name must be us.
    socket::check_user(socket::peer_uid(stream.as_fd())?, socket::my_uid())?;
    put_u64s(&mut stream, &[u64::from(HELLO), path_to_wire(options.path)], deadline)?;
    deadline.arm(&stream)?;
    let (fd, header) = shm::recv_fd(&stream, 16).map_err(|e| deadline.explain(e))?;
    let [slots, chunk] = words::<2>(&header);
    let (slots, chunk) = (usize::try_from(slots).unwrap_or(0), usize::try_from(chunk).unwrap_or(0));
    let geometry = RingGeometry::new(slots, chunk)
        .map_err(|_| TransportError::Protocol("the peer proposed an invalid ring".into()))?;
    let segment = Segment::from_fd(fd, geometry.segment_bytes())?;
    finish(stream, Arc::new(segment), geometry, 1, device, options.path, deadline, options.stall_timeout)
}

/// Both sides, once they share the segment: pins it, probes CUDA IPC if it was asked for, and
/// builds the rings (the side that sends on direction `send_direction`).
#[allow(clippy::too_many_arguments)] // One call per side; a struct would only rename them.
fn finish(
    mut stream: UnixStream,
    segment: Arc<Segment>,
    geometry: RingGeometry,
    send_direction: usize,
    device: &Arc<dyn Device>,
    requested: TransferPath,
    deadline: &Deadline,
    stall: Duration,
) -> Result<Connection, TransportError> {
    let pinned = Pinned::register(device, &segment)?;
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
    let halves = ring::halves(segment, geometry, send_direction, device, &live, stall)?;
    Ok(Connection::local(path, fallback, halves, pinned, control))
}

/// Connects to the abstract Unix socket `name`. The connect itself is bounded by the deadline:
/// a listener that never accepts (someone squatting a name) fills its backlog, and a connect to
/// a full backlog blocks until `SO_SNDTIMEO` runs out.
fn open_socket(name: &str, deadline: &Deadline) -> Result<UnixStream, TransportError> {
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
