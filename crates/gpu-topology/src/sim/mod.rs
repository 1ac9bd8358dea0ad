//! The simulated backend: a fake NVML built from a fixture, run through the real discovery loop.
//!
//! A simulated machine answers the same NVML calls the real library does (`discover::NvmlApi`),
//! including its awkward answers: empty MIG slots, legacy names on old drivers, parent handles
//! that refuse memory queries, lost GPUs. So `sim:` exercises the very code path `nvml` takes.
//! Machines come from built-in presets (`presets/*.toml`, compiled in) or from a fixture file in
//! the same TOML format (`file:PATH`).

mod fixture;

use std::path::Path;

use async_trait::async_trait;

pub use fixture::Faults;
use fixture::Machine;

use crate::discover::{self, Handle, MigAttributes, MigMode, NvmlApi, NvmlResult};
use crate::snapshot::{P2pStatus, PcieLevel, Snapshot};
use crate::{NvmlFailure, TopologyError, TopologySource};

/// A built-in simulated machine.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// The name after `sim:`.
    pub name: &'static str,
    /// Its fixture text.
    pub fixture: &'static str,
}

macro_rules! presets {
    ($($name:literal),* $(,)?) => {
        &[$(Preset { name: $name, fixture: include_str!(concat!("presets/", $name, ".toml")) }),*]
    };
}

/// Every preset, in the order `gpucluster list --presets` shows them.
pub static PRESETS: &[Preset] = presets![
    "a100",
    "dgx-a100",
    "a100-80gb-mixed",
    "a100-80gb-2x7",
    "rapids-a100-pcie",
    "h100",
    "hgx-h100",
    "h100-mixed",
    "h100-mig-empty",
    "h200",
    "a30",
    "legacy-r460",
];

impl Preset {
    /// Finds a preset by name.
    ///
    /// # Errors
    /// [`TopologyError::UnknownPreset`] listing the valid names.
    pub fn named(name: &str) -> Result<&'static Preset, TopologyError> {
        PRESETS.iter().find(|p| p.name == name).ok_or_else(|| TopologyError::UnknownPreset {
            name: name.to_owned(),
            available: PRESETS.iter().map(|p| p.name.to_owned()).collect(),
        })
    }

    /// The one-line description from the fixture.
    pub fn description(&self) -> String {
        fixture::parse(self.fixture, Path::new(self.name)).ok().and_then(|m| m.description).unwrap_or_default()
    }
}

/// A topology source backed by a simulated machine.
#[derive(Debug, Clone)]
pub struct SimSource {
    label: String,
    machine: Machine,
}

impl SimSource {
    /// The preset `name`.
    ///
    /// # Errors
    /// [`TopologyError::UnknownPreset`], or [`TopologyError::Fixture`] if a preset is broken
    /// (a test keeps that from shipping).
    pub fn preset(name: &str) -> Result<Self, TopologyError> {
        let preset = Preset::named(name)?;
        Ok(Self { label: format!("sim:{name}"), machine: fixture::parse(preset.fixture, Path::new(preset.name))? })
    }

    /// A machine described by fixture text; `path` names it in errors.
    ///
    /// # Errors
    /// [`TopologyError::Fixture`] with the line and column of the problem.
    pub fn from_fixture(text: &str, path: &Path) -> Result<Self, TopologyError> {
        Ok(Self { label: format!("file:{}", path.display()), machine: fixture::parse(text, path)? })
    }
}

#[async_trait]
impl TopologySource for SimSource {
    fn describe(&self) -> String {
        self.label.clone()
    }

    async fn snapshot(&self) -> Result<Snapshot, TopologyError> {
        if self.machine.faults.nvml_missing {
            return Err(TopologyError::BackendUnavailable {
                library: "libnvidia-ml.so.1".into(),
                reason: "simulated fault: the library is missing".into(),
            });
        }
        let host = discover::discover(&SimNvml(&self.machine))?;
        // The fixture was checked line by line; this is the same check every loaded snapshot gets.
        host.validate()?;
        Ok(Snapshot { hosts: vec![host] })
    }
}

/// The fake NVML: answers each call from the resolved machine.
struct SimNvml<'a>(&'a Machine);

impl SimNvml<'_> {
    fn gpu(&self, index: u32) -> NvmlResult<&fixture::SimGpu> {
        let gpu = self.0.gpus.get(index as usize).ok_or(NvmlFailure::InvalidArgument)?;
        if self.0.lost[index as usize] {
            return Err(NvmlFailure::GpuLost);
        }
        Ok(gpu)
    }

    fn instance(&self, h: Handle) -> NvmlResult<&fixture::SimInstance> {
        let slot = h.mig_slot.ok_or(NvmlFailure::InvalidArgument)?;
        if self.0.faults.mig_no_permission {
            return Err(NvmlFailure::NoPermission);
        }
        self.gpu(h.gpu)?.instances.iter().find(|i| i.slot == slot).ok_or(NvmlFailure::NotFound)
    }

    fn linked(&self, from: u32, to: u32) -> Option<&fixture::NvlinkGroup> {
        let n = self.0.gpus.len();
        let group = (*self.0.link_of.get(from as usize * n + to as usize)?)?;
        self.0.nvlinks.get(group as usize)
    }
}

impl NvmlApi for SimNvml<'_> {
    fn hostname(&self) -> String {
        self.0.hostname.clone()
    }

    fn driver_version(&self) -> NvmlResult<String> {
        Ok(self.0.driver_version.clone())
    }

    fn device_count(&self) -> NvmlResult<u32> {
        Ok(self.0.gpus.len() as u32)
    }

    fn name(&self, h: Handle) -> NvmlResult<String> {
        let gpu = self.gpu(h.gpu)?;
        Ok(match h.mig_slot {
            None => gpu.product.name.to_owned(),
            Some(_) => format!("{} MIG {}", gpu.product.name, self.instance(h)?.profile),
        })
    }

    fn uuid(&self, h: Handle) -> NvmlResult<String> {
        Ok(match h.mig_slot {
            None => self.gpu(h.gpu)?.uuid.to_string(),
            Some(_) => self.instance(h)?.uuid.to_string(),
        })
    }

    fn memory_total(&self, h: Handle) -> NvmlResult<u64> {
        let gpu = self.gpu(h.gpu)?;
        match h.mig_slot {
            None if gpu.mig_enabled && self.0.faults.parent_memory_no_permission => Err(NvmlFailure::NoPermission),
            None => Ok(gpu.product.memory_mib << 20),
            Some(_) => Ok(self.instance(h)?.memory_mib << 20),
        }
    }

    fn pci_bus_id(&self, gpu: u32) -> NvmlResult<String> {
        self.gpu(gpu)?;
        Ok(format!("00000000:{:02x}:00.0", 0x18 + gpu * 0x10 % 0xe0))
    }

    fn numa_node(&self, gpu: u32) -> NvmlResult<u32> {
        Ok(self.gpu(gpu)?.numa_node)
    }

    fn cpu_affinity(&self, gpu: u32) -> NvmlResult<Vec<u32>> {
        Ok(self.gpu(gpu)?.cpus.clone())
    }

    fn mig_mode(&self, gpu: u32) -> NvmlResult<MigMode> {
        let g = self.gpu(gpu)?;
        if !g.mig_supported {
            return Err(NvmlFailure::NotSupported);
        }
        Ok(MigMode { current: g.mig_enabled, pending: g.mig_pending })
    }

    fn max_mig_device_count(&self, gpu: u32) -> NvmlResult<u32> {
        let g = self.gpu(gpu)?;
        g.product.mig.map(|m| m.max_devices).ok_or(NvmlFailure::NotSupported)
    }

    fn mig_device_exists(&self, gpu: u32, slot: u32) -> NvmlResult<()> {
        let max = self.max_mig_device_count(gpu)?;
        if slot >= max {
            return Err(NvmlFailure::InvalidArgument);
        }
        self.instance(Handle::mig(gpu, slot)).map(|_| ())
    }

    fn gpu_instance_id(&self, h: Handle) -> NvmlResult<u32> {
        Ok(self.instance(h)?.gpu_instance_id)
    }

    fn compute_instance_id(&self, h: Handle) -> NvmlResult<u32> {
        Ok(self.instance(h)?.compute_instance_id)
    }

    fn mig_attributes(&self, h: Handle) -> NvmlResult<MigAttributes> {
        let i = self.instance(h)?;
        Ok(MigAttributes {
            sm_count: i.sm_count,
            memory_mib: i.memory_mib,
            gpu_instance_slices: i.gpu_instance_slices,
            compute_instance_slices: i.compute_instance_slices,
        })
    }

    fn p2p_read(&self, from: u32, to: u32) -> NvmlResult<P2pStatus> {
        let (a, b) = (self.gpu(from)?, self.gpu(to)?);
        Ok(if self.linked(from, to).is_some() {
            P2pStatus::Ok
        } else if a.numa_node != b.numa_node {
            P2pStatus::TopologyNotSupported
        } else if self.0.pcie_p2p {
            P2pStatus::Ok
        } else {
            P2pStatus::ChipsetNotSupported
        })
    }

    fn p2p_nvlink(&self, from: u32, to: u32) -> NvmlResult<P2pStatus> {
        self.gpu(from)?;
        self.gpu(to)?;
        Ok(if self.linked(from, to).is_some() { P2pStatus::Ok } else { P2pStatus::NotSupported })
    }

    fn direct_nvlinks(&self, from: u32, to: u32) -> NvmlResult<u32> {
        self.gpu(from)?;
        self.gpu(to)?;
        Ok(self.linked(from, to).map_or(0, |g| if g.switch { 0 } else { g.links }))
    }

    fn common_ancestor(&self, from: u32, to: u32) -> NvmlResult<PcieLevel> {
        Ok(if self.gpu(from)?.numa_node == self.gpu(to)?.numa_node { PcieLevel::Node } else { PcieLevel::System })
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
