//! `gpucluster bench transport`: bandwidth and latency of every path between two worker
//! processes, against ceilings measured in the same run.
//!
//! This process is worker A; it starts worker B (this binary, hidden subcommand
//! `transport-peer`) as an echo peer for each path. Bandwidth is one-way, as `ucx_perftest
//! tag_bw` measures it: A streams messages of S bytes to B (at least 256 MiB per repeat, at least
//! four messages), B acknowledges the last, and the median repeat counts. Latency is half the
//! median round trip of one message echoed back. The ceilings are copies inside one process on
//! the same device: device-to-device, and the pipelined device-to-host-to-device copy through
//! pinned memory that the host-staged path does across two processes. The measuring itself is
//! `transport::measure` (shared with the built-in worker of `up`); this module chooses what to
//! measure, starts the peer, and reports.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use transport::device::{self, Device, DeviceBuffer, DeviceKind};
use transport::{Address, Listener, Options, Secret, TransferPath, measure};

/// What to measure.
#[derive(Debug, Clone)]
pub(crate) struct BenchConfig {
    pub(crate) device: DeviceKind,
    pub(crate) mig: bool,
    pub(crate) sizes: Vec<usize>,
    pub(crate) repeats: usize,
    pub(crate) paths: Vec<TransferPath>,
    pub(crate) slots: usize,
    pub(crate) chunk: usize,
    pub(crate) progress: bool,
    /// Run the peer as a thread of this process (one CUDA context) instead of a second process:
    /// a diagnostic that separates the transport's own cost from the GPU's switching between
    /// two processes' contexts.
    pub(crate) peer_thread: bool,
}

const D2D: &str = "device-to-device copy";
const STAGED: &str = "pipelined host-staged copy, one process";

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Measurement {
    pub(crate) path: TransferPath,
    pub(crate) bytes: usize,
    pub(crate) gbps: f64,
    pub(crate) latency_us: f64,
    pub(crate) repeats: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Ceiling {
    pub(crate) name: String,
    pub(crate) bytes: usize,
    pub(crate) gbps: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BenchReport {
    pub(crate) device: String,
    pub(crate) peer_thread: bool,
    pub(crate) slots: usize,
    pub(crate) chunk_bytes: usize,
    pub(crate) notes: Vec<String>,
    pub(crate) results: Vec<Measurement>,
    pub(crate) ceilings: Vec<Ceiling>,
}

enum Peer {
    Process(Child),
    Thread(Option<std::thread::JoinHandle<Result<(), transport::TransportError>>>),
}

impl Peer {
    /// The peer's connection, or why it never came: a peer that ends before connecting (it
    /// could not start, open its device or reach the listener) is noticed, not waited for.
    fn connection(&mut self, listener: &Listener, path: TransferPath) -> anyhow::Result<transport::Connection> {
        loop {
            match listener.accept_timeout(std::time::Duration::from_millis(100)) {
                Err(transport::TransportError::Timeout(_)) => {}
                accepted => return accepted.with_context(|| format!("setting up {}", path.name())),
            }
            match self {
                Peer::Process(child) => {
                    if let Some(status) = child.try_wait().context("watching the peer worker")? {
                        bail!("setting up {}: the peer worker ended ({status}) before it connected", path.name());
                    }
                }
                Peer::Thread(handle) if handle.as_ref().is_some_and(std::thread::JoinHandle::is_finished) => {
                    let why = match handle.take().map(std::thread::JoinHandle::join) {
                        Some(Ok(Err(e))) => e.to_string(),
                        Some(Err(_)) => "it panicked".to_owned(),
                        _ => "it returned".to_owned(),
                    };
                    bail!("setting up {}: the peer thread ended before it connected: {why}", path.name());
                }
                Peer::Thread(_) => {}
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        match self {
            Peer::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            // The thread ends when the connection it serves closes.
            Peer::Thread(handle) => drop(handle.take()),
        }
    }
}

fn repeats_for(bytes: usize, base: usize) -> usize {
    if bytes <= 1 << 20 { base.max(1) * 20 } else { base.max(1) }
}

/// Runs the benchmark.
pub(crate) fn run(config: &BenchConfig) -> anyhow::Result<BenchReport> {
    let device: Arc<dyn Device> = if config.mig {
        Arc::new(device::sim::SimDevice::mig())
    } else {
        device::open(config.device).context("opening the device")?
    };
    let max = config.sizes.iter().copied().max().unwrap_or(0);
    let work = (config.paths.len() + 2) * config.sizes.len();
    let bar = if config.progress { ProgressBar::new(work as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:40} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut report = BenchReport {
        device: device.describe(),
        peer_thread: config.peer_thread,
        slots: config.slots,
        chunk_bytes: config.chunk,
        notes: Vec::new(),
        results: Vec::new(),
        ceilings: Vec::new(),
    };
    let buffers = Buffers::new(&device, max)?;
    ceilings(&*device, &buffers, config, &bar, &mut report)?;
    for &path in &config.paths {
        measure_path(&device, &buffers, path, config, &bar, &mut report)?;
    }
    bar.finish_and_clear();
    Ok(report)
}

/// The send and receive buffers of a run, the send one holding a known pattern.
struct Buffers {
    a: DeviceBuffer,
    b: DeviceBuffer,
    pattern: Vec<u8>,
}

impl Buffers {
    fn new(device: &Arc<dyn Device>, max: usize) -> anyhow::Result<Self> {
        let a = DeviceBuffer::new(device, max).context("allocating the send buffer")?;
        let b = DeviceBuffer::new(device, max).context("allocating the receive buffer")?;
        let mut pattern = vec![0u8; max];
        transport::peer::pattern(11, 0, &mut pattern);
        a.write(&pattern).context("filling the send buffer")?;
        Ok(Self { a, b, pattern })
    }
}

/// The two ceilings at every size, in this process.
fn ceilings(
    device: &dyn Device,
    buffers: &Buffers,
    config: &BenchConfig,
    bar: &ProgressBar,
    report: &mut BenchReport,
) -> anyhow::Result<()> {
    let (a, b) = (&buffers.a, &buffers.b);
    for &bytes in &config.sizes {
        let repeats = repeats_for(bytes, config.repeats);
        bar.set_message(format!("ceiling d2d {}", human(bytes)));
        let gbps = measure::ceiling_d2d(device, a, b, bytes, repeats)?;
        report.ceilings.push(Ceiling { name: D2D.into(), bytes, gbps });
        bar.inc(1);
        bar.set_message(format!("ceiling staged {}", human(bytes)));
        let gbps = measure::ceiling_staged(device, a, b, bytes, config.slots, config.chunk, repeats)?;
        report.ceilings.push(Ceiling { name: STAGED.into(), bytes, gbps });
        bar.inc(1);
    }
    Ok(())
}

/// One path: a peer to echo, then bandwidth and latency at every size, and the last round
/// trip's bytes checked.
fn measure_path(
    device: &Arc<dyn Device>,
    buffers: &Buffers,
    path: TransferPath,
    config: &BenchConfig,
    bar: &ProgressBar,
    report: &mut BenchReport,
) -> anyhow::Result<()> {
    let max = buffers.pattern.len();
    let secret = (path == TransferPath::Tcp).then(Secret::random).transpose()?;
    let options =
        Options { path, slots: config.slots, chunk: config.chunk, secret: secret.clone(), ..Options::default() };
    let listener = match path {
        TransferPath::Tcp => Listener::bind(&Address::Tcp("127.0.0.1:0".into()), device.clone(), options.clone())?,
        // An unguessable name, so that no other user can take it first or aim at it.
        _ => Listener::bind_local(&format!("gpucluster-bench-{}", path.name()), device.clone(), options.clone())?,
    };
    let mut peer = if config.peer_thread {
        let args = transport::peer::PeerArgs {
            device: config.device,
            mig: config.mig,
            address: listener.address().clone(),
            options,
            role: transport::peer::Role::Echo { max: max.max(1) },
        };
        let device = device.clone();
        Peer::Thread(Some(std::thread::spawn(move || transport::peer::run_on(device, &args))))
    } else {
        spawn_peer(listener.address(), config, path, secret.as_ref(), max)?
    };
    let conn = peer.connection(&listener, path)?;
    if let Some(why) = conn.fallback() {
        report.notes.push(format!("{}: {why}", path.name()));
    }
    for &bytes in &config.sizes {
        report.results.push(measure_size(&conn, buffers, bytes, config, bar)?);
        bar.inc(1);
    }
    // Verify the last round trip carried the data intact.
    let mut back = vec![0u8; max];
    buffers.b.read(&mut back)?;
    let last = *config.sizes.last().unwrap_or(&0);
    if back[..last] != buffers.pattern[..last] {
        bail!("{}: data came back different", path.name());
    }
    Ok(())
}

/// Bandwidth (one warm-up, then the median of the repeats) and latency (the median round trip
/// after two warm-ups) of one size; the progress line says which repeat runs, as one size may
/// take minutes.
fn measure_size(
    conn: &transport::Connection,
    buffers: &Buffers,
    bytes: usize,
    config: &BenchConfig,
    bar: &ProgressBar,
) -> anyhow::Result<Measurement> {
    let (a, b, name) = (&buffers.a, &buffers.b, conn.path().name());
    let repeats = repeats_for(bytes, config.repeats);
    let messages = ((256usize << 20) / bytes.max(1)).clamp(4, 1000);
    let runs = config.repeats.max(1) + 1;
    let mut rates = Vec::with_capacity(runs);
    for i in 0..runs {
        bar.set_message(format!("{name} {}: bandwidth {}/{runs}", human(bytes), i + 1));
        let seconds = measure::stream(conn, a, b, bytes, messages).with_context(|| format!("{name}: {bytes} B"))?;
        if i >= 1 {
            rates.push(messages as f64 * bytes as f64 / seconds / 1e9);
        }
    }
    let gbps = measure::median(&mut rates);
    bar.set_message(format!("{name} {}: latency", human(bytes)));
    let mut rtts = Vec::with_capacity(repeats);
    for i in 0..repeats + 2 {
        let rtt = measure::round_trip(conn, a, b, bytes, i as u64).with_context(|| format!("{name}: {bytes} B"))?;
        if i >= 2 {
            rtts.push(rtt.as_secs_f64());
        }
    }
    let rtt = measure::median(&mut rtts);
    Ok(Measurement { path: conn.path(), bytes, gbps, latency_us: rtt / 2.0 * 1e6, repeats })
}

fn spawn_peer(
    address: &Address,
    config: &BenchConfig,
    path: TransferPath,
    secret: Option<&Secret>,
    max: usize,
) -> anyhow::Result<Peer> {
    let exe = std::env::current_exe().context("finding this program to start the peer worker")?;
    let mut cmd = peer_command(exe, address, config, path, secret, max);
    Ok(Peer::Process(cmd.spawn().context("starting the peer worker")?))
}

/// The peer's command: the secret goes in its environment, never on its command line (which
/// every user can read in `/proc`).
fn peer_command(
    exe: std::path::PathBuf,
    address: &Address,
    config: &BenchConfig,
    path: TransferPath,
    secret: Option<&Secret>,
    max: usize,
) -> Command {
    let device = transport::device::WorkerDevice::of(config.device, config.mig).name();
    let mut cmd = Command::new(exe);
    cmd.args(["transport-peer", "--device", device, "--address", &address.to_string(), "--path", path.name()]);
    cmd.args(["--slots", &config.slots.to_string(), "--chunk", &config.chunk.to_string()]);
    match secret {
        Some(s) => cmd.env(transport::SECRET_ENV, s.to_hex()),
        None => cmd.env_remove(transport::SECRET_ENV),
    };
    cmd.args(["echo", &max.max(1).to_string()]).stdin(Stdio::null());
    // The peer dies with this process, however it ends (SIGTERM, SIGKILL).
    // SAFETY: prctl is async-signal-safe; it only sets the child's parent-death signal.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

pub(crate) fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
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
        human(report.chunk_bytes)
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
        let mut row = vec![human(bytes)];
        for &p in &paths {
            match report.results.iter().find(|m| m.path == p && m.bytes == bytes) {
                Some(m) => {
                    row.push(format!("{:.2}", m.gbps));
                    row.push(format!("{:.1}", m.latency_us));
                }
                None => row.extend(["-".to_owned(), "-".to_owned()]),
            }
        }
        for name in [D2D, STAGED] {
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
        let ceiling = if p == TransferPath::CudaIpc {
            "device-to-device copy"
        } else {
            "pipelined host-staged copy, one process"
        };
        let ratios: Vec<String> = report
            .results
            .iter()
            .filter(|m| m.path == p && m.bytes >= 16 << 20)
            .filter_map(|m| {
                let c = report.ceilings.iter().find(|c| c.name == ceiling && c.bytes == m.bytes)?;
                Some(format!("{} {:.0}%", human(m.bytes), 100.0 * m.gbps / c.gbps))
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
    for name in [D2D, STAGED] {
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
    // Ticks at the measured sizes, labelled as the table labels them (`human`: binary units).
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
        .x_label_formatter(&|v| human(v.round() as usize))
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

/// The largest message: 64 GiB, under the largest GPU's memory, with room for the buffers.
const MAX_SIZE: usize = 64 << 30;

/// Parses `8,64,1K,16M,1G`: each a binary size ([`cluster_core::parse_binary_size`], so `1G` is
/// 2^30 bytes), from 1 byte to [`MAX_SIZE`].
pub(crate) fn parse_sizes(text: &str) -> Result<Vec<usize>, String> {
    text.split(',')
        .map(|s| {
            let s = s.trim();
            let too_large =
                || format!("`{s}` is larger than {} GiB, the largest message bench transport sends", MAX_SIZE >> 30);
            let bytes = match cluster_core::parse_binary_size(s) {
                Ok(bytes) => usize::try_from(bytes).ok().filter(|&b| b <= MAX_SIZE).ok_or_else(too_large)?,
                Err(cluster_core::SizeError::Overflow { .. }) => return Err(too_large()),
                Err(e) => return Err(e.to_string()),
            };
            if bytes == 0 {
                return Err(format!("`{s}` is not a size: give at least 1 byte"));
            }
            Ok(bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_gets_the_secret_in_its_environment_never_its_command_line() {
        let config = BenchConfig {
            device: DeviceKind::Simulated,
            mig: false,
            sizes: vec![8],
            repeats: 1,
            paths: vec![TransferPath::Tcp],
            slots: 4,
            chunk: 1 << 20,
            progress: false,
            peer_thread: false,
        };
        let secret = Secret::random().expect("secret");
        let address = Address::Tcp("127.0.0.1:1".into());
        let cmd = peer_command("gpucluster".into(), &address, &config, TransferPath::Tcp, Some(&secret), 8);
        let hex = secret.to_hex();
        assert!(cmd.get_args().all(|a| a != "--secret" && !a.to_string_lossy().contains(&hex)), "{cmd:?}");
        assert!(cmd.get_envs().any(|(k, v)| k == transport::SECRET_ENV && v.is_some_and(|v| v == hex.as_str())));
    }

    fn listener() -> Listener {
        let device: Arc<dyn Device> = Arc::new(device::sim::SimDevice::new());
        let options = Options { secret: Some(Secret::random().expect("secret")), ..Options::default() };
        Listener::bind(&Address::Tcp("127.0.0.1:0".into()), device, options).expect("listener")
    }

    /// A peer that ends before it connects (it could not start its device, say) was waited for
    /// for ever: the bench hung with its progress line standing still.
    #[test]
    fn a_peer_that_ends_before_connecting_is_an_error_not_a_hang() {
        let listener = listener();
        let child = Command::new("sh").args(["-c", "exit 3"]).spawn().expect("sh");
        let err = Peer::Process(child).connection(&listener, TransferPath::Tcp).expect_err("no peer");
        assert!(err.to_string().contains("the peer worker ended (exit status: 3) before it connected"), "{err}");

        let thread = std::thread::spawn(|| Err(transport::TransportError::InvalidArgument("no device here".into())));
        let err = Peer::Thread(Some(thread)).connection(&listener, TransferPath::HostStaged).expect_err("no peer");
        assert!(
            err.to_string().contains("the peer thread ended before it connected")
                && err.to_string().contains("no device here"),
            "{err}"
        );
    }
}
