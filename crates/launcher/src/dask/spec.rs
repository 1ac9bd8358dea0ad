//! A Dask cluster, described once: [`cluster_spec`] turns a plan with its paths, the user's
//! [`Request`] and the facts of the Python and the host into a [`ClusterSpec`]: the protocol and
//! why, the scheduler (if this launcher starts one) and one [`WorkerSpec`] per planned worker
//! (name, environment, Dask settings, resources, limits, threads, host, CPUs).
//!
//! Both front ends run this value: `gpucluster dask local|worker` renders it as processes
//! ([`super::command`]), `gpucluster.dask.LocalCluster` as `distributed` Nannies (through
//! `_native.cluster_spec`), so they cannot disagree. Everything a cluster's shape depends on is
//! decided here once: the protocol ([`super::protocol`]), whether the machine is simulated,
//! whether every pair is host-staged, which Dask settings keep the cluster private, the CUDA
//! context UCX needs, the device environment of the comm, memory limits, CPU pinning, and the
//! notes both front ends show. Pure: no IO, no clock, no environment reads; the caller probes.

use std::collections::BTreeMap;

use cluster_core::{WorkerKind, WorkerPlan};
use gpu_topology::TopologySpec;
use serde::{Serialize, Serializer};
use transport::device::{DeviceKind, WorkerDevice};
use transport::{PathRule, TransferPath};

use super::facts::{HostFacts, PythonFacts};
use super::protocol::{Credentials, Protocol, ProtocolFacts, ProtocolRefusal, ProtocolRequest, choose_protocol};
use super::settings::{self, DEFAULT_HOST, refused};
use crate::LauncherError;
use crate::plan_paths::PlanOutput;
use crate::worker_env;
use cluster_core::wording::{Message, Setting, Terms};

/// The most threads a worker may be asked for: a typing slip such as `10**6` would otherwise
/// start the worker and fail there, far from the line that asked.
pub const MAX_THREADS_PER_WORKER: u32 = 4096;
/// Where the Dask HTTP servers that serve nothing listen: loopback, a free port.
pub const QUIET_HTTP_ADDRESS: &str = "127.0.0.1:0";
/// The scheduler plugins of the gpucluster package (`gpucluster/scheduler.py`), by module name.
pub const SCHEDULER_PRELOAD: &str = "gpucluster.scheduler";
/// The file of the same text in the private directory, for a scheduler whose Python lacks the
/// package.
pub const SCHEDULER_PLUGINS_FILE: &str = "gpucluster_scheduler.py";

/// Where the workers' scheduler is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedulerRequest {
    /// This launcher starts it, on this host (`dask local`, `LocalCluster`).
    Local,
    /// Someone else's, at this address, already read (from a scheduler file) and checked.
    Join {
        /// Its address (`tls://10.0.0.1:8786`).
        address: String,
    },
}

/// What the user asked for, in no front end's words.
#[derive(Debug, Clone)]
pub struct Request {
    /// The machine the plan describes (`nvml` is this one; anything else is simulated).
    pub topology: TopologySpec,
    /// Whether the plan comes from inventories (descriptions of hosts, not this machine).
    pub inventories: bool,
    /// Where the scheduler is.
    pub scheduler: SchedulerRequest,
    /// The comm protocol asked for.
    pub protocol: ProtocolRequest,
    /// Whether the cluster may be left open to other users.
    pub insecure: bool,
    /// Where TLS credentials can come from.
    pub credentials: Credentials,
    /// The address to listen on, if not the default (this host for a local cluster, Dask's
    /// default for workers that join another host's scheduler).
    pub host: Option<String>,
    /// Where the scheduler serves its dashboard, if one is asked for (`HOST:PORT`, `:PORT`).
    pub dashboard: Option<String>,
    /// Host memory per worker, in Dask's grammar; `None`: this host's memory split evenly.
    pub memory_limit: Option<String>,
    /// Threads per worker.
    pub threads: u32,
    /// At most this many of the planned workers (the first ones).
    pub workers: Option<usize>,
    /// An RMM pool of this size on each worker's device, in Dask's size grammar.
    pub rmm_pool_size: Option<String>,
    /// Whether the device memory limit was asked for (not the default): one nothing can
    /// enforce is then noted.
    pub device_memory_limit_asked: bool,
    /// Where the cluster's processes keep their files (a private directory).
    pub local_directory: String,
}

impl Request {
    /// A request with every default, for `topology`'s plan and `scheduler`, keeping files in
    /// `local_directory`.
    pub fn new(topology: TopologySpec, scheduler: SchedulerRequest, local_directory: impl Into<String>) -> Self {
        Self {
            topology,
            inventories: false,
            scheduler,
            protocol: ProtocolRequest::Auto,
            insecure: false,
            credentials: Credentials::Absent,
            host: None,
            dashboard: None,
            memory_limit: None,
            threads: 1,
            workers: None,
            rmm_pool_size: None,
            device_memory_limit_asked: false,
            local_directory: local_directory.into(),
        }
    }
}

/// A value of Dask's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaskValue {
    /// `True`/`False`.
    Bool(bool),
    /// Text.
    Text(String),
    /// An empty list (`[]`: no HTTP routes).
    EmptyList,
}

impl DaskValue {
    /// As a `DASK_*` environment variable's value (Dask reads it as a Python literal).
    pub fn env_value(&self) -> String {
        match self {
            DaskValue::Bool(true) => "True".into(),
            DaskValue::Bool(false) => "False".into(),
            DaskValue::Text(t) => t.clone(),
            DaskValue::EmptyList => "[]".into(),
        }
    }
}

impl Serialize for DaskValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DaskValue::Bool(b) => s.serialize_bool(*b),
            DaskValue::Text(t) => s.serialize_str(t),
            DaskValue::EmptyList => s.collect_seq(std::iter::empty::<()>()),
        }
    }
}

/// Dask settings by their configuration keys (`distributed.worker.http.routes`).
pub type DaskConfig = BTreeMap<String, DaskValue>;

/// The environment variable Dask reads a configuration key from: `DASK_`, then the key in
/// upper case with `.` as `__` and `-` as `_`.
pub fn dask_env_name(key: &str) -> String {
    format!("DASK_{}", key.to_ascii_uppercase().replace('.', "__").replace('-', "_"))
}

/// Where TLS credentials come from, once the protocol is chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "from")]
pub enum TlsPlan {
    /// No TLS.
    None,
    /// The user's credentials.
    Given,
    /// A fresh CA and one certificate for these hosts (names or addresses), made by the launcher.
    Generate {
        /// What the certificate names.
        hosts: Vec<String>,
    },
}

/// The scheduler a launcher starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchedulerSpec {
    /// Where it listens.
    pub host: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// Where it serves its dashboard; `None`: its HTTP server serves nothing.
    pub dashboard: Option<String>,
    /// Where its HTTP server listens: the dashboard's address, else [`QUIET_HTTP_ADDRESS`].
    pub http_address: String,
    /// Its Dask settings.
    pub dask_config: DaskConfig,
    /// What it preloads: modules by name, or files by path.
    pub preload: Vec<String>,
}

/// One worker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerSpec {
    /// Its name (the plan's).
    pub name: String,
    /// Where it listens, if not Dask's default.
    pub host: Option<String>,
    /// Its environment beyond Dask's settings: its plan's (a MIG worker sees exactly its own
    /// instance) and the comm's device.
    pub env: BTreeMap<String, String>,
    /// Its Dask settings (a front end running processes gives them as `DASK_*` variables).
    pub dask_config: DaskConfig,
    /// Its Dask resources.
    pub resources: BTreeMap<String, f64>,
    /// Threads.
    pub threads: u32,
    /// Host memory limit, bytes; `None`: none.
    pub memory_limit_bytes: Option<u64>,
    /// Device memory limit, bytes; `None`: none.
    pub device_memory_limit_bytes: Option<u64>,
    /// Whether it keeps its data in dask-cuda's store, which moves device objects to host memory
    /// past its device memory limit.
    pub spills_device_memory: bool,
    /// An RMM pool of this many bytes on its device.
    pub rmm_pool_bytes: Option<u64>,
    /// The CPUs its threads are pinned to (none: not pinned).
    pub cpus: Vec<usize>,
    /// Where its HTTP server listens (it serves nothing).
    pub http_address: String,
}

/// Something both front ends tell the user about the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Note(pub Message);

impl Serialize for Note {
    /// In the command line's words (as every [`Message`] is shown): a front end with other
    /// words writes them with [`ClusterSpec::to_json`].
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

/// A Dask cluster: what both front ends run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterSpec {
    /// The protocol every process speaks; `None`: workers joining a scheduler speak as it does.
    pub protocol: Option<Protocol>,
    /// Why, in words (empty when `protocol` is `None`).
    pub protocol_reason: String,
    /// The TLS credentials the processes present.
    pub tls: TlsPlan,
    /// Whether the devices are simulated (nothing may ask a driver about them).
    pub simulated: bool,
    /// Whether workers are dask-cuda's (real devices, dask-cuda installed).
    pub dask_cuda: bool,
    /// The scheduler this launcher starts, if any.
    pub scheduler: Option<SchedulerSpec>,
    /// The scheduler the workers join, if not ours.
    pub join: Option<String>,
    /// One per planned worker kept.
    pub workers: Vec<WorkerSpec>,
    /// Warnings both front ends show.
    pub notes: Vec<Note>,
}

/// Whether processes speaking `protocol` (`None`: as the scheduler at `join` does) speak UCX.
fn speaks_ucx(protocol: Option<Protocol>, join: Option<&str>) -> bool {
    match protocol {
        Some(p) => p == Protocol::Ucx,
        None => join.is_some_and(|a| a.starts_with("ucx://") || a.starts_with("ucxx://")),
    }
}

impl ClusterSpec {
    /// As JSON (what `dask local --dry-run` prints and `gpucluster.dask.LocalCluster` reads),
    /// its notes in `terms`.
    pub fn to_json(&self, terms: &dyn Terms) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(notes) = value.get_mut("notes") {
            *notes = self.notes.iter().map(|n| serde_json::Value::String(n.0.render(terms))).collect();
        }
        value
    }

    /// Whether its processes speak UCX: chosen, or joining a `ucx://` scheduler as it speaks.
    pub fn speaks_ucx(&self) -> bool {
        speaks_ucx(self.protocol, self.join.as_deref())
    }
}

/// Whether the plan's machine is simulated: anything but this machine through NVML, and any plan
/// made from inventories.
pub fn is_simulated(topology: &TopologySpec, inventories: bool) -> bool {
    !topology.is_real() || inventories
}

/// The cluster `request` asks for, on `output`'s plan, with what `python` and `host` offer.
///
/// # Errors
/// [`LauncherError::Request`] for a setting that cannot be met (each names its setting and the
/// fix), [`LauncherError::Protocol`] for a protocol that cannot be used as asked.
pub fn cluster_spec(
    output: &PlanOutput<'_>,
    request: &Request,
    python: &PythonFacts,
    host: &HostFacts,
) -> Result<ClusterSpec, LauncherError> {
    let planned = &output.plan().workers;
    let workers: &[WorkerPlan] = match request.workers {
        Some(0) => return Err(refused(Setting::Workers, ": a whole number, at least 1, not 0")),
        Some(n) if n > planned.len() => {
            return Err(LauncherError::Request(
                Message::new()
                    .setting_to(Setting::Workers, n.to_string())
                    .text(format!(
                        ": the plan has {} worker(s); ask for at most that many, or for more per device with ",
                        planned.len()
                    ))
                    .name(Setting::WorkersPerDevice),
            ));
        }
        Some(n) => &planned[..n],
        None => planned,
    };
    settings::whole(Setting::Threads, &request.threads.to_string(), 1, Some(MAX_THREADS_PER_WORKER.into()))?;
    // As Dask takes it (an IPv6 address in brackets), checked.
    let listen = request.host.as_deref().map(settings::listen_host).transpose()?;
    let simulated = is_simulated(&request.topology, request.inventories);
    let names: std::collections::HashSet<&str> = workers.iter().map(|w| w.name.as_str()).collect();
    let pairs: Vec<_> =
        output.paths().iter().filter(|p| names.contains(p.from.as_str()) && names.contains(p.to.as_str())).collect();
    // No pair is no reason: one worker gets no path of its own (the comm tries cuda-ipc and falls
    // back, as it would with a peer launched beside it).
    let host_staged_only = !pairs.is_empty() && pairs.iter().all(|p| p.path == TransferPath::HostStaged);
    let all_pairs_nvlink = !pairs.is_empty() && pairs.iter().all(|p| p.rule == PathRule::NvLink);

    let local = request.scheduler == SchedulerRequest::Local;
    let joining_tls = matches!(&request.scheduler, SchedulerRequest::Join { address } if address.starts_with("tls://"));
    let facts = ProtocolFacts {
        all_pairs_nvlink,
        workers: workers.len(),
        secure: !request.insecure && (local || request.credentials == Credentials::Given),
        encrypted: joining_tls,
        credentials: request.credentials,
    };
    // Workers that join speak as the scheduler does unless told otherwise: its scheme must be a
    // comm this Python has, and one they may listen on.
    if let SchedulerRequest::Join { address } = &request.scheduler {
        let scheme = address.split_once("://").map_or("", |(s, _)| s);
        let refusal = match scheme.parse::<ProtocolRequest>() {
            Err(e) => Some(ProtocolRefusal::Unknown(e.0)),
            Ok(ProtocolRequest::Ucx) if !python.ucxx => Some(ProtocolRefusal::NotInstalled {
                protocol: ProtocolRequest::Ucx,
                install: format!("{} (or -cu12)", python.pip_install("distributed-ucxx-cu13")),
            }),
            Ok(ProtocolRequest::Gpucluster) if !python.gpucluster => Some(ProtocolRefusal::NotInstalled {
                protocol: ProtocolRequest::Gpucluster,
                install: super::protocol::GPUCLUSTER_INSTALL.to_owned(),
            }),
            Ok(ProtocolRequest::Ws) => Some(ProtocolRefusal::EveryInterface),
            Ok(ProtocolRequest::Inproc) => Some(ProtocolRefusal::InProcess),
            Ok(_) => None,
        };
        if let Some(refusal) = refusal.filter(|_| request.protocol == ProtocolRequest::Auto) {
            return Err(LauncherError::Protocol(refusal));
        }
    }
    let (protocol, protocol_reason) = match &request.scheduler {
        // Workers that join listen as the scheduler speaks, unless gpucluster's comm can move
        // their device frames (two workers or more here), or another protocol was asked for.
        SchedulerRequest::Join { .. }
            if request.protocol == ProtocolRequest::Auto
                && (!(python.gpucluster && workers.len() > 1) || joining_tls) =>
        {
            (None, String::new())
        }
        _ => {
            // A local cluster given TLS credentials (`LocalCluster(security=...)`) speaks TLS
            // unless told otherwise: the credentials are what the user asked for.
            let asked = match request.protocol {
                ProtocolRequest::Auto if local && request.credentials == Credentials::Given => ProtocolRequest::Tls,
                asked => asked,
            };
            let (p, why) = choose_protocol(asked, facts, python).map_err(LauncherError::Protocol)?;
            (Some(p), why)
        }
    };
    let tls = match protocol {
        Some(p) if p.uses_tls() && request.credentials == Credentials::CanGenerate => {
            let mut hosts = vec![DEFAULT_HOST.to_owned(), "localhost".to_owned()];
            // A certificate names an IPv6 address without its brackets.
            let named = listen.as_deref().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned());
            hosts.extend(named.filter(|h| h != DEFAULT_HOST && h != "localhost"));
            TlsPlan::Generate { hosts }
        }
        Some(p) if p.uses_tls() => TlsPlan::Given,
        None if request.credentials == Credentials::Given && joining_tls => TlsPlan::Given,
        _ => TlsPlan::None,
    };
    let join = match &request.scheduler {
        SchedulerRequest::Join { address } => Some(address.clone()),
        SchedulerRequest::Local => None,
    };
    let ucx = speaks_ucx(protocol, join.as_deref());

    let dashboard = match &request.dashboard {
        None => None,
        Some(_) if !local => {
            return Err(refused(Setting::Dashboard, ": only a scheduler this launcher starts serves one"));
        }
        Some(address) => Some(settings::dashboard(address, listen.as_deref(), python)?),
    };
    let memory_limit = settings::host_memory_per_worker(request.memory_limit.as_deref(), workers.len(), host)?;
    let rmm_pool_bytes = match &request.rmm_pool_size {
        None => None,
        Some(_) if simulated => {
            return Err(refused(Setting::RmmPoolSize, ": RMM allocates on real GPUs; a simulated topology has none"));
        }
        Some(_) if !python.rmm => {
            return Err(refused(
                Setting::RmmPoolSize,
                format!(
                    ": needs RMM, which this Python does not have: `{}` (or rmm-cu13)",
                    python.pip_install("rmm-cu12")
                ),
            ));
        }
        Some(size) => match cluster_core::parse_dask_size(size) {
            Some(0) => return Err(refused(Setting::RmmPoolSize, format!(": more than 0 bytes, not {size:?}"))),
            Some(bytes) => Some(bytes),
            None => {
                return Err(refused(
                    Setting::RmmPoolSize,
                    format!(
                        ": a size such as 10GB or a number of bytes, not \"{}\"",
                        gpu_topology::text::printable(size)
                    ),
                ));
            }
        },
    };
    let dask_cuda = python.dask_cuda && !simulated;
    let mut notes = Vec::new();
    let limited = workers.iter().any(|w| w.device_memory_limit_bytes.is_some_and(|b| b > 0));
    if !simulated && !python.dask_cuda && request.device_memory_limit_asked && limited {
        notes.push(Note(Message::new().name(Setting::DeviceMemoryLimit).text(format!(
            " is enforced by dask-cuda's device spilling, which this Python does not have: workers only get \
                     it as {}; install dask-cuda (`{}`), or ask for no device memory limit",
            worker_env::DEVICE_MEMORY_LIMIT,
            python.pip_install("dask-cuda")
        ))));
    }
    if protocol.is_some_and(|p| !p.authenticates()) && local {
        notes.push(Note(
            Message::new()
                .setting(Setting::Insecure)
                .text(": no TLS; any user who can reach the scheduler or a worker can run code as you"),
        ));
    }
    if let SchedulerRequest::Join { address } = &request.scheduler {
        let authenticated = tls != TlsPlan::None || address.starts_with("gpucluster://");
        if !authenticated {
            notes.push(Note(Message::from(format!(
                "the scheduler at {address} does not authenticate its peers: anyone who can reach it can run code \
                 on these workers, as you; secure it with TLS (`gpucluster dask local` does)"
            ))));
        }
    }

    let private = private_config(&request.local_directory);
    let scheduler = match &request.scheduler {
        SchedulerRequest::Join { .. } => None,
        SchedulerRequest::Local => {
            let protocol = protocol.unwrap_or(Protocol::Tcp);
            let mut dask_config = private.clone();
            dask_config.remove(WORKER_ROUTES);
            if dashboard.is_some() {
                dask_config.remove(SCHEDULER_ROUTES);
            }
            if protocol == Protocol::Ucx && !simulated {
                dask_config.extend(ucx_cuda_context());
            }
            Some(SchedulerSpec {
                host: listen.clone().unwrap_or_else(|| DEFAULT_HOST.to_owned()),
                protocol,
                http_address: dashboard.clone().unwrap_or_else(|| QUIET_HTTP_ADDRESS.to_owned()),
                dashboard,
                dask_config,
                // By name where the package is installed, else from the file of the same text in
                // the private directory (`session::prepare` writes it).
                preload: vec![if python.gpucluster {
                    SCHEDULER_PRELOAD.to_owned()
                } else {
                    format!("{}/{SCHEDULER_PLUGINS_FILE}", request.local_directory)
                }],
            })
        }
    };
    // A local cluster's workers listen where its scheduler does: this host only, unless asked.
    let worker_host =
        if local { Some(listen.clone().unwrap_or_else(|| DEFAULT_HOST.to_owned())) } else { listen.clone() };
    let workers = workers
        .iter()
        .map(|w| {
            let mut env = w.env();
            env.extend(device_env(w.kind, simulated, host_staged_only, w.device_memory_limit_bytes));
            let mut dask_config = private.clone();
            dask_config.remove(SCHEDULER_ROUTES);
            if simulated {
                // Nothing asks a driver about a device that does not exist.
                dask_config.insert("distributed.diagnostics.nvml".into(), DaskValue::Bool(false));
            }
            if ucx && !simulated {
                dask_config.extend(ucx_cuda_context());
            }
            WorkerSpec {
                name: w.name.clone(),
                host: worker_host.clone(),
                env,
                dask_config,
                resources: w.resources(),
                threads: request.threads,
                memory_limit_bytes: memory_limit,
                device_memory_limit_bytes: w.device_memory_limit_bytes,
                spills_device_memory: dask_cuda && w.device_memory_limit_bytes.is_some_and(|b| b > 0),
                rmm_pool_bytes,
                cpus: pinned_cpus(w.cpu_affinity.as_deref(), simulated, host),
                http_address: QUIET_HTTP_ADDRESS.to_owned(),
            }
        })
        .collect();
    Ok(ClusterSpec { protocol, protocol_reason, tls, simulated, dask_cuda, scheduler, join, workers, notes })
}

const SCHEDULER_ROUTES: &str = "distributed.scheduler.http.routes";
const WORKER_ROUTES: &str = "distributed.worker.http.routes";

/// The settings that keep a cluster's processes private: their scratch space in our private
/// directory (never the shared `dask-scratch-space` of the temporary directory, which another
/// user may own), and their HTTP servers serving nothing (distributed's `--no-dashboard` still
/// serves task names, call stacks and worker logs to anyone who reaches the port).
fn private_config(local_directory: &str) -> DaskConfig {
    BTreeMap::from([
        ("temporary-directory".to_owned(), DaskValue::Text(local_directory.to_owned())),
        (SCHEDULER_ROUTES.to_owned(), DaskValue::EmptyList),
        (WORKER_ROUTES.to_owned(), DaskValue::EmptyList),
    ])
}

/// What every process speaking UCX needs: a CUDA context made before UCX starts, or UCX does
/// not recognise device memory and a transfer of a CuPy array never completes (seen on the H100
/// with distributed-ucxx 0.52, which makes the context itself only when `UCX_TLS` names `cuda`
/// and does not exclude it). dask-cuda's `LocalCUDACluster` sets the same.
pub fn ucx_cuda_context() -> DaskConfig {
    BTreeMap::from([
        ("distributed-ucxx.create-cuda-context".to_owned(), DaskValue::Bool(true)),
        ("distributed.comm.ucx.create-cuda-context".to_owned(), DaskValue::Bool(true)),
    ])
}

/// The environment a worker gets for its device, beyond its plan's: the device the gpucluster
/// comm moves frames on, the path it takes where every pair is host-staged, the device memory
/// limit, and the mark of a simulated device.
fn device_env(
    kind: WorkerKind,
    simulated: bool,
    host_staged_only: bool,
    device_memory_limit: Option<u64>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if simulated {
        env.insert(worker_env::SIMULATED.into(), "1".into());
    }
    let memory = if simulated { DeviceKind::Simulated } else { DeviceKind::Cuda };
    env.insert(WorkerDevice::ENV.into(), WorkerDevice::of(memory, kind == WorkerKind::Mig).name().into());
    if host_staged_only {
        env.insert(worker_env::COMM_PATH.into(), TransferPath::HostStaged.name().into());
    }
    env.insert(worker_env::DEVICE_MEMORY_LIMIT.into(), device_memory_limit.map(|b| b.to_string()).unwrap_or_default());
    env
}

/// The CPUs to pin a worker to: its device's, where they are this machine's and fewer than the
/// launcher may use (a simulated machine's CPUs are not this machine's).
fn pinned_cpus(cpu_list: Option<&str>, simulated: bool, host: &HostFacts) -> Vec<usize> {
    let Some(list) = cpu_list.filter(|_| !simulated) else { return Vec::new() };
    let cpus: Vec<usize> =
        gpu_topology::cpulist::parse_lenient(list).into_iter().filter(|c| host.cpus.contains(c)).collect();
    if cpus.len() < host.cpus.len() { cpus } else { Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(memory: u64, cpus: usize) -> HostFacts {
        HostFacts { memory_bytes: Some(memory), cpus: (0..cpus).collect() }
    }

    #[test]
    fn workers_are_pinned_only_where_their_device_has_fewer_cpus() {
        let h = host(1 << 30, 8);
        assert_eq!(pinned_cpus(Some("0-3"), false, &h), [0, 1, 2, 3]);
        assert!(pinned_cpus(Some("0-7"), false, &h).is_empty(), "nothing to narrow");
        assert!(pinned_cpus(Some("100-103"), false, &h).is_empty(), "CPUs this process may not use");
        assert!(pinned_cpus(Some("0-3"), true, &h).is_empty(), "a simulated machine's CPUs");
        assert!(pinned_cpus(None, false, &h).is_empty());
    }

    #[test]
    fn configuration_keys_become_the_variables_dask_reads() {
        assert_eq!(dask_env_name("distributed-ucxx.create-cuda-context"), "DASK_DISTRIBUTED_UCXX__CREATE_CUDA_CONTEXT");
        assert_eq!(dask_env_name("distributed.scheduler.http.routes"), "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES");
        assert_eq!(dask_env_name("temporary-directory"), "DASK_TEMPORARY_DIRECTORY");
        assert_eq!(DaskValue::EmptyList.env_value(), "[]");
        assert_eq!(DaskValue::Bool(false).env_value(), "False");
    }
}
