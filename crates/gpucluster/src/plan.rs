//! `gpucluster plan`: the plan from `cluster-core` joined with the transport paths, as a table or
//! JSON.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use cluster_core::{Plan, PlanRequest, WorkerPlan};
use gpu_topology::{HostTopology, Snapshot};
use serde::Serialize;
use transport::{Endpoint, Path, PathRule, choose_path};

use crate::list::gib;
use crate::table::Table;

/// The path between two workers (or, across hosts, between all workers of two hosts).
#[derive(Debug, Serialize)]
pub(crate) struct PathEntry {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) path: Path,
    rule: PathRule,
    reason: String,
}

impl PathEntry {
    pub(crate) fn rule(&self) -> PathRule {
        self.rule
    }
}

/// What `plan --json` prints: the plan's keys, then `paths`.
#[derive(Debug, Serialize)]
pub(crate) struct PlanOutput<'p> {
    #[serde(flatten)]
    plan: &'p Plan,
    paths: Vec<PathEntry>,
}

fn endpoint<'s>(hosts: &HashMap<&str, &'s HostTopology>, w: &WorkerPlan) -> Option<Endpoint<'s>> {
    let host = *hosts.get(w.host.as_str())?;
    let gpu = host.gpus.iter().find(|g| g.index == w.gpu_index)?;
    let mig = match w.kind {
        cluster_core::DeviceKind::Mig => Some(gpu.mig_instances.iter().find(|m| m.uuid.to_string() == w.device_uuid)?),
        cluster_core::DeviceKind::Gpu => None,
    };
    Some(Endpoint { host, gpu, mig })
}

impl<'p> PlanOutput<'p> {
    pub(crate) fn paths(&self) -> &[PathEntry] {
        &self.paths
    }

    /// Paths for every pair of workers on one host, and one entry per pair of hosts (every
    /// pair of workers on two hosts takes the same path, and listing each would be quadratic in
    /// the cluster's size).
    pub(crate) fn new(snapshot: &Snapshot, plan: &'p Plan) -> Self {
        let hosts: HashMap<&str, &HostTopology> = snapshot.hosts.iter().map(|h| (h.hostname.as_str(), h)).collect();
        let mut by_host: Vec<(&str, Vec<(&WorkerPlan, Endpoint<'_>)>)> = Vec::new();
        for w in &plan.workers {
            let Some(e) = endpoint(&hosts, w) else { continue };
            match by_host.last_mut() {
                Some((h, list)) if *h == w.host => list.push((w, e)),
                _ => by_host.push((w.host.as_str(), vec![(w, e)])),
            }
        }
        let mut paths = Vec::new();
        for (_, workers) in &by_host {
            for (i, (a, ea)) in workers.iter().enumerate() {
                for (b, eb) in &workers[i + 1..] {
                    let c = choose_path(*ea, *eb);
                    paths.push(PathEntry {
                        from: a.name.clone(),
                        to: b.name.clone(),
                        path: c.path,
                        rule: c.rule,
                        reason: c.reason,
                    });
                }
            }
        }
        for (i, (ha, wa)) in by_host.iter().enumerate() {
            for (hb, wb) in &by_host[i + 1..] {
                let c = choose_path(wa[0].1, wb[0].1);
                paths.push(PathEntry {
                    from: format!("{ha}/*"),
                    to: format!("{hb}/*"),
                    path: c.path,
                    rule: c.rule,
                    reason: c.reason,
                });
            }
        }
        Self { plan, paths }
    }
}

pub(crate) fn table(output: &PlanOutput<'_>, request: &PlanRequest, out: &mut dyn Write) -> io::Result<()> {
    let plan = output.plan;
    let mut hosts: Vec<&str> = plan.workers.iter().map(|w| w.host.as_str()).collect();
    hosts.dedup();
    writeln!(
        out,
        "plan: {} worker(s) on {} host(s); policy {}, memory tolerance {}%, device memory limit {}",
        plan.workers.len(),
        hosts.len(),
        plan.policy,
        request.memory_tolerance_pct,
        request.device_memory_limit
    )?;
    let mut t = Table::new(["WORKER", "DEVICE", "KIND", "PROFILE", "MEMORY", "LIMIT", "SMS", "CPUS", "CLASS"]);
    for w in &plan.workers {
        t.row(vec![
            w.name.clone(),
            w.device_uuid.clone(),
            match w.kind {
                cluster_core::DeviceKind::Gpu => "gpu".into(),
                cluster_core::DeviceKind::Mig => "mig".into(),
            },
            w.profile.clone().unwrap_or_else(|| "-".into()),
            w.device_memory_bytes.map_or_else(|| "unknown".into(), gib),
            w.device_memory_limit_bytes.map_or_else(|| "none".into(), gib),
            w.sm_count.map_or_else(|| "-".into(), |s| s.to_string()),
            w.cpu_affinity.clone().unwrap_or_else(|| "-".into()),
            w.class.clone(),
        ]);
    }
    t.write(out, "")?;

    writeln!(out, "\nclasses:")?;
    let mut t = Table::default();
    for c in &plan.classes {
        t.row(vec![
            c.name.clone(),
            format!("{} device(s)", c.devices.len()),
            c.memory_bytes.map_or_else(|| "unknown memory".into(), gib),
            c.sm_count.map_or_else(|| "unknown SMs".into(), |s| format!("{s} SMs")),
            c.profiles.join("/"),
            format!("resource {}", c.resource),
        ]);
    }
    t.write(out, "  ")?;

    if !plan.excluded.is_empty() {
        writeln!(out, "\nexcluded:")?;
        for e in &plan.excluded {
            writeln!(out, "  {} on {}: {}", e.uuid, e.host, e.reason)?;
        }
    }

    writeln!(out, "\npaths ({} pair(s) of workers; every pair is in --json):", output.paths.len())?;
    let mut groups: BTreeMap<(Path, PathRule), (usize, &PathEntry)> = BTreeMap::new();
    for p in &output.paths {
        groups.entry((p.path, p.rule)).or_insert((0, p)).0 += 1;
    }
    let mut t = Table::default();
    for ((path, _), (count, example)) in &groups {
        t.row(vec![
            path.name().to_owned(),
            format!("{count}"),
            format!("e.g. {} - {}: {}", example.from, example.to, example.reason),
        ]);
    }
    if groups.is_empty() {
        writeln!(out, "  none: a single worker")?;
    }
    t.write(out, "  ")?;

    if let Some(first) = plan.workers.first() {
        writeln!(out, "\nenvironment of {} (every worker's is in --json):", first.name)?;
        for (k, v) in &first.env() {
            writeln!(out, "  {k}={v}")?;
        }
        let resources: Vec<String> = first.resources().iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "  resources: {}", resources.join(" "))?;
    }
    if !plan.findings.is_empty() {
        writeln!(out, "\nfindings:")?;
        crate::doctor::write_findings(&plan.findings, out)?;
    }
    Ok(())
}
