//! The limits on what gpucluster reads: every bound a description must respect, in one place.
//!
//! A description of a machine (a fixture, a snapshot, `nvidia-smi -L` text, an inventory) that
//! goes beyond these is refused with an error naming the limit, before it can cost more memory
//! or time than any real machine would. Each limit leaves headroom above the largest real
//! hardware, noted beside it; `docs/fixtures.md` lists them for users.

/// Most bytes read from one topology file (fixture, snapshot, `nvidia-smi -L` text, inventory).
/// A snapshot of the largest real host is under 1 MiB; 64 MiB holds a snapshot of some
/// thousand such hosts in one file.
pub const MAX_INPUT_BYTES: u64 = 64 << 20;

/// Most bytes of a TOML fixture. Fixtures are written by hand: one for the largest host
/// allowed, every instance spelled out, is about 150 KiB. TOML keeps a document tree several
/// times the size of its text, so this bound is tighter than [`MAX_INPUT_BYTES`].
pub const MAX_FIXTURE_BYTES: u64 = 1 << 20;

/// Most hosts in one snapshot or across all inventories of a plan. Planning is linear in the
/// hosts; the design's benchmark is 10,000 hosts, and the largest clusters built are near that.
pub const MAX_HOSTS: usize = 32_768;

/// Most physical GPUs on one host. The largest real hosts have 64 (e.g. 8 x 8-GPU boards
/// behind one NVSwitch fabric); the peer matrix of a host is quadratic in its GPUs.
pub const MAX_GPUS_PER_HOST: usize = 256;

/// Most MIG devices on one GPU of a product gpucluster does not know (known products have their
/// own, smaller bound: `nvmlDeviceGetMaxMigDeviceCount`, 7 on A100, H100 and H200).
pub const MAX_MIG_DEVICES_PER_GPU: usize = 16;

/// Most memory one GPU may report: 16 TiB, over 50 times the largest GPU made (288 GB).
pub const MAX_GPU_MEMORY_BYTES: u64 = 16 << 40;

/// Most CPUs a fixture's host may have (Linux's largest `NR_CPUS` default is 8192).
pub const MAX_CPUS: u32 = 8192;

/// Most NUMA nodes a fixture's host may have (Linux allows 1024).
pub const MAX_NUMA_NODES: u32 = 1024;

/// Longest host name, in bytes: a DNS name is at most 253 characters.
pub const MAX_HOSTNAME_BYTES: usize = 253;

/// Longest other name (GPU product name, MIG profile, driver version, PCI bus id, CPU list), in
/// bytes. NVML's longest name buffer is 96 bytes; a CPU list of 8192 CPUs written as every
/// second CPU is longer, so lists get [`MAX_CPULIST_BYTES`].
pub const MAX_NAME_BYTES: usize = 256;

/// Longest CPU list (`0-15,32-47`), in bytes.
pub const MAX_CPULIST_BYTES: usize = 64 << 10;

/// Most workers a plan may put on one host (`cluster-core`). The largest real host has 448
/// compute devices (64 GPUs x 7 MIG instances); a plan lists a transport path for every pair of
/// a host's workers, so this bound keeps a plan to about two million pairs.
pub const MAX_WORKERS_PER_HOST: usize = 2048;
