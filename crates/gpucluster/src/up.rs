//! `gpucluster up`: the plan's workers as processes, and the cluster's matrix.

use std::io::Write;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use gpu_topology::{Snapshot, TopologySpec};
use launcher::{Job, Supervision};
use transport::device::DeviceKind;

use crate::args::SelectionArgs;
use crate::table::Table;

pub(crate) struct Options {
    pub(crate) restart: launcher::RestartFlag,
    pub(crate) max_restarts: u32,
    pub(crate) grace: f64,
    pub(crate) time_limit: Option<f64>,
    pub(crate) command: Vec<std::ffi::OsString>,
}

/// Device memory for the workers: real GPUs only when the topology is this machine, read through
/// NVML; any description (`sim:`, `file:`, `smi:`, `--inventory`) runs on simulated memory.
fn memory_for(spec: &TopologySpec, selection: &SelectionArgs) -> DeviceKind {
    if spec.is_real() && !selection.uses_inventories() { DeviceKind::Cuda } else { DeviceKind::Simulated }
}

pub(crate) async fn run(
    spec: &TopologySpec,
    snapshot: Snapshot,
    selection: &SelectionArgs,
    options: Options,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    // Watched before anything starts: a signal during set-up stops the job as soon as it runs.
    let mut signals = launcher::Signals::install()?;
    if snapshot.hosts.len() > 1 {
        anyhow::bail!(
            "`up` runs the workers of one host; for several hosts, run `gpucluster dask worker` (or `up`) on each"
        );
    }
    let builtin = options.command.is_empty();
    if let Some(program) = options.command.first() {
        check_program(program)?;
    }
    let this_program = std::env::current_exe().context("finding this program to start the workers")?;
    let mut supervision = Supervision::from_flags(options.grace, options.restart, options.max_restarts)?;
    supervision.guard = Some(this_program.clone().into());
    supervision.time_limit = options.time_limit.map(std::time::Duration::from_secs_f64);
    let plan = cluster_core::plan(&snapshot, &selection.request())?;
    let output = crate::plan::PlanOutput::new(&snapshot, &plan);
    crate::plan::log(&output);
    let paths = output.paths_by_rank();
    let memory = memory_for(spec, selection);
    writeln!(
        out,
        "up: {} worker(s) on {}, {}; {}",
        plan.workers.len(),
        crate::table::escape(&snapshot.hosts[0].hostname),
        match memory {
            DeviceKind::Cuda => "GPU memory through CUDA",
            DeviceKind::Simulated => "simulated device memory (figures measure the protocol, not hardware)",
        },
        if builtin {
            "built-in worker: device check and transfers to peers".to_owned()
        } else {
            format!("running {:?}", options.command)
        }
    )?;
    out.flush()?;
    tracing::info!(
        "starting {} worker process(es){}; {}, grace {} s",
        plan.workers.len(),
        if builtin { " (the built-in worker)".to_owned() } else { format!(" running {:?}", options.command) },
        match options.restart {
            launcher::RestartFlag::Never => "no restarts".to_owned(),
            launcher::RestartFlag::OnFailure => format!("restarts on failure, at most {}", options.max_restarts),
        },
        options.grace
    );
    let job = Job {
        workers: plan.workers.clone(),
        paths,
        memory,
        command: (!builtin).then_some(options.command),
        program: this_program.into(),
        supervision,
    };
    let sink: launcher::Sink = Arc::new(Mutex::new(std::io::stdout()));
    let report = launcher::up(job, sink, &mut signals).await?;
    let status = match &report.stop {
        Some(stop) => stop.exit_status().unwrap_or(1),
        None if report.success() => 0,
        None => 1,
    };
    // Only the built-in worker is bound to join the rendezvous; a command's workers may never.
    match report.ready_after {
        Some(after) if builtin => {
            tracing::info!("ready: every worker joined the rendezvous after {:.2} s", after.as_secs_f64())
        }
        None if builtin => tracing::info!("not every worker joined the rendezvous"),
        _ => {}
    }
    tracing::info!("the job ended after {:.2} s, exit status {status}", report.total.as_secs_f64());
    // The summary is best effort: after SIGHUP the terminal may be gone, and the exit status
    // must still say what happened.
    let _ = summary(&report, &plan, builtin, out);
    Ok(status)
}

/// Refuses a worker command that cannot start, before any worker does.
fn check_program(program: &std::ffi::OsStr) -> anyhow::Result<()> {
    let path = std::path::Path::new(program);
    let found = if path.components().count() > 1 {
        path.is_file()
    } else {
        std::env::var_os("PATH").is_some_and(|dirs| std::env::split_paths(&dirs).any(|d| d.join(path).is_file()))
    };
    if !found {
        anyhow::bail!(
            "cannot run the worker command {:?}: no such program{}",
            program,
            if path.components().count() > 1 { "" } else { " on PATH" }
        );
    }
    Ok(())
}

fn summary(
    report: &launcher::UpReport,
    plan: &cluster_core::Plan,
    builtin: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if builtin && !report.checks.is_empty() {
        writeln!(out, "\ndevices:")?;
        for c in &report.checks {
            let w = &plan.workers[c.rank];
            writeln!(
                out,
                "  {}  {}{}  {}: {} written, copied on the device and read back intact",
                w.name,
                w.device_uuid,
                w.profile.as_deref().map_or(String::new(), |p| format!(" ({p})")),
                c.device,
                gpu_topology::units::human_size(c.bytes as u64)
            )?;
        }
    }
    if builtin && !report.pairs.is_empty() {
        writeln!(out, "\nmatrix ({} pair(s)):", report.pairs.len())?;
        let mut t = Table::new(["FROM", "TO", "PATH", "GB/S", "LAT US", "NOTE"]);
        for p in &report.pairs {
            t.row(vec![
                report.names[p.from].clone(),
                report.names[p.to].clone(),
                p.path.name().to_owned(),
                format!("{:.2}", p.gbps),
                format!("{:.1}", p.latency_us),
                p.fallback.clone().unwrap_or_else(|| {
                    if p.path == p.planned { String::new() } else { format!("planned {}", p.planned.name()) }
                }),
            ]);
        }
        t.write(out, "  ")?;
    }
    for f in &report.failures {
        writeln!(out, "failure: {}", crate::table::escape(f))?;
    }
    if report.refused.count > 0 {
        writeln!(
            out,
            "note: refused {} connection(s) to the rendezvous that did not hold the job's secret (first: {}); \
             they had no part in the job",
            report.refused.count,
            crate::table::escape(report.refused.reasons.first().map_or("", String::as_str))
        )?;
    }
    if let Some(stop) = &report.stop {
        writeln!(out, "\nstopped: {stop}")?;
    }
    let ok = report.outcomes.iter().filter(|o| o.exit.success()).count();
    writeln!(
        out,
        "\nsummary: {} worker(s), {ok} ended well{}; {}done after {:.2} s",
        report.outcomes.len(),
        if ok == report.outcomes.len() { String::new() } else { format!(", {} did not", report.outcomes.len() - ok) },
        report
            .ready_after
            .filter(|_| builtin)
            .map_or(String::new(), |d| format!("all ready after {:.2} s, ", d.as_secs_f64())),
        report.total.as_secs_f64()
    )?;
    outcomes(report, out)
}

/// The worker that stopped the job, with its last words; then the others that did not end well,
/// grouped by how they ended when there are many.
fn outcomes(report: &launcher::UpReport, out: &mut dyn Write) -> std::io::Result<()> {
    // The one whose failure stopped the job; or, when it was the last one running (nothing left
    // to stop), the first that failed.
    let culprit = match &report.stop {
        Some(launcher::Stop::Failed { name, .. }) => Some(name.as_str()),
        None => report.outcomes.iter().find(|o| !o.exit.success()).map(|o| o.name.as_str()),
        _ => None,
    };
    let mut others: Vec<&launcher::Outcome> = Vec::new();
    for o in report.outcomes.iter().filter(|o| !o.exit.success() || o.restarts > 0) {
        if Some(o.name.as_str()) == culprit {
            writeln!(out, "  {o}")?;
            for line in o.cause_lines() {
                writeln!(out, "    | {}", crate::table::escape(line))?;
            }
        } else {
            others.push(o);
        }
    }
    if others.len() <= 8 {
        for o in others {
            writeln!(out, "  {o}")?;
        }
        return Ok(());
    }
    let mut groups: Vec<(String, usize)> = Vec::new();
    for o in others {
        let how = format!("{}{}", o.exit, if o.restarts > 0 { ", after restarts" } else { "" });
        match groups.iter_mut().find(|(h, _)| *h == how) {
            Some((_, n)) => *n += 1,
            None => groups.push((how, 1)),
        }
    }
    for (how, n) in groups {
        writeln!(out, "  {n} other worker(s): {how}")?;
    }
    Ok(())
}
