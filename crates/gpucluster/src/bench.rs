//! `gpucluster bench transport`'s printing: the report as a table, as an SVG plot, and the
//! progress line while it runs; and the parsing of its message sizes.
//!
//! The run itself (the device, the peer worker, the measuring and the check of the data) is
//! `launcher::transport_bench`, which tells [`ProgressLine`] how it goes; this module draws what
//! it is told and prints the [`BenchReport`] it returns (or one saved earlier with `--json`).

use gpu_topology::units::human_size;
use std::cell::OnceCell;
use std::io::Write;

use indicatif::{ProgressBar, ProgressStyle};
use launcher::transport_bench::{BenchReport, BenchStep, D2D_CEILING, Progress, STAGED_CEILING};
use transport::TransferPath;

/// The progress line of a run on a terminal (hidden otherwise): one step per ceiling and per
/// path at each size, with what runs now.
#[derive(Debug)]
pub(crate) struct ProgressLine {
    shown: bool,
    bar: OnceCell<ProgressBar>,
}

impl ProgressLine {
    /// A line drawn on stderr if `shown`.
    pub(crate) fn new(shown: bool) -> Self {
        Self { shown, bar: OnceCell::new() }
    }
}

impl Progress for ProgressLine {
    fn begin(&self, steps: u64) {
        let bar = if self.shown { ProgressBar::new(steps) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg:40} [{bar:30}] {pos}/{len}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let _ = self.bar.set(bar);
    }

    fn step(&self, step: BenchStep) {
        let Some(bar) = self.bar.get() else { return };
        bar.set_message(match step {
            BenchStep::CeilingD2d { bytes } => format!("ceiling d2d {}", human_size(bytes as u64)),
            BenchStep::CeilingStaged { bytes } => format!("ceiling staged {}", human_size(bytes as u64)),
            BenchStep::Bandwidth { path, bytes, run, runs } => {
                format!("{} {}: bandwidth {run}/{runs}", path.name(), human_size(bytes as u64))
            }
            BenchStep::Latency { path, bytes } => format!("{} {}: latency", path.name(), human_size(bytes as u64)),
        });
    }

    fn advance(&self) {
        if let Some(bar) = self.bar.get() {
            bar.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish_and_clear();
        }
    }
}

/// The report as a table, with the ratios the quality bars name.
pub(crate) fn table(report: &BenchReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "bench transport: {}, {}, ring of {} x {}",
        report.device,
        if report.peer_thread { "peer in a thread of this process (one CUDA context)" } else { "two processes" },
        report.slots,
        human_size(report.chunk_bytes as u64)
    )?;
    if report.device.starts_with("simulated") {
        writeln!(out, "(simulated device memory: the figures measure the protocol and this host's memory, not a GPU)")?;
    }
    let mut paths: Vec<TransferPath> = report.results.iter().map(|m| m.path).collect();
    paths.dedup();
    let mut header = vec!["SIZE".to_owned()];
    for p in &paths {
        header.push(format!("{} GB/s", p.name()));
        header.push("LAT us".to_owned());
    }
    header.push("D2D CEILING".into());
    header.push("STAGED CEILING".into());
    let mut t = crate::table::Table::default();
    t.row(header);
    let mut sizes: Vec<usize> = report.results.iter().map(|m| m.bytes).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for &bytes in &sizes {
        let mut row = vec![human_size(bytes as u64)];
        for &p in &paths {
            match report.results.iter().find(|m| m.path == p && m.bytes == bytes) {
                Some(m) => {
                    row.push(format!("{:.2}", m.gbps));
                    row.push(format!("{:.1}", m.latency_us));
                }
                None => row.extend(["-".to_owned(), "-".to_owned()]),
            }
        }
        for name in [D2D_CEILING, STAGED_CEILING] {
            let c = report.ceilings.iter().find(|c| c.name == name && c.bytes == bytes);
            row.push(c.map_or("-".into(), |c| format!("{:.2}", c.gbps)));
        }
        t.row(row);
    }
    t.write(out, "")?;
    for note in &report.notes {
        writeln!(out, "note: {note}")?;
    }
    writeln!(out, "ratios (16 MiB and up): path GB/s over the same size's ceiling")?;
    for &p in &paths {
        let ceiling = if p == TransferPath::CudaIpc { D2D_CEILING } else { STAGED_CEILING };
        let ratios: Vec<String> = report
            .results
            .iter()
            .filter(|m| m.path == p && m.bytes >= 16 << 20)
            .filter_map(|m| {
                let c = report.ceilings.iter().find(|c| c.name == ceiling && c.bytes == m.bytes)?;
                Some(format!("{} {:.0}%", human_size(m.bytes as u64), 100.0 * m.gbps / c.gbps))
            })
            .collect();
        if !ratios.is_empty() {
            writeln!(out, "  {:12} vs {ceiling}: {}", p.name(), ratios.join(", "))?;
        }
    }
    Ok(())
}

/// Writes an SVG plot: GB/s against message size, one line per path and per ceiling.
pub(crate) fn plot(report: &BenchReport, file: &std::path::Path) -> anyhow::Result<()> {
    // (label, points, is a ceiling)
    let mut series: Vec<Series> = Vec::new();
    let mut paths: Vec<TransferPath> = report.results.iter().map(|m| m.path).collect();
    paths.dedup();
    for p in paths {
        let points = report.results.iter().filter(|m| m.path == p).map(|m| (m.bytes.max(1) as f64, m.gbps)).collect();
        series.push((p.name().to_owned(), points, false));
    }
    for name in [D2D_CEILING, STAGED_CEILING] {
        let points =
            report.ceilings.iter().filter(|c| c.name == name).map(|c| (c.bytes.max(1) as f64, c.gbps)).collect();
        series.push((format!("ceiling: {name}"), points, true));
    }
    plot_series(&format!("gpucluster transport: {}", report.device), "message size (bytes)", &series, file)
}

/// Checks, before anything is measured, that `file` can be written (a plot asked for at a path
/// that cannot take it would otherwise be found out only after minutes of measuring). Creates
/// the file if it is missing; never truncates one.
pub(crate) fn check_output(file: &std::path::Path) -> anyhow::Result<()> {
    let shown = || crate::table::escape(&file.display().to_string()).into_owned();
    if file.is_dir() {
        anyhow::bail!("--plot {}: is a directory; give a file name such as bench.svg", shown());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(file)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("--plot {}: cannot be written ({e})", shown()))
}

/// A line of a plot: its label, its (size, GB/s) points, and whether it is a ceiling (drawn thin).
pub(crate) type Series = (String, Vec<(f64, f64)>, bool);

/// Draws GB/s against size, both on log scales, one line per series, as SVG.
pub(crate) fn plot_series(title: &str, x_desc: &str, series: &[Series], file: &std::path::Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    // Drawn in memory, then written: plotters' file backend does not report a failed write
    // (`--plot /dev/full` said it had drawn).
    let mut svg = String::new();
    let draw = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", file.display());
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        draw_series(&root, title, x_desc, series).map_err(|e| draw(&e))?;
        root.present().map_err(|e| draw(&e))?;
    }
    std::fs::write(file, svg).map_err(|e| anyhow::anyhow!("writing the plot {}: {e}", file.display()))
}

/// The chart of [`plot_series`] on `root`.
fn draw_series<DB: plotters::prelude::DrawingBackend>(
    root: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    series: &[Series],
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;
    let draw = |e: DrawingAreaErrorKind<DB::ErrorType>| -> Box<dyn std::error::Error> { Box::new(e) };
    root.fill(&WHITE).map_err(draw)?;
    let all: Vec<f64> = series.iter().flat_map(|(_, points, _)| points.iter().map(|p| p.1)).collect();
    let top = all.iter().copied().fold(1e-3, f64::max) * 2.0;
    let bottom = all.iter().copied().filter(|v| *v > 0.0).fold(top, f64::min).max(1e-6) / 2.0;
    let sizes: Vec<f64> = series.iter().flat_map(|(_, points, _)| points.iter().map(|p| p.0.max(1.0))).collect();
    let lo = sizes.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = sizes.iter().copied().fold(0.0, f64::max);
    let (lo, hi) = if lo.is_finite() { (lo, hi * 1.5) } else { (1.0, 2.0) };
    // Ticks at the measured sizes, labelled as the table labels them (`human_size`: binary units).
    let mut keys = sizes.clone();
    keys.sort_by(f64::total_cmp);
    keys.dedup();
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale().with_key_points(keys), (bottom..top).log_scale())
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("GB/s")
        .x_label_formatter(&|v| human_size(v.round() as u64))
        .draw()
        .map_err(draw)?;
    let colours = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (label, points, dashed)) in series.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let style = if *dashed { colour.stroke_width(1) } else { colour.stroke_width(3) };
        let points: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (x, y.max(bottom))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), style))
            .map_err(draw)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(draw)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(draw)?;
    Ok(())
}
