//! The Dask adapter: the plan's workers as Dask workers, one per device, and for a local cluster
//! a scheduler beside them, closed to other users.
//!
//! A cluster is one value, [`ClusterSpec`], built by one pure function, [`cluster_spec`], from
//! the plan with its paths, the user's [`Request`] and the facts of the Python environment and
//! the host ([`PythonFacts`], [`HostFacts`]). `gpucluster dask local|worker` renders it as
//! processes ([`command`]); `gpucluster.dask.LocalCluster` as `distributed` Nannies. The modules:
//!
//! - [`spec`]: the request, the spec and the function between them (every decision);
//! - [`settings`]: the grammars of the request's settings (memory limits, dashboard addresses);
//! - [`protocol`]: the comm protocol and why (part of the spec's decision);
//! - [`facts`]: what the Python and the host offer, as plain data;
//! - [`python`]: running Python: probing an interpreter for its facts, Dask's handshake;
//! - [`scheduler_file`]: reading and trusting scheduler files, addresses, reaching a scheduler;
//! - [`tls`]: the cluster's TLS credentials;
//! - [`command`]: a spec as the processes the supervisor runs;
//! - [`session`]: a spec brought up on this host (credentials, files, processes) and the sink
//!   that says when its workers have registered.
//!
//! Its refusals name the settings they are about (`cluster_core::wording`), for each front end to
//! say in its own words.
//!
//! Security: a Dask worker runs whatever a connected peer asks, so a local cluster is closed by
//! default (gpucluster's comm, whose every connection proves the cluster's secret, or TLS with
//! fresh credentials nobody else can read); every process keeps its files in a private
//! directory and serves no HTTP routes. Simulated devices never reach code that asks the driver
//! about them.

pub mod command;
pub mod facts;
pub mod protocol;
pub mod python;
pub mod scheduler_file;
pub mod session;
pub mod settings;
pub mod spec;
pub mod tls;

pub use facts::{HostFacts, PythonFacts};
pub use protocol::{Credentials, Protocol, ProtocolRefusal, ProtocolRequest};
pub use spec::{ClusterSpec, Request, SchedulerRequest, WorkerSpec, cluster_spec};
pub use tls::TlsFiles;
