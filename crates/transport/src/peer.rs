//! A scripted peer process for tests and benchmarks: it connects to an address and then echoes,
//! streams or misbehaves on purpose. `transport-peer` (this crate's binary) and `gpucluster bench`
//! run it; it is also a compact example of the public API.
//!
//! The cluster's secret (for TCP) comes from the environment ([`crate::SECRET_ENV`]), never
//! from the command line, which every user of the host can read in `/proc`: `--secret` is
//! refused with that reason.

use std::sync::Arc;

use crate::device::{self, Device, DeviceBuffer, DeviceKind, WorkerDevice};
use crate::{Address, Connection, Options, SECRET_ENV, Secret, TransferPath, TransportError, connect_blocking};

/// What the peer does once connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Receives messages of up to `max` bytes and sends each straight back with its tag, until the
    /// other side closes; a tag with [`NO_REPLY`] gets no answer, one with [`ACK`] an empty one
    /// (so one-way streams can be timed).
    Echo {
        /// Largest message expected.
        max: usize,
    },
    /// Sends `count` messages of `size` bytes (pattern seeded 2) while receiving `count` messages
    /// and checking they carry pattern seed 1: both directions at once.
    Duplex {
        /// Messages each way.
        count: usize,
        /// Bytes per message.
        size: usize,
    },
    /// Starts sending `size` bytes, then kills itself while the transfer is under way.
    DieMidSend {
        /// Bytes of the message it never finishes.
        size: usize,
    },
    /// Sends an 8-byte message (the sign that it is up, its buffer ready), then sends `size`
    /// bytes over and over: a peer the tests can stop mid-message once the first has arrived.
    ReadyThenSend {
        /// Bytes per message after the first.
        size: usize,
    },
    /// Binds the local `--address` itself and never accepts: a name squatter (run as another
    /// user in the tests). Runs until killed.
    Squat,
}

/// Tag bit: the echo peer does not answer this message.
pub const NO_REPLY: u64 = 1 << 63;
/// Tag bit: the echo peer answers this message with an empty one.
pub const ACK: u64 = 1 << 62;

/// Everything the peer needs.
#[derive(Debug, Clone)]
pub struct PeerArgs {
    /// Which device memory to use.
    pub device: DeviceKind,
    /// Simulate a MIG instance (IPC handles do not open), with simulated memory.
    pub mig: bool,
    /// Where the other side listens.
    pub address: Address,
    /// Connection options.
    pub options: Options,
    /// What to do.
    pub role: Role,
}

impl PeerArgs {
    /// Parses `--device sim|sim-mig|cuda --address A --path P --slots N --chunk B
    /// [--handshake-ms MS] [--stall-ms MS] ROLE ARGS`, with the secret from [`SECRET_ENV`].
    ///
    /// # Errors
    /// A message naming the bad argument; `--secret`, with why it is refused.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let secret = Secret::from_env().map_err(|e| e.to_string())?;
        Self::parse_with(args, secret)
    }

    fn parse_with(args: &[String], secret: Option<Secret>) -> Result<Self, String> {
        let mut device = DeviceKind::Simulated;
        let mut mig = false;
        let mut address = None;
        let mut options = Options { secret, ..Options::default() };
        let mut rest = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
            match a.as_str() {
                "--device" => match value("--device")?.parse::<WorkerDevice>().map_err(|e| e.to_string())? {
                    WorkerDevice::Sim => device = DeviceKind::Simulated,
                    WorkerDevice::SimMig => (device, mig) = (DeviceKind::Simulated, true),
                    WorkerDevice::Cuda => device = DeviceKind::Cuda,
                },
                "--address" => address = Some(value("--address")?.parse::<Address>().map_err(|e| e.to_string())?),
                "--path" => {
                    options.path = value("--path")?.parse::<TransferPath>().map_err(|e| e.to_string())?;
                }
                "--slots" => options.slots = value("--slots")?.parse().map_err(|_| "--slots takes a number")?,
                "--chunk" => options.chunk = value("--chunk")?.parse().map_err(|_| "--chunk takes bytes")?,
                "--secret" => {
                    return Err(format!(
                        "--secret is refused: every user of this host can read a command line (in /proc); \
                         pass the secret in the {SECRET_ENV} environment variable"
                    ));
                }
                "--handshake-ms" => {
                    let ms = value("--handshake-ms")?.parse().map_err(|_| "--handshake-ms takes milliseconds")?;
                    options.handshake_timeout = std::time::Duration::from_millis(ms);
                }
                "--stall-ms" => {
                    let ms = value("--stall-ms")?.parse().map_err(|_| "--stall-ms takes milliseconds")?;
                    options.stall_timeout = std::time::Duration::from_millis(ms);
                }
                _ => rest.push(a.clone()),
            }
        }
        let number = |i: usize| -> Result<usize, String> {
            rest.get(i).and_then(|s| s.parse().ok()).ok_or_else(|| format!("expected a number after `{}`", rest[0]))
        };
        let role = match rest.first().map(String::as_str) {
            Some("echo") => Role::Echo { max: number(1)? },
            Some("duplex") => Role::Duplex { count: number(1)?, size: number(2)? },
            Some("die-mid-send") => Role::DieMidSend { size: number(1)? },
            Some("ready-then-send") => Role::ReadyThenSend { size: number(1)? },
            Some("squat") => Role::Squat,
            _ => {
                return Err(
                    "expected a role: echo MAX | duplex COUNT SIZE | die-mid-send SIZE | ready-then-send SIZE | squat"
                        .into(),
                );
            }
        };
        let address = address.ok_or("--address is required")?;
        Ok(Self { device, mig, address, options, role })
    }
}

/// Fills `out` with the pattern for (`seed`, `index`): cheap, and different for every message.
pub fn pattern(seed: u64, index: u64, out: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index.wrapping_add(1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn open(args: &PeerArgs) -> Result<Arc<dyn Device>, TransportError> {
    if args.mig {
        return Ok(Arc::new(device::sim::SimDevice::mig()));
    }
    device::open(args.device)
}

/// Runs the peer; returns when its role is done or the other side closed.
///
/// # Errors
/// Setup failed, data did not match, or the connection broke unexpectedly.
pub fn run(args: &PeerArgs) -> Result<(), TransportError> {
    run_on(open(args)?, args)
}

/// Runs the peer on a device this process already opened (a peer thread shares the context).
///
/// # Errors
/// As [`run`].
pub fn run_on(device: Arc<dyn Device>, args: &PeerArgs) -> Result<(), TransportError> {
    if args.role == Role::Squat {
        return squat(&args.address);
    }
    let conn = connect_blocking(&args.address, device.clone(), &args.options)?;
    match args.role {
        Role::Echo { max } => echo(&conn, &device, max),
        Role::Duplex { count, size } => duplex(&conn, &device, count, size, 2, 1),
        Role::DieMidSend { size } => {
            let buf = DeviceBuffer::new(&device, size)?;
            std::thread::spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(300));
                // SAFETY: killing our own process on purpose: this role simulates a crash.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            });
            loop {
                conn.send_blocking(0, &buf, size)?;
            }
        }
        Role::ReadyThenSend { size } => {
            let buf = DeviceBuffer::new(&device, size.max(8))?;
            conn.send_blocking(0, &buf, 8)?;
            loop {
                conn.send_blocking(1, &buf, size)?;
            }
        }
        Role::Squat => Ok(()),
    }
}

/// Holds the local name `address` without ever accepting.
fn squat(address: &Address) -> Result<(), TransportError> {
    use std::os::linux::net::SocketAddrExt;
    let Address::Local(name) = address else {
        return Err(TransportError::InvalidArgument("squat takes a local address".into()));
    };
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|error| TransportError::Io { call: "abstract socket name", error })?;
    let _held = std::os::unix::net::UnixListener::bind_addr(&addr)
        .map_err(|error| TransportError::Io { call: "bind", error })?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Echoes messages on `conn` (see [`Role::Echo`]) until the other side closes.
///
/// # Errors
/// A transfer failed for another reason than the peer closing.
pub fn echo(conn: &Connection, device: &Arc<dyn Device>, max: usize) -> Result<(), TransportError> {
    let buf = DeviceBuffer::new(device, max)?;
    loop {
        match conn.recv_blocking(&buf) {
            Ok(r) if r.tag & NO_REPLY != 0 => {}
            Ok(r) if r.tag & ACK != 0 => conn.send_blocking(r.tag, &buf, 0)?,
            Ok(r) => conn.send_blocking(r.tag, &buf, r.len)?,
            Err(TransportError::PeerGone(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Sends `count` messages with pattern `send_seed` while receiving `count` with `recv_seed`,
/// checking each; both directions at once.
///
/// # Errors
/// A transfer failed or a message did not match.
pub fn duplex(
    conn: &Connection,
    device: &Arc<dyn Device>,
    count: usize,
    size: usize,
    send_seed: u64,
    recv_seed: u64,
) -> Result<(), TransportError> {
    let sender = {
        let (conn, device) = (conn.clone(), device.clone());
        std::thread::spawn(move || -> Result<(), TransportError> {
            let buf = DeviceBuffer::new(&device, size)?;
            let mut host = vec![0u8; size];
            for i in 0..count {
                pattern(send_seed, i as u64, &mut host);
                buf.write(&host)?;
                conn.send_blocking(i as u64, &buf, size)?;
            }
            Ok(())
        })
    };
    let buf = DeviceBuffer::new(device, size)?;
    let (mut got, mut want) = (vec![0u8; size], vec![0u8; size]);
    for i in 0..count {
        let r = conn.recv_blocking(&buf)?;
        buf.read(&mut got[..r.len])?;
        pattern(recv_seed, i as u64, &mut want);
        if r.tag != i as u64 || r.len != size || got != want {
            return Err(TransportError::Corrupted(format!(
                "message {i} arrived wrong (tag {}, {} bytes)",
                r.tag, r.len
            )));
        }
    }
    sender.join().map_err(|_| TransportError::Internal("the sending thread panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_secret_comes_from_the_environment_never_the_command_line() {
        let secret = Secret::random().expect("secret");
        let line = format!("--address tcp:127.0.0.1:1 --path tcp --secret {} echo 10", secret.to_hex());
        let err = PeerArgs::parse_with(&args(&line), None).expect_err("--secret");
        assert!(err.contains("--secret is refused") && err.contains(SECRET_ENV), "{err}");
        let parsed =
            PeerArgs::parse_with(&args("--address tcp:127.0.0.1:1 --path tcp echo 10"), Some(secret)).expect("parse");
        assert!(parsed.options.secret.is_some());
        assert_eq!(parsed.role, Role::Echo { max: 10 });
    }
}
