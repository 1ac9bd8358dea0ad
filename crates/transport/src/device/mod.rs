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
//!
//! **Soundness:** device addresses are plain numbers ([`DevicePtr`]), so every trait method that
//! dereferences, frees or unmaps one is `unsafe`, with its contract in a `# Safety` section.
//! Safe code moves bytes through [`DeviceBuffer`], which owns its allocation and checks lengths.
//! The simulated device also checks every address against its own allocations (it knows them,
//! and the check is cheap), so a broken contract there is an error rather than a stray write.
//! Events are linked to streams by type ([`Event::as_any`]), never through untyped handles.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod sim;

use std::any::Any;
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
    ///
    /// # Safety
    /// `ptr` must have come from [`Device::alloc`] on this device, must not have been freed, and
    /// nothing (no queued copy either) may use the allocation afterwards.
    unsafe fn free(&self, ptr: DevicePtr);

    /// Pins host memory the caller mapped (a shared ring), so copies to and from it use DMA.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay mapped until [`Device::unregister_host`].
    ///
    /// # Errors
    /// A driver failure.
    unsafe fn register_host(&self, ptr: *mut u8, len: usize) -> Result<(), TransportError>;

    /// Undoes [`Device::register_host`].
    ///
    /// # Safety
    /// `ptr` must have been registered with [`Device::register_host`] and not unregistered since,
    /// and no queued copy may still use the range.
    unsafe fn unregister_host(&self, ptr: *mut u8);

    /// A new stream: copies on it run in order.
    ///
    /// # Errors
    /// A driver failure.
    fn stream(&self) -> Result<Box<dyn Stream>, TransportError>;

    /// Copies device memory to the host and waits (for tests and checks, not the data path).
    /// Safe code calls [`DeviceBuffer::read`].
    ///
    /// # Safety
    /// `src..src+dst.len()` must lie in one live allocation of this device (from
    /// [`Device::alloc`] or [`Device::ipc_open`]) for the whole call.
    ///
    /// # Errors
    /// A driver failure.
    unsafe fn read(&self, src: DevicePtr, dst: &mut [u8]) -> Result<(), TransportError>;

    /// Copies host memory to the device and waits. Safe code calls [`DeviceBuffer::write`].
    ///
    /// # Safety
    /// `dst..dst+src.len()` must lie in one live allocation of this device, and nothing else may
    /// access that range during the call.
    ///
    /// # Errors
    /// A driver failure.
    unsafe fn write(&self, dst: DevicePtr, src: &[u8]) -> Result<(), TransportError>;

    /// Exports the allocation holding `ptr`: its handle, and `ptr`'s offset into it.
    ///
    /// # Errors
    /// The memory cannot be exported (pool memory), or a driver failure.
    fn ipc_export(&self, ptr: DevicePtr) -> Result<(IpcHandle, u64), TransportError>;

    /// Opens a peer's exported allocation: its base address here and its size in bytes, as this
    /// device sees it (never as the peer claims it), so that callers can check offsets.
    ///
    /// # Errors
    /// The handle cannot be opened here, as across MIG instances.
    fn ipc_open(&self, handle: &IpcHandle) -> Result<(DevicePtr, usize), TransportError>;

    /// Closes what [`Device::ipc_open`] opened.
    ///
    /// # Safety
    /// `ptr` must be a base address returned by [`Device::ipc_open`] on this device, not closed
    /// since, and no queued copy may still use it.
    unsafe fn ipc_close(&self, ptr: DevicePtr);

    /// Waits for the work queued on `stream`, a stream of this device that another library
    /// made (CuPy's, numba's, as `__cuda_array_interface__` names it), so that memory it was
    /// writing is complete before a transfer reads it. `0` and `1` mean the legacy default
    /// stream, `2` the per-thread default stream. The simulated device has nothing to wait for.
    ///
    /// # Safety
    /// `stream` must be 0, 1, 2 or a live stream of this device's context.
    ///
    /// # Errors
    /// A driver failure, including one from the work waited for.
    unsafe fn synchronize_foreign(&self, stream: u64) -> Result<(), TransportError>;

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
    /// `src..src+len` must lie in one live allocation of this stream's device, and
    /// `dst..dst+len` must be valid host memory (pinned for full speed), both until the copy
    /// completes.
    ///
    /// # Errors
    /// A driver failure.
    unsafe fn d2h(&self, dst: *mut u8, src: DevicePtr, len: usize) -> Result<(), TransportError>;

    /// Queues a host-to-device copy.
    ///
    /// # Safety
    /// `dst..dst+len` must lie in one live allocation of this stream's device, and `src..src+len`
    /// must be valid host memory, both until the copy completes.
    ///
    /// # Errors
    /// A driver failure.
    unsafe fn h2d(&self, dst: DevicePtr, src: *const u8, len: usize) -> Result<(), TransportError>;

    /// Queues a device-to-device copy. Safe code calls [`DeviceBuffer::copy_to`].
    ///
    /// # Safety
    /// `src..src+len` and `dst..dst+len` must each lie in one live allocation of this stream's
    /// device (its own, or a peer's opened with [`Device::ipc_open`]) until the copy completes.
    ///
    /// # Errors
    /// A driver failure.
    unsafe fn d2d(&self, dst: DevicePtr, src: DevicePtr, len: usize) -> Result<(), TransportError>;

    /// Records `event` at this point of the stream.
    ///
    /// # Errors
    /// A driver failure, or an event of another kind of device or of another context.
    fn record(&self, event: &dyn Event) -> Result<(), TransportError>;

    /// Makes later work on this stream wait for `event`.
    ///
    /// # Errors
    /// As [`Stream::record`].
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
pub trait Event: Send + Sync + fmt::Debug + Any {
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

    /// The event as [`Any`], so that a stream can recognise its own kind of event (a CUDA stream
    /// takes only CUDA events of its context).
    fn as_any(&self) -> &dyn Any;
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

    /// Fills it from host memory (`src.len()` must not exceed its size).
    ///
    /// # Errors
    /// [`TransportError::BufferTooSmall`], or a driver failure.
    pub fn write(&self, src: &[u8]) -> Result<(), TransportError> {
        if src.len() > self.len {
            return Err(TransportError::BufferTooSmall { needed: src.len() as u64, capacity: self.len as u64 });
        }
        // SAFETY: the buffer owns `ptr..ptr+len` until it is dropped, and `src` fits (checked).
        unsafe { self.device.write(self.ptr, src) }
    }

    /// Reads its first `dst.len()` bytes.
    ///
    /// # Errors
    /// [`TransportError::BufferTooSmall`], or a driver failure.
    pub fn read(&self, dst: &mut [u8]) -> Result<(), TransportError> {
        if dst.len() > self.len {
            return Err(TransportError::BufferTooSmall { needed: dst.len() as u64, capacity: self.len as u64 });
        }
        // SAFETY: the buffer owns `ptr..ptr+len` until it is dropped, and `dst` fits (checked).
        unsafe { self.device.read(self.ptr, dst) }
    }

    /// Copies its first `len` bytes to the start of `dst` on `stream` (a stream of the device
    /// both live on) and waits for the copy, so the borrows cover it.
    ///
    /// # Errors
    /// [`TransportError::BufferTooSmall`] if either buffer is shorter than `len`, or a driver
    /// failure (including a stream of another device).
    pub fn copy_to(&self, dst: &DeviceBuffer, len: usize, stream: &dyn Stream) -> Result<(), TransportError> {
        let capacity = self.len.min(dst.len);
        if len > capacity {
            return Err(TransportError::BufferTooSmall { needed: len as u64, capacity: capacity as u64 });
        }
        // SAFETY: both buffers own at least `len` bytes (checked) and stay borrowed until the
        // stream has finished the copy (synchronised below, also when queueing failed).
        let queued = unsafe { stream.d2d(dst.ptr, self.ptr, len) };
        let finished = stream.synchronize();
        queued.and(finished)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by this device in `new`, freed once, here; copies that used it were
        // waited for by whoever queued them (the protocols wait before returning).
        unsafe { self.device.free(self.ptr) };
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

/// The device a worker process moves data on, as launchers name it to the worker in
/// [`WorkerDevice::ENV`]: `cuda`, `sim` (simulated memory of a whole GPU) or `sim-mig`
/// (simulated memory of a MIG instance, whose IPC handles peers cannot open). The one
/// definition of these names: `gpucluster up`, `dask local`, `bench` and the Python comm use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerDevice {
    /// CUDA device 0 of the process.
    Cuda,
    /// Simulated memory of a whole GPU.
    Sim,
    /// Simulated memory of a MIG instance.
    SimMig,
}

impl WorkerDevice {
    /// The variable that carries the name to a worker.
    pub const ENV: &'static str = "GPUCLUSTER_DEVICE";

    /// Every kind, as named.
    pub const ALL: [WorkerDevice; 3] = [WorkerDevice::Cuda, WorkerDevice::Sim, WorkerDevice::SimMig];

    /// The device of `memory`, for a MIG instance (`mig`) or a whole GPU.
    pub fn of(memory: DeviceKind, mig: bool) -> Self {
        match (memory, mig) {
            (DeviceKind::Cuda, _) => WorkerDevice::Cuda,
            (DeviceKind::Simulated, true) => WorkerDevice::SimMig,
            (DeviceKind::Simulated, false) => WorkerDevice::Sim,
        }
    }

    /// Its name: `cuda`, `sim`, `sim-mig`.
    pub fn name(self) -> &'static str {
        match self {
            WorkerDevice::Cuda => "cuda",
            WorkerDevice::Sim => "sim",
            WorkerDevice::SimMig => "sim-mig",
        }
    }

    /// Opens it.
    ///
    /// # Errors
    /// As [`open`].
    pub fn open(self) -> Result<Arc<dyn Device>, TransportError> {
        match self {
            WorkerDevice::Cuda => open(DeviceKind::Cuda),
            WorkerDevice::Sim => open(DeviceKind::Simulated),
            WorkerDevice::SimMig => Ok(Arc::new(sim::SimDevice::mig())),
        }
    }
}

impl std::str::FromStr for WorkerDevice {
    type Err = TransportError;

    /// The inverse of [`WorkerDevice::name`].
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        WorkerDevice::ALL.into_iter().find(|d| d.name() == name).ok_or_else(|| {
            TransportError::InvalidArgument(format!(
                "unknown device `{}`: expected cuda, sim or sim-mig",
                name.escape_debug()
            ))
        })
    }
}

/// How many CUDA devices this process sees, without making a context (0 without a driver, or
/// in a build without the `cuda` feature).
pub fn cuda_device_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        cuda::device_count()
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_device_names_read_back_and_follow_memory_and_mig() {
        for d in WorkerDevice::ALL {
            assert_eq!(d.name().parse::<WorkerDevice>().expect("a name"), d);
        }
        assert!("gpu".parse::<WorkerDevice>().expect_err("not a device").to_string().contains("cuda, sim or sim-mig"));
        assert_eq!(WorkerDevice::of(DeviceKind::Cuda, true), WorkerDevice::Cuda);
        assert_eq!(WorkerDevice::of(DeviceKind::Simulated, true), WorkerDevice::SimMig);
        assert_eq!(WorkerDevice::of(DeviceKind::Simulated, false), WorkerDevice::Sim);
        // A simulated MIG instance refuses IPC, as CUDA does across MIG instances.
        let mig = WorkerDevice::SimMig.open().expect("open");
        let other = WorkerDevice::Sim.open().expect("open");
        let buf = DeviceBuffer::new(&other, 64).expect("buffer");
        let (handle, _) = other.ipc_export(buf.ptr()).expect("export");
        assert!(mig.ipc_open(&handle).is_err());
    }
}
