//! Golden-output scenarios: a folder per scenario under `tests/scenarios/`, holding
//! `cmd` (one `gpucluster` invocation per line, optionally led by `NAME=VALUE` settings),
//! any fixture files those commands name, and `expected.txt` (what they printed).
//!
//! Commands run in the scenario's folder with a clean environment for the variables
//! gpucluster reads, so results do not depend on the machine running them.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Variables that change gpucluster's behaviour; removed unless a scenario sets them.
const CONTROLLED_ENV: &[&str] =
    &["CUDA_VISIBLE_DEVICES", "GPUCLUSTER_TOPOLOGY", "UCX_TLS", "NCCL_MULTI_RANK_GPU_ENABLE"];

pub(crate) fn run_all(binary: &Path, dir: &Path, bless: bool, only: &[&str]) -> anyhow::Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("cmd").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| only.is_empty() || only.contains(&n.as_str()))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no scenario found in {}", dir.display());
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
            std::fs::write(&expected_path, &actual)?;
            println!("blessed  {name}");
        } else {
            println!("FAILED   {name}");
            print_diff(&expected, &actual);
            failed.push(name.clone());
        }
    }
    println!("{} passed, {} failed", names.len() - failed.len(), failed.len());
    if !failed.is_empty() {
        bail!(
            "scenarios differ from their golden output: {} (run `cargo xtask simulate --bless` if the change is intended)",
            failed.join(", ")
        );
    }
    Ok(())
}

fn run_scenario(binary: &Path, folder: &Path) -> anyhow::Result<String> {
    let script = std::fs::read_to_string(folder.join("cmd"))?;
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
            bail!("{}: each line of cmd must run `gpucluster ...`: {line}", folder.display());
        };
        let mut command = Command::new(binary);
        command.args(args).current_dir(folder);
        for var in CONTROLLED_ENV {
            command.env_remove(var);
        }
        command.env("NO_COLOR", "1").env("COLUMNS", "100");
        for (k, v) in &settings {
            command.env(k, v);
        }
        let output = command.output().with_context(|| format!("running {}", binary.display()))?;
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

fn print_diff(expected: &str, actual: &str) {
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
