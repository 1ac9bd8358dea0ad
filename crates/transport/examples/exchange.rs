//! Two processes exchanging device buffers through the public API.
//!
//! ```sh
//! cargo run -p transport --example exchange              # simulated device memory
//! cargo run -p transport --example exchange -- --cuda    # CUDA device 0 in both processes
//! ```
//!
//! The parent listens on a local address and starts itself again as the child, which connects.
//! Each sends the other 64 MiB of device memory and checks what arrives; the connection uses
//! `cuda-ipc` where the two processes' devices allow it, else falls back to `host-staged`.

// An example prints what it does.
#![allow(clippy::print_stdout)]

use std::sync::Arc;

use transport::device::{self, DeviceBuffer, DeviceKind};
use transport::{Address, Listener, Options, TransferPath};

const BYTES: usize = 64 << 20;

fn fill(seed: u8) -> Vec<u8> {
    (0..BYTES).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let kind = if args.iter().any(|a| a == "--cuda") { DeviceKind::Cuda } else { DeviceKind::Simulated };
    let device = device::open(kind)?;
    let options = Options { path: TransferPath::CudaIpc, ..Options::default() };

    // The child connects to the address its parent gave it; the parent listens.
    let (conn, me, peer) = match args.iter().position(|a| a == "--child") {
        Some(i) => {
            let address: Address = args[i + 1].parse()?;
            (transport::connect(address, device.clone(), options).await?, 2u8, 1u8)
        }
        None => {
            // An unguessable name: `local:exchange-example-<128 random bits>`.
            let listener = Arc::new(Listener::bind_local("exchange-example", device.clone(), options)?);
            let mut child = std::process::Command::new(std::env::current_exe()?)
                .args(args.iter().skip(1).filter(|a| *a == "--cuda"))
                .args(["--child", &listener.address().to_string()])
                .spawn()?;
            let conn = listener.accept().await?;
            let result = exchange(&conn, &device, 1, 2).await;
            let status = child.wait()?;
            result?;
            println!("parent: done; child exited with {status}");
            return Ok(());
        }
    };
    exchange(&conn, &device, me, peer).await?;
    println!("child: done");
    Ok(())
}

/// Sends our buffer and receives the peer's at the same time, then checks it.
async fn exchange(
    conn: &transport::Connection,
    device: &Arc<dyn device::Device>,
    me: u8,
    peer: u8,
) -> Result<(), Box<dyn std::error::Error>> {
    let outgoing = Arc::new(DeviceBuffer::new(device, BYTES)?);
    outgoing.write(&fill(me))?;
    let incoming = Arc::new(DeviceBuffer::new(device, BYTES)?);
    let (sent, received) = tokio::join!(conn.send(u64::from(me), outgoing, BYTES), conn.recv(incoming.clone()));
    sent?;
    let received = received?;
    let mut host = vec![0u8; BYTES];
    incoming.read(&mut host)?;
    let ok = received.tag == u64::from(peer) && host == fill(peer);
    println!(
        "process {me}: {} via {}{}: received {} bytes from process {peer}, {}",
        device.describe(),
        conn.path().name(),
        conn.fallback().map(|f| format!(" ({f})")).unwrap_or_default(),
        received.len,
        if ok { "intact" } else { "CORRUPTED" }
    );
    if !ok {
        return Err("the data arrived corrupted".into());
    }
    Ok(())
}
