//! Project automation, run as `cargo xtask <task>`; the one place for scripts.
//!
//! - `simulate [--bless] [NAME...]`: runs the `gpucluster` binary over every scenario in
//!   `tests/scenarios/` and diffs its output against the golden `expected.txt`; `--bless`
//!   rewrites the golden files instead. The runner is `tests::scenarios`, which `cargo test`
//!   runs too (`crates/gpucluster/tests/golden.rs`).
//! - `ci`: exactly what CI runs: fmt, clippy (warnings as errors, with and without default
//!   features), tests (with the Dask environment, required), pytest, simulate, docs, and
//!   `cargo deny check` (`deny.toml`) where cargo-deny is installed (skipped, saying so, where
//!   it is not, and its advisories where their database cannot be fetched).
//! - `dask-env`: a Python virtual environment with the pinned Dask, maturin and pytest of
//!   `tests/dask-requirements.txt` in `target/dask-venv`, and the gpucluster wheel built from
//!   this checkout (`crates/gpucluster-py`) installed in it: the environment of the Dask
//!   end-to-end tests and of `tests/python/` (pytest).
//! - `bench`: the criterion benchmarks (`benches/`).
//! - `gpu-bundle`: release binaries for the GPU machine, copied into `.gpu-bundle/` (git-ignored)
//!   so the device tool can carry them.
//!
//! Without a task, or with an unknown one, it prints the usage and exits with status 2.
//! It needs nothing but cargo: no Makefile, no shell scripts.

// xtask is a command-line tool: printing is its job.
#![allow(clippy::print_stdout)]

// The import graphs the tidy tests check.
#[cfg(test)]
mod imports;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const USAGE: &str = "usage: cargo xtask <simulate [--bless] [NAME...] | ci | dask-env | gpu-bundle | bench>";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // No task is a usage error (status 2, as for an unknown one): a script that forgot its task
    // must not pass for one that ran it.
    let Some((task, rest)) = args.split_first() else { usage_error("no task given") };
    match task.as_str() {
        "simulate" => {
            let bless = rest.iter().any(|a| a == "--bless");
            let only: Vec<&str> = rest.iter().filter(|a| !a.starts_with("--")).map(String::as_str).collect();
            simulate(bless, &only)
        }
        "ci" => ci(),
        "dask-env" => dask_env().map(|_| ()),
        "bench" => step("criterion benchmarks", {
            let mut c = cargo();
            c.args(["bench", "--package", "benches"]);
            c
        }),
        "gpu-bundle" => gpu_bundle(),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => usage_error(&format!("unknown task `{other}`")),
    }
}

/// The usage and what was wrong, on stderr; exit status 2.
fn usage_error(what: &str) -> ! {
    eprintln!("{USAGE}\nerror: {what}");
    std::process::exit(2)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn step(name: &str, mut command: Command) -> anyhow::Result<()> {
    println!("==> {name}");
    let status = command.status().with_context(|| format!("starting {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

fn build_binary() -> anyhow::Result<PathBuf> {
    step("build gpucluster", {
        let mut c = cargo();
        c.args(["build", "--quiet", "--package", "gpucluster"]);
        c
    })?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    Ok(target.join("debug").join("gpucluster"))
}

fn simulate(bless: bool, only: &[&str]) -> anyhow::Result<()> {
    let binary = build_binary()?;
    let mut failed =
        tests::scenarios::run_all(&binary, &tests::scenarios::dir(), bless, only).map_err(anyhow::Error::msg)?;
    // The Dask spec's cases are golden too: the same names select them, the same --bless refreshes.
    failed.extend(tests::dask_specs::run_all(&tests::dask_specs::dir(), bless, only).map_err(anyhow::Error::msg)?);
    if !failed.is_empty() {
        bail!(
            "scenarios differ from their golden output: {} (run `cargo xtask simulate --bless` if the change is intended)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// A Python virtual environment with the pinned Dask of `tests/dask-requirements.txt`, in
/// `target/dask-venv` (made once), and the gpucluster wheel built from this checkout installed
/// in it (every time: it is the code under test); returns its interpreter.
fn dask_env() -> anyhow::Result<PathBuf> {
    let venv = root().join("target").join("dask-venv");
    let python = venv.join("bin").join("python");
    let requirements = root().join("tests").join("dask-requirements.txt");
    let stamp = venv.join("requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).context("reading tests/dask-requirements.txt")?;
    println!("==> dask-env: the Python environment of the Dask end-to-end tests and pytest, in {}", venv.display());
    let pinned: Vec<&str> = wanted.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    println!("    pinned in tests/dask-requirements.txt: {}", pinned.join(", "));
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        println!("==> kept: it was made from these requirements already");
    } else {
        step("create the Python environment (target/dask-venv)", {
            let mut c = Command::new("python3");
            c.args(["-m", "venv", "--clear"]).arg(&venv);
            c
        })?;
        step("install Dask, maturin and pytest (tests/dask-requirements.txt)", {
            let mut c = Command::new(&python);
            c.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"]).arg(&requirements);
            c
        })?;
        std::fs::write(&stamp, &wanted)?;
    }
    let wheel = build_wheel(&venv, &python)?;
    println!("    built {}", wheel.display());
    step("install the gpucluster wheel", {
        let mut c = Command::new(&python);
        c.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--force-reinstall"]);
        c.arg(&wheel);
        c
    })?;
    println!("==> dask-env ready: {} (the tests find it there, or through GPUCLUSTER_TEST_PYTHON)", python.display());
    Ok(python)
}

/// Builds the gpucluster wheel (abi3, release) with the environment's maturin into
/// `target/wheels/`, and returns its path.
fn build_wheel(venv: &Path, python: &Path) -> anyhow::Result<PathBuf> {
    let out = root().join("target").join("wheels");
    let _ = std::fs::remove_dir_all(&out);
    step("build the gpucluster wheel (crates/gpucluster-py)", {
        let mut c = Command::new(venv.join("bin").join("maturin"));
        c.current_dir(root());
        c.args(["build", "--quiet", "--release", "-m", "crates/gpucluster-py/Cargo.toml", "-o"]).arg(&out);
        c.arg("-i").arg(python);
        c
    })?;
    std::fs::read_dir(&out)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("maturin built no wheel")
}

fn ci() -> anyhow::Result<()> {
    let run = |name: &str, args: &[&str], env: &[(&str, &str)]| {
        let mut c = cargo();
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        step(name, c)
    };
    let deny = [("RUSTFLAGS", "-D warnings")];
    run("fmt", &["fmt", "--all", "--", "--check"], &[])?;
    run("clippy", &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &deny)?;
    run(
        "clippy (no default features)",
        &["clippy", "--workspace", "--all-targets", "--no-default-features", "--", "-D", "warnings"],
        &deny,
    )?;
    let python = dask_env()?;
    let python = python.to_string_lossy().into_owned();
    run(
        "test",
        &["test", "--workspace"],
        &[deny[0], ("GPUCLUSTER_TEST_PYTHON", python.as_str()), ("GPUCLUSTER_REQUIRE_DASK", "1")],
    )?;
    step("pytest (tests/python)", {
        let mut c = Command::new(&python);
        c.current_dir(root());
        c.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/python"]);
        c
    })?;
    simulate(false, &[])?;
    run("doc", &["doc", "--workspace", "--no-deps"], &[("RUSTDOCFLAGS", "-D warnings"), deny[0]])?;
    cargo_deny()?;
    msrv()?;
    println!("==> ci passed");
    Ok(())
}

/// The oldest Rust the README promises, the workspace's `rust-version`: where rustup is available,
/// that toolchain is installed (minimal profile) and the whole workspace checked with it, with the
/// lock file as it is (`cargo +VERSION check --workspace --all-targets --locked`, in its own
/// target directory); skipped, saying so, where rustup is missing or cannot download it. A
/// failure of the check itself fails CI.
fn msrv() -> anyhow::Result<()> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).context("reading Cargo.toml")?;
    let version = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version"))
        .and_then(|rest| rest.split('"').nth(1))
        .context("Cargo.toml names no rust-version")?
        .to_owned();
    let rustup = Command::new("rustup").arg("--version").output().is_ok_and(|o| o.status.success());
    if !rustup {
        println!("==> Rust {version} (the oldest supported): SKIPPED, rustup is not installed");
        return Ok(());
    }
    println!("==> Rust {version} (the oldest supported): install the toolchain");
    let installed = Command::new("rustup")
        .args(["toolchain", "install", &version, "--profile", "minimal", "--no-self-update"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        println!("==> Rust {version}: SKIPPED, rustup could not install it (above)");
        return Ok(());
    }
    step(&format!("check the workspace with Rust {version}"), {
        let mut c = Command::new("cargo");
        c.current_dir(root()).arg(format!("+{version}"));
        c.args(["check", "--workspace", "--all-targets", "--locked"]);
        c.env("CARGO_TARGET_DIR", root().join("target").join("msrv"));
        c
    })
}

/// `cargo deny check` against `deny.toml`, where cargo-deny is installed (it is not a
/// dependency: `cargo install cargo-deny --locked`); skipped, saying so, where it is not.
/// Licences, bans and sources need nothing from outside. Advisories need the RustSec database,
/// fetched from GitHub: where it cannot be fetched, that check is skipped with the reason, and
/// any other failure fails CI.
fn cargo_deny() -> anyhow::Result<()> {
    let installed = cargo().args(["deny", "--version"]).output().is_ok_and(|o| o.status.success());
    if !installed {
        println!("==> cargo deny: SKIPPED, cargo-deny is not installed (`cargo install cargo-deny --locked`)");
        return Ok(());
    }
    step("cargo deny (licences, bans, sources)", {
        let mut c = cargo();
        c.args(["deny", "check", "--hide-inclusion-graph", "licenses", "bans", "sources"]);
        c
    })?;
    println!("==> cargo deny (advisories)");
    let output = cargo()
        .args(["deny", "check", "--hide-inclusion-graph", "advisories"])
        .output()
        .context("starting cargo deny")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{stderr}");
    if output.status.success() {
        Ok(())
    } else if stderr.contains("failed to fetch advisory database") {
        println!(
            "==> cargo deny (advisories): SKIPPED, the advisory database could not be fetched (above); \
             run `cargo deny check advisories` where GitHub is reachable"
        );
        Ok(())
    } else {
        bail!("cargo deny (advisories) failed ({})", output.status)
    }
}

/// Release binaries for a GPU machine (which has no cargo): the gpucluster binary, the
/// transport's peer and example, its cross-process test binary (run there with `GPU_TESTS=1` and
/// `TRANSPORT_PEER=.gpu-bundle/transport-peer`), the gpucluster wheel, and the anchor scripts
/// from `../shared`.
fn gpu_bundle() -> anyhow::Result<()> {
    step("build release binaries", {
        let mut c = cargo();
        c.args(["build", "--release", "--package", "gpucluster", "--package", "transport", "--bins", "--examples"]);
        c
    })?;
    let bundle = root().join(".gpu-bundle");
    std::fs::create_dir_all(&bundle)?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    for name in ["gpucluster", "transport-peer", "examples/exchange"] {
        let file = Path::new(name).file_name().unwrap_or_default();
        std::fs::copy(target.join("release").join(name), bundle.join(file))
            .with_context(|| format!("copying {name} into .gpu-bundle"))?;
    }
    println!("==> build the transport's test binary");
    let output = cargo()
        .args([
            "test",
            "--release",
            "--package",
            "transport",
            "--test",
            "protocols",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .context("building the transport tests")?;
    if !output.status.success() {
        bail!("building the transport tests failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let executable = stdout
        .lines()
        .filter(|l| l.contains("\"name\":\"protocols\""))
        .find_map(|l| l.split("\"executable\":\"").nth(1).and_then(|rest| rest.split('"').next()))
        .context("cargo did not report the test binary")?;
    std::fs::copy(executable, bundle.join("transport-protocols")).context("copying the test binary")?;
    std::fs::copy(root().join("tests").join("gpu").join("dask_local_check.py"), bundle.join("dask_local_check.py"))?;
    // The Python package (abi3: the GPU machine's Python 3.12 takes it), built as the tests use it.
    dask_env()?;
    for entry in std::fs::read_dir(root().join("target").join("wheels"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "whl") {
            std::fs::copy(&path, bundle.join(path.file_name().unwrap_or_default()))?;
        }
    }
    let anchors = root().join("..").join("shared").join("tools").join("anchors");
    if anchors.is_dir() {
        std::fs::create_dir_all(bundle.join("anchors"))?;
        for entry in std::fs::read_dir(&anchors)? {
            let entry = entry?;
            std::fs::copy(entry.path(), bundle.join("anchors").join(entry.file_name()))?;
        }
    }
    println!("==> .gpu-bundle/ is ready: name it in the device tool's `carry`");
    Ok(())
}
