//! The one error type of this crate: everything a caller cannot rule out in advance.

use std::fmt;
use std::path::PathBuf;

use crate::text::printable;

/// What went wrong while reading a machine's topology.
///
/// The messages say what this crate saw, never which setting to change: a remedy that names one
/// (another source of the description, say) is the front end's to add, in its own words, by
/// matching the variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// The NVIDIA management library could not be loaded or initialised.
    #[error("cannot use NVML ({library}): {reason}; is the NVIDIA driver installed?")]
    BackendUnavailable {
        /// The library that was looked for.
        library: String,
        /// Why it could not be used.
        reason: String,
    },
    /// This build has no NVML backend.
    #[error("this gpucluster was built without the `nvml` feature")]
    NvmlNotCompiled,
    /// An NVML call failed in a way that leaves the topology unknown.
    #[error("NVML call {call} failed on {device}: {failure}{}", hint(*.failure))]
    Nvml {
        /// The NVML function, e.g. `nvmlDeviceGetMigDeviceHandleByIndex`.
        call: &'static str,
        /// Which device it was asked about, e.g. `GPU 0` or `GPU 0 MIG slot 3`.
        device: String,
        /// NVML's answer.
        failure: NvmlFailure,
    },
    /// The topology source names no known kind of source.
    #[error("unknown topology source `{}`: {reason}", printable(.spec))]
    InvalidSource {
        /// What was given.
        spec: String,
        /// What is accepted.
        reason: String,
    },
    /// `sim:NAME` names no preset.
    #[error("unknown simulated machine `{}`; the presets are: {}", printable(.name), .available.join(", "))]
    UnknownPreset {
        /// What was given.
        name: String,
        /// Every preset name.
        available: Vec<String>,
    },
    /// A file could not be read.
    #[error("cannot read {}: {error}", shown(.path))]
    Io {
        /// The file.
        path: PathBuf,
        /// Why. (Not a `source`: the message already says it, and error chains would repeat it.)
        error: std::io::Error,
    },
    /// A fixture or snapshot file that holds nothing but white space.
    #[error("{}: the file is empty; a fixture names at least its `hostname`", shown(.path))]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// A fixture or snapshot file is malformed.
    #[error("{}{}: {message}", shown(.path), location(*.line, *.column))]
    Fixture {
        /// The file.
        path: PathBuf,
        /// 1-based line, where known.
        line: Option<usize>,
        /// 1-based column, where known.
        column: Option<usize>,
        /// What was wrong and what was expected.
        message: String,
    },
    /// A line of `nvidia-smi -L` text that does not parse.
    #[error("{}:{line}: {message}\n    {}", shown(.path), printable(.text))]
    SmiText {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending line.
        text: String,
        /// What was expected.
        message: String,
    },
    /// A file longer than gpucluster reads (`limits::MAX_INPUT_BYTES`, `MAX_FIXTURE_BYTES`).
    #[error(
        "{} is larger than {} MiB, the most gpucluster reads from one such file; no real machine's description \
         is that long: is it the right file?",
        shown(.path), .limit >> 20
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The bound, in bytes.
        limit: u64,
    },
    /// A file that is not UTF-8 text.
    #[error("{} is not UTF-8 text: {reason}", shown(.path))]
    NotText {
        /// The file.
        path: PathBuf,
        /// What it looks like instead, and where it goes wrong.
        reason: String,
    },
    /// A description beyond any real machine (see `limits`).
    #[error(
        "{} has {found} {what}, over gpucluster's limit of {limit} {what}, which no real hardware reaches; \
         is the description right?",
        printable(.subject)
    )]
    BeyondLimit {
        /// What has too many: `host \`a\``, `GPU 3 of host \`a\``, `the snapshot`.
        subject: String,
        /// Which bound.
        what: Limit,
        /// How many it has.
        found: usize,
        /// The bound.
        limit: usize,
    },
    /// A snapshot that parses but contradicts itself.
    #[error("invalid snapshot for host `{}`: {reason}", printable(.host))]
    InvalidSnapshot {
        /// The host it describes.
        host: String,
        /// What is inconsistent.
        reason: String,
    },
}

/// Which bound of `limits` a description went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// [`limits::MAX_HOSTS`](crate::limits::MAX_HOSTS).
    Hosts,
    /// [`limits::MAX_GPUS_PER_HOST`](crate::limits::MAX_GPUS_PER_HOST).
    GpusPerHost,
    /// [`limits::MAX_MIG_DEVICES_PER_GPU`](crate::limits::MAX_MIG_DEVICES_PER_GPU), or a known
    /// product's own maximum.
    MigDevicesPerGpu,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Hosts => "hosts",
            Limit::GpusPerHost => "GPUs on one host",
            Limit::MigDevicesPerGpu => "MIG devices on one GPU",
        })
    }
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

fn hint(failure: NvmlFailure) -> &'static str {
    match failure {
        NvmlFailure::NoPermission => {
            "; MIG devices can only be listed with permission: in a container set \
             NVIDIA_MIG_MONITOR_DEVICES=all, or run as a user allowed to query the GPU"
        }
        NvmlFailure::GpuLost => {
            "; the GPU has fallen off the bus or stopped answering: check `nvidia-smi` and the kernel log"
        }
        _ => "",
    }
}

/// NVML return codes that the backends distinguish. NVML's own error type stays inside the
/// `nvml` module; this is what crosses the boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NvmlFailure {
    /// `NVML_ERROR_NOT_SUPPORTED`.
    NotSupported,
    /// `NVML_ERROR_NO_PERMISSION`.
    NoPermission,
    /// `NVML_ERROR_NOT_FOUND` (e.g. an empty MIG slot).
    NotFound,
    /// `NVML_ERROR_INVALID_ARGUMENT` (e.g. a MIG slot past the end).
    InvalidArgument,
    /// `NVML_ERROR_GPU_IS_LOST`.
    GpuLost,
    /// `NVML_ERROR_UNINITIALIZED`.
    Uninitialized,
    /// A function missing from an old `libnvidia-ml`.
    FunctionNotFound,
    /// Any other code.
    Unknown,
}

impl fmt::Display for NvmlFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NvmlFailure::NotSupported => "not supported",
            NvmlFailure::NoPermission => "no permission",
            NvmlFailure::NotFound => "not found",
            NvmlFailure::InvalidArgument => "invalid argument",
            NvmlFailure::GpuLost => "GPU is lost",
            NvmlFailure::Uninitialized => "NVML is not initialised",
            NvmlFailure::FunctionNotFound => "function not found in this driver's libnvidia-ml",
            NvmlFailure::Unknown => "unknown error",
        })
    }
}

/// A path as messages show it: control characters in a file name escaped like any other text.
fn shown(path: &std::path::Path) -> String {
    printable(&path.display().to_string()).into_owned()
}
