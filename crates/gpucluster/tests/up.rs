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

#[test]
fn sigterm_stops_every_worker_within_the_grace_period() {
    let marker = format!("{}.{}", 30 + std::process::id() % 1000, std::process::id());
    let mut launcher = gpucluster()
        .args(["--topology", "sim:a30", "up", "--grace", "2", "--", "sleep", &marker])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for("4 workers", Duration::from_secs(10), || processes_with(&format!("sleep {marker}")).len() == 4);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(launcher.id() as i32, libc::SIGTERM) };
    let status = launcher.wait().expect("wait");
    assert_eq!(status.code(), Some(1), "workers killed by the signal did not end well");
    assert!(processes_with(&format!("sleep {marker}")).is_empty());
}

#[test]
fn no_worker_outlives_a_killed_launcher() {
    let marker = format!("{}.{}", 40 + std::process::id() % 1000, std::process::id() + 1);
    let mut launcher = gpucluster()
        .args(["--topology", "sim:a30", "up", "--", "sleep", &marker])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for("4 workers", Duration::from_secs(10), || processes_with(&format!("sleep {marker}")).len() == 4);
    launcher.kill().expect("SIGKILL the launcher");
    launcher.wait().expect("wait");
    wait_for("the workers to die with their launcher", Duration::from_secs(5), || {
        processes_with(&format!("sleep {marker}")).is_empty()
    });
}
