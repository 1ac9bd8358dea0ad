//! The snapshot: what a machine (or several) is made of, as plain serializable data.
//!
//! Every backend produces a [`Snapshot`]; everything above this crate consumes one.
//! The types hold no handles and no lifetimes, so a snapshot can be printed with
//! `gpucluster list --json`, saved, and loaded back through `file:PATH` unchanged.
//! The JSON shape is a user-facing contract (see `docs/ARCHITECTURE.md`): keys may be added,
//! never renamed.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{DeviceId, TopologyError};

/// One or more hosts, each with its GPUs, MIG instances and peer links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The hosts, in the order their sources were read.
    pub hosts: Vec<HostTopology>,
}

/// What one host reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostTopology {
    /// The host's name, as the machine (or the fixture) gives it.
    pub hostname: String,
    /// NVIDIA driver version, e.g. `580.159.04`; `None` where the source does not say.
    pub driver_version: Option<String>,
    /// Physical GPUs in NVML index order.
    pub gpus: Vec<PhysicalGpu>,
    /// Ordered pairs of physical GPUs and how they reach each other.
    #[serde(default)]
    pub peers: Vec<PeerLink>,
}

/// One physical GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhysicalGpu {
    /// NVML index (the index `CUDA_VISIBLE_DEVICES` takes with `CUDA_DEVICE_ORDER=PCI_BUS_ID`).
    pub index: u32,
    /// `GPU-<uuid>`.
    pub uuid: DeviceId,
    /// Product name as NVML reports it, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total memory; `None` where the parent handle may not be queried (MIG in a container
    /// answers `NoPermission`) or the source does not say.
    pub memory_bytes: Option<u64>,
    /// Streaming multiprocessors of the whole GPU, where known.
    #[serde(default)]
    pub sm_count: Option<u32>,
    /// PCI bus id, `dddddddd:bb:dd.f`.
    #[serde(default)]
    pub pci_bus_id: Option<String>,
    /// NUMA node closest to the GPU.
    #[serde(default)]
    pub numa_node: Option<u32>,
    /// CPUs closest to the GPU, in Linux cpulist form (`0-15,32-47`).
    #[serde(default)]
    pub cpu_affinity: Option<String>,
    /// Whether the GPU supports MIG at all.
    #[serde(default)]
    pub mig_supported: bool,
    /// MIG mode in force now. A MIG-enabled GPU is not itself a compute device.
    pub mig_enabled: bool,
    /// MIG mode that takes effect at the next GPU reset, where it differs from the current one.
    #[serde(default)]
    pub mig_pending: Option<bool>,
    /// MIG instances (compute instances), in NVML slot order.
    pub mig_instances: Vec<MigInstance>,
}

/// One MIG device: a compute instance inside a GPU instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigInstance {
    /// `MIG-<uuid>`, or `MIG-GPU-<uuid>/<gi>/<ci>` on drivers before R470.
    pub uuid: DeviceId,
    /// Profile name, e.g. `1g.10gb` or `1c.3g.40gb`.
    pub profile: String,
    /// Memory of this instance as reported by its own handle (never the parent's).
    pub memory_bytes: u64,
    /// Streaming multiprocessors of this instance, where known.
    pub sm_count: Option<u32>,
    /// GPU instance id, where known.
    pub gpu_instance_id: Option<u32>,
    /// Compute instance id, where known.
    pub compute_instance_id: Option<u32>,
    /// Slot for `nvmlDeviceGetMigDeviceHandleByIndex` (`Device N` in `nvidia-smi -L`).
    #[serde(default)]
    pub slot: Option<u32>,
}

/// How GPU `from` reaches GPU `to` (one entry per ordered pair).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLink {
    /// Index of the first GPU.
    pub from: u32,
    /// Index of the second GPU.
    pub to: u32,
    /// Whether CUDA peer-to-peer reads work from `from` to `to`, as NVML reports it.
    pub p2p: P2pStatus,
    /// Whether the pair talks over NVLink (directly or through NVSwitch).
    pub nvlink: bool,
    /// Number of direct NVLinks between the pair, where known (0 through NVSwitch).
    #[serde(default)]
    pub nvlink_count: Option<u32>,
    /// The closest common point of the PCIe tree, as `nvidia-smi topo -m` names it.
    #[serde(default)]
    pub pcie: Option<PcieLevel>,
}

/// NVML's peer-to-peer status for a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum P2pStatus {
    /// Peer access works.
    Ok,
    /// The chipset does not support it.
    ChipsetNotSupported,
    /// The GPU does not support it.
    GpuNotSupported,
    /// The PCIe topology (I/O hub) does not support it.
    TopologyNotSupported,
    /// Disabled by a registry key.
    DisabledByRegkey,
    /// Not supported for another reason.
    NotSupported,
    /// NVML could not tell.
    Unknown,
}

impl P2pStatus {
    /// Whether peer access works.
    pub fn is_ok(self) -> bool {
        self == P2pStatus::Ok
    }
}

/// Closest common ancestor of two GPUs in the PCIe tree (`nvidia-smi topo -m` legend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PcieLevel {
    /// On one board (e.g. Tesla K80).
    Internal,
    /// `PIX`: at most one PCIe bridge.
    Single,
    /// `PXB`: several PCIe bridges, no host bridge.
    Multiple,
    /// `PHB`: a PCIe host bridge.
    HostBridge,
    /// `NODE`: host bridges within one NUMA node.
    Node,
    /// `SYS`: across NUMA nodes (SMP interconnect).
    System,
}

impl PcieLevel {
    /// The code `nvidia-smi topo -m` prints.
    pub fn smi_code(self) -> &'static str {
        match self {
            PcieLevel::Internal => "INT",
            PcieLevel::Single => "PIX",
            PcieLevel::Multiple => "PXB",
            PcieLevel::HostBridge => "PHB",
            PcieLevel::Node => "NODE",
            PcieLevel::System => "SYS",
        }
    }
}

impl PhysicalGpu {
    /// Whether this GPU is itself a compute device (MIG disabled). A MIG-enabled GPU is not:
    /// its instances are.
    pub fn is_compute_device(&self) -> bool {
        !self.mig_enabled
    }
}

impl HostTopology {
    /// The link from GPU `from` to GPU `to`, if the source reported one.
    pub fn peer(&self, from: u32, to: u32) -> Option<&PeerLink> {
        self.peers.iter().find(|p| p.from == from && p.to == to)
    }

    /// Checks what a loaded snapshot must satisfy for the layers above to trust it: GPU names
    /// are `GPU-` names, MIG names are MIG names, no name or index appears twice, instances
    /// only on MIG-enabled GPUs, and peer links only between GPUs that exist.
    ///
    /// # Errors
    /// [`TopologyError::InvalidSnapshot`] naming the first offending GPU or instance.
    pub fn validate(&self) -> Result<(), TopologyError> {
        let bad = |reason: String| TopologyError::InvalidSnapshot { host: self.hostname.clone(), reason };
        let mut names = HashSet::new();
        let mut indices = HashSet::new();
        for gpu in &self.gpus {
            if gpu.uuid.is_mig() {
                return Err(bad(format!(
                    "GPU {} is named `{}`, a MIG name; a physical GPU is named GPU-<uuid>",
                    gpu.index, gpu.uuid
                )));
            }
            if !indices.insert(gpu.index) {
                return Err(bad(format!("GPU index {} appears twice", gpu.index)));
            }
            if !names.insert(gpu.uuid.clone()) {
                return Err(bad(format!("`{}` appears twice", gpu.uuid)));
            }
            if !gpu.mig_enabled && !gpu.mig_instances.is_empty() {
                return Err(bad(format!(
                    "GPU {} has MIG instances but `mig_enabled` is false; set it to true",
                    gpu.index
                )));
            }
            for mig in &gpu.mig_instances {
                if !mig.uuid.is_mig() {
                    return Err(bad(format!(
                        "MIG instance `{}` of GPU {} must be named MIG-<uuid> or MIG-GPU-<uuid>/<gi>/<ci>",
                        mig.uuid, gpu.index
                    )));
                }
                if !names.insert(mig.uuid.clone()) {
                    return Err(bad(format!("`{}` appears twice", mig.uuid)));
                }
            }
        }
        for link in &self.peers {
            for end in [link.from, link.to] {
                if !indices.contains(&end) {
                    return Err(bad(format!("a peer link names GPU {end}, which is not among this host's GPUs")));
                }
            }
        }
        Ok(())
    }
}

impl Snapshot {
    /// Validates every host, and that host names are unique.
    ///
    /// # Errors
    /// [`TopologyError::InvalidSnapshot`] for the first problem found.
    pub fn validate(&self) -> Result<(), TopologyError> {
        let mut hostnames = HashSet::new();
        for host in &self.hosts {
            host.validate()?;
            if !hostnames.insert(host.hostname.as_str()) {
                return Err(TopologyError::InvalidSnapshot {
                    host: host.hostname.clone(),
                    reason: "two hosts have this name; each host needs its own".to_owned(),
                });
            }
        }
        Ok(())
    }
}
