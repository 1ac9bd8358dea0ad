//! The grammars of a Dask request's settings, checked before anything starts: host memory per
//! worker in Dask's grammar (as `distributed.worker_memory.parse_memory_limit` reads it, but
//! refusing what Dask would silently cap or misread) and where a dashboard listens.
//!
//! Pure, like the spec ([`super::spec`]) that uses them; each refusal names its setting.

use cluster_core::wording::{Message, Setting};

use super::facts::{HostFacts, PythonFacts};
use crate::LauncherError;

/// Where the scheduler and a local cluster's workers listen unless told otherwise: this host only.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// The least host memory a worker may be limited to (Dask reads `1.5` as 1.5 bytes: a worker
/// that pauses at once).
pub const MIN_HOST_MEMORY: u64 = 64 << 20;

/// A refusal of `setting`: its name, then `rest`.
pub(super) fn refused(setting: Setting, rest: impl Into<String>) -> LauncherError {
    LauncherError::Request(Message::new().name(setting).text(rest.into()))
}

/// A whole number from `least` to `most` for `setting`, from its text (a Python caller's repr:
/// `4`, `2.5`, `True`, `'2'`), refused as such where it is none.
pub fn whole(setting: Setting, text: &str, least: u64, most: Option<u64>) -> Result<u64, LauncherError> {
    let within = |n: &u64| *n >= least && most.is_none_or(|most| *n <= most);
    text.trim().parse::<u64>().ok().filter(within).ok_or_else(|| {
        let shown = gpu_topology::text::printable(&text.chars().take(40).collect::<String>()).into_owned();
        let range = match most {
            Some(most) => format!("from {least} to {most}"),
            None => format!("at least {least}"),
        };
        refused(setting, format!(": a whole number {range}, not {shown}"))
    })
}

/// The longest address a setting may give (a DNS name is at most 253 characters).
const MAX_ADDRESS: usize = 253;

/// A host to listen on (`--host`, `host=`), as Dask takes it: a name or an IPv4 address as
/// given, an IPv6 address in brackets (`::1` and `[::1]` alike become `[::1]`, which is the only
/// form Dask's address parser reads). Whether the name resolves is asked of the machine before
/// anything starts ([`super::session::check_addresses`]).
pub fn listen_host(host: &str) -> Result<String, LauncherError> {
    let shown = || gpu_topology::text::printable(&host.chars().take(80).collect::<String>()).into_owned();
    let bad = |why: &str| refused(Setting::Host, format!(": {why}, not \"{}\"", shown()));
    if host.trim().is_empty() {
        return Err(refused(
            Setting::Host,
            ": an address such as 127.0.0.1 (this host only), 0.0.0.0 (every interface) or a name of this host",
        ));
    }
    if host.chars().count() > MAX_ADDRESS || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("an address has no spaces or control characters and at most 253 characters"));
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(v6) = bare.parse::<std::net::Ipv6Addr>() {
        return Ok(format!("[{v6}]"));
    }
    if bare.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(bare.to_owned());
    }
    let label = |l: &str| {
        !l.is_empty() && !l.starts_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    // A fully qualified name may end in a dot (`localhost.`).
    if bare != host || !bare.strip_suffix('.').unwrap_or(bare).split('.').all(label) {
        return Err(bad("an IPv4 address, an IPv6 address or a host name"));
    }
    Ok(bare.to_owned())
}

/// Where the dashboard listens: a bare port (`8787`, `:8787`, as Dask users write it) on the
/// scheduler's host (127.0.0.1 unless asked otherwise), not on every interface, which is what
/// Dask makes of it; `HOST:PORT` as given.
pub fn dashboard_address(address: &str, host: Option<&str>) -> String {
    let port = address.strip_prefix(':').unwrap_or(address);
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        return format!("{}:{port}", host.unwrap_or(DEFAULT_HOST));
    }
    address.to_owned()
}

/// Where the dashboard listens, checked: `HOST:PORT` or a bare port (on `host`, the scheduler's,
/// already as [`listen_host`] gives it). Dask's dashboard listens on IPv4 only and takes no
/// scheme; bokeh draws it.
pub(super) fn dashboard(address: &str, host: Option<&str>, python: &PythonFacts) -> Result<String, LauncherError> {
    let shown = || gpu_topology::text::printable(&address.chars().take(80).collect::<String>()).into_owned();
    if address.trim().is_empty() {
        return Err(refused(
            Setting::Dashboard,
            ": an address such as 127.0.0.1:8787 or :8787 (on the scheduler's host), or leave it out for none",
        ));
    }
    let (at, port) = address.rsplit_once(':').unwrap_or(("", address));
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
        return Err(refused(
            Setting::Dashboard,
            format!(": HOST:PORT or :PORT with a port from 0 (any free one) to 65535, not \"{}\"", shown()),
        ));
    }
    let listens_on = if at.is_empty() {
        host.unwrap_or(DEFAULT_HOST).to_owned()
    } else {
        listen_host(at).map_err(|_| {
            refused(
                Setting::Dashboard,
                format!(": HOST:PORT with an address or a name of this host, not \"{}\"", shown()),
            )
        })?
    };
    if listens_on.starts_with('[') {
        return Err(refused(
            Setting::Dashboard,
            format!(
                ": Dask's dashboard listens on IPv4 only, not on {listens_on}; give an IPv4 address such as \
                 127.0.0.1:{port}"
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
    Ok(format!("{listens_on}:{port}"))
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
    let shown = || gpu_topology::text::printable(&text.chars().take(80).collect::<String>()).into_owned();
    let bad = || refused(Setting::MemoryLimit, format!(": {grammar}, not \"{}\"", shown()));
    // No limit only where it is asked for: a fraction too small to be a byte is too small.
    let none_asked = trimmed.parse::<f64>().is_ok_and(|n| n == 0.0)
        || cluster_core::parse_dask_size(trimmed).is_some_and(|b| b == 0) && trimmed.starts_with('0');
    if trimmed.is_empty() {
        // Dask reads an empty limit as one byte.
        return Err(bad());
    }
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
        (None, _) => Ok(None),
        (Some(0), _) if none_asked => Ok(None),
        (Some(b), Some(total)) if b > total => Err(refused(
            Setting::MemoryLimit,
            format!(
                ": \"{}\" is more than this host's memory ({:.2} GiB); give at most that per worker, or 0 for no limit",
                shown(),
                total as f64 / f64::from(1u32 << 30)
            ),
        )),
        (Some(b), _) if b < MIN_HOST_MEMORY => Err(refused(
            Setting::MemoryLimit,
            format!(
                ": {} per worker is too little to run one (at least {} MiB); {grammar}, not \"{}\"",
                if b == 1 { "1 byte".to_owned() } else { format!("{b} bytes") },
                MIN_HOST_MEMORY >> 20,
                shown()
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
        assert_eq!(per("1e9B").expect("Dask's parse_bytes reads it"), Some(1_000_000_000));
        assert_eq!(per("0GB").expect("no limit, asked for"), None);
        for tiny in ["1e-11", "5e-324", "0.0000001"] {
            assert!(per(tiny).expect_err(tiny).to_string().contains("too little"), "{tiny}");
        }
        for bad in ["-5", "-5GB", "", " ", "lots", "nan", "inf", "[1]", "True"] {
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
        assert_eq!(dashboard("8787", Some("10.0.0.5"), &bokeh).expect("on the host"), "10.0.0.5:8787");
        assert_eq!(dashboard("10.0.0.1:8787", None, &bokeh).expect("given"), "10.0.0.1:8787");
        assert_eq!(dashboard("localhost:0", None, &bokeh).expect("a name"), "localhost:0");
        assert_eq!(dashboard_address("0.0.0.0:8787", None), "0.0.0.0:8787");
        // Dask's dashboard listens on IPv4 only, and takes no scheme.
        let v6 = dashboard("8787", Some("[::1]"), &bokeh).expect_err("v6");
        assert!(v6.to_string().contains("IPv4 only"), "{v6}");
        for bad in ["", " ", ":", ":abc", "70000", "-1", "::1", "[::1]:8787", "http://127.0.0.1:8787", "a\nb:80"] {
            assert!(dashboard(bad, None, &bokeh).is_err(), "{bad:?}");
        }
        let err = dashboard(":8787", None, &PythonFacts::default()).expect_err("no bokeh");
        assert!(err.to_string().contains("bokeh"), "{err}");
    }

    #[test]
    fn hosts_read_as_dask_reads_them() {
        assert_eq!(listen_host("127.0.0.1").expect("v4"), "127.0.0.1");
        assert_eq!(listen_host("::1").expect("v6"), "[::1]", "Dask reads IPv6 in brackets only");
        assert_eq!(listen_host("[::1]").expect("v6"), "[::1]");
        assert_eq!(listen_host("node-7.cluster").expect("a name"), "node-7.cluster");
        for bad in ["", " ", "-bad", "127.0.0.1\n", "a b", "[node]", "http://x", "x:80", &"a".repeat(300)] {
            let err = listen_host(bad).expect_err(bad);
            assert!(
                err.message().pieces().iter().any(|p| matches!(p, cluster_core::wording::Piece::Name(Setting::Host))),
                "{err}"
            );
            assert!(!err.to_string().contains('\n'), "{err:?}");
        }
    }
}
