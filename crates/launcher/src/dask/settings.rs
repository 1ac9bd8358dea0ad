//! The grammars of a Dask request's settings, checked before anything starts: host memory per
//! worker in Dask's grammar (as `distributed.worker_memory.parse_memory_limit` reads it, but
//! refusing what Dask would silently cap or misread) and where a dashboard listens.
//!
//! Pure, like the spec ([`super::spec`]) that uses them; each refusal names its setting.

use cluster_core::wording::{Message, Setting};

use super::facts::{HostFacts, PythonFacts};
use super::spec::{DEFAULT_HOST, MIN_HOST_MEMORY, refused};
use crate::LauncherError;

/// Where the dashboard listens: a bare port (`8787`, `:8787`, as Dask users write it) on the
/// scheduler's host (127.0.0.1 unless asked otherwise), not on every interface, which is what
/// Dask makes of it; `HOST:PORT` as given.
pub fn dashboard_address(address: &str, host: Option<&str>) -> String {
    let port = address.strip_prefix(':').unwrap_or(address);
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        let host = host.unwrap_or(DEFAULT_HOST);
        if host.contains(':') && !host.starts_with('[') {
            return format!("[{host}]:{port}");
        }
        return format!("{host}:{port}");
    }
    address.to_owned()
}

pub(super) fn dashboard(address: &str, host: Option<&str>, python: &PythonFacts) -> Result<String, LauncherError> {
    let port = address.rsplit(':').next().unwrap_or_default();
    if address.trim().is_empty() {
        return Err(refused(Setting::Dashboard, ": an address such as 127.0.0.1:8787 or :8787 (this host), or none"));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
        return Err(refused(
            Setting::Dashboard,
            format!(
                ": HOST:PORT or :PORT with a port from 0 (any free one) to 65535, not {:?}",
                gpu_topology::text::printable(address)
            ),
        ));
    }
    if !python.bokeh {
        return Err(LauncherError::Request(
            Message::new()
                .name(Setting::Dashboard)
                .text(format!(
                    ": Dask's dashboard needs bokeh, which this Python does not have; install it with `{}`, or leave out ",
                    python.pip_install("bokeh")
                ))
                .name(Setting::Dashboard),
        ));
    }
    Ok(dashboard_address(address, host))
}

/// Host memory per worker, bytes (`None`: no limit), from `limit` in Dask's grammar
/// (`distributed.worker_memory.parse_memory_limit`): `None` or `auto` split this host's memory
/// evenly between the workers; a number up to 1 is that fraction of the host's memory; a larger
/// number is bytes; text is a size (`16GB`, `2GiB`); 0 is no limit. A limit above the host's
/// memory, or too small to run a worker, is refused rather than capped or taken as bytes.
pub(super) fn host_memory_per_worker(
    limit: Option<&str>,
    workers: usize,
    host: &HostFacts,
) -> Result<Option<u64>, LauncherError> {
    let split = || host.memory_bytes.map(|m| m / workers.max(1) as u64);
    let grammar = "host memory per worker in Dask's grammar: a size such as 16GB, bytes, a fraction of this host's \
                   memory such as 0.25, auto (split between the workers) or 0 (no limit)";
    let Some(text) = limit else { return Ok(split()) };
    let trimmed = text.trim();
    let bad = || refused(Setting::MemoryLimit, format!(": {grammar}, not {:?}", gpu_topology::text::printable(text)));
    let bytes = if trimmed == "auto" {
        split()
    } else if let Ok(number) = trimmed.parse::<f64>() {
        if !number.is_finite() || number < 0.0 {
            return Err(bad());
        }
        if number <= 1.0 {
            match host.memory_bytes {
                Some(m) => Some((number * m as f64) as u64),
                None => {
                    return Err(refused(
                        Setting::MemoryLimit,
                        ": a fraction of this host's memory, which cannot be read here; give a size such as 16GB",
                    ));
                }
            }
        } else if number >= u64::MAX as f64 {
            Some(u64::MAX)
        } else {
            Some(number as u64)
        }
    } else {
        Some(cluster_core::parse_dask_size(trimmed).ok_or_else(bad)?)
    };
    match (bytes, host.memory_bytes) {
        (Some(0) | None, _) => Ok(None),
        (Some(b), Some(total)) if b > total => Err(refused(
            Setting::MemoryLimit,
            format!(
                ": {:?} is more than this host's memory ({:.2} GiB); give at most that per worker, or 0 for no limit",
                gpu_topology::text::printable(text),
                total as f64 / f64::from(1u32 << 30)
            ),
        )),
        (Some(b), _) if b < MIN_HOST_MEMORY => Err(refused(
            Setting::MemoryLimit,
            format!(
                ": {b} bytes per worker is too little to run one (at least {} MiB); {grammar}, not {:?}",
                MIN_HOST_MEMORY >> 20,
                gpu_topology::text::printable(text)
            ),
        )),
        (Some(b), _) => Ok(Some(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(memory: u64, cpus: usize) -> HostFacts {
        HostFacts { memory_bytes: Some(memory), cpus: (0..cpus).collect() }
    }

    #[test]
    fn memory_limits_read_as_dask_reads_them() {
        let h = host(64 << 30, 16);
        let per = |text: &str| host_memory_per_worker(Some(text), 4, &h);
        assert_eq!(host_memory_per_worker(None, 4, &h).expect("default"), Some(16 << 30));
        assert_eq!(per("auto").expect("auto"), Some(16 << 30));
        assert_eq!(per("0.25").expect("fraction"), Some(16 << 30));
        assert_eq!(per("1").expect("one is all of it, as Dask reads it"), Some(64 << 30));
        assert_eq!(per("2GiB").expect("size"), Some(2 << 30));
        assert_eq!(per("16GB").expect("size"), Some(16_000_000_000));
        assert_eq!(per("2147483648").expect("bytes"), Some(2 << 30));
        assert_eq!(per("0").expect("no limit"), None);
        for bad in ["-5", "-5GB", "", "lots", "nan", "inf", "[1]", "True"] {
            let err = per(bad).expect_err(bad);
            assert!(err.to_string().contains("Dask's grammar"), "{bad}: {err}");
        }
        assert!(per("1e30").expect_err("huge").to_string().contains("more than this host's memory"));
        assert!(per("1.5").expect_err("bytes").to_string().contains("too little to run one"));
        // Where the host's memory is unknown, a size still works and a fraction cannot.
        let unknown = HostFacts::default();
        assert_eq!(host_memory_per_worker(None, 4, &unknown).expect("default"), None);
        assert_eq!(host_memory_per_worker(Some("2GiB"), 4, &unknown).expect("size"), Some(2 << 30));
        assert!(host_memory_per_worker(Some("0.5"), 4, &unknown).is_err());
    }

    #[test]
    fn dashboards_are_on_the_schedulers_host_and_need_bokeh() {
        let bokeh = PythonFacts { bokeh: true, ..PythonFacts::default() };
        assert_eq!(dashboard(":8787", None, &bokeh).expect("port"), "127.0.0.1:8787");
        assert_eq!(dashboard("8787", Some("::1"), &bokeh).expect("v6"), "[::1]:8787");
        assert_eq!(dashboard("10.0.0.1:8787", None, &bokeh).expect("given"), "10.0.0.1:8787");
        assert_eq!(dashboard_address("0.0.0.0:8787", None), "0.0.0.0:8787");
        for bad in ["", " ", ":", ":abc", "70000", "-1"] {
            assert!(dashboard(bad, None, &bokeh).is_err(), "{bad:?}");
        }
        let err = dashboard(":8787", None, &PythonFacts::default()).expect_err("no bokeh");
        assert!(err.to_string().contains("bokeh"), "{err}");
    }
}
