//! `gpucluster up` as a real process: the built-in acceptance test on simulated machines,
//! restarts, and that no worker outlives the launcher, whether it is stopped or killed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn gpucluster() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gpucluster"));
    c.env_remove("CUDA_VISIBLE_DEVICES").env_remove("GPUCLUSTER_TOPOLOGY");
    c
}

/// Processes whose command line starts with `marker` (the launcher's own line only contains it).
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.starts_with(marker) {
                found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_built_in_worker_checks_every_device_and_measures_every_pair() {
    let out = gpucluster().args(["--topology", "sim:a100-80gb-2x7", "up"]).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("read back intact").count(), 14, "{text}");
    assert!(text.contains("matrix (14 pair(s))"), "{text}");
    assert_eq!(text.matches("host-staged").count(), 14, "MIG pairs are host-staged:\n{text}");
    assert!(text.contains("14 worker(s), 14 ended well"), "{text}");
    // Each worker's check names its device and profile.
    assert_eq!(text.matches("  a100-2x7-gpu1-mig6  MIG-").count(), 1, "{text}");
    assert!(text.lines().any(|l| l.contains("-gpu0-mig0  MIG-") && l.contains("(1g.10gb)")), "{text}");
}

#[test]
fn an_inventory_is_a_description_and_runs_on_simulated_memory() {
    // A saved snapshot of a GPU machine, on a machine without a GPU: no CUDA is asked for.
    let inventory = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/scenarios/inventories/h200.json");
    let started = Instant::now();
    let out = gpucluster().args(["up", "--inventory", inventory]).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("simulated device memory"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn two_workers_on_one_gpu_use_cuda_ipc() {
    let out = gpucluster().args(["--topology", "sim:h100", "up", "--workers-per-device", "2"]).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("h100-gpu0-w0  h100-gpu0-w1  cuda-ipc"), "{text}");
}

#[test]
fn a_command_gets_its_environment_and_failures_are_restarted() {
    let dir = std::env::temp_dir().join(format!("gpucluster-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let flag = dir.join("failed-once");
    let script = format!(
        "echo visible=$CUDA_VISIBLE_DEVICES rank=$GPUCLUSTER_RANK/$GPUCLUSTER_WORLD_SIZE; \
         if [ $GPUCLUSTER_RANK = 1 ] && [ ! -e {0} ]; then touch {0}; exit 7; fi",
        flag.display()
    );
    let out = gpucluster()
        .args(["--topology", "sim:a30", "up", "--restart", "on-failure", "--", "sh", "-c", &script])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("[a30-gpu0-mig1] exit 7; restarting"), "{text}");
    assert!(text.contains("a30-gpu0-mig1: exit 0 after 1 restart(s)"), "{text}");
    assert_eq!(text.matches("visible=MIG-").count(), 5, "4 workers and one restart:\n{text}");
    let out = gpucluster().args(["--topology", "sim:a30", "up", "--", "sh", "-c", "exit 3"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("exit 3"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `up -- sh -c SCRIPT` on four simulated workers and waits until `count` processes
/// whose command line starts with `marker` run.
fn start_up(script: &str, marker: &str, count: usize, grace: &str) -> std::process::Child {
    let launcher = gpucluster()
        .args(["--topology", "sim:a30", "up", "--grace", grace, "--", "sh", "-c", script])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for(&format!("{count} x {marker}"), Duration::from_secs(10), || processes_with(marker).len() >= count);
    launcher
}

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

#[test]
fn signals_stop_every_worker_and_exit_as_shells_report_them() {
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130), (libc::SIGHUP, 129)] {
        let marker = format!("sleep 5{sig}.{}", std::process::id());
        let mut launcher = start_up(&format!("{marker}; true"), &marker, 4, "2");
        signal(&launcher, sig);
        let status = launcher.wait().expect("wait");
        assert_eq!(status.code(), Some(code), "signal {sig}");
        wait_for("the workers to stop", Duration::from_secs(2), || processes_with(&marker).is_empty());
    }
}

#[test]
fn nothing_a_worker_started_outlives_a_killed_launcher() {
    // The worker is a shell, and its `sleep` a child of the shell: the kernel's parent-death
    // signal reaches the shell only; the guard takes care of the rest.
    let marker = format!("sleep 61.{}", std::process::id());
    let mut launcher = start_up(&format!("{marker} & {marker}; true"), &marker, 8, "10");
    launcher.kill().expect("SIGKILL the launcher");
    launcher.wait().expect("wait");
    wait_for("everything to die with the launcher", Duration::from_secs(3), || processes_with(&marker).is_empty());
}

#[test]
fn what_a_worker_leaves_behind_is_stopped_with_it() {
    // A daemon in its own session, and a grandchild that ignores SIGTERM and SIGINT.
    let marker = format!("sleep 62.{}", std::process::id());
    let script = format!("setsid {marker} & (trap '' TERM INT; exec {marker}) & exit 0");
    let started = Instant::now();
    let out = gpucluster().args(["--topology", "sim:a30", "up", "--grace", "1", "--", "sh", "-c", &script]).output();
    assert!(out.expect("run").status.success());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(processes_with(&marker).is_empty(), "left behind: {:?}", processes_with(&marker));
}

#[test]
fn a_killed_worker_stops_the_job_within_a_second() {
    let launcher =
        gpucluster().args(["--topology", "sim:dgx-a100", "up"]).stdout(Stdio::piped()).spawn().expect("spawn");
    let worker = format!("{} worker", env!("CARGO_BIN_EXE_gpucluster"));
    // The worker process itself, not its guard (whose command line ends with the worker's).
    let workers = || -> Vec<i32> {
        processes_with(&worker).iter().filter_map(|p| p.split(':').next().and_then(|p| p.parse().ok())).collect()
    };
    wait_for("56 workers", Duration::from_secs(10), || workers().len() >= 56);
    let victim = workers()[20];
    // Stopped first, so the job cannot finish before the kill lands: its peers wait for it.
    // SAFETY: signalling a worker this test started (through its launcher).
    unsafe { libc::kill(victim, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let killed = Instant::now();
    let output = launcher.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(killed.elapsed() < Duration::from_secs(2), "took {:?} after the kill:\n{text}", killed.elapsed());
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("stopped: ") && text.contains("failed (killed by signal 9 (SIGKILL))"), "{text}");
    assert!(workers().is_empty(), "no worker is left");
}

#[test]
fn a_launcher_killed_as_it_starts_leaves_nothing_even_under_a_subreaper() {
    // With a subreaper above the launcher, an orphaned worker is reparented to it, not to init,
    // so checking `getppid() == 1` misses the launcher's death; this test is that subreaper.
    // SAFETY: prctl on this test process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let marker = format!("sleep 63.{}", std::process::id());
    for i in 0..40u64 {
        let mut launcher = gpucluster()
            .args(["--topology", "sim:a30", "up", "--", "sh", "-c", &format!("{marker} & {marker}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(i % 30));
        launcher.kill().expect("kill");
        launcher.wait().expect("wait");
    }
    wait_for("no survivor", Duration::from_secs(3), || {
        // Reap what was reparented to us.
        // SAFETY: reaping any exited child of this test process, without blocking.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        processes_with(&marker).is_empty()
    });
}

/// The rendezvous address a running worker of this launcher was given.
fn rendezvous_of(launcher: u32) -> Option<String> {
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let env = String::from_utf8_lossy(&env);
        let mine = env.split('\0').any(|v| v == format!("GPUCLUSTER_TEST_LAUNCHER={launcher}"));
        if let Some(v) = env.split('\0').find_map(|v| v.strip_prefix("GPUCLUSTER_RENDEZVOUS=")).filter(|_| mine) {
            return Some(v.to_owned());
        }
    }
    None
}

#[test]
fn strangers_at_the_rendezvous_do_not_change_the_outcome() {
    let marker = format!("sleep 1.{}", std::process::id());
    let tag = std::process::id();
    // Every worker inherits the launcher's environment: tag this launcher's workers.
    let launcher = gpucluster()
        .env("GPUCLUSTER_TEST_LAUNCHER", tag.to_string())
        .args(["--topology", "sim:a30", "up", "--", "sh", "-c", &format!("{marker}; {marker}")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut address = None;
    wait_for("a worker's rendezvous address", Duration::from_secs(10), || {
        address = rendezvous_of(tag);
        address.is_some()
    });
    let address = address.expect("address");
    // Garbage, a half handshake, and idle connections, while the job runs.
    let mut idle = Vec::new();
    for i in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect(&address) {
            use std::io::Write;
            let _ = s.write_all(if i % 2 == 0 { b"GET / HTTP/1.0\r\n\r\n" } else { &[0u8; 10] });
            idle.push(s);
        }
    }
    let output = launcher.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("note: refused") && text.contains("had no part in the job"), "{text}");
    drop(idle);
}
