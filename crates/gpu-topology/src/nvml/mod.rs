//! The NVML backend: the real machine, through `libnvidia-ml.so.1` loaded at run time.
//!
//! This module is the only place that touches nvml-wrapper. It answers the calls of
//! `discover::NvmlApi` and maps NVML's error codes to [`NvmlFailure`] in one explicit match
//! (`from_nvml`), so no NVML type leaves the module. Two calls nvml-wrapper 0.13 does not
//! wrap (GPU and compute instance ids) go through its raw function table.

use std::ffi::OsStr;
use std::os::raw::c_uint;
use std::path::PathBuf;

use async_trait::async_trait;
use nvml_wrapper::enum_wrappers::device::{P2pCapabilitiesIndex, P2pStatus as NvP2p, TopologyLevel};
use nvml_wrapper::error::{NvmlError, nvml_sym, nvml_try};
use nvml_wrapper::{Device, Nvml};

use crate::discover::{self, Handle, MigAttributes, MigMode, NvmlApi, NvmlResult};
use crate::snapshot::{P2pStatus, PcieLevel, Snapshot};
use crate::{NvmlFailure, TopologyError, TopologySource};

/// Where the driver's library usually lives when the loader path does not find it.
const FALLBACK_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/nvidia/lib64",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/wsl/lib",
];

const LIBRARY: &str = "libnvidia-ml.so.1";

/// The real machine, read through NVML.
#[derive(Debug, Clone, Default)]
pub struct NvmlSource {
    library: Option<PathBuf>,
}

impl NvmlSource {
    /// Loads `libnvidia-ml.so.1` from the loader path (then well-known driver folders).
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads the library from `path` instead.
    pub fn with_library(path: impl Into<PathBuf>) -> Self {
        Self { library: Some(path.into()) }
    }

    fn init(&self) -> Result<Nvml, TopologyError> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        candidates.extend(self.library.clone());
        candidates.push(PathBuf::from(LIBRARY));
        candidates.extend(FALLBACK_DIRS.iter().map(|d| PathBuf::from(d).join(LIBRARY)).filter(|p| p.exists()));
        let mut reasons = Vec::new();
        for candidate in &candidates {
            match Nvml::builder().lib_path(OsStr::new(candidate)).init() {
                Ok(nvml) => return Ok(nvml),
                Err(NvmlError::DriverNotLoaded) => {
                    return Err(TopologyError::BackendUnavailable {
                        library: candidate.display().to_string(),
                        reason: "the library loaded but the NVIDIA kernel driver is not running".into(),
                    });
                }
                Err(NvmlError::LibloadingError(e)) => reasons.push(e.to_string()),
                Err(e) => reasons.push(format!("{}: {e}", candidate.display())),
            }
            if self.library.is_some() {
                break;
            }
        }
        Err(TopologyError::BackendUnavailable {
            library: self.library.as_ref().map_or(LIBRARY.to_owned(), |p| p.display().to_string()),
            reason: reasons.join("; "),
        })
    }
}

#[async_trait]
impl TopologySource for NvmlSource {
    fn describe(&self) -> String {
        "nvml".to_owned()
    }

    async fn snapshot(&self) -> Result<Snapshot, TopologyError> {
        let nvml = self.init()?;
        let host = discover::discover(&RealNvml { nvml: &nvml })?;
        // Shutting down is best effort: the snapshot is already complete.
        let _ = nvml.shutdown();
        Ok(Snapshot { hosts: vec![host] })
    }
}

/// Maps NVML's error to the codes discovery distinguishes.
fn from_nvml(e: NvmlError) -> NvmlFailure {
    match e {
        NvmlError::NotSupported => NvmlFailure::NotSupported,
        NvmlError::NoPermission => NvmlFailure::NoPermission,
        NvmlError::NotFound => NvmlFailure::NotFound,
        NvmlError::InvalidArg => NvmlFailure::InvalidArgument,
        NvmlError::GpuLost => NvmlFailure::GpuLost,
        NvmlError::Uninitialized => NvmlFailure::Uninitialized,
        NvmlError::FunctionNotFound | NvmlError::FailedToLoadSymbol(_) => NvmlFailure::FunctionNotFound,
        _ => NvmlFailure::Unknown,
    }
}

fn from_p2p(s: NvP2p) -> P2pStatus {
    match s {
        NvP2p::Ok => P2pStatus::Ok,
        NvP2p::ChipsetNotSupported => P2pStatus::ChipsetNotSupported,
        NvP2p::GpuNotSupported => P2pStatus::GpuNotSupported,
        NvP2p::IohTopologyNotSupported => P2pStatus::TopologyNotSupported,
        NvP2p::DisabledByRegkey => P2pStatus::DisabledByRegkey,
        NvP2p::NotSupported => P2pStatus::NotSupported,
        NvP2p::Unknown => P2pStatus::Unknown,
    }
}

/// Handles are fetched per call: NVML handles are cheap to look up, and holding none keeps
/// the trait free of lifetimes.
struct RealNvml<'n> {
    nvml: &'n Nvml,
}

impl<'n> RealNvml<'n> {
    fn gpu(&self, index: u32) -> NvmlResult<Device<'n>> {
        self.nvml.device_by_index(index).map_err(from_nvml)
    }

    fn device(&self, h: Handle) -> NvmlResult<Device<'n>> {
        let gpu = self.gpu(h.gpu)?;
        match h.mig_slot {
            None => Ok(gpu),
            Some(slot) => gpu.mig_device_by_index(slot).map_err(from_nvml),
        }
    }

    /// `nvmlDeviceGetGpuInstanceId` / `nvmlDeviceGetComputeInstanceId`, which nvml-wrapper
    /// 0.13 does not wrap.
    fn instance_id(&self, h: Handle, gpu_instance: bool) -> NvmlResult<u32> {
        let device = self.device(h)?;
        let lib = self.nvml.lib();
        let symbol = if gpu_instance {
            nvml_sym(lib.nvmlDeviceGetGpuInstanceId.as_ref())
        } else {
            nvml_sym(lib.nvmlDeviceGetComputeInstanceId.as_ref())
        }
        .map_err(from_nvml)?;
        let mut id: c_uint = 0;
        // SAFETY: `device.handle()` is a live handle from this NVML session and `id` is a
        // valid out-pointer for the duration of the call.
        unsafe { nvml_try(symbol(device.handle(), &mut id)) }.map_err(from_nvml)?;
        Ok(id)
    }
}

impl NvmlApi for RealNvml<'_> {
    fn hostname(&self) -> String {
        gethostname::gethostname().to_string_lossy().into_owned()
    }

    fn driver_version(&self) -> NvmlResult<String> {
        self.nvml.sys_driver_version().map_err(from_nvml)
    }

    fn device_count(&self) -> NvmlResult<u32> {
        self.nvml.device_count().map_err(from_nvml)
    }

    fn name(&self, h: Handle) -> NvmlResult<String> {
        self.device(h)?.name().map_err(from_nvml)
    }

    fn uuid(&self, h: Handle) -> NvmlResult<String> {
        self.device(h)?.uuid().map_err(from_nvml)
    }

    fn memory_total(&self, h: Handle) -> NvmlResult<u64> {
        self.device(h)?.memory_info().map(|m| m.total).map_err(from_nvml)
    }

    fn pci_bus_id(&self, gpu: u32) -> NvmlResult<String> {
        self.gpu(gpu)?.pci_info().map(|p| p.bus_id).map_err(from_nvml)
    }

    fn numa_node(&self, gpu: u32) -> NvmlResult<u32> {
        self.gpu(gpu)?.numa_node_id().map_err(from_nvml)
    }

    fn cpu_affinity(&self, gpu: u32) -> NvmlResult<Vec<u32>> {
        let cpus = std::thread::available_parallelism().map_or(1024, |n| n.get()).max(1024);
        let words = cpus.div_ceil(64);
        let mask = self.gpu(gpu)?.cpu_affinity(words).map_err(from_nvml)?;
        let bits = u64::BITS;
        Ok(mask
            .iter()
            .enumerate()
            .flat_map(|(w, &word)| {
                #[allow(clippy::useless_conversion, reason = "c_ulong is 32 bits on some platforms")]
                let word = u64::from(word);
                (0..bits).filter(move |b| word >> b & 1 == 1).map(move |b| w as u32 * bits + b)
            })
            .collect())
    }

    fn mig_mode(&self, gpu: u32) -> NvmlResult<MigMode> {
        let mode = self.gpu(gpu)?.mig_mode().map_err(from_nvml)?;
        let enabled = nvml_wrapper_sys::bindings::NVML_DEVICE_MIG_ENABLE;
        Ok(MigMode { current: mode.current == enabled, pending: mode.pending == enabled })
    }

    fn max_mig_device_count(&self, gpu: u32) -> NvmlResult<u32> {
        // nvml-wrapper names nvmlDeviceGetMaxMigDeviceCount `mig_device_count`: it is a maximum.
        self.gpu(gpu)?.mig_device_count().map_err(from_nvml)
    }

    fn mig_device_exists(&self, gpu: u32, slot: u32) -> NvmlResult<()> {
        self.device(Handle::mig(gpu, slot)).map(|_| ())
    }

    fn gpu_instance_id(&self, h: Handle) -> NvmlResult<u32> {
        self.instance_id(h, true)
    }

    fn compute_instance_id(&self, h: Handle) -> NvmlResult<u32> {
        self.instance_id(h, false)
    }

    fn mig_attributes(&self, h: Handle) -> NvmlResult<MigAttributes> {
        let a = self.device(h)?.attributes().map_err(from_nvml)?;
        Ok(MigAttributes {
            sm_count: a.multiprocessor_count,
            memory_mib: a.memory_size_mb,
            gpu_instance_slices: a.gpu_instance_slice_count,
            compute_instance_slices: a.compute_instance_slice_count,
        })
    }

    fn p2p_read(&self, from: u32, to: u32) -> NvmlResult<P2pStatus> {
        let (a, b) = (self.gpu(from)?, self.gpu(to)?);
        a.p2p_status(&b, P2pCapabilitiesIndex::Read).map(from_p2p).map_err(from_nvml)
    }

    fn p2p_nvlink(&self, from: u32, to: u32) -> NvmlResult<P2pStatus> {
        let (a, b) = (self.gpu(from)?, self.gpu(to)?);
        a.p2p_status(&b, P2pCapabilitiesIndex::NvLink).map(from_p2p).map_err(from_nvml)
    }

    fn direct_nvlinks(&self, from: u32, to: u32) -> NvmlResult<u32> {
        let a = self.gpu(from)?;
        let target = self.gpu(to)?.pci_info().map_err(from_nvml)?.bus_id.to_ascii_lowercase();
        let mut count = 0;
        for link in 0..nvml_wrapper_sys::bindings::NVML_NVLINK_MAX_LINKS {
            let wrapper = a.link_wrapper_for(link);
            match wrapper.is_active() {
                Ok(true) => {}
                Ok(false) => continue,
                // Past the GPU's last link, or a GPU without NVLink.
                Err(NvmlError::InvalidArg | NvmlError::NotSupported) if link > 0 => break,
                Err(e) => return Err(from_nvml(e)),
            }
            let remote = wrapper.remote_pci_info().map_err(from_nvml)?;
            if remote.bus_id.to_ascii_lowercase() == target {
                count += 1;
            }
        }
        Ok(count)
    }

    fn common_ancestor(&self, from: u32, to: u32) -> NvmlResult<PcieLevel> {
        let (a, b) = (self.gpu(from)?, self.gpu(to)?);
        let level = self.nvml.topology_common_ancestor(&a, &b).map_err(from_nvml)?;
        Ok(match level {
            TopologyLevel::Internal => PcieLevel::Internal,
            TopologyLevel::Single => PcieLevel::Single,
            TopologyLevel::Multiple => PcieLevel::Multiple,
            TopologyLevel::HostBridge => PcieLevel::HostBridge,
            TopologyLevel::Node => PcieLevel::Node,
            TopologyLevel::System => PcieLevel::System,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_clear_error() {
        let source = NvmlSource::with_library("/nonexistent/libnvidia-ml.so.1");
        let err = source.init().expect_err("no such library");
        let text = err.to_string();
        assert!(text.contains("/nonexistent/libnvidia-ml.so.1"), "{text}");
        assert!(text.contains("is the NVIDIA driver installed?"), "{text}");
        // What to pass instead is the front end's to say, in its own words.
        assert!(!text.contains("--") && !text.contains("sim:"), "{text}");
    }

    #[test]
    fn error_codes_map_explicitly() {
        assert_eq!(from_nvml(NvmlError::NoPermission), NvmlFailure::NoPermission);
        assert_eq!(from_nvml(NvmlError::NotFound), NvmlFailure::NotFound);
        assert_eq!(from_nvml(NvmlError::Timeout), NvmlFailure::Unknown);
    }
}
