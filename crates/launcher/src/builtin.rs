//! The built-in worker: the acceptance test of a cluster.
//!
//! Each worker checks its device (allocation, a copy, the bytes read back), listens, joins the
//! rendezvous, and then, for each pair it leads, connects to the peer over the planned path and
//! measures one-way bandwidth and half-round-trip latency while the peer echoes. It reports
//! everything to the launcher, which prints the cluster's matrix.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use transport::device::{self, Device, DeviceBuffer};
use transport::rendezvous::Rendezvous;
use transport::{Address, Connection, Listener, Options, Secret, TransferPath, TransportError};

use crate::worker_env;

/// What the launcher attaches to the rendezvous table for the built-in workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    /// Worker names by rank.
    pub names: Vec<String>,
    /// Pairs to measure: the first connects and measures, the second echoes; with the planned path.
    pub pairs: Vec<(usize, usize, TransferPath)>,
    /// Bytes per bandwidth message.
    pub bytes: usize,
    /// Messages per bandwidth measurement.
    pub messages: usize,
    /// Round trips for the latency measurement.
    pub round_trips: usize,
}

/// A worker's device check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceCheck {
    /// The worker's rank.
    pub rank: usize,
    /// The device, as the worker saw it.
    pub device: String,
    /// Bytes allocated, written, copied on the device and read back intact.
    pub bytes: usize,
}

/// One measured pair.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairResult {
    /// The rank that measured.
    pub from: usize,
    /// The rank that echoed.
    pub to: usize,
    /// The path the plan chose.
    pub planned: TransferPath,
    /// The path the connection used.
    pub path: TransferPath,
    /// Why it differs from the planned one, if it does.
    pub fallback: Option<String>,
    /// One-way bandwidth, GB/s.
    pub gbps: f64,
    /// Half the median round trip of 8 bytes, microseconds.
    pub latency_us: f64,
}

/// A report line a built-in worker sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Report {
    /// The device check passed.
    Device(DeviceCheck),
    /// A pair was measured.
    Pair(PairResult),
    /// Something failed.
    Failed {
        /// The worker's rank.
        rank: usize,
        /// What failed.
        error: String,
    },
}

fn var(name: &str) -> Result<String, TransportError> {
    std::env::var(name).map_err(|_| TransportError::Environment {
        variable: name.to_owned(),
        problem: "is not set: the built-in worker is started by `gpucluster up`".into(),
    })
}

fn number(name: &str) -> Result<usize, TransportError> {
    var(name)?
        .parse()
        .map_err(|_| TransportError::Environment { variable: name.to_owned(), problem: "is not a number".into() })
}

/// Opens the device the launcher named in `GPUCLUSTER_DEVICE` (`cuda`, `sim` or `sim-mig`).
///
/// # Errors
/// An unknown kind, or a device that cannot be opened.
pub fn device_from_env() -> Result<Arc<dyn Device>, TransportError> {
    let name = var(device::WorkerDevice::ENV)?;
    let device: device::WorkerDevice = name.parse().map_err(|e| TransportError::Environment {
        variable: device::WorkerDevice::ENV.into(),
        problem: format!("names {e}"),
    })?;
    device.open()
}

fn check_device(device: &Arc<dyn Device>, rank: usize, bytes: usize) -> Result<DeviceCheck, TransportError> {
    let a = DeviceBuffer::new(device, bytes)?;
    let b = DeviceBuffer::new(device, bytes)?;
    let mut data = vec![0u8; bytes];
    transport::peer::pattern(rank as u64, 99, &mut data);
    a.write(&data)?;
    a.copy_to(&b, bytes, &*device.stream()?)?;
    let mut back = vec![0u8; bytes];
    b.read(&mut back)?;
    if back != data {
        return Err(TransportError::Corrupted("the device returned different bytes than were copied".into()));
    }
    Ok(DeviceCheck { rank, device: device.describe(), bytes })
}

fn measure(conn: &Connection, device: &Arc<dyn Device>, a: &Assignment) -> Result<(f64, f64), TransportError> {
    let buf = DeviceBuffer::new(device, a.bytes)?;
    let back = DeviceBuffer::new(device, a.bytes)?;
    let seconds = transport::measure::stream(conn, &buf, &back, a.bytes, a.messages)?;
    let gbps = (a.messages.max(1) * a.bytes) as f64 / seconds / 1e9;
    let mut rtts = Vec::with_capacity(a.round_trips);
    for i in 0..a.round_trips.max(1) {
        rtts.push(transport::measure::round_trip(conn, &buf, &back, 8, i as u64)?.as_secs_f64());
    }
    Ok((gbps, transport::measure::median(&mut rtts) / 2.0 * 1e6))
}

/// Runs the built-in worker from its environment; returns its exit status.
pub fn run() -> u8 {
    let rank = match number(worker_env::RANK) {
        Ok(rank) => rank,
        Err(e) => {
            eprintln!("gpucluster worker: {e}");
            return 1;
        }
    };
    match run_inner(rank) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("worker {rank}: {e}");
            1
        }
    }
}

fn run_inner(rank: usize) -> Result<(), TransportError> {
    let world = number(worker_env::WORLD_SIZE)?;
    let secret = Secret::from_hex(&var(worker_env::SECRET)?)?;
    let server = var(worker_env::RENDEZVOUS)?;
    let job = var(worker_env::JOB)?;
    let device = device_from_env()?;
    let simulated = !device.describe().starts_with("CUDA");
    let check = check_device(&device, rank, if simulated { 1 << 20 } else { 64 << 20 });
    let options = |path: TransferPath| Options {
        path,
        slots: 4,
        chunk: if simulated { 256 << 10 } else { 4 << 20 },
        secret: None,
        ..Options::default()
    };
    // An unguessable name, so that no other user can take it first or aim at it.
    let listener =
        Listener::bind_local(&format!("gpucluster-{job}-{rank}"), device.clone(), options(TransferPath::HostStaged))?;
    let address = listener.address().clone();
    let (mut rendezvous, table) = Rendezvous::join(&server, &secret, rank, &address, Duration::from_secs(120))?;
    let report = |rv: &mut Rendezvous, r: &Report| rv.report(&serde_json::to_value(r).unwrap_or_default());
    let check = match check {
        Ok(c) => c,
        Err(e) => {
            report(&mut rendezvous, &Report::Failed { rank, error: format!("device check: {e}") })?;
            return Err(e);
        }
    };
    report(&mut rendezvous, &Report::Device(check))?;
    if table.addresses.len() != world {
        return Err(TransportError::Protocol("the rendezvous table does not match the world size".into()));
    }
    let assignment: Assignment =
        serde_json::from_value(table.extra).map_err(|e| TransportError::Protocol(format!("bad assignment: {e}")))?;
    let incoming = assignment.pairs.iter().filter(|p| p.1 == rank).count();
    let echoes = {
        let (device, max) = (device.clone(), assignment.bytes);
        std::thread::spawn(move || -> Result<(), TransportError> {
            let mut served = Vec::new();
            for _ in 0..incoming {
                // Bounded like the rendezvous: a peer that never connects must not hang this worker.
                let conn = listener.accept_timeout(Duration::from_secs(120))?;
                let device = device.clone();
                served.push(std::thread::spawn(move || transport::peer::echo(&conn, &device, max)));
            }
            for s in served {
                s.join().map_err(|_| TransportError::Internal("an echo thread panicked".into()))??;
            }
            Ok(())
        })
    };
    for &(from, to, planned) in assignment.pairs.iter().filter(|p| p.0 == rank) {
        let peer: Address = table
            .addresses
            .get(to)
            .ok_or_else(|| TransportError::Protocol(format!("the assignment names rank {to} of a world of {world}")))?
            .parse()?;
        let result = transport::connect_blocking(&peer, device.clone(), &options(planned))
            .and_then(|conn| measure(&conn, &device, &assignment).map(|m| (conn, m)));
        match result {
            Ok((conn, (gbps, latency_us))) => report(
                &mut rendezvous,
                &Report::Pair(PairResult {
                    from,
                    to,
                    planned,
                    path: conn.path(),
                    fallback: conn.fallback().map(str::to_owned),
                    gbps,
                    latency_us,
                }),
            )?,
            Err(e) => {
                report(&mut rendezvous, &Report::Failed { rank, error: format!("pair {from} -> {to}: {e}") })?;
                return Err(e);
            }
        }
    }
    echoes.join().map_err(|_| TransportError::Internal("the echo thread panicked".into()))?
}
