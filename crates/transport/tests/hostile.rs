//! Peers that misbehave, between real processes on simulated memory: a wrong secret, handshakes
//! that never finish (slowloris), another user connecting or squatting a name, a peer that stops
//! in the middle of a message. None may make `accept` fail, delay a legitimate peer, or hang.
//!
//! Another user: as root the tests run the peer as `nobody` (uid 65534) with `setpriv`; as any
//! other user they cannot, say so on stderr, and check the same refusal through a connection
//! that fails the same step (`gate::tests::another_user_is_refused` checks the rule itself).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use transport::device::{self, Device, DeviceBuffer, DeviceKind};
use transport::{Address, Connection, Listener, Options, SECRET_ENV, Secret, TransferPath, TransportError};

const CHUNK: usize = 64 << 10;
const NOBODY: u32 = 65534;

fn unique_name(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("gpucluster-hostile-{}-{what}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn peer_binary() -> String {
    std::env::var("TRANSPORT_PEER").unwrap_or_else(|_| env!("CARGO_BIN_EXE_transport-peer").to_owned())
}

fn is_root() -> bool {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() == 0 }
}

struct Peer(Child);

impl Peer {
    fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as libc::pid_t, signal) };
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn path_arg(path: TransferPath) -> &'static str {
    match path {
        TransferPath::CudaIpc => "cuda-ipc",
        TransferPath::HostStaged => "host-staged",
        TransferPath::Tcp => "tcp",
    }
}

/// A copy of the peer binary that `nobody` can run (the build directory may be closed to it),
/// removed when dropped.
struct NobodysPeer(std::path::PathBuf);

impl NobodysPeer {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(unique_name("nobody"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let copy = dir.join("transport-peer");
        std::fs::copy(peer_binary(), &copy).expect("copy the peer");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self(dir)
    }
}

impl Drop for NobodysPeer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The peer command; with `as_nobody`, run as uid 65534 (root only).
fn peer_command(
    address: &Address,
    path: TransferPath,
    secret: Option<&Secret>,
    role: &[&str],
    as_nobody: Option<&NobodysPeer>,
) -> Command {
    let mut cmd = match as_nobody {
        Some(copy) => {
            let mut cmd = Command::new("setpriv");
            cmd.args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups"]);
            cmd.arg(copy.0.join("transport-peer"));
            cmd
        }
        None => Command::new(peer_binary()),
    };
    cmd.args(["--device", "sim", "--address", &address.to_string(), "--path", path_arg(path)]);
    cmd.args(["--slots", "4", "--chunk", &CHUNK.to_string()]);
    if let Some(s) = secret {
        cmd.env(SECRET_ENV, s.to_hex());
    }
    cmd.args(role).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

fn spawn(cmd: &mut Command) -> Peer {
    Peer(cmd.spawn().expect("spawn transport-peer"))
}

fn options(path: TransferPath, secret: Option<Secret>) -> Options {
    Options { path, slots: 4, chunk: CHUNK, secret, ..Options::default() }
}

fn listen(path: TransferPath, options: Options) -> (Arc<dyn Device>, Listener, Option<Secret>) {
    let device = device::open(DeviceKind::Simulated).expect("device");
    let address = match path {
        TransferPath::Tcp => Address::Tcp("127.0.0.1:0".into()),
        _ => Address::Local(unique_name("listen")),
    };
    let secret = options.secret.clone();
    let listener = Listener::bind(&address, device.clone(), options).expect("bind");
    (device, listener, secret)
}

fn eventually(what: &str, within: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Connects and sends the first `bytes` of a handshake, then waits (the caller holds it open).
fn slowloris(address: &Address, bytes: usize) -> Box<dyn std::any::Any> {
    match address {
        Address::Tcp(a) => {
            let mut s = TcpStream::connect(a).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut challenge = [0u8; 32];
            let _ = s.read_exact(&mut challenge);
            let _ = s.write_all(&vec![0u8; bytes]);
            Box::new(s)
        }
        Address::Local(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
            let mut s = UnixStream::connect_addr(&addr).expect("connect");
            let _ = s.write_all(&vec![0u8; bytes]);
            Box::new(s)
        }
    }
}

#[test]
fn a_wrong_secret_is_refused_on_both_sides_and_never_fails_accept() {
    let right = Secret::random().expect("secret");
    let (device, listener, _) = listen(TransferPath::Tcp, options(TransferPath::Tcp, Some(right.clone())));
    let wrong = options(TransferPath::Tcp, Some(Secret::random().expect("secret")));
    let err = transport::connect_blocking(listener.address(), device.clone(), &wrong).expect_err("wrong secret");
    assert!(matches!(err, TransportError::Authentication(_)), "{err}");
    let err = listener.accept_timeout(Duration::from_millis(300)).expect_err("nothing to accept");
    assert!(matches!(err, TransportError::Timeout(_)), "{err}");
    let refused = listener.refused();
    assert_eq!(refused.count, 1, "{refused:?}");
    assert!(refused.reasons[0].contains("does not hold the cluster's secret"), "{refused:?}");
    // The listener goes on: the legitimate peer is accepted.
    let _peer = spawn(&mut peer_command(listener.address(), TransferPath::Tcp, Some(&right), &["echo", "10"], None));
    let conn = listener.accept_timeout(Duration::from_secs(5)).expect("the legitimate peer");
    assert_eq!(conn.path(), TransferPath::Tcp);
    assert!(Secret::new(vec![1u8; 8]).is_err(), "short secrets are refused");
    assert!(Secret::from_hex("xyz").is_err());
}

#[test]
fn slow_handshakes_do_not_delay_a_legitimate_peer() {
    for path in [TransferPath::Tcp, TransferPath::HostStaged] {
        let secret = (path == TransferPath::Tcp).then(|| Secret::random().expect("secret"));
        // Fewer handshake places than slow peers: the oldest slow ones are dropped to make room.
        let opts = Options { max_handshakes: 16, ..options(path, secret.clone()) };
        let (_device, listener, secret) = listen(path, opts);
        let slow: Vec<_> = (0..40).map(|_| slowloris(listener.address(), 10)).collect();
        let started = Instant::now();
        let _peer = spawn(&mut peer_command(listener.address(), path, secret.as_ref(), &["echo", "10"], None));
        let conn = listener.accept_timeout(Duration::from_secs(4)).expect("the legitimate peer, despite 40 slow ones");
        // Starting the peer process is most of this.
        assert!(started.elapsed() < Duration::from_millis(1500), "{path:?}: accepted after {:?}", started.elapsed());
        assert_eq!(conn.path(), path);
        eventually("the oldest slow peers were dropped", Duration::from_secs(2), || listener.refused().count >= 24);
        drop(slow);
    }
}

#[test]
fn a_handshake_that_never_finishes_is_dropped_at_its_deadline() {
    let secret = Secret::random().expect("secret");
    let opts = Options { handshake_timeout: Duration::from_millis(300), ..options(TransferPath::Tcp, Some(secret)) };
    let (_device, listener, _) = listen(TransferPath::Tcp, opts);
    let mut slow = TcpStream::connect(listener.address().to_string().trim_start_matches("tcp:")).expect("connect");
    let mut challenge = [0u8; 32];
    slow.read_exact(&mut challenge).expect("challenge");
    slow.write_all(&[0u8; 10]).expect("10 bytes");
    let t = Instant::now();
    // The listener closes it after its deadline: our read sees the end.
    slow.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let n = slow.read(&mut challenge).expect("closed, not timed out");
    assert_eq!(n, 0);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    eventually("counted", Duration::from_secs(1), || listener.refused().count == 1);
    assert!(listener.refused().reasons[0].contains("did not finish its handshake"), "{:?}", listener.refused());
}

#[test]
fn another_user_cannot_connect_to_a_local_listener() {
    let (_device, listener, _) = listen(TransferPath::HostStaged, options(TransferPath::HostStaged, None));
    if is_root() {
        let nobody = NobodysPeer::new();
        let out = peer_command(listener.address(), TransferPath::HostStaged, None, &["echo", "10"], Some(&nobody))
            .output()
            .expect("run the peer as nobody");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The stranger refuses us too (we are not its user), before it sends anything.
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("authentication failed"), "{stderr}");
        eventually("the stranger is refused", Duration::from_secs(2), || listener.refused().count == 1);
        let refused = listener.refused();
        assert!(refused.reasons[0].contains(&format!("user {NOBODY}, not 0")), "{refused:?}");
    } else {
        eprintln!(
            "not root: cannot run a peer as another user; checking that a connection refused at the \
             same step (before its setup) leaves accept alone instead"
        );
        let Address::Local(name) = listener.address() else { unreachable!("a local listener") };
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let mut s = UnixStream::connect_addr(&addr).expect("connect");
        s.write_all(&[0xffu8; 16]).expect("a hello that is not gpucluster's");
        eventually("refused", Duration::from_secs(2), || listener.refused().count == 1);
    }
    let err = listener.accept_timeout(Duration::from_millis(200)).expect_err("nothing accepted");
    assert!(matches!(err, TransportError::Timeout(_)), "{err}");
}

#[test]
fn a_squatted_name_fails_fast_instead_of_hanging() {
    let device = device::open(DeviceKind::Simulated).expect("device");
    let quick = Options { handshake_timeout: Duration::from_millis(500), ..options(TransferPath::HostStaged, None) };
    // Someone of our own user holds the name and never answers: a timeout, not a hang.
    let name = Address::Local(unique_name("squat-self"));
    let _squatter = spawn(&mut peer_command(&name, TransferPath::HostStaged, None, &["squat"], None));
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let err = transport::connect_blocking(&name, device.clone(), &quick).expect_err("nobody answers");
    assert!(matches!(err, TransportError::Timeout(_)), "{err}");
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    if is_root() {
        // Another user holds it: refused at once, before a byte is sent.
        let name = Address::Local(unique_name("squat-nobody"));
        let nobody = NobodysPeer::new();
        let _squatter = spawn(&mut peer_command(&name, TransferPath::HostStaged, None, &["squat"], Some(&nobody)));
        let t = Instant::now();
        let err = loop {
            match transport::connect_blocking(&name, device.clone(), &options(TransferPath::HostStaged, None)) {
                // The squatter may not have bound the name yet.
                Err(TransportError::Io { .. }) if t.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => break e,
                Ok(_) => panic!("connected to another user's socket"),
            }
        };
        assert!(matches!(&err, TransportError::Authentication(m) if m.contains(&format!("user {NOBODY}"))), "{err}");
        let t = Instant::now();
        let _ = transport::connect_blocking(&name, device, &options(TransferPath::HostStaged, None));
        assert!(t.elapsed() < Duration::from_millis(200), "the refusal took {:?}", t.elapsed());
    } else {
        eprintln!("not root: the squatter of another user is not tried (only our own user's)");
    }
}

fn connect_pair(path: TransferPath, stall: Duration, role: &[&str]) -> (Arc<dyn Device>, Connection, Peer) {
    let secret = (path == TransferPath::Tcp).then(|| Secret::random().expect("secret"));
    let opts = Options { stall_timeout: stall, ..options(path, secret.clone()) };
    let (device, listener, secret) = listen(path, opts);
    let peer = spawn(&mut peer_command(listener.address(), path, secret.as_ref(), role, None));
    let conn = listener.accept_timeout(Duration::from_secs(5)).expect("accept");
    (device, conn, peer)
}

#[test]
fn a_peer_that_stops_mid_message_is_a_timeout_within_the_stall_bound() {
    let stall = Duration::from_millis(400);
    // Receiving: the peer stops after the first part of a message larger than the ring (or the
    // socket buffers) has arrived.
    for (path, size) in [(TransferPath::HostStaged, 40 * CHUNK), (TransferPath::Tcp, 64 << 20)] {
        let (device, conn, peer) = connect_pair(path, stall, &["ready-then-send", &size.to_string()]);
        let buf = DeviceBuffer::new(&device, size).expect("buffer");
        // The peer's first message says it is up with its buffer ready; the big one follows at
        // once (a peer still setting up when stopped would be idle, not mid-message).
        let ready = conn.recv_blocking_timeout(&buf, Duration::from_secs(30)).expect("ready");
        assert_eq!(ready.len, 8);
        std::thread::sleep(Duration::from_millis(200));
        peer.signal(libc::SIGSTOP);
        let t = Instant::now();
        // Bounded from outside too, so a regression fails the test rather than hanging it.
        let err = conn.recv_blocking_timeout(&buf, Duration::from_secs(30)).expect_err("the peer stopped");
        assert!(matches!(err, TransportError::Timeout(d) if d == stall), "{path:?}: {err}");
        assert!(t.elapsed() >= stall && t.elapsed() < stall * 4, "{path:?}: after {:?}", t.elapsed());
        // Out of step for good, and it says so rather than misreading the rest.
        let err = conn.recv_blocking(&buf).expect_err("unusable");
        assert!(err.to_string().contains("unusable"), "{path:?}: {err}");
    }
    // Sending: the peer stops taking a message it has begun to take.
    // cuda-ipc: past the size it sends host-staged, so that it waits for the peer's copy.
    for (path, size) in [
        (TransferPath::HostStaged, 40 * CHUNK),
        (TransferPath::CudaIpc, 2 * transport::EAGER_MAX),
        (TransferPath::Tcp, 64 << 20),
    ] {
        let (device, conn, peer) = connect_pair(path, stall, &["echo", &size.to_string()]);
        let buf = DeviceBuffer::new(&device, size).expect("buffer");
        peer.signal(libc::SIGSTOP);
        let t = Instant::now();
        let err = conn.send_blocking(1, &buf, size).expect_err("the peer stopped");
        assert!(matches!(err, TransportError::Timeout(d) if d == stall), "{path:?}: {err}");
        assert!(t.elapsed() < stall * 4 + Duration::from_secs(1), "{path:?}: after {:?}", t.elapsed());
    }
}

#[test]
fn abort_ends_a_receive_and_a_send_under_way_from_another_thread() {
    for path in [TransferPath::HostStaged, TransferPath::CudaIpc, TransferPath::Tcp] {
        // A receive waiting (unbounded) for a message that never comes.
        let (device, conn, _peer) = connect_pair(path, Duration::from_secs(30), &["echo", "100000"]);
        let buf = Arc::new(DeviceBuffer::new(&device, 100_000).expect("buffer"));
        let waiting = {
            let (conn, buf) = (conn.clone(), buf.clone());
            std::thread::spawn(move || conn.recv_blocking(&buf))
        };
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        conn.abort();
        eventually("the receive ends", Duration::from_secs(2), || waiting.is_finished());
        let err = waiting.join().expect("join").expect_err("aborted");
        assert!(matches!(err, TransportError::PeerGone(_)), "{path:?}: {err}");
        assert!(t.elapsed() < Duration::from_secs(1), "{path:?}: after {:?}", t.elapsed());
        let err = conn.send_blocking(1, &buf, 100_000).expect_err("and every later call");
        assert!(matches!(err, TransportError::PeerGone(_)), "{path:?}: {err}");
    }
    // A send the peer stopped taking (it would wait for the stall bound, 30 s, without abort).
    for (path, size) in [(TransferPath::HostStaged, 40 * CHUNK), (TransferPath::Tcp, 64 << 20)] {
        let (device, conn, peer) = connect_pair(path, Duration::from_secs(30), &["echo", &size.to_string()]);
        let buf = Arc::new(DeviceBuffer::new(&device, size).expect("buffer"));
        peer.signal(libc::SIGSTOP);
        let sending = {
            let (conn, buf) = (conn.clone(), buf.clone());
            std::thread::spawn(move || conn.send_blocking(1, &buf, size))
        };
        std::thread::sleep(Duration::from_millis(200));
        conn.abort();
        eventually("the send ends", Duration::from_secs(2), || sending.is_finished());
        let err = sending.join().expect("join").expect_err("aborted");
        assert!(matches!(err, TransportError::PeerGone(_)), "{path:?}: {err}");
    }
}

#[test]
fn waiting_for_the_next_message_can_time_out_and_the_connection_goes_on() {
    for path in [TransferPath::HostStaged, TransferPath::Tcp] {
        let (device, conn, _peer) = connect_pair(path, Duration::from_millis(400), &["echo", "100000"]);
        let buf = DeviceBuffer::new(&device, 100_000).expect("buffer");
        // Idle for longer than the stall bound: waiting for the next message is not a stall.
        std::thread::sleep(Duration::from_millis(600));
        let t = Instant::now();
        let err = conn.recv_blocking_timeout(&buf, Duration::from_millis(200)).expect_err("nothing sent");
        assert!(matches!(err, TransportError::Timeout(d) if d == Duration::from_millis(200)), "{path:?}: {err}");
        assert!(t.elapsed() >= Duration::from_millis(200) && t.elapsed() < Duration::from_secs(1), "{path:?}");
        conn.send_blocking(9, &buf, 100_000).expect("send");
        let r = conn.recv_blocking_timeout(&buf, Duration::from_secs(5)).expect("the echo");
        assert_eq!((r.tag, r.len), (9, 100_000), "{path:?}");
    }
}

#[test]
fn the_peer_refuses_a_secret_on_its_command_line() {
    // Every user can read a command line in /proc; the secret travels in the environment.
    let secret = Secret::random().expect("secret");
    let out = Command::new(peer_binary())
        .args(["--device", "sim", "--address", "tcp:127.0.0.1:9", "--path", "tcp", "--secret", &secret.to_hex()])
        .args(["echo", "10"])
        .output()
        .expect("run the peer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--secret is refused") && stderr.contains(SECRET_ENV), "{stderr}");
}

#[test]
fn a_peer_that_stalls_during_setup_holds_up_nobody_and_is_dropped_at_its_deadline() {
    let opts = Options { handshake_timeout: Duration::from_millis(1500), ..options(TransferPath::CudaIpc, None) };
    let (_device, listener, _) = listen(TransferPath::CudaIpc, opts);
    let Address::Local(name) = listener.address() else { unreachable!("a local listener") };
    // Our own user, a proper hello asking for cuda-ipc, the ring's descriptor taken, and then
    // silence in the middle of the IPC probe.
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
    let mut staller = UnixStream::connect_addr(&addr).expect("connect");
    let hello: Vec<u8> = [0x4743_4c31u64, 1].iter().flat_map(|w| w.to_le_bytes()).collect();
    staller.write_all(&hello).expect("hello");
    let (_ring, _) = transport::shm::recv_fd(&staller, 16).expect("the ring's descriptor");
    let started = Instant::now();
    let _peer = spawn(&mut peer_command(listener.address(), TransferPath::CudaIpc, None, &["echo", "10"], None));
    let conn = listener.accept_timeout(Duration::from_secs(3)).expect("the legitimate peer");
    assert_eq!(conn.path(), TransferPath::CudaIpc);
    // Well before the staller's deadline.
    assert!(started.elapsed() < Duration::from_millis(1200), "held up for {:?}", started.elapsed());
    eventually("the staller is dropped", Duration::from_secs(3), || listener.refused().count == 1);
    assert!(listener.refused().reasons[0].contains("did not answer within 1.5s"), "{:?}", listener.refused());
    // Its connection was closed.
    staller.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut rest = Vec::new();
    let _ = staller.read_to_end(&mut rest);
}
