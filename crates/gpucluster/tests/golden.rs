//! The golden scenarios of `tests/scenarios/` under a plain `cargo test`: the built binary runs
//! each scenario's commands and the output is diffed with its `expected.txt`, through the same
//! runner as `cargo xtask simulate`. `UPDATE_EXPECT=1 cargo test -p gpucluster --test golden`
//! rewrites the golden files instead (as `cargo xtask simulate --bless` does).

use std::path::Path;

#[test]
fn every_scenario_prints_its_golden_output() {
    let bless = std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1");
    let binary = Path::new(env!("CARGO_BIN_EXE_gpucluster"));
    let failed = tests::scenarios::run_all(binary, &tests::scenarios::dir(), bless, &[]).expect("run the scenarios");
    assert!(
        failed.is_empty(),
        "scenarios differ from their golden output: {} (the first difference of each is above; \
         run with UPDATE_EXPECT=1 or `cargo xtask simulate --bless` if the change is intended)",
        failed.join(", ")
    );
}
