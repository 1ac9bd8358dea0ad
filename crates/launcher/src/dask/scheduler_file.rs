//! Finding a scheduler: reading and trusting a scheduler file, splitting and checking an
//! address, reaching the port, and the dashboard's URL a scheduler file names.
//!
//! A scheduler file chooses the scheduler our workers obey, so it is trusted only when nobody
//! else can change it ([`only_ours`]). Everything here is bounded: a file of at most 1 MiB, a
//! connection within [`REACH_TIMEOUT`].

use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use crate::LauncherError;

/// How long the check that a scheduler answers waits.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a scheduler file and returns the scheduler's address.
///
/// # Errors
/// [`LauncherError::SchedulerFile`] naming the file and what is wrong with it.
pub fn scheduler_address(file: &Path) -> Result<String, LauncherError> {
    let bad = |problem: String| LauncherError::SchedulerFile { file: file.to_owned(), problem };
    let meta = std::fs::metadata(file)
        .map_err(|e| bad(format!("cannot be read ({e}); it is written by `dask scheduler --scheduler-file FILE`")))?;
    // A scheduler file is a few hundred bytes; anything huge is not one.
    if !meta.is_file() || meta.len() > 1 << 20 {
        return Err(bad("is not a Dask scheduler file (not a regular file of at most 1 MiB)".into()));
    }
    // Whoever can write the file chooses the scheduler these workers obey, and so runs code as
    // us: it must be ours, and closed to other writers.
    only_ours(file)
        .map_err(|why| bad(format!("{why}: whoever can change it chooses the scheduler your workers obey")))?;
    let text = std::fs::read(file).map_err(|e| bad(format!("cannot be read ({e})")))?;
    let text = text.strip_prefix(b"\xef\xbb\xbf".as_slice()).unwrap_or(&text);
    let json: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| bad(format!("is not a Dask scheduler file (not JSON: {e})")))?;
    let address = match json.get("address") {
        Some(serde_json::Value::String(a)) => a.clone(),
        Some(other) => {
            return Err(bad(format!("is not a Dask scheduler file: its \"address\" is {other}, not text")));
        }
        None => return Err(bad("is not a Dask scheduler file: it has no \"address\"".into())),
    };
    parse_address(&address).map_err(|why| bad(format!("names the scheduler address {address:?}, which {why}")))?;
    Ok(address)
}

/// Checks that only this user can change what `path` holds: the file (and a link to it) is ours,
/// a regular file and closed to other writers, and every directory on the way to it (the link's
/// and the file's, up to `/`) is ours or root's and either closed to other writers or sticky, so
/// that nobody else can replace the file, the link, or a directory above them. The error says
/// what is wrong, to follow the file's name.
pub fn only_ours(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    let link = std::fs::symlink_metadata(path).map_err(|e| format!("cannot be read ({e})"))?;
    if link.file_type().is_symlink() && link.uid() != me {
        return Err(format!("is a link that belongs to user {}, not to you (user {me})", link.uid()));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot be read ({e})"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.uid() != me {
        return Err(format!("belongs to user {}, not to you (user {me})", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("can be written by other users (mode {:o}; `chmod go-w` it)", meta.mode() & 0o777));
    }
    // The directories of the path as given (where a link lies) and of the file it names, each
    // up to the root, each as the file system resolves it.
    let given = std::path::absolute(path).ok();
    let target = std::fs::canonicalize(path).ok();
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    for start in [given, target].into_iter().flatten() {
        for dir in start.ancestors().skip(1) {
            let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    for dir in dirs {
        let d = std::fs::metadata(&dir).map_err(|e| format!("is in {} which cannot be read ({e})", dir.display()))?;
        let sticky = d.mode() & 0o1000 != 0;
        if (d.uid() != me && d.uid() != 0) || (d.mode() & 0o022 != 0 && !sticky) {
            return Err(format!(
                "is in {}, which another user can change (owner {}, mode {:o}): they could replace it",
                dir.display(),
                d.uid(),
                d.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// A scheduler address split into its scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerAddress {
    /// `tcp`, `tls`, `ucx`, ...
    pub scheme: String,
    /// A name or an address (without brackets for IPv6).
    pub host: String,
    /// The port.
    pub port: u16,
}

/// Splits `scheme://host:port`; the error says what is wrong, to follow "which ...".
pub fn parse_address(address: &str) -> Result<SchedulerAddress, String> {
    if address.len() > 1024 || address.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("holds spaces or control characters, or is far too long".into());
    }
    let (scheme, rest) = address.split_once("://").ok_or("has no scheme (expected e.g. tcp://HOST:PORT)")?;
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'+') {
        return Err("has no valid scheme (expected e.g. tcp://HOST:PORT)".into());
    }
    let (host, port) = rest.rsplit_once(':').ok_or("has no port")?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| format!("has no valid port ({port:?})"))?;
    if host.is_empty() {
        return Err("has no host".into());
    }
    // Brackets go around an IPv6 address, once, and nowhere else.
    if host.contains(['[', ']']) {
        return Err("has a malformed host (brackets go around an IPv6 address only)".into());
    }
    if port == 0 {
        return Err("has port 0, which is no scheduler's".into());
    }
    Ok(SchedulerAddress { scheme: scheme.to_owned(), host: host.to_owned(), port })
}

/// Checks that the scheduler at `address` accepts connections, within [`REACH_TIMEOUT`].
///
/// # Errors
/// [`LauncherError::SchedulerUnreachable`] with the reason.
pub fn check_scheduler(address: &str) -> Result<(), LauncherError> {
    let unreachable = |reason: String| LauncherError::SchedulerUnreachable { address: address.to_owned(), reason };
    let parsed = parse_address(address).map_err(|why| unreachable(format!("the address {why}")))?;
    let targets: Vec<_> = (parsed.host.as_str(), parsed.port)
        .to_socket_addrs()
        .map_err(|e| unreachable(format!("{} does not resolve ({e})", parsed.host)))?
        .collect();
    let mut last = None;
    for target in targets {
        match TcpStream::connect_timeout(&target, REACH_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(format!("{target}: {e}")),
        }
    }
    Err(unreachable(last.unwrap_or_else(|| format!("{} resolves to no address", parsed.host))))
}

/// The dashboard's URL (`http://HOST:PORT/status`), from a scheduler file, where the scheduler
/// serves one: distributed writes its address and `"services": {"dashboard": PORT}`.
pub fn dashboard_url(scheduler_file: &Path) -> Option<String> {
    // A scheduler file is a few hundred bytes: read at most 1 MiB of it.
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(std::fs::File::open(scheduler_file).ok()?, 1 << 20), &mut text)
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let port = value.get("services")?.get("dashboard")?.as_u64().and_then(|p| u16::try_from(p).ok())?;
    // The scheduler's host, from its address (`tcp://HOST:PORT`, `tcp://[::1]:PORT`).
    let host = value
        .get("address")
        .and_then(serde_json::Value::as_str)
        .and_then(|a| a.split_once("://"))
        .and_then(|(_, rest)| rest.rsplit_once(':'))
        .map_or("127.0.0.1", |(host, _)| host);
    Some(format!("http://{host}:{port}/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("gpucluster-dask-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good.json");
        std::fs::write(&good, r#"{"type": "Scheduler", "address": "tcp://10.0.0.1:8786"}"#).expect("write");
        assert_eq!(scheduler_address(&good).expect("good"), "tcp://10.0.0.1:8786");
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{\"id\": 1}").expect("write");
        assert!(scheduler_address(&bad).expect_err("bad").to_string().contains("no \"address\""));
        std::fs::write(&bad, "not json").expect("write");
        assert!(scheduler_address(&bad).expect_err("bad").to_string().contains("not JSON"));
        let err = scheduler_address(&dir.join("missing.json")).expect_err("missing");
        assert!(err.to_string().contains("dask scheduler --scheduler-file"), "{err}");
        // An address that is not text, or not an address, is said to be so.
        std::fs::write(&bad, r#"{"address": 42}"#).expect("write");
        assert!(scheduler_address(&bad).expect_err("number").to_string().contains("is 42, not text"));
        std::fs::write(&bad, "{\"address\": \"tcp://evil\\u001b[2J:1\"}").expect("write");
        let err = scheduler_address(&bad).expect_err("escape").to_string();
        assert!(err.contains("control characters") && !err.contains('\u{1b}'), "{err}");
        std::fs::write(&bad, "\u{feff}{\"address\": \"tls://127.0.0.1:8786\"}").expect("write");
        assert_eq!(scheduler_address(&bad).expect("a BOM is fine"), "tls://127.0.0.1:8786");
        assert!(scheduler_address(Path::new("/dev/zero")).is_err(), "not a regular file");
        // A file others may write (or, as root, one another user owns) chooses our scheduler.
        std::fs::write(&bad, r#"{"address": "tls://127.0.0.1:8786"}"#).expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(scheduler_address(&bad).expect_err("writable").to_string().contains("written by other users"));
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        // SAFETY: getuid cannot fail.
        if unsafe { libc::getuid() } == 0 {
            std::os::unix::fs::chown(&bad, Some(65534), None).expect("chown");
            assert!(scheduler_address(&bad).expect_err("foreign").to_string().contains("belongs to user 65534"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A TCP socket bound to a free port of 127.0.0.1 that does not listen, and the port.
    fn bound_not_listening() -> (std::os::fd::OwnedFd, u16) {
        use std::os::fd::FromRawFd;
        // SAFETY: a new socket, bound to a zeroed-then-filled sockaddr_in, then asked its name;
        // the descriptor is owned by the returned OwnedFd.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(libc::bind(fd, (&raw const addr).cast(), len), 0);
            let mut got = len;
            assert_eq!(libc::getsockname(fd, (&raw mut addr).cast(), &mut got), 0);
            (owned, u16::from_be(addr.sin_port))
        }
    }

    #[test]
    fn addresses_split_and_unreachable_schedulers_are_named() {
        let a = parse_address("tls://[::1]:8786").expect("v6");
        assert_eq!((a.scheme.as_str(), a.host.as_str(), a.port), ("tls", "::1", 8786));
        for bad in ["127.0.0.1:8786", "tcp://host", "tcp://:80", "tcp://h:0", "tcp://h:99999", "://h:1"] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
        // A port held by a socket that never listens: nobody answers there, and nobody else can
        // take it while the test runs.
        let (_held, port) = bound_not_listening();
        let started = std::time::Instant::now();
        let err = check_scheduler(&format!("tcp://127.0.0.1:{port}")).expect_err("nobody listens");
        assert!(matches!(err, LauncherError::SchedulerUnreachable { .. }), "{err}");
        assert!(err.to_string().contains("does not answer"), "{err}");
        assert!(started.elapsed() <= REACH_TIMEOUT + Duration::from_secs(1));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        check_scheduler(&format!("tcp://{}", listener.local_addr().expect("addr"))).expect("listening");
    }
}

/// The scheduler-file parser against arbitrary input (issue 9, item 16): no bytes make it panic
/// or take long, and what it accepts is an address that reads back as itself.
#[cfg(test)]
mod properties {
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::{parse_address, scheduler_address};

    /// A private directory for the property's files, removed at the end.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            use std::os::unix::fs::DirBuilderExt;
            let nonce: u64 = rand_nonce();
            let dir = std::env::temp_dir().join(format!("gpucluster-prop-{name}-{}-{nonce:x}", std::process::id()));
            std::fs::DirBuilder::new().mode(0o700).create(&dir).expect("a fresh private directory");
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rand_nonce() -> u64 {
        let mut bytes = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .expect("/dev/urandom");
        u64::from_ne_bytes(bytes)
    }

    /// Text shaped like a scheduler file more often than not, so the parser's later branches are
    /// reached: JSON with an "address" of arbitrary text, arbitrary JSON, or arbitrary bytes.
    fn file_contents() -> impl Strategy<Value = Vec<u8>> {
        let address =
            prop_oneof!["(tcp|tls|ucx|gpucluster|)://[a-z0-9.\\[\\]:]{0,20}:[0-9]{0,6}", ".{0,60}", "\\PC{0,30}",];
        prop_oneof![
            address.prop_map(|a| serde_json::json!({"type": "Scheduler", "address": a}).to_string().into_bytes()),
            any::<i64>().prop_map(|n| format!("{{\"address\": {n}}}").into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..256),
            ".{0,80}".prop_map(String::into_bytes),
        ]
    }

    /// An accepted address written back from its parts.
    fn reassembled(address: &str) -> String {
        let parts = parse_address(address).expect("accepted");
        let host = if parts.host.contains(':') { format!("[{}]", parts.host) } else { parts.host };
        format!("{}://{}:{}", parts.scheme, host, parts.port)
    }

    proptest! {
        #[test]
        fn no_address_makes_the_parser_panic_and_what_it_accepts_reads_back(text in "\\PC{0,40}|.{0,40}") {
            if parse_address(&text).is_ok() {
                let again = reassembled(&text);
                prop_assert_eq!(parse_address(&again), parse_address(&text));
            }
        }

        #[test]
        fn no_scheduler_file_makes_the_reader_panic_or_dawdle(contents in file_contents()) {
            let scratch = Scratch::new("scheduler-file");
            let file = scratch.0.join("scheduler.json");
            std::fs::write(&file, &contents).expect("write");
            let started = Instant::now();
            let read = scheduler_address(&file);
            prop_assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
            match read {
                Ok(address) => {
                    // What is accepted is the file's own address, and a valid one.
                    let json: serde_json::Value = serde_json::from_slice(contents.strip_prefix(b"\xef\xbb\xbf".as_slice()).unwrap_or(&contents))
                        .expect("accepted files are JSON");
                    prop_assert_eq!(json.get("address").and_then(serde_json::Value::as_str), Some(address.as_str()));
                    prop_assert!(parse_address(&address).is_ok());
                    prop_assert_eq!(parse_address(&reassembled(&address)), parse_address(&address));
                }
                Err(e) => {
                    // The error names the file and carries no raw control characters.
                    let message = e.to_string();
                    prop_assert!(message.contains("scheduler.json"), "{message}");
                    prop_assert!(!message.chars().any(|c| c.is_control() && c != '\n'), "{message:?}");
                }
            }
        }
    }
}
