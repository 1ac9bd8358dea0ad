//! `doctor`: findings about the machine, the environment and the plan, each explained with a fix.

use std::collections::HashMap;

use gpu_topology::{DeviceId, Snapshot};

use crate::plan::{WorkerKind, plan};
use crate::request::{PlanRequest, SpecSource};
use crate::wording::{Call, Message};
use crate::{DeviceSpec, Finding, Severity, spec};

/// The environment variables doctor judges, read by the caller (this crate reads none).
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `CUDA_VISIBLE_DEVICES`.
    pub cuda_visible_devices: Option<String>,
    /// `UCX_TLS`.
    pub ucx_tls: Option<String>,
}

/// Everything doctor finds, most serious first.
pub fn doctor(snapshot: &Snapshot, request: &PlanRequest, env: &Environment) -> Vec<Finding> {
    let mut findings = Vec::new();
    machine_findings(snapshot, &mut findings);

    match plan(snapshot, request) {
        Err(e) => findings.push(Finding::new(
            Severity::Error,
            "plan",
            "no cluster can be planned with these settings",
            e.message(),
            Message::from("change the settings as the message above says, then check with ").call(Call::Plan),
        )),
        Ok(p) => {
            findings.extend(p.findings.iter().cloned());
            let mig_workers = p.workers.iter().filter(|w| w.kind == WorkerKind::Mig).count();
            if mig_workers > 0 {
                nccl_finding(mig_workers, &mut findings);
                if let Some(tls) = env.ucx_tls.as_deref()
                    && ucx_allows_cuda_ipc(tls)
                {
                    findings.push(Finding::new(
                        Severity::Warning,
                        "ucx-cuda-ipc-on-mig",
                        format!("UCX_TLS={tls} lets UCX use cuda_ipc, and {mig_workers} worker(s) are MIG instances"),
                        "CUDA IPC does not work across MIG instances: UCX probes it, fails, and falls back to a slow \
                         staged path (2 GB/s on an H100 against 49 GB/s through pinned host memory)",
                        "leave cuda_ipc out (UCX_TLS=^cuda_ipc, as gpucluster sets for MIG workers) or unset UCX_TLS",
                    ));
                }
            }
            // Whole-GPU workers by host, gathered once: a plan may span thousands of hosts.
            let mut whole_gpus: HashMap<&str, Vec<u32>> = HashMap::new();
            for w in p.workers.iter().filter(|w| w.kind == WorkerKind::Gpu) {
                let gpus = whole_gpus.entry(w.host.as_str()).or_default();
                if gpus.last() != Some(&w.gpu_index) {
                    gpus.push(w.gpu_index);
                }
            }
            for host in &snapshot.hosts {
                if host.peers.is_empty() {
                    continue;
                }
                let Some(gpus) = whole_gpus.get(host.hostname.as_str()) else { continue };
                let p2p = |x, y| host.peer(x, y).is_some_and(|l| l.p2p.is_ok());
                for (i, &a) in gpus.iter().enumerate() {
                    for &b in &gpus[i + 1..] {
                        if !(p2p(a, b) && p2p(b, a)) {
                            findings.push(Finding::new(
                                Severity::Info,
                                "no-p2p",
                                format!(
                                    "GPUs {a} and {b} of host {} cannot reach each other peer-to-peer",
                                    host.hostname
                                ),
                                "CUDA IPC between them is unavailable, so their workers exchange data through pinned \
                                 host memory",
                                "nothing to do unless P2P is expected (check `nvidia-smi topo -p2p r`)",
                            ));
                        }
                    }
                }
            }
        }
    }

    if let Some(text) = env.cuda_visible_devices.as_deref()
        && request.devices.as_ref().is_none_or(|(_, from)| *from == SpecSource::Environment)
    {
        visible_devices_findings(snapshot, text, &mut findings);
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings
}

fn machine_findings(snapshot: &Snapshot, findings: &mut Vec<Finding>) {
    for host in &snapshot.hosts {
        for gpu in &host.gpus {
            if gpu.mig_enabled && gpu.mig_instances.is_empty() {
                findings.push(Finding::new(
                    Severity::Warning,
                    "mig-enabled-without-instances",
                    format!("GPU {} of host {} has MIG enabled but no MIG instances", gpu.index, host.hostname),
                    "a MIG-enabled GPU is not a compute device itself, so this GPU runs no worker at all",
                    format!(
                        "create instances (`nvidia-smi mig -i {} -cgi <profiles> -C`) or disable MIG (`nvidia-smi -i {} -mig 0`)",
                        gpu.index, gpu.index
                    ),
                ));
            }
            if let Some(pending) = gpu.mig_pending {
                findings.push(Finding::new(
                    Severity::Warning,
                    "mig-mode-pending",
                    format!(
                        "GPU {} of host {}: MIG mode is {} now and becomes {} at the next GPU reset",
                        gpu.index,
                        host.hostname,
                        if gpu.mig_enabled { "enabled" } else { "disabled" },
                        if pending { "enabled" } else { "disabled" }
                    ),
                    "the devices planned now disappear when the GPU is reset (or the machine reboots)",
                    format!(
                        "reset the GPU when it is idle (`nvidia-smi -i {} -r`) before planning a cluster",
                        gpu.index
                    ),
                ));
            }
            if gpu.mig_enabled && gpu.memory_bytes.is_none() {
                findings.push(Finding::new(
                    Severity::Info,
                    "parent-memory-hidden",
                    format!("GPU {} of host {} does not report its memory (no permission)", gpu.index, host.hostname),
                    "this is usual for MIG inside a container; Dask-CUDA fails here because it reads the parent GPU",
                    "nothing to do: gpucluster takes each worker's memory from its own MIG instance",
                ));
            }
        }
        let legacy =
            host.gpus.iter().flat_map(|g| &g.mig_instances).any(|m| matches!(m.uuid, DeviceId::LegacyMig { .. }));
        let old_driver = host.driver_version.as_deref().is_some_and(gpu_topology::driver_uses_legacy_mig_names);
        if legacy || old_driver {
            findings.push(Finding::new(
                Severity::Warning,
                "legacy-mig-names",
                format!(
                    "host {} runs driver {}, which names MIG devices MIG-GPU-<uuid>/<gi>/<ci>",
                    host.hostname,
                    host.driver_version.as_deref().unwrap_or("older than R470")
                ),
                "legacy names contain `/`, which breaks tools that put worker names in file names, and some \
                 libraries accept only MIG-<uuid>",
                "upgrade the driver to R470 (470.42.01) or later",
            ));
        }
    }
}

fn nccl_finding(mig_workers: usize, findings: &mut Vec<Finding>) {
    findings.push(Finding::new(
        Severity::Info,
        "nccl-on-mig",
        format!("{mig_workers} worker(s) are MIG instances: NCCL, and so XGBoost on Dask, is limited there"),
        "NCCL does not support MIG before 2.32; from 2.32 support is experimental (shared memory between instances, \
         no P2P or NVLink) and needs NCCL_MULTI_RANK_GPU_ENABLE=1 when ranks share a parent GPU, which gpucluster \
         sets; XGBoost refuses ranks whose devices share a parent GPU (xgboost #8951)",
        "prefer TCP-based communication (Dask's own comms, gpucluster's host-staged transport) on MIG workers",
    ));
}

fn ucx_allows_cuda_ipc(tls: &str) -> bool {
    let tls = tls.trim();
    if let Some(excluded) = tls.strip_prefix('^') {
        return !excluded.split(',').any(|t| t.trim() == "cuda_ipc" || t.trim() == "cuda");
    }
    tls.split(',').any(|t| matches!(t.trim(), "cuda_ipc" | "all" | "cuda"))
}

fn visible_devices_findings(snapshot: &Snapshot, text: &str, findings: &mut Vec<Finding>) {
    let Ok(spec) = text.parse::<DeviceSpec>() else { return };
    let Ok(devices) = spec::resolve(&spec, snapshot) else { return };
    let mig: Vec<_> = devices.iter().filter(|d| d.mig.is_some()).collect();
    if mig.len() > 1 {
        findings.push(Finding::new(
            Severity::Warning,
            "several-mig-visible",
            format!("CUDA_VISIBLE_DEVICES names {} MIG devices", mig.len()),
            "one CUDA process enumerates only one MIG device on drivers before R570 (the first it can use), and at \
             most one compute instance per GPU instance from R570 on; a program started with this list silently \
             uses fewer devices than it names",
            Message::from("give each process exactly one MIG device: ")
                .call(Call::Up)
                .text(" and ")
                .call(Call::Dask)
                .text(" do this for every worker"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ucx_tls_reading() {
        assert!(ucx_allows_cuda_ipc("tcp,cuda_copy,cuda_ipc"));
        assert!(ucx_allows_cuda_ipc("all"));
        assert!(ucx_allows_cuda_ipc("^sm"));
        assert!(!ucx_allows_cuda_ipc("^cuda_ipc"));
        assert!(!ucx_allows_cuda_ipc("tcp,cuda_copy"));
    }
}
