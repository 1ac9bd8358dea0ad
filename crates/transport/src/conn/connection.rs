//! A connection once it is set up ([`Connection`]): messages in order, each with a tag, sent
//! and received blocking or async, from a [`DeviceBuffer`] or raw device memory, and ended at
//! once from any thread ([`Connection::abort`]). Which protocol carries them (the shared ring,
//! TCP) is fixed when the connection is made; setting it up is the handshake's (`local.rs`, the
//! gate and `connect.rs`).

use std::fmt;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::device::{Device, DeviceBuffer, DevicePtr};
use crate::ring::{self, Received};
use crate::shm::Segment;
use crate::tcp;
use crate::{TransferPath, TransportError};

enum Halves {
    Local { sender: Mutex<ring::Sender>, receiver: Mutex<ring::Receiver> },
    Tcp { sender: Mutex<tcp::TcpSender>, receiver: Mutex<tcp::TcpReceiver> },
}

/// The shared segment of a local connection, registered with the device (pinned) from
/// [`Pinned::register`] until both halves are gone.
pub(super) struct Pinned {
    device: Arc<dyn Device>,
    segment: Arc<Segment>,
}

impl Pinned {
    /// Registers `segment` with `device`; dropping the result unregisters it.
    pub(super) fn register(device: &Arc<dyn Device>, segment: &Arc<Segment>) -> Result<Self, TransportError> {
        // SAFETY: the segment stays mapped while `Pinned` (which unregisters it) holds it.
        unsafe { device.register_host(segment.as_ptr(), segment.len())? };
        Ok(Self { device: device.clone(), segment: segment.clone() })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: registered in `register`; both halves (and their streams, which wait for their
        // copies before returning) are gone by the time the last `Pinned` drops.
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
/// [`Options::stall_timeout`](crate::Options::stall_timeout), or went away) that direction is
/// unusable and says so.
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
    /// A local connection on the rings of a shared segment, once the handshake has chosen its
    /// `path` (and said why it is not the one asked for, if it fell back).
    pub(super) fn local(
        path: TransferPath,
        fallback: Option<String>,
        (sender, receiver): (ring::Sender, ring::Receiver),
        pinned: Pinned,
        control: Arc<UnixStream>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                path,
                fallback,
                halves: Halves::Local { sender: Mutex::new(sender), receiver: Mutex::new(receiver) },
                abort: AbortHandle::Local(control.clone()),
                aborted: false.into(),
                _pinned: Some(pinned),
                _control: Some(control),
            }),
        }
    }

    /// A TCP connection on `stream`, authenticated already; only the staging is left to set up.
    pub(super) fn tcp(stream: TcpStream, device: &Arc<dyn Device>, stall: Duration) -> Result<Self, TransportError> {
        let abort = AbortHandle::Tcp(stream.try_clone().map_err(TransportError::io("dup socket"))?);
        let (sender, receiver) = tcp::halves(stream, device, stall)?;
        Ok(Self {
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
    /// stopped taking the message for [`Options::stall_timeout`](crate::Options::stall_timeout),
    /// or a device failure.
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
    /// of the message for [`Options::stall_timeout`](crate::Options::stall_timeout), or a device
    /// failure.
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
