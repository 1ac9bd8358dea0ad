//! The commands as a terminal user meets them: in a pseudo-terminal of their own (a session and
//! a controlling terminal, as a shell gives them), with Ctrl-C typed into it. Pipes hid hangs
//! before: `bench transport` drew a progress bar on a stderr the binary kept locked.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tests::process::{children_of, processes_running, processes_with};

/// A command running on the slave side of a fresh pseudo-terminal, as the session leader with
/// that terminal as its controlling terminal; everything it writes collects in `output`.
struct Terminal {
    child: Child,
    master: std::fs::File,
    output: Vec<u8>,
}

impl Terminal {
    fn run(args: &[&str]) -> Self {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: out-pointers to two ints; no name, termios or window size.
        let r =
            unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
        assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty returned two descriptors that we now own.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut c = tests::process::gpucluster(env!("CARGO_BIN_EXE_gpucluster"));
        c.args(args);
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
        c.stdin(stdio(&slave)).stdout(stdio(&slave)).stderr(stdio(&slave));
        // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe; fd 0 is the slave.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = c.spawn().expect("spawn in a terminal");
        drop(slave);
        // SAFETY: the master descriptor is ours; non-blocking so reads never hang the test.
        unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        Self { child, master: std::fs::File::from(master), output: Vec::new() }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 65536];
        while let Ok(n) = self.master.read(&mut buf) {
            if n == 0 {
                break;
            }
            self.output.extend_from_slice(&buf[..n]);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// Waits until the output contains `needle`.
    fn expect(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.text().contains(needle) {
            assert!(start.elapsed() < timeout, "no {needle:?} within {timeout:?}:\n{}", self.text());
            self.drain();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types Ctrl-C: the terminal sends SIGINT to its foreground process group.
    fn ctrl_c(&mut self) {
        std::io::Write::write_all(&mut self.master, b"\x03").expect("type ^C");
    }

    /// Waits for the command to end; `None` if it is still running after `timeout` (then it is
    /// killed, so a hang fails the test instead of stalling it).
    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            self.drain();
            if let Some(status) = self.child.try_wait().expect("wait") {
                self.drain();
                return Some(status);
            }
            if start.elapsed() > timeout {
                // SAFETY: killing the session we started (its leader's group).
                unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn bench_transport_finishes_in_a_terminal() {
    let mut t = Terminal::run(&["--topology", "sim:rapids-a100-pcie", "bench", "transport", "--sizes", "8,64K"]);
    let status = t.wait(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "bench hung or failed in a terminal:\n{}", t.text());
    assert!(t.text().contains("host-staged GB/s"), "{}", t.text());
}

#[test]
fn the_built_in_worker_run_by_hand_says_what_is_missing() {
    let mut t = Terminal::run(&["worker"]);
    let status = t.wait(Duration::from_secs(10)).expect("`gpucluster worker` by hand must not hang");
    assert_eq!(status.code(), Some(1));
    assert!(t.text().contains("is not set: the built-in worker is started by `gpucluster up`"), "{}", t.text());
}

#[test]
fn up_in_a_terminal_finishes_and_ctrl_c_stops_everything() {
    let mut t = Terminal::run(&["--topology", "sim:rapids-a100-pcie", "up"]);
    let status = t.wait(Duration::from_secs(60)).expect("up hung in a terminal");
    assert!(status.success(), "{}", t.text());

    // A worker whose shell put a job in the background: the shell makes it ignore SIGINT.
    let marker = format!("sleep 1{}.5", std::process::id() % 1000);
    let mut t = Terminal::run(&[
        "--topology",
        "sim:a30",
        "up",
        "--grace",
        "1",
        "--",
        "sh",
        "-c",
        &format!("{marker} & {marker}"),
    ]);
    t.expect("running", Duration::from_secs(10));
    let start = Instant::now();
    while processes_running(&marker).len() < 8 {
        assert!(start.elapsed() < Duration::from_secs(10), "workers did not start:\n{}", t.text());
        std::thread::sleep(Duration::from_millis(20));
    }
    t.ctrl_c();
    let status = t.wait(Duration::from_secs(10)).expect("Ctrl-C did not stop up");
    assert_eq!(status.code(), Some(130), "Ctrl-C ends with 130:\n{}", t.text());
    let start = Instant::now();
    while !processes_running(&marker).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(3), "background jobs outlived Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_stops_bench_with_130_and_its_peer_with_it() {
    let mut t = Terminal::run(&["--topology", "sim:h100", "bench", "transport", "--sizes", "16M", "--repeats", "1000"]);
    let bench = t.child.id() as i32;
    let peers = move || children_of(bench);
    let start = Instant::now();
    while peers().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "no peer started:\n{}", t.text());
        t.drain();
        std::thread::sleep(Duration::from_millis(20));
    }
    t.ctrl_c();
    let status = t.wait(Duration::from_secs(10)).expect("Ctrl-C did not stop bench");
    assert_eq!(status.code(), Some(130), "{}", t.text());
    let start = Instant::now();
    let peer = peers();
    while peer.iter().any(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) {
        assert!(start.elapsed() < Duration::from_secs(3), "the peer outlived bench");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_or_sigkill_of_bench_alone_takes_its_peer_with_it() {
    for (signal, code) in [(libc::SIGTERM, Some(143)), (libc::SIGKILL, None)] {
        let mut t =
            Terminal::run(&["--topology", "sim:h100", "bench", "transport", "--sizes", "16M", "--repeats", "1000"]);
        let bench = t.child.id() as i32;
        let peers = move || children_of(bench);
        let start = Instant::now();
        while peers().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(20), "no peer started:\n{}", t.text());
            t.drain();
            std::thread::sleep(Duration::from_millis(20));
        }
        let peer = peers();
        // Only the bench process: not its group, as `kill PID` or a service manager would.
        // SAFETY: signalling the process this test started.
        unsafe { libc::kill(t.child.id() as i32, signal) };
        let status = t.wait(Duration::from_secs(10)).expect("bench did not stop");
        assert_eq!(status.code(), code, "{}", t.text());
        let start = Instant::now();
        while peer.iter().any(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| !s.contains(") Z ")))
        {
            assert!(start.elapsed() < Duration::from_secs(3), "the peer outlived bench ({signal})");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `dask local` as a terminal user runs it: it says when its workers are ready, `--insecure`
/// says loudly what it gives up, and Ctrl-C ends it with 130, leaving no Dask process behind.
#[test]
fn dask_local_in_a_terminal_warns_when_insecure_and_ctrl_c_stops_it() {
    let Some(python) = tests::dask_env::python() else { return };
    let python = python.display().to_string();
    let args = ["--topology", "sim:a30", "dask", "local", "--insecure", "--protocol", "tcp", "--python", &python];
    let mut t = Terminal::run(&args);
    t.expect("all 4 Dask worker(s) registered after", Duration::from_secs(90));
    assert!(t.text().contains("warning: --insecure: no TLS; any user who can reach"), "{}", t.text());
    assert!(!t.text().contains(" - INFO - "), "Dask's INFO lines only with -v:\n{}", t.text());
    let scheduler = t
        .text()
        .lines()
        .find_map(|l| l.split_once("scheduler file: ").map(|(_, f)| f.split(' ').next().unwrap_or("").to_owned()))
        .expect("the scheduler file is printed");
    t.ctrl_c();
    let status = t.wait(Duration::from_secs(20)).expect("Ctrl-C did not stop dask local");
    assert_eq!(status.code(), Some(130), "{}", t.text());
    let start = Instant::now();
    while !processes_with(&scheduler).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5), "a Dask process outlived dask local");
        std::thread::sleep(Duration::from_millis(50));
    }
}
