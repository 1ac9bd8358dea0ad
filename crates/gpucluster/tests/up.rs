//! `gpucluster up` as a real process: the built-in acceptance test on simulated machines,
//! restarts, and that no worker outlives the launcher, whether it is stopped or killed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::process::{parent_of, processes_running};

/// The built binary, through the tests' one command builder.
fn gpucluster() -> Command {
    tests::process::gpucluster(env!("CARGO_BIN_EXE_gpucluster"))
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `-v` tells the launcher's story on stderr, step by step; `-q` leaves stderr empty; neither
/// changes what `up` prints on stdout (worker timings aside).
#[test]
fn up_tells_its_steps_with_v_and_nothing_with_q() {
    let verbose = gpucluster().args(["--topology", "sim:a30", "up", "-v"]).output().expect("run");
    let (text, said) = (String::from_utf8_lossy(&verbose.stdout), String::from_utf8_lossy(&verbose.stderr));
    assert!(verbose.status.success(), "{text}\n{said}");
    let steps = [
        "info: reading the topology from sim:a30",
        "info: plan: 4 worker(s), policy strict, 1 device(s) left out; paths: 6 pair(s) host-staged",
        "info: starting 4 worker process(es) (the built-in worker); no restarts, grace 10 s",
        "info: ready: every worker joined the rendezvous after",
        "info: the job ended after",
    ];
    let mut at = 0;
    for step in steps {
        let found = said[at..].find(step).unwrap_or_else(|| panic!("no {step:?} after byte {at} of:\n{said}"));
        at += found + step.len();
    }
    assert!(text.contains("summary: 4 worker(s), 4 ended well"), "{text}");
    let quiet = gpucluster().args(["-q", "--topology", "sim:a30", "up"]).output().expect("run");
    assert!(quiet.status.success());
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");
    assert!(String::from_utf8_lossy(&quiet.stdout).contains("summary: 4 worker(s), 4 ended well"));
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

/// Issue 9, item 18: two workers of one MIG instance were planned cuda-ipc and then fell back at
/// run time with another reason; `up` measures every pair over the path the plan chose.
#[test]
fn mig_workers_sharing_an_instance_are_host_staged_as_planned() {
    let out = gpucluster().args(["--topology", "sim:a30", "up", "--workers-per-device", "2"]).output().expect("run");
    let (text, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}\n{err}");
    // 8 workers on 4 instances: all 28 pairs measured, the 4 within an instance included.
    let pairs: Vec<&str> =
        text.lines().filter(|l| l.split_whitespace().nth(1).is_some_and(|to| to.starts_with("a30-gpu0-mig"))).collect();
    assert_eq!(pairs.len(), 28, "{text}");
    assert!(pairs.iter().all(|l| l.split_whitespace().nth(2) == Some("host-staged")), "{text}");
    assert!(!text.contains("cuda-ipc") && !err.contains("cuda-ipc"), "no fallback, no second reason:\n{text}\n{err}");
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
    wait_for(&format!("{count} x {marker}"), Duration::from_secs(10), || processes_running(marker).len() >= count);
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
        wait_for("the workers to stop", Duration::from_secs(2), || processes_running(&marker).is_empty());
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
    wait_for("everything to die with the launcher", Duration::from_secs(3), || processes_running(&marker).is_empty());
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
    assert!(processes_running(&marker).is_empty(), "left behind: {:?}", processes_running(&marker));
}

#[test]
fn a_killed_worker_stops_the_job_within_a_second() {
    let launcher =
        gpucluster().args(["--topology", "sim:dgx-a100", "up"]).stdout(Stdio::piped()).spawn().expect("spawn");
    let worker = format!("{} worker", env!("CARGO_BIN_EXE_gpucluster"));
    // The worker process itself, not its guard (whose command line ends with the worker's).
    let workers = || -> Vec<i32> { processes_running(&worker).iter().map(|p| p.pid).collect() };
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
    // The job stops on the first failure it sees: the killed worker, or a peer that lost it a
    // moment earlier (which one wins is a race); either way the killed one is reported.
    assert!(text.contains("stopped: ") && text.contains("killed by signal 9 (SIGKILL)"), "{text}");
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
        processes_running(&marker).is_empty()
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

#[test]
fn a_stopped_worker_cannot_hold_the_built_in_test_past_its_time_limit() {
    let launcher = gpucluster()
        .args(["--topology", "sim:dgx-a100", "up", "--time-limit", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let worker = format!("{} worker", env!("CARGO_BIN_EXE_gpucluster"));
    let first = || -> Option<i32> { processes_running(&worker).first().map(|p| p.pid) };
    wait_for("a worker", Duration::from_secs(10), || first().is_some());
    let victim = first().expect("pid");
    // SAFETY: stopping a worker this test started (through its launcher).
    unsafe { libc::kill(victim, libc::SIGSTOP) };
    let stopped = Instant::now();
    let output = launcher.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&output.stdout);
    // However far the worker had got, the job ends in bounded time and leaves nothing.
    assert!(stopped.elapsed() < Duration::from_secs(6), "took {:?}:\n{text}", stopped.elapsed());
    assert!(processes_running(&worker).is_empty(), "no worker is left");
}

#[test]
fn a_job_past_its_time_limit_is_stopped_and_says_so() {
    let marker = format!("sleep 67.{}", std::process::id());
    let started = Instant::now();
    let out = gpucluster()
        .args(["--topology", "sim:a30", "up", "--time-limit", "1", "--", "sh", "-c", &marker])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("stopped: the job did not end within its time limit of 1 s"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    assert!(processes_running(&marker).is_empty());
}

#[test]
fn a_killed_guard_takes_its_workers_children_with_it_at_once() {
    let marker = format!("sleep 64.{}", std::process::id());
    let mut launcher = gpucluster()
        .args(["--topology", "sim:a30", "up", "--restart", "on-failure", "--grace", "1", "--"])
        .args(["sh", "-c", &format!("{marker} & {marker}")])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for("8 sleeps", Duration::from_secs(10), || processes_running(&marker).len() >= 8);
    // One of this test's guards (other tests run guards too).
    let guard = format!("{} guard", env!("CARGO_BIN_EXE_gpucluster"));
    let ours = processes_running(&guard).into_iter().find(|p| p.command_line.contains(&marker));
    let victim = ours.expect("a guard of ours").pid;
    // SAFETY: killing a guard this test started (through its launcher).
    unsafe { libc::kill(victim, libc::SIGKILL) };
    // Its worker dies with it (parent-death signal) and the worker's two sleeps come to the
    // launcher, which kills them at once rather than when the job ends; the worker is restarted.
    let launcher_pid = launcher.id() as i32;
    wait_for("the orphans to go and the restart to come", Duration::from_secs(5), || {
        let sleeps = processes_running(&marker);
        sleeps.len() == 8 && sleeps.iter().all(|p| parent_of(p.pid).is_some_and(|parent| parent != launcher_pid))
    });
    signal(&launcher, libc::SIGTERM);
    assert_eq!(launcher.wait().expect("wait").code(), Some(143));
    wait_for("nothing left", Duration::from_secs(3), || processes_running(&marker).is_empty());
}

#[test]
fn late_orphans_are_asked_to_stop_too() {
    // The worker leaves a shell in its own session; the shell dies of SIGTERM and leaves its two
    // `sleep`s to the guard, which must ask them too rather than wait out the grace period.
    let marker = format!("sleep 65.{}", std::process::id());
    let script = format!("setsid sh -c '{marker} & {marker}' </dev/null >/dev/null 2>&1 & exit 0");
    let started = Instant::now();
    let out = gpucluster().args(["--topology", "sim:a30", "up", "--grace", "10", "--", "sh", "-c", &script]).output();
    assert!(out.expect("run").status.success());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}: waited out the grace", started.elapsed());
    assert!(processes_running(&marker).is_empty());
}

#[test]
fn a_reader_that_does_not_read_cannot_hold_a_signal() {
    // stdout is a pipe nobody reads: workers' output fills it, and SIGTERM must still act at once.
    let marker = format!("yes 66.{}", std::process::id());
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut launcher = gpucluster()
        .args(["--topology", "sim:a30", "up", "--grace", "1", "--", "sh", "-c"])
        .arg(format!("exec {marker}"))
        .stdout(writer)
        .spawn()
        .expect("spawn");
    wait_for("the workers", Duration::from_secs(10), || processes_running(&marker).len() == 4);
    // Long enough for every pipe between the workers and the reader to fill.
    std::thread::sleep(Duration::from_millis(500));
    signal(&launcher, libc::SIGTERM);
    wait_for("the workers to stop", Duration::from_secs(4), || processes_running(&marker).is_empty());
    drop(reader);
    assert_eq!(launcher.wait().expect("wait").code(), Some(143));
}

#[test]
fn a_slow_reader_gets_every_line_and_the_summary_last() {
    let mut launcher = gpucluster()
        .args(["--topology", "sim:a30", "up", "--", "sh", "-c", "seq 1 4000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = launcher.stdout.take().expect("stdout");
    // About 80 KB/s: the workers are done long before their output is.
    let mut text = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        use std::io::Read;
        match stdout.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.extend_from_slice(&chunk[..n]),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(launcher.wait().expect("wait").success());
    let text = String::from_utf8_lossy(&text);
    assert_eq!(text.lines().filter(|l| l.starts_with("[a30-gpu0-mig")).count(), 16_000, "every line arrives");
    let summary = text.find("\nsummary:").expect("summary");
    assert!(!text[summary..].contains("[a30-gpu0-mig"), "the summary comes after every worker's line");
}
