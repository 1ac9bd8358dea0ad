//! Path choice: which of `cuda-ipc`, `host-staged` and `tcp` two workers use, and why.
//!
//! | ends | path | because |
//! |---|---|---|
//! | different hosts | `tcp` | no shared memory; pipelined host staging on both ends |
//! | either end a MIG instance | `host-staged` | CUDA IPC (and so NVLink/P2P) does not cross MIG instances |
//! | one MIG instance shared by both | `host-staged` | IPC within an instance is not dependable across drivers |
//! | one whole GPU shared by both | `cuda-ipc` | same device: IPC handles open in both processes |
//! | whole GPUs with P2P both ways | `cuda-ipc` | over NVLink or PCIe peer access |
//! | whole GPUs without P2P | `host-staged` | the peer copy would be staged by the driver anyway |

use gpu_topology::{HostTopology, MigInstance, PhysicalGpu};
use serde::{Deserialize, Serialize};

/// A transport path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransferPath {
    /// CUDA IPC handles opened by the peer; copies device to device (NVLink/P2P where two GPUs).
    CudaIpc,
    /// Device to pinned shared host memory to device, pipelined through the copy engines.
    HostStaged,
    /// Pipelined host staging on both ends of a TCP connection.
    Tcp,
}

impl TransferPath {
    /// The name used in plans: `cuda-ipc`, `host-staged`, `tcp`.
    pub fn name(self) -> &'static str {
        match self {
            TransferPath::CudaIpc => "cuda-ipc",
            TransferPath::HostStaged => "host-staged",
            TransferPath::Tcp => "tcp",
        }
    }

    /// Every path, in the order plans and reports list them.
    pub const ALL: [TransferPath; 3] = [TransferPath::CudaIpc, TransferPath::HostStaged, TransferPath::Tcp];
}

/// A name that is not a path's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPath(pub String);

impl std::fmt::Display for UnknownPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = TransferPath::ALL.iter().map(|p| p.name()).collect();
        // Escaped: the name comes from a command line or an environment variable.
        write!(f, "unknown path `{}`: {}", self.0.escape_debug(), names.join(", "))
    }
}

impl std::error::Error for UnknownPath {}

impl std::str::FromStr for TransferPath {
    type Err = UnknownPath;

    /// The inverse of [`TransferPath::name`].
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        TransferPath::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| UnknownPath(name.to_owned()))
    }
}

/// Which rule chose the path: a stable key for grouping pairs in summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathRule {
    /// The workers are on different hosts.
    DifferentHosts,
    /// Both ends are MIG instances of one GPU.
    MigSameGpu,
    /// At least one end is a MIG instance, and they are on different GPUs.
    Mig,
    /// Both ends share one whole GPU.
    SameGpu,
    /// Both ends share one MIG instance.
    SameMigInstance,
    /// Two whole GPUs with peer access over NVLink.
    NvLink,
    /// Two whole GPUs with peer access over PCIe.
    PciePeer,
    /// Two whole GPUs without peer access.
    NoPeerAccess,
}

/// The path for a pair and its one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathChoice {
    /// The path.
    pub path: TransferPath,
    /// The rule that chose it.
    pub rule: PathRule,
    /// Why, in one line.
    pub reason: String,
}

impl PathChoice {
    /// The paths a pair may take, best first: the chosen one and those it falls back to
    /// (cuda-ipc falls back to host-staged; every local path can also go over TCP). What
    /// `bench transport` measures between two workers of one device.
    pub fn usable(&self) -> Vec<TransferPath> {
        match self.path {
            TransferPath::CudaIpc => vec![TransferPath::CudaIpc, TransferPath::HostStaged, TransferPath::Tcp],
            TransferPath::HostStaged => vec![TransferPath::HostStaged, TransferPath::Tcp],
            TransferPath::Tcp => vec![TransferPath::Tcp],
        }
    }
}

/// One end of a pair: a worker's device on its host.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    /// The host's topology (for the peer matrix).
    pub host: &'a HostTopology,
    /// The GPU the worker uses (the parent, for a MIG worker).
    pub gpu: &'a PhysicalGpu,
    /// The MIG instance, for a MIG worker.
    pub mig: Option<&'a MigInstance>,
}

impl Endpoint<'_> {
    fn describe(&self) -> String {
        match self.mig {
            Some(m) => format!("{} ({} on GPU {})", m.uuid, m.profile, self.gpu.index),
            None => format!("GPU {}", self.gpu.index),
        }
    }
}

/// Chooses the path between two workers' devices.
pub fn choose_path(a: Endpoint<'_>, b: Endpoint<'_>) -> PathChoice {
    let choice = |path, rule, reason: String| PathChoice { path, rule, reason };
    if a.host.hostname != b.host.hostname {
        return choice(
            TransferPath::Tcp,
            PathRule::DifferentHosts,
            format!("different hosts ({} and {}): pipelined host staging over TCP", a.host.hostname, b.host.hostname),
        );
    }
    let same_gpu = a.gpu.uuid == b.gpu.uuid;
    match (a.mig, b.mig) {
        // NVIDIA documents CUDA IPC between compute instances of one GPU instance, but support
        // varies by driver and the simulated device refuses it as most drivers do
        // (`reference/mig-facts.md`): a MIG device never gets cuda-ipc, so the plan, `up` and
        // `bench` agree with what the hardware does.
        (Some(x), Some(y)) if x.uuid == y.uuid => choice(
            TransferPath::HostStaged,
            PathRule::SameMigInstance,
            format!(
                "both use MIG instance {}: CUDA IPC is not dependable on MIG devices, so data goes through pinned host memory",
                x.uuid
            ),
        ),
        (Some(_), Some(_)) if same_gpu => choice(
            TransferPath::HostStaged,
            PathRule::MigSameGpu,
            format!(
                "both are MIG instances of GPU {}: CUDA IPC does not cross GPU instances, so data goes through pinned host memory",
                a.gpu.index
            ),
        ),
        (Some(_), _) | (_, Some(_)) => {
            let mig_end = if a.mig.is_some() { a } else { b };
            choice(
                TransferPath::HostStaged,
                PathRule::Mig,
                format!(
                    "{} is a MIG instance: no CUDA IPC, P2P or NVLink to or from MIG instances, so data goes through pinned host memory",
                    mig_end.describe()
                ),
            )
        }
        (None, None) if same_gpu => choice(
            TransferPath::CudaIpc,
            PathRule::SameGpu,
            format!("both use GPU {}: CUDA IPC within one device", a.gpu.index),
        ),
        (None, None) => {
            let forward = a.host.peer(a.gpu.index, b.gpu.index);
            let backward = a.host.peer(b.gpu.index, a.gpu.index);
            match (forward, backward) {
                (Some(f), Some(r)) if f.p2p.is_ok() && r.p2p.is_ok() => {
                    if f.nvlink {
                        let links = match f.nvlink_count {
                            Some(n) if n > 0 => format!("{n} NVLinks"),
                            _ => "NVSwitch".to_owned(),
                        };
                        choice(
                            TransferPath::CudaIpc,
                            PathRule::NvLink,
                            format!("GPUs {} and {} have P2P over NVLink ({links})", a.gpu.index, b.gpu.index),
                        )
                    } else {
                        let level = f.pcie.map_or("PCIe", |l| l.smi_code());
                        choice(
                            TransferPath::CudaIpc,
                            PathRule::PciePeer,
                            format!("GPUs {} and {} have P2P over PCIe ({level})", a.gpu.index, b.gpu.index),
                        )
                    }
                }
                (Some(f), _) => choice(
                    TransferPath::HostStaged,
                    PathRule::NoPeerAccess,
                    format!(
                        "GPUs {} and {} have no P2P access (NVML: {}), so data goes through pinned host memory",
                        a.gpu.index,
                        b.gpu.index,
                        serde_name(f.p2p)
                    ),
                ),
                (None, _) => choice(
                    TransferPath::HostStaged,
                    PathRule::NoPeerAccess,
                    format!(
                        "the source does not report P2P between GPUs {} and {}, so data goes through pinned host memory",
                        a.gpu.index, b.gpu.index
                    ),
                ),
            }
        }
    }
}

fn serde_name(status: gpu_topology::P2pStatus) -> &'static str {
    use gpu_topology::P2pStatus as S;
    match status {
        S::Ok => "ok",
        S::ChipsetNotSupported => "chipset not supported",
        S::GpuNotSupported => "GPU not supported",
        S::TopologyNotSupported => "topology not supported",
        S::DisabledByRegkey => "disabled by registry key",
        S::NotSupported => "not supported",
        S::Unknown => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_topology::{Snapshot, TopologySpec};

    #[test]
    fn path_names_read_back_as_their_paths_and_nothing_else_does() {
        for path in TransferPath::ALL {
            assert_eq!(path.name().parse::<TransferPath>(), Ok(path));
        }
        let err = "nvlink\n".parse::<TransferPath>().expect_err("not a path");
        assert_eq!(err.to_string(), "unknown path `nvlink\\n`: cuda-ipc, host-staged, tcp");
    }

    fn host(preset: &str) -> HostTopology {
        let source = TopologySpec::Sim(preset.into()).open().expect("preset");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        let Snapshot { mut hosts } = rt.block_on(source.snapshot()).expect("snapshot");
        hosts.remove(0)
    }

    fn whole(h: &HostTopology, i: usize) -> Endpoint<'_> {
        Endpoint { host: h, gpu: &h.gpus[i], mig: None }
    }

    fn mig(h: &HostTopology, i: usize, m: usize) -> Endpoint<'_> {
        Endpoint { host: h, gpu: &h.gpus[i], mig: Some(&h.gpus[i].mig_instances[m]) }
    }

    #[test]
    fn nvlinked_whole_gpus_use_cuda_ipc() {
        let h = host("hgx-h100");
        let c = choose_path(whole(&h, 0), whole(&h, 5));
        assert_eq!((c.path, c.rule), (TransferPath::CudaIpc, PathRule::NvLink));
        assert!(c.reason.contains("NVSwitch"), "{}", c.reason);
    }

    #[test]
    fn mig_instances_are_host_staged_even_on_one_gpu_or_nvlinked_gpus() {
        let h = host("dgx-a100");
        let shared = choose_path(mig(&h, 0, 0), mig(&h, 0, 0));
        assert_eq!((shared.path, shared.rule), (TransferPath::HostStaged, PathRule::SameMigInstance));
        let same = choose_path(mig(&h, 0, 0), mig(&h, 0, 1));
        assert_eq!((same.path, same.rule), (TransferPath::HostStaged, PathRule::MigSameGpu));
        let across = choose_path(mig(&h, 0, 0), mig(&h, 3, 2));
        assert_eq!((across.path, across.rule), (TransferPath::HostStaged, PathRule::Mig));
        let m = host("h100-mixed");
        let mixed = choose_path(whole(&m, 2), mig(&m, 0, 0));
        assert_eq!(mixed.path, TransferPath::HostStaged);
        assert!(mixed.reason.contains("1g.10gb on GPU 0"), "{}", mixed.reason);
    }

    #[test]
    fn whole_gpus_without_p2p_are_host_staged() {
        let mut two = host("h100-mig-empty");
        for gpu in &mut two.gpus {
            gpu.mig_enabled = false;
            gpu.mig_instances.clear();
        }
        let c = choose_path(whole(&two, 0), whole(&two, 1));
        assert_eq!((c.path, c.rule), (TransferPath::HostStaged, PathRule::NoPeerAccess));
        assert!(c.reason.contains("chipset not supported"), "{}", c.reason);
    }

    #[test]
    fn a_shared_gpu_uses_cuda_ipc_and_hosts_apart_use_tcp() {
        let h = host("h100");
        assert_eq!(choose_path(whole(&h, 0), whole(&h, 0)).rule, PathRule::SameGpu);
        let mut other = h.clone();
        other.hostname = "elsewhere".into();
        let c = choose_path(whole(&h, 0), whole(&other, 0));
        assert_eq!((c.path, c.rule), (TransferPath::Tcp, PathRule::DifferentHosts));
    }
}
