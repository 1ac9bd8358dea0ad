//! `plan` and `doctor` through the command line: the JSON contract and exit statuses.

use crate::gpucluster;

#[test]
fn plan_json_has_the_keys_the_design_fixes() {
    let (status, json, err) = gpucluster(&["--topology", "sim:h100-mixed", "plan", "--devices", "2,3", "--json"]);
    assert_eq!(status, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    for key in ["workers", "excluded", "paths", "findings"] {
        assert!(v.get(key).is_some(), "plan lacks `{key}`");
    }
    let w = &v["workers"][0];
    for key in ["name", "host", "device_uuid", "env", "device_memory_limit_bytes", "resources"] {
        assert!(w.get(key).is_some(), "worker lacks `{key}`");
    }
    assert_eq!(w["name"], "h100-mixed-gpu2");
    assert_eq!(w["resources"]["GPU"], 1.0);
    let visible = w["env"]["CUDA_VISIBLE_DEVICES"].as_str().expect("string");
    assert_eq!(visible.split(',').count(), 2, "its own GPU, then its peer");
    assert!(visible.starts_with(w["device_uuid"].as_str().expect("uuid")));
    let e = &v["excluded"][0];
    assert!(e.get("uuid").is_some() && e.get("reason").is_some());
    let p = &v["paths"][0];
    assert_eq!(p["path"], "cuda-ipc");
    assert_eq!((p["from"].as_str(), p["to"].as_str()), (Some("h100-mixed-gpu2"), Some("h100-mixed-gpu3")));
    assert!(p["reason"].as_str().is_some_and(|r| r.contains("NVLink")));
}

#[test]
fn every_pair_of_workers_gets_one_path() {
    let (status, json, err) = gpucluster(&["--topology", "sim:dgx-a100", "plan", "--json"]);
    assert_eq!(status, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let paths = v["paths"].as_array().expect("paths");
    assert_eq!(paths.len(), 56 * 55 / 2);
    assert!(paths.iter().all(|p| p["path"] == "host-staged"), "MIG to MIG is always host-staged");
    let workers = v["workers"].as_array().expect("workers");
    assert!(workers.iter().all(|w| w["env"]["CUDA_VISIBLE_DEVICES"] == w["device_uuid"]));
    assert!(workers.iter().all(|w| w["env"]["UCX_TLS"] == "^cuda_ipc"));
}

#[test]
fn exit_statuses() {
    assert_eq!(gpucluster(&["--topology", "sim:a100-80gb-mixed", "plan"]).0, 1, "strict refuses");
    assert_eq!(gpucluster(&["--topology", "sim:hgx-h100", "doctor"]).0, 0, "clean");
    assert_eq!(gpucluster(&["--topology", "sim:h100-mig-empty", "doctor"]).0, 1, "warnings");
    assert_eq!(gpucluster(&["--topology", "sim:a100-80gb-mixed", "doctor"]).0, 2, "errors");
    assert_eq!(gpucluster(&["--topology", "sim:hgx-h100", "plan", "--policy", "x"]).0, 2, "usage");
}

#[test]
fn a_strict_refusal_fits_a_terminal_and_is_whole_in_json() {
    let (status, text, err) = gpucluster(&["--topology", "sim:a100-80gb-mixed", "plan"]);
    assert_eq!(status, 1);
    assert!(text.is_empty(), "{text}");
    assert!(err.lines().all(|l| l.chars().count() <= 120), "the refusal fits a terminal:\n{err}");
    let (status, json, err_json) = gpucluster(&["--topology", "sim:a100-80gb-mixed", "plan", "--json"]);
    assert_eq!(status, 1);
    assert_eq!(err_json, err, "the same message on stderr");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let classes = v["refused"]["classes"].as_array().expect("classes");
    assert_eq!(classes.len(), 2);
    let devices: Vec<&str> =
        classes.iter().flat_map(|c| c["devices"].as_array().expect("devices")).filter_map(|d| d.as_str()).collect();
    assert_eq!(devices.len(), 10, "every device, by its whole name");
    assert!(devices.iter().all(|d| d.starts_with("MIG-") && d.len() == 40), "{devices:?}");
}
