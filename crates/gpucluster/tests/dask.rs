//! Dask end to end, with a real Dask: two simulated hosts with different MIG layouts (on two
//! loopback addresses) join one scheduler through `gpucluster dask worker --scheduler-file`; a
//! client checks that every worker sees exactly its own MIG device, its memory limits and its
//! resources; a killed worker comes back; SIGTERM to the launchers leaves no process behind.
//! `gpucluster dask local` gets the same checks on one host.
//!
//! The Python environment comes from `cargo xtask dask-env` (`target/dask-venv`, pinned Dask),
//! which `cargo xtask ci` runs first and then requires with `GPUCLUSTER_REQUIRE_DASK=1`; without
//! it each test prints `SKIPPED <test>: ...` on stderr and returns (`tests::dask_env`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::process::processes_with;

/// The Python with Dask, or `None` (the test then returns, and says it skipped).
fn python() -> Option<PathBuf> {
    tests::dask_env::python()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child's process group and the child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gpucluster-dask-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    dir
}

/// The built binary with `args`, through the tests' one command builder.
fn gpucluster(args: &[&str]) -> Command {
    let mut c = tests::process::gpucluster(env!("CARGO_BIN_EXE_gpucluster"));
    c.args(args);
    c
}

/// The plan's worker names, device UUIDs and device memory limits for a topology, from
/// `plan --json`.
fn planned(topology: &str) -> Vec<(String, String, Option<u64>)> {
    let out = gpucluster(&["--topology", topology, "plan", "--json"]).output().expect("plan");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan json");
    v["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| {
            let name = w["name"].as_str().unwrap_or("").to_owned();
            (name, w["device_uuid"].as_str().unwrap_or("").to_owned(), w["device_memory_limit_bytes"].as_u64())
        })
        .collect()
}

const CHECK: &str = r#"
import json, os, sys, time
from distributed import Client, Security
d = os.path.dirname(sys.argv[1])
tls = os.path.exists(os.path.join(d, "ca.pem"))
sec = Security(tls_ca_file=os.path.join(d, "ca.pem"), tls_client_cert=os.path.join(d, "cert.pem"),
               tls_client_key=os.path.join(d, "key.pem"), require_encryption=True) if tls else None
c = Client(scheduler_file=sys.argv[1], timeout=30, security=sec)
c.wait_for_workers(int(sys.argv[2]), timeout=60)
env = c.run(lambda: {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "GPUCLUSTER_DEVICE_MEMORY_LIMIT", "UCX_TLS")})
info = c.scheduler_info(n_workers=-1)["workers"]
print(json.dumps({a: {"name": w["name"], "resources": w["resources"], "memory_limit": w["memory_limit"], "host": w["host"], "env": env[a]} for a, w in info.items()}))
"#;

fn check(python: &Path, scheduler_file: &Path, expected: usize) -> serde_json::Value {
    let out = Command::new(python)
        .args(["-c", CHECK, &scheduler_file.display().to_string(), &expected.to_string()])
        .output()
        .expect("client");
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("client json")
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The scheduler file `dask local` names in its output `log`, once the scheduler has written it.
fn scheduler_file_in(log: &Path, timeout: Duration) -> PathBuf {
    let mut found = None;
    wait_until("the scheduler file", timeout, || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        found = text
            .lines()
            .find_map(|l| l.strip_prefix("scheduler file: "))
            .and_then(|l| l.split(' ').next())
            .map(PathBuf::from)
            .filter(|p| p.exists());
        found.is_some()
    });
    found.expect("the scheduler file")
}

const HOST_A: &str = "hostname = \"node-a\"\n[[gpu]]\nproduct = \"H100-80GB\"\nmig = [\"3x2g.20gb\"]\n";
const HOST_B: &str = "hostname = \"node-b\"\n[[gpu]]\nproduct = \"A100-80GB\"\nmig = [\"2x3g.40gb\"]\n";

#[test]
fn two_hosts_join_one_scheduler_and_each_worker_sees_only_its_device() {
    let Some(python) = python() else { return };
    let dir = scratch("hosts");
    let scheduler_file = dir.join("scheduler.json");
    let (a, b) = (dir.join("node-a.toml"), dir.join("node-b.toml"));
    std::fs::write(&a, HOST_A).expect("write");
    std::fs::write(&b, HOST_B).expect("write");
    let scheduler = Proc(
        Command::new(&python)
            .args(["-m", "dask", "scheduler", "--scheduler-file", &scheduler_file.display().to_string()])
            .args(["--host", "127.0.0.1", "--port", "0", "--no-dashboard"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("scheduler"),
    );
    wait_until("the scheduler file", Duration::from_secs(30), || scheduler_file.exists());
    let start = |topology: &Path, host: &str| {
        let mut c = gpucluster(&["--topology", &format!("file:{}", topology.display()), "dask", "worker"]);
        c.args(["--scheduler-file", &scheduler_file.display().to_string(), "--host", host, "--grace", "5"]);
        c.arg("--python").arg(&python).stdout(Stdio::null()).stderr(Stdio::null());
        Proc(c.spawn().expect("launcher"))
    };
    let mut launcher_a = start(&a, "127.0.0.2");
    let mut launcher_b = start(&b, "127.0.0.3");
    let workers = check(&python, &scheduler_file, 5);
    let plan_a = planned(&format!("file:{}", a.display()));
    let plan_b = planned(&format!("file:{}", b.display()));
    assert_eq!(workers.as_object().map(|o| o.len()), Some(5));
    // This machine's memory, which the launchers share out between their workers.
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let total_kb = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix(" kB")?.parse().ok());
    let host_memory: u64 = total_kb.map(|kb: u64| kb << 10).expect("MemTotal");
    for (name, uuid, device_limit) in plan_a.iter().chain(&plan_b) {
        let w = workers.as_object().expect("map").values().find(|w| w["name"] == name.as_str()).expect(name);
        assert_eq!(w["env"]["CUDA_VISIBLE_DEVICES"], uuid.as_str(), "{name} sees exactly its own MIG device");
        assert_eq!(w["env"]["UCX_TLS"], "^cuda_ipc");
        assert_eq!(w["resources"]["GPU"], 1.0);
        let expected_host = if name.starts_with("node-a") { "127.0.0.2" } else { "127.0.0.3" };
        assert_eq!(w["host"], expected_host);
        // Limits, not placeholders: 0 (which Dask and dask-cuda read as "no limit") fails.
        let memory_limit = w["memory_limit"].as_u64();
        assert!(
            memory_limit.is_some_and(|m| (64 << 20..=host_memory).contains(&m)),
            "{name}: host memory limit {memory_limit:?}, not at least 64 MiB and at most this machine's {host_memory}"
        );
        let limit: Option<u64> = w["env"]["GPUCLUSTER_DEVICE_MEMORY_LIMIT"].as_str().and_then(|m| m.parse().ok());
        assert!(
            limit.is_some_and(|m| m > 0) && limit == *device_limit,
            "{name}: device memory limit {limit:?}, not the plan's positive {device_limit:?}"
        );
    }
    // The 3g.40gb worker's limit is 80 % of its own 39.25 GiB, not of the parent GPU.
    let big = workers.as_object().expect("map").values().find(|w| w["name"] == "node-b-gpu0-mig0").expect("3g.40gb");
    assert_eq!(
        big["env"]["GPUCLUSTER_DEVICE_MEMORY_LIMIT"],
        ((40192u64 << 20) as f64 * 0.8).floor().to_string().as_str()
    );

    // Kill one worker: the launcher starts it again and it rejoins.
    let victims = processes_with("--name node-b-gpu0-mig1");
    assert!(!victims.is_empty());
    for victim in &victims {
        // SAFETY: killing a worker process this test started (through its launcher).
        unsafe { libc::kill(victim.pid, libc::SIGKILL) };
    }
    wait_until("the killed worker to be restarted", Duration::from_secs(30), || {
        processes_with("--name node-b-gpu0-mig1").iter().any(|p| !victims.contains(p))
    });
    let again = check(&python, &scheduler_file, 5);
    assert!(again.as_object().expect("map").values().any(|w| w["name"] == "node-b-gpu0-mig1"));

    // SIGTERM to the launchers: everything they started ends.
    for l in [&launcher_a, &launcher_b] {
        // SAFETY: signalling our own children.
        unsafe { libc::kill(l.0.id() as i32, libc::SIGTERM) };
    }
    let status_a = launcher_a.0.wait().expect("wait a");
    let status_b = launcher_b.0.wait().expect("wait b");
    assert_eq!((status_a.code(), status_b.code()), (Some(143), Some(143)), "stopped by SIGTERM");
    wait_until("no worker left", Duration::from_secs(10), || {
        processes_with(&scheduler_file.display().to_string()).len() <= 1
    });
    drop(scheduler);
    assert!(processes_with(&scheduler_file.display().to_string()).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dask_local_runs_a_scheduler_and_a_worker_per_device() {
    let Some(python) = python() else { return };
    let dir = scratch("local");
    let log = dir.join("out.txt");
    // A shared temporary directory whose Dask scratch space another user made first, open to all.
    let tmp = dir.join("tmp");
    let planted = tmp.join("dask-scratch-space");
    std::fs::create_dir_all(&planted).expect("planted");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // ...and a `dask.py` someone left there, to be imported by whoever runs Python from it.
    let pwned = dir.join("pwned");
    std::fs::write(tmp.join("dask.py"), format!("open({:?}, 'a').write('x')\n", pwned.display().to_string()))
        .expect("plant");
    // TLS, as users get it where the gpucluster package is not installed.
    let mut c = gpucluster(&["--topology", "sim:a30", "dask", "local", "--grace", "5", "--protocol", "tcp"]);
    c.env("TMPDIR", &tmp).env_remove("XDG_RUNTIME_DIR").current_dir(&tmp);
    c.arg("--python").arg(&python).stdout(std::fs::File::create(&log).expect("log")).stderr(Stdio::null());
    let mut launcher = Proc(c.spawn().expect("launcher"));
    let file = scheduler_file_in(&log, Duration::from_secs(30));
    let workers = check(&python, &file, 4);
    let planned = planned("sim:a30");
    for (name, uuid, _) in &planned {
        let w = workers.as_object().expect("map").values().find(|w| w["name"] == name.as_str()).expect(name);
        assert_eq!(w["env"]["CUDA_VISIBLE_DEVICES"], uuid.as_str());
    }
    wait_until("the ready line", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("all 4 Dask worker(s) registered after")
    });
    // Another launcher of ours joins this cluster with `dask worker`: it finds the credentials
    // beside the scheduler file and its workers register over TLS. With -v it tells its story on
    // stderr and lets Dask's INFO lines through.
    let (joiner_out, joiner_err) = (dir.join("joiner-out.txt"), dir.join("joiner-err.txt"));
    let mut joiner = Proc(
        gpucluster(&["--topology", "sim:rapids-a100-pcie", "dask", "worker", "-v", "--scheduler-file"])
            .arg(&file)
            .arg("--python")
            .arg(&python)
            .stdout(std::fs::File::create(&joiner_out).expect("joiner log"))
            .stderr(std::fs::File::create(&joiner_err).expect("joiner log"))
            .spawn()
            .expect("joiner"),
    );
    let both = check(&python, &file, 7);
    assert_eq!(both.as_object().map(|o| o.len()), Some(7), "4 local workers and 3 that joined");
    wait_until("the joiner's ready line", Duration::from_secs(10), || {
        std::fs::read_to_string(&joiner_err).unwrap_or_default().contains("info: ready: every Dask worker registered")
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(joiner.0.id() as i32, libc::SIGTERM) };
    assert_eq!(joiner.0.wait().expect("wait").code(), Some(143));
    let said = std::fs::read_to_string(&joiner_err).unwrap_or_default();
    for step in ["info: plan: 3 worker(s)", "info: starting 3 process(es)", "info: stopped after"] {
        assert!(said.contains(step), "-v names each step ({step}):\n{said}");
    }
    let output = std::fs::read_to_string(&joiner_out).unwrap_or_default();
    assert!(output.contains(" - INFO - "), "-v shows Dask's INFO lines:\n{output}");
    attack_as_another_client(&python, &file);
    assert_eq!(
        std::fs::read_dir(&planted).expect("planted").count(),
        0,
        "nothing of the cluster's goes into a scratch space someone else made"
    );
    assert!(!pwned.exists(), "a module planted in the directory we were started from never runs");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(launcher.0.id() as i32, libc::SIGINT) };
    assert_eq!(launcher.0.wait().expect("wait").code(), Some(130), "Ctrl-C ends with 130");
    assert!(processes_with(&file.display().to_string()).is_empty(), "no scheduler or worker left");
    assert!(!file.parent().expect("dir").exists(), "the private folder (file, credentials) is removed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dask_local_serves_a_dashboard_only_when_asked() {
    let Some(python) = python() else { return };
    let dir = scratch("dashboard");
    let run = |extra: &[&str], until: &str| {
        let log = dir.join(format!("out{}.txt", extra.len()));
        let mut c = gpucluster(&["--topology", "sim:h100", "dask", "local", "--protocol", "tcp", "--insecure"]);
        c.args(["-v", "--grace", "5"]).args(extra).arg("--python").arg(&python);
        c.stdout(std::fs::File::create(&log).expect("log")).stderr(Stdio::null());
        let mut launcher = Proc(c.spawn().expect("launcher"));
        wait_until(until, Duration::from_secs(60), || {
            std::fs::read_to_string(&log).unwrap_or_default().contains(until)
        });
        // SAFETY: signalling our own child.
        unsafe { libc::kill(launcher.0.id() as i32, libc::SIGINT) };
        assert_eq!(launcher.0.wait().expect("wait").code(), Some(130));
        std::fs::read_to_string(&log).expect("log")
    };
    // Off (the default): even with every Dask line shown (-v), none claims a dashboard.
    let off = run(&[], "registered after");
    assert!(!off.contains("dashboard at:"), "{off}");
    assert!(!off.contains("dashboard:"), "{off}");
    // Asked for where the dashboard cannot be served (the tests' Python has no bokeh, which Dask's
    // dashboard needs): refused at once, saying how to fix it, rather than a URL serving nothing.
    let refused = gpucluster(&["--topology", "sim:h100", "dask", "local", "--insecure", "--dashboard", "--python"])
        .arg(&python)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&refused.stderr);
    if err.contains("needs bokeh") {
        assert_eq!(refused.status.code(), Some(1), "{err}");
        assert!(err.contains("-m pip install bokeh"), "{err}");
    } else {
        // A Python with bokeh: the launcher says where the dashboard is.
        let on = run(&["--dashboard", "127.0.0.1:0"], "dashboard: ");
        let line = on.lines().find(|l| l.starts_with("dashboard: ")).expect("a dashboard line");
        assert!(line.starts_with("dashboard: http://127.0.0.1:"), "{line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

const DEVICE_FRAMES: &str = r#"
import os, sys
from distributed import Client
from gpucluster.sim import DeviceArray
def make(n):
    return DeviceArray.from_bytes(bytes(range(256)) * (n // 256))
def check(x, n):
    return x.tobytes() == bytes(range(256)) * (n // 256), x.via
with Client(scheduler_file=sys.argv[1], timeout=30) as c:
    a, b = list(c.scheduler_info()["workers"])[:2]
    print("address", c.scheduler.address)
    for n in (0, 256, 64 << 20):
        x = c.submit(make, n, workers=[a], pure=False)
        print(n, *c.submit(check, x, n, workers=[b], pure=False).result(timeout=60))
"#;

const INTRUDE: &str = "import sys\nfrom distributed import Client\ntry:\n    c = Client(sys.argv[1], timeout=5)\n    \
                       print('INTRUDED', c.run(lambda: 1))\nexcept Exception as e:\n    print('refused', type(e).__name__)\n";

#[test]
fn dask_local_speaks_gpucluster_where_it_is_installed_and_only_to_holders_of_the_secret() {
    let Some(python) = python() else { return };
    let dir = scratch("gpucluster");
    let log = dir.join("out.txt");
    // The user's secret file lives here, not in the home of whoever runs the tests.
    let config = dir.join("config");
    let mut c = gpucluster(&["--topology", "sim:a30", "dask", "local", "--grace", "5"]);
    c.env("XDG_CONFIG_HOME", &config).env_remove("GPUCLUSTER_SECRET").env_remove("GPUCLUSTER_SECRET_FILE");
    c.arg("--python").arg(&python).stdout(std::fs::File::create(&log).expect("log")).stderr(Stdio::null());
    let mut launcher = Proc(c.spawn().expect("launcher"));
    wait_until("the ready line", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("all 4 Dask worker(s) registered after")
    });
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("protocol gpucluster"), "{text}");
    let file = text
        .lines()
        .find_map(|l| l.strip_prefix("scheduler file: "))
        .and_then(|l| l.split(' ').next())
        .map(PathBuf::from)
        .expect("scheduler file");
    // The user's own client, from the same secret file: device arrays move over side channels.
    let out = Command::new(&python)
        .args(["-c", DEVICE_FRAMES, &file.display().to_string()])
        .env("XDG_CONFIG_HOME", &config)
        .output()
        .expect("client");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    for n in ["0", "256", &(64 << 20).to_string()] {
        assert!(report.contains(&format!("\n{n} True device frame")), "{n} bytes: {report}");
    }
    let address = report.lines().find_map(|l| l.strip_prefix("address ")).expect("address").to_owned();
    assert!(address.starts_with("gpucluster://"), "{address}");
    // Workers of another launcher of ours join by the address, as Dask's CLI takes it; they hold
    // the secret, so nothing warns that the scheduler is open.
    let joined = gpucluster(&["--topology", "sim:rapids-a100-pcie", "dask", "worker", &address, "--python"])
        .arg(&python)
        .env("XDG_CONFIG_HOME", &config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("joiner");
    let mut joiner = Proc(joined);
    let count = "import sys\nfrom distributed import Client\nc = Client(sys.argv[1], timeout=30)\n\
                 c.wait_for_workers(7, timeout=60)\nprint(len(c.scheduler_info(n_workers=-1)['workers']))\n";
    let out =
        Command::new(&python).args(["-c", count, &address]).env("XDG_CONFIG_HOME", &config).output().expect("count");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7", "{}", String::from_utf8_lossy(&out.stderr));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(joiner.0.id() as i32, libc::SIGTERM) };
    let status = joiner.0.wait().expect("wait");
    let mut said = String::new();
    std::io::Read::read_to_string(&mut joiner.0.stderr.take().expect("stderr"), &mut said).expect("read");
    assert_eq!(status.code(), Some(143), "{said}");
    assert!(!said.contains("does not authenticate"), "gpucluster:// is authenticated: {said}");
    // Without the secret (another secret, plain TCP to the same port, another user): nothing.
    let plain = address.replacen("gpucluster://", "tcp://", 1);
    let wrong = [("GPUCLUSTER_SECRET", "00".repeat(32))];
    for (target, env) in [(&address, &wrong[..]), (&plain, &[][..])] {
        let out = Command::new(&python)
            .args(["-c", INTRUDE, target])
            .env("XDG_CONFIG_HOME", &config)
            .envs(env.iter().cloned())
            .output()
            .expect("intruder");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("refused") && !text.contains("INTRUDED"), "{target}: {text}");
    }
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } == 0 {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&python)
            .args(["-c", INTRUDE, &address])
            .env("HOME", "/nonexistent")
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .output()
            .expect("setpriv");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("INTRUDED"), "another user got in: {text}");
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(launcher.0.id() as i32, libc::SIGINT) };
    assert_eq!(launcher.0.wait().expect("wait").code(), Some(130), "Ctrl-C ends with 130");
    assert!(processes_with(&file.display().to_string()).is_empty(), "no scheduler or worker left");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client without the cluster's credentials gets nothing: not as this user without them, and
/// not as another user of the host, who cannot even read them.
fn attack_as_another_client(python: &Path, file: &Path) {
    let folder = file.parent().expect("dir");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(folder).expect("stat").permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(folder.join("key.pem")).expect("stat").permissions().mode() & 0o777, 0o600);
    let address: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file).expect("scheduler file")).expect("json");
    let address = address["address"].as_str().expect("address").to_owned();
    assert!(address.starts_with("tls://"), "dask local speaks TLS by default: {address}");
    let plain = address.replacen("tls://", "tcp://", 1);
    let intrude = "import sys\nfrom distributed import Client\ntry:\n    c = Client(sys.argv[1], timeout=5)\n    \
                   print('INTRUDED', c.run(lambda: 1))\nexcept Exception as e:\n    print('refused', type(e).__name__)\n";
    for target in [&address, &plain] {
        let out = Command::new(python).args(["-c", intrude, target]).output().expect("client");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("refused") && !text.contains("INTRUDED"), "{target}: {text}");
    }
    // The HTTP servers answer nothing: no task names, call stacks or logs for whoever connects.
    let http = r#"
import os, sys, urllib.request, urllib.error
from distributed import Client, Security
d = os.path.dirname(sys.argv[1])
sec = Security(tls_ca_file=f"{d}/ca.pem", tls_client_cert=f"{d}/cert.pem", tls_client_key=f"{d}/key.pem", require_encryption=True)
with Client(scheduler_file=sys.argv[1], security=sec, timeout=30) as c:
    ports = [c.scheduler_info()["services"]["dashboard"]]
    ports += [p for p in c.run(lambda dask_worker: dask_worker.http_server.port).values()]
for port in ports:
    for route in ["/info/main/workers.html", "/json/identity.json", "/metrics", "/health", "/statics/"]:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=5)
            print("SERVED", port, route)
        except urllib.error.HTTPError as e:
            print("status", e.code)
print("checked", len(ports))
"#;
    let out = Command::new(python).args(["-c", http, &file.display().to_string()]).output().expect("client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("checked 5") && !text.contains("SERVED"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } == 0 {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(folder.join("key.pem"))
            .output()
            .expect("setpriv");
        assert!(!out.status.success(), "another user read the cluster's key");
    }
}

/// A Python that runs the scheduler (and the probe) but whose Dask workers always fail, as they
/// do where the driver refuses every device.
fn python_whose_workers_fail(dir: &Path, python: &Path) -> PathBuf {
    let wrapper = dir.join("python-workers-fail");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$2\" in *\"'dask-worker'\"*|*\"'dask-cuda-worker'\"*) echo 'NVMLError_NotFound: no such device' >&2; exit 1;; esac\n\
             exec {} \"$@\"\n",
            python.display()
        ),
    )
    .expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    wrapper
}

#[test]
fn a_cluster_whose_workers_cannot_run_says_why_and_ends() {
    let Some(python) = python() else { return };
    let dir = scratch("noworker");
    let wrapper = python_whose_workers_fail(&dir, &python);
    let started = Instant::now();
    let out = gpucluster(&["--topology", "sim:a30", "dask", "local", "--max-restarts", "1", "--grace", "2"])
        .arg("--python")
        .arg(&wrapper)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("stopped: no worker could run"), "{text}");
    assert!(text.contains("NVMLError_NotFound: no such device"), "the workers' own words: {text}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    assert!(processes_with(&wrapper.display().to_string()).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP socket bound to a free port of 127.0.0.1 that does not listen, and the port: nobody
/// answers there, and nobody else can take the port while the test runs.
fn bound_not_listening() -> (std::os::fd::OwnedFd, u16) {
    use std::os::fd::FromRawFd;
    // SAFETY: a new socket, bound to a zeroed-then-filled sockaddr_in, then asked its name; the
    // descriptor is owned by the returned OwnedFd.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::bind(fd, (&raw const addr).cast(), len), 0);
        let mut got = len;
        assert_eq!(libc::getsockname(fd, (&raw mut addr).cast(), &mut got), 0);
        (owned, u16::from_be(addr.sin_port))
    }
}

#[test]
fn a_signal_while_dask_is_checked_ends_at_once_and_leaves_nothing() {
    let dir = scratch("probe");
    let hang = dir.join("python-that-hangs");
    // A wrapper that does not exec: the check's process has a child of its own.
    std::fs::write(&hang, "#!/bin/sh\nsleep 3600.5\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut launcher = gpucluster(&["--topology", "sim:a30", "dask", "local", "--python"])
        .arg(&hang)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_until("the probe", Duration::from_secs(10), || !processes_with("sleep 3600.5").is_empty());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(launcher.id() as i32, libc::SIGTERM) };
    let signalled = Instant::now();
    let status = launcher.wait().expect("wait");
    assert_eq!(status.code(), Some(143));
    assert!(signalled.elapsed() < Duration::from_secs(2));
    wait_until("the probe and its child to die with the launcher", Duration::from_secs(3), || {
        processes_with(&hang.display().to_string()).is_empty() && processes_with("sleep 3600.5").is_empty()
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn joining_a_scheduler_that_does_not_answer_fails_at_once() {
    let Some(python) = python() else { return };
    let dir = scratch("unreachable");
    let file = dir.join("scheduler.json");
    let (_held, port) = bound_not_listening();
    std::fs::write(&file, format!("{{\"address\": \"tcp://127.0.0.1:{port}\"}}")).expect("write");
    let started = Instant::now();
    let out = gpucluster(&["--topology", "sim:a30", "dask", "worker", "--scheduler-file", &file.display().to_string()])
        .arg("--python")
        .arg(&python)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("does not answer") && err.contains(&port.to_string()), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    // The same, given the address as Dask's CLI takes it; and addresses that are not ones.
    let address = format!("tcp://127.0.0.1:{port}");
    let out = gpucluster(&["--topology", "sim:a30", "dask", "worker", &address]).arg("--python").arg(&python).output();
    let err = String::from_utf8_lossy(&out.as_ref().expect("run").stderr).into_owned();
    assert_eq!(out.expect("run").status.code(), Some(1), "{err}");
    assert!(err.contains("does not answer") && err.contains(&port.to_string()), "{err}");
    for bad in ["127.0.0.1:8786", "tcp://:0", "tcp://h\u{1b}[2J:1"] {
        let out = gpucluster(&["--topology", "sim:a30", "dask", "worker", bad]).arg("--python").arg(&python).output();
        let out = out.expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
        assert!(err.contains("the scheduler address") && !err.contains('\u{1b}'), "{bad}: {err}");
    }
    let out = gpucluster(&["--topology", "sim:a30", "dask", "worker", "tls://127.0.0.1:1"])
        .arg("--python")
        .arg(&python)
        .output();
    let out = out.expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("speaks TLS: give --tls-ca-file"), "{out:?}");
    // A port that accepts connections but never speaks Dask: the handshake is what counts.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std::fs::write(&file, format!("{{\"address\": \"tcp://{}\"}}", silent.local_addr().expect("addr"))).expect("write");
    let started = Instant::now();
    let out = gpucluster(&["--topology", "sim:a30", "dask", "worker", "--scheduler-file", &file.display().to_string()])
        .arg("--python")
        .arg(&python)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no Dask handshake"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(25), "took {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_dask_and_bad_scheduler_files_are_clear_errors() {
    let out = gpucluster(&["--topology", "sim:a30", "dask", "local", "--python", "/nonexistent/python"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    // An interpreter that does not exist: the fix is another one, not an install into it.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("an interpreter that exists"), "{err}");
    let Some(python) = python() else { return };
    let dir = scratch("bad");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{}").expect("write");
    let out = gpucluster(&["--topology", "sim:a30", "dask", "worker", "--scheduler-file", &bad.display().to_string()])
        .arg("--python")
        .arg(&python)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a Dask scheduler file"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 9, item 9: a launcher killed by SIGKILL cannot remove its private directory (which
/// holds the cluster's TLS key); its guards do, once they have stopped its scheduler and workers.
#[test]
fn a_killed_dask_local_leaves_no_process_and_no_private_directory() {
    let Some(python) = python() else { return };
    let dir = scratch("sigkill");
    let log = dir.join("out.txt");
    let mut c = gpucluster(&["--topology", "sim:a30", "dask", "local", "--protocol", "tcp"]);
    c.env("TMPDIR", &dir).env_remove("XDG_RUNTIME_DIR");
    c.arg("--python").arg(&python).stdout(std::fs::File::create(&log).expect("log")).stderr(Stdio::null());
    let mut launcher = Proc(c.spawn().expect("launcher"));
    let file = scheduler_file_in(&log, Duration::from_secs(60));
    let private = file.parent().expect("private directory").to_owned();
    assert!(private.join("key.pem").exists(), "TLS credentials in the private directory");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(launcher.0.id() as i32, libc::SIGKILL) };
    let _ = launcher.0.wait();
    wait_until("the private directory to go", Duration::from_secs(10), || !private.exists());
    wait_until("every process of the cluster to go", Duration::from_secs(10), || {
        processes_with(&private.display().to_string()).is_empty()
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench dask` stopped by a signal while its client measures: the variant's cluster and its
/// client go, the private directory goes, nothing is reported, and the exit says which signal.
#[test]
fn an_interrupted_bench_dask_stops_at_once_and_leaves_nothing() {
    let Some(python) = python() else { return };
    let dir = scratch("bench-interrupted");
    let mut c = gpucluster(&["--topology", "sim:a30", "bench", "dask", "--variants", "gpucluster,tcp"]);
    c.args(["--sizes", "64M", "--repeats", "1000", "--python"]).arg(&python);
    c.env("TMPDIR", &dir).env_remove("XDG_RUNTIME_DIR").stdout(Stdio::null()).stderr(Stdio::piped());
    let mut bench = Proc(c.spawn().expect("bench dask"));
    // The private directory of the first variant's cluster, once its client is measuring.
    let mut private = None;
    wait_until("the benchmark's client to measure", Duration::from_secs(90), || {
        let found = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("gpucluster-dask-")));
        private = found.clone();
        found.is_some_and(|p| {
            processes_with(&p.display().to_string()).iter().any(|p| p.command_line.contains("gpucluster.bench"))
        })
    });
    let private = private.expect("the cluster's private directory");
    let started = std::time::Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(bench.0.id() as i32, libc::SIGINT) };
    let status = bench.0.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "128 + SIGINT");
    assert!(started.elapsed() < Duration::from_secs(20), "stopped within the grace: {:?}", started.elapsed());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut bench.0.stderr.take().expect("stderr"), &mut err).expect("stderr");
    assert!(err.contains("bench dask interrupted (SIGINT) during gpucluster; nothing reported"), "{err}");
    assert!(!err.contains("bench dask: tcp"), "no variant after the signal: {err}");
    wait_until("every process of the cluster to go", Duration::from_secs(10), || {
        processes_with(&private.display().to_string()).is_empty()
    });
    assert!(!private.exists(), "{} is left", private.display());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench dask` on simulated device memory: each variant's cluster comes up, device arrays move
/// and are measured; a variant that cannot run (UCX without distributed-ucxx) is a note and exit
/// 1, never the loss of the other variants' figures; the saved report prints and plots again.
#[test]
fn bench_dask_measures_each_protocol_and_a_failing_one_costs_nothing_else() {
    let Some(python) = python() else { return };
    let dir = scratch("bench");
    let out = gpucluster(&["--topology", "sim:a30", "bench", "dask", "--variants", "gpucluster,ucx,tcp"])
        .args(["--sizes", "1M", "--repeats", "1", "--json", "--python"])
        .arg(&python)
        .env("TMPDIR", &dir)
        .output()
        .expect("bench dask");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "one variant could not run: {err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a report, though one variant failed");
    let variants = report["variants"].as_array().expect("variants");
    let names: Vec<&str> = variants.iter().filter_map(|v| v["variant"]["name"].as_str()).collect();
    assert_eq!(names, ["gpucluster", "ucx", "tcp"]);
    for v in [&variants[0], &variants[2]] {
        let results = v["results"].as_array().expect("results");
        assert_eq!(results.len(), 1, "{v}");
        assert_eq!(results[0]["bytes"], 1 << 20);
        assert!(results[0]["wall_gbps"].as_f64().is_some_and(|g| g > 0.0), "{v}");
    }
    let note = variants[1]["notes"][0].as_str().unwrap_or_default();
    assert!(note.starts_with("did not run") && note.contains("distributed-ucxx"), "{note}\n{err}");
    let saved = dir.join("report.json");
    std::fs::write(&saved, &out.stdout).expect("save");
    let plot = dir.join("plot.svg");
    let again =
        gpucluster(&["bench", "dask", "--report"]).arg(&saved).arg("--plot").arg(&plot).output().expect("report");
    let table = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(
        table.contains("gpucluster") && table.contains("1 MiB") && table.contains("note: ucx: did not run"),
        "{table}"
    );
    assert!(std::fs::read_to_string(&plot).is_ok_and(|svg| svg.starts_with("<svg")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The spec `gpucluster.dask.LocalCluster` runs for `sim:a30` with a 2 GiB host memory limit.
const LOCAL_CLUSTER_SPEC: &str = r#"
import json
from gpucluster.dask import LocalCluster
if __name__ == "__main__":
    cluster = LocalCluster(topology="sim:a30", memory_limit="2GiB")
    try:
        print(json.dumps(cluster.gpucluster_spec))
    finally:
        cluster.close()
"#;

#[test]
fn both_front_ends_run_one_cluster_spec() {
    let Some(python) = python() else { return };
    let out =
        gpucluster(&["--topology", "sim:a30", "dask", "local", "--dry-run", "--memory-limit", "2GiB", "--python"])
            .arg(&python)
            .env_remove("CUDA_VISIBLE_DEVICES")
            .output()
            .expect("dry run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut cli: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the spec as JSON");
    let out = Command::new(&python)
        .args(["-c", LOCAL_CLUSTER_SPEC])
        .env_remove("CUDA_VISIBLE_DEVICES")
        .current_dir("/")
        .output()
        .expect("LocalCluster");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rfind(|l| l.starts_with('{')).expect("the spec's line");
    let mut python_spec: serde_json::Value = serde_json::from_str(line).expect("the spec as JSON");
    // Where each keeps its files is its own private directory; everything else is one value.
    for spec in [&mut cli, &mut python_spec] {
        let directory = spec["scheduler"]["dask_config"]["temporary-directory"].take();
        assert!(directory.is_string(), "{spec}");
        for worker in spec["workers"].as_array_mut().expect("workers") {
            assert_eq!(worker["dask_config"]["temporary-directory"].take(), directory, "one directory a cluster");
        }
    }
    assert_eq!(cli, python_spec, "the command line and LocalCluster disagree");
    assert_eq!(cli["protocol"], "gpucluster");
    assert_eq!(cli["workers"].as_array().map(Vec::len), Some(4));
    assert!(cli["workers"].as_array().expect("workers").iter().all(|w| w["memory_limit_bytes"] == 2u64 << 30));
}
