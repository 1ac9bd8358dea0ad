//! The gate in front of every listening socket (a `Listener`'s, the rendezvous'):
//! accepting and authenticating connections without letting any peer hold up another.
//!
//! One thread per listening socket accepts connections and runs the pre-authentication step of
//! all of them at once, on non-blocking sockets under one `poll`:
//! - local (`Check::Local`): the peer's user is checked with `SO_PEERCRED` as it is accepted, then
//!   its 16-byte hello is collected;
//! - TCP (`Check::Tcp`): the listener's half of the HMAC challenge (see `secret.rs`): the nonce goes
//!   out as the connection is accepted, the answer is collected and checked, the proof goes back.
//!
//! No thread is spent on a connection that has not authenticated. At most `max_pending` of them
//! are held; past that the *oldest* is dropped, so a flood of idle connections cannot lock out a
//! legitimate peer, whose handshake takes microseconds. Each has a deadline. What passes is
//! handed to the owner's callback, which finishes the setup on [`Workers`]: a bounded set of
//! threads, each step under the same [`Deadline`]. Every connection that fails is counted in
//! [`Refusals`], never returned as an error, so a stranger cannot change anyone's outcome.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::TransportError;
use crate::secret::{self, Secret};
use crate::socket::{self, Deadline, os_error, set_nonblocking};

/// Connections turned away before they were set up: strangers, peers without the secret,
/// peers too slow to finish their handshake, or connections dropped to make room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusals {
    /// How many.
    pub count: u64,
    /// Why, for the first [`Refusals::KEPT`] of them.
    pub reasons: Vec<String>,
}

impl Refusals {
    /// How many reasons are kept (the count goes on).
    pub const KEPT: usize = 16;
}

/// Where a gate and its workers record refusals.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog(Mutex<Refusals>);

impl RefusalLog {
    pub(crate) fn record(&self, reason: impl fmt::Display) {
        if let Ok(mut r) = self.0.lock() {
            r.count += 1;
            if r.reasons.len() < Refusals::KEPT {
                r.reasons.push(reason.to_string());
            }
        }
    }

    pub(crate) fn get(&self) -> Refusals {
        self.0.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// The pre-authentication step a gate runs.
#[derive(Debug, Clone)]
pub(crate) enum Check {
    /// Same user (`SO_PEERCRED`), then a 16-byte hello.
    Local,
    /// The listener's half of the HMAC challenge.
    Tcp(Secret),
}

/// The size of a local hello.
pub(crate) const HELLO_BYTES: usize = 16;

/// A connection that passed the gate, blocking again.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) socket: OwnedFd,
    pub(crate) deadline: Deadline,
    /// The peer's hello (local connections; zeros for TCP).
    pub(crate) hello: [u8; HELLO_BYTES],
}

/// How long and how many.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) max_pending: usize,
}

/// The accepting thread of one listening socket.
pub(crate) struct Gate {
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate").field("running", &self.thread.is_some()).finish()
    }
}

impl Gate {
    /// Starts accepting on `listener` (a bound, listening socket), handing every connection that
    /// passes `check` to `admit`.
    pub(crate) fn start(
        listener: OwnedFd,
        check: Check,
        limits: Limits,
        refusals: Arc<RefusalLog>,
        admit: impl FnMut(Admitted) + Send + 'static,
    ) -> Result<Self, TransportError> {
        set_nonblocking(listener.as_raw_fd(), true)?;
        // A deep accept queue absorbs a burst while this thread is not scheduled (calling listen
        // again on a listening socket only resizes it; the kernel caps it at somaxconn).
        // SAFETY: plain call on our listening socket.
        unsafe { libc::listen(listener.as_raw_fd(), 4096) };
        // SAFETY: plain call; the descriptor is owned at once.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(os_error("eventfd"));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(raw) };
        let woken = wake.try_clone().map_err(TransportError::io("dup eventfd"))?;
        let limits = Limits { max_pending: limits.max_pending.max(1), ..limits };
        let mut reactor = Reactor { listener, wake: woken, check, limits, refusals, admit, pending: VecDeque::new() };
        let thread = std::thread::Builder::new()
            .name("gpucluster-gate".into())
            .spawn(move || reactor.run())
            .map_err(TransportError::io("spawn the accepting thread"))?;
        Ok(Self { wake, thread: Some(thread) })
    }

    /// Stops accepting and closes every connection still in its handshake; waits for the thread.
    pub(crate) fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writing 8 bytes to our own eventfd.
            unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
            let _ = thread.join();
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Pending {
    socket: OwnedFd,
    deadline: Instant,
    buf: [u8; secret::ANSWER_BYTES],
    have: usize,
    need: usize,
    nonce: [u8; secret::NONCE],
}

enum Step {
    Wait,
    Done,
    Refuse(String),
}

struct Reactor<F> {
    listener: OwnedFd,
    wake: OwnedFd,
    check: Check,
    limits: Limits,
    refusals: Arc<RefusalLog>,
    admit: F,
    /// Oldest first.
    pending: VecDeque<Pending>,
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

fn send_all_now(fd: RawFd, bytes: &[u8]) -> bool {
    // SAFETY: sending from a live buffer; MSG_DONTWAIT never blocks, MSG_NOSIGNAL never raises
    // SIGPIPE.
    let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    // A fresh socket's send buffer has room for a few dozen bytes; anything less is a refusal.
    n == bytes.len() as isize
}

impl<F: FnMut(Admitted)> Reactor<F> {
    fn run(&mut self) {
        loop {
            let now = Instant::now();
            let total = self.limits.timeout;
            let before = self.pending.len();
            self.pending.retain(|p| p.deadline > now);
            for _ in self.pending.len()..before {
                self.refusals.record(format!("a peer did not finish its handshake within {total:?}"));
            }
            let wait = self
                .pending
                .iter()
                .map(|p| p.deadline.saturating_duration_since(now).as_millis().saturating_add(1))
                .min()
                .map_or(-1, |ms| libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX));
            let mut fds = Vec::with_capacity(2 + self.pending.len());
            fds.push(pollfd(self.wake.as_raw_fd()));
            fds.push(pollfd(self.listener.as_raw_fd()));
            fds.extend(self.pending.iter().map(|p| pollfd(p.socket.as_raw_fd())));
            // SAFETY: `fds` is a live array of that many pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };
            if n < 0 {
                if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            if fds[0].revents != 0 {
                return;
            }
            if fds[2..].iter().any(|f| f.revents != 0) {
                let pending = std::mem::take(&mut self.pending);
                for (mut p, f) in pending.into_iter().zip(&fds[2..]) {
                    if f.revents == 0 {
                        self.pending.push_back(p);
                        continue;
                    }
                    match self.step(&mut p) {
                        Step::Wait => self.pending.push_back(p),
                        Step::Refuse(why) => self.refusals.record(why),
                        Step::Done => self.hand_over(p),
                    }
                }
            }
            if fds[1].revents != 0 {
                self.accept_all();
            }
        }
    }

    /// Reads what the peer sent so far; judges it once complete.
    fn step(&self, p: &mut Pending) -> Step {
        let fd = p.socket.as_raw_fd();
        let want = p.need - p.have;
        // SAFETY: reading into our own buffer within its bounds, without blocking.
        let n = unsafe { libc::recv(fd, p.buf[p.have..].as_mut_ptr().cast(), want, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                Step::Wait
            } else {
                Step::Refuse(format!("a connection failed during its handshake: {e}"))
            };
        }
        if n == 0 {
            return Step::Refuse("a peer closed its connection before authenticating".into());
        }
        p.have += n as usize;
        if p.have < p.need {
            return Step::Wait;
        }
        match &self.check {
            Check::Local => Step::Done,
            Check::Tcp(secret) => match secret::check_answer(secret, &p.nonce, &p.buf[..p.need]) {
                Ok(proof) if send_all_now(fd, &proof) => Step::Done,
                Ok(_) => Step::Refuse("a peer's connection could not take our proof".into()),
                Err(e) => Step::Refuse(format!("a TCP peer was refused: {e}")),
            },
        }
    }

    fn hand_over(&mut self, p: Pending) {
        if let Err(e) = set_nonblocking(p.socket.as_raw_fd(), false) {
            self.refusals.record(format!("a connection could not be set up: {e}"));
            return;
        }
        let mut hello = [0u8; HELLO_BYTES];
        if matches!(self.check, Check::Local) {
            hello.copy_from_slice(&p.buf[..HELLO_BYTES]);
        }
        let deadline = Deadline::at(p.deadline, self.limits.timeout);
        (self.admit)(Admitted { socket: p.socket, deadline, hello });
    }

    fn accept_all(&mut self) {
        // A bounded batch, so that a flood of connections cannot starve the pending ones.
        for _ in 0..256 {
            // SAFETY: accepting on our listening socket; the new descriptor is owned at once.
            let raw = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if raw < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => return,
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        // Out of descriptors: make room, and do not spin on a listener that stays
                        // readable.
                        if self.pending.pop_front().is_some() {
                            self.refusals.record("a connection was dropped: this process ran out of descriptors");
                        }
                        std::thread::sleep(Duration::from_millis(5));
                        return;
                    }
                    // The connection went away before we took it (ECONNABORTED, EPROTO...).
                    _ => continue,
                }
            }
            // SAFETY: a fresh descriptor that nothing else owns.
            let socket = unsafe { OwnedFd::from_raw_fd(raw) };
            match self.open(socket) {
                Ok(p) => {
                    if self.pending.len() >= self.limits.max_pending && self.pending.pop_front().is_some() {
                        self.refusals.record(format!(
                            "a connection was dropped: more than {} were waiting to authenticate",
                            self.limits.max_pending
                        ));
                    }
                    self.pending.push_back(p);
                }
                Err(why) => self.refusals.record(why),
            }
        }
    }

    /// The first step of a fresh connection.
    fn open(&self, socket: OwnedFd) -> Result<Pending, String> {
        let deadline = Instant::now() + self.limits.timeout;
        let mut p = Pending {
            socket,
            deadline,
            buf: [0; secret::ANSWER_BYTES],
            have: 0,
            need: HELLO_BYTES,
            nonce: [0; secret::NONCE],
        };
        match &self.check {
            Check::Local => {
                let uid =
                    socket::peer_uid(p.socket.as_fd()).map_err(|e| format!("a local connection was refused: {e}"))?;
                socket::check_user(uid, socket::my_uid())
                    .map_err(|e| format!("a local connection was refused: {e}"))?;
            }
            Check::Tcp(_) => {
                p.nonce = secret::random_bytes().map_err(|e| format!("a TCP connection was refused: {e}"))?;
                if !send_all_now(p.socket.as_raw_fd(), &p.nonce) {
                    return Err("a TCP peer's connection could not take our challenge".into());
                }
                p.need = secret::ANSWER_BYTES;
            }
        }
        Ok(p)
    }
}

/// A job for [`Workers`]; it may [`Detach`] its connection before handing it out.
pub(crate) type Job = Box<dyn FnOnce(&Detach<'_>) + Send>;

/// A running job's hold on its connection's registration with the [`Workers`].
pub(crate) struct Detach<'a> {
    shared: &'a WorkShared,
    id: u64,
}

impl Detach<'_> {
    /// Stops watching the job's connection, so that closing the workers no longer shuts it
    /// down: call it before handing the connection to someone else. `false` if the workers are
    /// already closing (the connection may be shut down already: drop it).
    pub(crate) fn detach(&self) -> bool {
        match self.shared.state.lock() {
            Ok(mut s) => {
                s.sockets.remove(&self.id);
                !s.closing
            }
            Err(_) => false,
        }
    }
}

#[derive(Default)]
struct WorkState {
    queue: VecDeque<(u64, Job)>,
    running: usize,
    closing: bool,
    /// Duplicates of the sockets of jobs under way, to shut down when the workers close.
    sockets: HashMap<u64, OwnedFd>,
    next: u64,
}

struct WorkShared {
    state: Mutex<WorkState>,
    idle: Condvar,
    max: usize,
}

/// At most `max` threads, started on demand, that run jobs in order; each job serves one
/// connection, whose socket is shut down if the workers close before the job ends.
#[derive(Clone)]
pub(crate) struct Workers(Arc<WorkShared>);

impl fmt::Debug for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers").field("max", &self.0.max).finish()
    }
}

/// Counts a worker thread out if a job panics (a thread that finds the queue empty counts
/// itself out under the same lock, so that `submit` never leaves a job without a thread).
struct Running(Arc<WorkShared>, bool);

impl Drop for Running {
    fn drop(&mut self) {
        if !self.1
            && let Ok(mut s) = self.0.state.lock()
        {
            s.running -= 1;
        }
        self.0.idle.notify_all();
    }
}

impl Workers {
    pub(crate) fn new(max: usize) -> Self {
        Self(Arc::new(WorkShared { state: Mutex::new(WorkState::default()), idle: Condvar::new(), max: max.max(1) }))
    }

    /// Queues `job`, which serves the connection of which `socket` is a duplicate; starts a thread
    /// if fewer than `max` run. Once the workers are closing, the job is dropped (and with it its
    /// connection).
    pub(crate) fn submit(&self, socket: Option<OwnedFd>, job: Job) {
        let Ok(mut s) = self.0.state.lock() else { return };
        if s.closing {
            return;
        }
        let id = s.next;
        s.next += 1;
        if let Some(socket) = socket {
            s.sockets.insert(id, socket);
        }
        s.queue.push_back((id, job));
        if s.running < self.0.max {
            s.running += 1;
            let shared = self.0.clone();
            let spawned = std::thread::Builder::new().name("gpucluster-setup".into()).spawn(move || work(shared));
            if spawned.is_err() {
                // Counted out again; the queued job waits for a running worker.
                s.running -= 1;
            }
        }
    }

    /// Drops queued jobs, shuts down the connections of running ones, and waits up to `wait`
    /// for them to end.
    pub(crate) fn close(&self, wait: Duration) {
        let Ok(mut s) = self.0.state.lock() else { return };
        s.closing = true;
        s.queue.clear();
        for socket in s.sockets.values() {
            // SAFETY: shutting down a socket we hold a duplicate of; the job sees EOF or EPIPE.
            unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR) };
        }
        let deadline = Instant::now() + wait;
        while s.running > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            match self.0.idle.wait_timeout(s, left) {
                Ok((guard, _)) => s = guard,
                Err(_) => return,
            }
        }
    }
}

fn work(shared: Arc<WorkShared>) {
    let mut running = Running(shared.clone(), false);
    loop {
        let (id, job) = {
            let Ok(mut s) = shared.state.lock() else { return };
            match s.queue.pop_front() {
                Some(next) => next,
                None => {
                    s.running -= 1;
                    running.1 = true;
                    return;
                }
            }
        };
        job(&Detach { shared: &shared, id });
        if let Ok(mut s) = shared.state.lock() {
            s.sockets.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_bounded_and_close_promptly() {
        let workers = Workers::new(2);
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..6 {
            let (started, peak) = (started.clone(), peak.clone());
            let mut socket = a.try_clone().expect("dup");
            workers.submit(
                a.try_clone().ok().map(OwnedFd::from),
                Box::new(move |_| {
                    let now = started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    // Blocks until the workers close and shut the socket down.
                    let _ = io::Read::read(&mut socket, &mut [0u8; 1]);
                    started.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2, "two threads at most");
        let t = Instant::now();
        workers.close(Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(1), "closing took {:?}", t.elapsed());
        assert_eq!(workers.0.state.lock().expect("lock").running, 0);
    }
}
