//! A plan joined with its transport paths: what `gpucluster plan --json` prints (the plan's keys,
//! then `paths`), and what `up`, `dask` and the Python package read the paths from.
//!
//! `cluster-core` plans and `transport` chooses paths, and neither knows the other; this module
//! puts them together, as the design puts it, in the launcher. It decides nothing itself: every
//! path is [`transport::choose_path`]'s answer for the two workers' devices in the snapshot.

use std::cell::OnceCell;
use std::collections::HashMap;

use cluster_core::{Plan, WorkerPlan};
use gpu_topology::{HostTopology, Snapshot};
use serde::Serialize;
use transport::{Endpoint, PathRule, TransferPath, choose_path};

/// The path between two workers (or, across hosts, between any two workers on different hosts).
#[derive(Debug, Serialize)]
pub struct PathEntry {
    /// One worker's name (`*` for any worker, in the entry that stands for every pair across hosts).
    pub from: String,
    /// The other worker's name (`*` likewise).
    pub to: String,
    /// The path chosen.
    pub path: TransferPath,
    /// The rule that chose it.
    pub rule: PathRule,
    /// Why, in words.
    pub reason: String,
}

/// What `plan --json` prints: the plan's keys, then `paths`.
///
/// Paths are not stored: a plan lists one for every pair of workers on a host (a million pairs
/// for the largest hosts allowed), so they are chosen as they are written, one at a time, and
/// kept only for the callers that ask for them all ([`PlanOutput::paths`], one host at a time).
#[derive(Debug, Serialize)]
pub struct PlanOutput<'p> {
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
        cluster_core::WorkerKind::Mig => Some(gpu.mig_instances.iter().find(|m| m.uuid == w.device_uuid)?),
        cluster_core::WorkerKind::Gpu => None,
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
    pub fn paths(&self) -> &[PathEntry] {
        self.all.get_or_init(|| self.paths.entries().collect())
    }

    /// Every path, chosen as it is taken and not kept (a plan may have millions of pairs).
    pub fn entries(&self) -> impl Iterator<Item = PathEntry> + '_ {
        self.paths.entries()
    }

    /// Pairs of workers in all: on each host, and across hosts.
    pub fn pairs(&self) -> (u64, u64) {
        self.paths.pairs()
    }

    /// The plan.
    pub fn plan(&self) -> &'p Plan {
        self.plan
    }

    /// The path between two workers of a host, by their ranks (their places in the plan's
    /// workers), each pair once with the lower rank first: what `launcher::Job` takes.
    pub fn paths_by_rank(&self) -> std::collections::HashMap<(usize, usize), transport::TransferPath> {
        let rank: std::collections::HashMap<&str, usize> =
            self.plan.workers.iter().enumerate().map(|(i, w)| (w.name.as_str(), i)).collect();
        self.paths()
            .iter()
            .filter_map(|p| {
                let (a, b) = (*rank.get(p.from.as_str())?, *rank.get(p.to.as_str())?);
                Some(((a.min(b), a.max(b)), p.path))
            })
            .collect()
    }

    /// The plan joined with the path between every pair of its workers on a host (workers not
    /// found in `snapshot` get none).
    pub fn new(snapshot: &'p Snapshot, plan: &'p Plan) -> Self {
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
