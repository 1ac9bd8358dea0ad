//! The NVML enumeration loop, written once against [`NvmlApi`] so that the real library,
//! the simulator and the unit tests' mock all run the same discovery code.
//!
//! The loop follows what go-nvlib, Slurm and dask-cuda do (`shared/reference/mig-facts.md` §0): for every GPU
//! read its MIG mode; if MIG is on, walk slots `0..nvmlDeviceGetMaxMigDeviceCount`, skip the
//! empty ones (`NotFound` / `InvalidArgument`), and read each instance's UUID, memory, SMs and
//! GPU/compute instance ids from the instance's own handle. A parent GPU that answers
//! `NoPermission` for its memory (MIG inside a container) is a fact, not an error.

use crate::products;
use crate::snapshot::{HostTopology, MigInstance, P2pStatus, PcieLevel, PeerLink, PhysicalGpu};
use crate::{NvmlFailure, TopologyError};

/// A device NVML can be asked about: a physical GPU, or one MIG slot of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handle {
    pub(crate) gpu: u32,
    pub(crate) mig_slot: Option<u32>,
}

impl Handle {
    pub(crate) fn gpu(gpu: u32) -> Self {
        Self { gpu, mig_slot: None }
    }

    pub(crate) fn mig(gpu: u32, slot: u32) -> Self {
        Self { gpu, mig_slot: Some(slot) }
    }

    fn describe(self) -> String {
        match self.mig_slot {
            None => format!("GPU {}", self.gpu),
            Some(slot) => format!("GPU {} MIG slot {slot}", self.gpu),
        }
    }
}

/// `nvmlDeviceGetAttributes` of a MIG handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MigAttributes {
    pub(crate) sm_count: u32,
    pub(crate) memory_mib: u64,
    pub(crate) gpu_instance_slices: u32,
    pub(crate) compute_instance_slices: u32,
}

/// MIG mode, current and pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MigMode {
    pub(crate) current: bool,
    pub(crate) pending: bool,
}

pub(crate) type NvmlResult<T> = Result<T, NvmlFailure>;

/// The NVML calls discovery needs, one method per NVML function. Implemented over
/// nvml-wrapper (`nvml` module), by the simulator (`sim` module) and by mocks in tests.
#[cfg_attr(test, mockall::automock)]
pub(crate) trait NvmlApi {
    fn hostname(&self) -> String;
    fn driver_version(&self) -> NvmlResult<String>;
    fn device_count(&self) -> NvmlResult<u32>;
    fn name(&self, device: Handle) -> NvmlResult<String>;
    fn uuid(&self, device: Handle) -> NvmlResult<String>;
    fn memory_total(&self, device: Handle) -> NvmlResult<u64>;
    fn pci_bus_id(&self, gpu: u32) -> NvmlResult<String>;
    fn numa_node(&self, gpu: u32) -> NvmlResult<u32>;
    /// CPUs near the GPU, as a list of CPU numbers.
    fn cpu_affinity(&self, gpu: u32) -> NvmlResult<Vec<u32>>;
    fn mig_mode(&self, gpu: u32) -> NvmlResult<MigMode>;
    fn max_mig_device_count(&self, gpu: u32) -> NvmlResult<u32>;
    /// `nvmlDeviceGetMigDeviceHandleByIndex`: `Ok` when the slot holds a MIG device.
    fn mig_device_exists(&self, gpu: u32, slot: u32) -> NvmlResult<()>;
    fn gpu_instance_id(&self, device: Handle) -> NvmlResult<u32>;
    fn compute_instance_id(&self, device: Handle) -> NvmlResult<u32>;
    fn mig_attributes(&self, device: Handle) -> NvmlResult<MigAttributes>;
    fn p2p_read(&self, from: u32, to: u32) -> NvmlResult<P2pStatus>;
    fn p2p_nvlink(&self, from: u32, to: u32) -> NvmlResult<P2pStatus>;
    /// Active NVLinks of `from` whose remote end is GPU `to`.
    fn direct_nvlinks(&self, from: u32, to: u32) -> NvmlResult<u32>;
    fn common_ancestor(&self, from: u32, to: u32) -> NvmlResult<PcieLevel>;
}

/// Queries that may answer "not supported" (or "no permission") without that being an error:
/// the fact is simply unknown.
fn optional<T>(result: NvmlResult<T>) -> NvmlResult<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(
            NvmlFailure::NotSupported
            | NvmlFailure::NoPermission
            | NvmlFailure::FunctionNotFound
            | NvmlFailure::NotFound,
        ) => Ok(None),
        Err(other) => Err(other),
    }
}

fn failed(call: &'static str, device: Handle) -> impl Fn(NvmlFailure) -> TopologyError {
    move |failure| TopologyError::Nvml { call, device: device.describe(), failure }
}

fn parse_id(text: &str, call: &'static str, device: Handle) -> Result<crate::DeviceId, TopologyError> {
    text.parse().map_err(|_| TopologyError::Nvml {
        call,
        device: format!("{} (returned `{text}`, not a device name)", device.describe()),
        failure: NvmlFailure::Unknown,
    })
}

/// Reads one host's topology through `api`.
pub(crate) fn discover(api: &dyn NvmlApi) -> Result<HostTopology, TopologyError> {
    let driver_version = optional(api.driver_version()).map_err(|f| TopologyError::Nvml {
        call: "nvmlSystemGetDriverVersion",
        device: "the system".into(),
        failure: f,
    })?;
    let count = api.device_count().map_err(|f| TopologyError::Nvml {
        call: "nvmlDeviceGetCount",
        device: "the system".into(),
        failure: f,
    })?;
    let gpus = (0..count).map(|i| discover_gpu(api, i)).collect::<Result<Vec<_>, _>>()?;
    let peers = discover_peers(api, count)?;
    Ok(HostTopology { hostname: api.hostname(), driver_version, gpus, peers })
}

fn discover_gpu(api: &dyn NvmlApi, index: u32) -> Result<PhysicalGpu, TopologyError> {
    let h = Handle::gpu(index);
    let name = api.name(h).map_err(failed("nvmlDeviceGetName", h))?;
    let uuid = api.uuid(h).map_err(failed("nvmlDeviceGetUUID", h))?;
    let uuid = parse_id(&uuid, "nvmlDeviceGetUUID", h)?;
    let memory_bytes = optional(api.memory_total(h)).map_err(failed("nvmlDeviceGetMemoryInfo", h))?;
    let pci_bus_id =
        optional(api.pci_bus_id(index)).map_err(failed("nvmlDeviceGetPciInfo", h))?.map(|b| normalise_bus_id(&b));
    let numa_node = optional(api.numa_node(index)).map_err(failed("nvmlDeviceGetNumaNodeId", h))?;
    let cpu_affinity = optional(api.cpu_affinity(index))
        .map_err(failed("nvmlDeviceGetCpuAffinity", h))?
        .filter(|cpus| !cpus.is_empty())
        .map(|cpus| cpulist(&cpus));
    let mode = optional(api.mig_mode(index)).map_err(failed("nvmlDeviceGetMigMode", h))?;
    let product = products::product(&name);

    let mut gpu = PhysicalGpu {
        index,
        uuid,
        name,
        memory_bytes,
        sm_count: product.map(|p| p.sm_count),
        pci_bus_id,
        numa_node,
        cpu_affinity,
        mig_supported: mode.is_some(),
        mig_enabled: mode.is_some_and(|m| m.current),
        mig_pending: mode.filter(|m| m.pending != m.current).map(|m| m.pending),
        mig_instances: Vec::new(),
    };
    if gpu.mig_enabled {
        let max = api.max_mig_device_count(index).map_err(failed("nvmlDeviceGetMaxMigDeviceCount", h))?;
        for slot in 0..max {
            match api.mig_device_exists(index, slot) {
                Ok(()) => gpu.mig_instances.push(discover_mig(api, index, slot)?),
                // Slots can be empty, and not only at the end: instances are destroyed too.
                Err(NvmlFailure::NotFound | NvmlFailure::InvalidArgument) => {}
                Err(f) => return Err(failed("nvmlDeviceGetMigDeviceHandleByIndex", Handle::mig(index, slot))(f)),
            }
        }
    }
    Ok(gpu)
}

fn discover_mig(api: &dyn NvmlApi, gpu: u32, slot: u32) -> Result<MigInstance, TopologyError> {
    let h = Handle::mig(gpu, slot);
    let uuid = api.uuid(h).map_err(failed("nvmlDeviceGetUUID", h))?;
    let uuid = parse_id(&uuid, "nvmlDeviceGetUUID", h)?;
    let memory_bytes = api.memory_total(h).map_err(failed("nvmlDeviceGetMemoryInfo", h))?;
    let attributes = optional(api.mig_attributes(h)).map_err(failed("nvmlDeviceGetAttributes", h))?;
    let gpu_instance_id = optional(api.gpu_instance_id(h)).map_err(failed("nvmlDeviceGetGpuInstanceId", h))?;
    let compute_instance_id =
        optional(api.compute_instance_id(h)).map_err(failed("nvmlDeviceGetComputeInstanceId", h))?;
    let name = optional(api.name(h)).map_err(failed("nvmlDeviceGetName", h))?;
    let profile = name
        .as_deref()
        .and_then(profile_from_name)
        .or_else(|| attributes.map(profile_from_attributes))
        .unwrap_or_else(|| "unknown".to_owned());
    Ok(MigInstance {
        uuid,
        profile,
        memory_bytes,
        sm_count: attributes.map(|a| a.sm_count),
        gpu_instance_id,
        compute_instance_id,
        slot: Some(slot),
    })
}

fn discover_peers(api: &dyn NvmlApi, count: u32) -> Result<Vec<PeerLink>, TopologyError> {
    let mut peers = Vec::new();
    for from in 0..count {
        for to in (0..count).filter(|&to| to != from) {
            let h = Handle::gpu(from);
            let p2p = optional(api.p2p_read(from, to))
                .map_err(failed("nvmlDeviceGetP2PStatus", h))?
                .unwrap_or(P2pStatus::Unknown);
            let nvlink = optional(api.p2p_nvlink(from, to))
                .map_err(failed("nvmlDeviceGetP2PStatus", h))?
                .is_some_and(P2pStatus::is_ok);
            let nvlink_count =
                optional(api.direct_nvlinks(from, to)).map_err(failed("nvmlDeviceGetNvLinkRemotePciInfo", h))?;
            let pcie =
                optional(api.common_ancestor(from, to)).map_err(failed("nvmlDeviceGetTopologyCommonAncestor", h))?;
            peers.push(PeerLink { from, to, p2p, nvlink, nvlink_count, pcie });
        }
    }
    Ok(peers)
}

/// `NVIDIA A100-SXM4-40GB MIG 1g.5gb` -> `1g.5gb` (the name NVML gives a MIG handle).
fn profile_from_name(name: &str) -> Option<String> {
    let (_, profile) = name.rsplit_once("MIG ")?;
    let profile = profile.trim();
    (!profile.is_empty()).then(|| profile.to_owned())
}

/// Slurm's fallback when the name carries no profile: `[Cc.]Gg.<ceil(MiB/1024)>gb`.
fn profile_from_attributes(a: MigAttributes) -> String {
    let gb = a.memory_mib.div_ceil(1024);
    if a.compute_instance_slices == a.gpu_instance_slices {
        format!("{}g.{gb}gb", a.gpu_instance_slices)
    } else {
        format!("{}c.{}g.{gb}gb", a.compute_instance_slices, a.gpu_instance_slices)
    }
}

/// NVML prints `00000000:18:00.0`; keep that form, lowercase, without trailing NULs.
fn normalise_bus_id(bus_id: &str) -> String {
    bus_id.trim().trim_end_matches('\0').to_ascii_lowercase()
}

/// `[0,1,2,3,8,9]` -> `0-3,8-9`.
pub(crate) fn cpulist(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        ranges.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    ranges.join(",")
}

#[cfg(test)]
#[path = "discover_tests.rs"]
mod tests;
