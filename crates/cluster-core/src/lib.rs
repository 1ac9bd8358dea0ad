//! What to do with the hardware: device specs, selection, the homogeneity policy, worker plans,
//! multi-host inventories and doctor findings.
//!
//! This crate owns every decision about which devices become workers and how each worker is
//! configured. [`plan`] takes a `gpu_topology::Snapshot` and a [`PlanRequest`] and returns a
//! [`Plan`] as plain data, or a [`PlanError`] that says what to change; [`doctor`] turns a
//! snapshot, a request and the relevant environment into [`Finding`]s.
//!
//! Refusals and findings name the settings they ask to change as data ([`wording`]: a
//! [`wording::Setting`] with its value, a [`wording::Remedy`]), never in a front end's words: the
//! binary says `--policy warn`, the Python package `policy="warn"`.
//!
//! **Architecture invariant:** everything here is a pure function: no IO, no NVML, no clock, no
//! environment reads (callers pass `CUDA_VISIBLE_DEVICES` and friends in). It depends on
//! `gpu-topology` only, never on `transport` or `launcher`.
//!
//! **Architecture invariant:** a MIG worker sees exactly one device (`CUDA_VISIBLE_DEVICES` is its
//! own MIG UUID), and its memory figures come from its own instance, never from the parent GPU.
//!
//! # Design
//!
//! Homogeneity is judged on the memory each device reports (within a tolerance) and its SM
//! count, never on profile names, which mean different memory on different products. Where
//! Dask-CUDA has known defects (memory limits from the parent GPU, MIG lists rotated so that a
//! worker sees every instance, no validation of names), this crate does the opposite, and its
//! tests include Dask-CUDA's own test cases with the MIG semantics fixed.

mod classes;
mod devices;
mod doctor;
mod finding;
mod inventory;
pub mod memory;
mod plan;
mod plan_error;
mod request;
mod size;
pub mod spec;
pub mod wording;

pub use classes::DeviceClass;
pub use devices::Excluded;
pub use doctor::{Environment, doctor};
pub use finding::{Finding, Severity};
pub use inventory::{InventoryError, merge_inventories};
pub use plan::{DEVICE_UUID_ENV, Plan, WORKER_NAME_ENV, WorkerKind, WorkerPlan, plan};
pub use plan_error::PlanError;
pub use request::{
    DEFAULT_MEMORY_TOLERANCE_PCT, MEMORY_TOLERANCE_PCT, PlanRequest, Policy, SpecSource, WORKERS_PER_DEVICE,
};
pub use size::{SizeError, parse_binary_size, parse_dask_size};
pub use spec::{DeviceSpec, SpecEntry, SpecError};

#[cfg(test)]
mod tests;
