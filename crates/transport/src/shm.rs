//! Anonymous shared memory (`memfd`) and passing its descriptor over a Unix socket.
//!
//! Segments have no name in `/dev/shm` or anywhere else: a peer receives the descriptor over
//! the connection's Unix socket (`SCM_RIGHTS`), and the memory is freed when the last process
//! holding it unmaps it or dies. So nothing can be left behind, however a connection ends. The
//! descriptor's mode is still set to 0600, so only its owner could reopen it through `/proc`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::TransportError;

/// A mapped shared-memory segment.
#[derive(Debug)]
pub struct Segment {
    ptr: *mut u8,
    len: usize,
    fd: RawFd,
}

// SAFETY: the mapping is plain shared memory; synchronisation of its contents is the users'
// business (atomics in the ring header, events for DMA).
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

fn os_error(call: &'static str) -> TransportError {
    TransportError::Io { call, error: io::Error::last_os_error() }
}

impl Segment {
    /// Creates a zeroed segment of `len` bytes (at least one page is mapped).
    ///
    /// # Errors
    /// [`TransportError::Io`] from `memfd_create`, `ftruncate` or `mmap`.
    pub fn create(name: &str, len: usize) -> Result<Self, TransportError> {
        let cname = CString::new(name).map_err(|_| TransportError::Io {
            call: "memfd_create",
            error: io::Error::new(io::ErrorKind::InvalidInput, "segment name contains NUL"),
        })?;
        // SAFETY: `cname` is a valid C string.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os_error("memfd_create"));
        }
        // SAFETY: `fd` is ours.
        if unsafe { libc::fchmod(fd, 0o600) } != 0 || unsafe { libc::ftruncate(fd, len.max(1) as libc::off_t) } != 0 {
            let e = os_error("ftruncate");
            // SAFETY: closing our own descriptor.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        Self::map(fd, len)
    }

    /// Maps a segment received from a peer (taking ownership of `fd`).
    ///
    /// # Errors
    /// [`TransportError::Io`] from `mmap`.
    pub fn from_fd(fd: RawFd, len: usize) -> Result<Self, TransportError> {
        Self::map(fd, len)
    }

    /// Opens and maps the segment at `path` (a `/proc/<pid>/fd/<n>` link).
    ///
    /// # Errors
    /// [`TransportError::Io`] from `open` or `mmap`.
    pub fn open(path: &str, len: usize) -> Result<Self, TransportError> {
        let cpath = CString::new(path).map_err(|_| TransportError::Io {
            call: "open",
            error: io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"),
        })?;
        // SAFETY: `cpath` is a valid C string.
        let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(os_error("open"));
        }
        Self::map(fd, len)
    }

    fn map(fd: RawFd, len: usize) -> Result<Self, TransportError> {
        let map_len = len.max(1);
        // SAFETY: a fresh shared mapping of a descriptor we own; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), map_len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if ptr == libc::MAP_FAILED {
            let e = os_error("mmap");
            // SAFETY: closing our own descriptor.
            unsafe { libc::close(fd) };
            return Err(e);
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
    pub fn fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmapping and closing what `map` created; nothing uses the mapping after drop.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len.max(1));
            libc::close(self.fd);
        }
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
/// [`TransportError::Io`] from `sendmsg`.
pub fn send_fd(stream: &UnixStream, fd: RawFd, data: &[u8]) -> Result<(), TransportError> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let mut control = Vec::new();
    let msg = header(&mut iov, &mut control);
    // SAFETY: `control` has room for one cmsg carrying one descriptor (CMSG_SPACE above).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: `msg` is fully initialised and refers to live buffers.
    let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 || sent as usize != data.len() {
        return Err(os_error("sendmsg"));
    }
    Ok(())
}

/// Receives a message of exactly `len` bytes carrying one descriptor.
///
/// # Errors
/// [`TransportError::Io`] from `recvmsg`, or [`TransportError::Protocol`] if no descriptor came.
pub fn recv_fd(stream: &UnixStream, len: usize) -> Result<(RawFd, Vec<u8>), TransportError> {
    let mut data = vec![0u8; len];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: len };
    let mut control = Vec::new();
    let mut msg = header(&mut iov, &mut control);
    // SAFETY: `msg` refers to live buffers of the sizes given.
    let got = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_WAITALL | libc::MSG_CMSG_CLOEXEC) };
    if got < 0 {
        return Err(os_error("recvmsg"));
    }
    if got as usize != len {
        return Err(TransportError::Protocol(format!(
            "the peer closed the connection during setup ({got} of {len} bytes)"
        )));
    }
    // SAFETY: walking the control buffer the kernel filled, within `msg_controllen`.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_level != libc::SOL_SOCKET || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(TransportError::Protocol("the peer sent no shared-memory descriptor".into()));
        }
        Ok((std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>()), data))
    }
}
