//! Argument types and value parsers that several commands share: the device selection, the
//! restart policy, size lists, counts and durations, and reading the topology they name.
//!
//! This module sits below the commands: `cli` (the grammar and dispatch), `up`, `dask` and
//! `bench_dask` import from it, and it imports none of them, so dependencies go one way.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use cluster_core::{DEFAULT_MEMORY_TOLERANCE_PCT, PlanRequest, Policy, SpecSource};
use gpu_topology::{FileSource, Snapshot, TopologySource, TopologySpec};

/// Which devices become workers and how they are configured (shared by plan, doctor, up, dask).
#[derive(Debug, Args)]
pub(crate) struct SelectionArgs {
    /// Devices to use, in the grammar of CUDA_VISIBLE_DEVICES: indices, GPU-<uuid>, MIG-<uuid>,
    /// MIG-GPU-<uuid>/<gi>/<ci> or unique UUID prefixes, comma-separated. Default: CUDA_VISIBLE_DEVICES
    /// if set, else every compute device.
    #[arg(long, allow_negative_numbers = true, value_name = "SPEC")]
    devices: Option<String>,
    /// What to do when the devices are not alike in memory and SMs: strict (refuse, explaining),
    /// warn, largest-group or grouped (a Dask resource per class).
    #[arg(long, default_value = "strict", value_parser = parse_policy, value_name = "POLICY")]
    policy: Policy,
    /// Memory within this many percent counts as alike.
    #[arg(
        long,
        default_value_t = DEFAULT_MEMORY_TOLERANCE_PCT,
        value_parser = tolerance,
        allow_negative_numbers = true,
        value_name = "PCT"
    )]
    memory_tolerance: f64,
    /// Device memory limit per worker: auto, default (80 %), a fraction, bytes or a size such as
    /// 10GB; computed from each worker's own device.
    #[arg(long, default_value = "default", allow_negative_numbers = true, value_name = "X")]
    device_memory_limit: String,
    /// Workers per device (a whole GPU or a MIG instance, 1 to 64); they split its memory limit.
    #[arg(long, default_value_t = 1, value_parser = workers_per_device, allow_negative_numbers = true, value_name = "N")]
    workers_per_device: u32,
    /// Plan across hosts: the `gpucluster list --json` of each host (repeatable); replaces --topology.
    #[arg(long, value_name = "FILE")]
    inventory: Vec<PathBuf>,
}

fn parse_policy(s: &str) -> Result<Policy, String> {
    s.parse()
}

impl SelectionArgs {
    /// Whether the snapshot comes from `--inventory` files (a description, not this machine).
    pub(crate) fn uses_inventories(&self) -> bool {
        !self.inventory.is_empty()
    }

    pub(crate) fn request(&self) -> PlanRequest {
        let devices = match &self.devices {
            Some(d) => Some((d.clone(), SpecSource::Flag)),
            None => std::env::var("CUDA_VISIBLE_DEVICES").ok().map(|d| (d, SpecSource::Environment)),
        };
        PlanRequest {
            devices,
            policy: self.policy,
            memory_tolerance_pct: self.memory_tolerance,
            device_memory_limit: self.device_memory_limit.clone(),
            workers_per_device: self.workers_per_device,
        }
    }

    /// The snapshot to plan on: the inventories if given, else the topology source.
    pub(crate) async fn snapshot(&self, spec: &TopologySpec) -> anyhow::Result<Snapshot> {
        if self.inventory.is_empty() {
            return load(spec).await;
        }
        let mut inventories = Vec::new();
        let mut hosts = 0;
        for path in &self.inventory {
            tracing::info!("reading the inventory {}", crate::table::escape(&path.display().to_string()));
            let snapshot = FileSource::new(path.clone()).snapshot().await.with_context(|| {
                format!("reading the inventory {}", crate::table::escape(&path.display().to_string()))
            })?;
            hosts += snapshot.hosts.len();
            inventories.push(snapshot);
            // Past the limit, reading on only costs memory: joining refuses them anyway.
            if hosts > gpu_topology::limits::MAX_HOSTS {
                break;
            }
        }
        Ok(cluster_core::merge_inventories(inventories)?)
    }
}

/// Reads the snapshot the user pointed at.
pub(crate) async fn load(spec: &TopologySpec) -> anyhow::Result<Snapshot> {
    let shown = crate::table::escape(&spec.to_string()).into_owned();
    tracing::info!("reading the topology from {shown}");
    let source = spec.open()?;
    let snapshot = source.snapshot().await.with_context(|| format!("reading the topology from {shown}"))?;
    for host in &snapshot.hosts {
        tracing::debug!(
            "host {}: {} GPU(s), {} MIG instance(s), driver {}",
            crate::table::escape(&host.hostname),
            host.gpus.len(),
            host.gpus.iter().map(|g| g.mig_instances.len()).sum::<usize>(),
            host.driver_version.as_deref().map_or("unknown".into(), crate::table::escape)
        );
    }
    Ok(snapshot)
}

/// `--restart`: whether workers that fail are started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RestartArg {
    /// They stay down.
    Never,
    /// They are started again, up to --max-restarts times.
    OnFailure,
}

impl From<RestartArg> for launcher::RestartFlag {
    fn from(r: RestartArg) -> Self {
        match r {
            RestartArg::Never => launcher::RestartFlag::Never,
            RestartArg::OnFailure => launcher::RestartFlag::OnFailure,
        }
    }
}

/// A list of sizes as one argument (clap would otherwise take `Vec` as repeated values).
#[derive(Debug, Clone)]
pub(crate) struct SizeList(pub(crate) Vec<usize>);

pub(crate) fn size_list(s: &str) -> Result<SizeList, String> {
    parse_sizes(s).map(SizeList)
}

/// A whole number from `low` to `high`. Flags that take one accept a leading `-`
/// (`allow_negative_numbers`), so that `-1` gets this message rather than clap's "unexpected
/// argument" (whose tip, `-- -1`, would start `up`'s worker command).
pub(crate) fn count(s: &str, low: u64, high: u64) -> Result<u64, String> {
    let n: i128 = s.trim().parse().map_err(|_| format!("`{s}` is not a whole number; give {low} to {high}"))?;
    u64::try_from(n)
        .ok()
        .filter(|n| (low..=high).contains(n))
        .ok_or_else(|| format!("{n} is out of range: give {low} to {high}"))
}

pub(crate) fn repeats(s: &str) -> Result<usize, String> {
    count(s, 1, 10_000).map(|n| n as usize)
}

pub(crate) fn max_restarts(s: &str) -> Result<u32, String> {
    count(s, 0, 1000).map(|n| n as u32)
}

pub(crate) fn grace(s: &str) -> Result<f64, String> {
    let seconds: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of seconds; give 0 to 3600"))?;
    if (0.0..=3600.0).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(format!("{seconds} is out of range: give 0 to 3600 seconds"))
    }
}

fn workers_per_device(s: &str) -> Result<u32, String> {
    let range = cluster_core::WORKERS_PER_DEVICE;
    count(s, u64::from(*range.start()), u64::from(*range.end())).map(|n| n as u32)
}

fn tolerance(s: &str) -> Result<f64, String> {
    let pct: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a percentage; give 0 to 100"))?;
    if cluster_core::MEMORY_TOLERANCE_PCT.contains(&pct) {
        Ok(pct)
    } else {
        Err(format!("{pct} is out of range: give a percentage from 0 to 100"))
    }
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
