//! The Dask cluster spec, table-driven: each case in `tests/dask-specs/NAME.toml` names a
//! machine, a plan request, a Dask request and the facts of the Python environment and the host;
//! what `launcher::dask::cluster_spec` makes of them (the spec as JSON, or the refusal) is diffed
//! with the blessed `NAME.json`.
//!
//! Both front ends run this one function (`gpucluster dask local|worker` and
//! `gpucluster.dask.LocalCluster`), so these snapshots pin what both start. This is the one runner:
//! `cargo test -p tests` runs it (`UPDATE_EXPECT=1` rewrites the snapshots), and so does
//! `cargo xtask simulate` (`--bless`), beside the golden scenarios.
//!
//! A case's machine is any topology source (`sim:NAME`, or `file:NAME` beside the case); `real =
//! true` plans it as if it were this machine through NVML (real devices), which no machine of the
//! tests' has.

use std::path::{Path, PathBuf};

use cluster_core::wording::CommandLine;
use launcher::dask::{Credentials, HostFacts, PythonFacts, Request, SchedulerRequest};
use serde::Deserialize;

/// The cases' folder of this checkout, `tests/dask-specs`.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dask-specs")
}

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What the case shows, in a line.
    #[allow(dead_code)] // Read by people: the file's first line says what it pins.
    about: String,
    /// The machine the plan is made of.
    topology: String,
    /// Plan it as this machine through NVML (real devices).
    #[serde(default)]
    real: bool,
    /// The plan comes from inventories.
    #[serde(default)]
    inventories: bool,
    #[serde(default)]
    plan: PlanCase,
    #[serde(default)]
    request: RequestCase,
    #[serde(default)]
    python: PythonFacts,
    #[serde(default)]
    host: HostCase,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanCase {
    devices: Option<String>,
    policy: Option<String>,
    device_memory_limit: Option<String>,
    workers_per_device: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestCase {
    /// The address of the scheduler to join; none: a local cluster.
    join: Option<String>,
    protocol: Option<String>,
    #[serde(default)]
    insecure: bool,
    /// `absent`, `given` or `can-generate`; by default what each front end has: a local cluster
    /// can make its own, workers that join have none.
    credentials: Option<String>,
    host: Option<String>,
    dashboard: Option<String>,
    memory_limit: Option<String>,
    threads: Option<u32>,
    workers: Option<usize>,
    rmm_pool_size: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostCase {
    memory_bytes: Option<u64>,
    /// A Linux CPU list.
    cpus: String,
}

impl Default for HostCase {
    fn default() -> Self {
        Self { memory_bytes: Some(256 << 30), cpus: "0-63".into() }
    }
}

/// Runs the cases of `dir` named in `only` (every one when empty) and returns the names of
/// those whose spec differs from their snapshot; with `bless`, a differing snapshot is rewritten
/// instead. It reports one line per case on stdout, as the scenario runner does.
///
/// # Errors
/// Text saying what went wrong when no case is found, or one cannot be read, parsed or written.
// Printing is the report: xtask shows it, and `cargo test` shows it for a failed test.
#[allow(clippy::print_stdout)]
pub fn run_all(dir: &Path, bless: bool, only: &[&str]) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".toml").map(str::to_owned))
        .filter(|n| only.is_empty() || only.contains(&n.as_str()))
        .collect();
    names.sort();
    if names.is_empty() && only.is_empty() {
        return Err(format!("no Dask spec case found in {}", dir.display()));
    }
    let mut failed = Vec::new();
    for name in &names {
        let actual = run_case(dir, name)?;
        let snapshot = dir.join(format!("{name}.json"));
        let expected = std::fs::read_to_string(&snapshot).unwrap_or_default();
        if actual == expected {
            println!("ok       dask-spec {name}");
        } else if bless {
            std::fs::write(&snapshot, &actual).map_err(|e| format!("writing {}: {e}", snapshot.display()))?;
            println!("blessed  dask-spec {name}");
        } else {
            println!("FAILED   dask-spec {name}");
            crate::scenarios::print_diff(&expected, &actual);
            failed.push(format!("dask-spec {name}"));
        }
    }
    println!("{} Dask spec case(s) passed, {} failed", names.len() - failed.len(), failed.len());
    Ok(failed)
}

/// The spec of one case as its snapshot holds it: pretty JSON, `{"refused": ...}` for a refusal.
fn run_case(dir: &Path, name: &str) -> Result<String, String> {
    let path = dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let case: Case = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let source = match case.topology.strip_prefix("file:") {
        Some(file) => format!("file:{}", dir.join(file).display()),
        None => case.topology.clone(),
    };
    let spec: gpu_topology::TopologySpec = source.parse().map_err(|e| format!("{}: {e}", path.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().build().map_err(|e| e.to_string())?;
    let snapshot =
        runtime.block_on(async { spec.open()?.snapshot().await }).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut plan_request = cluster_core::PlanRequest {
        devices: case.plan.devices.map(|d| (d, cluster_core::SpecSource::Flag)),
        ..cluster_core::PlanRequest::default()
    };
    if let Some(policy) = &case.plan.policy {
        plan_request.policy = policy.parse().map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(limit) = &case.plan.device_memory_limit {
        plan_request.device_memory_limit = limit.clone();
    }
    if let Some(n) = case.plan.workers_per_device {
        plan_request.workers_per_device = n;
    }
    let outcome = match cluster_core::plan(&snapshot, &plan_request) {
        Err(e) => serde_json::json!({ "refused by the planner": e.to_string() }),
        Ok(plan) => {
            let output = launcher::plan_paths::PlanOutput::new(&snapshot, &plan);
            let scheduler = match &case.request.join {
                Some(address) => SchedulerRequest::Join { address: address.clone() },
                None => SchedulerRequest::Local,
            };
            let credentials = match case.request.credentials.as_deref() {
                None if case.request.join.is_none() => Credentials::CanGenerate,
                None | Some("absent") => Credentials::Absent,
                Some("given") => Credentials::Given,
                Some("can-generate") => Credentials::CanGenerate,
                Some(other) => return Err(format!("{}: credentials {other:?}", path.display())),
            };
            let topology = if case.real { gpu_topology::TopologySpec::Nvml } else { spec.clone() };
            let protocol = case.request.protocol.as_deref().unwrap_or("auto");
            let request = Request {
                inventories: case.inventories,
                protocol: protocol.parse().map_err(|e| format!("{}: {e}", path.display()))?,
                insecure: case.request.insecure,
                credentials,
                host: case.request.host,
                dashboard: case.request.dashboard,
                memory_limit: case.request.memory_limit,
                threads: case.request.threads.unwrap_or(1),
                workers: case.request.workers,
                rmm_pool_size: case.request.rmm_pool_size,
                device_memory_limit_asked: plan_request.device_memory_limit
                    != cluster_core::PlanRequest::default().device_memory_limit,
                ..Request::new(topology, scheduler, "PRIVATE_DIRECTORY")
            };
            let host = HostFacts {
                memory_bytes: case.host.memory_bytes,
                cpus: gpu_topology::cpulist::parse_lenient(&case.host.cpus),
            };
            match launcher::dask::cluster_spec(&output, &request, &case.python, &host) {
                Ok(spec) => spec.to_json(&CommandLine),
                Err(e) => serde_json::json!({ "refused": e.to_string() }),
            }
        }
    };
    let mut text = serde_json::to_string_pretty(&outcome).map_err(|e| e.to_string())?;
    text.push('\n');
    Ok(text)
}
