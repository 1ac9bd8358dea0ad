//! Measuring a connection, and the ceilings it is compared with: the one engine behind
//! `gpucluster bench transport` and the built-in worker of `gpucluster up`.
//!
//! Bandwidth is one-way, as `ucx_perftest tag_bw` measures it: a stream of messages with
//! [`NO_REPLY`] tags, the last with [`ACK`], which the peer ([`crate::peer::echo`]) answers with
//! an empty message. Latency is half a round trip of one message the peer echoes. The ceilings
//! are copies inside one process on the same device: device to device, and the pipelined
//! device-to-pinned-host-to-device copy that the host-staged path makes across two processes
//! (the only code here that registers host memory, behind its stated contract).
//!
//! Timing is all this module adds; it touches device memory only through the transport's own
//! types, and prints nothing.

use std::time::{Duration, Instant};

use crate::TransportError;
use crate::conn::Connection;
use crate::device::{Device, DeviceBuffer, Event};
use crate::peer::{ACK, NO_REPLY};

/// The median of `values` (the upper one of an even count); 0 for none.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Sends `messages` messages of `bytes` bytes of `send` and waits for the peer's acknowledgement
/// (received into `ack`); returns the seconds it took.
///
/// # Errors
/// A transfer failed, or the acknowledgement carried data.
pub fn stream(
    conn: &Connection,
    send: &DeviceBuffer,
    ack: &DeviceBuffer,
    bytes: usize,
    messages: usize,
) -> Result<f64, TransportError> {
    let messages = messages.max(1);
    let t = Instant::now();
    for m in 0..messages {
        let tag = if m + 1 == messages { ACK } else { NO_REPLY };
        conn.send_blocking(tag | m as u64, send, bytes)?;
    }
    let r = conn.recv_blocking(ack)?;
    let seconds = t.elapsed().as_secs_f64();
    if r.len != 0 {
        return Err(TransportError::Protocol(format!("the acknowledgement carried {} bytes", r.len)));
    }
    Ok(seconds)
}

/// One round trip of `bytes` bytes of `send` with `tag`, echoed back into `back`; checks that
/// the echo is the message's size and tag.
///
/// # Errors
/// A transfer failed, or the echo differs.
pub fn round_trip(
    conn: &Connection,
    send: &DeviceBuffer,
    back: &DeviceBuffer,
    bytes: usize,
    tag: u64,
) -> Result<Duration, TransportError> {
    let t = Instant::now();
    conn.send_blocking(tag, send, bytes)?;
    let r = conn.recv_blocking(back)?;
    let rtt = t.elapsed();
    if r.len != bytes || r.tag != tag {
        return Err(TransportError::Corrupted(format!(
            "message {tag} came back as {} bytes with tag {}",
            r.len, r.tag
        )));
    }
    Ok(rtt)
}

/// The median seconds of `repeats` runs of `op`, after two warm-up runs.
///
/// # Errors
/// The first error of `op`.
pub fn timed(repeats: usize, mut op: impl FnMut() -> Result<(), TransportError>) -> Result<f64, TransportError> {
    for _ in 0..2 {
        op()?;
    }
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        op()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(&mut times))
}

/// GB/s of a device-to-device copy of `bytes` from `a` to `b` in this process (median of
/// `repeats`).
///
/// # Errors
/// A device failure.
pub fn ceiling_d2d(
    device: &dyn Device,
    a: &DeviceBuffer,
    b: &DeviceBuffer,
    bytes: usize,
    repeats: usize,
) -> Result<f64, TransportError> {
    let stream = device.stream()?;
    let t = timed(repeats, || a.copy_to(b, bytes, &*stream))?;
    Ok(bytes as f64 / t / 1e9)
}

/// GB/s of copying `bytes` from `a` to `b` through pinned host memory in this process, as the
/// host-staged path does across two: `slots` slots of `chunk` bytes, two streams, the copy out of
/// chunk k+1 overlapping the copy in of chunk k (median of `repeats`).
///
/// # Errors
/// A device or shared-memory failure.
pub fn ceiling_staged(
    device: &dyn Device,
    a: &DeviceBuffer,
    b: &DeviceBuffer,
    bytes: usize,
    slots: usize,
    chunk: usize,
    repeats: usize,
) -> Result<f64, TransportError> {
    let (slots, chunk) = (slots.max(1), chunk.max(1));
    if bytes > a.len() || bytes > b.len() {
        return Err(TransportError::BufferTooSmall { needed: bytes as u64, capacity: a.len().min(b.len()) as u64 });
    }
    let bounce = crate::shm::Segment::create("gpucluster-bench-bounce", slots * chunk)?;
    // SAFETY: `bounce` outlives the registration, undone below.
    unsafe { device.register_host(bounce.as_ptr(), bounce.len())? };
    let out_stream = device.stream()?;
    let in_stream = device.stream()?;
    let copied: Vec<Box<dyn Event>> = (0..slots).map(|_| out_stream.event()).collect::<Result<_, _>>()?;
    let drained: Vec<Box<dyn Event>> = (0..slots).map(|_| in_stream.event()).collect::<Result<_, _>>()?;
    let result = timed(repeats, || {
        let chunks = bytes.div_ceil(chunk).max(1);
        for k in 0..chunks {
            let slot = k % slots;
            let offset = k * chunk;
            let len = chunk.min(bytes - offset.min(bytes));
            // SAFETY: slot memory lies inside `bounce`, which is pinned and mapped.
            let host = unsafe { bounce.as_ptr().add(slot * chunk) };
            if k >= slots {
                out_stream.wait(&*drained[slot])?;
            }
            // SAFETY: `a` holds `offset + len <= bytes` bytes (checked above); the slot's previous
            // copy in has finished (waited on).
            unsafe { out_stream.d2h(host, a.ptr() + offset as u64, len)? };
            out_stream.record(&*copied[slot])?;
            in_stream.wait(&*copied[slot])?;
            // SAFETY: as above, for `b`; the copy out into this slot has finished (waited on).
            unsafe { in_stream.h2d(b.ptr() + offset as u64, host, len)? };
            in_stream.record(&*drained[slot])?;
        }
        in_stream.synchronize()
    });
    // Nothing may still copy through `bounce` when it is unregistered, even after an error.
    let _ = (out_stream.synchronize(), in_stream.synchronize());
    // SAFETY: registered above; both streams that used it are synchronised.
    unsafe { device.unregister_host(bounce.as_ptr()) };
    Ok(bytes as f64 / result? / 1e9)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::device::{self, DeviceKind};

    #[test]
    fn the_ceilings_copy_the_bytes_they_time() {
        let device: Arc<dyn Device> = device::open(DeviceKind::Simulated).expect("device");
        let (a, b) = (DeviceBuffer::new(&device, 3 << 20).expect("a"), DeviceBuffer::new(&device, 3 << 20).expect("b"));
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        a.write(&data).expect("write");
        for ceiling in [
            ceiling_d2d(&*device, &a, &b, data.len(), 2).expect("d2d"),
            ceiling_staged(&*device, &a, &b, data.len(), 2, 1 << 20, 2).expect("staged"),
        ] {
            assert!(ceiling > 0.0);
            let mut back = vec![0u8; data.len()];
            b.read(&mut back).expect("read");
            assert!(back == data, "the copy arrived intact");
        }
        let err = ceiling_staged(&*device, &a, &b, 4 << 20, 2, 1 << 20, 1).expect_err("past the buffers");
        assert!(matches!(err, TransportError::BufferTooSmall { .. }), "{err}");
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
