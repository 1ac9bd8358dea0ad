//! The device-memory layer: one small interface, two implementations chosen at run time.
//!
//! - `cuda`: real device memory through the CUDA driver API (cudarc, `libcuda` loaded at run
//!   time). Allocations use `cuMemAlloc`, never the stream-ordered pool, because CUDA IPC can
//!   export only the former.
//! - `sim`: host memory standing in for a device, for CI and for `sim:` topologies. Allocations
//!   live in anonymous shared memory so that simulated IPC handles open in another process, and
//!   copies run synchronously.
//!
//! The protocols above (`host-staged`, `cuda-ipc`, `tcp`) are the same code for both.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod sim;

use std::fmt;
use std::sync::Arc;

use crate::TransportError;

/// A device address, as `CUdeviceptr`.
pub type DevicePtr = u64;

/// An exported CUDA IPC memory or event handle (64 opaque bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpcHandle(pub [u8; 64]);

impl fmt::Debug for IpcHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IpcHandle({:02x?}..)", &self.0[..8])
    }
}

/// A GPU (or its stand-in) that the protocols copy through.
///
/// Implementations must be usable from any thread: protocols run their copies on blocking
/// worker threads.
pub trait Device: Send + Sync + fmt::Debug {
    /// A short description, e.g. `CUDA device 0 (NVIDIA H100 80GB HBM3)` or `simulated`.
    fn describe(&self) -> String;

    /// Allocates `bytes` of device memory that CUDA IPC can export.
    ///
    /// # Errors
    /// Out of memory, or a driver failure.
    fn alloc(&self, bytes: usize) -> Result<DevicePtr, TransportError>;

    /// Frees memory from [`Device::alloc`].
    fn free(&self, ptr: DevicePtr);

    /// Pins host memory the caller mapped (a shared ring), so copies to and from it use DMA.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay mapped until [`Device::unregister_host`].
    ///
    /// # Errors
    /// A driver failure.
    unsafe fn register_host(&self, ptr: *mut u8, len: usize) -> Result<(), TransportError>;

    /// Undoes [`Device::register_host`].
    fn unregister_host(&self, ptr: *mut u8);

    /// A new stream: copies on it run in order.
    ///
    /// # Errors
    /// A driver failure.
    fn stream(&self) -> Result<Box<dyn Stream>, TransportError>;

    /// Copies device memory to the host and waits (for tests and checks, not the data path).
    ///
    /// # Errors
    /// A driver failure.
    fn read(&self, src: DevicePtr, dst: &mut [u8]) -> Result<(), TransportError>;

    /// Copies host memory to the device and waits.
    ///
    /// # Errors
    /// A driver failure.
    fn write(&self, dst: DevicePtr, src: &[u8]) -> Result<(), TransportError>;

    /// Exports the allocation holding `ptr`: its handle, and `ptr`'s offset into it.
    ///
    /// # Errors
    /// The memory cannot be exported (pool memory), or a driver failure.
    fn ipc_export(&self, ptr: DevicePtr) -> Result<(IpcHandle, u64), TransportError>;

    /// Opens a peer's exported allocation; the result is its base address here.
    ///
    /// # Errors
    /// The handle cannot be opened here, as across MIG instances.
    fn ipc_open(&self, handle: &IpcHandle) -> Result<DevicePtr, TransportError>;

    /// Closes what [`Device::ipc_open`] opened.
    fn ipc_close(&self, ptr: DevicePtr);

    /// An event that can be recorded here and waited on in another process, with its handle.
    ///
    /// # Errors
    /// A driver failure.
    fn ipc_event(&self) -> Result<(Box<dyn Event>, IpcHandle), TransportError>;

    /// Opens a peer's IPC event.
    ///
    /// # Errors
    /// The handle cannot be opened here.
    fn ipc_open_event(&self, handle: &IpcHandle) -> Result<Box<dyn Event>, TransportError>;
}

/// An ordered queue of copies.
pub trait Stream: Send + fmt::Debug {
    /// Queues a device-to-host copy.
    ///
    /// # Safety
    /// `dst..dst+len` must be valid host memory (pinned for full speed) until the copy completes.
    ///
    /// # Errors
    /// A driver failure.
    unsafe fn d2h(&self, dst: *mut u8, src: DevicePtr, len: usize) -> Result<(), TransportError>;

    /// Queues a host-to-device copy.
    ///
    /// # Safety
    /// `src..src+len` must stay valid until the copy completes.
    ///
    /// # Errors
    /// A driver failure.
    unsafe fn h2d(&self, dst: DevicePtr, src: *const u8, len: usize) -> Result<(), TransportError>;

    /// Queues a device-to-device copy.
    ///
    /// # Errors
    /// A driver failure.
    fn d2d(&self, dst: DevicePtr, src: DevicePtr, len: usize) -> Result<(), TransportError>;

    /// Records `event` at this point of the stream.
    ///
    /// # Errors
    /// A driver failure.
    fn record(&self, event: &dyn Event) -> Result<(), TransportError>;

    /// Makes later work on this stream wait for `event`.
    ///
    /// # Errors
    /// A driver failure.
    fn wait(&self, event: &dyn Event) -> Result<(), TransportError>;

    /// A new event for [`Stream::record`].
    ///
    /// # Errors
    /// A driver failure.
    fn event(&self) -> Result<Box<dyn Event>, TransportError>;

    /// Waits for everything queued.
    ///
    /// # Errors
    /// A driver failure, including one from an earlier copy.
    fn synchronize(&self) -> Result<(), TransportError>;
}

/// A point in a stream.
pub trait Event: Send + Sync + fmt::Debug {
    /// Whether the work before it has finished.
    ///
    /// # Errors
    /// A driver failure.
    fn done(&self) -> Result<bool, TransportError>;

    /// Waits for it.
    ///
    /// # Errors
    /// A driver failure.
    fn synchronize(&self) -> Result<(), TransportError>;

    /// Milliseconds from `start` to this event (both recorded), where the device times events.
    fn elapsed_ms_since(&self, start: &dyn Event) -> Option<f64>;

    /// The implementation's raw handle, for [`Stream::wait`] and timing.
    fn raw(&self) -> u64;
}

/// Device memory owned by one process; freed when dropped.
#[derive(Debug)]
pub struct DeviceBuffer {
    device: Arc<dyn Device>,
    ptr: DevicePtr,
    len: usize,
}

impl DeviceBuffer {
    /// Allocates `len` bytes on `device` (at least one byte is reserved, so empty buffers have
    /// an address too).
    ///
    /// # Errors
    /// Out of memory, or a driver failure.
    pub fn new(device: &Arc<dyn Device>, len: usize) -> Result<Self, TransportError> {
        let ptr = device.alloc(len.max(1))?;
        Ok(Self { device: device.clone(), ptr, len })
    }

    /// Its address.
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device it lives on.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.device
    }

    /// Fills it from host memory (`src.len()` must not exceed its size).
    ///
    /// # Errors
    /// [`TransportError::BufferTooSmall`], or a driver failure.
    pub fn write(&self, src: &[u8]) -> Result<(), TransportError> {
        if src.len() > self.len {
            return Err(TransportError::BufferTooSmall { needed: src.len() as u64, capacity: self.len as u64 });
        }
        self.device.write(self.ptr, src)
    }

    /// Reads its first `dst.len()` bytes.
    ///
    /// # Errors
    /// [`TransportError::BufferTooSmall`], or a driver failure.
    pub fn read(&self, dst: &mut [u8]) -> Result<(), TransportError> {
        if dst.len() > self.len {
            return Err(TransportError::BufferTooSmall { needed: dst.len() as u64, capacity: self.len as u64 });
        }
        self.device.read(self.ptr, dst)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.device.free(self.ptr);
    }
}

/// Which device memory to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// CUDA device 0 of this process (a worker sees only its own device).
    Cuda,
    /// Simulated device memory.
    Simulated,
}

/// Opens the device memory of `kind`.
///
/// # Errors
/// [`TransportError::CudaUnavailable`] when CUDA is asked for but cannot be used.
pub fn open(kind: DeviceKind) -> Result<Arc<dyn Device>, TransportError> {
    match kind {
        DeviceKind::Simulated => Ok(Arc::new(sim::SimDevice::new())),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => Ok(Arc::new(cuda::CudaDevice::open(0)?)),
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => Err(TransportError::CudaUnavailable {
            reason: "this build has no `cuda` feature; rebuild with default features".into(),
        }),
    }
}
