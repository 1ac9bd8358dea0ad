//! The supervision tests: real `sh` processes under [`supervise`], their output, restarts,
//! stops and what they leave behind, through the module's public items.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::output::MAX_LINE;
use super::spec::SHOWN_LINES;
use super::*;

fn sh(name: &str, script: &str) -> ProcessSpec {
    ProcessSpec {
        name: name.into(),
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        env: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
        cpu_affinity: Some("0".into()),
        essential: false,
        cwd: None,
    }
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn run(specs: Vec<ProcessSpec>, config: Supervision) -> (Supervised, String) {
    let buffer = Buffer::default();
    let sink: Sink = Arc::new(Mutex::new(buffer.clone()));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let supervised = rt
        .block_on(async {
            let mut signals = Signals::install().expect("signals");
            supervise(specs, &config, sink, &mut signals).await
        })
        .expect("supervise");
    let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf8");
    (supervised, text)
}

/// Processes whose command line is exactly `sleep <marker>`.
fn sleeping(marker: &str) -> usize {
    let wanted = format!("sleep\0{marker}\0");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted.as_bytes()))
        .count()
}

fn marker(n: u32) -> String {
    format!("{}.{}{n}", 40 + n, std::process::id())
}

#[test]
fn output_is_prefixed_and_exits_reported() {
    let (done, text) =
        run(vec![sh("a", "echo $GREETING from a; echo oops >&2"), sh("b", "exit 3")], Supervision::default());
    assert!(text.contains("[a] hello from a"), "{text}");
    assert!(text.contains("[a] oops"), "{text}");
    assert_eq!(done.outcomes[0].exit, Exit::Code(0));
    assert_eq!(done.outcomes[1].exit, Exit::Code(3));
    assert_eq!(done.stop, None);
    assert_eq!(done.outcomes[0].last_lines.len(), 2, "{:?}", done.outcomes[0].last_lines);
    let traceback = Outcome {
        name: "w".into(),
        exit: Exit::Code(1),
        restarts: 0,
        last_lines: ["start", "ValueError: name taken, w", "Traceback (most recent call last):"]
            .into_iter()
            .chain(["  File x"; 8])
            .map(String::from)
            .collect(),
    };
    assert_eq!(traceback.cause_lines()[0], "ValueError: name taken, w", "the error before a long traceback tail");
    assert_eq!(traceback.cause_lines().len(), 2 + SHOWN_LINES);
}

#[test]
fn failures_are_restarted_up_to_the_bound() {
    let dir = std::env::temp_dir().join(format!("gpucluster-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let counter = dir.join("runs");
    // Fails twice, then succeeds.
    let script = format!("echo x >> {0}; test $(wc -l < {0}) -ge 3", counter.display());
    let config = Supervision {
        restart: Restart::OnFailure { max: 5, backoff: Duration::from_millis(10) },
        ..Supervision::default()
    };
    let (done, text) = run(vec![sh("flaky", &script)], config.clone());
    assert_eq!(done.outcomes[0].exit, Exit::Code(0));
    assert_eq!(done.outcomes[0].restarts, 2);
    assert!(text.contains("restarting in"), "{text}");
    let (done, _) = run(
        vec![sh("doomed", "exit 1")],
        Supervision { restart: Restart::OnFailure { max: 2, backoff: Duration::from_millis(5) }, ..config },
    );
    assert_eq!((done.outcomes[0].exit, done.outcomes[0].restarts), (Exit::Code(1), 2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_program_that_does_not_exist_is_reported() {
    let spec = ProcessSpec { program: "/nonexistent/program".into(), ..sh("ghost", "") };
    let (done, text) = run(vec![spec], Supervision::default());
    assert_eq!(done.outcomes[0].exit, Exit::NotStarted);
    assert!(text.contains("cannot start"), "{text}");
}

#[test]
fn a_failure_stops_the_others_when_the_job_is_all_or_nothing() {
    let m = marker(1);
    let hooked = Arc::new(Mutex::new(Vec::new()));
    let seen = hooked.clone();
    let config = Supervision {
        stop_when: StopWhen::AnyFails,
        grace: Duration::from_secs(5),
        on_stop: Some(Arc::new(move |why: &Stop| seen.lock().expect("lock").push(why.to_string()))),
        ..Supervision::default()
    };
    let started = Instant::now();
    let (done, text) = run(vec![sh("dies", "sleep 0.2; exit 3"), sh("waits", &format!("exec sleep {m}"))], config);
    assert!(started.elapsed() < Duration::from_secs(3), "the job stopped at once, not after {:?}", started.elapsed());
    assert_eq!(done.stop, Some(Stop::Failed { name: "dies".into(), exit: Exit::Code(3) }));
    assert_eq!(done.outcomes[1].exit, Exit::Signal(libc::SIGTERM));
    assert!(text.contains("stopping: dies failed (exit 3)"), "{text}");
    assert_eq!(hooked.lock().expect("lock").as_slice(), ["dies failed (exit 3)"]);
    assert_eq!(sleeping(&m), 0);
}

#[test]
fn a_cluster_stops_without_its_scheduler_or_without_any_worker() {
    let m = marker(2);
    let config = Supervision { stop_when: StopWhen::EssentialEndsOrNoneLeft, ..Supervision::default() };
    let scheduler = ProcessSpec { essential: true, ..sh("scheduler", &format!("exec sleep {m}")) };
    let (done, _) = run(vec![scheduler.clone(), sh("w0", "exit 1"), sh("w1", "exit 2")], config.clone());
    assert_eq!(done.stop, Some(Stop::NoneLeft));
    assert_eq!(done.outcomes[0].exit, Exit::Signal(libc::SIGTERM));
    let essential = ProcessSpec { essential: true, ..sh("scheduler", "exit 4") };
    let (done, _) = run(vec![essential, sh("w0", &format!("exec sleep {m}"))], config);
    assert_eq!(done.stop, Some(Stop::EssentialEnded { name: "scheduler".into(), exit: Exit::Code(4) }));
    assert_eq!(sleeping(&m), 0);
}

#[test]
fn a_job_past_its_time_limit_is_stopped() {
    let m = marker(4);
    let config = Supervision { time_limit: Some(Duration::from_millis(300)), ..Supervision::default() };
    let started = Instant::now();
    let (done, text) = run(vec![sh("stuck", &format!("exec sleep {m}")), sh("quick", "true")], config);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(done.stop, Some(Stop::TimeLimit(Duration::from_millis(300))));
    assert_eq!(done.outcomes[0].exit, Exit::Signal(libc::SIGTERM));
    assert!(text.contains("did not end within its time limit"), "{text}");
    assert_eq!(sleeping(&m), 0);
}

#[test]
fn a_stop_reaches_essential_processes_last() {
    let config = Supervision { time_limit: Some(Duration::from_millis(300)), ..Supervision::default() };
    let scheduler = ProcessSpec {
        essential: true,
        ..sh("scheduler", "trap 'echo scheduler stopped; exit 0' TERM; while :; do sleep 0.02; done")
    };
    let worker = sh("worker", "trap 'sleep 0.3; echo worker stopped; exit 0' TERM; while :; do sleep 0.02; done");
    let (done, text) = run(vec![scheduler, worker], config);
    assert_eq!(done.stop, Some(Stop::TimeLimit(Duration::from_millis(300))));
    let (w, s) = (text.find("worker stopped"), text.find("scheduler stopped"));
    assert!(w.is_some() && s.is_some() && w < s, "the worker stops before its scheduler:\n{text}");
}

#[test]
fn essentials_first_stops_the_scheduler_then_what_it_left_running() {
    let config = Supervision {
        time_limit: Some(Duration::from_millis(300)),
        essentials_first: true,
        stop_when: StopWhen::EssentialEndsOrNoneLeft,
        ..Supervision::default()
    };
    // The scheduler takes its time to close its workers; one worker ends when told by it (here:
    // on its own, like a worker the scheduler closed), the other only on a signal.
    let scheduler = ProcessSpec {
        essential: true,
        ..sh("scheduler", "trap 'sleep 0.3; echo scheduler stopped; exit 0' TERM; while :; do sleep 0.02; done")
    };
    let worker = sh("worker", "trap 'echo worker stopped; exit 0' TERM; while :; do sleep 0.02; done");
    let (done, text) = run(vec![scheduler, worker], config);
    assert_eq!(done.stop, Some(Stop::TimeLimit(Duration::from_millis(300))));
    let (w, s) = (text.find("[worker] worker stopped"), text.find("[scheduler] scheduler stopped"));
    assert!(w.is_some() && s.is_some() && s < w, "the scheduler stops before its workers:\n{text}");
    assert!(text.contains("SIGTERM sent to scheduler, then to the 1 other process(es) still running"), "{text}");
}

#[test]
fn output_is_bounded_per_line_and_need_not_be_text() {
    // Bytes that are not UTF-8, a 100 KB line without an end, and a progress bar's `\r`.
    let script = "printf 'before\\n\\377\\376 binary\\n'; head -c 100000 /dev/zero | tr '\\0' a; \\
                  printf '\\n10%%\\r20%%\\r\\n'; echo after";
    let (done, text) = run(vec![sh("noisy", script)], Supervision::default());
    assert_eq!(done.outcomes[0].exit, Exit::Code(0), "{text}");
    assert!(text.contains("[noisy] before\n[noisy] \u{fffd}\u{fffd} binary\n"), "{text}");
    assert!(text.contains("[noisy] after"), "the worker lived on: {text}");
    assert!(text.contains("[noisy] 10%\n[noisy] 20%\n"), "{text}");
    let longest = text.lines().map(str::len).max().unwrap_or(0);
    assert!(longest <= MAX_LINE + 16, "lines are cut at {MAX_LINE} bytes, not {longest}");
    let a_bytes: usize =
        text.lines().filter_map(|l| l.strip_prefix("[noisy] ")).filter(|l| l.starts_with("aaa")).map(str::len).sum();
    assert_eq!(a_bytes, 100_000, "nothing of the long line is lost");
}

#[test]
fn what_a_worker_leaves_in_its_group_goes_with_it() {
    let m = marker(3);
    let (done, _) = run(vec![sh("parent", &format!("sleep {m} & sleep {m} & exit 0"))], Supervision::default());
    assert_eq!(done.outcomes[0].exit, Exit::Code(0));
    let deadline = Instant::now() + Duration::from_secs(2);
    while sleeping(&m) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sleeping(&m), 0, "background children of an exited worker are killed");
}

#[test]
fn cpu_lists_parse() {
    assert_eq!(parse_cpus("0-3,8,10-11"), vec![0, 1, 2, 3, 8, 10, 11]);
    assert!(parse_cpus("x").is_empty());
}

#[test]
fn signal_stops_exit_as_shells_report_them() {
    assert_eq!(Stop::Signal(libc::SIGINT).exit_status(), Some(130));
    assert_eq!(Stop::Signal(libc::SIGTERM).exit_status(), Some(143));
    assert_eq!(Stop::Signal(libc::SIGHUP).exit_status(), Some(129));
    assert_eq!(Stop::NoneLeft.exit_status(), None);
    assert_eq!(crate::exit_status_after(libc::SIGPIPE), 141, "as `set -o pipefail` reports `gpucluster list | head`");
}
