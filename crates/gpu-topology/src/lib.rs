//! What the hardware is: physical GPUs, MIG instances and the links between GPUs, as plain data.
//!
//! This crate owns the [`Snapshot`] (hosts, GPUs, MIG instances, peer links: serializable, no
//! handles, no lifetimes), device identity ([`DeviceId`]: `GPU-<uuid>`, `MIG-<uuid>`, legacy
//! `MIG-GPU-<uuid>/<gi>/<ci>`), and the object-safe [`TopologySource`] trait with its backends,
//! chosen at run time from a [`TopologySpec`]:
//!
//! - `nvml`: the real machine, through `libnvidia-ml.so.1` loaded at run time (feature `nvml`,
//!   on by default; the crate builds and its tests run without a driver);
//! - `sim:NAME`: a built-in simulated machine (see [`sim::PRESETS`]);
//! - `file:PATH`: a TOML fixture (simulated) or a JSON snapshot as `gpucluster list --json` prints;
//! - `smi:PATH`: the text of `nvidia-smi -L` from some host.
//!
//! **Architecture invariant:** backends report facts. They never decide naming, selection,
//! homogeneity or transport: that is `cluster-core`'s and `transport`'s work. This crate depends
//! on no other crate of the workspace.
//!
//! # Design
//!
//! The NVML enumeration loop is written once, against a small internal trait with one method per
//! NVML call. The real library, the simulator and the unit tests' mocks all implement that trait,
//! so the simulated backend runs exactly the discovery code the real one does, including the
//! handling of empty MIG slots, legacy names and `NoPermission` on parent handles.
//!
//! ```
//! use gpu_topology::{TopologySpec, TopologySource};
//!
//! let spec: TopologySpec = "sim:dgx-a100".parse().unwrap();
//! let source = spec.open().unwrap();
//! let snapshot = futures_lite_block_on(source.snapshot()).unwrap();
//! let host = &snapshot.hosts[0];
//! assert_eq!(host.gpus.len(), 8);
//! assert!(host.gpus.iter().all(|g| g.mig_instances.len() == 7));
//! # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

#![warn(missing_docs)]

pub mod cpulist;
mod discover;
mod error;
mod file;
mod ids;
pub mod limits;
#[cfg(feature = "nvml")]
pub mod nvml;
pub mod products;
pub mod sim;
pub mod smi;
mod snapshot;
mod source;
pub mod text;
pub mod units;

use async_trait::async_trait;

pub use error::{Limit, NvmlFailure, TopologyError};
pub use file::{FileSource, snapshot_from_json};
pub use ids::{DeviceId, IdError, Uuid, driver_uses_legacy_mig_names};
pub use snapshot::{HostTopology, MigInstance, P2pStatus, PcieLevel, PeerLink, PhysicalGpu, Snapshot};
pub use source::TopologySpec;

/// A place a machine's topology can be read from.
///
/// Implementations report what they find and nothing more (see the crate docs). NVML calls are
/// short, so backends may block briefly inside `snapshot`.
#[async_trait]
pub trait TopologySource: Send + Sync + std::fmt::Debug {
    /// How the user named this source, e.g. `sim:dgx-a100` or `nvml`.
    fn describe(&self) -> String;

    /// Reads the topology now.
    ///
    /// # Errors
    /// [`TopologyError::BackendUnavailable`] when the library cannot be loaded,
    /// [`TopologyError::Nvml`] when a query fails in a way that leaves the topology unknown, and
    /// file errors ([`TopologyError::Io`], [`TopologyError::Fixture`], [`TopologyError::SmiText`],
    /// [`TopologyError::InvalidSnapshot`]) for file-backed sources.
    async fn snapshot(&self) -> Result<Snapshot, TopologyError>;
}
