//! The command line's own surface as a real process: `--version`, shell completions, `doctor`'s
//! report and exit statuses, `-v`/`-q`, `--topology sim:list`. Nothing here starts a worker.

use std::process::{Command, Output};

/// The built binary with `args`, through the tests' one command builder, run to its end.
fn gpucluster(args: &[&str]) -> Output {
    tests::process::gpucluster(env!("CARGO_BIN_EXE_gpucluster")).args(args).output().expect("run gpucluster")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version_names_the_release_the_commit_and_the_features() {
    let out = gpucluster(&["--version"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let version = env!("CARGO_PKG_VERSION");
    assert_ne!(version, "0.0.0", "the workspace has a real version");
    assert!(text.starts_with(&format!("gpucluster {version} (commit ")), "{text}");
    // A short hash (possibly `-dirty`), or `unknown` outside a git checkout.
    let commit = text.split("(commit ").nth(1).and_then(|r| r.split(';').next()).unwrap_or_default();
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        hash == "unknown" || (hash.len() >= 7 && hash.chars().all(|c| c.is_ascii_hexdigit())),
        "commit `{commit}` in {text}"
    );
    let features = text.split("features: ").nth(1).unwrap_or_default();
    assert_eq!(features.contains("nvml"), cfg!(feature = "nvml"), "{text}");
    // Subcommands say the same.
    assert_eq!(stdout(&gpucluster(&["plan", "--version"])), text.replacen("gpucluster", "gpucluster-plan", 1));
}

#[test]
fn v_tells_on_stderr_what_the_command_does_and_q_leaves_only_errors() {
    let plain = gpucluster(&["--topology", "sim:a30", "list"]);
    assert_eq!(plain.status.code(), Some(0), "{}", stderr(&plain));
    assert_eq!(stderr(&plain), "", "by default, only warnings and progress");
    // -v anywhere on the line, repeatable; the command's output stays the same.
    let v = gpucluster(&["--topology", "sim:a30", "list", "-v"]);
    assert_eq!(stdout(&v), stdout(&plain));
    assert!(stderr(&v).contains("info: reading the topology from sim:a30"), "{}", stderr(&v));
    assert!(!stderr(&v).contains("debug:"), "{}", stderr(&v));
    let vv = gpucluster(&["-vv", "--topology", "sim:a30", "list"]);
    assert!(stderr(&vv).contains("debug: host a30: 1 GPU(s), 4 MIG instance(s)"), "{}", stderr(&vv));
    assert_eq!(gpucluster(&["--verbose", "--topology", "sim:a30", "list"]).stderr, v.stderr);
    // -q: nothing but the error, which still says what went wrong.
    let q = gpucluster(&["-q", "--topology", "sim:a30", "list"]);
    assert_eq!((q.status.code(), stderr(&q)), (Some(0), String::new()));
    assert_eq!(stdout(&q), stdout(&plain));
    let failed = gpucluster(&["-q", "--topology", "sim:nope", "list"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(stderr(&failed).starts_with("error: unknown simulated machine `nope`"), "{}", stderr(&failed));
    let both = gpucluster(&["-q", "-v", "--topology", "sim:a30", "list"]);
    assert_eq!(both.status.code(), Some(2));
    assert!(stderr(&both).contains("cannot be used with"), "{}", stderr(&both));
}

#[test]
fn completions_offer_the_commands_users_type_and_not_the_internal_ones() {
    let out = gpucluster(&["completions", "bash"]);
    let script = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(script.contains("_gpucluster()") && script.contains("complete -F _gpucluster"), "{script}");
    let top = script.lines().find(|l| l.contains("opts=\"") && l.contains(" plan ")).expect("top-level words");
    for word in ["list", "plan", "doctor", "up", "dask", "bench", "completions", "--topology", "--verbose", "--quiet"] {
        assert!(top.split(['"', ' ']).any(|w| w == word), "{word} missing from {top}");
    }
    for internal in ["worker", "transport-peer", "guard"] {
        assert!(!top.split(['"', ' ']).any(|w| w == internal), "{internal} offered: {top}");
    }
    // The script works: bash completes `gpucluster da` and `gpucluster dask lo`.
    let file = std::env::temp_dir().join(format!("gpucluster-completion-{}.bash", std::process::id()));
    std::fs::write(&file, &script).expect("write the script");
    let complete = |words: &str| {
        let shell = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _gpucluster gpucluster \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; echo \"${{COMPREPLY[@]}}\"",
            file.display()
        );
        Command::new("bash").args(["-c", &shell]).output().map(|o| stdout(&o).trim().to_owned())
    };
    match complete("gpucluster da") {
        Ok(words) => {
            assert_eq!(words, "dask");
            assert_eq!(complete("gpucluster dask lo").expect("bash"), "local");
        }
        Err(e) => eprintln!("no bash here ({e}): the script was not run"),
    }
    let _ = std::fs::remove_file(&file);
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = gpucluster(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        assert!(stdout(&out).contains("gpucluster") && stdout(&out).contains("dask"), "{shell}");
    }
    assert_eq!(gpucluster(&["completions", "tcsh"]).status.code(), Some(2));
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

#[test]
fn doctor_reports_a_machine_without_nvml_as_an_error_with_its_fix() {
    let dir = std::env::temp_dir().join(format!("gpucluster-cli-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch");
    let fixture = dir.join("no-driver.toml");
    std::fs::write(
        &fixture,
        "hostname = \"no-driver\"\n\n[[gpu]]\nproduct = \"H100-80GB\"\n\n[faults]\nnvml_missing = true\n",
    )
    .expect("fixture");
    let topology = format!("file:{}", fixture.display());
    let text = gpucluster(&["--topology", &topology, "doctor"]);
    assert_eq!(text.status.code(), Some(2), "an error, not the 1 of warnings: {}{}", stdout(&text), stderr(&text));
    assert!(
        stdout(&text).starts_with("error   nvml-unavailable: cannot use NVML (libnvidia-ml.so.1)"),
        "{}",
        stdout(&text)
    );
    assert!(stdout(&text).contains("fix: install the NVIDIA driver"), "{}", stdout(&text));
    assert!(stdout(&text).ends_with("doctor: 1 error(s), 0 warning(s), 0 note(s)\n"), "{}", stdout(&text));
    assert_eq!(stderr(&text), "", "a finding, not a failure of doctor");
    let out = gpucluster(&["--topology", &topology, "doctor", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let report = json(&out);
    assert_eq!(report["findings"][0]["severity"], "error");
    assert_eq!(report["findings"][0]["code"], "nvml-unavailable");
    assert!(report["findings"][0]["fix"].as_str().is_some_and(|f| f.contains("--topology sim:NAME")), "{report}");
    assert_eq!((report["errors"].as_u64(), report["exit_status"].as_u64()), (Some(1), Some(2)));
    // A --topology that names nothing is a mistake in the command, not a finding about the
    // machine: doctor cannot run, says why on stderr, and prints no report.
    let wrong = gpucluster(&["--topology", "cuda:0", "doctor", "--json"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(stderr(&wrong).starts_with("error: unknown topology source `cuda:0`"), "{}", stderr(&wrong));
    assert_eq!(stdout(&wrong), "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn doctor_json_carries_every_finding_and_the_exit_status() {
    for (topology, status) in [("sim:hgx-h100", 0), ("sim:h100-mig-empty", 1)] {
        let text = gpucluster(&["--topology", topology, "doctor"]);
        let out = gpucluster(&["--topology", topology, "doctor", "--json"]);
        assert_eq!((text.status.code(), out.status.code()), (Some(status), Some(status)), "{topology}");
        let report = json(&out);
        assert_eq!(report["exit_status"], status, "{topology}");
        let findings = report["findings"].as_array().expect("findings");
        // The same findings as the text, in the same order.
        let codes: Vec<&str> = findings.iter().map(|f| f["code"].as_str().expect("code")).collect();
        let printed = stdout(&text);
        let listed: Vec<&str> = printed
            .lines()
            .filter(|l| !l.starts_with(' ') && !l.starts_with("doctor:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.strip_suffix(':'))
            .collect();
        assert_eq!(codes, listed, "{topology}: {}", stdout(&text));
        for key in ["severity", "code", "message", "explanation", "fix"] {
            assert!(findings.iter().all(|f| f[key].is_string()), "{key} in {report}");
        }
        let count = |s: &str| findings.iter().filter(|f| f["severity"] == s).count() as u64;
        assert_eq!(report["warnings"].as_u64(), Some(count("warning")), "{topology}");
        assert_eq!(report["notes"].as_u64(), Some(count("info")), "{topology}");
    }
    let help = stdout(&gpucluster(&["doctor", "--help"]));
    assert!(help.contains("--json"), "{help}");
    let statuses = help.split("Exit status").nth(1).unwrap_or_else(|| panic!("no exit statuses in:\n{help}"));
    for line in ["  0  ", "  1  warnings", "  2  errors", "(no NVIDIA driver, NVML missing", "`error: ...` on stderr"] {
        assert!(statuses.contains(line), "{line:?} in {statuses}");
    }
}

#[test]
fn topology_sim_list_names_the_presets_whatever_the_command() {
    let presets = gpucluster(&["list", "--presets"]);
    let table = stdout(&presets);
    assert!(table.lines().any(|l| l.starts_with("sim:hgx-h100 ") && l.contains("H100")), "{table}");
    assert!(table.lines().count() > 10, "one line per preset: {table}");
    let commands: [&[&str]; 7] = [
        &["list"],
        &["plan"],
        &["doctor"],
        &["up"],
        &["dask", "local", "--python", "/nonexistent/python"],
        &["dask", "worker", "tcp://127.0.0.1:1", "--python", "/nonexistent/python"],
        &["bench", "transport"],
    ];
    for command in commands {
        let out = gpucluster(&[&["--topology", "sim:list"], command].concat());
        assert_eq!(out.status.code(), Some(0), "{command:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), table, "{command:?}");
    }
    let listed = json(&gpucluster(&["--topology", "sim:list", "plan", "--json"]));
    let names = listed["presets"].as_array().expect("presets");
    assert_eq!(names.len(), table.lines().count() - 1, "{listed}");
    assert!(names.iter().all(|p| p["topology"].as_str().is_some_and(|t| table.contains(t))), "{listed}");
}
