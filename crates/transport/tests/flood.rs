//! A flood of idle, unauthenticated connections costs no thread each, and does not stop
//! workers from joining the rendezvous or peers from connecting. A test binary of its own, with
//! one test, so that no other test starts threads while this one counts them.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use transport::device::{self, DeviceKind};
use transport::rendezvous::{Rendezvous, RendezvousServer};
use transport::{Address, Listener, Options, Secret, TransferPath};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

/// Raises the descriptor limit as far as allowed and says how many idle connections fit.
fn connections_that_fit(wanted: usize) -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: reading and raising our own soft limit to the hard one.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    // Each idle connection costs one descriptor here, and the server's side at most
    // `max_handshakes` more.
    let room = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX).saturating_sub(300);
    if room < wanted {
        eprintln!("the descriptor limit allows {room} idle connections, not {wanted}: using {room}");
    }
    wanted.min(room)
}

fn idle_connections(address: &str, n: usize) -> Vec<TcpStream> {
    (0..n).filter_map(|_| TcpStream::connect(address).ok()).collect()
}

#[test]
fn two_thousand_idle_connections_cost_no_threads_and_lock_nobody_out() {
    let n = connections_that_fit(2000);

    // The rendezvous.
    let secret = Secret::random().expect("secret");
    let server = RendezvousServer::start("127.0.0.1:0", secret.clone(), 2, serde_json::Value::Null).expect("start");
    let before = threads();
    let idle = idle_connections(server.address(), n);
    assert!(idle.len() >= n * 9 / 10, "only {} of {n} connections were made", idle.len());
    std::thread::sleep(Duration::from_millis(300));
    let grown = threads().saturating_sub(before);
    assert!(grown < 10, "{} idle connections started {grown} threads", idle.len());
    let started = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|rank| {
            let (address, secret) = (server.address().to_owned(), secret.clone());
            std::thread::spawn(move || {
                Rendezvous::join(&address, &secret, rank, &Address::Local(format!("w{rank}")), Duration::from_secs(10))
            })
        })
        .collect();
    for w in workers {
        let (_, table) = w.join().expect("thread").expect("a worker joins despite the flood");
        assert_eq!(table.addresses.len(), 2);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "joining took {:?}", started.elapsed());
    assert!(server.errors().is_empty(), "idle strangers are not errors of the job: {:?}", server.errors());
    assert!(server.refused().count as usize >= idle.len() - 64, "{:?}", server.refused().count);
    drop(idle);
    drop(server);

    // A TCP listener.
    let device = device::open(DeviceKind::Simulated).expect("device");
    let options = Options { path: TransferPath::Tcp, secret: Some(secret), ..Options::default() };
    let listener = Listener::bind(&Address::Tcp("127.0.0.1:0".into()), device.clone(), options.clone()).expect("bind");
    let before = threads();
    let idle = idle_connections(listener.address().to_string().trim_start_matches("tcp:"), n);
    std::thread::sleep(Duration::from_millis(300));
    let grown = threads().saturating_sub(before);
    assert!(grown < 10, "{} idle connections started {grown} threads", idle.len());
    let address = listener.address().clone();
    let peer = std::thread::spawn(move || transport::connect_blocking(&address, device, &options));
    let conn = listener.accept_timeout(Duration::from_secs(2)).expect("a peer connects despite the flood");
    assert_eq!(conn.path(), TransferPath::Tcp);
    peer.join().expect("thread").expect("connect");
    drop(idle);
}
