//! Plans and findings on simulated machines, and Dask-CUDA's own test cases
//! (`shared/reference/dask-cuda.md` §4) with the MIG semantics fixed.

use gpu_topology::{Snapshot, TopologySpec};

use crate::memory::parse_device_bytes;
use crate::*;

fn machine(preset: &str) -> Snapshot {
    let source = TopologySpec::Sim(preset.into()).open().expect("preset");
    tokio::runtime::Builder::new_current_thread().build().expect("rt").block_on(source.snapshot()).expect("snapshot")
}

fn request(devices: Option<&str>, policy: Policy) -> PlanRequest {
    PlanRequest { devices: devices.map(|d| (d.to_owned(), SpecSource::Flag)), policy, ..PlanRequest::default() }
}

fn visible(w: &WorkerPlan) -> String {
    w.env()["CUDA_VISIBLE_DEVICES"].clone()
}

const GIB: u64 = 1 << 30;

mod dask_cuda_conformance {
    use super::*;

    /// `test_get_n_gpus`: "0,1,2" gives three workers.
    #[test]
    fn n_gpus_from_visible_devices() {
        let mut r = request(None, Policy::Strict);
        r.devices = Some(("0,1,2".into(), SpecSource::Environment));
        assert_eq!(plan(&machine("hgx-h100"), &r).expect("plan").workers.len(), 3);
    }

    /// `test_parse_visible_devices` and `test_cuda_visible_devices`: each whole-GPU worker sees
    /// its own device first and every other worker's after it (the rotation), for indices and UUIDs.
    #[test]
    fn rotation_puts_each_workers_device_first() {
        let m = machine("hgx-h100");
        for spec in ["0,3,6,7", &m.hosts[0].gpus.iter().map(|g| g.uuid.to_string()).collect::<Vec<_>>().join(",")] {
            let p = plan(&m, &request(Some(spec), Policy::Strict)).expect("plan");
            let names: Vec<String> = p.workers.iter().map(|w| w.device_uuid.to_string()).collect();
            let all: Vec<&str> = names.iter().map(String::as_str).collect();
            for (i, w) in p.workers.iter().enumerate() {
                let visible = visible(w);
                let list: Vec<&str> = visible.split(',').collect();
                assert_eq!(list[0], w.device_uuid.to_string());
                let mut expected = all[i..].to_vec();
                expected.extend_from_slice(&all[..i]);
                assert_eq!(list, expected, "{spec}");
            }
        }
        let err = plan(&m, &request(Some("Foo"), Policy::Strict)).expect_err("Foo");
        assert!(err.to_string().contains("`Foo` is not a device"), "{err}");
    }

    /// `test_with_subset_of_cuda_visible_devices` (0,3,6,8 there; this machine has 8 GPUs).
    #[test]
    fn subset_of_visible_devices() {
        let p = plan(&machine("hgx-h100"), &request(Some("0,3,6,7"), Policy::Strict)).expect("plan");
        let firsts: Vec<u32> = p.workers.iter().map(|w| w.gpu_index).collect();
        assert_eq!(firsts, vec![0, 3, 6, 7]);
        assert_eq!(p.excluded.len(), 4);
        assert!(p.excluded.iter().all(|e| e.reason.to_string() == "not named in --devices"));
    }

    /// `test_available_mig_workers`, fixed: one worker per MIG instance, and each sees exactly
    /// its own instance (Dask-CUDA rotates the whole MIG list into every worker).
    #[test]
    fn one_worker_per_mig_instance_seeing_only_itself() {
        let m = machine("dgx-a100");
        let uuids: Vec<String> = m.hosts[0].gpus[0].mig_instances.iter().map(|i| i.uuid.to_string()).collect();
        let p = plan(&m, &request(Some(&uuids.join(",")), Policy::Strict)).expect("plan");
        assert_eq!(p.workers.len(), 7);
        for (w, u) in p.workers.iter().zip(&uuids) {
            assert_eq!(visible(w), *u);
            assert_eq!(w.device_uuid.to_string(), *u);
        }
    }

    /// `test_gpu_uuid`: one `GPU-` UUID reaches its worker.
    #[test]
    fn single_gpu_uuid() {
        let m = machine("h100");
        let uuid = m.hosts[0].gpus[0].uuid.to_string();
        let p = plan(&m, &request(Some(&uuid), Policy::Strict)).expect("plan");
        assert_eq!(p.workers.len(), 1);
        assert_eq!(visible(&p.workers[0]), uuid);
    }

    /// `test_cpu_affinity_and_cuda_visible_devices`, and the CUDAWorker index bug (workers got
    /// GPUs 0,2,0,2's affinity): each worker's affinity is its own (parent) GPU's.
    #[test]
    fn cpu_affinity_is_the_workers_own_gpus() {
        for preset in ["hgx-h100", "dgx-a100"] {
            let m = machine(preset);
            let p = plan(&m, &request(None, Policy::Strict)).expect("plan");
            for w in &p.workers {
                let gpu = &m.hosts[0].gpus[w.gpu_index as usize];
                assert_eq!(w.cpu_affinity, gpu.cpu_affinity, "{}", w.name);
                assert_eq!(w.numa_node, gpu.numa_node);
            }
            let nodes: std::collections::BTreeSet<_> = p.workers.iter().map(|w| w.numa_node).collect();
            assert_eq!(nodes.len(), 2, "{preset}: GPUs spread over both NUMA nodes");
        }
    }

    /// `test_parse_device_bytes` / `test_parse_device_memory_limit`.
    #[test]
    fn device_bytes_grammar() {
        let total = 80 * GIB;
        let t = Some(total);
        for none in ["0", "0.0", "0 GiB", "none", ""] {
            assert_eq!(parse_device_bytes(none, t, 1, "d").expect(none), None, "{none}");
        }
        assert_eq!(parse_device_bytes("1", t, 1, "d").expect("1"), Some(1));
        assert_eq!(parse_device_bytes("1e9", t, 1, "d").expect("1e9"), Some(1_000_000_000));
        assert_eq!(parse_device_bytes("1GB", t, 1, "d").expect("1GB"), Some(1_000_000_000));
        assert_eq!(parse_device_bytes("1.0", t, 1, "d").expect("1.0"), Some(total));
        assert_eq!(parse_device_bytes("0.8", t, 1, "d").expect("0.8"), Some((total as f64 * 0.8) as u64));
        assert_eq!(parse_device_bytes("auto", t, 1, "d").expect("auto"), Some(total));
        assert_eq!(parse_device_bytes("default", t, 1, "d"), parse_device_bytes("0.8", t, 1, "d"));
        assert_eq!(parse_device_bytes("5000M", t, 1, "d").expect("5000M"), Some(5_000_000_000));
        let aligned = parse_device_bytes("0.3", Some(10_000_000_001), 256, "d").expect("aligned").expect("some");
        assert_eq!(aligned % 256, 0);
        assert_eq!(aligned, 3_000_000_000 / 256 * 256);
        assert!(parse_device_bytes("lots", t, 1, "d").is_err());
        assert!(parse_device_bytes("-1", t, 1, "d").is_err());
        assert!(parse_device_bytes("100GB", t, 1, "MIG-x").expect_err("too large").to_string().contains("MIG-x"));
        assert!(parse_device_bytes("0.5", None, 1, "GPU-y").expect_err("unknown").to_string().contains("absolute"));
    }

    /// `test_worker_fraction_limits`, fixed for MIG: fractions of the worker's own instance.
    #[test]
    fn fraction_limits_come_from_the_instance_not_the_parent() {
        let m = machine("a100-80gb-2x7");
        for fraction in ["0.1", "0.2", "0.3"] {
            let mut r = request(None, Policy::Strict);
            r.device_memory_limit = fraction.into();
            let p = plan(&m, &r).expect("plan");
            let f: f64 = fraction.parse().expect("fraction");
            for w in &p.workers {
                let own = 9856u64 << 20;
                assert_eq!(w.device_memory_bytes, Some(own));
                assert_eq!(w.device_memory_limit_bytes, Some((own as f64 * f) as u64), "{fraction}");
            }
        }
    }
}

#[test]
fn two_gpus_of_seven_instances_make_fourteen_workers() {
    let p = plan(&machine("a100-80gb-2x7"), &PlanRequest::default()).expect("plan");
    assert_eq!(p.workers.len(), 14);
    assert_eq!(p.classes.len(), 1);
    assert_eq!(p.excluded.len(), 2, "the two parents");
    let names: std::collections::BTreeSet<_> = p.workers.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names.len(), 14);
    assert_eq!(p.workers[8].name, "a100-2x7-gpu1-mig1");
    let w = &p.workers[0];
    assert_eq!(w.env()["UCX_TLS"], "^cuda_ipc");
    assert_eq!(w.env()["NCCL_MULTI_RANK_GPU_ENABLE"], "1");
    assert_eq!(w.device_memory_limit_bytes, Some(((9856u64 << 20) as f64 * 0.8) as u64));
    assert_eq!(w.resources().get("GPU"), Some(&1.0));
}

#[test]
fn strict_refuses_a_mix_and_says_how_to_go_on() {
    let m = machine("a100-80gb-mixed");
    let err = plan(&m, &PlanRequest::default()).expect_err("mixed");
    let text = err.to_string();
    for expected in [
        "2 classes",
        "class A: 7 device(s), 9.62 GiB, 14 SMs, 1g.10gb",
        "class B: 3 device(s), 19.50 GiB, 28 SMs, 2g.20gb",
        "--policy largest-group   keep class A (7 devices)",
        "--policy grouped",
        "9.62GiB-14SM, 19.5GiB-28SM",
        "--policy warn",
        "--devices MIG-",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("--memory-tolerance"), "SMs differ, so tolerance alone cannot help:\n{text}");
}

#[test]
fn the_other_policies_on_a_mix() {
    let m = machine("a100-80gb-mixed");
    let largest = plan(&m, &request(None, Policy::LargestGroup)).expect("largest");
    assert_eq!(largest.workers.len(), 7);
    assert!(largest.workers.iter().all(|w| w.profile.as_deref() == Some("1g.10gb")));
    assert_eq!(largest.excluded.iter().filter(|e| e.reason.to_string().contains("largest-group")).count(), 3);

    let grouped = plan(&m, &request(None, Policy::Grouped)).expect("grouped");
    assert_eq!(grouped.workers.len(), 10);
    assert_eq!(grouped.workers[0].resources().get("9.62GiB-14SM"), Some(&1.0));
    assert_eq!(grouped.workers[9].resources().get("19.5GiB-28SM"), Some(&1.0));

    let warn = plan(&m, &request(None, Policy::Warn)).expect("warn");
    assert_eq!(warn.workers.len(), 10);
    assert!(warn.findings.iter().any(|f| f.code == "mixed-classes" && f.severity == Severity::Warning));
}

fn fixture(text: &str) -> Snapshot {
    let source = gpu_topology::sim::SimSource::from_fixture(text, std::path::Path::new("t.toml")).expect("fixture");
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt")
        .block_on(gpu_topology::TopologySource::snapshot(&source))
        .expect("snapshot")
}

#[test]
fn largest_group_ties_go_to_more_memory() {
    let s = fixture(
        "hostname = \"tie\"\n[[gpu]]\nproduct = \"H100-80GB\"\nmig = [\"3x1g.10gb\"]\n\
         [[gpu]]\nproduct = \"H100-80GB\"\nmig = [\"3x2g.20gb\"]\n",
    );
    let p = plan(&s, &request(None, Policy::LargestGroup)).expect("plan");
    assert_eq!(p.workers.len(), 3);
    assert!(p.workers.iter().all(|w| w.gpu_index == 1), "the class with more memory wins a tie");
}

#[test]
fn mig_beside_whole_gpus_needs_explicit_devices_under_strict() {
    let m = machine("h100-mixed");
    let err = plan(&m, &PlanRequest::default()).expect_err("mixed kinds");
    assert!(err.to_string().contains("mixes 14 MIG instance(s) with 2 whole GPU(s)"), "{err}");
    let mig = m.hosts[0].gpus[0].mig_instances[0].uuid.to_string();
    let p = plan(&m, &request(Some(&format!("{mig},2")), Policy::Warn)).expect("explicit, warn");
    assert_eq!(p.workers.len(), 2);
    assert!(p.findings.iter().any(|f| f.code == "mig-and-whole-gpus"));
    // Explicitly named, strict still refuses the memory mix (10 GB beside 80 GB) and says so.
    let err = plan(&m, &request(Some(&format!("{mig},2")), Policy::Strict)).expect_err("memory mix");
    assert!(matches!(err, PlanError::Mixed { .. }), "{err}");
}

#[test]
fn spec_errors_each_say_what_to_change() {
    let dgx = machine("dgx-a100");
    let first = dgx.hosts[0].gpus[0].mig_instances[0].uuid.to_string();
    let cases = [
        ("0", "has MIG enabled and so is not a compute device; name its instances instead: MIG-"),
        ("9", "GPU index 9 is out of range on host `dgx-a100`, which has 8 GPU(s)"),
        ("MIG-00000000", "no device is named `MIG-00000000`"),
        (&format!("{first},{first}"), "already in the list"),
        ("0,", "entry 2 of the device list is empty"),
        ("GPU-", "comes a UUID"),
    ];
    for (spec, expected) in cases {
        let err = plan(&dgx, &request(Some(spec), Policy::Strict)).expect_err(spec);
        assert!(err.to_string().contains(expected), "{spec}: {err}");
        assert!(err.to_string().contains("(in --devices)"), "{spec}: {err}");
    }
    let empty = machine("h100-mig-empty");
    let err = plan(&empty, &request(Some("0"), Policy::Strict)).expect_err("empty MIG");
    assert!(err.to_string().contains("MIG enabled but no MIG instances"), "{err}");
}

#[test]
fn prefixes_resolve_when_unique_and_list_candidates_when_not() {
    let m = machine("dgx-a100");
    let uuids: Vec<String> =
        m.hosts[0].gpus.iter().flat_map(|g| &g.mig_instances).map(|i| i.uuid.to_string()).collect();
    let target = &uuids[10];
    let unique =
        (5..36).map(|n| &target[..n]).find(|p| uuids.iter().filter(|u| u.starts_with(p)).count() == 1).expect("prefix");
    let p = plan(&m, &request(Some(unique), Policy::Strict)).expect("prefix plan");
    assert_eq!(p.workers[0].device_uuid.to_string(), *target);
    let shared = "MIG-";
    let err = plan(&m, &request(Some(shared), Policy::Strict)).expect_err("ambiguous");
    assert!(err.to_string().contains("comes a UUID"), "{err}");
    // 56 instances over 16 hex digits: some one-digit prefix names several of them (pigeonhole),
    // so this assertion always runs.
    let digit = uuids
        .iter()
        .map(|u| &u[..5])
        .find(|p| uuids.iter().filter(|u| u.starts_with(p)).count() > 1)
        .expect("a one-digit prefix shared by two instances");
    let first = uuids.iter().find(|u| u.starts_with(digit)).expect("a match");
    let err = plan(&m, &request(Some(digit), Policy::Strict)).expect_err("ambiguous");
    assert!(err.to_string().contains("is ambiguous"), "{err}");
    assert!(err.to_string().contains(first.as_str()), "{err}");
}

#[test]
fn legacy_names_name_the_same_device_and_duplicates_are_caught() {
    let m = machine("legacy-r460");
    let legacy = m.hosts[0].gpus[0].mig_instances[0].uuid.to_string();
    assert!(legacy.starts_with("MIG-GPU-"));
    let p = plan(&m, &request(Some(&legacy), Policy::Strict)).expect("legacy");
    assert_eq!(p.workers[0].device_uuid.to_string(), legacy);
    assert_eq!(visible(&p.workers[0]), legacy);
    // A planted duplicate: the same legacy name twice is refused, naming the second entry.
    let twice = format!("{legacy},{legacy}");
    let err = plan(&m, &request(Some(&twice), Policy::Strict)).expect_err("duplicate");
    assert!(err.to_string().contains("already in the list"), "{err}");
    assert!(err.to_string().contains(&legacy), "{err}");
}

#[test]
fn memory_tolerance_decides_whether_uneven_instances_are_alike() {
    let s = fixture(
        "hostname = \"u\"\n[[gpu]]\nproduct = \"A100-40GB\"\n[[gpu.instance]]\nprofile = \"3g.20gb\"\nmemory_mib = 20224\n[[gpu.instance]]\nprofile = \"3g.20gb\"\nmemory_mib = 20096\n",
    );
    assert_eq!(plan(&s, &PlanRequest::default()).expect("within 2%").workers.len(), 2);
    let mut tight = PlanRequest { memory_tolerance_pct: 0.1, ..PlanRequest::default() };
    let err = plan(&s, &tight).expect_err("0.1% is too tight");
    assert!(err.to_string().contains("--memory-tolerance 1 "), "{err}");
    tight.memory_tolerance_pct = 150.0;
    assert!(matches!(plan(&s, &tight), Err(PlanError::Tolerance(_))));
}

#[test]
fn parent_memory_hidden_still_plans_from_instances() {
    let mut m = machine("h200");
    m.hosts[0].gpus[0].memory_bytes = None;
    let p = plan(&m, &PlanRequest::default()).expect("plan");
    assert_eq!(p.workers.len(), 7);
    assert_eq!(p.workers[0].device_memory_bytes, Some(16384 << 20));
}

#[test]
fn inventories_join_with_unique_hosts() {
    let a = machine("a100-80gb-2x7");
    let b = machine("dgx-a100");
    let joined = merge_inventories(vec![a.clone(), b]).expect("join");
    assert_eq!(joined.hosts.len(), 2);
    let err = merge_inventories(vec![a.clone(), a]).expect_err("duplicate");
    assert!(err.to_string().contains("appears in inventories 1 and 2"), "{err}");
    // Different MIG layouts across hosts are judged together.
    let mixed = merge_inventories(vec![machine("a100-80gb-2x7"), machine("dgx-a100")]).expect("join");
    let err = plan(&mixed, &PlanRequest::default()).expect_err("5 GB beside 10 GB");
    assert!(err.to_string().contains("a100-2x7") && err.to_string().contains("dgx-a100"), "{err}");
    let p = plan(&mixed, &request(None, Policy::Grouped)).expect("grouped");
    assert_eq!(p.workers.len(), 14 + 56);
}

#[test]
fn doctor_finds_what_is_wrong() {
    let env = Environment { cuda_visible_devices: None, ucx_tls: Some("tcp,cuda_copy,cuda_ipc".into()) };
    let f = doctor(&machine("h100-mig-empty"), &PlanRequest::default(), &env);
    let codes: Vec<&str> = f.iter().map(|f| f.code.as_str()).collect();
    assert!(codes.contains(&"mig-enabled-without-instances"), "{codes:?}");
    assert!(codes.contains(&"ucx-cuda-ipc-on-mig"), "{codes:?}");
    assert!(codes.contains(&"nccl-on-mig"), "{codes:?}");
    assert!(f.windows(2).all(|w| w[0].severity >= w[1].severity), "most serious first");

    let legacy = doctor(&machine("legacy-r460"), &PlanRequest::default(), &Environment::default());
    assert!(legacy.iter().any(|f| f.code == "legacy-mig-names"));
    assert!(!legacy.iter().any(|f| f.severity == Severity::Error), "{legacy:?}");

    let dgx = machine("dgx-a100");
    let two: Vec<String> = dgx.hosts[0].gpus[0].mig_instances[..2].iter().map(|i| i.uuid.to_string()).collect();
    let env = Environment { cuda_visible_devices: Some(two.join(",")), ucx_tls: None };
    let r = PlanRequest { devices: Some((two.join(","), SpecSource::Environment)), ..PlanRequest::default() };
    let f = doctor(&dgx, &r, &env);
    assert!(f.iter().any(|f| f.code == "several-mig-visible"), "{f:?}");

    let env = Environment { cuda_visible_devices: Some("0".into()), ucx_tls: None };
    let r = PlanRequest { devices: Some(("0".into(), SpecSource::Environment)), ..PlanRequest::default() };
    let f = doctor(&dgx, &r, &env);
    let plan_error = f.iter().find(|f| f.code == "plan").expect("plan error");
    assert!(plan_error.explanation.to_string().contains("CUDA_VISIBLE_DEVICES"), "{plan_error:?}");
    assert!(plan_error.explanation.to_string().contains("name its instances instead"), "{plan_error:?}");

    let clean = doctor(&machine("hgx-h100"), &PlanRequest::default(), &Environment::default());
    assert!(clean.is_empty(), "{clean:?}");
}

#[test]
fn several_workers_share_a_device_and_its_memory_limit() {
    let m = machine("h100");
    let r = PlanRequest { workers_per_device: 2, device_memory_limit: "auto".into(), ..PlanRequest::default() };
    let p = plan(&m, &r).expect("plan");
    assert_eq!(p.workers.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), vec!["h100-gpu0-w0", "h100-gpu0-w1"]);
    let total = 81559u64 << 20;
    assert!(p.workers.iter().all(|w| w.device_memory_limit_bytes == Some(total / 2)));
    assert_eq!(p.workers[0].device_uuid, p.workers[1].device_uuid);
    let err = plan(&m, &PlanRequest { workers_per_device: 0, ..PlanRequest::default() }).expect_err("zero");
    assert!(err.to_string().contains("1 to 64"), "{err}");
}

/// Memory limits that cannot be meant: each an error saying so, or (a tiny limit) a warning.
#[test]
fn device_memory_limits_that_cannot_be_meant() {
    let m = machine("a100-80gb-2x7");
    let with = |limit: &str| plan(&m, &PlanRequest { device_memory_limit: limit.into(), ..PlanRequest::default() });
    for (limit, expected) in [
        ("2.0", "neither a fraction of the device's memory"),
        ("1.5", "more than 0 and at most 1"),
        ("1e-300", "comes to 0 bytes"),
        ("100GB", "more than the"),
        ("-1", "is not a memory size"),
        ("nan", "is not a memory size"),
    ] {
        let err = with(limit).expect_err(limit);
        assert!(matches!(err, PlanError::MemoryLimit(_)), "{limit}: {err:?}");
        assert!(err.to_string().contains(expected), "{limit}: {err}");
    }
    let tiny = with("1000000").expect("a legal, if odd, limit");
    let warning = tiny.findings.iter().find(|f| f.code == "device-memory-limit-small").expect("a warning");
    assert_eq!(warning.severity, Severity::Warning);
    assert!(warning.message.to_string().contains("14 device(s)"), "{warning:?}");
    assert!(with("1e9").expect("1e9 is bytes").findings.iter().all(|f| f.code != "device-memory-limit-small"));
    let shared =
        plan(&m, &PlanRequest { device_memory_limit: "1".into(), workers_per_device: 2, ..PlanRequest::default() });
    assert!(shared.expect_err("half a byte").to_string().contains("comes to 0 bytes"));
}

#[test]
fn a_spec_error_says_its_message_once() {
    let err = plan(&machine("dgx-a100"), &request(Some("GPU-zz"), Policy::Strict)).expect_err("bad spec");
    let text = err.to_string();
    assert_eq!(text.matches("is not a device").count(), 1, "{text}");
    assert!(std::error::Error::source(&err).is_none(), "anyhow would print the message again");
}

/// `count` hosts like the DGX A100 preset, each with its own host and device names.
fn cluster(count: usize) -> Snapshot {
    let template = machine("dgx-a100").hosts.remove(0);
    let renumber = |id: &gpu_topology::DeviceId, host: usize| -> gpu_topology::DeviceId {
        let text = id.to_string();
        let (kind, uuid) = text.split_at(4);
        format!("{kind}{host:08x}{}", &uuid[8..]).parse().expect("renumbered")
    };
    let hosts = (0..count)
        .map(|i| {
            let mut h = template.clone();
            h.hostname = format!("node{i:05}");
            for gpu in &mut h.gpus {
                gpu.uuid = renumber(&gpu.uuid, i);
                for m in &mut gpu.mig_instances {
                    m.uuid = renumber(&m.uuid, i);
                }
            }
            h
        })
        .collect();
    Snapshot { hosts }
}

#[test]
fn naming_thousands_of_devices_stays_linear() {
    let big = cluster(200);
    let every: Vec<String> =
        big.hosts.iter().flat_map(|h| &h.gpus).flat_map(|g| &g.mig_instances).map(|m| m.uuid.to_string()).collect();
    let started = std::time::Instant::now();
    let p = plan(&big, &request(Some(&every.join(",")), Policy::Strict)).expect("11,200 names");
    assert_eq!(p.workers.len(), 11_200);
    let prefixes: Vec<&str> = every.iter().map(|u| &u[..17]).collect();
    let p = plan(&big, &request(Some(&prefixes.join(",")), Policy::Strict)).expect("11,200 prefixes");
    assert_eq!(p.workers.len(), 11_200);
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    let err = plan(&big, &request(Some("MIG-0"), Policy::Strict)).expect_err("ambiguous");
    let text = err.to_string();
    assert!(text.contains("is ambiguous") && text.contains("more; give more of the UUID"), "{text}");
    assert!(text.len() < 600, "lists a few candidates, not thousands: {text}");
}

#[test]
fn inventories_refuse_one_device_on_two_hosts_and_more_hosts_than_the_limit() {
    let a = machine("a100-80gb-2x7");
    let mut renamed = a.clone();
    renamed.hosts[0].hostname = "a100-2x7-again".into();
    let err = merge_inventories(vec![a, renamed]).expect_err("one machine twice");
    assert!(matches!(err, InventoryError::DuplicateDevice { .. }), "{err}");
    assert!(err.to_string().contains("saved under two names"), "{err}");

    let host = |i: usize| gpu_topology::HostTopology {
        hostname: format!("h{i}"),
        driver_version: None,
        gpus: Vec::new(),
        peers: Vec::new(),
    };
    let many = Snapshot { hosts: (0..=gpu_topology::limits::MAX_HOSTS).map(host).collect() };
    let err = merge_inventories(vec![many]).expect_err("too many hosts");
    assert!(err.to_string().contains("limit of 32768 hosts"), "{err}");
}

#[test]
fn more_workers_on_a_host_than_the_limit_is_refused_naming_it() {
    let s = fixture("hostname = \"huge\"\n[[gpu]]\nproduct = \"H100-80GB\"\ncount = 256\nmig = [\"7x1g.10gb\"]\n");
    let p = plan(&s, &PlanRequest::default()).expect("1792 workers");
    assert_eq!(p.workers.len(), 1792);
    let err = plan(&s, &PlanRequest { workers_per_device: 2, ..PlanRequest::default() }).expect_err("3584 workers");
    assert!(matches!(err, PlanError::TooManyWorkers { workers: 3584, limit: 2048, .. }), "{err}");
    assert!(err.to_string().contains("lower --workers-per-device"), "{err}");
}

#[test]
fn thousands_of_classes_stay_cheap_and_the_refusal_short() {
    let mut s = cluster(20);
    for (i, m) in s.hosts.iter_mut().flat_map(|h| &mut h.gpus).flat_map(|g| &mut g.mig_instances).enumerate() {
        m.memory_bytes = (1 << 30) + (i as u64) * (1 << 28);
    }
    let exact = |policy| PlanRequest { memory_tolerance_pct: 0.0, ..request(None, policy) };
    let grouped = plan(&s, &exact(Policy::Grouped)).expect("grouped");
    assert_eq!(grouped.classes.len(), 1120);
    let resources: std::collections::HashSet<_> = grouped.classes.iter().map(|c| &c.resource).collect();
    assert_eq!(resources.len(), 1120, "each class its own resource");
    let text = plan(&s, &exact(Policy::Strict)).expect_err("strict").to_string();
    assert!(text.contains("and 1112 more classes"), "{text}");
    assert!(text.len() < 5000, "{} characters", text.len());
}

/// Refusals and findings name settings and commands only as pieces, which each front end says in
/// its own words; the command line's words are exactly those the binary has always printed.
mod wording {
    use super::*;
    use crate::wording::{Call, CommandLine, Message, Remedy, Setting, Terms, topology_remedy};

    /// Words no front end uses, so that whatever a message says of its own shows through.
    struct Marked;

    impl Terms for Marked {
        fn setting(&self, setting: Setting, value: Option<&str>) -> String {
            format!("<{setting:?}={}>", value.unwrap_or("?"))
        }

        fn name(&self, setting: Setting) -> String {
            format!("<{setting:?}>")
        }

        fn call(&self, call: Call) -> String {
            format!("<{call:?}()>")
        }
    }

    /// A message in marked words that names no flag and no command of the binary's.
    fn check(text: &str) {
        assert!(!text.contains("--") && !text.contains("`gpucluster "), "front-end words in:\n{text}");
    }

    #[test]
    fn every_refusal_names_settings_only_through_the_front_ends_terms() {
        let fixture_of = |text: &str| fixture(text);
        let mixed = merge_inventories(vec![machine("a100-80gb-2x7"), machine("dgx-a100")]).expect("join");
        let huge =
            fixture_of("hostname = \"huge\"\n[[gpu]]\nproduct = \"H100-80GB\"\ncount = 256\nmig = [\"7x1g.10gb\"]\n");
        let cases: Vec<(Snapshot, PlanRequest)> = vec![
            (machine("a30"), request(Some("Foo"), Policy::Strict)),
            (machine("a30"), request(Some("MIG-ffffffff"), Policy::Strict)),
            (
                machine("a30"),
                PlanRequest { devices: Some(("9".into(), SpecSource::Environment)), ..PlanRequest::default() },
            ),
            (
                fixture_of("hostname = \"e\"\n[[gpu]]\nproduct = \"H100-80GB\"\nmig_enabled = true\nmig = []\n"),
                PlanRequest::default(),
            ),
            (machine("a100-80gb-mixed"), PlanRequest::default()),
            (mixed, PlanRequest::default()),
            (machine("h100-mixed"), PlanRequest::default()),
            (machine("a30"), PlanRequest { device_memory_limit: "lots".into(), ..PlanRequest::default() }),
            (machine("a30"), PlanRequest { workers_per_device: 0, ..PlanRequest::default() }),
            (huge, PlanRequest { workers_per_device: 2, ..PlanRequest::default() }),
            (machine("a30"), PlanRequest { memory_tolerance_pct: -1.0, ..PlanRequest::default() }),
        ];
        for (snapshot, request) in &cases {
            let err = plan(snapshot, request).expect_err("refused");
            let marked = err.message().render(&Marked);
            check(&marked);
            // The command line's words are the error's own text.
            assert_eq!(err.message().render(&CommandLine), err.to_string());
        }
        let mixed = plan(&machine("a100-80gb-mixed"), &PlanRequest::default()).expect_err("mixed").message();
        let marked = mixed.render(&Marked);
        assert!(marked.contains("<Policy=largest-group>") && marked.contains("<Devices=MIG-"), "{marked}");
    }

    #[test]
    fn every_finding_names_settings_only_through_the_front_ends_terms() {
        let m = machine("h100-mixed");
        let mig = m.hosts[0].gpus[0].mig_instances[0].uuid.to_string();
        let mut findings = Vec::new();
        for (snapshot, request) in [
            (m.clone(), request(Some(&format!("{mig},2")), Policy::Warn)),
            (machine("a100-80gb-mixed"), request(None, Policy::Warn)),
            (machine("a100-80gb-mixed"), request(None, Policy::LargestGroup)),
            (machine("a30"), PlanRequest { device_memory_limit: "1".into(), ..PlanRequest::default() }),
        ] {
            let p = plan(&snapshot, &request).expect("plan");
            findings.extend(p.findings);
            for e in &p.excluded {
                check(&e.reason.render(&Marked));
            }
        }
        let dgx = machine("dgx-a100");
        let two: Vec<String> = dgx.hosts[0].gpus[0].mig_instances[..2].iter().map(|i| i.uuid.to_string()).collect();
        let env = Environment { cuda_visible_devices: Some(two.join(",")), ucx_tls: Some("all".into()) };
        for snapshot in [machine("h100-mig-empty"), machine("legacy-r460"), dgx] {
            let request =
                PlanRequest { devices: Some(("0".into(), SpecSource::Environment)), ..PlanRequest::default() };
            findings.extend(doctor(&snapshot, &request, &env));
            findings.extend(doctor(&snapshot, &PlanRequest::default(), &env));
        }
        let codes: std::collections::BTreeSet<&str> = findings.iter().map(|f| f.code.as_str()).collect();
        for code in ["mig-and-whole-gpus", "mixed-classes", "largest-group", "device-memory-limit-small", "plan"] {
            assert!(codes.contains(code), "{code} not among {codes:?}");
        }
        for f in &findings {
            for text in [&f.message, &f.explanation, &f.fix] {
                check(&text.render(&Marked));
            }
        }
    }

    #[test]
    fn the_command_line_lays_remedies_out_in_two_columns() {
        let choices = Message::from("to go on, choose one of:\n").remedies(vec![
            Remedy::new(Setting::Policy, "largest-group", "keep class A"),
            Remedy::new(Setting::Policy, "warn", "keep all as they are"),
            Remedy::new(Setting::Devices, "0,1", "use class A only"),
            Remedy::new(Setting::Devices, "MIG-a,MIG-b,...", "use class B only")
                .with_aside(Message::from("(9 devices: `").setting_to(Setting::Policy, "largest-group").text("`)")),
            Remedy::new(Setting::MemoryTolerance, "5", "count memory within 5% as alike"),
            Remedy::new(Setting::MemoryTolerance, "51", "count memory within 51% as alike"),
            Remedy::new(Setting::WorkersPerDevice, "a value far too long to fit", "on the next line"),
        ]);
        let want = "to go on, choose one of:
  --policy largest-group   keep class A
  --policy warn            keep all as they are
  --devices 0,1
                           use class A only
  --devices MIG-a,MIG-b,... (9 devices: `--policy largest-group`)
                           use class B only
  --memory-tolerance 5     count memory within 5% as alike
  --memory-tolerance 51    count memory within 51% as alike
  --workers-per-device a value far too long to fit
                           on the next line";
        assert_eq!(choices.to_string(), want);
        assert_eq!(serde_json::to_string(&choices).expect("json"), serde_json::to_string(want).expect("json"));
    }

    #[test]
    fn topology_errors_get_their_remedy_after_their_own_text() {
        let unavailable = gpu_topology::TopologyError::BackendUnavailable {
            library: "libnvidia-ml.so.1".into(),
            reason: "gone".into(),
        };
        let remedy = topology_remedy(&unavailable).expect("a remedy");
        assert_eq!(
            format!("{unavailable}{remedy}"),
            "cannot use NVML (libnvidia-ml.so.1): gone; is the NVIDIA driver installed? To work without one, pass \
             --topology sim:NAME (see `gpucluster list --presets`), file:PATH or smi:PATH"
        );
        check(&remedy.render(&Marked).replace("<ListPresets()>", ""));
        let empty = gpu_topology::TopologyError::EmptyFile { path: "m.json".into() };
        assert_eq!(
            format!("{empty}{}", topology_remedy(&empty).expect("a remedy")),
            "m.json: the file is empty; a fixture names at least its `hostname`, and a snapshot is the JSON \
             `gpucluster list --json` prints"
        );
        let unknown = gpu_topology::TopologyError::UnknownPreset { name: "x".into(), available: Vec::new() };
        assert!(topology_remedy(&unknown).is_none());
    }
}
