//! The Python package's words for the core crates' messages (`cluster_core::wording`): keyword
//! arguments for settings (`policy="largest-group"`, `memory_tolerance=13`, `devices=...`) and
//! functions for commands (`gpucluster.topology()`, `gpucluster.presets()`).
//!
//! Every binding that raises a core error or issues a finding renders it through [`Python`];
//! nothing here reads or rewrites finished text. Which setting a message names, and with what
//! value, is the core's; only the spelling is this module's.

use cluster_core::wording::{Call, CommandLine, Setting, Terms};

/// How a keyword's value is written in Python.
#[derive(Clone, Copy)]
enum Kind {
    /// A string, always quoted (`devices="0"`, `policy="warn"`).
    Str,
    /// A number where the value is one (`memory_tolerance=13`, `device_memory_limit=0.5`), else
    /// a string (`device_memory_limit="10GB"`).
    Number,
    /// A flag: `insecure=True`.
    Bool,
}

/// The keyword argument of `setting` in `gpucluster.plan()`, `gpucluster.topology()` and
/// `gpucluster.dask.LocalCluster`, and how its value is written; `None` for a setting that only
/// the command line has.
fn keyword(setting: Setting) -> Option<(&'static str, Kind)> {
    Some(match setting {
        Setting::Topology => ("topology", Kind::Str),
        Setting::Devices => ("devices", Kind::Str),
        Setting::Policy => ("policy", Kind::Str),
        Setting::MemoryTolerance => ("memory_tolerance", Kind::Number),
        Setting::DeviceMemoryLimit => ("device_memory_limit", Kind::Number),
        Setting::WorkersPerDevice => ("workers_per_device", Kind::Number),
        Setting::Protocol => ("protocol", Kind::Str),
        Setting::Insecure => ("insecure", Kind::Bool),
        Setting::TlsCredentials => ("security", Kind::Str),
        Setting::Dashboard => ("dashboard_address", Kind::Str),
        Setting::Host => ("host", Kind::Str),
        Setting::MemoryLimit => ("memory_limit", Kind::Number),
        Setting::Threads => ("threads_per_worker", Kind::Number),
        Setting::Workers => ("n_workers", Kind::Number),
        Setting::RmmPoolSize => ("rmm_pool_size", Kind::Number),
        Setting::Inventory | Setting::Python | Setting::Grace | Setting::SchedulerFile => return None,
        // `Setting` is non-exhaustive: a setting added to the core without a keyword here is
        // said as the command line says it, which is still true, until it gets one.
        _ => return None,
    })
}

/// A Python string literal of `text`.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The words of a Python caller.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PythonTerms;

impl Terms for PythonTerms {
    fn setting(&self, setting: Setting, value: Option<&str>) -> String {
        let Some((keyword, kind)) = keyword(setting) else {
            return format!("`{}` (on the command line)", CommandLine.setting(setting, value));
        };
        match (value, kind) {
            (Some(v), Kind::Number | Kind::Bool) if v.parse::<f64>().is_ok() => format!("{keyword}={v}"),
            (Some(v), _) => format!("{keyword}={}", quoted(v)),
            (None, Kind::Bool) => format!("{keyword}=True"),
            (None, _) => format!("{keyword}=..."),
        }
    }

    fn name(&self, setting: Setting) -> String {
        match keyword(setting) {
            Some((keyword, _)) => keyword.to_owned(),
            None => format!("`{}` (on the command line)", CommandLine::flag(setting)),
        }
    }

    fn call(&self, call: Call) -> String {
        match call {
            Call::List | Call::ListJson => "`gpucluster.topology()`".to_owned(),
            Call::SnapshotJson => "the JSON of `gpucluster.topology()`".to_owned(),
            Call::ListPresets => "`gpucluster.presets()`".to_owned(),
            Call::Plan => "`gpucluster.plan()`".to_owned(),
            Call::Dask => "`gpucluster.dask.LocalCluster`".to_owned(),
            // `Call` is non-exhaustive, and `gpucluster up` has no Python counterpart: the
            // command line's name, said as such.
            other => format!("{} (on the command line)", CommandLine.call(other)),
        }
    }
}
