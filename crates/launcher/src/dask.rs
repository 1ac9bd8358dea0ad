//! The Dask adapter: the plan's workers as Dask workers (`dask cuda worker` where dask-cuda is
//! installed, else `dask worker`), one per device, and for `dask local` a scheduler beside them.
//!
//! Every worker gets `--nthreads 1`, its name from the plan, a host memory limit (this host's
//! memory split between its workers), its device memory limit (`--device-memory-limit` for
//! dask-cuda, `GPUCLUSTER_DEVICE_MEMORY_LIMIT` for both), its Dask resources, and its plan's
//! environment, so a MIG worker sees exactly its own instance. Workers talk TCP: the path a MIG
//! cluster has anyway (UCX with NVLink needs whole, NVLinked GPUs and distributed-ucxx).
//!
//! Security: a Dask worker runs whatever a connected peer asks, so `dask local` closes its
//! cluster with TLS by default ([`TlsFiles`]: a fresh CA and one certificate that the scheduler,
//! the workers and the user's client present, in a [`crate::workdir::PrivateDir`]
//! nobody else can read). Simulated devices never reach code that asks the driver about them:
//! their workers run plain `dask worker` with distributed's NVML diagnostics off.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use transport::device::{DeviceKind, WorkerDevice};

use cluster_core::WorkerPlan;

use crate::workdir::PrivateDir;
use crate::{LauncherError, ProcessSpec};

/// How long a worker waits for an unreachable scheduler before it gives up (`--death-timeout`).
pub const DEATH_TIMEOUT_SECONDS: u32 = 30;
/// How long the check that a scheduler answers waits.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the Python environment offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonInfo {
    /// The interpreter.
    pub python: OsString,
    /// `distributed.__version__`.
    pub distributed: String,
    /// Whether `dask_cuda` can be imported.
    pub dask_cuda: bool,
    /// Whether `distributed_ucxx` (Dask's UCX comm) can be imported.
    pub ucxx: bool,
    /// Whether the `gpucluster` package's comm is registered with distributed.
    pub gpucluster: bool,
    /// Whether `bokeh`, which Dask's dashboard needs, can be imported.
    pub bokeh: bool,
}

/// A Dask comm protocol (the scheme of its addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Dask's TCP comm, unauthenticated.
    Tcp,
    /// Dask's TCP comm over TLS, with the cluster's certificate.
    Tls,
    /// UCX (distributed-ucxx), unauthenticated.
    Ucx,
    /// gpucluster's comm: TCP for messages, the transport for device frames between workers of
    /// one host, every connection proving the cluster's secret.
    Gpucluster,
}

impl Protocol {
    /// The scheme, as Dask spells it (`--protocol`).
    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Ucx => "ucx",
            Protocol::Gpucluster => "gpucluster",
        }
    }

    /// Whether peers must prove who they are before their first message.
    pub fn authenticates(self) -> bool {
        matches!(self, Protocol::Tls | Protocol::Gpucluster)
    }
}

/// What `--protocol` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolRequest {
    /// Choose (see [`choose_protocol`]).
    Auto,
    /// Dask's TCP comm (over TLS unless the cluster is insecure).
    Tcp,
    /// UCX.
    Ucx,
    /// gpucluster's comm.
    Gpucluster,
}

/// What the cluster looks like to the protocol choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolFacts {
    /// Every pair of workers is two whole GPUs with P2P over NVLink.
    pub all_pairs_nvlink: bool,
    /// Workers on this host.
    pub workers: usize,
    /// Whether the cluster must be closed to other users (`dask local` unless `--insecure`).
    pub secure: bool,
    /// Whether the scheduler requires every connection to be encrypted (a TLS scheduler that
    /// workers join): gpucluster's comm authenticates every connection but encrypts none.
    pub encrypted: bool,
}

/// The comm protocol for a cluster's workers, and why; pure.
///
/// With the `gpucluster` package installed and two workers or more on the host, device frames
/// between them go over the transport (host-staged between MIG instances, cuda-ipc between
/// workers of one GPU) and every connection proves the cluster's secret, so the cluster is closed
/// without paying TLS on the data path. Otherwise: UCX only where it can use NVLink (whole GPUs
/// with P2P over NVLink; without CUDA IPC it is no faster than TCP, `docs/benchmarks.md`) and
/// only for an insecure cluster (it cannot authenticate peers); else TCP, over TLS when secure.
///
/// # Errors
/// [`LauncherError::Protocol`] when the request cannot be met (what is missing, or insecure).
pub fn choose_protocol(
    request: ProtocolRequest,
    facts: ProtocolFacts,
    python: &PythonInfo,
) -> Result<(Protocol, String), LauncherError> {
    let tcp = if facts.secure { Protocol::Tls } else { Protocol::Tcp };
    let refuse = |why: String| Err(LauncherError::Protocol(why));
    let unencrypted = "the scheduler speaks TLS and Dask then refuses every connection that is not encrypted";
    match request {
        ProtocolRequest::Ucx | ProtocolRequest::Gpucluster if facts.encrypted => refuse(format!(
            "--protocol {}: {unencrypted}; gpucluster's comm authenticates but does not encrypt (use --protocol tcp, \
             or start the cluster with `gpucluster dask local`, which speaks gpucluster throughout)",
            if request == ProtocolRequest::Ucx { "ucx" } else { "gpucluster" }
        )),
        ProtocolRequest::Auto if facts.encrypted => Ok((Protocol::Tls, format!("{unencrypted}, so workers speak TLS"))),
        ProtocolRequest::Tcp => Ok((tcp, "asked for with --protocol tcp".into())),
        ProtocolRequest::Ucx if !python.ucxx => {
            refuse("--protocol ucx: distributed-ucxx is not installed (pip install distributed-ucxx-cu13)".into())
        }
        ProtocolRequest::Ucx if facts.secure => refuse(
            "--protocol ucx: UCX cannot authenticate peers, so anyone who reaches a worker could run code as you; \
             add --insecure to accept that"
                .into(),
        ),
        ProtocolRequest::Ucx => Ok((Protocol::Ucx, "asked for with --protocol ucx".into())),
        ProtocolRequest::Gpucluster if !python.gpucluster => refuse(format!(
            "--protocol gpucluster: the gpucluster package is not installed for `{}` (build and install its \
             wheel: see the user guide, \"Dask\")",
            python.python.to_string_lossy()
        )),
        ProtocolRequest::Gpucluster => Ok((Protocol::Gpucluster, "asked for with --protocol gpucluster".into())),
        ProtocolRequest::Auto if python.gpucluster && facts.workers > 1 => Ok((
            Protocol::Gpucluster,
            "the gpucluster package is installed and workers share this host: device frames go over its transport, \
             every connection proves the cluster's secret"
                .into(),
        )),
        ProtocolRequest::Auto => Ok(match (facts.all_pairs_nvlink && facts.workers > 1, python.ucxx) {
            (true, true) if facts.secure => (
                Protocol::Tls,
                "UCX could use NVLink here, but it cannot authenticate peers: TLS keeps the cluster closed \
                 (--insecure for UCX)"
                    .into(),
            ),
            (true, true) => (
                Protocol::Ucx,
                "every pair of workers is two whole GPUs with P2P over NVLink, and distributed-ucxx is installed"
                    .into(),
            ),
            (true, false) => (
                tcp,
                "the GPUs are NVLinked, but distributed-ucxx is not installed (pip install distributed-ucxx-cu13 for \
                 UCX)"
                    .into(),
            ),
            (false, _) if facts.workers > 1 => (
                tcp,
                "the gpucluster package is not installed for this Python (its comm would move device frames between \
                 these workers), and nothing here is for UCX's cuda_ipc/NVLink"
                    .into(),
            ),
            (false, _) => (tcp, "one worker: no device frames move between workers".into()),
        }),
    }
}

/// How long a check that runs Python may take (a cold `import distributed` takes seconds).
pub const PYTHON_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of a Python check's output that are read; the rest is drained and dropped.
const PYTHON_OUTPUT: u64 = 64 << 10;

/// What a bounded Python run printed.
#[derive(Debug)]
struct PythonRun {
    success: bool,
    stdout: String,
    stderr: String,
}

/// How [`run_python`] says the interpreter could not be started at all (not found, not
/// executable), which [`probe_python`] answers with another fix than installing Dask into it.
const CANNOT_RUN: &str = "cannot run it";

/// Runs `python -c script args...` for at most `timeout`, reading at most [`PYTHON_OUTPUT`] bytes
/// of each stream; the child dies with the launcher (`PR_SET_PDEATHSIG`) and is killed at the
/// deadline. `Err` carries what went wrong, in words.
fn run_python(
    python: &OsString,
    script: &str,
    args: &[&str],
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<PythonRun, String> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut command = Command::new(python);
    command.arg("-c").arg(format!("{NO_CWD_IMPORTS}\n{script}")).args(args);
    // From the root directory: nothing there is another user's to plant.
    command.current_dir("/").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // A process group of its own (a wrapper script's children too), killed however the check
    // ends; and the kernel kills the interpreter if the launcher dies.
    // SAFETY: setpgid and prctl are async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| format!("{CANNOT_RUN}: {e}"))?;
    let group = child.id() as i32;
    // SAFETY: killing the process group created for this check.
    let kill_group = || unsafe { libc::kill(-group, libc::SIGKILL) };
    let (tx, rx) = std::sync::mpsc::channel::<(bool, String)>();
    let reader = |stream: Option<Box<dyn Read + Send>>, is_stdout: bool| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut stream) = stream {
                let _ = (&mut stream).take(PYTHON_OUTPUT).read_to_end(&mut text);
                let _ = std::io::copy(&mut stream, &mut std::io::sink());
            }
            let _ = tx.send((is_stdout, String::from_utf8_lossy(&text).into_owned()));
        });
    };
    reader(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>), true);
    reader(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>), false);
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline && !cancel.load(Ordering::SeqCst) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                kill_group();
                let _ = child.wait();
                return Err(if cancel.load(Ordering::SeqCst) {
                    "the check was interrupted".to_owned()
                } else {
                    format!("it did not finish within {} s", timeout.as_secs())
                });
            }
        }
    };
    // What it left running goes too (its output would never end otherwise); a process that left
    // the group may still hold the pipes, so the output is awaited for a moment only.
    kill_group();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok((true, text)) => stdout = text,
            Ok((false, text)) => stderr = text,
            Err(_) => break,
        }
    }
    Ok(PythonRun { success: status.success(), stdout, stderr })
}

/// The last non-empty line of `text`, shortened to a message's length.
fn last_line(text: &str) -> String {
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let short: String = line.chars().take(300).collect();
    if short.len() < line.len() { format!("{short}...") } else { short }
}

/// Checks that `python` can run Dask.
///
/// # Errors
/// [`LauncherError::NoDask`] saying how to install it.
pub fn probe_python(python: &OsString, cancel: &AtomicBool) -> Result<PythonInfo, LauncherError> {
    // Python runs from `/` (never from a directory another user may have planted modules in), so
    // a relative path such as `target/dask-venv/bin/python` is made absolute here, against the
    // directory the user typed it in; a bare name is looked up in PATH as before.
    let absolute = std::path::Path::new(python);
    let python = &if absolute.is_relative() && absolute.components().count() > 1 {
        std::path::absolute(absolute).map_or_else(|_| python.clone(), std::path::PathBuf::into_os_string)
    } else {
        python.clone()
    };
    // From the installed packages' metadata, without importing Dask (about 0.4 s of a cluster's
    // start on a 2-core machine).
    let script = "import importlib.util, importlib.metadata as m; \
                  assert importlib.util.find_spec('dask') and importlib.util.find_spec('distributed'), \
                  'No module named distributed'; print(m.version('distributed')); \
                  print(importlib.util.find_spec('dask_cuda') is not None); \
                  print(importlib.util.find_spec('distributed_ucxx') is not None); \
                  print(any(e.name == 'gpucluster' for e in m.entry_points(group='distributed.comm.backends'))); \
                  print(importlib.util.find_spec('bokeh') is not None)";
    let how = format!(
        "install it with `{0} -m pip install \"dask[distributed]\"` (and `dask-cuda` for GPU workers), \
         or pass --python with an interpreter that has it",
        python.to_string_lossy()
    );
    let fail = |detail: String| LauncherError::NoDask { python: python.clone(), detail, how: how.clone() };
    let run = run_python(python, script, &[], PYTHON_TIMEOUT, cancel).map_err(|detail| {
        // An interpreter that cannot be run at all cannot install anything: say what to give.
        if detail.starts_with(CANNOT_RUN) {
            LauncherError::NoDask {
                python: python.clone(),
                detail,
                how: "pass --python (or GPUCLUSTER_PYTHON) an interpreter that exists and has Dask, such as python3"
                    .into(),
            }
        } else {
            fail(detail)
        }
    })?;
    if !run.success {
        return Err(fail(format!("Dask is not installed for it ({})", last_line(&run.stderr))));
    }
    let mut lines = run.stdout.lines().map(str::trim);
    let version = lines.next().unwrap_or("");
    // A version is short and printable: anything else is not distributed answering.
    if version.is_empty() || version.len() > 64 || !version.chars().all(|c| c.is_ascii_graphic()) {
        return Err(fail("it does not report a version of distributed".into()));
    }
    Ok(PythonInfo {
        python: python.clone(),
        distributed: version.to_owned(),
        dask_cuda: lines.next() == Some("True"),
        ucxx: lines.next() == Some("True"),
        gpucluster: lines.next() == Some("True"),
        bokeh: lines.next() == Some("True"),
    })
}

/// Checks that the scheduler at `address` completes Dask's own handshake (over TLS with `tls`),
/// which a port that accepts connections but is not a scheduler, or a scheduler that does not
/// speak, never does.
///
/// # Errors
/// [`LauncherError::SchedulerUnreachable`] with Dask's reason.
pub fn check_handshake(
    python: &OsString,
    address: &str,
    tls: Option<&TlsFiles>,
    cancel: &AtomicBool,
) -> Result<(), LauncherError> {
    let script = "import asyncio, sys\n\
                  from distributed import Security\n\
                  from distributed.comm import connect\n\
                  addr, ca, cert, key = sys.argv[1:5]\n\
                  sec = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True) if ca else Security()\n\
                  async def main():\n    \
                      comm = await connect(addr, timeout=5, **sec.get_connection_args('client'))\n    \
                      await comm.close()\n\
                  asyncio.run(asyncio.wait_for(main(), 10))\n";
    let path = |p: Option<&PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
    let (ca, cert, key) = (path(tls.map(|t| &t.ca)), path(tls.map(|t| &t.cert)), path(tls.map(|t| &t.key)));
    let unreachable = |reason: String| LauncherError::SchedulerUnreachable { address: address.to_owned(), reason };
    let run = run_python(python, script, &[address, &ca, &cert, &key], PYTHON_TIMEOUT, cancel)
        .map_err(|e| unreachable(format!("checking it with Python: {e}")))?;
    if !run.success {
        return Err(unreachable(format!("no Dask handshake: {}", last_line(&run.stderr))));
    }
    Ok(())
}

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

/// Checks that only this user can change what `path` holds: the file (and a link to it) is ours
/// and closed to other writers, and its directory is ours or root's and either closed to other
/// writers or sticky (so nobody else can replace our file in it). The error says what is wrong,
/// to follow the file's name.
pub fn only_ours(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    let link = std::fs::symlink_metadata(path).map_err(|e| format!("cannot be read ({e})"))?;
    if link.file_type().is_symlink() && link.uid() != me {
        return Err(format!("is a link that belongs to user {}, not to you (user {me})", link.uid()));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot be read ({e})"))?;
    if meta.uid() != me {
        return Err(format!("belongs to user {}, not to you (user {me})", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("can be written by other users (mode {:o}; `chmod go-w` it)", meta.mode() & 0o777));
    }
    let dir = std::fs::canonicalize(path).ok().and_then(|p| p.parent().map(Path::to_path_buf));
    if let Some(dir) = dir {
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
    if host.is_empty() || port == 0 {
        return Err("has no host or port".into());
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

/// The TLS credentials of a cluster: a CA, and one certificate with its key that the
/// scheduler, the workers and the user's client all present (Dask checks the peer's certificate
/// against the CA in both directions, not its host name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate (`--tls-ca-file`).
    pub ca: PathBuf,
    /// The certificate (`--tls-cert`).
    pub cert: PathBuf,
    /// Its private key (`--tls-key`), mode 0600.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Makes a fresh CA (whose key is never written down) and a certificate for `hosts` (names
    /// or IP addresses) into `dir`.
    ///
    /// # Errors
    /// [`LauncherError::Tls`] if generation fails, [`LauncherError::PrivateDir`] if writing does.
    pub fn generate(dir: &PrivateDir, hosts: &[String]) -> Result<Self, LauncherError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose, SanType,
        };
        let tls = |e: rcgen::Error| LauncherError::Tls(e.to_string());
        let ca_key = KeyPair::generate().map_err(tls)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name.push(DnType::CommonName, "gpucluster dask local CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).map_err(tls)?;
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().map_err(tls)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        params.distinguished_name.push(DnType::CommonName, "gpucluster dask local");
        for host in hosts {
            let san = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.clone().try_into().map_err(tls)?),
            };
            params.subject_alt_names.push(san);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).map_err(tls)?;
        Ok(Self {
            ca: dir.write("ca.pem", ca_cert.pem().as_bytes())?,
            cert: dir.write("cert.pem", cert.pem().as_bytes())?,
            key: dir.write("key.pem", key.serialize_pem().as_bytes())?,
        })
    }

    /// The credentials `dask local` wrote beside `scheduler_file`, if all three are there.
    pub fn beside(scheduler_file: &Path) -> Option<Self> {
        let dir = scheduler_file.parent()?;
        let files = Self { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        (files.ca.is_file() && files.cert.is_file() && files.key.is_file()).then_some(files)
    }

    /// Checks that nobody else can change them: whoever could would choose whom our workers
    /// trust (a CA of theirs) and so run code as us.
    ///
    /// # Errors
    /// [`LauncherError::UntrustedCredentials`] naming the file and what is wrong with it.
    pub fn check(&self) -> Result<(), LauncherError> {
        for file in [&self.ca, &self.cert, &self.key] {
            only_ours(file).map_err(|why| {
                LauncherError::UntrustedCredentials(format!(
                    "{} {why}: whoever can change the cluster's credentials chooses whom your workers trust",
                    file.display()
                ))
            })?;
        }
        Ok(())
    }

    /// The Dask command-line flags that use them.
    pub fn args(&self) -> Vec<OsString> {
        vec![
            "--tls-ca-file".into(),
            self.ca.clone().into(),
            "--tls-cert".into(),
            self.cert.clone().into(),
            "--tls-key".into(),
            self.key.clone().into(),
        ]
    }

    /// Python that connects a client to the cluster of `scheduler_file` with these credentials.
    pub fn client_code(&self, scheduler_file: &Path) -> String {
        format!(
            "Client(scheduler_file={:?}, security=Security(tls_ca_file={:?}, tls_client_cert={:?}, \
             tls_client_key={:?}, require_encryption=True))",
            scheduler_file.display().to_string(),
            self.ca.display().to_string(),
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }
}

/// How workers find their scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedulerRef {
    /// A scheduler file of ours, written by the scheduler we start (`dask local`).
    File(PathBuf),
    /// An address read (and checked) once from someone's scheduler file: the workers get the
    /// address itself, so a file changed after the check, or before a restart, changes nothing.
    Address(String),
}

/// How to start the workers.
#[derive(Debug, Clone)]
pub struct DaskWorkers {
    /// The interpreter and what it has.
    pub python: PythonInfo,
    /// Where the workers find their scheduler.
    pub scheduler: SchedulerRef,
    /// The address workers listen on (`--host`), if not the default.
    pub host: Option<String>,
    /// Host memory per worker, bytes.
    pub host_memory_per_worker: Option<u64>,
    /// `--protocol` for the workers, where it must be set (else they follow the scheduler's).
    pub protocol: Option<Protocol>,
    /// Every pair of these workers is host-staged (MIG instances): the gpucluster comm is told
    /// so rather than finding out per connection.
    pub host_staged_only: bool,
    /// TLS credentials, where the scheduler speaks TLS.
    pub tls: Option<TlsFiles>,
    /// The devices are simulated: plain `dask worker`, and nothing that asks the driver about
    /// devices that do not exist (distributed's NVML diagnostics off, dask-cuda not used).
    pub simulated: bool,
    /// A private directory for the workers' files (spilled data, uploaded code, locks): never the
    /// shared `dask-scratch-space` of the temporary directory, which another user may own.
    pub local_directory: PathBuf,
    /// Further options for every worker, from after `--` on the command line: appended after
    /// ours, so that where Dask's CLI takes an option's last value, the user's wins.
    pub extra_args: Vec<OsString>,
}

impl DaskWorkers {
    /// Whether workers run `dask cuda worker`.
    pub fn uses_dask_cuda(&self) -> bool {
        self.python.dask_cuda && !self.simulated
    }

    /// Whether workers speak UCX: asked for, or joining a `ucx://` scheduler as it speaks.
    pub fn speaks_ucx(&self) -> bool {
        match (&self.protocol, &self.scheduler) {
            (Some(protocol), _) => *protocol == Protocol::Ucx,
            (None, SchedulerRef::Address(address)) => address.starts_with("ucx://") || address.starts_with("ucxx://"),
            (None, SchedulerRef::File(_)) => false,
        }
    }
}

/// The environment every Dask process of ours gets: its scratch space in our private directory,
/// and its HTTP server serving nothing (distributed's `--no-dashboard` still serves task names,
/// call stacks and worker logs to anyone who reaches the port).
fn private_env(local_directory: &Path) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("DASK_TEMPORARY_DIRECTORY".to_owned(), local_directory.display().to_string()),
        ("DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES".to_owned(), "[]".to_owned()),
        ("DASK_DISTRIBUTED__WORKER__HTTP__ROUTES".to_owned(), "[]".to_owned()),
    ])
}

/// What decides a Dask worker's device environment, beyond its plan's own (`WorkerPlan::env`).
#[derive(Debug, Clone, Copy)]
pub struct WorkerDeviceEnv {
    /// The kind of device it runs on.
    pub kind: cluster_core::WorkerKind,
    /// The devices are simulated.
    pub simulated: bool,
    /// Every pair of workers is host-staged (MIG instances): the comm need not try cuda-ipc.
    pub host_staged_only: bool,
    /// The worker speaks UCX.
    pub ucx: bool,
    /// Its device memory limit in bytes.
    pub device_memory_limit: Option<u64>,
}

/// The environment a Dask worker of ours gets for its device, the one definition that
/// `gpucluster dask local`/`dask worker` and the Python `gpucluster.dask.LocalCluster` share:
/// the device the gpucluster comm moves frames on (`GPUCLUSTER_DEVICE`), the path it takes,
/// distributed's NVML diagnostics off on simulated devices (nothing asks a driver about a device
/// that does not exist), the CUDA context UCX needs, and the device memory limit.
pub fn worker_device_env(facts: &WorkerDeviceEnv) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if facts.simulated {
        env.insert("DASK_DISTRIBUTED__DIAGNOSTICS__NVML".into(), "False".into());
        env.insert("GPUCLUSTER_SIMULATED".into(), "1".into());
    }
    // The device the gpucluster comm moves frames on (as the built-in worker's).
    let memory = if facts.simulated { DeviceKind::Simulated } else { DeviceKind::Cuda };
    let device = WorkerDevice::of(memory, facts.kind == cluster_core::WorkerKind::Mig);
    env.insert(WorkerDevice::ENV.into(), device.name().into());
    if facts.host_staged_only {
        env.insert("GPUCLUSTER_COMM_PATH".into(), "host-staged".into());
    }
    if facts.ucx && !facts.simulated {
        env.extend(ucx_env());
    }
    env.insert(
        "GPUCLUSTER_DEVICE_MEMORY_LIMIT".into(),
        facts.device_memory_limit.map(|b| b.to_string()).unwrap_or_default(),
    );
    env
}

/// What every process speaking UCX needs: a CUDA context made before UCX starts, or UCX does
/// not recognise device memory and a transfer of a CuPy array never completes (seen on the H100
/// with distributed-ucxx 0.52, which makes the context itself only when `UCX_TLS` names `cuda`
/// and does not exclude it). dask-cuda's `LocalCUDACluster` sets the same.
pub const UCX_CUDA_CONTEXT_ENV: [(&str, &str); 2] = [
    ("DASK_DISTRIBUTED_UCXX__CREATE_CUDA_CONTEXT", "True"),
    ("DASK_DISTRIBUTED__COMM__UCX__CREATE_CUDA_CONTEXT", "True"),
];

fn ucx_env() -> impl Iterator<Item = (String, String)> {
    UCX_CUDA_CONTEXT_ENV.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
}

/// Where the Dask HTTP servers listen: loopback, a free port (they serve nothing, see
/// [`private_env`]).
const HTTP_ADDRESS: &str = "127.0.0.1:0";

fn resources(w: &WorkerPlan) -> String {
    w.resources().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// One process per planned worker.
pub fn worker_specs(workers: &[WorkerPlan], config: &DaskWorkers) -> Vec<ProcessSpec> {
    workers
        .iter()
        .map(|w| {
            // The CLI entry points directly: `python -m dask` imports every CLI plugin first.
            let mut args: Vec<OsString> = vec!["-c".into()];
            let dask_cuda = config.uses_dask_cuda();
            let forks = !config.speaks_ucx();
            if dask_cuda {
                args.push(cli_entry("dask_cuda.cli", "worker", "dask-cuda-worker").into());
            } else {
                args.push(cli_entry("distributed.cli.dask_worker", "main", "dask-worker").into());
            }
            match &config.scheduler {
                SchedulerRef::File(file) => args.extend(["--scheduler-file".into(), file.clone().into_os_string()]),
                SchedulerRef::Address(address) => args.push(address.into()),
            }
            args.extend(["--name".into(), w.name.clone().into(), "--nthreads".into(), "1".into()]);
            args.extend(["--resources".into(), resources(w).into(), "--no-dashboard".into()]);
            args.extend(["--dashboard-address".into(), HTTP_ADDRESS.into()]);
            args.extend(["--local-directory".into(), config.local_directory.clone().into()]);
            args.extend(["--death-timeout".into(), DEATH_TIMEOUT_SECONDS.to_string().into()]);
            if let Some(bytes) = config.host_memory_per_worker {
                args.extend(["--memory-limit".into(), bytes.to_string().into()]);
            }
            // The nanny forks its worker instead of spawning a fresh interpreter that imports
            // Dask (and dask-cuda, pandas, ...) all over again: that halves start-up. The nanny
            // never touches CUDA (dask-cuda reads the device through NVML), so forking is safe,
            // except over UCX: the nanny has set UCX up to listen, and UCX does not survive a
            // fork (the forked worker never starts; seen on the H100 with distributed-ucxx 0.52).
            let method = if forks { "fork" } else { "spawn" };
            if dask_cuda {
                let limit = w.device_memory_limit_bytes.map_or_else(|| "0".to_owned(), |b| b.to_string());
                args.extend(["--device-memory-limit".into(), limit.into()]);
                args.extend(["--multiprocessing-method".into(), method.into()]);
            } else {
                args.extend(["--nworkers".into(), "1".into()]);
            }
            if let Some(host) = &config.host {
                args.extend(["--host".into(), host.clone().into()]);
            }
            if let Some(protocol) = config.protocol {
                args.extend(["--protocol".into(), protocol.scheme().into()]);
            }
            if let Some(tls) = &config.tls {
                args.extend(tls.args());
            }
            args.extend(config.extra_args.iter().cloned());
            let mut env: BTreeMap<String, String> = w.env();
            env.extend(private_env(&config.local_directory));
            env.extend(worker_device_env(&WorkerDeviceEnv {
                kind: w.kind,
                simulated: config.simulated,
                host_staged_only: config.host_staged_only,
                ucx: config.speaks_ucx(),
                device_memory_limit: w.device_memory_limit_bytes,
            }));
            env.insert("DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD".into(), method.into());
            ProcessSpec {
                name: w.name.clone(),
                program: config.python.python.clone(),
                args,
                env,
                cpu_affinity: w.cpu_affinity.clone(),
                essential: false,
                cwd: Some(config.local_directory.clone()),
            }
        })
        .collect()
}

/// Python that runs a Dask CLI command with the arguments after `-c CODE`. `python -m dask`
/// would import every installed CLI plugin (dask-cuda's among them, about 2 s on the H100 machine)
/// before starting even a scheduler.
fn cli_entry(module: &str, function: &str, program: &str) -> String {
    format!("{NO_CWD_IMPORTS}sys.argv[0] = '{program}'; from {module} import {function}; sys.exit({function}())")
}

/// The start of every `python -c` of ours. `-c` puts the working directory first on
/// `sys.path`, so a `dask.py` that another user left in a shared directory we were started from
/// would run as us; this takes it off before anything is imported (Python's `-P` does the same,
/// from 3.11 only). The processes also run in our private directory.
const NO_CWD_IMPORTS: &str = "import sys; sys.path[:] = [p for p in sys.path if p]; ";

/// The scheduler of `dask local`.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig<'a> {
    /// The Python that runs it.
    pub python: &'a PythonInfo,
    /// The scheduler file it writes.
    pub scheduler_file: &'a Path,
    /// Where it listens (default 127.0.0.1).
    pub host: Option<&'a str>,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its TLS credentials, where it speaks TLS.
    pub tls: Option<&'a TlsFiles>,
    /// Its files' directory (and its working directory).
    pub local_directory: &'a Path,
    /// Where its dashboard listens (`HOST:PORT`, `:PORT`), where one was asked for: then its HTTP
    /// server serves distributed's routes; without, it serves nothing.
    pub dashboard: Option<&'a str>,
    /// A preload file (`--preload`): [`SCHEDULER_PRELOAD`], written as [`SCHEDULER_PRELOAD_FILE`].
    pub preload: Option<&'a Path>,
}

/// Where the dashboard listens: a bare port (`8787`, `:8787`, as Dask users write it) on the
/// scheduler's host (127.0.0.1 unless `--host` says otherwise), not on every interface, which is
/// what Dask makes of it; `HOST:PORT` as given.
pub fn dashboard_address(address: &str, host: Option<&str>) -> String {
    let port = address.strip_prefix(':').unwrap_or(address);
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        let host = host.unwrap_or("127.0.0.1");
        if host.contains(':') && !host.starts_with('[') {
            return format!("[{host}]:{port}");
        }
        return format!("{host}:{port}");
    }
    address.to_owned()
}

/// The scheduler process of `dask local`.
pub fn scheduler_spec(config: &SchedulerConfig<'_>) -> ProcessSpec {
    let mut args: Vec<OsString> =
        vec!["-c".into(), cli_entry("distributed.cli.dask_scheduler", "main", "dask-scheduler").into()];
    args.extend(["--scheduler-file".into(), config.scheduler_file.as_os_str().to_owned()]);
    let mut env = private_env(config.local_directory);
    match config.dashboard {
        Some(address) => {
            let address = dashboard_address(address, config.host);
            args.extend(["--dashboard".into(), "--dashboard-address".into(), address.into()]);
            env.remove("DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES");
        }
        None => args.extend(["--no-dashboard".into(), "--dashboard-address".into(), HTTP_ADDRESS.into()]),
    }
    args.extend(["--host".into(), config.host.unwrap_or("127.0.0.1").into(), "--port".into(), "0".into()]);
    args.extend(["--protocol".into(), config.protocol.scheme().into()]);
    if let Some(tls) = config.tls {
        args.extend(tls.args());
    }
    if let Some(preload) = config.preload {
        args.extend(["--preload".into(), preload.as_os_str().to_owned()]);
    }
    if config.protocol == Protocol::Ucx {
        env.extend(ucx_env());
    }
    ProcessSpec {
        name: "scheduler".into(),
        program: config.python.python.clone(),
        args,
        env,
        cpu_affinity: None,
        essential: true,
        cwd: Some(config.local_directory.to_owned()),
    }
}

/// The scheduler preload of `dask local` (a file in its private directory, given with
/// `--preload`): when the scheduler closes, it first removes its workers, which then close with
/// their nannies while the scheduler still answers them, and waits (5 s at most) for their
/// connections to go. Without it, every worker is signalled at once and a worker's heartbeat in
/// flight fails with a traceback as it closes (seen with 56 workers on the H100 host).
pub const SCHEDULER_PRELOAD: &str = r#""""gpucluster dask local: the scheduler closes its workers before it goes."""
import asyncio
import time

from distributed.diagnostics.plugin import SchedulerPlugin


class GpuclusterWorkersFirst(SchedulerPlugin):
    name = "gpucluster-workers-first"

    def __init__(self, scheduler):
        self.scheduler = scheduler

    async def before_close(self):
        s = self.scheduler
        workers = list(s.workers)
        if not workers:
            return
        stimulus_id = f"gpucluster-stop-{time.time()}"
        await asyncio.gather(
            *(s.remove_worker(w, stimulus_id=stimulus_id, close=True) for w in workers), return_exceptions=True
        )
        # The workers' connections close as they go; the clients' stay: wait until the number
        # of connections no longer falls (or none is left), 5 s at most.
        deadline = time.monotonic() + 5
        last, still = len(s._comms), 0.0
        while last and time.monotonic() < deadline and still < 0.3:
            await asyncio.sleep(0.05)
            now = len(s._comms)
            still = still + 0.05 if now >= last else 0.0
            last = now


def dask_setup(scheduler):
    scheduler.add_plugin(GpuclusterWorkersFirst(scheduler))
"#;

/// The name of [`SCHEDULER_PRELOAD`]'s file in the launcher's private directory.
pub const SCHEDULER_PRELOAD_FILE: &str = "gpucluster_workers_first.py";

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

/// This host's memory, from `/proc/meminfo`.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
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
    fn only_files_nobody_else_can_change_are_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = PrivateDir::create("gpucluster-test").expect("dir");
        let mine = dir.write("mine.pem", b"x").expect("write");
        only_ours(&mine).expect("a file of ours in a private directory");
        // A sticky, world-writable directory (like /tmp): others cannot replace our file there.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        std::fs::write(shared.join("f"), "x").expect("write");
        only_ours(&shared.join("f")).expect("sticky");
        // Without the sticky bit, they could.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(only_ours(&shared.join("f")).expect_err("replaceable").contains("another user can change"));
        // SAFETY: getuid cannot fail.
        if unsafe { libc::getuid() } == 0 {
            // A link of another user's pointing at our file, and a directory of another user's.
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
            let link = shared.join("link");
            std::os::unix::fs::symlink(&mine, &link).expect("link");
            std::os::unix::fs::lchown(&link, Some(65534), None).expect("lchown");
            assert!(only_ours(&link).expect_err("foreign link").contains("is a link that belongs to user 65534"));
            std::os::unix::fs::chown(&shared, Some(65534), None).expect("chown");
            assert!(only_ours(&shared.join("f")).expect_err("foreign dir").contains("another user can change"));
        }
        let tls = TlsFiles::generate(&dir, &["127.0.0.1".into()]).expect("generate");
        tls.check().expect("ours");
        std::fs::set_permissions(&tls.ca, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(matches!(tls.check(), Err(LauncherError::UntrustedCredentials(_))));
    }

    /// The plan of the simulated A30 (4 MIG instances) and workers for it on simulated devices,
    /// with a Python that has dask-cuda or not.
    fn a30_workers(dask_cuda: bool) -> (cluster_core::Plan, DaskWorkers) {
        let spec: gpu_topology::TopologySpec = "sim:a30".parse().expect("spec");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        let snapshot = rt.block_on(spec.open().expect("open").snapshot()).expect("snapshot");
        let plan = cluster_core::plan(&snapshot, &cluster_core::PlanRequest::default()).expect("plan");
        let config = DaskWorkers {
            python: PythonInfo {
                python: "python3".into(),
                distributed: "x".into(),
                dask_cuda,
                ucxx: false,
                gpucluster: false,
                bokeh: false,
            },
            scheduler: SchedulerRef::File("s.json".into()),
            host: None,
            host_memory_per_worker: None,
            protocol: None,
            host_staged_only: false,
            tls: None,
            simulated: true,
            local_directory: "/private/dir".into(),
            extra_args: Vec::new(),
        };
        (plan, config)
    }

    #[test]
    fn joining_workers_get_the_checked_address_not_the_file() {
        let (plan, mut config) = a30_workers(false);
        config.scheduler = SchedulerRef::Address("tls://10.0.0.1:8786".into());
        for spec in worker_specs(&plan.workers, &config) {
            let args: Vec<String> = spec.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            assert!(args.contains(&"tls://10.0.0.1:8786".to_owned()) && !args.contains(&"--scheduler-file".to_owned()));
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

    #[test]
    fn tls_credentials_are_private_and_found_beside_the_scheduler_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = PrivateDir::create("gpucluster-test").expect("dir");
        let tls = TlsFiles::generate(&dir, &["127.0.0.1".into(), "localhost".into()]).expect("generate");
        for f in [&tls.ca, &tls.cert, &tls.key] {
            let mode = std::fs::metadata(f).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        let key = std::fs::read_to_string(&tls.key).expect("key");
        assert!(key.contains("PRIVATE KEY"));
        let ca = std::fs::read_to_string(&tls.ca).expect("ca");
        assert!(ca.contains("BEGIN CERTIFICATE") && !ca.contains("PRIVATE"), "the CA's key is never written");
        assert_eq!(TlsFiles::beside(&dir.path().join("scheduler.json")), Some(tls.clone()));
        assert!(tls.client_code(&dir.path().join("scheduler.json")).contains("require_encryption=True"));
    }

    #[test]
    fn simulated_devices_never_meet_the_driver() {
        let (plan, config) = a30_workers(true);
        assert!(!config.uses_dask_cuda());
        let specs = worker_specs(&plan.workers, &config);
        for spec in &specs {
            let code = spec.args[1].to_string_lossy().into_owned();
            assert!(code.contains("distributed.cli.dask_worker"), "plain dask worker: {code}");
            assert_eq!(spec.env.get("DASK_DISTRIBUTED__DIAGNOSTICS__NVML").map(String::as_str), Some("False"));
            // Never the shared scratch space, and no HTTP routes for strangers.
            assert_eq!(spec.env.get("DASK_TEMPORARY_DIRECTORY").map(String::as_str), Some("/private/dir"));
            assert_eq!(spec.env.get("DASK_DISTRIBUTED__WORKER__HTTP__ROUTES").map(String::as_str), Some("[]"));
            let args: Vec<String> = spec.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            assert!(args.windows(2).any(|w| w == ["--local-directory", "/private/dir"]), "{args:?}");
        }
        let real = DaskWorkers { simulated: false, ..config };
        assert!(real.uses_dask_cuda());
        assert!(worker_specs(&plan.workers, &real)[0].args[1].to_string_lossy().contains("dask_cuda"));
    }

    #[test]
    fn options_after_the_separator_reach_every_worker_last() {
        let (plan, mut config) = a30_workers(true);
        config.extra_args = vec!["--nthreads".into(), "4".into(), "--lifetime".into(), "1h".into()];
        for spec in worker_specs(&plan.workers, &config) {
            let args: Vec<String> = spec.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            assert_eq!(&args[args.len() - 4..], ["--nthreads", "4", "--lifetime", "1h"], "{args:?}");
            // Ours come first: Dask's CLI keeps an option's last value, so the user's wins.
            let ours = args.iter().position(|a| a == "--nthreads").expect("ours");
            assert!(ours < args.len() - 4, "{args:?}");
        }
    }

    #[test]
    fn nannies_fork_their_worker_except_over_ucx() {
        let (plan, config) = a30_workers(false);
        let method = |config: &DaskWorkers| {
            let spec = &worker_specs(&plan.workers, config)[0];
            let args: Vec<String> = spec.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            let flag = args.windows(2).find(|w| w[0] == "--multiprocessing-method").map(|w| w[1].clone());
            let env = spec.env.get("DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD").cloned();
            assert_eq!(flag.as_ref().or(env.as_ref()), env.as_ref(), "the flag and the environment agree");
            env.unwrap_or_default()
        };
        assert_eq!(method(&config), "fork", "start-up halves when the nanny forks");
        // UCX, set up by the nanny to listen, does not survive a fork: the worker never started.
        let ucx = DaskWorkers { protocol: Some(Protocol::Ucx), ..config.clone() };
        assert_eq!(method(&ucx), "spawn");
        let joins_ucx =
            DaskWorkers { protocol: None, scheduler: SchedulerRef::Address("ucx://10.0.0.1:8786".into()), ..config };
        assert_eq!(method(&joins_ucx), "spawn");
    }

    #[test]
    fn the_scheduler_serves_a_dashboard_only_when_asked() {
        let (_, config) = a30_workers(false);
        let dir = Path::new("/tmp/x");
        let file = dir.join("s.json");
        let quiet = SchedulerConfig {
            python: &config.python,
            scheduler_file: &file,
            host: None,
            protocol: Protocol::Tcp,
            tls: None,
            local_directory: dir,
            dashboard: None,
            preload: None,
        };
        let args = |spec: &ProcessSpec| spec.args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>();
        let spec = scheduler_spec(&quiet);
        assert!(args(&spec).contains(&"--no-dashboard".to_owned()));
        assert_eq!(spec.env.get("DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES").map(String::as_str), Some("[]"));
        let spec = scheduler_spec(&SchedulerConfig { dashboard: Some(":8787"), ..quiet });
        let a = args(&spec);
        // A bare port is this host's, not every interface's (as Dask would take it).
        assert!(a.windows(3).any(|w| w == ["--dashboard", "--dashboard-address", "127.0.0.1:8787"]), "{a:?}");
        assert_eq!(dashboard_address("8787", Some("::1")), "[::1]:8787");
        assert_eq!(dashboard_address(":8787", Some("10.0.0.2")), "10.0.0.2:8787");
        assert_eq!(dashboard_address("0.0.0.0:8787", None), "0.0.0.0:8787");
        assert!(!a.contains(&"--no-dashboard".to_owned()));
        assert!(!spec.env.contains_key("DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"), "distributed's routes served");
        let f = std::env::temp_dir().join(format!("gpucluster-dashboard-{}.json", std::process::id()));
        std::fs::write(&f, r#"{"address": "tcp://127.0.0.1:1", "services": {"dashboard": 8787}}"#).expect("write");
        assert_eq!(dashboard_url(&f).as_deref(), Some("http://127.0.0.1:8787/status"));
        std::fs::write(&f, r#"{"address": "tcp://127.0.0.1:1", "services": {}}"#).expect("write");
        assert_eq!(dashboard_url(&f), None);
        let _ = std::fs::remove_file(&f);
    }

    #[test]
    fn every_process_speaking_ucx_makes_its_cuda_context_first() {
        // Without it, distributed-ucxx starts UCX before CUDA when UCX_TLS is unset or excludes
        // cuda_ipc, and device memory is not recognised.
        let (plan, config) = a30_workers(false);
        let config = DaskWorkers { simulated: false, ..config };
        let key = UCX_CUDA_CONTEXT_ENV[0].0;
        assert!(!worker_specs(&plan.workers, &config)[0].env.contains_key(key), "only over UCX");
        let ucx = DaskWorkers { protocol: Some(Protocol::Ucx), ..config.clone() };
        for spec in worker_specs(&plan.workers, &ucx) {
            assert_eq!(spec.env.get(key).map(String::as_str), Some("True"), "{}", spec.name);
        }
        let python = config.python.clone();
        let dir = Path::new("/tmp/x");
        let file = dir.join("s.json");
        let config = SchedulerConfig {
            python: &python,
            scheduler_file: &file,
            host: None,
            protocol: Protocol::Ucx,
            tls: None,
            local_directory: dir,
            dashboard: None,
            preload: None,
        };
        let scheduler = scheduler_spec(&config);
        assert_eq!(scheduler.env.get(key).map(String::as_str), Some("True"));
        let tcp = scheduler_spec(&SchedulerConfig { protocol: Protocol::Tcp, ..config });
        assert!(!tcp.env.contains_key(key));
        // Simulated devices have no CUDA to make a context on.
        let simulated = DaskWorkers { simulated: true, ..ucx };
        assert!(!worker_specs(&plan.workers, &simulated)[0].env.contains_key(key));
    }

    #[test]
    fn the_protocol_follows_what_is_installed_and_how_closed_the_cluster_is() {
        use ProtocolRequest::*;
        let mut python = PythonInfo {
            python: "python3".into(),
            distributed: "x".into(),
            dask_cuda: true,
            ucxx: true,
            gpucluster: false,
            bokeh: false,
        };
        let facts =
            |nvlink, workers, secure| ProtocolFacts { all_pairs_nvlink: nvlink, workers, secure, encrypted: false };
        let auto = |f, p: &PythonInfo| choose_protocol(Auto, f, p).expect("auto").0;
        assert_eq!(auto(facts(true, 8, false), &python), Protocol::Ucx);
        assert_eq!(auto(facts(false, 8, false), &python), Protocol::Tcp);
        assert_eq!(auto(facts(true, 1, false), &python), Protocol::Tcp);
        assert_eq!(auto(facts(true, 8, true), &python), Protocol::Tls, "UCX cannot authenticate peers");
        assert_eq!(auto(facts(false, 8, true), &python), Protocol::Tls);
        python.gpucluster = true;
        assert_eq!(auto(facts(false, 8, true), &python), Protocol::Gpucluster);
        assert_eq!(auto(facts(true, 8, false), &python), Protocol::Gpucluster);
        assert_eq!(auto(facts(false, 1, true), &python), Protocol::Tls, "one worker moves no device frames");
        // Joining a TLS scheduler: Dask refuses unencrypted comms there, ours included.
        let tls_scheduler = ProtocolFacts { encrypted: true, ..facts(false, 8, true) };
        assert_eq!(auto(tls_scheduler, &python), Protocol::Tls);
        let err = choose_protocol(Gpucluster, tls_scheduler, &python).expect_err("not encrypted");
        assert!(err.to_string().contains("--protocol tcp"), "{err}");
        // Requests: met where they can be, refused with the reason where they cannot.
        assert_eq!(choose_protocol(Tcp, facts(false, 8, true), &python).expect("tcp").0, Protocol::Tls);
        assert_eq!(choose_protocol(Tcp, facts(false, 8, false), &python).expect("tcp").0, Protocol::Tcp);
        let err = choose_protocol(Ucx, facts(false, 8, true), &python).expect_err("insecure");
        assert!(err.to_string().contains("--insecure"), "{err}");
        assert_eq!(choose_protocol(Ucx, facts(false, 8, false), &python).expect("ucx").0, Protocol::Ucx);
        python.gpucluster = false;
        python.ucxx = false;
        assert!(choose_protocol(Gpucluster, facts(false, 8, true), &python).is_err());
        assert!(choose_protocol(Ucx, facts(false, 8, false), &python).is_err());
        let (protocol, why) = choose_protocol(Auto, facts(true, 8, false), &python).expect("auto");
        assert_eq!(protocol, Protocol::Tcp);
        assert!(why.contains("distributed-ucxx"), "{why}");
    }

    #[test]
    fn a_python_that_hangs_or_floods_is_bounded() {
        let started = std::time::Instant::now();
        let never = AtomicBool::new(false);
        let err = run_python(&"python3".into(), "import time; time.sleep(60)", &[], Duration::from_millis(500), &never)
            .expect_err("hangs");
        assert!(err.contains("did not finish within"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let run = run_python(&"python3".into(), "print('x' * 50_000_000)", &[], Duration::from_secs(30), &never)
            .expect("runs");
        assert_eq!(run.stdout.len() as u64, PYTHON_OUTPUT, "only the first 64 KiB are kept");
        // A child left behind holding the output: the check still ends, and takes it along.
        let started = std::time::Instant::now();
        let script = "import subprocess; subprocess.Popen(['sleep', '31.7']); print('2026.8.0')";
        let run = run_python(&"python3".into(), script, &[], Duration::from_secs(30), &never).expect("runs");
        assert_eq!(run.stdout.trim(), "2026.8.0");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        let left = std::process::Command::new("pgrep").args(["-f", "sleep 31.7"]).output().expect("pgrep");
        assert!(left.stdout.is_empty(), "the check's child was left running");
        assert!(last_line(&"y".repeat(10_000)).len() < 400);
    }

    #[test]
    fn a_missing_python_or_dask_says_how_to_install() {
        // No interpreter: installing into it cannot help; another one must be given.
        let err = probe_python(&"/nonexistent/python3".into(), &AtomicBool::new(false)).expect_err("no python");
        assert!(err.to_string().contains("an interpreter that exists"), "{err}");
        assert!(!err.to_string().contains("pip install"), "{err}");
        let err = probe_python(&"false".into(), &AtomicBool::new(false)).expect_err("no dask");
        assert!(err.to_string().contains("Dask is not installed"), "{err}");
        assert!(err.to_string().contains("pip install"), "{err}");
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
