//! The bindings of Dask's `gpucluster://` comm (`python/gpucluster/comm.py`, and the simulated
//! arrays of `sim.py`): the transport's engine and channels, device memory, the cluster's
//! secret, and the facts about this process that tell a local peer from a remote one.
//!
//! Each type only binds: rings, IPC, authentication and the secret's file are `transport`'s,
//! the Dask glue is Python's. The rule of every binding here is that no copy or driver call
//! holds the GIL (each runs in `py.detach`).

mod buffer;
mod engine;
mod process;
mod secret;

pub(crate) use buffer::DeviceBuffer;
pub(crate) use engine::{Channel, Engine, TOKEN_BYTES};
pub(crate) use process::{boot_id, cuda_available, net_namespace, uid};
pub(crate) use secret::{ClusterSecret, challenge, cluster_secret};
