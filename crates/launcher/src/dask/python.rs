//! Running Python for the launcher: probing an interpreter for the facts a cluster is built
//! from ([`probe_python`]), and checking that a scheduler completes Dask's handshake
//! ([`check_handshake`]).
//!
//! The Python it runs is the package's own (`gpucluster/_facts.py`, `gpucluster/_handshake.py`),
//! compiled in and given to `python -c`, so it also runs in a Python without the package. Every
//! run is bounded: in time ([`PYTHON_TIMEOUT`]), in output read, and in what it leaves running.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::facts::PythonFacts;
use super::tls::TlsFiles;
use crate::LauncherError;
use cluster_core::wording::{Message, Setting};

/// The start of every `python -c` of ours. `-c` puts the working directory first on
/// `sys.path`, so a `dask.py` that another user left in a shared directory we were started from
/// would run as us; this takes it off before anything is imported (Python's `-P` does the same,
/// from 3.11 only). The processes also run in our private directory.
pub(super) const NO_CWD_IMPORTS: &str = "import sys; sys.path[:] = [p for p in sys.path if p]; ";

/// The package's probe of the facts (`gpucluster/_facts.py`): it prints them as one JSON line.
const FACTS_SCRIPT: &str = include_str!("../../../gpucluster-py/python/gpucluster/_facts.py");
/// The package's handshake check (`gpucluster/_handshake.py`): `ADDRESS [CA CERT KEY]`.
const HANDSHAKE_SCRIPT: &str = include_str!("../../../gpucluster-py/python/gpucluster/_handshake.py");

/// How long a check that runs Python may take (a cold `import distributed` takes seconds).
pub const PYTHON_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of a Python check's output that are read; the rest is drained and dropped.
const PYTHON_OUTPUT: u64 = 64 << 10;

/// What a bounded Python run printed.
#[derive(Debug)]
struct PythonRun {
    success: bool,
    stdout: String,
    stderr: String,
}

/// How [`run_python`] says the interpreter could not be started at all (not found, not
/// executable), which [`probe_python`] answers with another fix than installing Dask into it.
const CANNOT_RUN: &str = "cannot run it";

/// Runs `python -c script args...` for at most `timeout`, reading at most [`PYTHON_OUTPUT`] bytes
/// of each stream; the child dies with the launcher (`PR_SET_PDEATHSIG`) and is killed at the
/// deadline. `Err` carries what went wrong, in words.
fn run_python(
    python: &OsString,
    script: &str,
    args: &[&str],
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<PythonRun, String> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut command = Command::new(python);
    command.arg("-c").arg(format!("{NO_CWD_IMPORTS}\n{script}")).args(args);
    // From the root directory: nothing there is another user's to plant.
    command.current_dir("/").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // A process group of its own (a wrapper script's children too), killed however the check
    // ends; and the kernel kills the interpreter if the launcher dies.
    // SAFETY: setpgid and prctl are async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| format!("{CANNOT_RUN}: {e}"))?;
    let group = child.id() as i32;
    // SAFETY: killing the process group created for this check.
    let kill_group = || unsafe { libc::kill(-group, libc::SIGKILL) };
    let (tx, rx) = std::sync::mpsc::channel::<(bool, String)>();
    let reader = |stream: Option<Box<dyn Read + Send>>, is_stdout: bool| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut stream) = stream {
                let _ = (&mut stream).take(PYTHON_OUTPUT).read_to_end(&mut text);
                let _ = std::io::copy(&mut stream, &mut std::io::sink());
            }
            let _ = tx.send((is_stdout, String::from_utf8_lossy(&text).into_owned()));
        });
    };
    reader(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>), true);
    reader(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>), false);
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline && !cancel.load(Ordering::SeqCst) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                kill_group();
                let _ = child.wait();
                return Err(if cancel.load(Ordering::SeqCst) {
                    "the check was interrupted".to_owned()
                } else {
                    format!("it did not finish within {} s", timeout.as_secs())
                });
            }
        }
    };
    // What it left running goes too (its output would never end otherwise); a process that left
    // the group may still hold the pipes, so the output is awaited for a moment only.
    kill_group();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok((true, text)) => stdout = text,
            Ok((false, text)) => stderr = text,
            Err(_) => break,
        }
    }
    Ok(PythonRun { success: status.success(), stdout, stderr })
}

/// The last non-empty line of `text`, shortened to a message's length.
fn last_line(text: &str) -> String {
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let short: String = line.chars().take(300).collect();
    if short.len() < line.len() { format!("{short}...") } else { short }
}

/// An interpreter and what it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    /// The program (made absolute where it was given as a relative path).
    pub program: OsString,
    /// What it offers.
    pub facts: PythonFacts,
}

/// Checks that `python` can run Dask, and finds out what else it has.
///
/// # Errors
/// [`LauncherError::NoDask`] saying how to install it.
pub fn probe_python(python: &OsString, cancel: &AtomicBool) -> Result<Interpreter, LauncherError> {
    // Python runs from `/` (never from a directory another user may have planted modules in), so
    // a relative path such as `target/dask-venv/bin/python` is made absolute here, against the
    // directory the user typed it in; a bare name is looked up in PATH as before.
    let absolute = std::path::Path::new(python);
    let python = &if absolute.is_relative() && absolute.components().count() > 1 {
        std::path::absolute(absolute).map_or_else(|_| python.clone(), std::path::PathBuf::into_os_string)
    } else {
        python.clone()
    };
    let install = Message::from(format!(
        "install it with `{} -m pip install \"dask[distributed]\"` (and `dask-cuda` for GPU workers), or pass ",
        python.to_string_lossy()
    ))
    .setting(Setting::Python)
    .text(" (or GPUCLUSTER_PYTHON) an interpreter that has it");
    let fail = |detail: String| LauncherError::NoDask { python: python.clone(), detail, how: install.clone() };
    let run = run_python(python, FACTS_SCRIPT, &[], PYTHON_TIMEOUT, cancel).map_err(|detail| {
        // An interpreter that cannot be run at all cannot install anything: say what to give.
        if detail.starts_with(CANNOT_RUN) {
            let how = Message::from("pass ")
                .setting(Setting::Python)
                .text(" (or GPUCLUSTER_PYTHON) an interpreter that exists and has Dask, such as python3");
            LauncherError::NoDask { python: python.clone(), detail, how }
        } else {
            fail(detail)
        }
    })?;
    if !run.success {
        let said = last_line(&run.stderr);
        let said = if said.is_empty() { "it printed nothing".to_owned() } else { said };
        return Err(fail(format!("Dask is not installed for it ({said})")));
    }
    let line = run.stdout.lines().map(str::trim).rfind(|l| l.starts_with('{')).unwrap_or("");
    let facts: PythonFacts = serde_json::from_str(line)
        .map_err(|_| fail("it does not report what it has as gpucluster's probe does".into()))?;
    // A version is short and printable: anything else is not distributed answering.
    let version = &facts.distributed;
    if version.is_empty() || version.len() > 64 || !version.chars().all(|c| c.is_ascii_graphic()) {
        return Err(fail("it does not report a version of distributed".into()));
    }
    Ok(Interpreter { program: python.clone(), facts })
}

/// Checks that the scheduler at `address` completes Dask's own handshake (over TLS with `tls`),
/// which a port that accepts connections but is not a scheduler, or a scheduler that does not
/// speak, never does.
///
/// # Errors
/// [`LauncherError::SchedulerUnreachable`] with Dask's reason.
pub fn check_handshake(
    python: &OsString,
    address: &str,
    tls: Option<&TlsFiles>,
    cancel: &AtomicBool,
) -> Result<(), LauncherError> {
    let path = |p: Option<&PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
    let (ca, cert, key) = (path(tls.map(|t| &t.ca)), path(tls.map(|t| &t.cert)), path(tls.map(|t| &t.key)));
    let unreachable = |reason: String| LauncherError::SchedulerUnreachable { address: address.to_owned(), reason };
    let run = run_python(python, HANDSHAKE_SCRIPT, &[address, &ca, &cert, &key], PYTHON_TIMEOUT, cancel)
        .map_err(|e| unreachable(format!("checking it with Python: {e}")))?;
    if !run.success {
        return Err(unreachable(format!("no Dask handshake: {}", last_line(&run.stderr))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_that_hangs_or_floods_is_bounded() {
        let started = std::time::Instant::now();
        let never = AtomicBool::new(false);
        let err = run_python(&"python3".into(), "import time; time.sleep(60)", &[], Duration::from_millis(500), &never)
            .expect_err("hangs");
        assert!(err.contains("did not finish within"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let run = run_python(&"python3".into(), "print('x' * 50_000_000)", &[], Duration::from_secs(30), &never)
            .expect("runs");
        assert_eq!(run.stdout.len() as u64, PYTHON_OUTPUT, "only the first 64 KiB are kept");
        // A child left behind holding the output: the check still ends, and takes it along.
        let started = std::time::Instant::now();
        let script = "import subprocess; subprocess.Popen(['sleep', '31.7']); print('2026.8.0')";
        let run = run_python(&"python3".into(), script, &[], Duration::from_secs(30), &never).expect("runs");
        assert_eq!(run.stdout.trim(), "2026.8.0");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        let left = std::process::Command::new("pgrep").args(["-f", "sleep 31.7"]).output().expect("pgrep");
        assert!(left.stdout.is_empty(), "the check's child was left running");
        assert!(last_line(&"y".repeat(10_000)).len() < 400);
    }

    #[test]
    fn a_missing_python_or_dask_says_how_to_install() {
        // No interpreter: installing into it cannot help; another one must be given.
        let err = probe_python(&"/nonexistent/python3".into(), &AtomicBool::new(false)).expect_err("no python");
        assert!(err.to_string().contains("an interpreter that exists"), "{err}");
        assert!(!err.to_string().contains("pip install"), "{err}");
        let err = probe_python(&"false".into(), &AtomicBool::new(false)).expect_err("no dask");
        assert!(err.to_string().contains("Dask is not installed"), "{err}");
        assert!(err.to_string().contains("pip install"), "{err}");
    }
}
