//! The rendezvous: how workers started by the launcher find each other.
//!
//! The launcher runs a [`RendezvousServer`] and gives each worker its address, the cluster's
//! secret, its rank and the world size in the environment (`GPUCLUSTER_RENDEZVOUS`,
//! `GPUCLUSTER_SECRET`, `GPUCLUSTER_RANK`, `GPUCLUSTER_WORLD_SIZE`). Each worker binds its own
//! listener, [`Rendezvous::join`]s with that address, and gets back every worker's address once
//! all have joined, with whatever the launcher attached (the planned path of each pair). Workers
//! may then send reports, which the launcher collects. Connections authenticate with the secret
//! as the `tcp` path does; lines are JSON.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::tcp::{Secret, authenticate_client, authenticate_server};
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

#[derive(Debug, Default)]
struct State {
    addresses: Vec<Option<String>>,
    reports: Vec<serde_json::Value>,
    errors: Vec<String>,
}

/// The launcher's side.
#[derive(Debug)]
pub struct RendezvousServer {
    address: String,
    state: Arc<(Mutex<State>, Condvar)>,
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
        let listener = TcpListener::bind(bind).map_err(TransportError::io("bind rendezvous"))?;
        let address = listener.local_addr().map_err(TransportError::io("getsockname"))?.to_string();
        let state = Arc::new((Mutex::new(State { addresses: vec![None; world], ..State::default() }), Condvar::new()));
        let shared = state.clone();
        let extra = Arc::new(extra);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (state, secret, extra) = (shared.clone(), secret.clone(), extra.clone());
                std::thread::spawn(move || {
                    if let Err(e) = serve(stream, &state, &secret, &extra)
                        && let Ok(mut s) = state.0.lock()
                    {
                        s.errors.push(e.to_string());
                    }
                });
            }
        });
        Ok(Self { address, state })
    }

    /// Where workers reach it (`host:port`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// How many workers have joined.
    pub fn joined(&self) -> usize {
        self.state.0.lock().map(|s| s.addresses.iter().flatten().count()).unwrap_or(0)
    }

    /// The reports received so far.
    pub fn reports(&self) -> Vec<serde_json::Value> {
        self.state.0.lock().map(|s| s.reports.clone()).unwrap_or_default()
    }

    /// Problems with connections that were refused or broke (a wrong secret, bad lines).
    pub fn errors(&self) -> Vec<String> {
        self.state.0.lock().map(|s| s.errors.clone()).unwrap_or_default()
    }
}

fn serve(
    mut stream: TcpStream,
    state: &(Mutex<State>, Condvar),
    secret: &Secret,
    extra: &serde_json::Value,
) -> Result<(), TransportError> {
    authenticate_server(&mut stream, secret)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(TransportError::io("dup socket"))?);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(TransportError::io("read join"))?;
    let join: Join =
        serde_json::from_str(&line).map_err(|e| TransportError::Protocol(format!("bad join line: {e}")))?;
    let (lock_, ready) = state;
    {
        let mut s = lock(lock_)?;
        let world = s.addresses.len();
        let slot = s
            .addresses
            .get_mut(join.rank)
            .ok_or_else(|| TransportError::Protocol(format!("rank {} is outside a world of {world}", join.rank)))?;
        *slot = Some(join.address);
        ready.notify_all();
    }
    let table = {
        let mut s = lock(lock_)?;
        while s.addresses.iter().any(Option::is_none) {
            s = ready.wait(s).map_err(|_| TransportError::poisoned())?;
        }
        Table { addresses: s.addresses.iter().flatten().cloned().collect(), extra: extra.clone() }
    };
    let mut text = serde_json::to_string(&table).map_err(|e| TransportError::Protocol(e.to_string()))?;
    text.push('\n');
    stream.write_all(text.as_bytes()).map_err(TransportError::io("send table"))?;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {
                let report: serde_json::Value =
                    serde_json::from_str(&line).map_err(|e| TransportError::Protocol(format!("bad report: {e}")))?;
                lock(lock_)?.reports.push(report);
            }
        }
    }
}

/// A worker's side.
#[derive(Debug)]
pub struct Rendezvous {
    stream: TcpStream,
}

impl Rendezvous {
    /// Joins as `rank`, announcing `address`; returns once every worker has joined (or after
    /// `timeout`).
    ///
    /// # Errors
    /// The rendezvous cannot be reached, refuses the secret, or not everyone joined in time.
    pub fn join(
        server: &str,
        secret: &Secret,
        rank: usize,
        address: &Address,
        timeout: Duration,
    ) -> Result<(Self, Table), TransportError> {
        let started = Instant::now();
        // The launcher starts the rendezvous before the workers, but retry briefly anyway.
        let mut stream = loop {
            match TcpStream::connect(server) {
                Ok(s) => break s,
                Err(_) if started.elapsed() < Duration::from_secs(2) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(TransportError::io("connect to the rendezvous")(e)),
            }
        };
        authenticate_client(&mut stream, secret)?;
        let mut line = serde_json::to_string(&Join { rank, address: address.to_string() })
            .map_err(|e| TransportError::Protocol(e.to_string()))?;
        line.push('\n');
        stream.write_all(line.as_bytes()).map_err(TransportError::io("send join"))?;
        stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(TransportError::io("set timeout"))?;
        let mut reader = BufReader::new(stream.try_clone().map_err(TransportError::io("dup socket"))?);
        let mut reply = String::new();
        match reader.read_line(&mut reply) {
            Ok(0) => return Err(TransportError::PeerGone("the rendezvous closed before everyone joined".into())),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(TransportError::Timeout(timeout));
            }
            Err(e) => return Err(TransportError::io("read the table")(e)),
        }
        stream.set_read_timeout(None).map_err(TransportError::io("set timeout"))?;
        let table: Table =
            serde_json::from_str(&reply).map_err(|e| TransportError::Protocol(format!("bad table: {e}")))?;
        Ok((Self { stream }, table))
    }

    /// Sends a report to the launcher.
    ///
    /// # Errors
    /// The rendezvous went away.
    pub fn report(&mut self, value: &serde_json::Value) -> Result<(), TransportError> {
        let mut line = value.to_string();
        line.push('\n');
        self.stream.write_all(line.as_bytes()).map_err(TransportError::io("send report"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_find_each_other_and_report() {
        let secret = Secret::random().expect("secret");
        let server = RendezvousServer::start("127.0.0.1:0", secret.clone(), 3, serde_json::json!({"pairs": [[0, 1]]}))
            .expect("start");
        let address = server.address().to_owned();
        let handles: Vec<_> = (0..3)
            .map(|rank| {
                let (address, secret) = (address.clone(), secret.clone());
                std::thread::spawn(move || {
                    let me = Address::Local(format!("w{rank}"));
                    let (mut r, table) =
                        Rendezvous::join(&address, &secret, rank, &me, Duration::from_secs(10)).expect("join");
                    r.report(&serde_json::json!({"rank": rank})).expect("report");
                    table
                })
            })
            .collect();
        let tables: Vec<Table> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
        assert!(tables.iter().all(|t| t.addresses == ["local:w0", "local:w1", "local:w2"]));
        assert_eq!(tables[0].extra["pairs"][0][1], 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.reports().len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(server.reports().len(), 3);
    }

    #[test]
    fn a_wrong_secret_or_a_missing_worker_is_an_error() {
        let server = RendezvousServer::start("127.0.0.1:0", Secret::random().expect("s"), 2, serde_json::Value::Null)
            .expect("start");
        let err = Rendezvous::join(
            server.address(),
            &Secret::random().expect("s"),
            0,
            &Address::Local("x".into()),
            Duration::from_secs(1),
        )
        .expect_err("wrong secret");
        assert!(matches!(err, TransportError::Authentication(_)), "{err}");
        let secret = Secret::random().expect("s");
        let server = RendezvousServer::start("127.0.0.1:0", secret.clone(), 2, serde_json::Value::Null).expect("start");
        let err =
            Rendezvous::join(server.address(), &secret, 0, &Address::Local("x".into()), Duration::from_millis(200))
                .expect_err("rank 1 never joins");
        assert!(matches!(err, TransportError::Timeout(_)), "{err}");
    }
}
