//! The snapshot: what a machine (or several) is made of, as plain serializable data.
//!
//! Every backend produces a [`Snapshot`]; everything above this crate consumes one.
//! The types hold no handles and no lifetimes, so a snapshot can be printed with
//! `gpucluster list --json`, saved, and loaded back through `file:PATH` unchanged.
//! The JSON shape is a user-facing contract (see `docs/ARCHITECTURE.md`): keys may be added,
//! never renamed.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::text::{control_char, printable};
use crate::units::gib;
use crate::{DeviceId, Limit, TopologyError, limits, products};

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

    /// The compute devices this GPU offers, in order: the GPU itself (`None`) when MIG is
    /// disabled, else each of its MIG instances (`Some`), so none for a MIG-enabled GPU without
    /// instances. This is the one definition of a compute device; selection, listing and the
    /// benchmarks count through it.
    pub fn compute_devices(&self) -> impl Iterator<Item = Option<&MigInstance>> {
        let whole = self.is_compute_device();
        let instances = self.mig_instances.iter().filter(move |_| !whole).map(Some);
        whole.then_some(None).into_iter().chain(instances)
    }
}

impl HostTopology {
    /// Every compute device of this host, in GPU order, with its GPU: each GPU with MIG
    /// disabled (`None`) and each MIG instance of the others (see [`PhysicalGpu::compute_devices`]).
    pub fn compute_devices(&self) -> impl Iterator<Item = (&PhysicalGpu, Option<&MigInstance>)> {
        self.gpus.iter().flat_map(|gpu| gpu.compute_devices().map(move |mig| (gpu, mig)))
    }

    /// The link from GPU `from` to GPU `to`, if the source reported one.
    ///
    /// Links are kept in `(from, to)` order, as every source writes them and [`Self::validate`]
    /// checks, so this is a binary search: `list` and `plan` ask for every pair of GPUs.
    pub fn peer(&self, from: u32, to: u32) -> Option<&PeerLink> {
        let at = self.peers.binary_search_by_key(&(from, to), |p| (p.from, p.to)).ok()?;
        Some(&self.peers[at])
    }

    /// Checks what a loaded snapshot must satisfy for the layers above to trust it: a host name
    /// and text fields fit to print, a driver version that is one, GPU names are `GPU-` names
    /// and MIG names MIG names, no name, index or MIG slot twice, legacy MIG names under their
    /// own GPU, instances only on MIG-enabled GPUs and no more of them, or more memory, than the
    /// GPU holds, peer links once each, in order, between GPUs that exist, and the bounds of
    /// [`crate::limits`].
    ///
    /// # Errors
    /// [`TopologyError::InvalidSnapshot`] naming the first offending GPU or instance, or
    /// [`TopologyError::BeyondLimit`].
    pub fn validate(&self) -> Result<(), TopologyError> {
        let bad = |reason: String| TopologyError::InvalidSnapshot { host: self.hostname.clone(), reason };
        check_hostname(&self.hostname).map_err(bad)?;
        if let Some(version) = &self.driver_version {
            check_driver_version(version).map_err(bad)?;
        }
        if self.gpus.len() > limits::MAX_GPUS_PER_HOST {
            return Err(TopologyError::BeyondLimit {
                subject: format!("host `{}`", self.hostname),
                what: Limit::GpusPerHost,
                found: self.gpus.len(),
                limit: limits::MAX_GPUS_PER_HOST,
            });
        }
        let mut names = HashSet::new();
        let mut indices = HashSet::new();
        for gpu in &self.gpus {
            gpu.validate(&self.hostname, &mut names).map_err(|e| match e {
                Invalid::Reason(reason) => bad(reason),
                Invalid::Limit(e) => e,
            })?;
            if !indices.insert(gpu.index) {
                return Err(bad(format!("GPU index {} appears twice", gpu.index)));
            }
        }
        for (i, link) in self.peers.iter().enumerate() {
            for end in [link.from, link.to] {
                if !indices.contains(&end) {
                    return Err(bad(format!("a peer link names GPU {end}, which is not among this host's GPUs")));
                }
            }
            if link.from == link.to {
                return Err(bad(format!("a peer link joins GPU {} to itself", link.from)));
            }
            if let Some(before) = i.checked_sub(1).map(|b| &self.peers[b]) {
                if (before.from, before.to) == (link.from, link.to) {
                    return Err(bad(format!("the peer link from GPU {} to GPU {} appears twice", link.from, link.to)));
                }
                if (before.from, before.to) > (link.from, link.to) {
                    return Err(bad(format!(
                        "peer links must be in (from, to) order, as gpucluster writes them; \
                         the link from GPU {} to GPU {} comes after the one from GPU {} to GPU {}",
                        link.from, link.to, before.from, before.to
                    )));
                }
            }
        }
        Ok(())
    }

    /// Puts the peer links in the `(from, to)` order [`Self::validate`] asks for: the order of
    /// facts in a file carries no meaning.
    pub fn sort_peers(&mut self) {
        self.peers.sort_by_key(|p| (p.from, p.to));
    }
}

/// Why a GPU is not valid: a contradiction, or a bound passed.
enum Invalid {
    Reason(String),
    Limit(TopologyError),
}

impl From<String> for Invalid {
    fn from(reason: String) -> Self {
        Invalid::Reason(reason)
    }
}

impl PhysicalGpu {
    fn validate(&self, hostname: &str, names: &mut HashSet<DeviceId>) -> Result<(), Invalid> {
        let index = self.index;
        if self.uuid.is_mig() {
            return Err(format!(
                "GPU {index} is named `{}`, a MIG name; a physical GPU is named GPU-<uuid>",
                self.uuid
            )
            .into());
        }
        if !names.insert(self.uuid.clone()) {
            return Err(format!("`{}` appears twice", self.uuid).into());
        }
        check_text(&format!("the name of GPU {index}"), &self.name, limits::MAX_NAME_BYTES)?;
        if self.name.trim().is_empty() {
            return Err(format!("GPU {index} has an empty name").into());
        }
        if let Some(bus) = &self.pci_bus_id {
            check_text(&format!("the PCI bus id of GPU {index}"), bus, limits::MAX_NAME_BYTES)?;
        }
        if let Some(cpus) = &self.cpu_affinity {
            check_text(&format!("the CPU list of GPU {index}"), cpus, limits::MAX_CPULIST_BYTES)?;
        }
        match self.memory_bytes {
            Some(0) => return Err(format!("GPU {index} reports 0 bytes of memory").into()),
            Some(m) if m > limits::MAX_GPU_MEMORY_BYTES => {
                return Err(format!(
                    "GPU {index} reports {m} bytes of memory, more than any GPU has (the limit is {} TiB)",
                    limits::MAX_GPU_MEMORY_BYTES >> 40
                )
                .into());
            }
            _ => {}
        }
        if !self.mig_enabled && !self.mig_instances.is_empty() {
            return Err(format!("GPU {index} has MIG instances but `mig_enabled` is false; set it to true").into());
        }
        let product = products::product(&self.name);
        let geometry = product.and_then(|p| p.mig);
        let most = geometry.map_or(limits::MAX_MIG_DEVICES_PER_GPU, |g| g.max_devices as usize);
        if self.mig_instances.len() > most {
            return Err(match geometry {
                Some(_) => format!(
                    "GPU {index} ({}) has {} MIG devices, but a GPU of this product holds at most {most}",
                    self.name,
                    self.mig_instances.len()
                )
                .into(),
                None => Invalid::Limit(TopologyError::BeyondLimit {
                    subject: format!("GPU {index} of host `{hostname}`"),
                    what: Limit::MigDevicesPerGpu,
                    found: self.mig_instances.len(),
                    limit: most,
                }),
            });
        }
        // What the instances may hold together: the GPU's own figure, else its product's.
        let capacity = self.memory_bytes.or(product.map(|p| p.memory_mib << 20));
        let mut slots = HashSet::new();
        let mut instances_memory: u64 = 0;
        let mut gpu_instances = HashSet::new();
        for mig in &self.mig_instances {
            if !mig.uuid.is_mig() {
                return Err(format!(
                    "MIG instance `{}` of GPU {index} must be named MIG-<uuid> or MIG-GPU-<uuid>/<gi>/<ci>",
                    mig.uuid
                )
                .into());
            }
            if !names.insert(mig.uuid.clone()) {
                return Err(format!("`{}` appears twice", mig.uuid).into());
            }
            if let DeviceId::LegacyMig { gpu, gpu_instance, compute_instance } = &mig.uuid {
                if DeviceId::Gpu(gpu.clone()) != self.uuid {
                    return Err(format!(
                        "MIG instance `{}` is listed under GPU {index} (`{}`), but its name says it is on GPU-{gpu}",
                        mig.uuid, self.uuid
                    )
                    .into());
                }
                let ids_differ = mig.gpu_instance_id.is_some_and(|gi| gi != *gpu_instance)
                    || mig.compute_instance_id.is_some_and(|ci| ci != *compute_instance);
                if ids_differ {
                    return Err(format!(
                        "MIG instance `{}` of GPU {index} reports GPU/compute instance ids {}/{}, which its name \
                         contradicts",
                        mig.uuid,
                        opt(mig.gpu_instance_id),
                        opt(mig.compute_instance_id)
                    )
                    .into());
                }
            }
            check_text(&format!("the profile of MIG instance `{}`", mig.uuid), &mig.profile, limits::MAX_NAME_BYTES)?;
            if let Some(slot) = mig.slot {
                if !slots.insert(slot) {
                    return Err(format!("GPU {index} has two MIG devices in slot {slot} (`Device {slot}`)").into());
                }
                if geometry.is_some_and(|g| slot >= g.max_devices) {
                    return Err(format!(
                        "MIG instance `{}` is in slot {slot}, past the last MIG slot of a {} ({})",
                        mig.uuid,
                        self.name,
                        most - 1
                    )
                    .into());
                }
            }
            if mig.memory_bytes == 0 {
                return Err(format!("MIG instance `{}` of GPU {index} reports 0 bytes of memory", mig.uuid).into());
            }
            let total = capacity.unwrap_or(limits::MAX_GPU_MEMORY_BYTES);
            if mig.memory_bytes > total {
                return Err(format!(
                    "MIG instance `{}` reports {} of memory, more than its GPU {index} has ({})",
                    mig.uuid,
                    gib(mig.memory_bytes),
                    gib(total)
                )
                .into());
            }
            // Compute instances of one GPU instance share its memory, and each reports all of
            // it: count a GPU instance once, and leave out compute instances whose GPU instance
            // is unknown (they may share one with another).
            let shares_gpu_instance = mig
                .profile
                .split_once("c.")
                .is_some_and(|(c, _)| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()));
            let counted = match mig.gpu_instance_id {
                Some(gi) => gpu_instances.insert(gi),
                None => !shares_gpu_instance,
            };
            if counted {
                instances_memory = instances_memory.saturating_add(mig.memory_bytes);
            }
        }
        if let Some(total) = capacity
            && instances_memory > total
        {
            return Err(format!(
                "the MIG instances of GPU {index} report {} of memory together, more than the GPU has ({})",
                gib(instances_memory),
                gib(total)
            )
            .into());
        }
        Ok(())
    }
}

fn opt(id: Option<u32>) -> String {
    id.map_or_else(|| "-".to_owned(), |i| i.to_string())
}

/// A host name must name a host: not empty, printable, no longer than a DNS name.
pub(crate) fn check_hostname(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("the host name is empty; worker names start with it, so every host needs one".to_owned());
    }
    check_text("the host name", name, limits::MAX_HOSTNAME_BYTES)
}

/// A driver version is dot-separated numbers, as NVML reports it: `580.159.04`, `470.42.01`.
pub(crate) fn check_driver_version(version: &str) -> Result<(), String> {
    let numbers = !version.is_empty()
        && version.len() <= 32
        && version.split('.').all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()));
    if numbers {
        Ok(())
    } else {
        Err(format!(
            "driver version `{}` is not a version like 580.159.04 (numbers separated by dots)",
            printable(version)
        ))
    }
}

/// Text from a description that ends up in names, tables and messages: printable, and short.
pub(crate) fn check_text(what: &str, text: &str, max_bytes: usize) -> Result<(), String> {
    if let Some(c) = control_char(text) {
        return Err(format!(
            "{what} `{}` holds the control character {}; names must be printable text",
            printable(text),
            c.escape_unicode()
        ));
    }
    if text.len() > max_bytes {
        return Err(format!("{what} `{}` is {} bytes long; the limit is {max_bytes}", printable(text), text.len()));
    }
    Ok(())
}

impl Snapshot {
    /// Validates every host, that host names are unique, that no device appears on two hosts,
    /// and the bound on hosts ([`crate::limits::MAX_HOSTS`]).
    ///
    /// # Errors
    /// [`TopologyError::InvalidSnapshot`] or [`TopologyError::BeyondLimit`] for the first
    /// problem found.
    pub fn validate(&self) -> Result<(), TopologyError> {
        if self.hosts.len() > limits::MAX_HOSTS {
            return Err(TopologyError::BeyondLimit {
                subject: "the snapshot".to_owned(),
                what: Limit::Hosts,
                found: self.hosts.len(),
                limit: limits::MAX_HOSTS,
            });
        }
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
        if let Some((device, first, second)) = self.device_on_two_hosts() {
            return Err(TopologyError::InvalidSnapshot {
                host: second.to_owned(),
                reason: format!(
                    "`{device}` is on host `{}` too; a device belongs to one host (was one host saved under two \
                     names?)",
                    printable(first)
                ),
            });
        }
        Ok(())
    }

    /// A device name found on two hosts, with the two hosts, if any.
    pub fn device_on_two_hosts(&self) -> Option<(&DeviceId, &str, &str)> {
        let mut owner: HashMap<&DeviceId, &str> = HashMap::new();
        for host in &self.hosts {
            for gpu in &host.gpus {
                for id in std::iter::once(&gpu.uuid).chain(gpu.mig_instances.iter().map(|m| &m.uuid)) {
                    if let Some(first) = owner.insert(id, &host.hostname)
                        && first != host.hostname
                    {
                        return Some((id, first, &host.hostname));
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TopologySpec, Uuid};

    fn numbered(i: u32) -> DeviceId {
        let mut bytes = [0u8; 16];
        bytes[12..].copy_from_slice(&i.to_be_bytes());
        DeviceId::Gpu(Uuid::from_bytes(bytes))
    }

    fn preset(name: &str) -> Snapshot {
        let source = TopologySpec::Sim(name.into()).open().expect("preset");
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt")
            .block_on(source.snapshot())
            .expect("snapshot")
    }

    fn mig(uuid: &str, profile: &str, gib: u64, slot: u32) -> MigInstance {
        MigInstance {
            uuid: uuid.parse().expect("uuid"),
            profile: profile.into(),
            memory_bytes: gib << 30,
            sm_count: Some(14),
            gpu_instance_id: None,
            compute_instance_id: None,
            slot: Some(slot),
        }
    }

    /// Each edit makes a snapshot no machine could report; each must be refused, naming why.
    #[test]
    fn contradictory_snapshots_are_refused_with_the_reason() {
        type Edit = fn(&mut Snapshot);
        let cases: [(&str, Edit, &str); 17] = [
            ("duplicate GPU", |s| s.hosts[0].gpus[1].uuid = s.hosts[0].gpus[0].uuid.clone(), "appears twice"),
            ("empty hostname", |s| s.hosts[0].hostname = String::new(), "the host name is empty"),
            ("escape in hostname", |s| s.hosts[0].hostname = "a\u{1b}[2Jb".into(), "control character \\u{1b}"),
            ("long hostname", |s| s.hosts[0].hostname = "h".repeat(300), "the limit is 253"),
            ("banana driver", |s| s.hosts[0].driver_version = Some("banana".into()), "`banana` is not a version"),
            ("newline in name", |s| s.hosts[0].gpus[0].name = "A100\nfake".into(), "control character \\u{a}"),
            ("0-byte instance", |s| s.hosts[0].gpus[0].mig_instances[0].memory_bytes = 0, "0 bytes of memory"),
            (
                "931,322 GiB instance",
                |s| s.hosts[0].gpus[0].mig_instances[0].memory_bytes = 1_000_000_000_000_000,
                "more than its GPU 0 has",
            ),
            ("same slot twice", |s| s.hosts[0].gpus[0].mig_instances[1].slot = Some(0), "two MIG devices in slot 0"),
            (
                "207 instances on one GPU",
                |s| {
                    let gpu = &mut s.hosts[0].gpus[0];
                    gpu.mig_instances = (0..207)
                        .map(|i| mig(&format!("MIG-{i:08x}-0000-0000-0000-000000000000"), "1g.5gb", 4, i))
                        .collect();
                },
                "holds at most 7",
            ),
            (
                "instances beyond the GPU's memory",
                |s| {
                    let gpu = &mut s.hosts[0].gpus[0];
                    gpu.mig_instances = (0..2)
                        .map(|i| mig(&format!("MIG-{i:08x}-0000-0000-0000-000000000000"), "7g.40gb", 39, i))
                        .collect();
                },
                "report 78.00 GiB of memory together",
            ),
            (
                "legacy name under another GPU",
                |s| {
                    let other = s.hosts[0].gpus[1].uuid.to_string();
                    s.hosts[0].gpus[0].mig_instances[0].uuid = format!("MIG-{other}/7/0").parse().expect("legacy");
                },
                "but its name says it is on",
            ),
            ("MIG on a non-MIG GPU", |s| s.hosts[0].gpus[0].mig_enabled = false, "`mig_enabled` is false"),
            ("peer to itself", |s| s.hosts[0].peers[0].to = s.hosts[0].peers[0].from, "to itself"),
            ("peer twice", |s| s.hosts[0].peers[1] = s.hosts[0].peers[0].clone(), "appears twice"),
            ("peers out of order", |s| s.hosts[0].peers.swap(0, 1), "(from, to) order"),
            (
                "one device on two hosts",
                |s| {
                    let mut other = s.hosts[0].clone();
                    other.hostname = "other".into();
                    other.gpus[3].uuid = numbered(7);
                    other.gpus[3].mig_instances.clear();
                    s.hosts.push(other);
                },
                "is on host `dgx-a100` too",
            ),
        ];
        let good = preset("dgx-a100");
        good.validate().expect("the preset is valid");
        for (what, edit, expected) in cases {
            let mut s = good.clone();
            edit(&mut s);
            let err = s.validate().expect_err(what).to_string();
            assert!(err.contains(expected), "{what}: {err}");
        }
    }

    #[test]
    fn beyond_the_limits_the_limit_is_named() {
        let mut s = preset("h100");
        let template = s.hosts[0].gpus[0].clone();
        s.hosts[0].gpus = (0..=limits::MAX_GPUS_PER_HOST as u32)
            .map(|i| PhysicalGpu { index: i, uuid: numbered(i), ..template.clone() })
            .collect();
        let err = s.validate().expect_err("257 GPUs");
        assert!(
            matches!(err, TopologyError::BeyondLimit { what: Limit::GpusPerHost, found: 257, limit: 256, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("limit of 256 GPUs on one host"), "{err}");
    }

    #[test]
    fn peers_are_found_by_pair() {
        let s = preset("hgx-h100");
        let host = &s.hosts[0];
        for link in &host.peers {
            assert_eq!(host.peer(link.from, link.to), Some(link));
        }
        assert_eq!(host.peer(3, 3), None);
        assert_eq!(host.peer(0, 99), None);
    }

    /// Snapshots built field by field, with values real and absurd, go through the loader: it
    /// must not panic, and whatever it accepts must be valid and write back the same JSON.
    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::snapshot_from_json;

        fn id(kind: u8, n: u8) -> DeviceId {
            let uuid = Uuid::from_bytes([n; 16]);
            match kind {
                0 => DeviceId::Gpu(uuid),
                1 => DeviceId::Mig(uuid),
                _ => DeviceId::LegacyMig { gpu: Uuid::from_bytes([n % 4; 16]), gpu_instance: 7, compute_instance: 0 },
            }
        }

        /// Mostly `good`, rarely one of `odd`.
        fn mostly<T: Clone + std::fmt::Debug + 'static>(good: Vec<T>, odd: Vec<T>) -> impl Strategy<Value = T> {
            prop_oneof![20 => proptest::sample::select(good), 1 => proptest::sample::select(odd)]
        }

        fn instance(gpu: u8, slot: u32) -> impl Strategy<Value = MigInstance> {
            (
                prop_oneof![
                    20 => Just(id(1, 64 + gpu * 8 + slot as u8)),
                    1 => (0u8..4).prop_map(|n| id(2, n)),
                    1 => (0u8..4).prop_map(|n| id(0, n)),
                ],
                mostly(vec!["1g.10gb", "3g.40gb", "1c.3g.40gb"], vec!["", "a\u{1b}b"]),
                prop_oneof![20 => 1u64..(10 << 30), 1 => Just(0), 1 => Just(u64::MAX)],
                proptest::option::of(0u32..200),
                proptest::option::of(0u32..15),
                proptest::option::of(0u32..8),
                prop_oneof![20 => Just(Some(slot)), 1 => proptest::option::of(0u32..9)],
            )
                .prop_map(|(uuid, profile, memory_bytes, sm_count, gi, ci, slot)| MigInstance {
                    uuid,
                    profile: profile.to_owned(),
                    memory_bytes,
                    sm_count,
                    gpu_instance_id: gi,
                    compute_instance_id: ci,
                    slot,
                })
        }

        fn gpu(index: u32) -> impl Strategy<Value = PhysicalGpu> {
            let instances =
                (0u32..4).prop_flat_map(move |n| (0..n).map(|slot| instance(index as u8, slot)).collect::<Vec<_>>());
            (
                prop_oneof![20 => Just(index), 1 => 0u32..6],
                prop_oneof![20 => Just(id(0, index as u8)), 1 => (0u8..4).prop_map(|n| id(0, n)), 1 => Just(id(1, 9))],
                mostly(vec!["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "Mystery GPU"], vec!["", "x\ny"]),
                proptest::option::of(prop_oneof![20 => (40u64 << 30)..(200 << 30), 1 => Just(0), 1 => Just(u64::MAX)]),
                any::<bool>(),
                proptest::option::of(any::<bool>()),
                proptest::option::weighted(0.2, mostly(vec!["0-15", "0-3,8-11"], vec!["\u{1b}"])),
                instances,
            )
                .prop_map(
                    |(index, uuid, name, memory_bytes, mig_enabled, mig_pending, cpus, mig_instances)| PhysicalGpu {
                        index,
                        uuid,
                        name: name.to_owned(),
                        memory_bytes,
                        sm_count: Some(132),
                        pci_bus_id: None,
                        numa_node: Some(0),
                        cpu_affinity: cpus.map(str::to_owned),
                        mig_supported: true,
                        mig_enabled: mig_enabled || !mig_instances.is_empty(),
                        mig_pending,
                        mig_instances,
                    },
                )
        }

        fn host(name: &'static str) -> impl Strategy<Value = HostTopology> {
            let gpus = (0u32..4).prop_flat_map(|n| (0..n).map(gpu).collect::<Vec<_>>());
            (
                mostly(vec![name], vec!["", "c\u{7}", "a"]),
                proptest::option::of(mostly(vec!["580.159.04", "460.73.01"], vec!["banana", ""])),
                gpus,
                proptest::collection::vec((0u32..4, 0u32..4, any::<bool>()), 0..6),
            )
                .prop_map(|(hostname, driver_version, gpus, links)| {
                    let count = gpus.len() as u32;
                    HostTopology {
                        hostname: hostname.to_owned(),
                        driver_version: driver_version.map(str::to_owned),
                        gpus,
                        peers: links
                            .into_iter()
                            // Mostly links between GPUs the host has, as a source reports them.
                            .filter(|&(from, to, nvlink)| {
                                (from < count && to < count && from != to) || !nvlink && from == 3
                            })
                            .map(|(from, to, nvlink)| PeerLink {
                                from,
                                to,
                                p2p: if nvlink { P2pStatus::Ok } else { P2pStatus::NotSupported },
                                nvlink,
                                nvlink_count: None,
                                pcie: Some(PcieLevel::Node),
                            })
                            .collect(),
                    }
                })
        }

        fn hosts() -> impl Strategy<Value = Vec<HostTopology>> {
            prop_oneof![2 => host("a").prop_map(|h| vec![h]), 1 => (host("a"), host("b")).prop_map(|(a, b)| vec![a, b])]
        }

        proptest! {
            #[test]
            fn accepted_snapshots_are_valid_and_write_back_the_same(hosts in hosts()) {
                let json = serde_json::to_string(&Snapshot { hosts }).expect("json");
                if let Ok(loaded) = snapshot_from_json(&json, std::path::Path::new("p.json")) {
                    prop_assert!(loaded.validate().is_ok());
                    let again = serde_json::to_string(&loaded).expect("json");
                    prop_assert_eq!(snapshot_from_json(&again, std::path::Path::new("q.json")).expect("again"), loaded);
                }
            }

            #[test]
            fn no_edit_of_a_snapshot_makes_the_loader_panic(
                hosts in hosts(),
                cut in any::<proptest::sample::Index>(),
                byte in any::<u8>(),
            ) {
                let mut json = serde_json::to_vec(&Snapshot { hosts }).expect("json");
                let at = cut.index(json.len());
                json[at] = byte;
                if let Ok(text) = String::from_utf8(json) {
                    let _ = snapshot_from_json(&text, std::path::Path::new("p.json"));
                    let mut end = at;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    let _ = snapshot_from_json(&text[..end], std::path::Path::new("p.json"));
                }
            }
        }
    }
}
