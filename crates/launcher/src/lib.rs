//! Running workers: one process per planned device, supervised, and the Dask adapter.
//!
//! This crate owns process lifetimes: starting workers with their plan's environment, prefixing
//! and collecting their output, forwarding signals, restarting on failure, and making sure no
//! worker outlives the launcher. It decides nothing about devices (that is `cluster-core`'s plan)
//! and moves no data itself (workers use `transport`).
//!
//! The crate is filled by the launcher issue (`gpucluster up`, `gpucluster dask ...`).
