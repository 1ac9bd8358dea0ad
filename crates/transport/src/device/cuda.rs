//! Real device memory through the CUDA driver API (cudarc's raw bindings, `libcuda` loaded at run
//! time). The worker's device is CUDA device 0: the plan gives each worker a
//! `CUDA_VISIBLE_DEVICES` that puts its own device first.
//!
//! Streams take only `CudaEvent`s of their own context (recognised through
//! [`Event::as_any`]); anything else is an error, never a handle reinterpreted.

use std::any::Any;
use std::collections::HashMap;
use std::ffi::{CStr, c_void};
use std::mem::MaybeUninit;
use std::sync::Mutex;

use cudarc::driver::sys::{self, CUresult};

use super::{Device, DevicePtr, Event, IpcHandle, Stream};
use crate::TransportError;

fn check(call: &'static str, r: CUresult) -> Result<(), TransportError> {
    if r == CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let mut name: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: cuGetErrorName writes a pointer to a static string (or leaves it null).
    unsafe { sys::cuGetErrorName(r, &mut name) };
    let text = if name.is_null() {
        format!("{r:?}")
    } else {
        // SAFETY: a NUL-terminated static string from the driver.
        unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
    };
    Err(TransportError::Device { call, reason: text })
}

/// How many CUDA devices this process sees (0 without a usable driver), without making a
/// context: cheap enough to ask in any process, GPU or not.
pub fn device_count() -> usize {
    // SAFETY: only probes whether the library can be loaded.
    if !unsafe { sys::is_culib_present() } {
        return 0;
    }
    let mut count = 0;
    // SAFETY: plain driver calls with an out-pointer to a local.
    let ok = unsafe {
        sys::cuInit(0) == sys::CUresult::CUDA_SUCCESS
            && sys::cuDeviceGetCount(&mut count) == sys::CUresult::CUDA_SUCCESS
    };
    if ok { usize::try_from(count).unwrap_or(0) } else { 0 }
}

/// A CUDA device with its primary context.
#[derive(Debug)]
pub struct CudaDevice {
    ordinal: i32,
    context: usize,
    name: String,
    /// Handles exported so far, by base address, with the allocation's buffer id.
    exported: Mutex<HashMap<DevicePtr, (u64, IpcHandle)>>,
}

impl CudaDevice {
    /// Opens CUDA device `ordinal` (as this process numbers devices).
    ///
    /// # Errors
    /// [`TransportError::CudaUnavailable`] without a usable `libcuda`, or a driver failure.
    pub fn open(ordinal: i32) -> Result<Self, TransportError> {
        // SAFETY: only probes whether the library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            return Err(TransportError::CudaUnavailable { reason: "libcuda.so.1 could not be loaded".into() });
        }
        let unavailable = |e: TransportError| TransportError::CudaUnavailable { reason: e.to_string() };
        // SAFETY: plain driver calls with out-pointers to locals.
        unsafe {
            check("cuInit", sys::cuInit(0)).map_err(unavailable)?;
            let mut device = 0;
            check("cuDeviceGet", sys::cuDeviceGet(&mut device, ordinal)).map_err(unavailable)?;
            let mut context = std::ptr::null_mut();
            check("cuDevicePrimaryCtxRetain", sys::cuDevicePrimaryCtxRetain(&mut context, device))?;
            let mut name = [0 as std::ffi::c_char; 128];
            check("cuDeviceGetName", sys::cuDeviceGetName(name.as_mut_ptr(), 128, device))?;
            let name = CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
            Ok(Self { ordinal, context: context as usize, name, exported: Mutex::new(HashMap::new()) })
        }
    }

    /// Makes this device's context current on the calling thread (protocols run on many).
    fn bind(&self) -> Result<(), TransportError> {
        // SAFETY: the context was retained in `open` and lives as long as `self`.
        check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(self.context as sys::CUcontext) })
    }
}

impl Device for CudaDevice {
    fn describe(&self) -> String {
        format!("CUDA device {} ({})", self.ordinal, self.name)
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr, TransportError> {
        self.bind()?;
        let mut ptr = 0;
        // SAFETY: out-pointer to a local.
        check("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes) })?;
        Ok(ptr)
    }

    unsafe fn free(&self, ptr: DevicePtr) {
        if self.bind().is_ok() {
            if let Ok(mut e) = self.exported.lock() {
                e.remove(&ptr);
            }
            // SAFETY: the caller passes a live pointer from `alloc`; a failure leaves nothing to do.
            unsafe { sys::cuMemFree_v2(ptr) };
        }
    }

    unsafe fn register_host(&self, ptr: *mut u8, len: usize) -> Result<(), TransportError> {
        self.bind()?;
        // SAFETY: the caller keeps the range mapped until `unregister_host`.
        check("cuMemHostRegister", unsafe {
            sys::cuMemHostRegister_v2(ptr.cast(), len, sys::CU_MEMHOSTREGISTER_PORTABLE)
        })
    }

    unsafe fn unregister_host(&self, ptr: *mut u8) {
        if self.bind().is_ok() {
            // SAFETY: the caller passes a range registered by `register_host` that no copy uses.
            unsafe { sys::cuMemHostUnregister(ptr.cast()) };
        }
    }

    fn stream(&self) -> Result<Box<dyn Stream>, TransportError> {
        self.bind()?;
        let mut stream = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        check("cuStreamCreate", unsafe {
            sys::cuStreamCreate(&mut stream, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32)
        })?;
        Ok(Box::new(CudaStream { stream: stream as usize, context: self.context }))
    }

    unsafe fn read(&self, src: DevicePtr, dst: &mut [u8]) -> Result<(), TransportError> {
        self.bind()?;
        // SAFETY: `dst` is valid for its length; the caller guarantees `src..src+dst.len()` is
        // one live allocation.
        check("cuMemcpyDtoH", unsafe { sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), src, dst.len()) })
    }

    unsafe fn write(&self, dst: DevicePtr, src: &[u8]) -> Result<(), TransportError> {
        self.bind()?;
        // SAFETY: as in `read`.
        check("cuMemcpyHtoD", unsafe { sys::cuMemcpyHtoD_v2(dst, src.as_ptr().cast(), src.len()) })?;
        // From pageable memory cuMemcpyHtoD returns once the data is staged, before it reaches
        // the device; a copy out on another stream could then read stale bytes.
        // SAFETY: a plain synchronisation of the current context.
        check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })
    }

    fn ipc_export(&self, ptr: DevicePtr) -> Result<(IpcHandle, u64), TransportError> {
        self.bind()?;
        let (mut base, mut size) = (0, 0);
        // SAFETY: out-pointers to locals.
        check("cuMemGetAddressRange", unsafe { sys::cuMemGetAddressRange_v2(&mut base, &mut size, ptr) })?;
        // The allocation's id tells a cached handle from a stale one: memory of another library
        // (a CuPy or RMM pool) can be freed and another allocation made at the same base.
        let mut id = 0u64;
        // SAFETY: out-pointer to a u64, the type of this attribute.
        check("cuPointerGetAttribute", unsafe {
            sys::cuPointerGetAttribute(
                (&mut id as *mut u64).cast(),
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_BUFFER_ID,
                base,
            )
        })?;
        if let Some((cached, h)) = self.exported.lock().map_err(|_| TransportError::poisoned())?.get(&base)
            && *cached == id
        {
            return Ok((*h, ptr - base));
        }
        let mut h = MaybeUninit::<sys::CUipcMemHandle>::uninit();
        // SAFETY: out-pointer; `base` is the start of one of our allocations.
        check("cuIpcGetMemHandle", unsafe { sys::cuIpcGetMemHandle(h.as_mut_ptr(), base) })?;
        // SAFETY: initialised by the successful call above.
        let h = unsafe { h.assume_init() };
        let handle = IpcHandle(h.reserved.map(|c| c as u8));
        self.exported.lock().map_err(|_| TransportError::poisoned())?.insert(base, (id, handle));
        Ok((handle, ptr - base))
    }

    fn ipc_open(&self, handle: &IpcHandle) -> Result<(DevicePtr, usize), TransportError> {
        self.bind()?;
        let h = sys::CUipcMemHandle { reserved: handle.0.map(|b| b as std::ffi::c_char) };
        let mut ptr = 0;
        // SAFETY: out-pointer to a local; the handle is plain bytes.
        check("cuIpcOpenMemHandle", unsafe {
            sys::cuIpcOpenMemHandle_v2(&mut ptr, h, sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32)
        })?;
        // The size comes from this process's driver, not from the peer.
        let (mut base, mut size) = (0, 0);
        // SAFETY: out-pointers to locals; `ptr` was just mapped.
        let r = check("cuMemGetAddressRange", unsafe { sys::cuMemGetAddressRange_v2(&mut base, &mut size, ptr) });
        if let Err(e) = r {
            // SAFETY: closing the mapping just opened; nothing else has seen it.
            unsafe { sys::cuIpcCloseMemHandle(ptr) };
            return Err(e);
        }
        Ok((ptr, size))
    }

    unsafe fn ipc_close(&self, ptr: DevicePtr) {
        if self.bind().is_ok() {
            // SAFETY: the caller passes an open base from `ipc_open` that no copy uses.
            unsafe { sys::cuIpcCloseMemHandle(ptr) };
        }
    }

    unsafe fn synchronize_foreign(&self, stream: u64) -> Result<(), TransportError> {
        self.bind()?;
        // 0 and 1 are the legacy default stream (CU_STREAM_LEGACY), 2 the per-thread one
        // (CU_STREAM_PER_THREAD): the driver takes these values as they are.
        let handle = if stream == 0 { 1 } else { stream };
        // SAFETY: the caller passes a live stream of this context or one of the special values.
        check("cuStreamSynchronize", unsafe { sys::cuStreamSynchronize(handle as usize as sys::CUstream) })
    }

    fn ipc_event(&self) -> Result<(Box<dyn Event>, IpcHandle), TransportError> {
        self.bind()?;
        let flags =
            sys::CUevent_flags::CU_EVENT_INTERPROCESS as u32 | sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        let event = CudaEvent::create(self.context, flags)?;
        let mut h = MaybeUninit::<sys::CUipcEventHandle>::uninit();
        // SAFETY: out-pointer; the event was created with CU_EVENT_INTERPROCESS.
        check("cuIpcGetEventHandle", unsafe { sys::cuIpcGetEventHandle(h.as_mut_ptr(), event.event as sys::CUevent) })?;
        // SAFETY: initialised by the successful call above.
        let h = unsafe { h.assume_init() };
        Ok((Box::new(event), IpcHandle(h.reserved.map(|c| c as u8))))
    }

    fn ipc_open_event(&self, handle: &IpcHandle) -> Result<Box<dyn Event>, TransportError> {
        self.bind()?;
        let h = sys::CUipcEventHandle { reserved: handle.0.map(|b| b as std::ffi::c_char) };
        let mut event = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        check("cuIpcOpenEventHandle", unsafe { sys::cuIpcOpenEventHandle(&mut event, h) })?;
        Ok(Box::new(CudaEvent { event: event as usize, context: self.context }))
    }
}

/// Raw handles are kept as integers so the types are `Send`; the driver allows using them from
/// any thread with the context current.
#[derive(Debug)]
struct CudaStream {
    stream: usize,
    context: usize,
}

impl CudaStream {
    fn raw(&self) -> Result<sys::CUstream, TransportError> {
        // SAFETY: the context outlives the stream (the device holds it).
        check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(self.context as sys::CUcontext) })?;
        Ok(self.stream as sys::CUstream)
    }

    /// `event` as a CUDA event of this stream's context.
    fn own_event(&self, call: &'static str, event: &dyn Event) -> Result<sys::CUevent, TransportError> {
        match event.as_any().downcast_ref::<CudaEvent>() {
            Some(e) if e.context == self.context => Ok(e.event as sys::CUevent),
            Some(_) => Err(TransportError::Device { call, reason: "the event belongs to another CUDA context".into() }),
            None => Err(TransportError::Device { call, reason: "the event is not a CUDA event".into() }),
        }
    }
}

impl Stream for CudaStream {
    unsafe fn d2h(&self, dst: *mut u8, src: DevicePtr, len: usize) -> Result<(), TransportError> {
        let s = self.raw()?;
        // SAFETY: the caller keeps both ranges valid until the copy completes.
        check("cuMemcpyDtoHAsync", unsafe { sys::cuMemcpyDtoHAsync_v2(dst.cast::<c_void>(), src, len, s) })
    }

    unsafe fn h2d(&self, dst: DevicePtr, src: *const u8, len: usize) -> Result<(), TransportError> {
        let s = self.raw()?;
        // SAFETY: as in `d2h`.
        check("cuMemcpyHtoDAsync", unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.cast::<c_void>(), len, s) })
    }

    unsafe fn d2d(&self, dst: DevicePtr, src: DevicePtr, len: usize) -> Result<(), TransportError> {
        let s = self.raw()?;
        // SAFETY: the caller keeps both device ranges allocated until the copy completes.
        check("cuMemcpyDtoDAsync", unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, len, s) })
    }

    fn record(&self, event: &dyn Event) -> Result<(), TransportError> {
        let s = self.raw()?;
        let e = self.own_event("cuEventRecord", event)?;
        // SAFETY: a live event of this context (checked by type and context), borrowed for the call.
        check("cuEventRecord", unsafe { sys::cuEventRecord(e, s) })
    }

    fn wait(&self, event: &dyn Event) -> Result<(), TransportError> {
        let s = self.raw()?;
        let e = self.own_event("cuStreamWaitEvent", event)?;
        // SAFETY: as in `record`.
        check("cuStreamWaitEvent", unsafe { sys::cuStreamWaitEvent(s, e, 0) })
    }

    fn event(&self) -> Result<Box<dyn Event>, TransportError> {
        self.raw()?;
        Ok(Box::new(CudaEvent::create(self.context, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32)?))
    }

    fn synchronize(&self) -> Result<(), TransportError> {
        let s = self.raw()?;
        // SAFETY: a live stream.
        check("cuStreamSynchronize", unsafe { sys::cuStreamSynchronize(s) })
    }
}

impl Drop for CudaStream {
    fn drop(&mut self) {
        if let Ok(s) = self.raw() {
            // SAFETY: destroying our own stream.
            unsafe { sys::cuStreamDestroy_v2(s) };
        }
    }
}

/// A CUDA event and the context it was created in.
#[derive(Debug)]
struct CudaEvent {
    event: usize,
    context: usize,
}

impl CudaEvent {
    fn create(context: usize, flags: u32) -> Result<Self, TransportError> {
        let mut event = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; the caller made `context` current.
        check("cuEventCreate", unsafe { sys::cuEventCreate(&mut event, flags) })?;
        Ok(Self { event: event as usize, context })
    }
}

impl Event for CudaEvent {
    fn done(&self) -> Result<bool, TransportError> {
        // SAFETY: a live event.
        match unsafe { sys::cuEventQuery(self.event as sys::CUevent) } {
            CUresult::CUDA_SUCCESS => Ok(true),
            CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            other => check("cuEventQuery", other).map(|_| false),
        }
    }

    fn synchronize(&self) -> Result<(), TransportError> {
        // SAFETY: a live event.
        check("cuEventSynchronize", unsafe { sys::cuEventSynchronize(self.event as sys::CUevent) })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        // SAFETY: the context outlives its events; destroying our own event.
        unsafe {
            sys::cuCtxSetCurrent(self.context as sys::CUcontext);
            sys::cuEventDestroy_v2(self.event as sys::CUevent);
        }
    }
}
