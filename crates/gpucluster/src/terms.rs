//! How the command line spells the settings that the libraries' messages name: as its own flags
//! (`--protocol ucx`, `--insecure`, `--tls-ca-file, --tls-cert and --tls-key`), so that a
//! library's refusal reads as a fix the user can type here. The Python package spells the same
//! messages as keyword arguments.

use launcher::LauncherError;
use launcher::words::{Setting, Terms};

/// The command line's flags.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flags;

impl Terms for Flags {
    fn setting(&self, setting: Setting, value: Option<&str>) -> String {
        let flag = match setting {
            Setting::Protocol => "--protocol",
            Setting::Insecure => "--insecure",
            Setting::Credentials => "--tls-ca-file, --tls-cert and --tls-key",
            Setting::Host => "--host",
            Setting::Dashboard => "--dashboard",
            Setting::MemoryLimit => "--memory-limit",
            // A Dask worker's own options, given after `--`.
            Setting::Threads => "-- --nthreads",
            Setting::RmmPoolSize => "-- --rmm-pool-size",
            Setting::Workers => "--devices",
            Setting::WorkersPerDevice => "--workers-per-device",
            Setting::DeviceMemoryLimit => "--device-memory-limit",
            Setting::Python => "--python (or GPUCLUSTER_PYTHON)",
            Setting::Grace => "--grace",
            _ => "an option",
        };
        match value {
            Some(v) => format!("{flag} {}", crate::table::escape(v)),
            None => flag.to_owned(),
        }
    }
}

/// A launcher error in the command line's words.
pub(crate) fn launcher_error(error: &LauncherError) -> String {
    error.words().render(&Flags)
}

/// An error and its causes, as `{:#}` writes them (`context: cause`), with the launcher's errors
/// in the command line's words.
pub(crate) fn error_text(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(|cause| match cause.downcast_ref::<LauncherError>() {
            Some(e) => launcher_error(e),
            None => cause.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
}
