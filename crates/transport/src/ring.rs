//! The shared ring between two processes on one host, and the two protocols that use it.
//!
//! One anonymous shared segment holds two rings, one per direction. Each ring has a header
//! (`produced` and `consumed` counters on their own cache lines), a descriptor per slot, and a
//! data area of `slots x chunk` bytes that both processes pin (`cuMemHostRegister`, portable).
//!
//! - **host-staged**: the sender copies chunk *k* of its buffer device-to-host into slot
//!   *k mod slots* and publishes it once the copy's event completes; the receiver copies each
//!   published slot host-to-device into the destination and releases the slot once that copy's
//!   event completes. Several slots are in flight on each side, so the sender's device-to-host
//!   copies overlap the receiver's host-to-device copies: no CPU copy is ever on the path.
//! - **cuda-ipc**: the sender publishes a descriptor with its buffer's IPC handle and offset;
//!   the receiver opens the handle (once per allocation and connection), copies device to device,
//!   waits for that copy's event, and releases the slot, which is the sender's acknowledgement.
//!
//! - **small messages**: a host-to-device copy of less than [`COPY_ENGINE_MIN`] bytes does not
//!   go to a copy engine: the driver puts it inline in the stream's command buffer, which the GPU
//!   runs on its time-sliced graphics/compute engine, and between two processes (two contexts)
//!   on one GPU each such copy waits about 140 us for the engine to switch contexts (measured on
//!   the H100: `docs/benchmarks.md`). Device-to-host copies go to the copy engines at any size.
//!   So the receiver copies a short chunk as [`COPY_ENGINE_MIN`] bytes where the destination
//!   has that much room (its capacity: see [`Receiver::recv`]), and a cuda-ipc connection sends
//!   messages of at most [`EAGER_MAX`] bytes host-staged ([`eager`]), since its device-to-device
//!   copy runs on the same time-sliced engine.
//!
//! Waiting spins briefly (latency is microseconds), then yields, then sleeps; while waiting it
//! watches the connection's Unix socket, so a peer that dies is noticed within milliseconds.
//! The same check, every 200 us, bounds waits on a peer that is alive but stopped: waiting for
//! the next message is unbounded (or bounded by the caller's timeout), but once a message has
//! begun (its first chunk published), no progress for the stall timeout is a
//! [`TransportError::Timeout`] on either side, and that side is then unusable (out of step).
//! These checks read the clock the loop reads anyway: nothing is added per chunk.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::TransportError;
use crate::device::{Device, DevicePtr, Event, IpcHandle, Stream};
use crate::shm::Segment;

/// Bytes of each direction's control area: header and descriptors.
const CONTROL_BYTES: usize = 16 * 1024;
const DESC_BYTES: usize = 192;
const HEADER_BYTES: usize = 256;

/// The smallest host-to-device copy the driver gives to a copy engine (found on the H100 with
/// `tests/gpu/small_copy_probe.py`: 16 KiB and less ran inline, 32 KiB on a copy engine).
pub const COPY_ENGINE_MIN: usize = 32 << 10;

/// The largest message a cuda-ipc connection sends host-staged: below it, two small copies on
/// the copy engines beat one device-to-device copy that waits for the time-sliced engine; above
/// it, cuda-ipc's single copy wins on bandwidth (64 KiB: 6.0 against 5.8 GB/s; 1 MiB: 91 against
/// 34).
pub const EAGER_MAX: usize = 64 << 10;

/// Whether a message of `len` bytes on a cuda-ipc connection goes host-staged.
pub(crate) fn eager(len: usize) -> bool {
    len <= EAGER_MAX
}

/// Bytes to copy from a slot into the destination for a chunk of `len` bytes at `offset`: `len`,
/// or [`COPY_ENGINE_MIN`] where `len` is shorter and both the slot (`chunk` bytes) and the
/// destination (`capacity` bytes from its start) have the room, so that the copy runs on a copy
/// engine. The bytes past the chunk are the slot's, written into the destination's spare room.
pub(crate) fn padded_copy(len: usize, offset: usize, capacity: usize, chunk: usize) -> usize {
    if len == 0 || len >= COPY_ENGINE_MIN {
        return len;
    }
    let room = capacity.saturating_sub(offset).min(chunk);
    if room >= COPY_ENGINE_MIN { COPY_ENGINE_MIN } else { len }
}

const KIND_CHUNK: u32 = 1;
const KIND_IPC: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
struct Descriptor {
    kind: u32,
    first: u32,
    tag: u64,
    message_len: u64,
    offset: u64,
    len: u64,
    handle: [u8; 64],
}

/// The shape of a ring pair: how many slots each direction has and how many bytes each slot
/// holds. The one rule of what may be asked for (`Options::slots` and `Options::chunk`, a front
/// end's flags) and of what a peer may propose at setup: a
/// value of this type is always a ring that can be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingGeometry {
    slots: usize,
    chunk: usize,
}

impl RingGeometry {
    /// Fewest slots: one in flight while the other is filled.
    pub const MIN_SLOTS: usize = 2;
    /// Most slots (every slot's descriptor must fit the control area).
    pub const MAX_SLOTS: usize = 64;
    /// A slot is a whole number of these (pages: the slots are pinned page by page).
    pub const CHUNK_UNIT: usize = 4096;
    /// Largest slot (the segment is mapped whole).
    pub const MAX_CHUNK: usize = 1 << 30;

    /// Whether a ring may have `slots` slots per direction.
    pub fn slots_allowed(slots: usize) -> bool {
        (Self::MIN_SLOTS..=Self::MAX_SLOTS).contains(&slots)
    }

    /// Whether a slot may hold `chunk` bytes.
    pub fn chunk_allowed(chunk: usize) -> bool {
        (Self::CHUNK_UNIT..=Self::MAX_CHUNK).contains(&chunk) && chunk.is_multiple_of(Self::CHUNK_UNIT)
    }

    /// A ring of `slots` slots of `chunk` bytes each, per direction.
    ///
    /// # Errors
    /// [`TransportError::InvalidArgument`] where either is out of range.
    pub fn new(slots: usize, chunk: usize) -> Result<Self, TransportError> {
        if !Self::slots_allowed(slots) || chunk < Self::CHUNK_UNIT || !chunk.is_multiple_of(Self::CHUNK_UNIT) {
            return Err(TransportError::InvalidArgument(format!(
                "a ring needs {} to {} slots of a multiple of {} bytes (asked: {slots} slots of {chunk} bytes)",
                Self::MIN_SLOTS,
                Self::MAX_SLOTS,
                Self::CHUNK_UNIT,
            )));
        }
        if !Self::chunk_allowed(chunk) {
            return Err(TransportError::InvalidArgument(format!(
                "a ring slot holds at most {} bytes",
                Self::MAX_CHUNK
            )));
        }
        Ok(Self { slots, chunk })
    }

    /// Slots per direction.
    pub fn slots(self) -> usize {
        self.slots
    }

    /// Bytes per slot.
    pub fn chunk(self) -> usize {
        self.chunk
    }

    pub(crate) fn segment_bytes(self) -> usize {
        2 * CONTROL_BYTES + 2 * self.slots * self.chunk
    }

    fn control(self, direction: usize) -> usize {
        direction * CONTROL_BYTES
    }

    fn data(self, direction: usize) -> usize {
        2 * CONTROL_BYTES + direction * self.slots * self.chunk
    }
}

/// One direction of the shared segment, seen from one side.
#[derive(Debug, Clone)]
struct Ring {
    segment: Arc<Segment>,
    geometry: RingGeometry,
    direction: usize,
}

impl Ring {
    fn base(&self) -> *mut u8 {
        self.segment.as_ptr()
    }

    fn counter(&self, which: usize) -> &AtomicU64 {
        // SAFETY: the control area starts page-aligned and holds two counters 64 bytes apart;
        // AtomicU64 has the alignment of u64 and the segment outlives `self`.
        unsafe { &*(self.base().add(self.geometry.control(self.direction) + which * 64).cast::<AtomicU64>()) }
    }

    fn produced(&self) -> &AtomicU64 {
        self.counter(0)
    }

    fn consumed(&self) -> &AtomicU64 {
        self.counter(1)
    }

    fn descriptor_ptr(&self, seq: u64) -> *mut Descriptor {
        let slot = (seq % self.geometry.slots as u64) as usize;
        // SAFETY: within the control area (a `RingGeometry` has at most `MAX_SLOTS` slots).
        unsafe { self.base().add(self.geometry.control(self.direction) + HEADER_BYTES + slot * DESC_BYTES).cast() }
    }

    fn write_descriptor(&self, seq: u64, d: Descriptor) {
        // SAFETY: the slot is ours until published (the consumer has released it).
        unsafe { std::ptr::write_volatile(self.descriptor_ptr(seq), d) }
    }

    fn read_descriptor(&self, seq: u64) -> Descriptor {
        // SAFETY: the slot was published with Release before we observed it with Acquire.
        unsafe { std::ptr::read_volatile(self.descriptor_ptr(seq)) }
    }

    fn slot_data(&self, seq: u64) -> *mut u8 {
        let slot = (seq % self.geometry.slots as u64) as usize;
        // SAFETY: within the data area of this direction.
        unsafe { self.base().add(self.geometry.data(self.direction) + slot * self.geometry.chunk) }
    }
}

const _: () = assert!(HEADER_BYTES + RingGeometry::MAX_SLOTS * DESC_BYTES <= CONTROL_BYTES);
const _: () = assert!(std::mem::size_of::<Descriptor>() <= DESC_BYTES);

/// Watches the control socket: once set up, the peer never writes to it, so any readiness
/// means it closed or died.
#[derive(Debug, Clone)]
pub(crate) struct Liveness {
    socket: Arc<UnixStream>,
}

impl Liveness {
    pub(crate) fn new(socket: Arc<UnixStream>) -> Self {
        Self { socket }
    }

    pub(crate) fn check(&self) -> Result<(), TransportError> {
        let mut fds = libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN | libc::POLLRDHUP, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut fds, 1, 0) };
        if n > 0 && fds.revents != 0 {
            return Err(TransportError::PeerGone("the peer closed the connection or its process ended".into()));
        }
        Ok(())
    }
}

/// Spins, then yields, then sleeps, checking the peer between rounds.
#[derive(Debug)]
pub(crate) struct Backoff {
    started: Instant,
    last_check: Instant,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Self { started: now, last_check: now }
    }

    /// Waits a little. If the peer has gone, that is an error only while `ready` still says the
    /// awaited thing has not happened: a peer may publish its last message and exit at once.
    /// With a `limit`, waiting longer than that since this backoff began (the last progress) is
    /// [`TransportError::Timeout`], again only while `ready` says we are still waiting on the peer.
    pub(crate) fn wait(
        &mut self,
        live: &Liveness,
        limit: Option<Duration>,
        ready: impl Fn() -> bool,
    ) -> Result<(), TransportError> {
        let waited = self.started.elapsed();
        if waited < Duration::from_micros(50) {
            std::hint::spin_loop();
        } else if waited < Duration::from_millis(2) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
        if self.last_check.elapsed() > Duration::from_micros(200) {
            self.last_check = Instant::now();
            // Liveness first, then `ready`: a peer that published and then exited is not an error.
            let gone = live.check();
            if !ready() {
                gone?;
                if let Some(limit) = limit
                    && self.started.elapsed() >= limit
                {
                    return Err(TransportError::Timeout(limit));
                }
            }
        }
        Ok(())
    }
}

/// The sending side of one direction.
#[derive(Debug)]
pub(crate) struct Sender {
    ring: Ring,
    device: Arc<dyn Device>,
    stream: Box<dyn Stream>,
    events: Vec<Box<dyn Event>>,
    produced: u64,
    live: Liveness,
    stall: Duration,
    /// A message broke off half-way: the ring is out of step for good.
    broken: bool,
}

/// The receiving side of one direction.
#[derive(Debug)]
pub(crate) struct Receiver {
    ring: Ring,
    device: Arc<dyn Device>,
    stream: Box<dyn Stream>,
    events: Vec<Box<dyn Event>>,
    consumed: u64,
    live: Liveness,
    stall: Duration,
    broken: bool,
    /// Peers' allocations opened so far: base address and size.
    opened: HashMap<IpcHandle, (DevicePtr, usize)>,
}

/// Both halves of a ring pair for one side; `direction` is the one this side sends on.
pub(crate) fn halves(
    segment: Arc<Segment>,
    geometry: RingGeometry,
    send_direction: usize,
    device: &Arc<dyn Device>,
    live: &Liveness,
    stall: Duration,
) -> Result<(Sender, Receiver), TransportError> {
    let ring = |direction| Ring { segment: segment.clone(), geometry, direction };
    let events = |stream: &dyn Stream| (0..geometry.slots).map(|_| stream.event()).collect::<Result<Vec<_>, _>>();
    let send_stream = device.stream()?;
    let recv_stream = device.stream()?;
    Ok((
        Sender {
            ring: ring(send_direction),
            device: device.clone(),
            events: events(&*send_stream)?,
            stream: send_stream,
            produced: 0,
            live: live.clone(),
            stall,
            broken: false,
        },
        Receiver {
            ring: ring(1 - send_direction),
            device: device.clone(),
            events: events(&*recv_stream)?,
            stream: recv_stream,
            consumed: 0,
            live: live.clone(),
            stall,
            broken: false,
            opened: HashMap::new(),
        },
    ))
}

impl Sender {
    fn free_slots(&self) -> u64 {
        // The peer writes `consumed`: a value past `produced` is nonsense, read as "all free"
        // (it can only spoil the peer's own data), never as an overflow.
        let consumed = self.ring.consumed().load(Ordering::Acquire);
        (self.ring.geometry.slots as u64).saturating_sub(self.produced.saturating_sub(consumed))
    }

    /// Runs one send; an error after the message was published in part breaks the ring.
    fn guard(&mut self, send: impl FnOnce(&mut Self, u64) -> Result<(), TransportError>) -> Result<(), TransportError> {
        if self.broken {
            return Err(TransportError::poisoned());
        }
        let start = self.produced;
        let result = send(self, start);
        if result.is_err() {
            // No copy out of the caller's buffer may outlive the call.
            let _ = self.stream.synchronize();
            self.broken |= self.produced != start;
        }
        result
    }

    /// Sends `len` bytes at `src` through host memory.
    pub(crate) fn send_staged(&mut self, tag: u64, src: DevicePtr, len: usize) -> Result<(), TransportError> {
        self.guard(|s, start| s.staged(start, tag, src, len))
    }

    fn staged(&mut self, start: u64, tag: u64, src: DevicePtr, len: usize) -> Result<(), TransportError> {
        let chunk = self.ring.geometry.chunk;
        let chunks = len.div_ceil(chunk).max(1) as u64;
        let mut issued = 0u64;
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        let mut backoff = Backoff::new();
        while self.produced < start + chunks {
            let mut progressed = false;
            // Queue device-to-host copies into every free slot.
            while issued < chunks
                && (start + issued).saturating_sub(self.ring.consumed().load(Ordering::Acquire))
                    < self.ring.geometry.slots as u64
            {
                let seq = start + issued;
                let offset = issued as usize * chunk;
                let this = chunk.min(len - offset.min(len));
                if this > 0 {
                    // SAFETY: the slot is free (released by the receiver) and `this <= chunk`.
                    unsafe { self.stream.d2h(self.ring.slot_data(seq), src + offset as u64, this)? };
                }
                let slot = (seq % self.ring.geometry.slots as u64) as usize;
                self.stream.record(&*self.events[slot])?;
                in_flight.push_back(seq);
                issued += 1;
                progressed = true;
            }
            // Publish finished copies in order.
            while let Some(&seq) = in_flight.front() {
                let slot = (seq % self.ring.geometry.slots as u64) as usize;
                if !self.events[slot].done()? {
                    break;
                }
                let k = seq - start;
                let offset = k * chunk as u64;
                self.ring.write_descriptor(
                    seq,
                    Descriptor {
                        kind: KIND_CHUNK,
                        first: u32::from(k == 0),
                        tag,
                        message_len: len as u64,
                        offset,
                        len: (chunk as u64).min(len as u64 - offset.min(len as u64)),
                        handle: [0; 64],
                    },
                );
                self.produced = seq + 1;
                self.ring.produced().store(self.produced, Ordering::Release);
                in_flight.pop_front();
                progressed = true;
            }
            if progressed {
                backoff = Backoff::new();
            } else {
                // Waiting on our own copies needs nothing from the peer.
                let waiting_on_copies = !in_flight.is_empty();
                let consumed = self.ring.consumed();
                let next = start + issued;
                let slots = self.ring.geometry.slots as u64;
                // Before the first chunk is out, the peer may still be busy with earlier messages.
                let limit = (self.produced > start).then_some(self.stall);
                backoff.wait(&self.live, limit, || {
                    waiting_on_copies || next.saturating_sub(consumed.load(Ordering::Acquire)) < slots
                })?;
            }
        }
        Ok(())
    }

    /// Sends `len` bytes at `src` by handing the peer an IPC handle; returns once the peer has
    /// copied them.
    pub(crate) fn send_ipc(&mut self, tag: u64, src: DevicePtr, len: usize) -> Result<(), TransportError> {
        self.guard(|s, _| s.ipc(tag, src, len))
    }

    fn ipc(&mut self, tag: u64, src: DevicePtr, len: usize) -> Result<(), TransportError> {
        let (handle, offset) = self.device.ipc_export(src)?;
        let mut backoff = Backoff::new();
        while self.free_slots() == 0 {
            let (consumed, produced, slots) = (self.ring.consumed(), self.produced, self.ring.geometry.slots as u64);
            backoff.wait(&self.live, None, || produced.saturating_sub(consumed.load(Ordering::Acquire)) < slots)?;
        }
        let seq = self.produced;
        self.ring.write_descriptor(
            seq,
            Descriptor {
                kind: KIND_IPC,
                first: 1,
                tag,
                message_len: len as u64,
                offset,
                len: len as u64,
                handle: handle.0,
            },
        );
        self.produced += 1;
        self.ring.produced().store(self.produced, Ordering::Release);
        let mut backoff = Backoff::new();
        let (consumed, produced) = (self.ring.consumed(), self.produced);
        while consumed.load(Ordering::Acquire) < produced {
            backoff.wait(&self.live, Some(self.stall), || consumed.load(Ordering::Acquire) >= produced)?;
        }
        Ok(())
    }
}

/// Most peer allocations a receiver keeps open; past it, all are closed and opened again as
/// they come.
const MAX_OPENED: usize = 64;

/// What a receive delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The sender's tag.
    pub tag: u64,
    /// Bytes written at the start of the buffer.
    pub len: usize,
}

impl Receiver {
    fn wait_published(&mut self, seq: u64, limit: Option<Duration>) -> Result<(), TransportError> {
        let mut backoff = Backoff::new();
        let produced = self.ring.produced();
        while produced.load(Ordering::Acquire) <= seq {
            backoff.wait(&self.live, limit, || produced.load(Ordering::Acquire) > seq)?;
        }
        Ok(())
    }

    fn release(&mut self, seq: u64) {
        self.consumed = seq + 1;
        self.ring.consumed().store(self.consumed, Ordering::Release);
    }

    /// Receives the next message into `dst` (of `capacity` bytes), whichever protocol sent it.
    /// Bytes of `dst` past the message, up to `capacity`, may be overwritten (a short message is
    /// copied padded: [`padded_copy`]).
    /// With `wait`, gives up with [`TransportError::Timeout`] (the connection still usable) if no
    /// message has begun by then.
    pub(crate) fn recv(
        &mut self,
        dst: DevicePtr,
        capacity: usize,
        wait: Option<Duration>,
    ) -> Result<Received, TransportError> {
        if self.broken {
            return Err(TransportError::poisoned());
        }
        let start = self.consumed;
        self.wait_published(start, wait)?;
        let result = self.take(start, dst, capacity);
        if result.is_err() {
            // No copy into the caller's buffer may outlive the call.
            let _ = self.stream.synchronize();
            self.broken |= self.consumed != start;
        }
        result
    }

    fn take(&mut self, start: u64, dst: DevicePtr, capacity: usize) -> Result<Received, TransportError> {
        let first = self.ring.read_descriptor(start);
        if first.first != 1 {
            return Err(TransportError::Protocol("a message did not start with its first chunk".into()));
        }
        let len =
            usize::try_from(first.message_len).map_err(|_| TransportError::Protocol("message too large".into()))?;
        if len > capacity {
            return Err(TransportError::BufferTooSmall { needed: first.message_len, capacity: capacity as u64 });
        }
        match first.kind {
            KIND_IPC if first.len != first.message_len => {
                Err(TransportError::Protocol("an IPC descriptor's length differs from its message's".into()))
            }
            KIND_IPC => self.recv_ipc(start, &first, dst),
            KIND_CHUNK => self.recv_staged(start, first.tag, len, dst, capacity),
            other => Err(TransportError::Protocol(format!("unknown descriptor kind {other}"))),
        }
    }

    fn recv_ipc(&mut self, seq: u64, d: &Descriptor, dst: DevicePtr) -> Result<Received, TransportError> {
        let handle = IpcHandle(d.handle);
        let (base, size) = match self.opened.get(&handle) {
            Some(&opened) => opened,
            None => {
                if self.opened.len() >= MAX_OPENED {
                    // A sender whose memory comes and goes (a pool that frees) would otherwise
                    // keep every allocation it ever sent mapped here, and alive on its device.
                    for (_, (base, _)) in self.opened.drain() {
                        // SAFETY: opened in an earlier call, closed once; every copy from it was
                        // waited for before that call returned.
                        unsafe { self.device.ipc_close(base) };
                    }
                }
                let opened = self.device.ipc_open(&handle)?;
                self.opened.insert(handle, opened);
                opened
            }
        };
        if d.len > 0 {
            if d.offset.checked_add(d.len).is_none_or(|end| end > size as u64) {
                return Err(TransportError::Protocol(format!(
                    "an IPC descriptor names {} bytes at offset {} of a {size}-byte allocation",
                    d.len, d.offset
                )));
            }
            // SAFETY: `dst` holds at least `d.len` bytes (the message length, checked against the
            // buffer's capacity in `recv`); `base + offset .. + len` lies in the peer's allocation
            // (checked against the size this device reports), which stays open (in `opened`) and
            // which the peer keeps until we release the slot.
            unsafe { self.stream.d2d(dst, base + d.offset, d.len as usize)? };
            self.stream.record(&*self.events[0])?;
            self.events[0].synchronize()?;
        }
        self.release(seq);
        Ok(Received { tag: d.tag, len: d.len as usize })
    }

    fn recv_staged(
        &mut self,
        start: u64,
        tag: u64,
        len: usize,
        dst: DevicePtr,
        capacity: usize,
    ) -> Result<Received, TransportError> {
        let chunks = len.div_ceil(self.ring.geometry.chunk).max(1) as u64;
        let slots = self.ring.geometry.slots as u64;
        let mut issued = 0u64;
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        let mut backoff = Backoff::new();
        while self.consumed < start + chunks {
            let mut progressed = false;
            let produced = self.ring.produced().load(Ordering::Acquire);
            while issued < chunks && start + issued < produced {
                let seq = start + issued;
                let d = self.ring.read_descriptor(seq);
                let fits = d.offset.checked_add(d.len).is_some_and(|end| end <= len as u64);
                if d.kind != KIND_CHUNK || d.tag != tag || !fits || d.len > self.ring.geometry.chunk as u64 {
                    return Err(TransportError::Protocol(
                        "a chunk does not belong to the message being received".into(),
                    ));
                }
                if d.len > 0 {
                    // A short chunk is copied padded, so that it goes to a copy engine.
                    let copy = padded_copy(d.len as usize, d.offset as usize, capacity, self.ring.geometry.chunk);
                    // SAFETY: the slot was published and stays ours until released below; it holds
                    // `chunk >= copy` bytes, and `dst` holds `capacity >= d.offset + copy` bytes
                    // (`len >= d.offset + d.len` is checked above, `capacity >= len` in `take`, and
                    // `padded_copy` pads only within both).
                    unsafe { self.stream.h2d(dst + d.offset, self.ring.slot_data(seq), copy)? };
                }
                self.stream.record(&*self.events[(seq % slots) as usize])?;
                in_flight.push_back(seq);
                issued += 1;
                progressed = true;
            }
            while let Some(&seq) = in_flight.front() {
                if !self.events[(seq % slots) as usize].done()? {
                    break;
                }
                self.release(seq);
                in_flight.pop_front();
                progressed = true;
            }
            if progressed {
                backoff = Backoff::new();
            } else {
                let all_published = issued == chunks;
                let produced = self.ring.produced();
                let next = start + issued;
                backoff
                    .wait(&self.live, Some(self.stall), || all_published || produced.load(Ordering::Acquire) > next)?;
            }
        }
        Ok(Received { tag, len })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for (_, (base, _)) in self.opened.drain() {
            // SAFETY: opened by `ipc_open` in `recv_ipc`, closed once; every copy from it was
            // waited for before its slot was released.
            unsafe { self.device.ipc_close(base) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DeviceBuffer, sim::SimDevice};

    /// Both sides of a ring pair in one process, and the descriptors a (broken or hostile) peer
    /// could write.
    fn pair() -> (Arc<dyn Device>, Sender, Receiver, Ring, UnixStream) {
        let device: Arc<dyn Device> = Arc::new(SimDevice::new());
        let geometry = RingGeometry { slots: 4, chunk: 4096 };
        let segment = Arc::new(Segment::create("test-ring", geometry.segment_bytes()).expect("segment"));
        let (a, b) = UnixStream::pair().expect("pair");
        let live = Liveness::new(Arc::new(a));
        let (sender, _) = halves(segment.clone(), geometry, 0, &device, &live, Duration::from_secs(5)).expect("halves");
        let (_, receiver) =
            halves(segment.clone(), geometry, 1, &device, &live, Duration::from_secs(5)).expect("halves");
        let forged = Ring { segment, geometry, direction: 0 };
        (device, sender, receiver, forged, b)
    }

    fn forge(ring: &Ring, seq: u64, d: Descriptor) {
        ring.write_descriptor(seq, d);
        ring.produced().store(seq + 1, Ordering::Release);
    }

    const CHUNK: Descriptor =
        Descriptor { kind: KIND_CHUNK, first: 1, tag: 1, message_len: 100, offset: 0, len: 100, handle: [0; 64] };

    #[test]
    fn short_chunks_are_copied_padded_within_the_room_there_is() {
        let min = COPY_ENGINE_MIN;
        let chunk = 4 << 20;
        // Short, with room in the destination and the slot: padded to the copy engines' size.
        assert_eq!(padded_copy(8, 0, 1 << 20, chunk), min);
        assert_eq!(padded_copy(min - 1, 0, min, chunk), min);
        // The last short chunk of a long message, with room after it.
        assert_eq!(padded_copy(100, 2 * chunk, 2 * chunk + min, chunk), min);
        // No room: in the destination, or in a slot smaller than the padding.
        assert_eq!(padded_copy(8, 0, 8, chunk), 8);
        assert_eq!(padded_copy(8, 0, min - 1, chunk), 8);
        assert_eq!(padded_copy(100, 2 * chunk, 2 * chunk + 100, chunk), 100);
        assert_eq!(padded_copy(8, 0, 1 << 20, 4096), 8);
        // Long enough already, or nothing to copy.
        assert_eq!(padded_copy(min, 0, 1 << 20, chunk), min);
        assert_eq!(padded_copy(1 << 20, 0, 1 << 20, chunk), 1 << 20);
        assert_eq!(padded_copy(0, 0, 1 << 20, chunk), 0);
        // cuda-ipc sends small messages host-staged, large ones as handles.
        assert!(eager(8) && eager(EAGER_MAX) && !eager(EAGER_MAX + 1));
    }

    #[test]
    fn a_padded_copy_delivers_the_message_and_stays_inside_the_buffer() {
        let device: Arc<dyn Device> = Arc::new(SimDevice::new());
        let geometry = RingGeometry { slots: 4, chunk: 64 << 10 };
        let segment = Arc::new(Segment::create("test-ring", geometry.segment_bytes()).expect("segment"));
        let (a, _b) = UnixStream::pair().expect("pair");
        let live = Liveness::new(Arc::new(a));
        let (mut sender, _) = halves(segment.clone(), geometry, 0, &device, &live, Duration::from_secs(5)).expect("h");
        let (_, mut receiver) = halves(segment, geometry, 1, &device, &live, Duration::from_secs(5)).expect("h");
        let out = DeviceBuffer::new(&device, 64).expect("buffer");
        out.write(&(0..64).collect::<Vec<u8>>()).expect("write");
        for room in [8usize, COPY_ENGINE_MIN - 1, COPY_ENGINE_MIN, 48 << 10] {
            // The simulated device refuses a copy past the allocation: a padded copy that went
            // past `room` would fail the receive.
            let back = DeviceBuffer::new(&device, room).expect("buffer");
            sender.send_staged(7, out.ptr(), 8).expect("send");
            assert_eq!(receiver.recv(back.ptr(), back.len(), None).expect("recv"), Received { tag: 7, len: 8 });
            let mut got = vec![0u8; 8];
            back.read(&mut got).expect("read");
            assert_eq!(got, (0..8).collect::<Vec<u8>>(), "{room} bytes of room");
        }
    }

    #[test]
    fn a_ring_geometry_is_one_that_can_be_built() {
        for (slots, chunk) in [(2, 4096), (64, 1 << 30), (4, 4 << 20)] {
            let g = RingGeometry::new(slots, chunk).expect("allowed");
            assert_eq!((g.slots(), g.chunk()), (slots, chunk));
            assert!(RingGeometry::slots_allowed(slots) && RingGeometry::chunk_allowed(chunk));
        }
        for (slots, chunk) in [(1, 4096), (65, 4096), (0, 4096), (4, 0), (4, 4095), (4, 5000), (4, (1 << 30) + 4096)] {
            let err = RingGeometry::new(slots, chunk).expect_err("refused");
            assert!(matches!(err, TransportError::InvalidArgument(_)), "{err}");
            assert!(!(RingGeometry::slots_allowed(slots) && RingGeometry::chunk_allowed(chunk)), "{slots} x {chunk}");
        }
        let err = RingGeometry::new(4, 2 << 30).expect_err("too large");
        assert_eq!(err.to_string(), "a ring slot holds at most 1073741824 bytes");
        let err = RingGeometry::new(1, 4096).expect_err("one slot");
        assert_eq!(
            err.to_string(),
            "a ring needs 2 to 64 slots of a multiple of 4096 bytes (asked: 1 slots of 4096 bytes)"
        );
    }

    #[test]
    fn the_rings_still_carry_messages() {
        let (device, mut sender, mut receiver, _, _peer) = pair();
        let out = DeviceBuffer::new(&device, 10_000).expect("buffer");
        let back = DeviceBuffer::new(&device, 10_000).expect("buffer");
        // Two messages with different bytes, the second one wrapping round the four slots: a
        // ring that delivered stale slots, or chunks out of order, would fail the comparison.
        for (tag, len, seed) in [(5, 8192, 3u8), (6, 10_000, 7)] {
            let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 ^ seed).collect();
            out.write(&data).expect("write");
            back.write(&[0u8; 10_000]).expect("clear");
            // At most three chunks fit the four slots, so the send completes before the receive.
            sender.send_staged(tag, out.ptr(), len).expect("send");
            assert_eq!(receiver.recv(back.ptr(), back.len(), None).expect("recv"), Received { tag, len });
            let mut got = vec![0u8; len];
            back.read(&mut got).expect("read");
            assert!(got == data[..len], "message {tag} arrived changed");
        }
    }

    #[test]
    fn forged_descriptors_are_protocol_errors_not_stray_copies() {
        let cases = [
            ("a chunk longer than a slot", Descriptor { message_len: 8192, len: 8192, ..CHUNK }),
            ("an offset that wraps", Descriptor { offset: u64::MAX - 10, len: 100, ..CHUNK }),
            ("a chunk past its message", Descriptor { offset: 50, len: 100, ..CHUNK }),
            ("an unknown kind", Descriptor { kind: 9, ..CHUNK }),
            ("a message without its first chunk", Descriptor { first: 0, ..CHUNK }),
            ("an IPC length unlike its message's", Descriptor { kind: KIND_IPC, len: 1 << 20, ..CHUNK }),
        ];
        for (what, d) in cases {
            let (device, _, mut receiver, forged, _peer) = pair();
            let dst = DeviceBuffer::new(&device, 10_000).expect("buffer");
            forge(&forged, 0, d);
            let err = receiver.recv(dst.ptr(), dst.len(), None).expect_err(what);
            assert!(matches!(err, TransportError::Protocol(_)), "{what}: {err}");
        }
        // An IPC descriptor whose range runs past the peer's allocation.
        let (device, _, mut receiver, forged, _peer) = pair();
        let theirs = DeviceBuffer::new(&device, 4096).expect("buffer");
        let (handle, _) = device.ipc_export(theirs.ptr()).expect("export");
        let dst = DeviceBuffer::new(&device, 10_000).expect("buffer");
        let d = Descriptor { kind: KIND_IPC, message_len: 8000, offset: 0, len: 8000, handle: handle.0, ..CHUNK };
        forge(&forged, 0, d);
        let err = receiver.recv(dst.ptr(), dst.len(), None).expect_err("past the allocation");
        assert!(err.to_string().contains("4096-byte allocation"), "{err}");
    }
}
