//! `gpucluster plan`: the plan from `cluster-core` with its transport paths (joined in
//! `launcher::plan_paths`), as a table or JSON.

use std::collections::BTreeMap;
use std::io::{self, Write};

use cluster_core::PlanRequest;
use gpu_topology::units::gib;
pub(crate) use launcher::plan_paths::{PathEntry, PlanOutput};
use serde::Serialize;
use transport::{PathRule, TransferPath};

use crate::table::{Table, escape};

/// `value` as pretty JSON and a newline, through a buffer: standard output flushes at every
/// newline, and a plan's JSON has millions of lines.
pub(crate) fn write_json(value: &impl Serialize, out: &mut dyn Write) -> io::Result<()> {
    let mut buffered = io::BufWriter::with_capacity(1 << 16, out);
    serde_json::to_writer_pretty(&mut buffered, value)?;
    writeln!(buffered)?;
    buffered.flush()
}

/// The plan a launcher chose, as events: a line at info (`-v`), each worker and each device left
/// out at debug (`-vv`; a plan may have thousands), and its warnings as warnings.
pub(crate) fn log(output: &PlanOutput<'_>) {
    let plan = output.plan();
    let mut paths: BTreeMap<&str, usize> = BTreeMap::new();
    for p in output.paths() {
        *paths.entry(p.path.name()).or_default() += 1;
    }
    tracing::info!(
        "plan: {} worker(s), policy {}, {} device(s) left out; paths: {}",
        plan.workers.len(),
        plan.policy,
        plan.excluded.len(),
        if paths.is_empty() {
            "none (one worker)".to_owned()
        } else {
            paths.iter().map(|(path, n)| format!("{n} pair(s) {path}")).collect::<Vec<_>>().join(", ")
        }
    );
    for w in &plan.workers {
        tracing::debug!(
            "worker {}: {} on host {}, memory limit {}, env {:?}",
            w.name,
            w.device_uuid,
            escape(&w.host),
            w.device_memory_limit_bytes.map_or_else(|| "none".to_owned(), gib),
            w.env()
        );
    }
    for e in &plan.excluded {
        tracing::debug!("left out: {} of host {}: {}", e.uuid, escape(&e.host), escape(&e.reason.to_string()));
    }
    // What `plan` shows as warnings, `up` and `dask` say too: a mix kept by `--policy warn`,
    // limits so small every array spills.
    for f in plan.findings.iter().filter(|f| f.severity >= cluster_core::Severity::Warning) {
        tracing::warn!("{}; {}", escape(&f.message.to_string()), escape(&f.fix.to_string()));
    }
}

/// Devices left out with the same reason on the same host, as one line: one device chosen with
/// `--devices` on a 56-instance machine leaves 55 out for one reason. `--json` lists each.
fn excluded(excluded: &[cluster_core::Excluded], out: &mut dyn Write) -> io::Result<()> {
    /// UUIDs named per group before "and N more".
    const NAMED: usize = 3;
    let mut groups: Vec<(&str, &cluster_core::wording::Message, Vec<String>)> = Vec::new();
    for e in excluded {
        match groups.iter_mut().find(|(host, reason, _)| *host == e.host && **reason == e.reason) {
            Some(group) => group.2.push(e.uuid.to_string()),
            None => groups.push((&e.host, &e.reason, vec![e.uuid.to_string()])),
        }
    }
    let more = if groups.len() < excluded.len() { "; each one in --json" } else { "" };
    writeln!(out, "\nexcluded ({} device(s){more}):", excluded.len())?;
    for (host, reason, uuids) in groups {
        let reason = reason.to_string();
        let (host, reason) = (escape(host), escape(&reason));
        match uuids.as_slice() {
            [one] => writeln!(out, "  {one} on {host}: {reason}")?,
            many => {
                let named = many.iter().take(NAMED).cloned().collect::<Vec<_>>().join(", ");
                let rest = many.len().saturating_sub(NAMED);
                let rest = if rest > 0 { format!(" and {rest} more") } else { String::new() };
                writeln!(out, "  {} device(s) on {host}: {reason}: {named}{rest}", many.len())?;
            }
        }
    }
    Ok(())
}

pub(crate) fn table(output: &PlanOutput<'_>, request: &PlanRequest, out: &mut dyn Write) -> io::Result<()> {
    let plan = output.plan();
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
            w.device_uuid.to_string(),
            match w.kind {
                cluster_core::WorkerKind::Gpu => "gpu".into(),
                cluster_core::WorkerKind::Mig => "mig".into(),
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
        excluded(&plan.excluded, out)?;
    }

    let (within, across) = output.pairs();
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
    let mut groups: BTreeMap<(TransferPath, PathRule), (u64, PathEntry)> = BTreeMap::new();
    for p in output.entries() {
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
