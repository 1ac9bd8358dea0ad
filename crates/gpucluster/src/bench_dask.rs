//! `gpucluster bench dask`: device arrays between two Dask workers, over each comm protocol;
//! the measuring is `launcher::dask_bench`'s, the table, JSON and plot are here.

use gpu_topology::units::human_size;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use gpu_topology::TopologySpec;
use launcher::dask::{self};
use launcher::dask_bench::{DaskBench, Variant, VariantResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Args)]
pub(crate) struct BenchDaskArgs {
    /// Variants to measure, comma-separated: gpucluster, gpucluster-host-staged (what MIG
    /// instances get), tcp, tls, ucx, ucx-no-ipc. Default: the gpucluster ones and tcp, and the
    /// UCX ones where distributed-ucxx is installed.
    #[arg(long, value_delimiter = ',', value_name = "VARIANTS")]
    variants: Vec<String>,
    /// Array sizes, comma-separated, with binary K, M, G units (1G = 1GiB = 2^30 bytes, unlike
    /// --device-memory-limit, where 1G is 10^9). Default: 16M,256M,1G on a GPU, 16M,64M on
    /// simulated memory.
    #[arg(long, value_parser = crate::args::size_list, value_name = "SIZES")]
    sizes: Option<crate::args::SizeList>,
    /// Timed runs per size after one warm-up; the median counts.
    #[arg(long, default_value_t = 5, value_parser = crate::args::repeats, value_name = "N")]
    repeats: usize,
    /// The Python interpreter with Dask and the gpucluster package.
    #[arg(long, env = "GPUCLUSTER_PYTHON", default_value = "python3", value_name = "PYTHON")]
    python: OsString,
    /// Skip dask-cuda's transpose_sum benchmark (run where dask-cuda is installed).
    #[arg(long)]
    no_transpose_sum: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also draw the results as an SVG plot.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Measure nothing: print the table (and --plot) of a report saved with --json.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// What `bench dask` found.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DaskReport {
    pub(crate) memory: String,
    pub(crate) workers_per_device: u32,
    pub(crate) variants: Vec<VariantResult>,
}

pub(crate) async fn run(spec: &TopologySpec, args: BenchDaskArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    if let Some(file) = &args.report {
        // Bounded, as `bench transport --report` reads: a report is a few kilobytes.
        let text = gpu_topology::text::read_text(file, 16 << 20)?;
        let report: DaskReport = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a report of `bench dask --json`", file.display()))?;
        return finish(&report, &args, out);
    }
    if let Some(file) = &args.plot {
        crate::bench::check_output(file)?;
    }
    let mut signals = launcher::Signals::install()?;
    let probe = args.python.clone();
    let python = match signals.or_blocking(move |cancel| dask::python::probe_python(&probe, cancel)).await {
        Ok(python) => python?,
        Err(signal) => return Ok(launcher::exit_status_after(signal)),
    };
    let snapshot = crate::args::load(spec).await?;
    let devices: usize = snapshot.hosts.first().map(|h| h.compute_devices().count()).unwrap_or(0);
    let real = spec.is_real();
    let names: Vec<String> = if args.variants.is_empty() {
        let mut v = vec!["gpucluster-host-staged".to_owned(), "gpucluster".to_owned(), "tcp".to_owned()];
        if python.facts.ucxx {
            v.extend(["ucx".to_owned(), "ucx-no-ipc".to_owned()]);
        }
        v
    } else {
        args.variants.clone()
    };
    let variants = names.iter().map(|n| Variant::named(n)).collect::<Result<Vec<_>, _>>()?;
    if variants.iter().any(|v| v.protocol == dask::ProtocolRequest::Gpucluster) && !python.facts.gpucluster {
        anyhow::bail!(
            "the gpucluster package is not installed for `{}`: install its wheel (`cargo xtask dask-env` makes one); \
             the benchmark's client needs it for every variant",
            python.program.to_string_lossy()
        );
    }
    let dask_cuda = python.facts.dask_cuda;
    let sizes = args
        .sizes
        .as_ref()
        .map(|s| s.0.clone())
        .unwrap_or_else(|| if real { vec![16 << 20, 256 << 20, 1 << 30] } else { vec![16 << 20, 64 << 20] });
    let bench = DaskBench {
        topology: spec.clone(),
        snapshot,
        guard: std::env::current_exe().context("finding this program to start the workers")?.into(),
        python,
        sizes: sizes.iter().map(|&s| s as u64).collect(),
        repeats: args.repeats as u32,
        array: if real { "cupy" } else { "sim" },
        workers_per_device: if devices == 1 { 2 } else { 1 },
        transpose_sum: !args.no_transpose_sum && dask_cuda && real,
    };
    let mut report = DaskReport {
        memory: if real { "GPU memory (CuPy)".into() } else { "simulated device memory".into() },
        workers_per_device: bench.workers_per_device,
        variants: Vec::new(),
    };
    let mut failed = 0;
    for variant in variants {
        // Progress on stderr, also with --json: a variant takes tens of seconds.
        tracing::info!(target: crate::logging::PROGRESS, "bench dask: {} ...", variant.name);
        match launcher::dask_bench::run_variant(&bench, &variant, &mut signals).await {
            Ok(Ok(result)) => report.variants.push(result),
            // One variant that cannot run (a protocol whose cluster never comes up, say) costs
            // neither the figures of the others nor the report: it is a note, and the exit is 1.
            Ok(Err(e)) => {
                tracing::error!("{e}");
                failed += 1;
                report.variants.push(VariantResult {
                    variant,
                    results: Vec::new(),
                    transpose_sum: Vec::new(),
                    notes: vec![format!("did not run: {}", summary(&e.to_string()))],
                });
            }
            Err(signal) => {
                tracing::warn!(
                    "bench dask interrupted ({}) during {}; nothing reported",
                    launcher::signal_name(signal),
                    crate::table::escape(&variant.name)
                );
                return Ok(launcher::exit_status_after(signal));
            }
        }
    }
    let status = finish(&report, &args, out)?;
    Ok(if failed > 0 { 1 } else { status })
}

/// An error in one line: its first line (without the command's name) and, where the cluster's
/// last lines follow, the last of them, which says why.
fn summary(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    let first = first.strip_prefix("bench dask: ").unwrap_or(first);
    let first = first.strip_suffix("; its last lines:").unwrap_or(first);
    let first = first.strip_suffix(':').unwrap_or(first);
    match lines.next_back() {
        Some(last) => format!("{first}: {}", last.strip_prefix("error: ").unwrap_or(last)),
        None => first.to_owned(),
    }
}

/// Prints the report, then draws it: a plot that cannot be written costs the figures nothing.
fn finish(report: &DaskReport, args: &BenchDaskArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    if args.json {
        serde_json::to_writer_pretty(&mut *out, report)?;
        writeln!(out)?;
    } else {
        table(report, out)?;
    }
    if let Some(file) = &args.plot {
        plot(report, file)?;
        if !args.json {
            writeln!(out, "plot: {}", crate::table::escape(&file.display().to_string()))?;
        }
    }
    Ok(0)
}

fn table(report: &DaskReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "bench dask: {}, two workers{}; GB/s from the receiving worker's transfer log (wall time in brackets)",
        crate::table::escape(&report.memory),
        if report.workers_per_device == 2 { " on the one device" } else { "" }
    )?;
    let mut t = crate::table::Table::default();
    let mut header = vec!["SIZE".to_owned()];
    header.extend(report.variants.iter().map(|v| v.variant.name.clone()));
    t.row(header);
    let mut sizes: Vec<u64> = report.variants.iter().flat_map(|v| v.results.iter().map(|m| m.bytes)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for bytes in sizes {
        let mut row = vec![human_size(bytes)];
        for v in &report.variants {
            row.push(match v.results.iter().find(|m| m.bytes == bytes) {
                Some(m) => {
                    format!("{} ({:.2})", m.log_gbps.map_or_else(|| "-".to_owned(), |g| format!("{g:.2}")), m.wall_gbps)
                }
                None => "-".into(),
            });
        }
        t.row(row);
    }
    t.write(out, "")?;
    // Text from a report file (or from dask-cuda's output) reaches the terminal escaped.
    let shown = crate::table::escape;
    for v in &report.variants {
        for note in &v.notes {
            writeln!(out, "note: {}: {}", shown(&v.variant.name), shown(note))?;
        }
        if !v.transpose_sum.is_empty() {
            writeln!(out, "\ntranspose_sum over {}:", shown(&v.variant.name))?;
            for line in &v.transpose_sum {
                writeln!(out, "  {}", shown(line))?;
            }
        }
    }
    Ok(())
}

fn plot(report: &DaskReport, file: &std::path::Path) -> anyhow::Result<()> {
    let series: Vec<crate::bench::Series> = report
        .variants
        .iter()
        .map(|v| {
            let points = v.results.iter().filter_map(|m| m.log_gbps.map(|g| (m.bytes.max(1) as f64, g))).collect();
            (v.variant.name.clone(), points, false)
        })
        .collect();
    let title = format!("Dask, a device array between two workers: {}", report.memory);
    crate::bench::plot_series(&title, "array size (bytes)", &series, file)
}
