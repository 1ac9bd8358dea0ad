//! Process helpers for the tests that run gpucluster as a real process: the command that runs
//! the built binary in a controlled environment ([`gpucluster`]), and this machine's processes
//! found by their command lines ([`processes_with`], [`processes_running`]) or their parents
//! ([`children_of`], [`parent_of`]), read from `/proc`. Nothing here starts a worker or a
//! cluster itself; the tests do, and use these to check what is left running.

use std::ffi::OsStr;
use std::process::Command;

/// Variables that change gpucluster's behaviour: removed from every command [`gpucluster`]
/// builds, so that results do not depend on the machine running the tests (a test or a
/// scenario that needs one sets it).
pub const CONTROLLED_ENV: &[&str] =
    &["CUDA_VISIBLE_DEVICES", "GPUCLUSTER_TOPOLOGY", "UCX_TLS", "NCCL_MULTI_RANK_GPU_ENABLE"];

/// A command that runs the gpucluster `binary`, without the [`CONTROLLED_ENV`] variables.
///
/// The binary's path is the caller's to give: only the tests of `crates/gpucluster` know it,
/// as `env!("CARGO_BIN_EXE_gpucluster")`, and xtask passes the one it built.
pub fn gpucluster(binary: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(binary);
    for var in CONTROLLED_ENV {
        command.env_remove(var);
    }
    command
}

/// A running process, as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Its process id.
    pub pid: i32,
    /// Its command line: the program and its arguments, joined by single spaces.
    pub command_line: String,
}

/// Every process whose command line (see [`Process::command_line`]) satisfies `test`, in no
/// particular order. Processes that end while they are read are left out; a zombie (ended, not
/// yet reaped) has an empty command line, so it matches only a test that accepts one.
pub fn processes_where(test: impl Fn(&str) -> bool) -> Vec<Process> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(entry.path().join("cmdline")).ok()?;
            // Each argument ends with a NUL.
            let command_line = String::from_utf8_lossy(raw.strip_suffix(b"\0").unwrap_or(&raw)).replace('\0', " ");
            test(&command_line).then_some(Process { pid, command_line })
        })
        .collect()
}

/// The processes whose command line contains `needle` anywhere: a worker by its `--name`, every
/// process given a scheduler file. A launcher, guard or shell that passes `needle` on to its
/// children matches too; to find only the processes that run a command, see
/// [`processes_running`].
pub fn processes_with(needle: &str) -> Vec<Process> {
    processes_where(|command_line| command_line.contains(needle))
}

/// The processes whose command line starts with `command` (`sleep 61.123`, `/path/gpucluster
/// worker`): those running it themselves, not the launcher, guard or `sh -c` whose arguments
/// carry it. Tests make `command` unique to themselves (a `sleep` of a duration that names the
/// test and its process id), as other tests run at the same time.
pub fn processes_running(command: &str) -> Vec<Process> {
    processes_where(|command_line| command_line.starts_with(command))
}

/// The parent of process `pid`, from `/proc/PID/stat`; `None` once it has gone.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name in parentheses may hold spaces and parentheses: the fields follow its last `)`.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The processes whose parent is `parent`, now.
pub fn children_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_found_by_what_it_runs_and_by_its_parent() {
        // A duration no other process runs: this test's process id.
        let marker = format!("sleep 30.{}", std::process::id());
        let (program, duration) = marker.split_once(' ').expect("two words");
        let mut child = Command::new("sh").args(["-c", &format!("{program} {duration}; true")]).spawn().expect("sh");
        let shell = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while processes_running(&marker).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let running = processes_running(&marker);
        assert_eq!(running.len(), 1, "only the sleep runs it: {running:?}");
        assert_eq!(running[0].command_line, marker, "arguments joined by single spaces, no trailing one");
        let with = processes_with(&marker);
        assert!(with.iter().any(|p| p.pid == shell), "the shell passes it on: {with:?}");
        assert_eq!(with.len(), 2, "{with:?}");
        assert_eq!(parent_of(running[0].pid), Some(shell));
        assert_eq!(children_of(shell), vec![running[0].pid]);
        // SAFETY: killing the sleep this test started; its shell then ends on its own.
        unsafe { libc::kill(running[0].pid, libc::SIGKILL) };
        let _ = child.wait();
    }

    #[test]
    fn the_command_leaves_out_what_changes_gpucluster() {
        let command = gpucluster("/bin/gpucluster");
        assert_eq!(command.get_program(), "/bin/gpucluster");
        let removed: Vec<&OsStr> = command.get_envs().filter(|(_, v)| v.is_none()).map(|(k, _)| k).collect();
        assert_eq!(removed.len(), CONTROLLED_ENV.len());
        assert!(CONTROLLED_ENV.iter().all(|v| removed.contains(&OsStr::new(v))), "{removed:?}");
    }
}
