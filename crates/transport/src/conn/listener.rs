//! Binding an address and accepting connections on it ([`Listener`]): the gate authenticates
//! every connection (`gate.rs`), a bounded set of threads finishes the setup of those that pass
//! (the local handshake, `local.rs`, or the TCP staging), and `accept` hands out only connections
//! that are fully set up.

use std::collections::VecDeque;
use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::address::{Address, Options};
use super::connection::Connection;
use super::local;
use crate::TransportError;
use crate::device::Device;
use crate::gate::{Admitted, Check, Gate, Limits, RefusalLog, Refusals, Workers};
use crate::secret;

/// How many random names [`Listener::bind_local`] tries.
const LOCAL_NAME_TRIES: usize = 8;

/// Threads per listener that finish setting up authenticated connections.
const SETUP_THREADS: usize = 4;

/// Set-up connections (or errors of our own device) waiting for `accept`.
#[derive(Default)]
struct Ready {
    queue: Mutex<VecDeque<Result<Connection, TransportError>>>,
    arrived: Condvar,
}

impl Ready {
    fn push(&self, item: Result<Connection, TransportError>) {
        if let Ok(mut q) = self.queue.lock() {
            q.push_back(item);
        }
        self.arrived.notify_one();
    }

    fn pop(&self, timeout: Option<Duration>) -> Result<Connection, TransportError> {
        let deadline = timeout.map(|t| (Instant::now() + t, t));
        let mut q = self.queue.lock().map_err(|_| TransportError::poisoned())?;
        loop {
            if let Some(item) = q.pop_front() {
                return item;
            }
            q = match deadline {
                None => self.arrived.wait(q).map_err(|_| TransportError::poisoned())?,
                Some((at, total)) => {
                    let left = at.checked_duration_since(Instant::now()).ok_or(TransportError::Timeout(total))?;
                    self.arrived.wait_timeout(q, left).map_err(|_| TransportError::poisoned())?.0
                }
            };
        }
    }
}

/// A bound address that accepts connections.
pub struct Listener {
    address: Address,
    refusals: Arc<RefusalLog>,
    ready: Arc<Ready>,
    gate: Gate,
    workers: Workers,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener").field("address", &self.address).field("refused", &self.refused().count).finish()
    }
}

/// Delivers a finished setup: a connection to `accept`; a failure of our own device to `accept`
/// too (no peer could cause it, and the caller must hear of it); anything else, which a peer can
/// cause, to the refusals.
fn deliver(ready: &Ready, refusals: &RefusalLog, result: Result<Connection, TransportError>) {
    match result {
        Ok(conn) => ready.push(Ok(conn)),
        Err(e @ (TransportError::Device { .. } | TransportError::CudaUnavailable { .. })) => ready.push(Err(e)),
        Err(e) => refusals.record(format!("a connection failed during setup: {e}")),
    }
}

impl Listener {
    /// Binds `address` (`tcp:HOST:0` picks a free port; see [`Listener::address`]) and starts
    /// accepting connections in the background.
    ///
    /// A `local:NAME` chosen by the caller is only as private as the name is unguessable: prefer
    /// [`Listener::bind_local`].
    ///
    /// # Errors
    /// The address is taken or invalid; TCP without a secret; invalid options.
    pub fn bind(address: &Address, device: Arc<dyn Device>, options: Options) -> Result<Self, TransportError> {
        let geometry = options.check()?;
        let (socket, address, check): (OwnedFd, Address, Check) = match address {
            Address::Local(name) => {
                let addr = UnixAddr::from_abstract_name(name.as_bytes())
                    .map_err(TransportError::io("abstract socket name"))?;
                let listener =
                    UnixListener::bind_addr(&addr).map_err(|error| TransportError::Io { call: "bind", error })?;
                (listener.into(), address.clone(), Check::Local)
            }
            Address::Tcp(addr) => {
                let Some(secret) = options.secret.clone() else {
                    return Err(TransportError::Authentication("a TCP listener needs the cluster's secret".into()));
                };
                let listener =
                    TcpListener::bind(addr.as_str()).map_err(|error| TransportError::Io { call: "bind", error })?;
                let local: SocketAddr = listener.local_addr().map_err(TransportError::io("getsockname"))?;
                (listener.into(), Address::Tcp(local.to_string()), Check::Tcp(secret))
            }
        };
        let refusals = Arc::new(RefusalLog::default());
        let ready = Arc::new(Ready::default());
        let workers = Workers::new(SETUP_THREADS);
        let limits = Limits { timeout: options.handshake_timeout, max_pending: options.max_handshakes };
        let over_tcp = matches!(check, Check::Tcp(_));
        let admit = {
            let (ready, refusals, workers) = (ready.clone(), refusals.clone(), workers.clone());
            move |admitted: Admitted| {
                let (ready, refusals, device, options) =
                    (ready.clone(), refusals.clone(), device.clone(), options.clone());
                let watch = admitted.socket.try_clone().ok();
                workers.submit(
                    watch,
                    Box::new(move |hold| {
                        let result = if over_tcp {
                            // Authenticated by the gate; only our own staging is left to set up.
                            Connection::tcp(TcpStream::from(admitted.socket), &device, options.stall_timeout)
                        } else {
                            local::accept(admitted, &device, geometry, options.stall_timeout)
                        };
                        // Once handed out, a connection is no longer the listener's to shut down;
                        // if the listener is closing, nobody will accept it.
                        if hold.detach() {
                            deliver(&ready, &refusals, result);
                        }
                    }),
                );
            }
        };
        let gate = Gate::start(socket, check, limits, refusals.clone(), admit)?;
        Ok(Self { address, refusals, ready, gate, workers })
    }

    /// Binds a local address no other user can guess: `local:<prefix>-<128 random bits in hex>`,
    /// drawing a new name if one is taken.
    ///
    /// # Errors
    /// Every one of a few fresh names was taken (someone is binding names at random, or the
    /// system is out of randomness), or as [`Listener::bind`].
    pub fn bind_local(prefix: &str, device: Arc<dyn Device>, options: Options) -> Result<Self, TransportError> {
        Self::bind_first_free(prefix, device, options, || {
            Ok(secret::random_bytes::<16>()?.iter().map(|b| format!("{b:02x}")).collect())
        })
    }

    fn bind_first_free(
        prefix: &str,
        device: Arc<dyn Device>,
        options: Options,
        mut suffix: impl FnMut() -> Result<String, TransportError>,
    ) -> Result<Self, TransportError> {
        let mut taken = None;
        for _ in 0..LOCAL_NAME_TRIES {
            let address = Address::Local(format!("{prefix}-{}", suffix()?));
            match Self::bind(&address, device.clone(), options.clone()) {
                Err(TransportError::Io { error, .. }) if error.kind() == std::io::ErrorKind::AddrInUse => {
                    taken = Some(error);
                }
                other => return other,
            }
        }
        Err(TransportError::Io {
            call: "bind a local socket (8 fresh random names were all taken)",
            error: taken.unwrap_or_else(|| std::io::ErrorKind::AddrInUse.into()),
        })
    }

    /// The address peers connect to (with the port filled in for `tcp:HOST:0`).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits for the next connection that is fully set up.
    ///
    /// Connections that fail the peer check, the secret or the handshake never end this wait:
    /// they are dropped and counted in [`Listener::refused`].
    ///
    /// # Errors
    /// Only a failure of this process's own device while setting a connection up.
    pub fn accept_blocking(&self) -> Result<Connection, TransportError> {
        self.ready.pop(None)
    }

    /// As [`Listener::accept_blocking`], giving up after `timeout`.
    ///
    /// # Errors
    /// [`TransportError::Timeout`] if no connection was ready in time, or as
    /// [`Listener::accept_blocking`].
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Connection, TransportError> {
        self.ready.pop(Some(timeout))
    }

    /// Accepts one connection.
    ///
    /// # Errors
    /// As [`Listener::accept_blocking`].
    pub async fn accept(self: &Arc<Self>) -> Result<Connection, TransportError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.accept_blocking())
            .await
            .map_err(|e| TransportError::Internal(format!("the accept task failed: {e}")))?
    }

    /// Connections refused or dropped so far, with the first reasons (for a report such as
    /// "refused 3 connections").
    pub fn refused(&self) -> Refusals {
        self.refusals.get()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Stop accepting (closing the socket frees the name), then end the setups under way.
        self.gate.stop();
        self.workers.close(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::sim::SimDevice;

    #[test]
    fn a_taken_name_is_skipped_and_all_taken_is_a_clear_error() {
        let device: Arc<dyn Device> = Arc::new(SimDevice::new());
        let prefix = format!("gpucluster-unit-{}", std::process::id());
        let squatter = Listener::bind(&Address::Local(format!("{prefix}-aaaa")), device.clone(), Options::default())
            .expect("bind");
        let mut names = ["aaaa", "bbbb"].into_iter().map(|s| Ok(s.to_owned()));
        let second = Listener::bind_first_free(&prefix, device.clone(), Options::default(), || {
            names.next().unwrap_or_else(|| Ok("zzzz".into()))
        })
        .expect("the second name");
        assert_eq!(second.address().to_string(), format!("local:{prefix}-bbbb"));
        let err = Listener::bind_first_free(&prefix, device.clone(), Options::default(), || Ok("aaaa".into()))
            .expect_err("every name taken");
        assert!(err.to_string().contains("8 fresh random names were all taken"), "{err}");
        drop(squatter);
        let random = Listener::bind_local("gpucluster-unit", device, Options::default()).expect("bind_local");
        let name = random.address().to_string();
        let suffix = name.strip_prefix("local:gpucluster-unit-").expect("prefix");
        assert!(suffix.len() == 32 && suffix.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    }
}
