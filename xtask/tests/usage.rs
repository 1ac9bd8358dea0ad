//! `cargo xtask` as a script meets it: without a task, or with an unknown one, it prints the
//! usage and fails with status 2; `help` prints it and succeeds.

use std::process::{Command, Output};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().expect("run xtask")
}

#[test]
fn no_task_or_an_unknown_one_is_a_usage_error() {
    for (args, what) in [(&[][..], "error: no task given"), (&["simulat"][..], "error: unknown task `simulat`")] {
        let out = xtask(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("usage: cargo xtask <simulate") && err.contains(what), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    for help in ["help", "--help", "-h"] {
        let out = xtask(&[help]);
        assert_eq!(out.status.code(), Some(0), "{help}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage: cargo xtask"), "{help}");
    }
}
