//! A cluster spec brought up on this host: its TLS credentials made where the spec says so, the
//! scheduler's plugins written where its Python lacks the package, its processes rendered
//! ([`super::command`]) with their files in a private directory ([`prepare`]), and a sink that
//! says when every worker has registered with the scheduler ([`Registrations`]).
//!
//! `gpucluster dask local|worker` and `bench dask` start their clusters through it and run the
//! processes with [`crate::supervise`]. It decides nothing about the cluster (the spec has) and
//! prints nothing itself.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use cluster_core::wording::{Message, Setting};

use super::command::{self, Processes};
use super::python::Interpreter;
use super::spec::{ClusterSpec, SCHEDULER_PLUGINS_FILE, TlsPlan};
use super::tls::TlsFiles;
use crate::workdir::PrivateDir;
use crate::{LauncherError, ProcessSpec};

/// A cluster ready to start.
#[derive(Debug)]
pub struct Session {
    /// Its processes, the scheduler (if the spec has one) first.
    pub processes: Vec<ProcessSpec>,
    /// The scheduler file the local scheduler writes (in the private directory); `None` for
    /// workers that join someone else's scheduler.
    pub scheduler_file: Option<PathBuf>,
    /// The TLS credentials its processes present, if it speaks TLS.
    pub tls: Option<TlsFiles>,
}

/// The scheduler plugins of the package (`gpucluster/scheduler.py`), for a scheduler whose
/// Python lacks the package: written into the private directory as [`SCHEDULER_PLUGINS_FILE`]
/// and preloaded from there.
pub const SCHEDULER_PLUGINS_SOURCE: &str = include_str!("../../../gpucluster-py/python/gpucluster/scheduler.py");

/// The name of the scheduler file in the private directory.
pub const SCHEDULER_FILE: &str = "scheduler.json";

/// Makes what `spec` needs in `dir` (fresh TLS credentials where the spec says to make them,
/// the scheduler's plugins where its Python lacks the package) and renders its processes, with
/// `given` as the credentials where the spec uses the user's and `worker_options` after every
/// worker's own.
///
/// # Errors
/// [`LauncherError::Tls`] or [`LauncherError::PrivateDir`] if the credentials or the plugins'
/// file cannot be made.
pub fn prepare(
    spec: &ClusterSpec,
    python: &Interpreter,
    dir: &PrivateDir,
    given: Option<TlsFiles>,
    worker_options: &[OsString],
) -> Result<Session, LauncherError> {
    let tls = match &spec.tls {
        TlsPlan::Generate { hosts } => Some(TlsFiles::generate(dir, hosts)?),
        TlsPlan::Given => given,
        TlsPlan::None => None,
    };
    let scheduler_file = dir.path().join(SCHEDULER_FILE);
    // The scheduler's plugins, where the spec preloads them from a file (its Python lacks the
    // package): the package's own text.
    let from_file = spec.scheduler.iter().flat_map(|s| &s.preload).any(|p| p.ends_with(SCHEDULER_PLUGINS_FILE));
    if from_file {
        dir.write(SCHEDULER_PLUGINS_FILE, SCHEDULER_PLUGINS_SOURCE.as_bytes())?;
    }
    let processes = command::processes(
        spec,
        &Processes {
            python: &python.program,
            facts: &python.facts,
            scheduler_file: &scheduler_file,
            local_directory: dir.path(),
            tls: tls.as_ref(),
            worker_options,
        },
    );
    Ok(Session { processes, scheduler_file: spec.scheduler.as_ref().map(|_| scheduler_file), tls })
}

/// Checks that the addresses `spec`'s processes listen on are this machine's (the host, and the
/// dashboard's): each resolves, names no multicast or broadcast address, and can be bound here,
/// so that an address the processes could not listen on is said before anything starts, in the
/// setting's words, rather than in a scheduler's traceback or as workers that never connect.
///
/// # Errors
/// [`LauncherError::Request`] naming the setting and the address.
pub fn check_addresses(spec: &ClusterSpec) -> Result<(), LauncherError> {
    let hosts =
        spec.scheduler.iter().map(|s| s.host.as_str()).chain(spec.workers.iter().filter_map(|w| w.host.as_deref()));
    let mut seen = std::collections::BTreeSet::new();
    for host in hosts.filter(|h| seen.insert(h.to_owned())) {
        listens_here(host).map_err(|why| refusal(Setting::Host, host, &why))?;
    }
    if let Some(dashboard) = spec.scheduler.as_ref().and_then(|s| s.dashboard.as_deref())
        && let Some((host, _)) = dashboard.rsplit_once(':')
    {
        listens_here(host).map_err(|why| refusal(Setting::Dashboard, dashboard, &why))?;
    }
    Ok(())
}

fn refusal(setting: Setting, value: &str, why: &str) -> LauncherError {
    LauncherError::Request(Message::new().setting_to(setting, value).text(format!(": {why}")))
}

/// Whether a process of this machine can listen on `host` (a name, an IPv4 address, or an IPv6
/// one in brackets); the error says why not, and what to give instead.
fn listens_here(host: &str) -> Result<(), String> {
    use std::net::{IpAddr, ToSocketAddrs};
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let fix = "give an address or a name of this host";
    let addresses: Vec<IpAddr> =
        (bare, 0).to_socket_addrs().map_err(|e| format!("cannot be resolved ({e}); {fix}"))?.map(|a| a.ip()).collect();
    let Some(&first) = addresses.first() else { return Err(format!("resolves to no address; {fix}")) };
    for ip in &addresses {
        let v4 = match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        if ip.is_multicast() || v4.is_some_and(|v4| v4.is_multicast() || v4.is_broadcast()) {
            return Err(format!("{ip} is a multicast or broadcast address, on which no worker can connect; {fix}"));
        }
        if let (IpAddr::V6(_), Some(v4)) = (ip, v4) {
            // Dask listens with IPV6_V6ONLY, on which a mapped address cannot be bound.
            return Err(format!("{ip} is an IPv4 address written as IPv6, which Dask cannot listen on; give {v4}"));
        }
    }
    // Listening is what the processes will do: an address of another machine fails here too.
    std::net::TcpListener::bind((first, 0))
        .map(drop)
        .map_err(|e| format!("this machine cannot listen on {first} ({e}); {fix}"))
}

/// What to do once every worker has registered: given the sink's writer, to say so.
pub type OnReady = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send>;

/// A sink for the cluster's output that counts the workers registering with the scheduler (Dask
/// says `Registered to:` once for each) and calls [`OnReady`] once all `expected` have, before
/// passing everything on to `inner`.
pub struct Registrations<W> {
    inner: W,
    expected: usize,
    registered: usize,
    on_ready: Option<OnReady>,
}

impl<W> std::fmt::Debug for Registrations<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrations").field("expected", &self.expected).field("registered", &self.registered).finish()
    }
}

impl<W: Write> Registrations<W> {
    /// Counts towards `expected` workers, then calls `on_ready`.
    pub fn new(inner: W, expected: usize, on_ready: OnReady) -> Self {
        Self { inner, expected, registered: 0, on_ready: Some(on_ready) }
    }
}

impl<W: Write> Write for Registrations<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Counted before `inner` sees the bytes: it may leave Dask's INFO lines out.
        let registered = buf.windows(14).filter(|w| *w == b"Registered to:").count();
        self.inner.write_all(buf)?;
        if registered > 0 && self.registered < self.expected {
            self.registered += registered;
            if self.registered >= self.expected
                && let Some(on_ready) = self.on_ready.take()
            {
                on_ready(&mut self.inner)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn names_that_do_not_resolve_are_said_before_anything_starts() {
        let spec = |host: &str| ClusterSpec {
            protocol: None,
            protocol_reason: String::new(),
            tls: TlsPlan::None,
            simulated: true,
            dask_cuda: false,
            scheduler: None,
            join: Some("tcp://10.0.0.1:8786".into()),
            workers: vec![super::super::spec::WorkerSpec {
                name: "w".into(),
                host: Some(host.into()),
                env: Default::default(),
                dask_config: Default::default(),
                resources: Default::default(),
                threads: 1,
                memory_limit_bytes: None,
                device_memory_limit_bytes: None,
                spills_device_memory: false,
                rmm_pool_bytes: None,
                cpus: Vec::new(),
                http_address: "127.0.0.1:0".into(),
            }],
            notes: Vec::new(),
        };
        check_addresses(&spec("127.0.0.1")).expect("an address");
        check_addresses(&spec("[::1]")).expect("an IPv6 address in brackets");
        check_addresses(&spec("localhost")).expect("a name of this host");
        let err = check_addresses(&spec("nope.invalid")).expect_err("no such name");
        assert!(err.to_string().contains("--host nope.invalid: cannot be resolved"), "{err}");
        for (elsewhere, why) in [
            ("8.8.8.8", "this machine cannot listen on 8.8.8.8"),
            ("224.0.0.1", "multicast or broadcast"),
            ("255.255.255.255", "multicast or broadcast"),
            ("[::ffff:127.0.0.1]", "give 127.0.0.1"),
        ] {
            let err = check_addresses(&spec(elsewhere)).expect_err(elsewhere);
            assert!(err.to_string().contains(why), "{elsewhere}: {err}");
        }
    }

    #[test]
    fn ready_is_said_once_when_the_last_worker_registers() {
        let said = Arc::new(AtomicBool::new(false));
        let flag = said.clone();
        let mut sink = Registrations::new(
            Vec::new(),
            2,
            Box::new(move |out| {
                flag.store(true, Ordering::SeqCst);
                writeln!(out, "ready")
            }),
        );
        sink.write_all(b"... - INFO - Registered to: tcp://x\n").expect("write");
        assert!(!said.load(Ordering::SeqCst), "one of two");
        sink.write_all(b"... - INFO - Registered to: tcp://x\nRegistered to: again\n").expect("write");
        assert!(said.load(Ordering::SeqCst));
        let text = String::from_utf8(sink.inner).expect("utf-8");
        assert_eq!(text.matches("ready").count(), 1, "{text}");
        assert!(text.ends_with("again\nready\n"), "said after the line that completed it: {text}");
    }
}
