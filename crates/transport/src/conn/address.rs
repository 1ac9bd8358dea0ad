//! Where a worker listens ([`Address`]) and how a connection is set up ([`Options`]), with the
//! check of the options that both the listening and the connecting side run first.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::ring::RingGeometry;
use crate::secret::Secret;
use crate::{TransferPath, TransportError};

/// Where a worker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// An abstract Unix socket on this host: `local:NAME`.
    Local(String),
    /// A TCP socket: `tcp:HOST:PORT`.
    Tcp(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Local(name) => write!(f, "local:{name}"),
            Address::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

impl FromStr for Address {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, TransportError> {
        let bad = || {
            TransportError::InvalidArgument(format!("`{s}` is not an address: expected local:NAME or tcp:HOST:PORT"))
        };
        match s.split_once(':') {
            Some(("local", name)) if !name.is_empty() => Ok(Address::Local(name.to_owned())),
            Some(("tcp", addr)) if addr.contains(':') => Ok(Address::Tcp(addr.to_owned())),
            _ => Err(bad()),
        }
    }
}

/// How a connection is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// The path to use between two local workers: `cuda-ipc` or `host-staged` (a `cuda-ipc`
    /// request falls back to `host-staged` if IPC handles cannot be opened). Ignored for TCP.
    pub path: TransferPath,
    /// Slots of the shared ring, per direction ([`RingGeometry`] says how many may be).
    pub slots: usize,
    /// Bytes per slot ([`RingGeometry`] says how many may be).
    pub chunk: usize,
    /// The cluster's secret, required for TCP.
    pub secret: Option<Secret>,
    /// How long setting up one connection may take, from connect or accept until it is ready:
    /// the peer check, the hello, the shared segment and the IPC probe, or the TCP challenge.
    /// A peer that takes longer is dropped. Default 5 s.
    pub handshake_timeout: Duration,
    /// How long a message under way may make no progress before it fails with
    /// [`TransportError::Timeout`] (on both sides; the connection is then unusable). Waiting for
    /// the *next* message is not bounded by it: see
    /// [`Connection::recv_blocking_timeout`](crate::Connection::recv_blocking_timeout).
    /// A peer that dies is noticed at once, whatever this is. Default 30 s.
    pub stall_timeout: Duration,
    /// Most connections a listener holds before they have authenticated; past it, the oldest is
    /// dropped. Default 64.
    pub max_handshakes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            path: TransferPath::HostStaged,
            slots: 4,
            chunk: 4 << 20,
            secret: None,
            handshake_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(30),
            max_handshakes: 64,
        }
    }
}

impl Options {
    /// The ring these options ask for, once every option is checked.
    ///
    /// # Errors
    /// [`TransportError::InvalidArgument`]: a ring that cannot be ([`RingGeometry::new`]), a
    /// timeout under a millisecond, or no handshake allowed.
    pub(super) fn check(&self) -> Result<RingGeometry, TransportError> {
        let geometry = RingGeometry::new(self.slots, self.chunk)?;
        let ms = Duration::from_millis(1);
        if self.handshake_timeout < ms || self.stall_timeout < ms || self.max_handshakes == 0 {
            return Err(TransportError::InvalidArgument(
                "handshake and stall timeouts need at least 1 ms, and a listener at least one handshake".into(),
            ));
        }
        Ok(geometry)
    }
}
