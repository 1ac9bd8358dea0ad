//! `list`: the JSON contract, and that a snapshot loads back unchanged.

use gpu_topology::sim::PRESETS;

use crate::{Scratch, gpucluster};

#[test]
fn list_json_loads_back_through_file_unchanged_for_every_preset() {
    let scratch = Scratch::new("roundtrip");
    for preset in PRESETS {
        let topology = format!("sim:{}", preset.name);
        let (status, json, err) = gpucluster(&["--topology", &topology, "list", "--json"]);
        assert_eq!(status, 0, "{topology}: {err}");
        let path = scratch.0.join(format!("{}.json", preset.name));
        std::fs::write(&path, &json).expect("write snapshot");
        let file = format!("file:{}", path.display());
        let (status, again, err) = gpucluster(&["--topology", &file, "list", "--json"]);
        assert_eq!(status, 0, "{file}: {err}");
        assert_eq!(again, json, "{topology}: JSON changed on the way back");
    }
}

#[test]
fn json_has_the_keys_the_design_fixes() {
    let (status, json, err) = gpucluster(&["--topology", "sim:h100-mixed", "list", "--json"]);
    assert_eq!(status, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let host = &v["hosts"][0];
    for key in ["hostname", "driver_version", "gpus", "peers"] {
        assert!(host.get(key).is_some(), "host lacks `{key}`");
    }
    let gpu = &host["gpus"][0];
    for key in ["index", "uuid", "name", "memory_bytes", "mig_enabled", "mig_instances"] {
        assert!(gpu.get(key).is_some(), "gpu lacks `{key}`");
    }
    let mig = &gpu["mig_instances"][0];
    for key in ["uuid", "profile", "memory_bytes", "sm_count", "gpu_instance_id", "compute_instance_id"] {
        assert!(mig.get(key).is_some(), "MIG instance lacks `{key}`");
    }
    assert_eq!(mig["memory_bytes"], 9984u64 << 20);
    assert!(mig["uuid"].as_str().is_some_and(|u| u.starts_with("MIG-")));
    assert_eq!(host["gpus"][2]["mig_enabled"], false);
}

#[test]
fn malformed_snapshot_names_file_line_and_column() {
    let scratch = Scratch::new("malformed");
    let path = scratch.0.join("broken.json");
    std::fs::write(&path, "{\n  \"hosts\": [\n    {\"hostname\": 3}\n  ]\n}\n").expect("write");
    let (status, out, err) = gpucluster(&["--topology", &format!("file:{}", path.display()), "list"]);
    assert_eq!(status, 1);
    assert!(out.is_empty());
    assert!(err.contains("broken.json:3:"), "{err}");
    assert!(err.contains("expected a string"), "{err}");
}

#[test]
fn contradictory_snapshot_is_refused_with_the_reason() {
    let (_, json, _) = gpucluster(&["--topology", "sim:a100-80gb-2x7", "list", "--json"]);
    let mut v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let first = v["hosts"][0]["gpus"][0]["mig_instances"][0]["uuid"].clone();
    v["hosts"][0]["gpus"][1]["mig_instances"][0]["uuid"] = first;
    let scratch = Scratch::new("dup");
    let path = scratch.0.join("dup.json");
    std::fs::write(&path, v.to_string()).expect("write");
    let (status, _, err) = gpucluster(&["--topology", &format!("file:{}", path.display()), "list"]);
    assert_eq!(status, 1);
    assert!(err.contains("appears twice"), "{err}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let (status, _, err) = gpucluster(&["--topology", "file:/nonexistent/machine.toml", "list"]);
    assert_eq!(status, 1);
    assert!(err.contains("cannot read /nonexistent/machine.toml"), "{err}");
}

#[test]
fn no_input_makes_list_panic() {
    // A sweep of odd inputs: each must end in a status, never a panic (which would abort the test).
    for topology in ["", ":", "sim", "sim:", "file:", "smi:", "smi:/", "file:/", "nvml:x", "sim:../../etc/passwd"] {
        let (status, _, _) = gpucluster(&["--topology", topology, "list"]);
        assert_ne!(status, 0, "{topology:?} should fail");
    }
}
