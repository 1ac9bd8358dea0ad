//! Golden-output scenarios: a folder per scenario under `tests/scenarios/`, holding
//! `cmd` (one `gpucluster` invocation per line, optionally led by `NAME=VALUE` settings),
//! any fixture files those commands name, and `expected.txt` (what they printed).
//!
//! Commands run in the scenario's folder with a clean environment for the variables
//! gpucluster reads, so results do not depend on the machine running them.
//!
//! This is the one runner: `cargo xtask simulate [--bless]` calls it, and so does the `golden`
//! test of `crates/gpucluster` (`cargo test`, with `UPDATE_EXPECT=1` to rewrite the files).

use std::path::{Path, PathBuf};

/// The scenarios folder of this checkout, `tests/scenarios`.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// Runs the scenarios of `dir` named in `only` (every one when empty) with `binary`, and returns
/// the names of those whose output differs from `expected.txt`. With `bless`, a differing
/// `expected.txt` is rewritten instead (and the scenario does not count as failed).
/// It reports one line per scenario (`ok`, `blessed`, `FAILED` with the first difference) and
/// a count on stdout.
///
/// # Errors
/// Text saying what went wrong when no scenario is found, a file cannot be read or written, a
/// `cmd` line does not run `gpucluster`, or the binary cannot be started.
// Printing is the report: xtask shows it, and `cargo test` shows it for a failed test.
#[allow(clippy::print_stdout)]
pub fn run_all(binary: &Path, dir: &Path, bless: bool, only: &[&str]) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("cmd").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| only.is_empty() || only.contains(&n.as_str()))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(format!("no scenario found in {}", dir.display()));
    }
    let mut failed = Vec::new();
    for name in &names {
        let folder = dir.join(name);
        let actual = run_scenario(binary, &folder)?;
        let expected_path = folder.join("expected.txt");
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual == expected {
            println!("ok       {name}");
        } else if bless {
            std::fs::write(&expected_path, &actual).map_err(|e| format!("writing {}: {e}", expected_path.display()))?;
            println!("blessed  {name}");
        } else {
            println!("FAILED   {name}");
            print_diff(&expected, &actual);
            failed.push(name.clone());
        }
    }
    println!("{} passed, {} failed", names.len() - failed.len(), failed.len());
    Ok(failed)
}

/// What the commands of one scenario printed, as `expected.txt` holds it.
fn run_scenario(binary: &Path, folder: &Path) -> Result<String, String> {
    let cmd = folder.join("cmd");
    let script = std::fs::read_to_string(&cmd).map_err(|e| format!("reading {}: {e}", cmd.display()))?;
    let mut transcript = String::new();
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let settings: Vec<(&str, &str)> = words
            .iter()
            .map_while(|w| w.split_once('='))
            .filter(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .collect();
        let args = &words[settings.len()..];
        let Some((&"gpucluster", args)) = args.split_first() else {
            return Err(format!("{}: each line of cmd must run `gpucluster ...`: {line}", folder.display()));
        };
        // Without the variables that change gpucluster's behaviour, unless the scenario sets them.
        let mut command = crate::process::gpucluster(binary);
        command.args(args).current_dir(folder);
        command.env("NO_COLOR", "1").env("COLUMNS", "100");
        for (k, v) in &settings {
            command.env(k, v);
        }
        let output = command.output().map_err(|e| format!("running {}: {e}", binary.display()))?;
        transcript.push_str(&format!("$ {line}\n"));
        transcript.push_str(&String::from_utf8_lossy(&output.stdout));
        if !output.stderr.is_empty() {
            transcript.push_str("--- stderr\n");
            transcript.push_str(&String::from_utf8_lossy(&output.stderr));
        }
        transcript
            .push_str(&format!("--- exit {}\n\n", output.status.code().map_or("signal".into(), |c| c.to_string())));
    }
    Ok(transcript)
}

#[allow(clippy::print_stdout)] // Part of run_all's report.
pub(crate) fn print_diff(expected: &str, actual: &str) {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let first = e.iter().zip(&a).position(|(x, y)| x != y).unwrap_or(e.len().min(a.len()));
    println!("  first difference at line {}:", first + 1);
    for line in e.iter().skip(first).take(5) {
        println!("  - {line}");
    }
    for line in a.iter().skip(first).take(5) {
        println!("  + {line}");
    }
}
