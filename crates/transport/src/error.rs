//! The one error type of the transport.
//!
//! Messages say what the transport saw, in its own words: never which flag or argument of a
//! front end to change (the binary and the Python package add those).

/// What went wrong moving data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// CUDA was asked for but cannot be used here.
    #[error("cannot use CUDA: {reason}; to run without a GPU, use a simulated topology (sim:NAME)")]
    CudaUnavailable {
        /// Why.
        reason: String,
    },
    /// A device call failed.
    #[error("{call} failed: {reason}")]
    Device {
        /// The driver function.
        call: &'static str,
        /// The driver's error, or what was wrong.
        reason: String,
    },
    /// A system call failed.
    #[error("{call} failed: {error}")]
    Io {
        /// The system call.
        call: &'static str,
        /// The OS error. (Not a `source`: the message already says it.)
        error: std::io::Error,
    },
    /// The peer closed the connection or died.
    #[error("the peer went away: {0}")]
    PeerGone(String),
    /// The peer did not answer in time.
    #[error("the peer did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The peer broke the protocol: a message, descriptor, frame or setup step that is not what
    /// the protocol allows.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The caller asked for something that cannot be: an address that is not one, options out of
    /// range, an unknown device name. Nothing was sent.
    #[error("{0}")]
    InvalidArgument(String),
    /// A variable the launcher sets for its workers is missing or malformed (the process was not
    /// started by a launcher of ours, or by a different version).
    #[error("{variable} {problem}")]
    Environment {
        /// The variable.
        variable: String,
        /// What is wrong with it, with what to do.
        problem: String,
    },
    /// Bytes read back differ from the bytes written: a device or a peer corrupted them.
    #[error("data corrupted: {0}")]
    Corrupted(String),
    /// A thread or task of the transport itself failed (panicked or was cancelled).
    #[error("internal failure: {0}")]
    Internal(String),
    /// The peer does not hold the cluster's secret (or we do not hold theirs).
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// The launcher aborted the job (`RendezvousServer::abort`), or closed the rendezvous before
    /// everyone joined; the reason is the launcher's.
    #[error("the job was aborted: {0}")]
    Aborted(String),
    /// The peer turned this request away: a rank that already joined, or one outside the world.
    #[error("refused: {0}")]
    Refused(String),
    /// A message does not fit the receive buffer.
    #[error("a message of {needed} bytes does not fit a buffer of {capacity} bytes")]
    BufferTooSmall {
        /// The message's size.
        needed: u64,
        /// The buffer's size.
        capacity: u64,
    },
}

impl TransportError {
    /// Maps a socket error of `call`: the peer hanging up is [`TransportError::PeerGone`].
    pub(crate) fn io(call: &'static str) -> impl Fn(std::io::Error) -> TransportError {
        move |error| match error.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted => TransportError::PeerGone(format!("{call}: {error}")),
            _ => TransportError::Io { call, error },
        }
    }

    pub(crate) fn poisoned() -> Self {
        TransportError::Protocol("an earlier failure left the connection unusable".into())
    }
}
