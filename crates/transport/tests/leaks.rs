//! Nothing is left behind by a connection, set up or refused: no shared-memory name, no
//! descriptor, no thread. A test binary of its own, so that no other test opens descriptors or
//! starts threads while this one counts them.

use std::io::Write;
use std::net::TcpStream;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::device::{self, Device, DeviceBuffer, DeviceKind};
use transport::{Address, Listener, Options, Secret, TransferPath, TransportError};

fn shm_entries() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

/// Waits (briefly) for a count to come back down: a thread that has finished its work may take
/// a moment to be gone from `/proc`.
fn settles_to(what: &str, want: usize, count: impl Fn() -> usize) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while count() != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(count(), want, "{what} leaked");
}

/// Connections that are refused or given up, of every kind, against fresh listeners.
fn refused_rounds(device: &Arc<dyn Device>, rounds: usize) {
    let secret = Secret::random().expect("secret");
    let options = Options { path: TransferPath::Tcp, secret: Some(secret), ..Options::default() };
    let tcp = Listener::bind(&Address::Tcp("127.0.0.1:0".into()), device.clone(), options).expect("bind");
    let name = format!("gpucluster-leaks-refused-{}", std::process::id());
    let local = Listener::bind(&Address::Local(name.clone()), device.clone(), Options::default()).expect("bind");
    let wrong =
        Options { path: TransferPath::Tcp, secret: Some(Secret::random().expect("secret")), ..Options::default() };
    let tcp_address = tcp.address().to_string().trim_start_matches("tcp:").to_owned();
    for _ in 0..rounds {
        let err = transport::connect_blocking(tcp.address(), device.clone(), &wrong).expect_err("wrong secret");
        assert!(matches!(err, TransportError::Authentication(_)), "{err}");
        drop(TcpStream::connect(&tcp_address).expect("connect and hang up"));
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let mut s = UnixStream::connect_addr(&addr).expect("connect");
        let _ = s.write_all(&[0xee; 16]);
        drop(s);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while (tcp.refused().count as usize) < 2 * rounds || (local.refused().count as usize) < rounds {
        assert!(Instant::now() < deadline, "{:?} {:?}", tcp.refused(), local.refused());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn round_trip(device: &Arc<dyn Device>, path: TransferPath) {
    let secret = Secret::random().expect("secret");
    let (address, secret) = match path {
        TransferPath::Tcp => (Address::Tcp("127.0.0.1:0".into()), Some(secret)),
        _ => (Address::Local(format!("gpucluster-leaks-{}-{}", std::process::id(), path.name())), None),
    };
    let options = Options { path, slots: 4, chunk: 64 << 10, secret: secret.clone(), ..Options::default() };
    let listener = Listener::bind(&address, device.clone(), options).expect("bind");
    let peer = std::env::var("TRANSPORT_PEER").unwrap_or_else(|_| env!("CARGO_BIN_EXE_transport-peer").to_owned());
    let mut cmd = Command::new(peer);
    cmd.args(["--device", "sim", "--address", &listener.address().to_string(), "--path", path.name()]);
    cmd.args(["--slots", "4", "--chunk", &(64 << 10).to_string()]);
    if let Some(s) = &secret {
        cmd.env(transport::SECRET_ENV, s.to_hex());
    }
    let mut child = cmd.args(["echo", "300000"]).stdin(Stdio::null()).spawn().expect("peer");
    let conn = listener.accept_blocking().expect("accept");
    let buf = DeviceBuffer::new(device, 300_000).expect("buffer");
    conn.send_blocking(1, &buf, 300_000).expect("send");
    conn.recv_blocking(&buf).expect("recv");
    drop(conn);
    drop(listener);
    let status = child.wait().expect("peer exit");
    assert!(status.success(), "the peer ends cleanly when we close ({status})");
}

#[test]
fn nothing_is_left_behind() {
    let device = device::open(DeviceKind::Simulated).expect("device");
    // One round first, so that lazily opened descriptors (the runtime's, the loader's) exist.
    round_trip(&device, TransferPath::HostStaged);
    refused_rounds(&device, 1);
    let before = shm_entries();
    let fds = open_fds();
    let tasks = threads();
    for _ in 0..3 {
        for path in [TransferPath::HostStaged, TransferPath::CudaIpc, TransferPath::Tcp] {
            round_trip(&device, path);
        }
    }
    refused_rounds(&device, 50);
    let after = shm_entries();
    assert!(after.iter().all(|e| before.contains(e) || !e.contains("gpucluster")), "{after:?}");
    settles_to("descriptors", fds, open_fds);
    settles_to("threads", tasks, threads);
}
