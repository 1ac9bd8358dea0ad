//! The worker plan: which devices become workers, how each is configured, and why the others
//! are not used.

use std::collections::{BTreeMap, HashMap};

use gpu_topology::text::printable;
use gpu_topology::{DeviceId, Snapshot, limits};
use serde::Serialize;

use crate::classes::{DeviceClass, classify, largest_class};
use crate::devices::{DeviceRef, Excluded, compute_devices};
use crate::memory::{self, MemoryError};
use crate::request::{MEMORY_TOLERANCE_PCT, PlanRequest, Policy, SpecSource, WORKERS_PER_DEVICE};
use crate::spec::{self, DeviceSpec};
use crate::wording::{Message, Setting};
use crate::{Finding, PlanError, Severity};

/// Whether a worker drives a whole GPU or one MIG instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerKind {
    /// A whole GPU (MIG disabled).
    Gpu,
    /// A MIG instance.
    Mig,
}

/// One worker.
///
/// Its environment and Dask resources are derived from these fields ([`WorkerPlan::env`],
/// [`WorkerPlan::resources`]) rather than stored: plans reach 10^5 workers, and a map per worker
/// would dominate their cost. The JSON form carries both as `env` and `resources`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerPlan {
    /// Unique across hosts: `<host>-gpu<index>` or `<host>-gpu<index>-mig<slot>`, with `-w<k>`
    /// when several workers share a device.
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Its device's name (`GPU-...` or `MIG-...`).
    pub device_uuid: DeviceId,
    /// Whole GPU or MIG instance.
    pub kind: WorkerKind,
    /// The parent GPU's NVML index.
    pub gpu_index: u32,
    /// The parent GPU's name.
    pub gpu_uuid: DeviceId,
    /// The MIG profile, for a MIG worker.
    pub profile: Option<String>,
    /// Memory of the worker's own device.
    pub device_memory_bytes: Option<u64>,
    /// The device memory limit (Dask-CUDA's spilling threshold), this worker's share of its
    /// device; `None` for no limit.
    pub device_memory_limit_bytes: Option<u64>,
    /// SMs of the worker's own device.
    pub sm_count: Option<u32>,
    /// CPUs near the parent GPU (`0-15`).
    pub cpu_affinity: Option<String>,
    /// NUMA node of the parent GPU.
    pub numa_node: Option<u32>,
    /// Its device class (`A`, `B`, ...).
    pub class: String,
    /// `CUDA_VISIBLE_DEVICES`: its own MIG UUID, or its own GPU first and the host's other
    /// whole-GPU workers' after.
    pub cuda_visible_devices: String,
    /// Whether another worker uses the same parent GPU.
    pub shares_gpu: bool,
    /// The class resource, under the `grouped` policy.
    pub class_resource: Option<String>,
}

/// The variable that names a worker to its process (its plan's name).
pub const WORKER_NAME_ENV: &str = "GPUCLUSTER_WORKER_NAME";
/// The variable that names a worker's device (`GPU-...` or `MIG-...`) to its process.
pub const DEVICE_UUID_ENV: &str = "GPUCLUSTER_DEVICE_UUID";

impl WorkerPlan {
    /// The environment the worker process needs.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("CUDA_VISIBLE_DEVICES".to_owned(), self.cuda_visible_devices.clone());
        // NVML numbers GPUs by PCI bus; CUDA fastest-first unless told otherwise.
        env.insert("CUDA_DEVICE_ORDER".to_owned(), "PCI_BUS_ID".to_owned());
        env.insert(WORKER_NAME_ENV.to_owned(), self.name.clone());
        env.insert(DEVICE_UUID_ENV.to_owned(), self.device_uuid.to_string());
        if self.kind == WorkerKind::Mig {
            // CUDA IPC does not cross MIG instances: keep UCX from probing it.
            env.insert("UCX_TLS".to_owned(), "^cuda_ipc".to_owned());
            if self.shares_gpu {
                // NCCL (2.32+, experimental MIG support) identifies ranks by the parent GPU and
                // refuses two ranks on one GPU without this.
                env.insert("NCCL_MULTI_RANK_GPU_ENABLE".to_owned(), "1".to_owned());
            }
        }
        env
    }

    /// Dask resources: `GPU = 1`, and the class resource under `grouped`.
    pub fn resources(&self) -> BTreeMap<String, f64> {
        let mut resources = BTreeMap::from([("GPU".to_owned(), 1.0)]);
        if let Some(class) = &self.class_resource {
            resources.insert(class.clone(), 1.0);
        }
        resources
    }
}

impl Serialize for WorkerPlan {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'w> {
            name: &'w str,
            host: &'w str,
            device_uuid: &'w DeviceId,
            kind: WorkerKind,
            gpu_index: u32,
            gpu_uuid: &'w DeviceId,
            profile: &'w Option<String>,
            device_memory_bytes: Option<u64>,
            device_memory_limit_bytes: Option<u64>,
            sm_count: Option<u32>,
            cpu_affinity: &'w Option<String>,
            numa_node: Option<u32>,
            class: &'w str,
            resources: BTreeMap<String, f64>,
            env: BTreeMap<String, String>,
        }
        Json {
            name: &self.name,
            host: &self.host,
            device_uuid: &self.device_uuid,
            kind: self.kind,
            gpu_index: self.gpu_index,
            gpu_uuid: &self.gpu_uuid,
            profile: &self.profile,
            device_memory_bytes: self.device_memory_bytes,
            device_memory_limit_bytes: self.device_memory_limit_bytes,
            sm_count: self.sm_count,
            cpu_affinity: &self.cpu_affinity,
            numa_node: self.numa_node,
            class: &self.class,
            resources: self.resources(),
            env: self.env(),
        }
        .serialize(serializer)
    }
}

/// A plan for a cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The policy applied.
    pub policy: Policy,
    /// One per selected device, hosts in snapshot order.
    pub workers: Vec<WorkerPlan>,
    /// Devices that are not workers, with the reason.
    pub excluded: Vec<Excluded>,
    /// The classes of the selected devices (before `largest-group` dropped any).
    pub classes: Vec<DeviceClass>,
    /// Warnings and notes about the plan.
    pub findings: Vec<Finding>,
}

/// Makes the plan for `request` on `snapshot`.
///
/// # Errors
/// [`PlanError`] saying what to change: a wrong device spec, no device, a mix refused by
/// `strict`, or a memory limit that does not fit a device.
pub fn plan(snapshot: &Snapshot, request: &PlanRequest) -> Result<Plan, PlanError> {
    check_request(request)?;
    let (selected, explicit, mut excluded) = select_devices(snapshot, request)?;
    let (classes, class_of) = classify(snapshot, &selected, request.memory_tolerance_pct);
    let mut findings = Vec::new();
    findings.extend(mig_and_whole(&selected, request.policy, explicit)?);
    if classes.len() > 1 && request.policy == Policy::Strict {
        return Err(PlanError::Mixed { classes, tolerance_pct: request.memory_tolerance_pct });
    }
    let keep =
        apply_class_policy(snapshot, request.policy, &selected, &classes, &class_of, &mut excluded, &mut findings);
    let kept: Vec<(DeviceRef, usize)> =
        selected.iter().zip(&class_of).zip(&keep).filter(|(_, k)| **k).map(|((d, c), _)| (*d, *c)).collect();
    let neighbours = Neighbours::index(snapshot, &kept);
    check_workers_per_host(snapshot, &kept, request.workers_per_device as usize)?;
    let (workers, small_limits) = build_workers(snapshot, &kept, &neighbours, &classes, request)?;
    if small_limits > 0 {
        findings.push(small_limit_finding(request, small_limits));
    }
    Ok(Plan { policy: request.policy, workers, excluded, classes, findings })
}

/// The request's own numbers, before any device is looked at.
fn check_request(request: &PlanRequest) -> Result<(), PlanError> {
    if !MEMORY_TOLERANCE_PCT.contains(&request.memory_tolerance_pct) {
        return Err(PlanError::Tolerance(request.memory_tolerance_pct));
    }
    memory::validate(&request.device_memory_limit).map_err(PlanError::MemoryLimit)?;
    if !WORKERS_PER_DEVICE.contains(&request.workers_per_device) {
        return Err(PlanError::WorkersPerDevice(request.workers_per_device));
    }
    Ok(())
}

/// The devices the request selects (every compute device, or those its spec names), whether
/// they were named, and the devices left out with the reason for each.
fn select_devices(
    snapshot: &Snapshot,
    request: &PlanRequest,
) -> Result<(Vec<DeviceRef>, bool, Vec<Excluded>), PlanError> {
    let (defaults, mut excluded) = compute_devices(snapshot);
    let (selected, explicit) = match &request.devices {
        None => (defaults, false),
        Some((text, from)) => {
            let err = |error| PlanError::Spec { error, from: *from };
            let spec: DeviceSpec = text.parse().map_err(err)?;
            let chosen = spec::resolve(&spec, snapshot).map_err(err)?;
            let reason = match from {
                SpecSource::Flag => Message::from("not named in ").setting(Setting::Devices),
                SpecSource::Environment => Message::from("not named in CUDA_VISIBLE_DEVICES"),
            };
            for d in defaults.iter().filter(|d| !chosen.contains(d)) {
                excluded.push(Excluded {
                    uuid: d.ids(snapshot).0.clone(),
                    host: snapshot.hosts[d.host].hostname.clone(),
                    reason: reason.clone(),
                });
            }
            (chosen, true)
        }
    };
    if selected.is_empty() {
        let reason = if snapshot.hosts.iter().all(|h| h.gpus.is_empty()) {
            "the machine has no GPU".to_owned()
        } else {
            "every GPU has MIG enabled without instances; see the excluded devices".to_owned()
        };
        return Err(PlanError::NoDevices { reason });
    }
    Ok((selected, explicit, excluded))
}

/// MIG instances beside whole GPUs: refused by `strict` unless the devices were named, a
/// warning otherwise.
fn mig_and_whole(selected: &[DeviceRef], policy: Policy, explicit: bool) -> Result<Option<Finding>, PlanError> {
    let mig = selected.iter().filter(|d| d.mig.is_some()).count();
    let whole = selected.len() - mig;
    if mig == 0 || whole == 0 {
        return Ok(None);
    }
    if policy == Policy::Strict && !explicit {
        return Err(PlanError::MixedMigAndWhole { mig, whole });
    }
    Ok(Some(Finding::new(
        Severity::Warning,
        "mig-and-whole-gpus",
        format!("the workers mix {mig} MIG instance(s) with {whole} whole GPU(s)"),
        "MIG instances and whole GPUs differ in memory and speed, and data between them goes through host memory",
        Message::from("name only one kind with ").setting(Setting::Devices).text(", unless the mix is intended"),
    )))
}

/// Which selected devices the policy keeps when they fall into several classes (`strict`
/// refused them before): `warn` and `grouped` keep all (`warn` says so), `largest-group` keeps
/// the largest class and records the others as excluded.
fn apply_class_policy(
    snapshot: &Snapshot,
    policy: Policy,
    selected: &[DeviceRef],
    classes: &[DeviceClass],
    class_of: &[usize],
    excluded: &mut Vec<Excluded>,
    findings: &mut Vec<Finding>,
) -> Vec<bool> {
    let mut keep: Vec<bool> = vec![true; selected.len()];
    if classes.len() <= 1 {
        return keep;
    }
    match policy {
        Policy::Strict | Policy::Grouped => {}
        Policy::Warn => findings.push(Finding::new(
            Severity::Warning,
            "mixed-classes",
            format!("the workers fall into {} classes of memory and SMs (policy warn)", classes.len()),
            "Dask balances work as if every worker were alike; the smaller devices run out of memory first",
            Message::from("use ")
                .setting_to(Setting::Policy, "grouped")
                .text(" to route work by size, or ")
                .setting_to(Setting::Policy, "largest-group")
                .text(" to keep one class"),
        )),
        Policy::LargestGroup => {
            let kept = largest_class(classes);
            for (i, d) in selected.iter().enumerate() {
                if class_of[i] != kept {
                    keep[i] = false;
                    excluded.push(Excluded {
                        uuid: d.ids(snapshot).0.clone(),
                        host: snapshot.hosts[d.host].hostname.clone(),
                        reason: format!(
                            "policy largest-group keeps class {} ({} devices); this device is in class {}",
                            classes[kept].name,
                            classes[kept].devices.len(),
                            classes[class_of[i]].name
                        )
                        .into(),
                    });
                }
            }
            findings.push(Finding::new(
                Severity::Info,
                "largest-group",
                format!(
                    "policy largest-group kept class {} and left out {} device(s)",
                    classes[kept].name,
                    keep.iter().filter(|k| !**k).count()
                ),
                "the classes differ in memory or SMs; see `classes` and `excluded`",
                Message::from("use ").setting_to(Setting::Policy, "grouped").text(" to keep them all"),
            ));
        }
    }
    keep
}

/// No host gets more than `limits::MAX_WORKERS_PER_HOST` workers (the first such host, by
/// index, is named).
fn check_workers_per_host(
    snapshot: &Snapshot,
    kept: &[(DeviceRef, usize)],
    per_device: usize,
) -> Result<(), PlanError> {
    let mut per_host: HashMap<usize, usize> = HashMap::new();
    for &(d, _) in kept {
        *per_host.entry(d.host).or_default() += per_device;
    }
    if let Some((&host, &workers)) =
        per_host.iter().filter(|(_, w)| **w > limits::MAX_WORKERS_PER_HOST).min_by_key(|(h, _)| **h)
    {
        return Err(PlanError::TooManyWorkers {
            host: snapshot.hosts[host].hostname.clone(),
            workers,
            limit: limits::MAX_WORKERS_PER_HOST,
        });
    }
    Ok(())
}

/// The workers of the kept devices (`workers_per_device` of each, sharing its memory limit),
/// and how many devices got a memory limit under 1 % of their memory.
fn build_workers(
    snapshot: &Snapshot,
    kept: &[(DeviceRef, usize)],
    neighbours: &Neighbours,
    classes: &[DeviceClass],
    request: &PlanRequest,
) -> Result<(Vec<WorkerPlan>, usize), PlanError> {
    let per_device = request.workers_per_device as usize;
    let mut workers = Vec::with_capacity(kept.len() * per_device);
    let mut small_limits = 0;
    for &(d, class) in kept {
        let w = worker(snapshot, d, neighbours, &classes[class], request)?;
        if let (Some(limit), Some(memory)) = (w.device_memory_limit_bytes, w.device_memory_bytes)
            && limit < memory / 100
        {
            small_limits += 1;
        }
        if let Some(limit) = w.device_memory_limit_bytes
            && limit < per_device as u64
        {
            return Err(PlanError::MemoryLimit(MemoryError::RoundsToZero {
                text: request.device_memory_limit.clone(),
                total: w.device_memory_bytes.unwrap_or(limit),
                device: w.device_uuid.to_string(),
            }));
        }
        if per_device == 1 {
            workers.push(w);
            continue;
        }
        for k in 0..per_device {
            workers.push(WorkerPlan {
                name: format!("{}-w{k}", w.name),
                device_memory_limit_bytes: w.device_memory_limit_bytes.map(|l| l / per_device as u64),
                shares_gpu: true,
                ..w.clone()
            });
        }
    }
    Ok((workers, small_limits))
}

/// The warning for memory limits under 1 % of `small_limits` devices' memory.
fn small_limit_finding(request: &PlanRequest, small_limits: usize) -> Finding {
    Finding::new(
        Severity::Warning,
        "device-memory-limit-small",
        Message::new()
            .setting_to(Setting::DeviceMemoryLimit, printable(&request.device_memory_limit))
            .text(format!(" leaves {small_limits} device(s) a limit under 1 % of their memory")),
        "the limit is where a Dask-CUDA worker starts spilling device memory to the host: this low, every array \
         spills at once, and the device is all but unused",
        "give a fraction (0.8 is the default) or a size with units (10GB); bytes without units are bytes",
    )
}

/// What a worker needs to know of the others, indexed once (plans reach 10^5 workers).
#[derive(Default)]
struct Neighbours {
    workers_per_gpu: HashMap<(usize, usize), usize>,
    whole_gpus: HashMap<usize, Vec<String>>,
}

impl Neighbours {
    /// Workers per physical GPU, and each host's whole-GPU workers by UUID, of the kept devices.
    fn index(snapshot: &Snapshot, kept: &[(DeviceRef, usize)]) -> Self {
        let mut neighbours = Self::default();
        for &(d, _) in kept {
            *neighbours.workers_per_gpu.entry((d.host, d.gpu)).or_default() += 1;
            if d.mig.is_none() {
                neighbours.whole_gpus.entry(d.host).or_default().push(d.ids(snapshot).0.to_string());
            }
        }
        neighbours
    }
}

fn worker(
    snapshot: &Snapshot,
    d: DeviceRef,
    neighbours: &Neighbours,
    class: &DeviceClass,
    request: &PlanRequest,
) -> Result<WorkerPlan, PlanError> {
    let host = &snapshot.hosts[d.host];
    let gpu = d.gpu(snapshot);
    let instance = d.instance(snapshot);
    let device_id = d.ids(snapshot).0.clone();
    let device_uuid = device_id.to_string();
    let memory = d.memory_bytes(snapshot);
    let limit = memory::parse_device_bytes(&request.device_memory_limit, memory, 1, &device_uuid)
        .map_err(PlanError::MemoryLimit)?;
    let name = match instance {
        Some(m) => {
            format!("{}-gpu{}-mig{}", host.hostname, gpu.index, m.slot.unwrap_or(d.mig.unwrap_or_default() as u32))
        }
        None => format!("{}-gpu{}", host.hostname, gpu.index),
    };
    let cuda_visible_devices = match instance {
        // A MIG worker sees exactly its own instance: before R570 CUDA enumerates only one MIG
        // device per process anyway, and from R570 on it would see others it must not use.
        Some(_) => device_uuid.clone(),
        None => {
            // Its own GPU first, then the other whole GPUs of this host (Dask-CUDA's rotation),
            // so peers stay visible for CUDA IPC. UUIDs, not indices: CUDA orders devices
            // fastest-first unless CUDA_DEVICE_ORDER says otherwise, NVML by PCI bus.
            let peers = neighbours.whole_gpus.get(&d.host).map_or(&[][..], Vec::as_slice);
            let me = peers.iter().position(|p| *p == device_uuid).unwrap_or(0);
            let mut rotated = peers[me..].to_vec();
            rotated.extend_from_slice(&peers[..me]);
            rotated.join(",")
        }
    };
    Ok(WorkerPlan {
        name,
        host: host.hostname.clone(),
        device_uuid: device_id,
        kind: if instance.is_some() { WorkerKind::Mig } else { WorkerKind::Gpu },
        gpu_index: gpu.index,
        gpu_uuid: gpu.uuid.clone(),
        profile: instance.map(|m| m.profile.clone()),
        device_memory_bytes: memory,
        device_memory_limit_bytes: limit,
        sm_count: d.sm_count(snapshot),
        cpu_affinity: gpu.cpu_affinity.clone(),
        numa_node: gpu.numa_node,
        class: class.name.clone(),
        cuda_visible_devices,
        shares_gpu: neighbours.workers_per_gpu.get(&(d.host, d.gpu)).copied().unwrap_or(0) > 1,
        class_resource: (request.policy == Policy::Grouped).then(|| class.resource.clone()),
    })
}
