//! Anonymous shared memory (`memfd`) and passing its descriptor over a Unix socket.
//!
//! Segments have no name in `/dev/shm` or anywhere else: a peer receives the descriptor over
//! the connection's Unix socket (`SCM_RIGHTS`), and the memory is freed when the last process
//! holding it unmaps it or dies. So nothing can be left behind, however a connection ends. The
//! descriptor's mode is still set to 0600, so only its owner could reopen it through `/proc`.
//!
//! A mapping larger than its file faults (`SIGBUS`) when touched, so a segment that came from
//! elsewhere (a descriptor a peer passed, a `/proc` path a peer named) is mapped only after
//! checking that the file holds the size asked for and is sealed against shrinking; segments
//! made here are sealed so at creation. Descriptors are [`OwnedFd`]s throughout, so none leaks
//! on an error path.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::TransportError;

/// A mapped shared-memory segment.
#[derive(Debug)]
pub struct Segment {
    ptr: *mut u8,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory; synchronisation of its contents is the users'
// business (atomics in the ring header, events for DMA).
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

fn os_error(call: &'static str) -> TransportError {
    TransportError::Io { call, error: io::Error::last_os_error() }
}

/// Seals that keep a segment's size fixed for as long as anyone maps it.
const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

impl Segment {
    /// Creates a zeroed segment of `len` bytes (at least one page is mapped), sealed at that size.
    ///
    /// # Errors
    /// [`TransportError::Io`] from `memfd_create`, `ftruncate`, `fcntl` or `mmap`.
    pub fn create(name: &str, len: usize) -> Result<Self, TransportError> {
        let cname = CString::new(name).map_err(|_| TransportError::Io {
            call: "memfd_create",
            error: io::Error::new(io::ErrorKind::InvalidInput, "segment name contains NUL"),
        })?;
        // SAFETY: `cname` is a valid C string.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if raw < 0 {
            return Err(os_error("memfd_create"));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len.max(1)).map_err(|_| TransportError::Io {
            call: "ftruncate",
            error: io::Error::new(io::ErrorKind::InvalidInput, "segment too large"),
        })?;
        // SAFETY: plain calls on a descriptor we own.
        unsafe {
            if libc::fchmod(fd.as_raw_fd(), 0o600) != 0 {
                return Err(os_error("fchmod"));
            }
            if libc::ftruncate(fd.as_raw_fd(), size) != 0 {
                return Err(os_error("ftruncate"));
            }
            if libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) != 0 {
                return Err(os_error("fcntl F_ADD_SEALS"));
            }
        }
        Self::map(fd, len)
    }

    /// Maps a segment received from a peer, taking ownership of `fd`.
    ///
    /// # Errors
    /// [`TransportError::Protocol`] if the file is smaller than `len` or could shrink;
    /// [`TransportError::Io`] from `fstat`, `fcntl` or `mmap`.
    pub fn from_fd(fd: OwnedFd, len: usize) -> Result<Self, TransportError> {
        check_foreign(fd.as_fd(), len)?;
        Self::map(fd, len)
    }

    /// Opens and maps the segment at `path` (a `/proc/<pid>/fd/<n>` link).
    ///
    /// # Errors
    /// As [`Segment::from_fd`], and [`TransportError::Io`] from `open`.
    pub fn open(path: &str, len: usize) -> Result<Self, TransportError> {
        let cpath = CString::new(path).map_err(|_| TransportError::Io {
            call: "open",
            error: io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"),
        })?;
        // SAFETY: `cpath` is a valid C string.
        let raw = unsafe { libc::open(cpath.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(os_error("open"));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Self::from_fd(unsafe { OwnedFd::from_raw_fd(raw) }, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Self, TransportError> {
        let map_len = len.max(1);
        // SAFETY: a fresh shared mapping of a descriptor we own; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(os_error("mmap"));
        }
        Ok(Self { ptr: ptr.cast(), len, fd })
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The descriptor, for passing to a peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A segment someone else made must hold `len` bytes and be sealed against shrinking, or
/// touching its end would fault.
fn check_foreign(fd: BorrowedFd<'_>, len: usize) -> Result<(), TransportError> {
    // SAFETY: a zeroed `stat` is a valid out-buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the duration of the borrow; `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(os_error("fstat"));
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size < len.max(1) as u64 {
        return Err(TransportError::Protocol(format!(
            "the peer's shared segment holds {size} bytes, not the {len} it announced"
        )));
    }
    // SAFETY: a plain query on an open descriptor.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
        return Err(TransportError::Protocol("the peer's shared segment is not sealed against shrinking".into()));
    }
    Ok(())
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` created; nothing uses the mapping after drop. The
        // descriptor closes itself.
        unsafe { libc::munmap(self.ptr.cast(), self.len.max(1)) };
    }
}

/// A message header with one data buffer and room for one descriptor in `control`.
fn header(iov: &mut libc::iovec, control: &mut Vec<u8>) -> libc::msghdr {
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    control.resize(space, 0);
    // SAFETY: a zeroed msghdr is a valid starting point; the caller keeps `iov` and `control`
    // alive while the header is used.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    msg
}

/// Sends `data` and the descriptor `fd` in one message.
///
/// # Errors
/// [`TransportError::Io`] from `sendmsg` (a timeout set on `stream` included).
pub fn send_fd(stream: &UnixStream, fd: BorrowedFd<'_>, data: &[u8]) -> Result<(), TransportError> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let mut control = Vec::new();
    let msg = header(&mut iov, &mut control);
    // SAFETY: `control` has room for one cmsg carrying one descriptor (CMSG_SPACE above).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
    }
    // SAFETY: `msg` is fully initialised and refers to live buffers.
    let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(TransportError::io("sendmsg")(io::Error::last_os_error()));
    }
    if sent as usize != data.len() {
        return Err(TransportError::Protocol(format!("sent {sent} of {} setup bytes", data.len())));
    }
    Ok(())
}

/// Receives a message of exactly `len` bytes carrying one descriptor.
///
/// # Errors
/// [`TransportError::Io`] from `recvmsg` (a timeout set on `stream` included), or
/// [`TransportError::Protocol`] if the message is short or carries no descriptor.
pub fn recv_fd(stream: &UnixStream, len: usize) -> Result<(OwnedFd, Vec<u8>), TransportError> {
    let mut data = vec![0u8; len];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: len };
    let mut control = Vec::new();
    let mut msg = header(&mut iov, &mut control);
    // SAFETY: `msg` refers to live buffers of the sizes given.
    let got = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_WAITALL | libc::MSG_CMSG_CLOEXEC) };
    if got < 0 {
        return Err(TransportError::io("recvmsg")(io::Error::last_os_error()));
    }
    // Take ownership of whatever descriptor came before judging the message, so that none leaks.
    // SAFETY: walking the control buffer the kernel filled, within `msg_controllen`; a
    // descriptor in an SCM_RIGHTS message is ours to own.
    let fd = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
            || ((*cmsg).cmsg_len as usize) < libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize
        {
            None
        } else {
            Some(OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>())))
        }
    };
    if got as usize != len {
        return Err(TransportError::Protocol(format!(
            "the peer closed the connection during setup ({got} of {len} bytes)"
        )));
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(TransportError::Protocol("the peer sent more than one descriptor".into()));
    }
    let fd = fd.ok_or_else(|| TransportError::Protocol("the peer sent no shared-memory descriptor".into()))?;
    Ok((fd, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: i64, seal: bool) -> OwnedFd {
        let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // SAFETY: a literal C string; the fresh descriptor is owned at once.
        let fd = unsafe { OwnedFd::from_raw_fd(libc::memfd_create(c"test".as_ptr(), flags)) };
        // SAFETY: plain calls on our own descriptor.
        unsafe {
            assert_eq!(libc::ftruncate(fd.as_raw_fd(), len), 0);
            if seal {
                assert_eq!(libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS), 0);
            }
        }
        fd
    }

    #[test]
    fn a_foreign_segment_must_hold_its_size_and_be_sealed() {
        // A file shorter than announced would fault (SIGBUS) when its end is touched.
        let err = Segment::from_fd(memfd(4096, true), 1 << 20).expect_err("short");
        assert!(err.to_string().contains("holds 4096 bytes"), "{err}");
        // An unsealed file could be shrunk under us by whoever else holds it.
        let err = Segment::from_fd(memfd(1 << 20, false), 1 << 20).expect_err("unsealed");
        assert!(err.to_string().contains("not sealed"), "{err}");
        let ok = Segment::from_fd(memfd(1 << 20, true), 1 << 20).expect("sealed and large enough");
        // SAFETY: the mapping holds 1 MiB.
        unsafe { ok.as_ptr().add((1 << 20) - 1).write(1) };
    }

    #[test]
    fn descriptors_travel_and_none_leaks_on_a_short_message() {
        let (a, b) = UnixStream::pair().expect("pair");
        let segment = Segment::create("test", 8192).expect("segment");
        send_fd(&a, segment.fd(), b"0123456789abcdef").expect("send");
        let (fd, data) = recv_fd(&b, 16).expect("recv");
        assert_eq!(data, b"0123456789abcdef");
        let other = Segment::from_fd(fd, 8192).expect("map");
        // SAFETY: both map the same 8 KiB file.
        unsafe {
            segment.as_ptr().write(42);
            assert_eq!(other.as_ptr().read(), 42);
        }
        // A descriptor with fewer bytes than expected: an error, and the descriptor is closed.
        // Count only descriptors of a segment no other test names: the harness runs tests on
        // other threads, which open and close descriptors of their own meanwhile.
        let probe = Segment::create("shm-leak-probe", 4096).expect("probe segment");
        let probes = || {
            std::fs::read_dir("/proc/self/fd")
                .expect("/proc/self/fd")
                .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().contains("memfd:shm-leak-probe"))
                .count()
        };
        send_fd(&a, probe.fd(), b"short").expect("send");
        drop(a);
        assert_eq!(probes(), 1, "only our own descriptor of the probe before the receive");
        assert!(recv_fd(&b, 16).is_err());
        assert_eq!(probes(), 1, "the received descriptor leaked");
    }
}
