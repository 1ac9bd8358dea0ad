//! `gpucluster list`: the snapshot as a readable table, and the preset catalogue.

use std::io::{self, Write};

use gpu_topology::sim::PRESETS;
use gpu_topology::units::gib;
use gpu_topology::{HostTopology, PhysicalGpu, Snapshot, TopologySpec};

use crate::table::{Table, escape};

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The built-in simulated machines, as a table or (`--json`) as
/// `{"presets": [{"name", "topology", "description"}]}`.
pub(crate) fn presets(json: bool, out: &mut dyn Write) -> io::Result<()> {
    if json {
        #[derive(serde::Serialize)]
        struct Preset {
            name: &'static str,
            topology: String,
            description: String,
        }
        #[derive(serde::Serialize)]
        struct Presets {
            presets: Vec<Preset>,
        }
        let presets = PRESETS
            .iter()
            .map(|p| Preset { name: p.name, topology: format!("sim:{}", p.name), description: p.description() })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &Presets { presets })?;
        return writeln!(out);
    }
    let mut t = Table::new(["PRESET", "MACHINE"]);
    for p in PRESETS {
        t.row(vec![format!("sim:{}", p.name), p.description()]);
    }
    t.write(out, "")
}

pub(crate) fn table(snapshot: &Snapshot, spec: &TopologySpec, out: &mut dyn Write) -> io::Result<()> {
    for (i, host) in snapshot.hosts.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        host_table(host, spec, out)?;
    }
    Ok(())
}

fn compute_device(gpu: &PhysicalGpu) -> String {
    if gpu.is_compute_device() {
        return "yes".into();
    }
    match gpu.compute_devices().count() {
        0 => "no: MIG enabled with no instances".into(),
        n => format!("no: MIG enabled, its {n} instance(s) are the compute devices"),
    }
}

fn host_table(host: &HostTopology, spec: &TopologySpec, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "host {}  driver {}  source {}",
        escape(&host.hostname),
        escape(host.driver_version.as_deref().unwrap_or("unknown")),
        escape(&spec.to_string())
    )?;
    let mut t = Table::new(["GPU", "DEVICE", "NAME / PROFILE", "MEMORY", "SMS", "GI", "CI", "COMPUTE DEVICE"]);
    for gpu in &host.gpus {
        t.row(vec![
            gpu.index.to_string(),
            gpu.uuid.to_string(),
            gpu.name.clone(),
            gpu.memory_bytes.map_or_else(|| "unknown".to_owned(), gib),
            opt(gpu.sm_count),
            "-".into(),
            "-".into(),
            compute_device(gpu),
        ]);
        for m in &gpu.mig_instances {
            t.row(vec![
                format!("{}:{}", gpu.index, opt(m.slot)),
                m.uuid.to_string(),
                format!("  {}", m.profile),
                gib(m.memory_bytes),
                opt(m.sm_count),
                opt(m.gpu_instance_id),
                opt(m.compute_instance_id),
                "yes".into(),
            ]);
        }
    }
    t.write(out, "")?;

    let notes: Vec<String> = host
        .gpus
        .iter()
        .filter_map(|g| {
            let pending = g.mig_pending?;
            Some(format!(
                "GPU {}: MIG mode becomes {} at the next GPU reset",
                g.index,
                if pending { "enabled" } else { "disabled" }
            ))
        })
        .collect();
    for note in notes {
        writeln!(out, "note: {note}")?;
    }
    if host.gpus.len() > 1 {
        if host.peers.is_empty() {
            writeln!(out, "\npeers: not reported by this source")?;
        } else {
            peer_matrix(host, out)?;
        }
    }
    Ok(())
}

/// The peer matrix in the shape of `nvidia-smi topo -m`, with `*` where P2P works.
fn peer_matrix(host: &HostTopology, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out)?;
    writeln!(out, "peers:")?;
    let mut header = vec![String::new()];
    header.extend(host.gpus.iter().map(|g| format!("GPU{}", g.index)));
    let mut t = Table::default();
    t.row(header);
    for a in &host.gpus {
        let mut row = vec![format!("GPU{}", a.index)];
        for b in &host.gpus {
            row.push(if a.index == b.index {
                "X".to_owned()
            } else {
                match host.peer(a.index, b.index) {
                    None => "?".to_owned(),
                    Some(link) => {
                        let kind = match (link.nvlink, link.nvlink_count) {
                            (true, Some(n)) if n > 0 => format!("NV{n}"),
                            (true, _) => "NVS".to_owned(),
                            (false, _) => link.pcie.map_or("?", |l| l.smi_code()).to_owned(),
                        };
                        if link.p2p.is_ok() { format!("{kind}*") } else { kind }
                    }
                }
            });
        }
        t.row(row);
    }
    t.write(out, "  ")?;
    writeln!(
        out,
        "  NV#: # direct NVLinks  NVS: NVLink through NVSwitch  PIX/PXB/PHB/NODE/SYS: PCIe path as in \
         `nvidia-smi topo -m`  *: peer-to-peer access works"
    )
}
