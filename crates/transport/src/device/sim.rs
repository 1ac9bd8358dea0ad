//! Simulated device memory: host memory standing in for a GPU.
//!
//! Each allocation is an anonymous shared-memory file (`memfd`) mapped into the process, so a
//! simulated IPC handle (process id, descriptor, size) can be opened by another process of the
//! same user through `/proc/<pid>/fd/<fd>`, as CUDA IPC opens a peer's allocation. Nothing is
//! ever named in `/dev/shm`, and the memory goes away with the last process that maps it.
//! Copies run synchronously, so every event is complete as soon as it is recorded.
//!
//! Unlike a GPU, this device's addresses are host addresses, so a wrong one would be a stray
//! read or write in this process. Every copy therefore checks its device ranges against the
//! allocations it knows (its own and the peers' it opened) and fails with
//! [`TransportError::Device`] instead: the check is a lookup in an ordered map per copy.

use std::any::Any;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use super::{Device, DevicePtr, Event, IpcHandle, Stream};
use crate::TransportError;
use crate::shm::Segment;

const MEMORY_MAGIC: &[u8; 8] = b"SIMIPCm\0";
const EVENT_MAGIC: &[u8; 8] = b"SIMIPCe\0";

/// What the simulated device has mapped, by base address.
#[derive(Debug, Default)]
struct Memory {
    /// Our allocations.
    allocations: Mutex<BTreeMap<DevicePtr, Segment>>,
    /// Peers' allocations we opened.
    opened: Mutex<BTreeMap<DevicePtr, Segment>>,
}

fn outside(call: &'static str, ptr: DevicePtr, len: usize) -> TransportError {
    TransportError::Device {
        call,
        reason: format!("{len} bytes at {ptr:#x} are not inside one allocation of this simulated device"),
    }
}

fn contains(map: &Mutex<BTreeMap<DevicePtr, Segment>>, ptr: DevicePtr, len: usize) -> Result<bool, TransportError> {
    let map = map.lock().map_err(|_| TransportError::poisoned())?;
    Ok(map.range(..=ptr).next_back().is_some_and(|(&base, segment)| {
        (ptr - base).checked_add(len as u64).is_some_and(|end| end <= segment.len() as u64)
    }))
}

impl Memory {
    /// Checks that `ptr..ptr+len` lies in one mapped allocation and returns it as a host address.
    fn check(&self, call: &'static str, ptr: DevicePtr, len: usize) -> Result<*mut u8, TransportError> {
        if contains(&self.allocations, ptr, len)? || contains(&self.opened, ptr, len)? {
            Ok(ptr as *mut u8)
        } else {
            Err(outside(call, ptr, len))
        }
    }
}

/// Host memory pretending to be a device.
#[derive(Debug, Default)]
pub struct SimDevice {
    memory: Arc<Memory>,
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

    fn segment_of(&self, ptr: DevicePtr) -> Option<(u64, i32, usize)> {
        let allocations = self.memory.allocations.lock().ok()?;
        let (&base, segment) = allocations.range(..=ptr).next_back()?;
        (ptr < base + segment.len() as u64).then(|| (ptr - base, segment.fd().as_raw_fd(), segment.len()))
    }
}

impl Device for SimDevice {
    fn describe(&self) -> String {
        if self.refuse_ipc { "simulated MIG instance".into() } else { "simulated GPU".into() }
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr, TransportError> {
        let segment = Segment::create("gpucluster-sim-device", bytes)?;
        let ptr = segment.as_ptr() as DevicePtr;
        self.memory.allocations.lock().map_err(|_| TransportError::poisoned())?.insert(ptr, segment);
        Ok(ptr)
    }

    unsafe fn free(&self, ptr: DevicePtr) {
        if let Ok(mut a) = self.memory.allocations.lock() {
            a.remove(&ptr);
        }
    }

    unsafe fn register_host(&self, _ptr: *mut u8, _len: usize) -> Result<(), TransportError> {
        Ok(())
    }

    unsafe fn unregister_host(&self, _ptr: *mut u8) {}

    fn stream(&self) -> Result<Box<dyn Stream>, TransportError> {
        Ok(Box::new(SimStream { memory: self.memory.clone() }))
    }

    unsafe fn read(&self, src: DevicePtr, dst: &mut [u8]) -> Result<(), TransportError> {
        let src = self.memory.check("read", src, dst.len())?;
        // SAFETY: `src` lies in a mapping of this device (checked) of at least `dst.len()` bytes,
        // which the caller keeps alive for the call.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    unsafe fn write(&self, dst: DevicePtr, src: &[u8]) -> Result<(), TransportError> {
        let dst = self.memory.check("write", dst, src.len())?;
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    unsafe fn synchronize_foreign(&self, _stream: u64) -> Result<(), TransportError> {
        Ok(())
    }

    fn ipc_export(&self, ptr: DevicePtr) -> Result<(IpcHandle, u64), TransportError> {
        let (offset, fd, len) = self.segment_of(ptr).ok_or_else(|| TransportError::Device {
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

    fn ipc_open(&self, handle: &IpcHandle) -> Result<(DevicePtr, usize), TransportError> {
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
        let (pid, fd, len) = (word(8..12), word(12..16), word(16..24));
        let len = usize::try_from(len).map_err(|_| TransportError::Device {
            call: "cuIpcOpenMemHandle",
            reason: "the handle names an allocation larger than this host's address space".into(),
        })?;
        // `Segment::open` checks that the file really holds `len` bytes and cannot shrink.
        let segment = Segment::open(&format!("/proc/{pid}/fd/{fd}"), len)?;
        let ptr = segment.as_ptr() as DevicePtr;
        self.memory.opened.lock().map_err(|_| TransportError::poisoned())?.insert(ptr, segment);
        Ok((ptr, len))
    }

    unsafe fn ipc_close(&self, ptr: DevicePtr) {
        if let Ok(mut o) = self.memory.opened.lock() {
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
struct SimStream {
    memory: Arc<Memory>,
}

fn sim_event(call: &'static str, event: &dyn Event) -> Result<(), TransportError> {
    if event.as_any().is::<SimEvent>() {
        Ok(())
    } else {
        Err(TransportError::Device { call, reason: "the event belongs to another kind of device".into() })
    }
}

impl Stream for SimStream {
    unsafe fn d2h(&self, dst: *mut u8, src: DevicePtr, len: usize) -> Result<(), TransportError> {
        if len == 0 {
            return Ok(());
        }
        let src = self.memory.check("cuMemcpyDtoHAsync", src, len)?;
        // SAFETY: `src` lies in a mapping of this device (checked); the caller guarantees `dst`
        // is valid for `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
        Ok(())
    }

    unsafe fn h2d(&self, dst: DevicePtr, src: *const u8, len: usize) -> Result<(), TransportError> {
        if len == 0 {
            return Ok(());
        }
        let dst = self.memory.check("cuMemcpyHtoDAsync", dst, len)?;
        // SAFETY: as in `d2h`.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
        Ok(())
    }

    unsafe fn d2d(&self, dst: DevicePtr, src: DevicePtr, len: usize) -> Result<(), TransportError> {
        if len == 0 {
            return Ok(());
        }
        let src = self.memory.check("cuMemcpyDtoDAsync", src, len)?;
        let dst = self.memory.check("cuMemcpyDtoDAsync", dst, len)?;
        // SAFETY: both ranges lie in mappings of this device (checked), which the caller keeps
        // alive; `copy` tolerates overlap.
        unsafe { std::ptr::copy(src, dst, len) };
        Ok(())
    }

    fn record(&self, event: &dyn Event) -> Result<(), TransportError> {
        sim_event("cuEventRecord", event)
    }

    fn wait(&self, event: &dyn Event) -> Result<(), TransportError> {
        sim_event("cuStreamWaitEvent", event)
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

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceBuffer;

    #[test]
    fn copies_outside_the_allocations_are_errors_not_stray_writes() {
        let device: Arc<dyn Device> = Arc::new(SimDevice::new());
        let a = DeviceBuffer::new(&device, 100).expect("alloc");
        let b = DeviceBuffer::new(&device, 100).expect("alloc");
        let stream = device.stream().expect("stream");
        a.write(&[7u8; 100]).expect("write");
        a.copy_to(&b, 100, &*stream).expect("copy within the buffers");
        let mut back = [0u8; 100];
        b.read(&mut back).expect("read");
        assert_eq!(back, [7u8; 100]);
        assert!(matches!(a.copy_to(&b, 101, &*stream), Err(TransportError::BufferTooSmall { .. })));
        let mut host = [0u8; 16];
        let local = 0u64;
        for bad in [0x10, &local as *const u64 as u64, a.ptr() + 4090] {
            // SAFETY: deliberately breaking the contract: the simulated device must refuse.
            let err = unsafe { stream.d2d(b.ptr(), bad, 16) }.expect_err("outside");
            assert!(err.to_string().contains("not inside one allocation"), "{err}");
            // SAFETY: as above; `host` is valid for 16 bytes.
            assert!(unsafe { stream.d2h(host.as_mut_ptr(), bad, 16) }.is_err());
            // SAFETY: as above.
            assert!(unsafe { stream.h2d(bad, host.as_ptr(), 16) }.is_err());
            // SAFETY: as above.
            assert!(unsafe { device.read(bad, &mut host) }.is_err());
        }
        // A byte past the end of a 100-byte allocation is still inside its page, and refused.
        // SAFETY: as above.
        assert!(unsafe { stream.d2d(a.ptr() + 99, b.ptr(), 2) }.is_err());
    }

    #[test]
    fn streams_take_only_their_own_kind_of_event() {
        #[derive(Debug)]
        struct Foreign;
        impl Event for Foreign {
            fn done(&self) -> Result<bool, TransportError> {
                Ok(true)
            }
            fn synchronize(&self) -> Result<(), TransportError> {
                Ok(())
            }
            fn as_any(&self) -> &dyn Any {
                self
            }
        }
        let stream = SimDevice::new().stream().expect("stream");
        assert!(stream.record(&*stream.event().expect("event")).is_ok());
        assert!(stream.record(&Foreign).is_err());
        assert!(stream.wait(&Foreign).is_err());
    }
}
