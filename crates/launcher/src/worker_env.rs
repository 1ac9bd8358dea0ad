//! The names of the environment variables a launcher gives its workers: one definition, which
//! `up`, the built-in worker, the Dask spec and (through `gpucluster._native`) the Python comm
//! all use, so that no side spells a name of its own.
//!
//! The values are decided where the environment is made ([`crate::up`], [`crate::dask::spec`]);
//! the names of the transport's own variables are the transport's, re-exported here.

/// Which device memory the worker's transport uses (`cuda`, `sim`, `sim-mig`).
pub const DEVICE: &str = transport::device::WorkerDevice::ENV;
/// The cluster's secret (hex), for workers a launcher starts; never on a command line.
pub const SECRET: &str = transport::SECRET_ENV;
/// The path the gpucluster comm takes between workers of one host (`host-staged` where every
/// pair is; unset: `auto`, cuda-ipc where it works).
pub const COMM_PATH: &str = "GPUCLUSTER_COMM_PATH";
/// The worker's device memory limit in bytes (empty: none).
pub const DEVICE_MEMORY_LIMIT: &str = "GPUCLUSTER_DEVICE_MEMORY_LIMIT";
/// Set (to `1`) where the worker's device is simulated.
pub const SIMULATED: &str = "GPUCLUSTER_SIMULATED";
/// The worker's rank in an `up` job (0 .. world size).
pub const RANK: &str = "GPUCLUSTER_RANK";
/// The number of workers in an `up` job.
pub const WORLD_SIZE: &str = "GPUCLUSTER_WORLD_SIZE";
/// The address of an `up` job's rendezvous.
pub const RENDEZVOUS: &str = "GPUCLUSTER_RENDEZVOUS";
/// The id of an `up` job.
pub const JOB: &str = "GPUCLUSTER_JOB";
/// The worker's name, from its plan (the planner's, which puts it in the plan's environment).
pub const WORKER_NAME: &str = cluster_core::WORKER_NAME_ENV;
/// The worker's device (`GPU-...` or `MIG-...`), from its plan.
pub const DEVICE_UUID: &str = cluster_core::DEVICE_UUID_ENV;

/// Every name, with its constant's name, as the Python package gets them (`_native.ENV`).
pub const ALL: [(&str, &str); 11] = [
    ("DEVICE", DEVICE),
    ("SECRET", SECRET),
    ("COMM_PATH", COMM_PATH),
    ("DEVICE_MEMORY_LIMIT", DEVICE_MEMORY_LIMIT),
    ("SIMULATED", SIMULATED),
    ("RANK", RANK),
    ("WORLD_SIZE", WORLD_SIZE),
    ("RENDEZVOUS", RENDEZVOUS),
    ("JOB", JOB),
    ("WORKER_NAME", WORKER_NAME),
    ("DEVICE_UUID", DEVICE_UUID),
];
