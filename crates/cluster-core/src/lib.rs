//! What to do with the hardware: device specs, selection, the homogeneity policy, worker plans,
//! multi-host inventories and doctor findings.
//!
//! This crate owns every decision about which devices become workers and how each worker is
//! configured. It takes a `gpu_topology::Snapshot` and the user's request and returns a plan as
//! plain data.
//!
//! **Architecture invariant:** everything here is a pure function: no IO, no NVML, no clock, no
//! environment reads (callers pass `CUDA_VISIBLE_DEVICES` in). It depends on `gpu-topology`
//! only, never on `transport` or `launcher`. A MIG worker sees exactly one device, and its memory
//! figures come from its own instance, never from the parent GPU.
//!
//! The crate is filled by the planning issue (`gpucluster plan` and `gpucluster doctor`).
