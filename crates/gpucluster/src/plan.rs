//! `gpucluster plan`: the plan from `cluster-core` joined with the transport paths, as a table or
//! JSON.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use cluster_core::{Plan, PlanRequest, WorkerPlan};
use gpu_topology::{HostTopology, Snapshot};
use serde::Serialize;
use transport::{Endpoint, Path, PathRule, choose_path};

use crate::list::gib;
use crate::table::{Table, escape};

/// The path between two workers (or, across hosts, between any two workers on different hosts).
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
///
/// Paths are not stored: a plan lists one for every pair of workers on a host (a million pairs
/// for the largest hosts allowed), so they are chosen as they are written, one at a time, and
/// kept only for the callers that ask for them all ([`PlanOutput::paths`], one host at a time).
#[derive(Debug, Serialize)]
pub(crate) struct PlanOutput<'p> {
    #[serde(flatten)]
    plan: &'p Plan,
    paths: Paths<'p>,
    #[serde(skip)]
    all: OnceCell<Vec<PathEntry>>,
}

/// The workers of each host with their endpoints, hosts in plan order.
#[derive(Debug)]
struct Paths<'p> {
    by_host: Vec<(&'p str, Vec<(&'p WorkerPlan, Endpoint<'p>)>)>,
}

fn endpoint<'s>(hosts: &HashMap<&str, &'s HostTopology>, w: &WorkerPlan) -> Option<Endpoint<'s>> {
    let host = *hosts.get(w.host.as_str())?;
    let gpu = match host.gpus.get(w.gpu_index as usize) {
        Some(g) if g.index == w.gpu_index => g,
        _ => host.gpus.iter().find(|g| g.index == w.gpu_index)?,
    };
    let mig = match w.kind {
        cluster_core::DeviceKind::Mig => Some(gpu.mig_instances.iter().find(|m| m.uuid.to_string() == w.device_uuid)?),
        cluster_core::DeviceKind::Gpu => None,
    };
    Some(Endpoint { host, gpu, mig })
}

impl<'p> Paths<'p> {
    /// Every pair of workers on one host, then one entry for all pairs across hosts (they all
    /// take the same path, and listing each pair of hosts would be quadratic in the cluster).
    fn entries(&self) -> impl Iterator<Item = PathEntry> + '_ {
        let within = self.by_host.iter().flat_map(|(_, workers)| {
            workers.iter().enumerate().flat_map(move |(i, (a, ea))| {
                workers[i + 1..].iter().map(move |(b, eb)| {
                    let c = choose_path(*ea, *eb);
                    PathEntry { from: a.name.clone(), to: b.name.clone(), path: c.path, rule: c.rule, reason: c.reason }
                })
            })
        });
        let across = match self.by_host.as_slice() {
            [(_, a), (_, b), ..] => {
                let c = choose_path(a[0].1, b[0].1);
                Some(PathEntry {
                    from: "*".to_owned(),
                    to: "*".to_owned(),
                    path: c.path,
                    rule: c.rule,
                    reason: format!(
                        "any two workers on different hosts ({} hosts) take this path; for example, {}",
                        self.by_host.len(),
                        c.reason
                    ),
                })
            }
            _ => None,
        };
        within.chain(across)
    }

    /// Pairs of workers in all: on each host, and across hosts.
    fn pairs(&self) -> (u64, u64) {
        let sizes: Vec<u64> = self.by_host.iter().map(|(_, w)| w.len() as u64).collect();
        let within: u64 = sizes.iter().map(|n| n * n.saturating_sub(1) / 2).sum();
        let all: u64 = sizes.iter().sum();
        let across = (all * all - sizes.iter().map(|n| n * n).sum::<u64>()) / 2;
        (within, across)
    }
}

impl Serialize for Paths<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.entries())
    }
}

impl<'p> PlanOutput<'p> {
    /// Every path, chosen once and kept. For one host's workers (`up`, `dask`); `plan` writes
    /// paths without keeping them.
    pub(crate) fn paths(&self) -> &[PathEntry] {
        self.all.get_or_init(|| self.paths.entries().collect())
    }

    pub(crate) fn new(snapshot: &'p Snapshot, plan: &'p Plan) -> Self {
        let hosts: HashMap<&str, &HostTopology> = snapshot.hosts.iter().map(|h| (h.hostname.as_str(), h)).collect();
        let mut by_host: Vec<(&str, Vec<(&WorkerPlan, Endpoint<'_>)>)> = Vec::new();
        for w in &plan.workers {
            let Some(e) = endpoint(&hosts, w) else { continue };
            match by_host.last_mut() {
                Some((h, list)) if *h == w.host => list.push((w, e)),
                _ => by_host.push((w.host.as_str(), vec![(w, e)])),
            }
        }
        Self { plan, paths: Paths { by_host }, all: OnceCell::new() }
    }
}

/// `value` as pretty JSON and a newline, through a buffer: standard output flushes at every
/// newline, and a plan's JSON has millions of lines.
pub(crate) fn write_json(value: &impl Serialize, out: &mut dyn Write) -> io::Result<()> {
    let mut buffered = io::BufWriter::with_capacity(1 << 16, out);
    serde_json::to_writer_pretty(&mut buffered, value)?;
    writeln!(buffered)?;
    buffered.flush()
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
        escape(&request.device_memory_limit)
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
            writeln!(out, "  {} on {}: {}", e.uuid, escape(&e.host), escape(&e.reason))?;
        }
    }

    let (within, across) = output.paths.pairs();
    if across == 0 {
        writeln!(out, "\npaths ({within} pair(s) of workers; every pair is in --json):")?;
    } else {
        writeln!(
            out,
            "\npaths ({} pair(s) of workers; --json lists every pair on a host, and one entry for all pairs across \
             hosts):",
            within + across
        )?;
    }
    // Counted as they are chosen: a plan may have millions of pairs, and only one example of
    // each kind is printed.
    let mut groups: BTreeMap<(Path, PathRule), (u64, PathEntry)> = BTreeMap::new();
    for p in output.paths.entries() {
        let pairs = if p.from == "*" { across } else { 1 };
        groups.entry((p.path, p.rule)).or_insert((0, p)).0 += pairs;
    }
    let mut t = Table::default();
    for ((path, _), (count, example)) in &groups {
        t.row(vec![
            path.name().to_owned(),
            format!("{count}"),
            format!("e.g. {} - {}: {}", escape(&example.from), escape(&example.to), escape(&example.reason)),
        ]);
    }
    if groups.is_empty() {
        writeln!(out, "  none: a single worker")?;
    }
    t.write(out, "  ")?;

    if let Some(first) = plan.workers.first() {
        writeln!(out, "\nenvironment of {} (every worker's is in --json):", escape(&first.name))?;
        for (k, v) in &first.env() {
            writeln!(out, "  {k}={}", escape(v))?;
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
