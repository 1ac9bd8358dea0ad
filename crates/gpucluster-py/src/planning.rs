//! The planning bindings: the machine a topology source describes (`topology_json`), the
//! simulated presets (`presets`), and the plan `gpucluster plan --json` prints (`plan_json`),
//! each the command line's JSON, turned into Python objects by `python/gpucluster/__init__.py`.
//!
//! Reading and planning are `gpu-topology`'s and `cluster-core`'s; joining plans and paths is
//! `launcher::plan_paths`'. This module only crosses the boundary: arguments in, JSON out, the
//! core crates' errors as `TopologyError` and `PlanError` in a Python caller's terms.

use pyo3::prelude::*;

use crate::exceptions::{PlanError, TopologyError};

/// A command-line flag of the core crates' messages and the keyword argument a Python caller
/// gives the same value with (`gpucluster.plan`, `gpucluster.dask.LocalCluster`).
struct Keyword {
    /// The flag as the messages spell it.
    flag: &'static str,
    /// The keyword argument.
    keyword: &'static str,
    /// Whether a word after the flag is its value (one the flag accepts) rather than prose:
    /// `--policy warn to go on` has a value, `lower --workers-per-device or` has none.
    accepts: fn(&str) -> bool,
    /// Whether the value is a Python string even when it looks like a number (`devices="0"`).
    string: bool,
}

/// Every flag that the messages of `gpu-topology` and `cluster-core` reaching Python name.
const KEYWORDS: &[Keyword] = &[
    Keyword {
        flag: "--topology",
        keyword: "topology",
        accepts: |v| v.contains(':') && v.parse::<gpu_topology::TopologySpec>().is_ok(),
        string: true,
    },
    Keyword {
        flag: "--devices",
        keyword: "devices",
        // The refusal of a large mix shortens its list to `a,b,c,...`.
        accepts: |v| v.trim_end_matches(",...").parse::<cluster_core::DeviceSpec>().is_ok(),
        string: true,
    },
    Keyword {
        flag: "--policy",
        keyword: "policy",
        accepts: |v| v.parse::<cluster_core::Policy>().is_ok(),
        string: true,
    },
    Keyword {
        flag: "--memory-tolerance",
        keyword: "memory_tolerance",
        accepts: |v| v.parse::<f64>().is_ok(),
        string: false,
    },
    Keyword {
        flag: "--device-memory-limit",
        keyword: "device_memory_limit",
        accepts: |v| cluster_core::memory::validate(v).is_ok(),
        string: false,
    },
    Keyword {
        flag: "--workers-per-device",
        keyword: "workers_per_device",
        accepts: |v| v.parse::<u32>().is_ok(),
        string: false,
    },
];

/// Commands of the messages and the Python calls that return the same, longest phrase first.
const CALLS: &[(&str, &str)] = &[
    ("the JSON `gpucluster list --json` prints", "the JSON of `gpucluster.topology()`"),
    ("as `gpucluster list --json` writes them", "as `gpucluster.topology()` returns them"),
    ("`gpucluster list --presets`", "`gpucluster.presets()`"),
    ("`gpucluster list --json`", "`gpucluster.topology()`"),
    ("`gpucluster list`", "`gpucluster.topology()`"),
];

/// A message of the core crates (written for the command line, whose golden tests fix its
/// text) in the terms of a Python caller: `--policy largest-group` becomes
/// `policy="largest-group"`, `--memory-tolerance 13` becomes `memory_tolerance=13`, a flag
/// without a value (`(in --devices)`) becomes `devices=...` (or the bare keyword before a colon),
/// and `gpucluster list` commands become `gpucluster.topology()` / `gpucluster.presets()`.
///
/// The core crates build these messages deep inside (a refused mix lists the flags that would
/// make it work, beside each class's devices), so the binding rewrites the finished text rather
/// than each error variant; the tables above ([`KEYWORDS`], [`CALLS`]) are the whole vocabulary.
/// A flag's value is the next word only when the flag accepts it, so prose after a flag stays
/// prose. Columns stay aligned: a rewritten flag followed by two or more spaces keeps the text
/// after those spaces where it was.
fn in_python_terms(message: &str) -> String {
    let mut text = message.to_owned();
    for (command, call) in CALLS {
        text = text.replace(command, call);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text.as_str();
    while let Some(at) = rest.find("--") {
        out.push_str(&rest[..at]);
        let here = &rest[at..];
        let Some(k) = KEYWORDS.iter().find(|k| {
            here.strip_prefix(k.flag)
                .is_some_and(|after| !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-'))
        }) else {
            out.push_str("--");
            rest = &here[2..];
            continue;
        };
        let after = &here[k.flag.len()..];
        // The next word, less the punctuation of the sentence around it.
        let word = after.strip_prefix(' ').map(|w| w.split(char::is_whitespace).next().unwrap_or(""));
        let value = word.map(|w| w.trim_end_matches([',', ';', ')', '`'])).filter(|v| !v.is_empty() && (k.accepts)(v));
        let (written, used) = match value {
            Some(v) if !k.string && v.parse::<f64>().is_ok() => (format!("{}={v}", k.keyword), 1 + v.len()),
            Some(v) => (format!("{}=\"{}\"", k.keyword, v.replace('\\', "\\\\").replace('"', "\\\"")), 1 + v.len()),
            None if after.starts_with(':') => (k.keyword.to_owned(), 0),
            None => (format!("{}=...", k.keyword), 0),
        };
        out.push_str(&written);
        rest = &after[used..];
        let spaces = rest.len() - rest.trim_start_matches(' ').len();
        if spaces >= 2 {
            let was = here[..k.flag.len() + used].chars().count() + spaces;
            out.push_str(&" ".repeat(was.saturating_sub(written.chars().count()).max(2)));
            rest = &rest[spaces..];
        }
    }
    out.push_str(rest);
    out
}

/// The machine that `source` describes, as `gpucluster list --json` prints it (the snapshot's
/// JSON text; the Python side turns it into objects): `nvml` (this machine, through the driver),
/// `sim:NAME`, `file:PATH` or `smi:PATH`, as `--topology` takes them.
#[pyfunction]
#[pyo3(signature = (source = "nvml"))]
pub(crate) fn topology_json(py: Python<'_>, source: &str) -> PyResult<String> {
    let source = source.to_owned();
    py.detach(move || {
        let snapshot = read_topology(&source)?;
        serde_json::to_string_pretty(&snapshot).map_err(|e| TopologyError::new_err(format!("{e}")))
    })
}

/// The snapshot of `source`, or the command line's error for it in Python terms
/// ([`in_python_terms`]).
fn read_topology(source: &str) -> PyResult<gpu_topology::Snapshot> {
    let spec: gpu_topology::TopologySpec = source
        .parse()
        .map_err(|e: gpu_topology::TopologyError| TopologyError::new_err(in_python_terms(&e.to_string())))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| TopologyError::new_err(format!("cannot start a runtime to read the topology: {e}")))?;
    runtime.block_on(async { spec.open()?.snapshot().await }).map_err(|e| {
        let shown = gpu_topology::text::printable(&spec.to_string()).into_owned();
        let hint = match &e {
            // `sim:list` lists the presets on the command line; Python has a function for it.
            gpu_topology::TopologyError::UnknownPreset { name, .. } if name == "list" => {
                "; `sim:list` lists them on the command line only: in Python, `gpucluster.presets()` returns them"
            }
            gpu_topology::TopologyError::UnknownPreset { .. } => "; `gpucluster.presets()` describes each",
            _ => "",
        };
        TopologyError::new_err(in_python_terms(&format!("reading the topology from {shown}: {e}{hint}")))
    })
}

/// The built-in simulated machines, as `gpucluster list --presets` shows them: each preset's
/// name (`sim:NAME` reads it) and its one-line description.
#[pyfunction]
pub(crate) fn presets() -> Vec<(&'static str, String)> {
    gpu_topology::sim::PRESETS.iter().map(|p| (p.name, p.description())).collect()
}

/// `text` (a message of the core crates, such as a plan finding's) in a Python caller's terms:
/// keyword arguments for flags, `gpucluster.topology()` and `gpucluster.presets()` for commands.
#[pyfunction(name = "in_python_terms")]
pub(crate) fn in_python_terms_py(text: &str) -> String {
    in_python_terms(text)
}

/// What `gpucluster plan --json` prints for the machine `source` describes: the workers, each
/// with its device, environment, limits and resources, what was left out and why, and the path
/// between every pair of workers. `devices` is `--devices` (when `None`, `CUDA_VISIBLE_DEVICES`
/// as the command line reads it); the rest are `plan`'s flags of the same names. The JSON is the
/// command line's, findings' text included; errors say the command line's message in Python
/// terms ([`in_python_terms`]).
#[pyfunction]
#[pyo3(signature = (source = "nvml", devices = None, policy = "strict", memory_tolerance = 2.0,
                    device_memory_limit = "default", workers_per_device = 1))]
pub(crate) fn plan_json(
    py: Python<'_>,
    source: &str,
    devices: Option<String>,
    policy: &str,
    memory_tolerance: f64,
    device_memory_limit: &str,
    workers_per_device: u32,
) -> PyResult<String> {
    let policy: cluster_core::Policy = policy.parse().map_err(|e| PlanError::new_err(format!("policy: {e}")))?;
    let (tolerances, counts) = (cluster_core::MEMORY_TOLERANCE_PCT, cluster_core::WORKERS_PER_DEVICE);
    if !tolerances.contains(&memory_tolerance) {
        return Err(PlanError::new_err(format!(
            "memory_tolerance {memory_tolerance} is out of range: give a percentage from {} to {}",
            tolerances.start(),
            tolerances.end()
        )));
    }
    if !counts.contains(&workers_per_device) {
        return Err(PlanError::new_err(format!(
            "workers_per_device {workers_per_device} is out of range: give {} to {}",
            counts.start(),
            counts.end()
        )));
    }
    let devices = match devices {
        Some(d) => Some((d, cluster_core::SpecSource::Flag)),
        None => std::env::var("CUDA_VISIBLE_DEVICES").ok().map(|d| (d, cluster_core::SpecSource::Environment)),
    };
    let request = cluster_core::PlanRequest {
        devices,
        policy,
        memory_tolerance_pct: memory_tolerance,
        device_memory_limit: device_memory_limit.to_owned(),
        workers_per_device,
    };
    let source = source.to_owned();
    py.detach(move || {
        let snapshot = read_topology(&source)?;
        let plan =
            cluster_core::plan(&snapshot, &request).map_err(|e| PlanError::new_err(in_python_terms(&e.to_string())))?;
        let output = launcher::plan_paths::PlanOutput::new(&snapshot, &plan);
        serde_json::to_string_pretty(&output).map_err(|e| PlanError::new_err(format!("{e}")))
    })
}
