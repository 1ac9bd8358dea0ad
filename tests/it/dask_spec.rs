//! The Dask cluster spec's cases (`tests/dask-specs/`), each a machine, a request and the facts
//! of the Python and the host, against their blessed snapshots; `UPDATE_EXPECT=1` rewrites them
//! (as `cargo xtask simulate --bless` does).

#[test]
fn every_dask_spec_case_makes_its_snapshot() {
    let bless = std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1");
    let failed = tests::dask_specs::run_all(&tests::dask_specs::dir(), bless, &[]).expect("run the cases");
    assert!(
        failed.is_empty(),
        "Dask spec cases differ from their snapshots: {} (the first difference of each is above; run with \
         UPDATE_EXPECT=1 or `cargo xtask simulate --bless` if the change is intended)",
        failed.join(", ")
    );
}
