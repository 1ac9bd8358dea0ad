//! The facts a Dask cluster is built from, beside the plan and the request: what the Python
//! environment offers ([`PythonFacts`], probed by [`super::python::probe_python`] for the command
//! line and read in process by the Python package) and what this host offers ([`HostFacts`]).
//!
//! Plain data: the spec ([`super::spec`]) decides from them and never reads the machine itself.

use serde::{Deserialize, Serialize};

/// What the Python environment offers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PythonFacts {
    /// The interpreter (`sys.executable`), as messages name it (`... -m pip install bokeh`).
    pub executable: String,
    /// `distributed.__version__`.
    pub distributed: String,
    /// Whether `dask_cuda` can be imported.
    pub dask_cuda: bool,
    /// Whether `distributed_ucxx` (Dask's UCX comm) can be imported.
    pub ucxx: bool,
    /// Whether the `gpucluster` package's comm is registered with distributed.
    pub gpucluster: bool,
    /// Whether `bokeh`, which Dask's dashboard needs, can be imported.
    pub bokeh: bool,
    /// Whether `rmm` (RAPIDS' memory manager, for an RMM pool) can be imported.
    pub rmm: bool,
}

/// What this host offers the cluster's processes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostFacts {
    /// The memory the cluster's processes may use, bytes (the host's, or its cgroup's limit if
    /// lower), where known.
    pub memory_bytes: Option<u64>,
    /// The CPUs the launching process may run on (its affinity), where known.
    pub cpus: Vec<usize>,
}

impl PythonFacts {
    /// The command that installs `package` into this Python.
    pub fn pip_install(&self, package: &str) -> String {
        let python = if self.executable.is_empty() { "python3" } else { self.executable.as_str() };
        format!("{} -m pip install {package}", gpu_topology::text::printable(python))
    }
}

impl HostFacts {
    /// This host's, as the launching process sees it.
    pub fn of_this_process() -> Self {
        Self { memory_bytes: host_memory(), cpus: allowed_cpus() }
    }
}

/// The memory this process's cluster may use: `MemTotal` of `/proc/meminfo`, or the cgroup's
/// limit where it is lower (as Dask reads it: a worker's limit above it is never met).
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    let total = kib.checked_mul(1024)?;
    Some(cgroup_memory_limit().map_or(total, |limit| limit.min(total)))
}

/// The memory limit of this process's cgroup (v2 `memory.max`, else v1 `memory.limit_in_bytes`).
fn cgroup_memory_limit() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse::<u64>().ok());
    read("/sys/fs/cgroup/memory.max").or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it for this
    // process and CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_sees_memory_and_cpus() {
        let facts = HostFacts::of_this_process();
        assert!(facts.memory_bytes.is_some_and(|m| m > 64 << 20), "{facts:?}");
        assert!(!facts.cpus.is_empty(), "{facts:?}");
        assert!(facts.cpus.len() <= std::thread::available_parallelism().map_or(usize::MAX, |n| n.get().max(1024)));
    }

    #[test]
    fn facts_read_back_and_unknown_keys_are_refused() {
        let facts = PythonFacts { distributed: "2026.8.0".into(), gpucluster: true, ..PythonFacts::default() };
        let text = serde_json::to_string(&facts).expect("json");
        assert_eq!(serde_json::from_str::<PythonFacts>(&text).expect("back"), facts);
        assert!(serde_json::from_str::<PythonFacts>(r#"{"gpuclustr": true}"#).is_err(), "a typo is not a fact");
    }
}
