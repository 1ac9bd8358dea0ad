//! What the user asks the planner for ([`PlanRequest`]): which devices, the homogeneity
//! [`Policy`], the memory tolerance, the device memory limit and workers per device, with their
//! defaults and the ranges a request may give. Plain data; the planner (`plan.rs`) decides.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// What to do when the selected devices are not alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Refuse a mix, explaining each class and the settings that would make it work.
    #[default]
    Strict,
    /// Go on with every device, reporting the mix as a warning.
    Warn,
    /// Keep the largest class; ties go to the class with more memory per device, then more SMs,
    /// then the one selected first.
    LargestGroup,
    /// Keep every device; each class gets its own Dask resource so work can be routed by size.
    Grouped,
}

impl Policy {
    /// Every policy's name, for help and errors.
    pub const NAMES: [&'static str; 4] = ["strict", "warn", "largest-group", "grouped"];
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Strict => "strict",
            Policy::Warn => "warn",
            Policy::LargestGroup => "largest-group",
            Policy::Grouped => "grouped",
        })
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict" => Ok(Policy::Strict),
            "warn" => Ok(Policy::Warn),
            "largest-group" => Ok(Policy::LargestGroup),
            "grouped" => Ok(Policy::Grouped),
            _ => Err(format!("unknown policy `{s}`; the policies are {}", Policy::NAMES.join(", "))),
        }
    }
}

/// Where the device spec came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpecSource {
    /// `--devices`.
    Flag,
    /// `CUDA_VISIBLE_DEVICES` in the environment.
    Environment,
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    /// Devices to use (`--devices`, else `CUDA_VISIBLE_DEVICES`), with where the text came from;
    /// `None` selects every compute device.
    pub devices: Option<(String, SpecSource)>,
    /// The homogeneity policy.
    pub policy: Policy,
    /// Memory within this many percent counts as alike.
    pub memory_tolerance_pct: f64,
    /// Device memory limit per worker, in Dask-CUDA's grammar (`default` = 80 %).
    pub device_memory_limit: String,
    /// Workers sharing each device (a whole GPU or a MIG instance); the memory limit is split
    /// between them.
    pub workers_per_device: u32,
}

impl Default for PlanRequest {
    fn default() -> Self {
        Self {
            devices: None,
            policy: Policy::Strict,
            memory_tolerance_pct: DEFAULT_MEMORY_TOLERANCE_PCT,
            device_memory_limit: "default".to_owned(),
            workers_per_device: 1,
        }
    }
}

/// The default memory tolerance: two instances of one profile differ by about 0.6 % (20224 vs
/// 20096 MiB in NVIDIA's guide) and drivers move sizes by about 2 %; a memory slice is 12.5 %.
pub const DEFAULT_MEMORY_TOLERANCE_PCT: f64 = 2.0;

/// The memory tolerances a request may give, in percent.
pub const MEMORY_TOLERANCE_PCT: std::ops::RangeInclusive<f64> = 0.0..=100.0;

/// How many workers may share one device.
pub const WORKERS_PER_DEVICE: std::ops::RangeInclusive<u32> = 1..=64;
