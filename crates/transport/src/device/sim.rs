//! Simulated device memory: host memory standing in for a GPU.
//!
//! Each allocation is an anonymous shared-memory file (`memfd`) mapped into the process, so a
//! simulated IPC handle (process id, descriptor, size) can be opened by another process of the
//! same user through `/proc/<pid>/fd/<fd>`, as CUDA IPC opens a peer's allocation. Nothing is
//! ever named in `/dev/shm`, and the memory goes away with the last process that maps it.
//! Copies run synchronously, so every event is complete as soon as it is recorded.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Device, DevicePtr, Event, IpcHandle, Stream};
use crate::TransportError;
use crate::shm::Segment;

const MEMORY_MAGIC: &[u8; 8] = b"SIMIPCm\0";
const EVENT_MAGIC: &[u8; 8] = b"SIMIPCe\0";

/// Host memory pretending to be a device.
#[derive(Debug, Default)]
pub struct SimDevice {
    /// Our allocations, by address.
    allocations: Mutex<HashMap<DevicePtr, Segment>>,
    /// Peers' allocations we opened, by address.
    opened: Mutex<HashMap<DevicePtr, Segment>>,
    /// Refuse to open IPC handles, as CUDA does across MIG instances.
    refuse_ipc: bool,
}

impl SimDevice {
    /// A simulated whole GPU: IPC handles open.
    pub fn new() -> Self {
        Self::default()
    }

    /// A simulated MIG instance: opening a peer's IPC handle fails, as CUDA IPC does not cross
    /// MIG instances.
    pub fn mig() -> Self {
        Self { refuse_ipc: true, ..Self::default() }
    }

    fn segment_of(&self, ptr: DevicePtr) -> Option<(DevicePtr, u64, i32, usize)> {
        let allocations = self.allocations.lock().ok()?;
        allocations.iter().find_map(|(&base, seg)| {
            (ptr >= base && ptr < base + seg.len() as u64).then(|| (base, ptr - base, seg.fd(), seg.len()))
        })
    }
}

impl Device for SimDevice {
    fn describe(&self) -> String {
        if self.refuse_ipc { "simulated MIG instance".into() } else { "simulated GPU".into() }
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr, TransportError> {
        let segment = Segment::create("gpucluster-sim-device", bytes)?;
        let ptr = segment.as_ptr() as DevicePtr;
        self.allocations.lock().map_err(|_| TransportError::poisoned())?.insert(ptr, segment);
        Ok(ptr)
    }

    fn free(&self, ptr: DevicePtr) {
        if let Ok(mut a) = self.allocations.lock() {
            a.remove(&ptr);
        }
    }

    unsafe fn register_host(&self, _ptr: *mut u8, _len: usize) -> Result<(), TransportError> {
        Ok(())
    }

    fn unregister_host(&self, _ptr: *mut u8) {}

    fn stream(&self) -> Result<Box<dyn Stream>, TransportError> {
        Ok(Box::new(SimStream))
    }

    fn read(&self, src: DevicePtr, dst: &mut [u8]) -> Result<(), TransportError> {
        // SAFETY: `src` is a simulated device address: mapped host memory of at least
        // `dst.len()` bytes (callers check sizes against their buffers).
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn write(&self, dst: DevicePtr, src: &[u8]) -> Result<(), TransportError> {
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn ipc_export(&self, ptr: DevicePtr) -> Result<(IpcHandle, u64), TransportError> {
        let (_, offset, fd, len) = self.segment_of(ptr).ok_or_else(|| TransportError::Device {
            call: "ipc_export",
            reason: "not an allocation of this device".into(),
        })?;
        let mut h = [0u8; 64];
        h[..8].copy_from_slice(MEMORY_MAGIC);
        h[8..12].copy_from_slice(&std::process::id().to_le_bytes());
        h[12..16].copy_from_slice(&fd.to_le_bytes());
        h[16..24].copy_from_slice(&(len as u64).to_le_bytes());
        Ok((IpcHandle(h), offset))
    }

    fn ipc_open(&self, handle: &IpcHandle) -> Result<DevicePtr, TransportError> {
        if self.refuse_ipc {
            return Err(TransportError::Device {
                call: "cuIpcOpenMemHandle",
                reason: "simulated MIG instance: CUDA IPC across GPU instances is not supported".into(),
            });
        }
        let h = &handle.0;
        if &h[..8] != MEMORY_MAGIC {
            return Err(TransportError::Device {
                call: "cuIpcOpenMemHandle",
                reason: "not a simulated memory handle".into(),
            });
        }
        let word = |r: std::ops::Range<usize>| h[r].iter().rev().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
        let (pid, fd, len) = (word(8..12), word(12..16), word(16..24) as usize);
        let segment = Segment::open(&format!("/proc/{pid}/fd/{fd}"), len)?;
        let ptr = segment.as_ptr() as DevicePtr;
        self.opened.lock().map_err(|_| TransportError::poisoned())?.insert(ptr, segment);
        Ok(ptr)
    }

    fn ipc_close(&self, ptr: DevicePtr) {
        if let Ok(mut o) = self.opened.lock() {
            o.remove(&ptr);
        }
    }

    fn ipc_event(&self) -> Result<(Box<dyn Event>, IpcHandle), TransportError> {
        let mut h = [0u8; 64];
        h[..8].copy_from_slice(EVENT_MAGIC);
        Ok((Box::new(SimEvent), IpcHandle(h)))
    }

    fn ipc_open_event(&self, handle: &IpcHandle) -> Result<Box<dyn Event>, TransportError> {
        if &handle.0[..8] != EVENT_MAGIC {
            return Err(TransportError::Device {
                call: "cuIpcOpenEventHandle",
                reason: "not a simulated event handle".into(),
            });
        }
        Ok(Box::new(SimEvent))
    }
}

/// Copies happen when queued.
#[derive(Debug)]
struct SimStream;

impl Stream for SimStream {
    unsafe fn d2h(&self, dst: *mut u8, src: DevicePtr, len: usize) -> Result<(), TransportError> {
        // SAFETY: the caller guarantees `dst` is valid for `len` bytes; `src` is simulated device
        // memory (host memory) of at least `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst, len) };
        Ok(())
    }

    unsafe fn h2d(&self, dst: DevicePtr, src: *const u8, len: usize) -> Result<(), TransportError> {
        // SAFETY: as in `d2h`.
        unsafe { std::ptr::copy_nonoverlapping(src, dst as *mut u8, len) };
        Ok(())
    }

    fn d2d(&self, dst: DevicePtr, src: DevicePtr, len: usize) -> Result<(), TransportError> {
        // SAFETY: both are simulated device addresses of at least `len` bytes (callers check);
        // `copy` tolerates overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, len) };
        Ok(())
    }

    fn record(&self, _event: &dyn Event) -> Result<(), TransportError> {
        Ok(())
    }

    fn wait(&self, _event: &dyn Event) -> Result<(), TransportError> {
        Ok(())
    }

    fn event(&self) -> Result<Box<dyn Event>, TransportError> {
        Ok(Box::new(SimEvent))
    }

    fn synchronize(&self) -> Result<(), TransportError> {
        Ok(())
    }
}

#[derive(Debug)]
struct SimEvent;

impl Event for SimEvent {
    fn done(&self) -> Result<bool, TransportError> {
        Ok(true)
    }

    fn synchronize(&self) -> Result<(), TransportError> {
        Ok(())
    }

    fn elapsed_ms_since(&self, _start: &dyn Event) -> Option<f64> {
        None
    }

    fn raw(&self) -> u64 {
        0
    }
}
