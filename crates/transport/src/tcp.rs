//! The `tcp` protocol, for workers on different hosts: pipelined host staging on both ends of a
//! TCP connection, after a mutual challenge-response proves both hold the cluster's secret.
//!
//! Authentication: the listener sends a random nonce; the connector answers with its own nonce
//! and HMAC-SHA256(secret, "gpucluster client" | listener nonce | connector nonce); the listener
//! checks it and answers HMAC-SHA256(secret, "gpucluster server" | connector nonce | listener
//! nonce). No byte of data is read before the first check passes, and the secret never crosses
//! the wire.
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

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::TransportError;
use crate::device::{Device, DevicePtr, Event, Stream};
use crate::ring::Received;
use crate::shm::Segment;

const MAGIC: u32 = 0x4743_5450; // "GCTP"
/// Bytes of a challenge nonce.
pub(crate) const NONCE: usize = 32;
const TAG_BYTES: usize = 32;
/// Bytes of the connector's answer: its nonce and its tag.
pub(crate) const ANSWER_BYTES: usize = NONCE + TAG_BYTES;
/// Staging chunk for the socket path.
pub(crate) const CHUNK: usize = 4 << 20;
const SLOTS: usize = 2;

/// The environment variable that carries the cluster's secret (hexadecimal) to the processes
/// gpucluster starts: never their command line, which every user can read in `/proc`.
pub const SECRET_ENV: &str = "GPUCLUSTER_SECRET";

/// The cluster's shared secret.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret from bytes (at least 16).
    ///
    /// # Errors
    /// [`TransportError::Authentication`] for a secret too short to be one.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, TransportError> {
        let bytes = bytes.into();
        if bytes.len() < 16 {
            return Err(TransportError::Authentication("a cluster secret needs at least 16 bytes".into()));
        }
        Ok(Self(bytes))
    }

    /// A fresh random secret of 32 bytes.
    ///
    /// # Errors
    /// [`TransportError::Io`] if the system has no randomness to give.
    pub fn random() -> Result<Self, TransportError> {
        Ok(Self(random_bytes::<32>()?.to_vec()))
    }

    /// The secret as hexadecimal, for handing to workers in their environment.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads the hexadecimal form.
    ///
    /// # Errors
    /// [`TransportError::Authentication`] for text that is not even-length hexadecimal.
    pub fn from_hex(text: &str) -> Result<Self, TransportError> {
        let bad = || TransportError::Authentication("the cluster secret must be hexadecimal".into());
        if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let bytes = (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| bad()));
        Self::new(bytes.collect::<Result<Vec<_>, _>>()?)
    }

    /// The secret in [`SECRET_ENV`], if that is set.
    ///
    /// # Errors
    /// [`TransportError::Authentication`] if it is set but not a secret.
    pub fn from_env() -> Result<Option<Self>, TransportError> {
        match std::env::var(SECRET_ENV) {
            Ok(text) => Self::from_hex(text.trim()).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(TransportError::Authentication(format!("{SECRET_ENV} is not hexadecimal")))
            }
        }
    }

    fn mac(&self, label: &[u8], a: &[u8], b: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(label);
        mac.update(a);
        mac.update(b);
        mac
    }
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], TransportError> {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: writing into our own buffer within bounds.
        let n = unsafe { libc::getrandom(out[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n < 0 {
            return Err(TransportError::Io { call: "getrandom", error: std::io::Error::last_os_error() });
        }
        filled += n as usize;
    }
    Ok(out)
}

/// The listener's half of the handshake, after it sent the nonce `ours` and read the
/// connector's `answer` ([`ANSWER_BYTES`]): checks it, and returns the proof to send back. The
/// gate (`gate.rs`) runs it on non-blocking sockets, so no peer can hold a thread with it.
pub(crate) fn check_answer(
    secret: &Secret,
    ours: &[u8; NONCE],
    answer: &[u8],
) -> Result<[u8; TAG_BYTES], TransportError> {
    if answer.len() != ANSWER_BYTES {
        return Err(TransportError::Protocol("a challenge answer of the wrong size".into()));
    }
    let (theirs, tag) = answer.split_at(NONCE);
    secret
        .mac(b"gpucluster client", ours, theirs)
        .verify_slice(tag)
        .map_err(|_| TransportError::Authentication("the peer does not hold the cluster's secret".into()))?;
    Ok(secret.mac(b"gpucluster server", theirs, ours).finalize().into_bytes().into())
}

/// The connector's half of the handshake (blocking: the caller arms a deadline on `stream`).
pub(crate) fn authenticate_client(stream: &mut TcpStream, secret: &Secret) -> Result<(), TransportError> {
    let mut challenge = [0u8; NONCE];
    stream.read_exact(&mut challenge).map_err(TransportError::io("read challenge"))?;
    let answer = secret.answer(&challenge)?;
    stream.write_all(&answer).map_err(TransportError::io("answer challenge"))?;
    let mut proof = [0u8; TAG_BYTES];
    stream.read_exact(&mut proof).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => TransportError::Authentication(
            "the peer closed the connection instead of proving itself: we do not hold its cluster secret, \
             or it is turning connections away"
                .into(),
        ),
        _ => TransportError::io("read proof")(e),
    })?;
    secret.check_proof(&challenge, &answer, &proof)
}

/// The challenge-response without a socket, for callers that carry it over a connection of
/// their own (the Python comm carries it over Dask's TCP streams). The exchange: the listener
/// sends [`Secret::challenge`] ([`NONCE_BYTES`]); the connector sends [`Secret::answer`]
/// ([`ANSWER_LEN`]); the listener checks it with [`Secret::check_answer`] and sends the proof it
/// returns ([`PROOF_BYTES`]); the connector checks that with [`Secret::check_proof`].
impl Secret {
    /// A fresh random challenge.
    ///
    /// # Errors
    /// [`TransportError::Io`] if the system has no randomness to give.
    pub fn challenge() -> Result<[u8; NONCE], TransportError> {
        random_bytes::<NONCE>()
    }

    /// The connector's answer to `challenge`: a nonce of its own and its HMAC.
    ///
    /// # Errors
    /// [`TransportError::Protocol`] for a challenge of the wrong size; no randomness.
    pub fn answer(&self, challenge: &[u8]) -> Result<Vec<u8>, TransportError> {
        if challenge.len() != NONCE {
            return Err(TransportError::Protocol("a challenge of the wrong size".into()));
        }
        let ours = random_bytes::<NONCE>()?;
        let tag = self.mac(b"gpucluster client", challenge, &ours).finalize().into_bytes();
        let mut answer = Vec::with_capacity(ANSWER_BYTES);
        answer.extend_from_slice(&ours);
        answer.extend_from_slice(&tag);
        Ok(answer)
    }

    /// The listener's check of the `answer` to its challenge `ours`; returns the proof to send
    /// back.
    ///
    /// # Errors
    /// [`TransportError::Authentication`] if the answer was not made with this secret;
    /// [`TransportError::Protocol`] for sizes that are wrong.
    pub fn check_answer(&self, ours: &[u8], answer: &[u8]) -> Result<[u8; TAG_BYTES], TransportError> {
        let ours: &[u8; NONCE] =
            ours.try_into().map_err(|_| TransportError::Protocol("a challenge of the wrong size".into()))?;
        check_answer(self, ours, answer)
    }

    /// The connector's check of the listener's `proof`, given the `challenge` it received and the
    /// `answer` it sent.
    ///
    /// # Errors
    /// [`TransportError::Authentication`] if the listener does not hold this secret;
    /// [`TransportError::Protocol`] for sizes that are wrong.
    pub fn check_proof(&self, challenge: &[u8], answer: &[u8], proof: &[u8]) -> Result<(), TransportError> {
        if challenge.len() != NONCE || answer.len() != ANSWER_BYTES {
            return Err(TransportError::Protocol("a challenge or answer of the wrong size".into()));
        }
        self.mac(b"gpucluster server", &answer[..NONCE], challenge)
            .verify_slice(proof)
            .map_err(|_| TransportError::Authentication("the peer does not hold the cluster's secret".into()))
    }
}

/// Bytes of a challenge ([`Secret::challenge`]).
pub const NONCE_BYTES: usize = NONCE;
/// Bytes of an answer ([`Secret::answer`]).
pub const ANSWER_LEN: usize = ANSWER_BYTES;
/// Bytes of a proof ([`Secret::check_answer`]).
pub const PROOF_BYTES: usize = TAG_BYTES;

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
    crate::gate::set_timeouts(&socket, Some(stall))?;
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
            Err(e) if crate::gate::is_timeout(&e) => {
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
