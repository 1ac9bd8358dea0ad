//! Why no plan could be made, and what to change: [`PlanError`], each refusal a [`Message`] whose
//! settings each front end says in its own words (the strict refusal with every class of device
//! and the settings that would make it work).
//!
//! The planner ([`crate::plan()`]) decides; this module only says. It owns the refusals' words and
//! the short forms they use (unique UUID prefixes, the first few of a list).

use std::fmt;

use gpu_topology::text::printable;

use crate::classes::{DeviceClass, largest_class};
use crate::memory::MemoryError;
use crate::request::{DEFAULT_MEMORY_TOLERANCE_PCT, MEMORY_TOLERANCE_PCT, SpecSource, WORKERS_PER_DEVICE};
use crate::spec::SpecError;
use crate::wording::{Message, Remedy, Setting};

/// Why no plan could be made.
///
/// Each refusal says what to change as a [`Message`] ([`PlanError::message`]): the settings it
/// names are [`Setting`]s, which each front end says in its own words. `Display` says it in the
/// command line's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The device spec is wrong.
    // Not a `source`: the message already says it, and error chains would print it twice.
    Spec {
        /// What is wrong.
        error: SpecError,
        /// Where the spec came from.
        from: SpecSource,
    },
    /// Nothing to run on.
    NoDevices {
        /// Why.
        reason: String,
    },
    /// `strict` found devices that are not alike.
    Mixed {
        /// The classes found.
        classes: Vec<DeviceClass>,
        /// The tolerance used.
        tolerance_pct: f64,
    },
    /// `strict` found MIG instances beside whole GPUs that were not named explicitly.
    MixedMigAndWhole {
        /// MIG instances selected.
        mig: usize,
        /// Whole GPUs selected.
        whole: usize,
    },
    /// The device memory limit cannot be applied.
    MemoryLimit(MemoryError),
    /// Workers per device out of range ([`WORKERS_PER_DEVICE`]).
    WorkersPerDevice(u32),
    /// More workers on one host than `limits::MAX_WORKERS_PER_HOST`.
    TooManyWorkers {
        /// The host.
        host: String,
        /// How many workers it would run.
        workers: usize,
        /// The limit.
        limit: usize,
    },
    /// The memory tolerance out of range ([`MEMORY_TOLERANCE_PCT`]).
    Tolerance(f64),
}

impl PlanError {
    /// What is wrong and what to change, naming settings as [`Setting`]s.
    pub fn message(&self) -> Message {
        match self {
            PlanError::Spec { error, from } => {
                let within = Message::from(" (in ");
                let within = match from {
                    SpecSource::Flag => within.setting(Setting::Devices),
                    SpecSource::Environment => within.text("CUDA_VISIBLE_DEVICES"),
                };
                error.message().append(within).text(")")
            }
            PlanError::NoDevices { reason } => format!("no compute device was selected: {reason}").into(),
            PlanError::Mixed { classes, tolerance_pct } => mixed_message(classes, *tolerance_pct),
            PlanError::MixedMigAndWhole { mig, whole } => Message::from(format!(
                "the selection mixes {mig} MIG instance(s) with {whole} whole GPU(s), which differ in memory, speed \
                 and transport (no CUDA IPC to or from a MIG instance); name the devices to use with "
            ))
            .setting(Setting::Devices)
            .text(" (or CUDA_VISIBLE_DEVICES), or pass ")
            .setting_to(Setting::Policy, "warn")
            .text(" to go on with both"),
            PlanError::MemoryLimit(e) => Message::new().name(Setting::DeviceMemoryLimit).text(format!(": {e}")),
            PlanError::WorkersPerDevice(n) => Message::new()
                .setting_to(Setting::WorkersPerDevice, n.to_string())
                .text(format!(" is out of range: give {} to {}", WORKERS_PER_DEVICE.start(), WORKERS_PER_DEVICE.end())),
            PlanError::TooManyWorkers { host, workers, limit } => Message::from(format!(
                "host `{}` would run {workers} workers, over gpucluster's limit of {limit} workers on one host, \
                 which no real host needs; lower ",
                printable(host)
            ))
            .setting(Setting::WorkersPerDevice)
            .text(" or select fewer devices"),
            PlanError::Tolerance(pct) => {
                Message::new().setting_to(Setting::MemoryTolerance, pct.to_string()).text(format!(
                    " is out of range: give a percentage from {} to {} ({DEFAULT_MEMORY_TOLERANCE_PCT} by default)",
                    MEMORY_TOLERANCE_PCT.start(),
                    MEMORY_TOLERANCE_PCT.end()
                ))
            }
        }
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.message().fmt(f)
    }
}

fn first_few(items: &[String]) -> String {
    const SHOWN: usize = 3;
    if items.len() <= SHOWN {
        items.join(", ")
    } else {
        format!("{} and {} more", items[..SHOWN].join(", "), items.len() - SHOWN)
    }
}

fn mixed_message(classes: &[DeviceClass], tolerance_pct: f64) -> Message {
    use std::fmt::Write;
    let mut m = format!(
        "the selected devices are not alike (policy strict, memory tolerance {tolerance_pct}%):\n\
         {} classes differ in memory or SMs, and mixing them risks imbalance and out-of-memory errors\n",
        classes.len()
    );
    const CLASSES_SHOWN: usize = 8;
    // Unique prefixes of the UUIDs (which a device list takes), so that the lines fit a
    // terminal; `plan --json` has them whole.
    let all: Vec<&str> = classes.iter().flat_map(|c| c.devices.iter().map(String::as_str)).collect();
    for c in classes.iter().take(CLASSES_SHOWN) {
        let _ = writeln!(
            m,
            "  class {}: {} device(s), {}, {} SMs, {} on {}: {}",
            c.name,
            c.devices.len(),
            c.memory_bytes.map_or_else(|| "unknown memory".to_owned(), gpu_topology::units::gib),
            c.sm_count.map_or("unknown".to_owned(), |s| s.to_string()),
            first_few(&c.profiles),
            first_few(&c.hosts),
            first_few(&c.devices.iter().map(|d| unique_prefix(d, &all).to_owned()).collect::<Vec<_>>())
        );
    }
    let mut message = Message::from(m);
    if classes.len() > CLASSES_SHOWN {
        message = message
            .text(format!("  and {} more classes (`", classes.len() - CLASSES_SHOWN))
            .setting_to(Setting::Policy, "grouped")
            .text("` lists them all)\n");
    }
    let largest = &classes[largest_class(classes)];
    let resources: Vec<String> = classes.iter().map(|c| c.resource.clone()).collect();
    let mut remedies = vec![
        Remedy::new(
            Setting::Policy,
            "largest-group",
            format!("keep class {} ({} devices) and leave the others out", largest.name, largest.devices.len()),
        ),
        Remedy::new(
            Setting::Policy,
            "grouped",
            format!("keep all; each class gets its own Dask resource ({})", first_few(&resources)),
        ),
        Remedy::new(Setting::Policy, "warn", "keep all as they are"),
    ];
    let devices: Vec<&str> = largest.devices.iter().map(|d| unique_prefix(d, &all)).collect();
    let use_largest = format!("use class {} only", largest.name);
    remedies.push(if devices.len() <= 16 {
        Remedy::new(Setting::Devices, devices.join(","), use_largest)
    } else {
        Remedy::new(Setting::Devices, format!("{},...", devices[..3].join(",")), use_largest).with_aside(
            Message::from(format!("({} devices: `", devices.len()))
                .setting_to(Setting::Policy, "largest-group")
                .text("` keeps the same ones)"),
        )
    });
    let same_sms = classes.windows(2).all(|w| w[0].sm_count == w[1].sm_count);
    let (lo, hi) =
        (classes.iter().filter_map(|c| c.memory_bytes).min(), classes.iter().filter_map(|c| c.memory_bytes_max).max());
    if let (true, Some(lo), Some(hi)) = (same_sms, lo, hi) {
        let needed = ((hi - lo) as f64 / hi as f64 * 100.0).ceil();
        remedies.push(Remedy::new(
            Setting::MemoryTolerance,
            needed.to_string(),
            format!("count memory within {needed}% as alike"),
        ));
    }
    message.text("to go on, choose one of:\n").remedies(remedies)
}

/// The class `largest-group` keeps: most devices, then more memory, then more SMs, then first.
/// The shortest prefix of `uuid` that names it alone among `all`: its `MIG-`/`GPU-` and at least
/// 8 hex digits (a prefix `--devices` takes as the device).
fn unique_prefix<'a>(uuid: &'a str, all: &[&str]) -> &'a str {
    let start = uuid.find('-').map_or(0, |dash| dash + 1);
    (start + 8..uuid.len())
        .filter(|&end| uuid.is_char_boundary(end))
        .map(|end| &uuid[..end])
        .find(|prefix| all.iter().filter(|d| d.starts_with(prefix)).count() == 1)
        .unwrap_or(uuid)
}
