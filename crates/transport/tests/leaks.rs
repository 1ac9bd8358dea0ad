//! Nothing is left behind by a connection: no shared-memory name, no descriptor. A test binary
//! of its own, so that no other test opens descriptors while this one counts them.

use std::process::{Command, Stdio};
use std::sync::Arc;

use transport::device::{self, Device, DeviceBuffer, DeviceKind};
use transport::{Address, Listener, Options, Path, Secret};

fn shm_entries() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn round_trip(device: &Arc<dyn Device>, path: Path) {
    let secret = Secret::random().expect("secret");
    let (address, secret) = match path {
        Path::Tcp => (Address::Tcp("127.0.0.1:0".into()), Some(secret)),
        _ => (Address::Local(format!("gpucluster-leaks-{}-{}", std::process::id(), path.name())), None),
    };
    let options = Options { path, slots: 4, chunk: 64 << 10, secret: secret.clone() };
    let listener = Listener::bind(&address, device.clone(), options).expect("bind");
    let peer = std::env::var("TRANSPORT_PEER").unwrap_or_else(|_| env!("CARGO_BIN_EXE_transport-peer").to_owned());
    let mut cmd = Command::new(peer);
    cmd.args(["--device", "sim", "--address", &listener.address().to_string(), "--path", path.name()]);
    cmd.args(["--slots", "4", "--chunk", &(64 << 10).to_string()]);
    if let Some(s) = &secret {
        cmd.args(["--secret", &s.to_hex()]);
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
    round_trip(&device, Path::HostStaged);
    let before = shm_entries();
    let fds = open_fds();
    for _ in 0..3 {
        for path in [Path::HostStaged, Path::CudaIpc, Path::Tcp] {
            round_trip(&device, path);
        }
    }
    let after = shm_entries();
    assert!(after.iter().all(|e| before.contains(e) || !e.contains("gpucluster")), "{after:?}");
    assert_eq!(open_fds(), fds, "descriptors leaked");
}
