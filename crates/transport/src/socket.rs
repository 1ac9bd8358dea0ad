//! What every socket of the crate shares: a [`Deadline`] for a handshake and the socket options
//! behind it (`SO_RCVTIMEO`/`SO_SNDTIMEO`), blocking and non-blocking mode, and the user at the
//! other end of a Unix socket (`SO_PEERCRED`).
//!
//! The gate, the TCP protocol, connections and the rendezvous all use these; this module uses
//! none of them, so that each can import it without an import cycle. It holds no protocol.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use crate::TransportError;

/// A point in time by which a handshake must be done, and how long it was given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    pub(crate) fn after(total: Duration) -> Self {
        Self { at: Instant::now() + total, total }
    }

    /// A deadline at `at` of a handshake that was given `total` (the gate's, set as it accepted).
    pub(crate) fn at(at: Instant, total: Duration) -> Self {
        Self { at, total }
    }

    /// Time left, or [`TransportError::Timeout`] once it is up.
    pub(crate) fn remaining(&self) -> Result<Duration, TransportError> {
        match self.at.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(left.max(Duration::from_millis(1))),
            _ => Err(TransportError::Timeout(self.total)),
        }
    }

    /// Makes every blocking read and write on `socket` give up when the deadline passes.
    pub(crate) fn arm(&self, socket: &impl AsFd) -> Result<(), TransportError> {
        set_timeouts(socket, Some(self.remaining()?))
    }

    /// Turns a socket timeout inside `error` into [`TransportError::Timeout`] of this deadline.
    pub(crate) fn explain(&self, error: TransportError) -> TransportError {
        match error {
            TransportError::Io { error, .. } if is_timeout(&error) => TransportError::Timeout(self.total),
            other => other,
        }
    }
}

/// Whether a socket error is a timeout set with `SO_RCVTIMEO`/`SO_SNDTIMEO` running out.
pub(crate) fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

fn timeval(d: Option<Duration>) -> libc::timeval {
    match d {
        // A zero timeval means "wait for ever" to the kernel; the shortest wait is a microsecond.
        Some(d) => libc::timeval {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX / 4),
            tv_usec: if d.as_secs() == 0 { d.subsec_micros().max(1) } else { d.subsec_micros() } as _,
        },
        None => libc::timeval { tv_sec: 0, tv_usec: 0 },
    }
}

/// Sets `SO_RCVTIMEO` and `SO_SNDTIMEO` (`None`: block for ever).
pub(crate) fn set_timeouts(socket: &impl AsFd, d: Option<Duration>) -> Result<(), TransportError> {
    let tv = timeval(d);
    for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: a valid timeval of the size given, on an open socket.
        let r = unsafe {
            libc::setsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(TransportError::Io { call: "setsockopt SO_RCVTIMEO", error: io::Error::last_os_error() });
        }
    }
    Ok(())
}

/// The failure of the system call `call`, with the OS error it left (`errno`).
pub(crate) fn os_error(call: &'static str) -> TransportError {
    TransportError::Io { call, error: io::Error::last_os_error() }
}

/// Switches `O_NONBLOCK` on or off.
pub(crate) fn set_nonblocking(fd: RawFd, on: bool) -> Result<(), TransportError> {
    // SAFETY: plain fcntl calls on an open descriptor.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(os_error("fcntl F_GETFL"));
        }
        let flags = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
        if libc::fcntl(fd, libc::F_SETFL, flags) != 0 {
            return Err(os_error("fcntl F_SETFL"));
        }
    }
    Ok(())
}

/// The user a connected Unix socket's peer runs as (`SO_PEERCRED`).
pub(crate) fn peer_uid(socket: BorrowedFd<'_>) -> Result<u32, TransportError> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: out-pointer of the right size for SO_PEERCRED.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(TransportError::io("getsockopt SO_PEERCRED")(io::Error::last_os_error()));
    }
    Ok(cred.uid)
}

/// The peer of a local connection must run as `me`.
pub(crate) fn check_user(peer: u32, me: u32) -> Result<(), TransportError> {
    if peer != me {
        return Err(TransportError::Authentication(format!("the peer runs as user {peer}, not {me}")));
    }
    Ok(())
}

/// This process's real user.
pub(crate) fn my_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_user_is_refused() {
        // The refusal logic without a second user: the integration tests run a real peer as
        // another user where they can (as root).
        assert!(check_user(1000, 1000).is_ok());
        let err = check_user(65534, 1000).expect_err("another user");
        assert!(matches!(err, TransportError::Authentication(_)), "{err}");
        assert!(err.to_string().contains("user 65534, not 1000"), "{err}");
    }
}
