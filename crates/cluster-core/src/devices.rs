//! Compute devices of a snapshot, and the default selection with a reason for every exclusion.

use gpu_topology::{DeviceId, MigInstance, PhysicalGpu, Snapshot};
use serde::Serialize;

use crate::wording::Message;

/// A device of a snapshot: a whole GPU, or one MIG instance of it (positions, not ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct DeviceRef {
    pub(crate) host: usize,
    pub(crate) gpu: usize,
    pub(crate) mig: Option<usize>,
}

impl DeviceRef {
    pub(crate) fn gpu<'s>(&self, snapshot: &'s Snapshot) -> &'s PhysicalGpu {
        &snapshot.hosts[self.host].gpus[self.gpu]
    }

    pub(crate) fn instance<'s>(&self, snapshot: &'s Snapshot) -> Option<&'s MigInstance> {
        self.mig.map(|m| &self.gpu(snapshot).mig_instances[m])
    }

    /// The device's own name, and its parent GPU's for a MIG instance.
    pub(crate) fn ids<'s>(&self, snapshot: &'s Snapshot) -> (&'s DeviceId, Option<&'s DeviceId>) {
        let gpu = self.gpu(snapshot);
        match self.instance(snapshot) {
            Some(m) => (&m.uuid, Some(&gpu.uuid)),
            None => (&gpu.uuid, None),
        }
    }

    pub(crate) fn memory_bytes(&self, snapshot: &Snapshot) -> Option<u64> {
        match self.instance(snapshot) {
            Some(m) => Some(m.memory_bytes),
            None => self.gpu(snapshot).memory_bytes,
        }
    }

    pub(crate) fn sm_count(&self, snapshot: &Snapshot) -> Option<u32> {
        match self.instance(snapshot) {
            Some(m) => m.sm_count,
            None => self.gpu(snapshot).sm_count,
        }
    }

    /// `MIG-... (1g.10gb on GPU 0 of host a)` / `GPU-... (GPU 1 of host a)`.
    pub(crate) fn describe(&self, snapshot: &Snapshot) -> String {
        let gpu = self.gpu(snapshot);
        let host = &snapshot.hosts[self.host].hostname;
        match self.instance(snapshot) {
            Some(m) => format!("{} ({} on GPU {} of host {host})", m.uuid, m.profile, gpu.index),
            None => format!("{} (GPU {} of host {host})", gpu.uuid, gpu.index),
        }
    }
}

/// Every device a spec could name: each GPU, and each MIG instance.
pub(crate) fn all_devices(snapshot: &Snapshot) -> Vec<DeviceRef> {
    let mut out = Vec::new();
    for (h, host) in snapshot.hosts.iter().enumerate() {
        for (g, gpu) in host.gpus.iter().enumerate() {
            out.push(DeviceRef { host: h, gpu: g, mig: None });
            out.extend((0..gpu.mig_instances.len()).map(|m| DeviceRef { host: h, gpu: g, mig: Some(m) }));
        }
    }
    out
}

/// A device that is not a worker, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Excluded {
    /// The device's name.
    pub uuid: DeviceId,
    /// Its host.
    pub host: String,
    /// Why it is not a worker (as JSON, in the command line's words).
    pub reason: Message,
}

/// The default selection: every compute device (the MIG instances of MIG-enabled GPUs, whole
/// GPUs elsewhere), and the parents that are not compute devices, with the reason.
pub(crate) fn compute_devices(snapshot: &Snapshot) -> (Vec<DeviceRef>, Vec<Excluded>) {
    let mut selected = Vec::new();
    let mut excluded = Vec::new();
    for (h, host) in snapshot.hosts.iter().enumerate() {
        for (g, gpu) in host.gpus.iter().enumerate() {
            if gpu.is_compute_device() {
                selected.push(DeviceRef { host: h, gpu: g, mig: None });
                continue;
            }
            let reason = if gpu.mig_instances.is_empty() {
                format!(
                    "GPU {} has MIG enabled but no MIG instances, so it offers no compute device; create instances \
                     (`nvidia-smi mig -cgi <profiles> -C`) or disable MIG (`nvidia-smi -i {} -mig 0`)",
                    gpu.index, gpu.index
                )
            } else {
                format!(
                    "GPU {} has MIG enabled: its {} MIG instance(s) are the compute devices, not the GPU itself",
                    gpu.index,
                    gpu.mig_instances.len()
                )
            };
            excluded.push(Excluded { uuid: gpu.uuid.clone(), host: host.hostname.clone(), reason: reason.into() });
            selected.extend((0..gpu.mig_instances.len()).map(|m| DeviceRef { host: h, gpu: g, mig: Some(m) }));
        }
    }
    (selected, excluded)
}
