//! `bench transport`'s driver: bandwidth and latency of every path between two workers on one
//! device, against ceilings measured in the same run, as a [`BenchReport`]; printing, plotting
//! and drawing its progress are the front end's ([`Progress`]).
//!
//! This process is worker A; it starts worker B ([`BenchPeer`]: a second process, or a thread of
//! this one) as an echo peer for each path. Bandwidth is one-way, as `ucx_perftest tag_bw`
//! measures it: A streams messages of S bytes to B (at least 256 MiB per repeat, at least four
//! messages), B acknowledges the last, and the median repeat counts. Latency is half the median
//! round trip of one message echoed back. The ceilings are copies inside one process on the same
//! device: device-to-device, and the pipelined device-to-host-to-device copy through pinned
//! memory that the host-staged path does across two processes. The measuring itself is
//! `transport::measure` (shared with the built-in worker of `up`); this module chooses what to
//! measure ([`LocalPaths`]), starts the peer, checks the data that came back, and reports.
//!
//! It lives in the launcher rather than in `transport::measure` because it starts and watches a
//! process (the peer, which dies with this one), and process lifetimes are the launcher's;
//! `transport` moves bytes and starts nothing.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use gpu_topology::Snapshot;
use serde::{Deserialize, Serialize};
use transport::device::{self, Device, DeviceBuffer, DeviceKind, WorkerDevice};
use transport::{
    Address, Connection, Endpoint, Listener, Options, PathChoice, RingGeometry, SECRET_ENV, Secret, TransferPath,
    TransportError, measure,
};

use crate::LauncherError;

/// The name of the device-to-device ceiling in a [`BenchReport`].
pub const D2D_CEILING: &str = "device-to-device copy";
/// The name of the host-staged ceiling in a [`BenchReport`].
pub const STAGED_CEILING: &str = "pipelined host-staged copy, one process";

/// Where the echo peer runs.
#[derive(Debug, Clone)]
pub enum BenchPeer {
    /// A second process: `program`, its `args`, then the peer's own arguments
    /// (`transport::peer::PeerArgs::parse`): `gpucluster` with `transport-peer`, or the
    /// transport crate's `transport-peer` with no `args`. It dies with this process.
    Process {
        /// The program.
        program: PathBuf,
        /// Its arguments before the peer's.
        args: Vec<OsString>,
    },
    /// A thread of this process (one CUDA context): a diagnostic that separates the transport's
    /// own cost from the GPU's switching between two processes' contexts.
    Thread,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Which device memory.
    pub device: DeviceKind,
    /// Simulate a MIG instance (IPC handles do not open), with simulated memory.
    pub mig: bool,
    /// Message sizes, in bytes.
    pub sizes: Vec<usize>,
    /// Timed round trips per size from 2 MiB up (20 times as many below).
    pub repeats: usize,
    /// The paths to measure, in order.
    pub paths: Vec<TransferPath>,
    /// The shared ring of the local paths (and of the host-staged ceiling).
    pub ring: RingGeometry,
    /// Where the peer runs.
    pub peer: BenchPeer,
}

/// One path at one size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The path.
    pub path: TransferPath,
    /// Bytes per message.
    pub bytes: usize,
    /// One-way bandwidth, GB/s (median).
    pub gbps: f64,
    /// Half the median round trip, microseconds.
    pub latency_us: f64,
    /// Timed round trips.
    pub repeats: usize,
}

/// A ceiling at one size: [`D2D_CEILING`] or [`STAGED_CEILING`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ceiling {
    /// Which ceiling.
    pub name: String,
    /// Bytes copied.
    pub bytes: usize,
    /// GB/s (median).
    pub gbps: f64,
}

/// A run's figures; saved as JSON, it loads back as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// The device, as the transport describes it.
    pub device: String,
    /// Whether the peer was a thread of this process.
    pub peer_thread: bool,
    /// Slots of the ring.
    pub slots: usize,
    /// Bytes per slot.
    pub chunk_bytes: usize,
    /// What the figures should be read with (a path that fell back, one not measured).
    pub notes: Vec<String>,
    /// Every path at every size.
    pub results: Vec<Measurement>,
    /// Both ceilings at every size.
    pub ceilings: Vec<Ceiling>,
}

/// What the run is doing, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchStep {
    /// The device-to-device ceiling of `bytes`.
    CeilingD2d {
        /// Bytes.
        bytes: usize,
    },
    /// The host-staged ceiling of `bytes`.
    CeilingStaged {
        /// Bytes.
        bytes: usize,
    },
    /// Bandwidth run `run` of `runs` (the first a warm-up) of `path` at `bytes`.
    Bandwidth {
        /// The path.
        path: TransferPath,
        /// Bytes per message.
        bytes: usize,
        /// This run, from 1.
        run: usize,
        /// Runs in all.
        runs: usize,
    },
    /// The latency of `path` at `bytes`.
    Latency {
        /// The path.
        path: TransferPath,
        /// Bytes per message.
        bytes: usize,
    },
}

/// How a front end follows a run: [`run`] says how many steps there are, what runs now and when
/// one is done. Every method does nothing unless implemented; `()` shows nothing.
pub trait Progress {
    /// The run has started (its device is open): `steps` steps in all.
    fn begin(&self, steps: u64) {
        let _ = steps;
    }
    /// What runs now (one step may take minutes).
    fn step(&self, step: BenchStep) {
        let _ = step;
    }
    /// One step is done.
    fn advance(&self) {}
    /// The run has finished (not called when it fails).
    fn finish(&self) {}
}

impl Progress for () {}

/// The paths two workers on this machine's first compute device may use, as
/// `up --workers-per-device 2` places them: what `bench transport` measures.
#[derive(Debug, Clone)]
pub struct LocalPaths {
    /// The path choice between the two, or `None` without a compute device.
    pub choice: Option<PathChoice>,
    /// Whether that device is a MIG instance.
    pub mig: bool,
}

impl LocalPaths {
    /// The first compute device of `snapshot`'s first host: a GPU without MIG, or the first MIG
    /// instance of one with instances.
    pub fn of(snapshot: &Snapshot) -> Self {
        let first = snapshot.hosts.first().and_then(|h| {
            let (gpu, mig) = h.compute_devices().next()?;
            Some(Endpoint { host: h, gpu, mig })
        });
        Self { choice: first.map(|e| transport::choose_path(e, e)), mig: first.is_some_and(|e| e.mig.is_some()) }
    }

    /// The paths to measure, best first; without a compute device (nothing to choose for), the
    /// simulated memory's local paths.
    pub fn allowed(&self) -> Vec<TransferPath> {
        self.choice.as_ref().map_or_else(|| vec![TransferPath::HostStaged, TransferPath::Tcp], PathChoice::usable)
    }

    /// Why the paths are what they are: the path choice's reason, or that there is no compute
    /// device.
    pub fn reason(&self) -> &str {
        self.choice.as_ref().map_or("no compute device", |c| c.reason.as_str())
    }

    /// The report's note when cuda-ipc is not among the paths chosen, with why.
    pub fn cuda_ipc_note(&self) -> Option<String> {
        let choice = self.choice.as_ref().filter(|c| c.path != TransferPath::CudaIpc)?;
        Some(format!("cuda-ipc is not measured: {}", choice.reason))
    }

    /// Whether the run simulates a MIG instance: only on simulated memory (real memory is what
    /// it is), and only when the device it stands for is one.
    pub fn simulates_mig(&self, device: DeviceKind) -> bool {
        self.mig && device == DeviceKind::Simulated
    }
}

/// The peer worker of one path.
enum Peer {
    Process(Child),
    Thread(Option<std::thread::JoinHandle<Result<(), TransportError>>>),
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Process(child) => f.debug_tuple("Process").field(&child.id()).finish(),
            Peer::Thread(_) => f.write_str("Thread"),
        }
    }
}

impl Peer {
    /// The peer's connection, or why it never came: a peer that ends before connecting (it
    /// could not start, open its device or reach the listener) is noticed, not waited for.
    fn connection(&mut self, listener: &Listener, path: TransferPath) -> Result<Connection, LauncherError> {
        loop {
            match listener.accept_timeout(std::time::Duration::from_millis(100)) {
                Err(TransportError::Timeout(_)) => {}
                accepted => {
                    return accepted.map_err(|source| LauncherError::TransportBench {
                        doing: format!("setting up {}", path.name()),
                        source,
                    });
                }
            }
            match self {
                Peer::Process(child) => {
                    let status = child
                        .try_wait()
                        .map_err(|e| LauncherError::TransportBenchPeer(format!("watching the peer worker: {e}")))?;
                    if let Some(status) = status {
                        return Err(LauncherError::TransportBenchPeer(format!(
                            "setting up {}: the peer worker ended ({status}) before it connected",
                            path.name()
                        )));
                    }
                }
                Peer::Thread(handle) if handle.as_ref().is_some_and(std::thread::JoinHandle::is_finished) => {
                    let why = match handle.take().map(std::thread::JoinHandle::join) {
                        Some(Ok(Err(e))) => e.to_string(),
                        Some(Err(_)) => "it panicked".to_owned(),
                        _ => "it returned".to_owned(),
                    };
                    return Err(LauncherError::TransportBenchPeer(format!(
                        "setting up {}: the peer thread ended before it connected: {why}",
                        path.name()
                    )));
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

/// A transport error of the step `doing`.
fn at(doing: impl Into<String>) -> impl FnOnce(TransportError) -> LauncherError {
    let doing = doing.into();
    move |source| LauncherError::TransportBench { doing, source }
}

/// Runs the benchmark, telling `progress` how it goes.
///
/// # Errors
/// [`LauncherError::TransportBench`] for a step that failed in the transport (the device, a
/// path's setup, a transfer), [`LauncherError::TransportBenchPeer`] for a peer that could not
/// start, ended before it connected or echoed different bytes, [`LauncherError::Transport`] for
/// the rest (a listener, a ceiling).
pub fn run(config: &BenchConfig, progress: &dyn Progress) -> Result<BenchReport, LauncherError> {
    let device: Arc<dyn Device> = if config.mig {
        Arc::new(device::sim::SimDevice::mig())
    } else {
        device::open(config.device).map_err(at("opening the device"))?
    };
    let max = config.sizes.iter().copied().max().unwrap_or(0);
    progress.begin(((config.paths.len() + 2) * config.sizes.len()) as u64);
    let mut report = BenchReport {
        device: device.describe(),
        peer_thread: matches!(config.peer, BenchPeer::Thread),
        slots: config.ring.slots(),
        chunk_bytes: config.ring.chunk(),
        notes: Vec::new(),
        results: Vec::new(),
        ceilings: Vec::new(),
    };
    let buffers = Buffers::new(&device, max)?;
    ceilings(&*device, &buffers, config, progress, &mut report).map_err(LauncherError::Transport)?;
    for &path in &config.paths {
        measure_path(&device, &buffers, path, config, progress, &mut report)?;
    }
    progress.finish();
    Ok(report)
}

/// The send and receive buffers of a run, the send one holding a known pattern.
struct Buffers {
    a: DeviceBuffer,
    b: DeviceBuffer,
    pattern: Vec<u8>,
}

impl Buffers {
    fn new(device: &Arc<dyn Device>, max: usize) -> Result<Self, LauncherError> {
        let a = DeviceBuffer::new(device, max).map_err(at("allocating the send buffer"))?;
        let b = DeviceBuffer::new(device, max).map_err(at("allocating the receive buffer"))?;
        let mut pattern = vec![0u8; max];
        transport::peer::pattern(11, 0, &mut pattern);
        a.write(&pattern).map_err(at("filling the send buffer"))?;
        Ok(Self { a, b, pattern })
    }
}

/// The two ceilings at every size, in this process.
fn ceilings(
    device: &dyn Device,
    buffers: &Buffers,
    config: &BenchConfig,
    progress: &dyn Progress,
    report: &mut BenchReport,
) -> Result<(), TransportError> {
    let (a, b) = (&buffers.a, &buffers.b);
    let (slots, chunk) = (config.ring.slots(), config.ring.chunk());
    for &bytes in &config.sizes {
        let repeats = repeats_for(bytes, config.repeats);
        progress.step(BenchStep::CeilingD2d { bytes });
        let gbps = measure::ceiling_d2d(device, a, b, bytes, repeats)?;
        report.ceilings.push(Ceiling { name: D2D_CEILING.into(), bytes, gbps });
        progress.advance();
        progress.step(BenchStep::CeilingStaged { bytes });
        let gbps = measure::ceiling_staged(device, a, b, bytes, slots, chunk, repeats)?;
        report.ceilings.push(Ceiling { name: STAGED_CEILING.into(), bytes, gbps });
        progress.advance();
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
    progress: &dyn Progress,
    report: &mut BenchReport,
) -> Result<(), LauncherError> {
    let max = buffers.pattern.len();
    let secret = (path == TransferPath::Tcp).then(Secret::random).transpose().map_err(LauncherError::Transport)?;
    let options = Options {
        path,
        slots: config.ring.slots(),
        chunk: config.ring.chunk(),
        secret: secret.clone(),
        ..Options::default()
    };
    let listener = match path {
        TransferPath::Tcp => Listener::bind(&Address::Tcp("127.0.0.1:0".into()), device.clone(), options.clone()),
        // An unguessable name, so that no other user can take it first or aim at it.
        _ => Listener::bind_local(&format!("gpucluster-bench-{}", path.name()), device.clone(), options.clone()),
    }
    .map_err(LauncherError::Transport)?;
    let mut peer = match &config.peer {
        BenchPeer::Thread => {
            let args = transport::peer::PeerArgs {
                device: config.device,
                mig: config.mig,
                address: listener.address().clone(),
                options,
                role: transport::peer::Role::Echo { max: max.max(1) },
            };
            let device = device.clone();
            Peer::Thread(Some(std::thread::spawn(move || transport::peer::run_on(device, &args))))
        }
        BenchPeer::Process { program, args } => {
            let mut cmd = peer_command(program, args, listener.address(), config, path, secret.as_ref(), max);
            let child =
                cmd.spawn().map_err(|e| LauncherError::TransportBenchPeer(format!("starting the peer worker: {e}")))?;
            Peer::Process(child)
        }
    };
    let conn = peer.connection(&listener, path)?;
    if let Some(why) = conn.fallback() {
        report.notes.push(format!("{}: {why}", path.name()));
    }
    for &bytes in &config.sizes {
        report.results.push(measure_size(&conn, buffers, bytes, config, progress)?);
        progress.advance();
    }
    // Verify the last round trip carried the data intact.
    let mut back = vec![0u8; max];
    buffers.b.read(&mut back).map_err(LauncherError::Transport)?;
    let last = *config.sizes.last().unwrap_or(&0);
    if back[..last] != buffers.pattern[..last] {
        return Err(LauncherError::TransportBenchPeer(format!("{}: data came back different", path.name())));
    }
    Ok(())
}

/// Bandwidth (one warm-up, then the median of the repeats) and latency (the median round trip
/// after two warm-ups) of one size; the progress says which repeat runs, as one size may take
/// minutes.
fn measure_size(
    conn: &Connection,
    buffers: &Buffers,
    bytes: usize,
    config: &BenchConfig,
    progress: &dyn Progress,
) -> Result<Measurement, LauncherError> {
    let (a, b, path) = (&buffers.a, &buffers.b, conn.path());
    let failed = || at(format!("{}: {bytes} B", path.name()));
    let repeats = repeats_for(bytes, config.repeats);
    let messages = ((256usize << 20) / bytes.max(1)).clamp(4, 1000);
    let runs = config.repeats.max(1) + 1;
    let mut rates = Vec::with_capacity(runs);
    for i in 0..runs {
        progress.step(BenchStep::Bandwidth { path, bytes, run: i + 1, runs });
        let seconds = measure::stream(conn, a, b, bytes, messages).map_err(failed())?;
        if i >= 1 {
            rates.push(messages as f64 * bytes as f64 / seconds / 1e9);
        }
    }
    let gbps = measure::median(&mut rates);
    progress.step(BenchStep::Latency { path, bytes });
    let mut rtts = Vec::with_capacity(repeats);
    for i in 0..repeats + 2 {
        let rtt = measure::round_trip(conn, a, b, bytes, i as u64).map_err(failed())?;
        if i >= 2 {
            rtts.push(rtt.as_secs_f64());
        }
    }
    let rtt = measure::median(&mut rtts);
    Ok(Measurement { path, bytes, gbps, latency_us: rtt / 2.0 * 1e6, repeats })
}

/// The peer's command: the secret goes in its environment, never on its command line (which
/// every user can read in `/proc`).
fn peer_command(
    program: &Path,
    args: &[OsString],
    address: &Address,
    config: &BenchConfig,
    path: TransferPath,
    secret: Option<&Secret>,
    max: usize,
) -> Command {
    let device = WorkerDevice::of(config.device, config.mig).name();
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd.args(["--device", device, "--address", &address.to_string(), "--path", path.name()]);
    cmd.args(["--slots", &config.ring.slots().to_string(), "--chunk", &config.ring.chunk().to_string()]);
    match secret {
        Some(s) => cmd.env(SECRET_ENV, s.to_hex()),
        None => cmd.env_remove(SECRET_ENV),
    };
    cmd.args(["echo", &max.max(1).to_string()]).stdin(Stdio::null());
    // The peer dies with this process, however it ends (SIGTERM, SIGKILL).
    // SAFETY: prctl is async-signal-safe; it only sets the child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(peer: BenchPeer) -> BenchConfig {
        BenchConfig {
            device: DeviceKind::Simulated,
            mig: false,
            sizes: vec![8, 64 << 10],
            repeats: 1,
            paths: vec![TransferPath::HostStaged, TransferPath::Tcp],
            ring: RingGeometry::new(4, 1 << 20).expect("ring"),
            peer,
        }
    }

    #[test]
    fn the_peer_gets_the_secret_in_its_environment_never_its_command_line() {
        let config = config(BenchPeer::Thread);
        let secret = Secret::random().expect("secret");
        let address = Address::Tcp("127.0.0.1:1".into());
        let args = ["transport-peer".into()];
        let cmd = peer_command(Path::new("gpucluster"), &args, &address, &config, TransferPath::Tcp, Some(&secret), 8);
        let hex = secret.to_hex();
        assert!(cmd.get_args().all(|a| a != "--secret" && !a.to_string_lossy().contains(&hex)), "{cmd:?}");
        assert!(cmd.get_envs().any(|(k, v)| k == SECRET_ENV && v.is_some_and(|v| v == hex.as_str())));
        let words: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(words[..3], ["transport-peer", "--device", "sim"], "the front end's words first: {words:?}");
        assert!(words.windows(2).any(|w| w == ["--chunk", "1048576"]), "{words:?}");
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

        let thread = std::thread::spawn(|| Err(TransportError::InvalidArgument("no device here".into())));
        let err = Peer::Thread(Some(thread)).connection(&listener, TransferPath::HostStaged).expect_err("no peer");
        assert!(
            err.to_string().contains("the peer thread ended before it connected")
                && err.to_string().contains("no device here"),
            "{err}"
        );
    }

    /// Counts what the driver tells a front end.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<(u64, u64, Vec<BenchStep>, bool)>);

    impl Progress for Recorder {
        fn begin(&self, steps: u64) {
            self.0.lock().expect("lock").0 = steps;
        }
        fn step(&self, step: BenchStep) {
            self.0.lock().expect("lock").2.push(step);
        }
        fn advance(&self) {
            self.0.lock().expect("lock").1 += 1;
        }
        fn finish(&self) {
            self.0.lock().expect("lock").3 = true;
        }
    }

    /// A whole run on simulated memory with the peer in a thread: every path at every size, the
    /// ceilings, the progress a front end draws, and the report through JSON and back.
    #[test]
    fn a_run_measures_every_path_and_size_and_its_report_loads_back() {
        let config = config(BenchPeer::Thread);
        let progress = Recorder::default();
        let report = run(&config, &progress).expect("run");
        assert_eq!(report.device, "simulated GPU");
        assert!(report.peer_thread && report.slots == 4 && report.chunk_bytes == 1 << 20, "{report:?}");
        let measured: Vec<_> = report.results.iter().map(|m| (m.path, m.bytes)).collect();
        let expected = [
            (TransferPath::HostStaged, 8),
            (TransferPath::HostStaged, 64 << 10),
            (TransferPath::Tcp, 8),
            (TransferPath::Tcp, 64 << 10),
        ];
        assert_eq!(measured, expected);
        assert!(report.results.iter().all(|m| m.gbps > 0.0 && m.latency_us > 0.0 && m.repeats == 20), "{report:?}");
        let ceilings: Vec<_> = report.ceilings.iter().map(|c| (c.name.as_str(), c.bytes)).collect();
        let sizes = [8, 64 << 10];
        let expected: Vec<_> = sizes.iter().flat_map(|&b| [(D2D_CEILING, b), (STAGED_CEILING, b)]).collect();
        assert_eq!(ceilings, expected);
        let (steps, advanced, seen, finished) = progress.0.into_inner().expect("lock");
        assert!(steps == 8 && advanced == 8 && finished, "{steps} steps, {advanced} done, finished {finished}");
        assert_eq!(seen[0], BenchStep::CeilingD2d { bytes: 8 });
        let bandwidth = BenchStep::Bandwidth { path: TransferPath::Tcp, bytes: 64 << 10, run: 2, runs: 2 };
        assert!(seen.contains(&bandwidth), "{seen:?}");
        assert_eq!(seen.last(), Some(&BenchStep::Latency { path: TransferPath::Tcp, bytes: 64 << 10 }));
        // Through JSON and back (serde_json reads floats to within a unit in the last place).
        let text = serde_json::to_string(&report).expect("json");
        let back: BenchReport = serde_json::from_str(&text).expect("loads back");
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
        let unfigured = |r: &BenchReport| {
            let mut r = r.clone();
            r.results.iter_mut().for_each(|m| (m.gbps, m.latency_us) = (0.0, 0.0));
            r.ceilings.iter_mut().for_each(|c| c.gbps = 0.0);
            r
        };
        assert_eq!(unfigured(&back), unfigured(&report));
        let figures = |r: &BenchReport| -> Vec<f64> {
            r.results.iter().flat_map(|m| [m.gbps, m.latency_us]).chain(r.ceilings.iter().map(|c| c.gbps)).collect()
        };
        assert!(figures(&back).iter().zip(figures(&report)).all(|(&a, b)| close(a, b)), "{back:?}");
    }

    #[test]
    fn the_paths_are_those_of_the_first_compute_device() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        let load = |name: &str| {
            let spec: gpu_topology::TopologySpec = format!("sim:{name}").parse().expect("spec");
            rt.block_on(spec.open().expect("open").snapshot()).expect("snapshot")
        };
        let gpu = LocalPaths::of(&load("h100"));
        assert_eq!(gpu.allowed(), [TransferPath::CudaIpc, TransferPath::HostStaged, TransferPath::Tcp]);
        assert!(gpu.cuda_ipc_note().is_none() && !gpu.simulates_mig(DeviceKind::Simulated), "{gpu:?}");
        let mig = LocalPaths::of(&load("a30"));
        assert_eq!(mig.allowed(), [TransferPath::HostStaged, TransferPath::Tcp]);
        let note = mig.cuda_ipc_note().expect("a note");
        assert!(note.starts_with("cuda-ipc is not measured: both use MIG instance"), "{note}");
        assert!(mig.simulates_mig(DeviceKind::Simulated) && !mig.simulates_mig(DeviceKind::Cuda), "{mig:?}");
        let none = LocalPaths { choice: None, mig: false };
        assert_eq!(none.allowed(), [TransferPath::HostStaged, TransferPath::Tcp]);
        assert_eq!(none.reason(), "no compute device");
    }
}
