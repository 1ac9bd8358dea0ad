//! The rendezvous: how workers started by the launcher find each other.
//!
//! The launcher runs a [`RendezvousServer`] and gives each worker its address, the cluster's
//! secret, its rank and the world size in the environment (`GPUCLUSTER_RENDEZVOUS`,
//! `GPUCLUSTER_SECRET`, `GPUCLUSTER_RANK`, `GPUCLUSTER_WORLD_SIZE`). Each worker binds its own
//! listener, [`Rendezvous::join`]s with that address, and gets back every worker's address once
//! all have joined, with whatever the launcher attached (the planned path of each pair). Workers
//! may then send reports, which the launcher collects. Lines are JSON.
//!
//! The port is open to every user of the host, so nothing a stranger does may change the job:
//! - connections authenticate with the secret as the `tcp` path does, through the same gate
//!   (`gate.rs`): concurrently, without a thread per connection, at most
//!   [`Limits::max_handshakes`] at once (the oldest dropped past that), each within
//!   [`Limits::handshake_timeout`]; the join line must arrive within that deadline too;
//! - connections that fail are counted in [`RendezvousServer::refused`], never in
//!   [`RendezvousServer::errors`], which holds only what authenticated workers did wrong (a bad
//!   line, a rank outside the world, a rank that joined twice);
//! - every line has a size limit ([`Limits::max_line`]), and a line that stops half-way for
//!   [`Limits::stall_timeout`] is an error.
//!
//! [`RendezvousServer::abort`] answers every worker waiting in `join`, and every later one, with
//! [`TransportError::Aborted`] and the launcher's reason; dropping the server closes every
//! worker's connection.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::gate::{self, Admitted, Check, Gate, RefusalLog, Refusals, Workers};
use crate::secret::{Secret, authenticate_client};
use crate::socket::{self, Deadline};
use crate::{Address, TransportError};

/// What every worker learns once all have joined.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Table {
    /// Each rank's listening address.
    pub addresses: Vec<String>,
    /// What the launcher attached (for the built-in worker: the pairs to measure and their paths).
    pub extra: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct Join {
    rank: usize,
    address: String,
}

/// The server's one answer to a join.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Reply {
    Table(Table),
    Aborted(String),
    Refused(String),
}

/// How long and how much the server allows a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From connecting to a received join line: the secret's challenge and the line. Default 5 s.
    pub handshake_timeout: Duration,
    /// Connections held at once before they authenticate; past it, the oldest is dropped.
    /// Default 64.
    pub max_handshakes: usize,
    /// Bytes of one join or report line. Default 1 MiB.
    pub max_line: usize,
    /// How long a line may stop half-way. Default 30 s.
    pub stall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 64,
            max_line: 1 << 20,
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Authenticated worker connections served at once (each holds a thread while it is open).
const MAX_WORKER_CONNECTIONS: usize = 4096;
/// Largest table a worker accepts from the server.
const MAX_TABLE_LINE: usize = 64 << 20;
/// How long a worker's report may wait for the launcher to take it.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    addresses: Vec<Option<String>>,
    /// Ranks whose worker joined and has since closed its connection (it ended): a restarted
    /// worker may take its rank again.
    departed: Vec<bool>,
    reports: Vec<serde_json::Value>,
    errors: Vec<String>,
    aborted: Option<String>,
    closing: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    extra: serde_json::Value,
    limits: Limits,
}

/// The launcher's side.
#[derive(Debug)]
pub struct RendezvousServer {
    address: String,
    shared: Arc<Shared>,
    refusals: Arc<RefusalLog>,
    gate: Gate,
    workers: Workers,
}

fn lock(state: &Mutex<State>) -> Result<std::sync::MutexGuard<'_, State>, TransportError> {
    state.lock().map_err(|_| TransportError::poisoned())
}

impl RendezvousServer {
    /// Listens on `bind` (e.g. `127.0.0.1:0`) for `world` workers; `extra` goes to each of them.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn start(bind: &str, secret: Secret, world: usize, extra: serde_json::Value) -> Result<Self, TransportError> {
        Self::start_with(bind, secret, world, extra, Limits::default())
    }

    /// As [`RendezvousServer::start`], with other [`Limits`].
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn start_with(
        bind: &str,
        secret: Secret,
        world: usize,
        extra: serde_json::Value,
        limits: Limits,
    ) -> Result<Self, TransportError> {
        let listener = TcpListener::bind(bind).map_err(TransportError::io("bind rendezvous"))?;
        let address = listener.local_addr().map_err(TransportError::io("getsockname"))?.to_string();
        let shared = Arc::new(Shared {
            state: Mutex::new(State { addresses: vec![None; world], departed: vec![false; world], ..State::default() }),
            changed: Condvar::new(),
            extra,
            limits,
        });
        let refusals = Arc::new(RefusalLog::default());
        let workers = Workers::new(MAX_WORKER_CONNECTIONS);
        let admit = {
            let (shared, workers) = (shared.clone(), workers.clone());
            move |admitted: Admitted| {
                let shared = shared.clone();
                let watch = admitted.socket.try_clone().ok();
                workers.submit(
                    watch,
                    Box::new(move |_| {
                        let result = serve(TcpStream::from(admitted.socket), &shared, admitted.deadline);
                        if let Err(e) = result
                            && let Ok(mut s) = shared.state.lock()
                            && !s.closing
                        {
                            s.errors.push(e.to_string());
                        }
                    }),
                );
            }
        };
        let gate_limits = gate::Limits { timeout: limits.handshake_timeout, max_pending: limits.max_handshakes };
        let gate = Gate::start(listener.into(), Check::Tcp(secret), gate_limits, refusals.clone(), admit)?;
        Ok(Self { address, shared, refusals, gate, workers })
    }

    /// Where workers reach it (`host:port`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// How many workers have joined.
    pub fn joined(&self) -> usize {
        self.shared.state.lock().map(|s| s.addresses.iter().flatten().count()).unwrap_or(0)
    }

    /// The reports received so far.
    pub fn reports(&self) -> Vec<serde_json::Value> {
        self.shared.state.lock().map(|s| s.reports.clone()).unwrap_or_default()
    }

    /// What authenticated workers did wrong (a bad line, a rank outside the world, a rank that
    /// joined twice): errors of the job. Connections that never authenticated are not here but
    /// in [`RendezvousServer::refused`].
    pub fn errors(&self) -> Vec<String> {
        self.shared.state.lock().map(|s| s.errors.clone()).unwrap_or_default()
    }

    /// Connections turned away before they authenticated (a wrong secret, too slow, too many):
    /// to report, never an error of the job.
    pub fn refused(&self) -> Refusals {
        self.refusals.get()
    }

    /// Fails the job: every worker waiting in [`Rendezvous::join`], and every one that joins
    /// later, gets [`TransportError::Aborted`] with `reason` (the first reason given stays).
    pub fn abort(&self, reason: &str) {
        if let Ok(mut s) = self.shared.state.lock()
            && s.aborted.is_none()
        {
            s.aborted = Some(reason.to_owned());
        }
        self.shared.changed.notify_all();
    }
}

impl Drop for RendezvousServer {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.closing = true;
        }
        self.shared.changed.notify_all();
        self.gate.stop();
        // Shuts down every worker's connection, so each serving thread ends at once.
        self.workers.close(Duration::from_secs(2));
    }
}

/// Reads one line of at most `max` bytes. `idle`: a timeout before the line's first byte just
/// means nothing was sent yet (wait on); otherwise, and always once the line has begun, a
/// timeout is [`TransportError::Timeout`] of `stall`. `Ok(None)` at a clean end of stream.
fn read_line(
    reader: &mut BufReader<TcpStream>,
    max: usize,
    idle: bool,
    stall: Duration,
) -> Result<Option<String>, TransportError> {
    let mut line = Vec::new();
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if socket::is_timeout(&e) && idle && line.is_empty() => continue,
            Err(e) if socket::is_timeout(&e) => return Err(TransportError::Timeout(stall)),
            Err(e) => return Err(TransportError::io("read a line")(e)),
        };
        if available.is_empty() {
            if line.is_empty() {
                return Ok(None);
            }
            return Err(TransportError::PeerGone("the connection closed in the middle of a line".into()));
        }
        let (take, end) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if line.len() + take > max {
            return Err(TransportError::Protocol(format!("a line of more than {max} bytes")));
        }
        line.extend_from_slice(&available[..take]);
        reader.consume(if end { take + 1 } else { take });
        if end {
            return String::from_utf8(line)
                .map(Some)
                .map_err(|_| TransportError::Protocol("a line that is not UTF-8".into()));
        }
    }
}

fn send_line(stream: &mut TcpStream, value: &impl Serialize) -> Result<(), TransportError> {
    let mut text =
        serde_json::to_string(value).map_err(|e| TransportError::Internal(format!("encoding a message: {e}")))?;
    text.push('\n');
    stream.write_all(text.as_bytes()).map_err(TransportError::io("send a line"))
}

/// Serves one authenticated worker: its join, the table (or why not), then its reports.
fn serve(mut stream: TcpStream, shared: &Shared, deadline: Deadline) -> Result<(), TransportError> {
    let limits = shared.limits;
    deadline.arm(&stream)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(TransportError::io("dup socket"))?);
    let line = read_line(&mut reader, limits.max_line, false, limits.handshake_timeout)
        .map_err(|e| deadline.explain(e))?
        .ok_or_else(|| TransportError::PeerGone("a worker closed its connection before joining".into()))?;
    let join: Join =
        serde_json::from_str(&line).map_err(|e| TransportError::Protocol(format!("bad join line: {e}")))?;
    socket::set_timeouts(&stream, Some(limits.stall_timeout))?;
    let (reply, refused) = {
        let mut s = lock(&shared.state)?;
        let world = s.addresses.len();
        match s.addresses.get(join.rank) {
            _ if s.aborted.is_some() => (Reply::Aborted(s.aborted.clone().unwrap_or_default()), None),
            None => {
                let why = format!("rank {} is outside a world of {world}", join.rank);
                (Reply::Refused(why.clone()), Some(why))
            }
            Some(Some(_)) if !s.departed[join.rank] => {
                let why = format!("rank {} joined twice", join.rank);
                (Reply::Refused(why.clone()), Some(why))
            }
            // A first join, or a restarted worker taking the rank its ended predecessor held.
            Some(_) => {
                s.addresses[join.rank] = Some(join.address);
                s.departed[join.rank] = false;
                shared.changed.notify_all();
                while s.addresses.iter().any(Option::is_none) && s.aborted.is_none() && !s.closing {
                    s = shared.changed.wait(s).map_err(|_| TransportError::poisoned())?;
                }
                let reply = match (&s.aborted, s.closing) {
                    (Some(reason), _) => Reply::Aborted(reason.clone()),
                    (None, true) => Reply::Aborted("the launcher closed the rendezvous".into()),
                    (None, false) => Reply::Table(Table {
                        addresses: s.addresses.iter().flatten().cloned().collect(),
                        extra: shared.extra.clone(),
                    }),
                };
                (reply, None)
            }
        }
    };
    send_line(&mut stream, &reply)?;
    if let Some(why) = refused {
        return Err(TransportError::Refused(why));
    }
    if !matches!(reply, Reply::Table(_)) {
        return Ok(());
    }
    let reports = (|| {
        while let Some(line) = read_line(&mut reader, limits.max_line, true, limits.stall_timeout)? {
            let report: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| TransportError::Protocol(format!("bad report: {e}")))?;
            lock(&shared.state)?.reports.push(report);
        }
        Ok(())
    })();
    // However its connection ended, this worker is gone: its rank is free for a restart.
    lock(&shared.state)?.departed[join.rank] = true;
    reports
}

/// A worker's side.
#[derive(Debug)]
pub struct Rendezvous {
    stream: TcpStream,
}

impl Rendezvous {
    /// Joins as `rank`, announcing `address`; returns once every worker has joined (or after
    /// `timeout`, which bounds the whole call).
    ///
    /// # Errors
    /// The rendezvous cannot be reached or refuses the secret; [`TransportError::Timeout`] if not
    /// everyone joined in time; [`TransportError::Aborted`] with the launcher's reason if it
    /// aborted the job; [`TransportError::Refused`] if this rank already joined or is outside the
    /// world.
    pub fn join(
        server: &str,
        secret: &Secret,
        rank: usize,
        address: &Address,
        timeout: Duration,
    ) -> Result<(Self, Table), TransportError> {
        let started = Instant::now();
        let deadline = Deadline::after(timeout.max(Duration::from_millis(1)));
        let target = server
            .to_socket_addrs()
            .map_err(TransportError::io("resolve the rendezvous"))?
            .next()
            .ok_or_else(|| TransportError::InvalidArgument(format!("`{server}` resolves to no address")))?;
        // The launcher starts the rendezvous before the workers, but retry briefly anyway. And
        // retry the handshake until the deadline: under a flood of connections from strangers
        // the launcher's gate may drop ours before we answer (it drops the oldest waiting), and a
        // stranger must not fail the job that way.
        let mut attempts = 0u32;
        let mut refused: Option<TransportError> = None;
        let mut stream = loop {
            let attempt = match (deadline.remaining(), refused.take()) {
                (Ok(left), _) => left.min(Duration::from_secs(1)),
                // Out of time: the last refusal says why (a wrong secret is refused every time).
                (Err(_), Some(e)) => return Err(e),
                (Err(e), None) => return Err(e),
            };
            let mut stream = match TcpStream::connect_timeout(&target, attempt) {
                Ok(s) => s,
                Err(_) if started.elapsed() < Duration::from_secs(2) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(deadline.explain(TransportError::io("connect to the rendezvous")(e))),
            };
            deadline.arm(&stream)?;
            match authenticate_client(&mut stream, secret) {
                Ok(()) => break stream,
                Err(e) => {
                    refused = Some(e);
                    attempts += 1;
                    // Spread the retries of many workers: 10 ms to 0.5 s, growing.
                    let pause = Duration::from_millis(10 * u64::from(attempts.min(50)) + u64::from(rank as u32 % 7));
                    std::thread::sleep(pause.min(deadline.remaining().unwrap_or_default()));
                }
            }
        };
        send_line(&mut stream, &Join { rank, address: address.to_string() }).map_err(|e| deadline.explain(e))?;
        deadline.arm(&stream)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(TransportError::io("dup socket"))?);
        let reply = read_line(&mut reader, MAX_TABLE_LINE, false, timeout)
            .map_err(|e| deadline.explain(e))?
            .ok_or_else(|| TransportError::PeerGone("the rendezvous closed before everyone joined".into()))?;
        let reply: Reply =
            serde_json::from_str(&reply).map_err(|e| TransportError::Protocol(format!("bad table: {e}")))?;
        match reply {
            Reply::Table(table) => {
                socket::set_timeouts(&stream, Some(REPORT_TIMEOUT))?;
                Ok((Self { stream }, table))
            }
            Reply::Aborted(reason) => Err(TransportError::Aborted(reason)),
            Reply::Refused(reason) => Err(TransportError::Refused(reason)),
        }
    }

    /// Sends a report to the launcher.
    ///
    /// # Errors
    /// The rendezvous went away, or did not take the report within 30 s.
    pub fn report(&mut self, value: &serde_json::Value) -> Result<(), TransportError> {
        let mut line = value.to_string();
        line.push('\n');
        self.stream.write_all(line.as_bytes()).map_err(|e| {
            if socket::is_timeout(&e) {
                TransportError::Timeout(REPORT_TIMEOUT)
            } else {
                TransportError::io("send report")(e)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_in_thread(
        server: &RendezvousServer,
        secret: &Secret,
        rank: usize,
        timeout: Duration,
    ) -> std::thread::JoinHandle<Result<(Rendezvous, Table), TransportError>> {
        let (address, secret) = (server.address().to_owned(), secret.clone());
        std::thread::spawn(move || {
            Rendezvous::join(&address, &secret, rank, &Address::Local(format!("w{rank}")), timeout)
        })
    }

    fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn workers_find_each_other_and_report() {
        let secret = Secret::random().expect("secret");
        let server = RendezvousServer::start("127.0.0.1:0", secret.clone(), 3, serde_json::json!({"pairs": [[0, 1]]}))
            .expect("start");
        let handles: Vec<_> =
            (0..3).map(|rank| join_in_thread(&server, &secret, rank, Duration::from_secs(10))).collect();
        let mut tables = Vec::new();
        for (rank, h) in handles.into_iter().enumerate() {
            let (mut r, table) = h.join().expect("thread").expect("join");
            r.report(&serde_json::json!({"rank": rank})).expect("report");
            tables.push(table);
        }
        assert!(tables.iter().all(|t| t.addresses == ["local:w0", "local:w1", "local:w2"]));
        assert_eq!(tables[0].extra["pairs"][0][1], 1);
        eventually("three reports", || server.reports().len() == 3);
        assert!(server.errors().is_empty() && server.refused().count == 0);
    }

    #[test]
    fn a_wrong_secret_is_refused_without_failing_the_job() {
        let secret = Secret::random().expect("s");
        let server = RendezvousServer::start("127.0.0.1:0", secret.clone(), 1, serde_json::Value::Null).expect("start");
        let err = Rendezvous::join(
            server.address(),
            &Secret::random().expect("s"),
            0,
            &Address::Local("x".into()),
            Duration::from_secs(1),
        )
        .expect_err("wrong secret");
        assert!(matches!(err, TransportError::Authentication(_)), "{err}");
        // (The worker retried until its deadline, as a worker dropped by a flood would.)
        eventually("the refusals are counted", || server.refused().count >= 1);
        assert!(server.refused().reasons[0].contains("secret"), "{:?}", server.refused());
        assert!(server.errors().is_empty(), "not an error of the job: {:?}", server.errors());
        // The job goes on: the real worker joins.
        let (_, table) =
            Rendezvous::join(server.address(), &secret, 0, &Address::Local("x".into()), Duration::from_secs(5))
                .expect("join");
        assert_eq!(table.addresses, ["local:x"]);
    }

    #[test]
    fn a_missing_worker_is_a_timeout() {
        let secret = Secret::random().expect("s");
        let server = RendezvousServer::start("127.0.0.1:0", secret.clone(), 2, serde_json::Value::Null).expect("start");
        let err =
            Rendezvous::join(server.address(), &secret, 0, &Address::Local("x".into()), Duration::from_millis(200))
                .expect_err("rank 1 never joins");
        assert!(matches!(err, TransportError::Timeout(_)), "{err}");
    }

    #[test]
    fn abort_wakes_every_waiting_join_with_the_reason() {
        let secret = Secret::random().expect("s");
        let server = RendezvousServer::start("127.0.0.1:0", secret.clone(), 3, serde_json::Value::Null).expect("start");
        let waiting: Vec<_> =
            (0..2).map(|rank| join_in_thread(&server, &secret, rank, Duration::from_secs(60))).collect();
        eventually("two joined", || server.joined() == 2);
        let t = Instant::now();
        server.abort("worker 2 died (exit status 3)");
        for h in waiting {
            let err = h.join().expect("thread").expect_err("aborted");
            assert!(matches!(&err, TransportError::Aborted(r) if r.contains("worker 2 died")), "{err}");
        }
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
        // A later join learns it at once too.
        let err =
            join_in_thread(&server, &secret, 2, Duration::from_secs(60)).join().expect("thread").expect_err("late");
        assert!(matches!(&err, TransportError::Aborted(r) if r.contains("worker 2 died")), "{err}");
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
    }

    /// Retries `f` for up to 5 s (the server notices a closed connection asynchronously).
    fn eventually_ok<T>(mut f: impl FnMut() -> Result<T, TransportError>) -> T {
        let start = Instant::now();
        loop {
            match f() {
                Ok(v) => return v,
                Err(e) if start.elapsed() > Duration::from_secs(5) => panic!("never succeeded: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    #[test]
    fn workers_dropped_by_a_flood_of_strangers_try_again_and_get_in() {
        // Room for 8 waiting handshakes only, and strangers opening connections as fast as they
        // can: the gate keeps dropping the oldest waiting, workers included.
        let secret = Secret::random().expect("s");
        let limits = Limits { max_handshakes: 8, ..Limits::default() };
        let server = RendezvousServer::start_with("127.0.0.1:0", secret.clone(), 8, serde_json::Value::Null, limits)
            .expect("start");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flood = {
            let (stop, address) = (stop.clone(), server.address().to_owned());
            std::thread::spawn(move || {
                let mut open = std::collections::VecDeque::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(s) = TcpStream::connect(&address) {
                        open.push_back(s);
                    }
                    if open.len() > 500 {
                        open.pop_front();
                    }
                }
            })
        };
        eventually("the flood to fill the gate", || server.refused().count > 100);
        let joins: Vec<_> =
            (0..8).map(|rank| join_in_thread(&server, &secret, rank, Duration::from_secs(60))).collect();
        let results: Vec<_> = joins.into_iter().map(|j| j.join().expect("thread")).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = flood.join();
        for (rank, r) in results.iter().enumerate() {
            assert!(r.is_ok(), "rank {rank}: {:?}", r.as_ref().err());
        }
    }

    #[test]
    fn a_rank_that_joins_twice_is_refused() {
        let secret = Secret::random().expect("s");
        let server = RendezvousServer::start("127.0.0.1:0", secret.clone(), 2, serde_json::Value::Null).expect("start");
        let first = join_in_thread(&server, &secret, 0, Duration::from_secs(10));
        eventually("rank 0 joined", || server.joined() == 1);
        let err =
            join_in_thread(&server, &secret, 0, Duration::from_secs(10)).join().expect("thread").expect_err("twice");
        assert!(matches!(&err, TransportError::Refused(r) if r.contains("rank 0 joined twice")), "{err}");
        let err = join_in_thread(&server, &secret, 7, Duration::from_secs(10)).join().expect("thread").expect_err("7");
        assert!(matches!(&err, TransportError::Refused(r) if r.contains("outside a world of 2")), "{err}");
        // The first rank 0 keeps its place: the table names its address once rank 1 joins.
        let (_, table) = join_in_thread(&server, &secret, 1, Duration::from_secs(10)).join().expect("t").expect("1");
        assert_eq!(table.addresses, ["local:w0", "local:w1"]);
        assert!(first.join().expect("thread").is_ok());
        eventually("both refusals are errors of the job", || server.errors().len() == 2);
    }

    #[test]
    fn a_restarted_worker_takes_the_rank_of_the_one_that_ended() {
        let secret = Secret::random().expect("s");
        let server = RendezvousServer::start("127.0.0.1:0", secret.clone(), 2, serde_json::Value::Null).expect("start");
        let zero = join_in_thread(&server, &secret, 0, Duration::from_secs(10));
        let one = join_in_thread(&server, &secret, 1, Duration::from_secs(10));
        let (still_there, _) = one.join().expect("thread").expect("join 1");
        // Rank 0's process ends: its connection closes.
        drop(zero.join().expect("thread").expect("join 0"));
        let me = Address::Local("w0-again".into());
        let again = eventually_ok(|| Rendezvous::join(server.address(), &secret, 0, &me, Duration::from_secs(5)));
        assert_eq!(again.1.addresses, ["local:w0-again", "local:w1"], "the table at once, with the new address");
        // Rank 1 is still connected: its rank is not free.
        let err =
            join_in_thread(&server, &secret, 1, Duration::from_secs(10)).join().expect("thread").expect_err("taken");
        assert!(matches!(&err, TransportError::Refused(r) if r.contains("rank 1 joined twice")), "{err}");
        drop(still_there);
    }

    #[test]
    fn lines_are_bounded_and_dropping_the_server_closes_connections() {
        let secret = Secret::random().expect("s");
        let limits = Limits { max_line: 1000, ..Limits::default() };
        let server = RendezvousServer::start_with("127.0.0.1:0", secret.clone(), 2, serde_json::Value::Null, limits)
            .expect("start");
        let (mut first, _) = {
            let one = join_in_thread(&server, &secret, 1, Duration::from_secs(10));
            let zero = join_in_thread(&server, &secret, 0, Duration::from_secs(10));
            let _ = one.join().expect("thread").expect("join 1");
            zero.join().expect("thread").expect("join 0")
        };
        let long = serde_json::json!({ "text": "x".repeat(5000) });
        let _ = first.report(&long);
        eventually("the long line is refused", || server.errors().iter().any(|e| e.contains("more than 1000 bytes")));
        // A waiting worker learns at once that the server went away.
        let server2 =
            RendezvousServer::start("127.0.0.1:0", secret.clone(), 2, serde_json::Value::Null).expect("start");
        let waiting = join_in_thread(&server2, &secret, 0, Duration::from_secs(60));
        eventually("joined", || server2.joined() == 1);
        let t = Instant::now();
        drop(server2);
        let err = waiting.join().expect("thread").expect_err("closed");
        assert!(matches!(err, TransportError::Aborted(_) | TransportError::PeerGone(_)), "{err}");
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
    }
}
