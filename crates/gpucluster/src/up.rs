//! `gpucluster up`: the plan's workers as processes, and the cluster's matrix.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use gpu_topology::{Snapshot, TopologySpec};
use launcher::{Job, Memory, Supervision};

use crate::cli::SelectionArgs;
use crate::table::Table;

pub(crate) struct Options {
    pub(crate) restart: bool,
    pub(crate) max_restarts: u32,
    pub(crate) grace: f64,
    pub(crate) command: Vec<std::ffi::OsString>,
}

pub(crate) async fn run(
    spec: &TopologySpec,
    snapshot: Snapshot,
    selection: &SelectionArgs,
    options: Options,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    if snapshot.hosts.len() > 1 {
        anyhow::bail!(
            "`up` runs the workers of one host; for several hosts, run `gpucluster dask worker` (or `up`) on each"
        );
    }
    let supervision = Supervision::from_flags(options.grace, options.restart, options.max_restarts)?;
    let plan = cluster_core::plan(&snapshot, &selection.request())?;
    let output = crate::plan::PlanOutput::new(&snapshot, &plan);
    let paths: HashMap<(String, String), transport::Path> =
        output.paths().iter().map(|p| ((p.from.clone(), p.to.clone()), p.path)).collect();
    let memory = if spec.is_real() { Memory::Cuda } else { Memory::Simulated };
    let builtin = options.command.is_empty();
    writeln!(
        out,
        "up: {} worker(s) on {}, {}; {}",
        plan.workers.len(),
        snapshot.hosts[0].hostname,
        match memory {
            Memory::Cuda => "GPU memory through CUDA",
            Memory::Simulated => "simulated device memory",
        },
        if builtin {
            "built-in worker: device check and transfers to peers".to_owned()
        } else {
            format!("running {:?}", options.command)
        }
    )?;
    out.flush()?;
    let job = Job {
        workers: plan.workers.clone(),
        paths,
        memory,
        command: (!builtin).then_some(options.command),
        program: std::env::current_exe().context("finding this program to start the workers")?.into(),
        supervision,
    };
    let sink: launcher::Sink = Arc::new(Mutex::new(std::io::stdout()));
    let report = launcher::up(job, sink).await?;

    if builtin {
        writeln!(out, "\ndevices:")?;
        for c in &report.checks {
            writeln!(
                out,
                "  {}  {}: {} written, copied on the device and read back intact",
                report.names[c.rank],
                c.device,
                crate::bench::human(c.bytes)
            )?;
        }
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
        writeln!(out, "failure: {f}")?;
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
    for o in report.outcomes.iter().filter(|o| !o.exit.success() || o.restarts > 0) {
        writeln!(out, "  {o}")?;
    }
    Ok(if report.success() { 0 } else { 1 })
}
