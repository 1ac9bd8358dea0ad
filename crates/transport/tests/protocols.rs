//! The transport between two real processes, on every device backend: simulated memory always,
//! CUDA too when `GPU_TESTS=1` (on a GPU machine). Data is checksummed byte for byte, sizes cross
//! chunk boundaries, and faults (a dying peer, a wrong secret) end in errors, never hangs.
//! Hostile peers (a wrong secret, a slow handshake, another user, a squatted name, a peer that
//! stops mid-message) are in `tests/hostile.rs`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use transport::device::{self, Device, DeviceBuffer, DeviceKind};
use transport::peer::pattern;
use transport::{Address, Listener, Options, Secret, TransferPath, TransportError};

/// The backends every test runs on.
fn backends() -> Vec<DeviceKind> {
    let mut kinds = vec![DeviceKind::Simulated];
    if std::env::var("GPU_TESTS").is_ok_and(|v| v == "1") {
        kinds.push(DeviceKind::Cuda);
    }
    kinds
}

fn device_arg(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Simulated => "sim",
        DeviceKind::Cuda => "cuda",
    }
}

/// A small ring, so that modest sizes cross many chunk boundaries.
const CHUNK: usize = 64 << 10;
const SLOTS: usize = 4;

fn unique_name(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("gpucluster-test-{}-{what}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

struct Peer(Child);

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

fn spawn_peer(address: &Address, device: &str, path: TransferPath, secret: Option<&Secret>, role: &[&str]) -> Peer {
    // TRANSPORT_PEER points at the peer binary where the tests run away from the build (GPU machine).
    let peer = std::env::var("TRANSPORT_PEER").unwrap_or_else(|_| env!("CARGO_BIN_EXE_transport-peer").to_owned());
    let mut cmd = Command::new(peer);
    cmd.args(["--device", device, "--address", &address.to_string(), "--path", path_arg(path)]);
    cmd.args(["--slots", &SLOTS.to_string(), "--chunk", &CHUNK.to_string()]);
    if let Some(s) = secret {
        cmd.env(transport::SECRET_ENV, s.to_hex());
    }
    cmd.args(role).stdin(Stdio::null());
    Peer(cmd.spawn().expect("spawn transport-peer"))
}

struct Setup {
    device: Arc<dyn Device>,
    conn: transport::Connection,
    peer: Peer,
}

fn setup(kind: DeviceKind, path: TransferPath, peer_device: &str, role: &[&str]) -> Setup {
    let device = device::open(kind).expect("device");
    let secret = Secret::random().expect("secret");
    let (address, secret) = match path {
        TransferPath::Tcp => (Address::Tcp("127.0.0.1:0".into()), Some(secret)),
        _ => (Address::Local(unique_name("conn")), None),
    };
    let options = Options { path, slots: SLOTS, chunk: CHUNK, secret: secret.clone(), ..Options::default() };
    let listener = Listener::bind(&address, device.clone(), options).expect("bind");
    let peer = spawn_peer(listener.address(), peer_device, path, secret.as_ref(), role);
    let conn = listener.accept_blocking().expect("accept");
    Setup { device, conn, peer }
}

const SIZES: &[usize] = &[0, 1, 7, 4095, 4096, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17, 10 * CHUNK + 3];

#[test]
fn every_path_echoes_every_size_byte_for_byte() {
    for kind in backends() {
        for path in [TransferPath::HostStaged, TransferPath::CudaIpc, TransferPath::Tcp] {
            let max = *SIZES.iter().max().expect("sizes");
            let s = setup(kind, path, device_arg(kind), &["echo", &max.to_string()]);
            assert_eq!(s.conn.path(), path, "{kind:?}");
            assert_eq!(s.conn.fallback(), None);
            let out = DeviceBuffer::new(&s.device, max).expect("buffer");
            let back = DeviceBuffer::new(&s.device, max).expect("buffer");
            for (i, &size) in SIZES.iter().enumerate() {
                let mut data = vec![0u8; size];
                pattern(7, i as u64, &mut data);
                out.write(&data).expect("write");
                s.conn.send_blocking(1000 + i as u64, &out, size).expect("send");
                let r = s.conn.recv_blocking(&back).expect("recv");
                assert_eq!((r.tag, r.len), (1000 + i as u64, size), "{kind:?} {path:?}");
                let mut got = vec![0u8; size];
                back.read(&mut got).expect("read");
                assert!(got == data, "{kind:?} {path:?}: {size} bytes came back different");
            }
        }
    }
}

#[test]
fn both_directions_at_once() {
    for kind in backends() {
        for path in [TransferPath::HostStaged, TransferPath::CudaIpc, TransferPath::Tcp] {
            let (count, size) = (20usize, 5 * CHUNK + 123);
            let s = setup(kind, path, device_arg(kind), &["duplex", &count.to_string(), &size.to_string()]);
            transport::peer::duplex(&s.conn, &s.device, count, size, 1, 2).expect("duplex here");
            let mut peer = s.peer;
            let status = peer.0.wait().expect("peer exit");
            assert!(status.success(), "{kind:?} {path:?}: the peer saw wrong data ({status})");
        }
    }
}

#[test]
fn async_api_sends_and_receives() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let s = setup(DeviceKind::Simulated, TransferPath::HostStaged, "sim", &["echo", "1000000"]);
    rt.block_on(async {
        let out = Arc::new(DeviceBuffer::new(&s.device, 1_000_000).expect("buffer"));
        let back = Arc::new(DeviceBuffer::new(&s.device, 1_000_000).expect("buffer"));
        let mut data = vec![0u8; 999_999];
        pattern(3, 0, &mut data);
        out.write(&data).expect("write");
        s.conn.send(42, out.clone(), data.len()).await.expect("send");
        let r = s.conn.recv(back.clone()).await.expect("recv");
        assert_eq!((r.tag, r.len), (42, data.len()));
        let mut got = vec![0u8; data.len()];
        back.read(&mut got).expect("read");
        assert!(got == data);
    });
}

#[test]
fn cuda_ipc_falls_back_to_host_staged_across_mig_instances() {
    let s = setup(DeviceKind::Simulated, TransferPath::CudaIpc, "sim-mig", &["echo", "100000"]);
    assert_eq!(s.conn.path(), TransferPath::HostStaged);
    let reason = s.conn.fallback().expect("a reason");
    assert!(reason.contains("GPU instances"), "{reason}");
    let buf = DeviceBuffer::new(&s.device, 100_000).expect("buffer");
    s.conn.send_blocking(5, &buf, 100_000).expect("send");
    assert_eq!(s.conn.recv_blocking(&buf).expect("recv").len, 100_000);
}

#[test]
fn a_peer_that_dies_mid_transfer_is_an_error_within_a_second() {
    for kind in backends() {
        for path in [TransferPath::HostStaged, TransferPath::CudaIpc, TransferPath::Tcp] {
            let size = 40 * CHUNK;
            let s = setup(kind, path, device_arg(kind), &["die-mid-send", &size.to_string()]);
            let buf = DeviceBuffer::new(&s.device, size).expect("buffer");
            let mut peer = s.peer;
            let started = Instant::now();
            // Receive until the peer's death surfaces; it kills itself ~300 ms in.
            let err = loop {
                match s.conn.recv_blocking(&buf) {
                    Ok(_) => continue,
                    Err(e) => break e,
                }
            };
            let died = peer.0.wait().expect("wait");
            assert!(!died.success());
            assert!(matches!(err, TransportError::PeerGone(_)), "{kind:?} {path:?}: {err}");
            assert!(
                started.elapsed() < Duration::from_millis(300 + 1000),
                "{kind:?} {path:?}: took {:?}",
                started.elapsed()
            );
        }
    }
}

#[test]
fn a_message_larger_than_the_buffer_is_an_error() {
    let s = setup(DeviceKind::Simulated, TransferPath::HostStaged, "sim", &["echo", "10000"]);
    let big = DeviceBuffer::new(&s.device, 10_000).expect("buffer");
    let small = DeviceBuffer::new(&s.device, 100).expect("buffer");
    s.conn.send_blocking(1, &big, 10_000).expect("send");
    let err = s.conn.recv_blocking(&small).expect_err("too small");
    assert!(matches!(err, TransportError::BufferTooSmall { needed: 10_000, capacity: 100 }), "{err}");
    let err = s.conn.send_blocking(1, &small, 101).expect_err("len past the buffer");
    assert!(matches!(err, TransportError::BufferTooSmall { .. }), "{err}");
}

#[test]
fn addresses_parse_and_print() {
    for text in ["local:worker-3", "tcp:10.0.0.2:7000", "tcp:[::1]:7000"] {
        assert_eq!(text.parse::<Address>().expect(text).to_string(), text);
    }
    for bad in ["local:", "tcp:nohost", "unix:/tmp/x", ""] {
        assert!(bad.parse::<Address>().is_err(), "{bad}");
    }
}

#[test]
fn a_local_listener_refuses_bad_ring_geometry() {
    let device = device::open(DeviceKind::Simulated).expect("device");
    let options = Options { slots: 1, ..Options::default() };
    let err = Listener::bind(&Address::Local(unique_name("geometry")), device, options).expect_err("1 slot");
    assert!(err.to_string().contains("2 to 64 slots"), "{err}");
}

#[test]
fn callers_can_tell_their_own_mistakes_from_a_peer_breaking_the_protocol() {
    let e = "nonsense".parse::<Address>().expect_err("not an address");
    assert!(matches!(e, TransportError::InvalidArgument(_)), "{e:?}");
    let e = "gpu".parse::<device::WorkerDevice>().expect_err("not a device");
    assert!(matches!(e, TransportError::InvalidArgument(_)), "{e:?}");
    let dev = device::open(DeviceKind::Simulated).expect("simulated device");
    let e = Listener::bind_local("test", dev, Options { slots: 1, ..Options::default() }).expect_err("one slot");
    assert!(matches!(e, TransportError::InvalidArgument(_)), "{e:?}");
    assert!(e.to_string().starts_with("a ring needs"), "the message says what is wrong, unprefixed: {e}");
}
