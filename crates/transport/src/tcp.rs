//! The `tcp` protocol, for workers on different hosts: pipelined host staging on both ends of a
//! TCP connection, after a mutual challenge-response (`secret.rs`) proves both hold the cluster's
//! secret.
//!
//! Data: a 24-byte header (magic, tag, length), then the payload in chunks. The sender copies
//! chunk *k + 1* device-to-host while it writes chunk *k* to the socket; the receiver reads chunk
//! *k + 1* from the socket while chunk *k* is copied host-to-device. Staging buffers are pinned.
//!
//! Waiting: waiting for the next message is unbounded (or bounded by the caller's timeout);
//! once a message has begun, a peer that stops sending or taking it for the stall timeout is a
//! [`TransportError::Timeout`], and the connection is then unusable (out of step). EOF is
//! [`TransportError::PeerGone`] at once.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use crate::TransportError;
use crate::device::{Device, DevicePtr, Event, Stream};
use crate::ring::Received;
use crate::shm::Segment;
use crate::socket;

const MAGIC: u32 = 0x4743_5450; // "GCTP"
/// Staging chunk for the socket path.
pub(crate) const CHUNK: usize = 4 << 20;
const SLOTS: usize = 2;

/// Pinned staging slots and their events.
#[derive(Debug)]
struct Staging {
    device: Arc<dyn Device>,
    segment: Segment,
    stream: Box<dyn Stream>,
    events: Vec<Box<dyn Event>>,
    used: [bool; SLOTS],
}

impl Staging {
    fn new(device: &Arc<dyn Device>) -> Result<Self, TransportError> {
        let segment = Segment::create("gpucluster-tcp-staging", SLOTS * CHUNK)?;
        // SAFETY: the segment stays mapped until `Drop`, which unregisters it first.
        unsafe { device.register_host(segment.as_ptr(), segment.len())? };
        let stream = device.stream()?;
        let events = (0..SLOTS).map(|_| stream.event()).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { device: device.clone(), segment, stream, events, used: [false; SLOTS] })
    }

    fn slot(&self, k: usize) -> *mut u8 {
        // SAFETY: within the segment.
        unsafe { self.segment.as_ptr().add((k % SLOTS) * CHUNK) }
    }

    /// Waits until slot `k`'s last copy has finished.
    fn settle(&mut self, k: usize) -> Result<(), TransportError> {
        if self.used[k % SLOTS] {
            self.events[k % SLOTS].synchronize()?;
            self.used[k % SLOTS] = false;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        // SAFETY: registered in `new`; the stream that used it has just been synchronised.
        unsafe { self.device.unregister_host(self.segment.as_ptr()) };
    }
}

/// The sending half of a TCP connection.
#[derive(Debug)]
pub(crate) struct TcpSender {
    socket: TcpStream,
    staging: Staging,
    stall: Duration,
    /// A message broke off half-way: the stream is out of step for good.
    broken: bool,
}

/// The receiving half of a TCP connection.
#[derive(Debug)]
pub(crate) struct TcpReceiver {
    socket: TcpStream,
    staging: Staging,
    stall: Duration,
    broken: bool,
}

/// Both halves of an authenticated connection. The socket's `SO_RCVTIMEO`/`SO_SNDTIMEO` are set
/// to `stall` once, so that no read or write waits longer on a peer that stopped; what a timeout
/// means is decided per message (below), at no cost per chunk.
pub(crate) fn halves(
    socket: TcpStream,
    device: &Arc<dyn Device>,
    stall: Duration,
) -> Result<(TcpSender, TcpReceiver), TransportError> {
    socket.set_nodelay(true).map_err(TransportError::io("setsockopt TCP_NODELAY"))?;
    socket::set_timeouts(&socket, Some(stall))?;
    let reader = socket.try_clone().map_err(TransportError::io("dup socket"))?;
    Ok((
        TcpSender { socket, staging: Staging::new(device)?, stall, broken: false },
        TcpReceiver { socket: reader, staging: Staging::new(device)?, stall, broken: false },
    ))
}

/// Moves `len` bytes with `step` (given the bytes done so far, it moves some more). Once the
/// message has `started` (a byte of it has moved), a socket timeout means the peer stopped
/// midway: [`TransportError::Timeout`]. Before that it only means the peer has not yet taken (or
/// sent) earlier data, which may legitimately take any time: wait on.
fn drive(
    len: usize,
    started: &mut bool,
    stall: Duration,
    call: &'static str,
    mut step: impl FnMut(usize) -> std::io::Result<usize>,
) -> Result<(), TransportError> {
    let mut done = 0;
    while done < len {
        match step(done) {
            Ok(0) => return Err(TransportError::PeerGone(format!("{call}: the peer closed the connection"))),
            Ok(n) => {
                done += n;
                *started = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if socket::is_timeout(&e) => {
                if *started {
                    return Err(TransportError::Timeout(stall));
                }
            }
            Err(e) => return Err(TransportError::io(call)(e)),
        }
    }
    Ok(())
}

/// Writes all of `bytes` (see [`drive`] for what a timeout means).
fn write_all(socket: &mut TcpStream, bytes: &[u8], started: &mut bool, stall: Duration) -> Result<(), TransportError> {
    drive(bytes.len(), started, stall, "send", |done| socket.write(&bytes[done..]))
}

/// Fills `buf` (see [`drive`] for what a timeout means).
fn read_all(socket: &mut TcpStream, buf: &mut [u8], started: &mut bool, stall: Duration) -> Result<(), TransportError> {
    drive(buf.len(), started, stall, "receive", |done| socket.read(&mut buf[done..]))
}

impl TcpSender {
    pub(crate) fn send(&mut self, tag: u64, src: DevicePtr, len: usize) -> Result<(), TransportError> {
        if self.broken {
            return Err(TransportError::poisoned());
        }
        let mut started = false;
        let result = self.send_message(tag, src, len, &mut started);
        if result.is_err() {
            // No copy out of the caller's buffer may outlive the call.
            let _ = self.staging.stream.synchronize();
            self.staging.used = [false; SLOTS];
            self.broken |= started;
        }
        result
    }

    fn send_message(&mut self, tag: u64, src: DevicePtr, len: usize, started: &mut bool) -> Result<(), TransportError> {
        let mut header = [0u8; 24];
        header[..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[8..16].copy_from_slice(&tag.to_le_bytes());
        header[16..24].copy_from_slice(&(len as u64).to_le_bytes());
        write_all(&mut self.socket, &header, started, self.stall)?;
        let chunks = len.div_ceil(CHUNK);
        let size = |k: usize| CHUNK.min(len - k * CHUNK);
        let st = &mut self.staging;
        let issue = |st: &mut Staging, k: usize| -> Result<(), TransportError> {
            // SAFETY: slot `k` is free (settled) and holds CHUNK bytes; the caller's buffer holds
            // `len` bytes at `src`.
            unsafe { st.stream.d2h(st.slot(k), src + (k * CHUNK) as u64, size(k))? };
            st.stream.record(&*st.events[k % SLOTS])?;
            st.used[k % SLOTS] = true;
            Ok(())
        };
        if chunks > 0 {
            issue(st, 0)?;
        }
        for k in 0..chunks {
            if k + 1 < chunks {
                st.settle(k + 1)?;
                issue(st, k + 1)?;
            }
            st.settle(k)?;
            // SAFETY: the copy into slot `k` has finished; `size(k)` bytes are valid.
            let bytes = unsafe { std::slice::from_raw_parts(st.slot(k), size(k)) };
            write_all(&mut self.socket, bytes, started, self.stall)?;
        }
        Ok(())
    }
}

impl TcpReceiver {
    /// Receives the next message; with `wait`, gives up with [`TransportError::Timeout`] (the
    /// connection still usable) if none has begun to arrive by then.
    pub(crate) fn recv(
        &mut self,
        dst: DevicePtr,
        capacity: usize,
        wait: Option<Duration>,
    ) -> Result<Received, TransportError> {
        if self.broken {
            return Err(TransportError::poisoned());
        }
        if let Some(wait) = wait {
            let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
            let mut fds = libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            match unsafe { libc::poll(&mut fds, 1, ms) } {
                0 => return Err(TransportError::Timeout(wait)),
                n if n < 0 => return Err(TransportError::io("poll")(std::io::Error::last_os_error())),
                _ => {}
            }
        }
        let mut started = false;
        let result = self.recv_message(dst, capacity, &mut started);
        if result.is_err() {
            // No copy into the caller's buffer may outlive the call.
            let _ = self.staging.stream.synchronize();
            self.staging.used = [false; SLOTS];
            self.broken |= started;
        }
        result
    }

    fn recv_message(
        &mut self,
        dst: DevicePtr,
        capacity: usize,
        started: &mut bool,
    ) -> Result<Received, TransportError> {
        let mut header = [0u8; 24];
        read_all(&mut self.socket, &mut header, started, self.stall)?;
        let word = |r: std::ops::Range<usize>| header[r].iter().rev().fold(0u64, |a, &b| a << 8 | u64::from(b));
        if word(0..4) as u32 != MAGIC {
            return Err(TransportError::Protocol("a TCP frame does not start with gpucluster's magic".into()));
        }
        let (tag, len) = (word(8..16), word(16..24));
        if len > capacity as u64 {
            return Err(TransportError::BufferTooSmall { needed: len, capacity: capacity as u64 });
        }
        let len = len as usize;
        let st = &mut self.staging;
        for k in 0..len.div_ceil(CHUNK) {
            let size = CHUNK.min(len - k * CHUNK);
            st.settle(k)?;
            // SAFETY: the slot's last copy has finished, so it is ours to fill.
            let slot = unsafe { std::slice::from_raw_parts_mut(st.slot(k), size) };
            read_all(&mut self.socket, slot, started, self.stall)?;
            // SAFETY: the slot stays untouched until `settle` sees this copy finish; `dst` holds
            // `capacity >= len` bytes.
            unsafe { st.stream.h2d(dst + (k * CHUNK) as u64, st.slot(k), size)? };
            st.stream.record(&*st.events[k % SLOTS])?;
            st.used[k % SLOTS] = true;
        }
        st.stream.synchronize()?;
        st.used = [false; SLOTS];
        Ok(Received { tag, len })
    }
}
