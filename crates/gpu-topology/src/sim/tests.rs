//! The simulator against the facts it must reproduce.

use super::*;
use crate::DeviceId;

fn snapshot_of(source: &SimSource) -> Result<crate::HostTopology, TopologyError> {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(source.snapshot()).map(|mut s| s.hosts.remove(0))
}

fn preset(name: &str) -> crate::HostTopology {
    snapshot_of(&SimSource::preset(name).expect("preset")).expect("snapshot")
}

fn fixture(text: &str) -> Result<crate::HostTopology, TopologyError> {
    snapshot_of(&SimSource::from_fixture(text, Path::new("test.toml"))?)
}

#[test]
fn every_preset_loads_validates_and_describes_itself() {
    for p in PRESETS {
        let host = preset(p.name);
        host.validate().unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert!(!p.description().is_empty(), "{} has no description", p.name);
    }
}

#[test]
fn dgx_a100_has_56_instances_with_nvml_gi_ids() {
    let host = preset("dgx-a100");
    assert_eq!(host.gpus.len(), 8);
    for gpu in &host.gpus {
        assert!(gpu.mig_enabled);
        let gis: Vec<_> = gpu.mig_instances.iter().map(|m| m.gpu_instance_id).collect();
        assert_eq!(gis, (7..14).map(Some).collect::<Vec<_>>());
        for m in &gpu.mig_instances {
            assert_eq!(m.profile, "1g.5gb");
            assert_eq!(m.memory_bytes, 4864 << 20);
            assert_eq!(m.sm_count, Some(14));
        }
    }
    let link = host.peer(0, 7).expect("link");
    assert!(link.nvlink && link.p2p.is_ok());
    assert_eq!(link.nvlink_count, Some(0), "through NVSwitch, no direct links");
}

#[test]
fn uuids_are_stable_and_distinct_across_hosts() {
    let a = preset("a100-80gb-2x7");
    let b = preset("a100-80gb-2x7");
    assert_eq!(a, b);
    let other = preset("a100-80gb-mixed");
    assert_ne!(a.gpus[0].uuid, other.gpus[0].uuid);
}

#[test]
fn legacy_driver_gives_legacy_names() {
    let host = preset("legacy-r460");
    let m = &host.gpus[0].mig_instances[1];
    assert_eq!(m.gpu_instance_id, Some(2));
    match &m.uuid {
        DeviceId::LegacyMig { gpu, gpu_instance: 2, compute_instance: 0 } => {
            assert_eq!(&DeviceId::Gpu(gpu.clone()), &host.gpus[0].uuid);
        }
        other => panic!("expected a legacy name, got {other}"),
    }
    assert_eq!(host.gpus[1].mig_instances.len(), 2);
    assert!(crate::driver_uses_legacy_mig_names("460.73.01"));
    assert!(crate::driver_uses_legacy_mig_names("470.42.00"));
    assert!(!crate::driver_uses_legacy_mig_names("470.42.01"));
    assert!(!crate::driver_uses_legacy_mig_names("580.159.04"));
    // Numbers, not text: 1000 is newer than 470 although "1" sorts before "4".
    assert!(!crate::driver_uses_legacy_mig_names("1000.1"));
    assert!(!crate::driver_uses_legacy_mig_names(""));
}

#[test]
fn mig_enabled_without_instances() {
    let host = preset("h100-mig-empty");
    assert!(host.gpus[0].mig_enabled && host.gpus[0].mig_instances.is_empty());
    assert_eq!(host.gpus[1].mig_instances.len(), 3);
}

#[test]
fn mixed_layout_reports_each_profile_with_its_memory() {
    let host = preset("a100-80gb-mixed");
    assert_eq!(host.gpus[0].mig_instances.len(), 7);
    assert_eq!(host.gpus[1].mig_instances.len(), 3);
    assert_eq!(host.gpus[1].mig_instances[0].memory_bytes, 19968 << 20);
    assert_eq!(host.gpus[1].mig_instances[0].sm_count, Some(28));
}

const BASE: &str = "hostname = \"t\"\n";

#[test]
fn explicit_instances_set_slots_memory_and_make_gaps() {
    let host = fixture(&format!(
        "{BASE}[[gpu]]\nproduct = \"A100-40GB\"\n\
         [[gpu.instance]]\nprofile = \"3g.20gb\"\nmemory_mib = 20224\nslot = 0\n\
         [[gpu.instance]]\nprofile = \"3g.20gb\"\nmemory_mib = 20096\nslot = 4\n"
    ))
    .expect("fixture");
    let m = &host.gpus[0].mig_instances;
    assert_eq!(
        m.iter().map(|i| (i.slot, i.gpu_instance_id, i.memory_bytes >> 20)).collect::<Vec<_>>(),
        vec![(Some(0), Some(1), 20224), (Some(4), Some(2), 20096)]
    );
}

#[test]
fn faults_reproduce_nvml_failures() {
    let text = format!("{BASE}[[gpu]]\nproduct = \"H100-80GB\"\nmig = [\"2x3g.40gb\"]\n");
    let no_perm = fixture(&format!("{text}[faults]\nparent_memory_no_permission = true\n")).expect("ok");
    assert_eq!(no_perm.gpus[0].memory_bytes, None);
    assert_eq!(no_perm.gpus[0].mig_instances[0].memory_bytes, 40448 << 20);

    let err = fixture(&format!("{text}[faults]\nmig_no_permission = true\n")).expect_err("fails");
    assert!(err.to_string().contains("NVIDIA_MIG_MONITOR_DEVICES"), "{err}");

    let err = fixture(&format!("{text}[faults]\nlost_gpus = [0]\n")).expect_err("fails");
    assert!(err.to_string().contains("GPU is lost"), "{err}");

    let err = fixture(&format!("{text}[faults]\nnvml_missing = true\n")).expect_err("fails");
    assert!(err.to_string().contains("libnvidia-ml.so.1"), "{err}");
    assert!(matches!(err, TopologyError::BackendUnavailable { .. }), "{err}");
    assert!(err.to_string().ends_with("is the NVIDIA driver installed?"), "the remedy is the front end's: {err}");
}

#[test]
fn bad_fixtures_point_at_the_line() {
    for (body, line, expected) in [
        ("[[gpu]]\nproduct = \"A100-40GB\"\nmig = [\"8x1g.5gb\"]\n", 2, "at most 7"),
        ("[[gpu]]\nproduct = \"A100-40GB\"\nmig = [\"3x3g.20gb\"]\n", 2, "at most 2 instance(s) of 3g.20gb"),
        ("[[gpu]]\nproduct = \"A100-40GB\"\nmig = [\"4g.20gb\", \"2x2g.10gb\"]\n", 2, "2g.10gb does not fit"),
        ("[[gpu]]\nproduct = \"A100-40GB\"\nmig = [\"1g.20gb\"]\n", 2, "unknown MIG profile `1g.20gb`"),
        ("[[gpu]]\nproduct = \"Voodoo2\"\n", 2, "unknown product `Voodoo2`"),
        ("[[gpu]]\nproduct = \"V100-32GB\"\nmig = [\"1g.5gb\"]\n", 2, "does not support MIG"),
        ("[[gpu]]\nproduct = \"A100-40GB\"\ncolour = \"green\"\n", 4, "unknown field `colour`"),
        ("[[gpu]]\nproduct = \"A100-40GB\"\nuuid = \"MIG-x\"\n", 4, "not a device name"),
        ("[[gpu]]\nproduct = \"A100-40GB\"\ncount = 2\n[[nvlink]]\ngpus = [0, 5]\nlinks = 12\n", 5, "names GPU 5"),
        ("[[gpu]]\nproduct = \"H100-80GB\"\nmig = [\"1c.3g.40gb\"]\n", 2, "compute instances"),
        ("[[gpu]]\nproduct = \"A100-40GB\"\ncpu_affinity = \"0-x\"\n", 2, "not a CPU list"),
        ("[[gpu]\n", 2, "invalid table header"),
    ] {
        let err = fixture(&format!("{BASE}{body}")).expect_err(body);
        let text = err.to_string();
        assert!(text.contains(&format!("test.toml:{line}:")), "{body}: {text}");
        assert!(text.contains(expected), "{body}: {text}");
    }
}

#[test]
fn unknown_preset_lists_the_valid_ones() {
    let err = SimSource::preset("dgx-z100").expect_err("unknown");
    let text = err.to_string();
    assert!(text.contains("dgx-z100") && text.contains("dgx-a100") && text.contains("h200"), "{text}");
}

/// Each fixture asks for more than any real host has, or for a number that would overflow; each
/// is refused at its line, naming the limit, before anything of that size is built.
#[test]
fn fixtures_beyond_any_real_host_are_refused_with_the_limit() {
    for (body, line, expected) in [
        ("[[gpu]]\nproduct = \"A100-40GB\"\ncount = 4294967295\n", 2, "at most 256 GPUs on one host"),
        ("[[gpu]]\nproduct = \"A100-40GB\"\ncount = 200\n[[gpu]]\nproduct = \"L4\"\ncount = 4294967295\n", 5, "256"),
        ("cpus = 4294967295\n[[gpu]]\nproduct = \"A100-40GB\"\n", 2, "at most 8192 (limits::MAX_CPUS)"),
        ("numa_nodes = 4294967295\n[[gpu]]\nproduct = \"A100-40GB\"\n", 2, "give 1 to 1024"),
        ("[[gpu]]\nproduct = \"A100-40GB\"\nmig = [\"18446744073709551616x1g.5gb\"]\n", 2, "holds at most 7"),
        ("[[gpu]]\nproduct = \"A100-40GB\"\nmig = [\"7x1g.5gb\", \"7x1g.5gb\"]\n", 2, "14 MIG instances asked for"),
        ("[[gpu]]\nproduct = \"A100-40GB\"\nmig = [\"0x1g.5gb\"]\n", 2, "at least 1"),
        ("[[gpu]]\nproduct = \"A100-40GB\"\ncpu_affinity = \"0-4294967294\"\n", 2, "names CPU 4294967294"),
        ("[[gpu]]\nproduct = \"A100-40GB\"\ncount = 0\n", 2, "at least 1"),
    ] {
        let err = fixture(&format!("{BASE}{body}")).expect_err(body).to_string();
        assert!(err.contains(&format!("test.toml:{line}:")), "{body}: {err}");
        assert!(err.contains(expected), "{body}: {err}");
    }
}

/// A fixture that contradicts itself, or names what no machine could report.
#[test]
fn contradictory_fixtures_are_refused_at_the_line() {
    const G: &str = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6";
    const M: &str = "MIG-c788f2ec-4b8a-5a62-8b0e-a8a6c6a3d0f1";
    for (text, line, expected) in [
        (
            format!(
                "{BASE}[[gpu]]\nproduct = \"A100-40GB\"\nuuid = \"{G}\"\n[[gpu]]\nproduct = \"A100-40GB\"\nuuid = \"{G}\"\n"
            ),
            5,
            "already the name of the device on line 2",
        ),
        (
            format!(
                "{BASE}[[gpu]]\nproduct = \"A100-40GB\"\n[[gpu.instance]]\nprofile = \"3g.20gb\"\nuuid = \"{M}\"\n\
                 [[gpu.instance]]\nprofile = \"3g.20gb\"\nuuid = \"{M}\"\n"
            ),
            7,
            "already the name",
        ),
        (
            format!(
                "{BASE}[[gpu]]\nproduct = \"A100-40GB\"\n[[gpu.instance]]\nprofile = \"3g.20gb\"\nmemory_mib = 953673728\n"
            ),
            4,
            "at most its GPU's memory (40960 MiB",
        ),
        (
            format!(
                "{BASE}[[gpu]]\nproduct = \"A100-40GB\"\n[[gpu.instance]]\nprofile = \"3g.20gb\"\nmemory_mib = 0\n"
            ),
            4,
            "more than 0",
        ),
        ("hostname = \"t\"\ndriver_version = \"banana\"\n".to_owned(), 2, "`banana` is not a version"),
        ("hostname = \"\"\n".to_owned(), 1, "the host name is empty"),
        ("hostname = \"a\\u001b[31mb\"\n".to_owned(), 1, "control character"),
        (format!("{BASE}[[gpu]]\nproduct = \"A100-40GB\"\nmig = [\"20x7g.40gb\"]\n"), 2, "holds at most 7"),
    ] {
        let err = fixture(&text).expect_err(&text).to_string();
        assert!(err.contains(&format!("test.toml:{line}:")), "{text}: {err}");
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn a_host_of_256_gpus_with_every_nvlink_group_loads() {
    let mut text = format!("{BASE}[[gpu]]\nproduct = \"H100-80GB\"\ncount = 256\nmig = [\"7x1g.10gb\"]\n");
    for g in 0..32 {
        text.push_str(&format!(
            "[[nvlink]]\ngpus = [{}]\nlinks = 18\n",
            (g * 8..g * 8 + 8).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    let started = std::time::Instant::now();
    let host = fixture(&text).expect("the largest host allowed");
    assert_eq!(host.gpus.len(), 256);
    assert_eq!(host.peers.len(), 256 * 255);
    assert!(host.peer(8, 15).is_some_and(|p| p.nvlink) && host.peer(7, 8).is_some_and(|p| !p.nvlink));
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
}

/// The fixture reader against fixtures built from its keys with values real and absurd: it must
/// not panic or build anything beyond the limits, and whatever it accepts must be valid and load
/// back the same as a snapshot.
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::products;

    fn product() -> impl Strategy<Value = String> {
        let mut names: Vec<String> = products::PRODUCTS.iter().map(|p| p.name.to_owned()).collect();
        names.extend(["A100-40GB", "H100-80GB"].map(str::to_owned));
        prop_oneof![30 => proptest::sample::select(names), 1 => Just("Voodoo2".to_owned())]
    }

    /// Mostly the product's own profiles, sometimes any product's.
    fn profile_of(product: &str) -> impl Strategy<Value = String> + use<> {
        let mut any: Vec<String> = products::PRODUCTS
            .iter()
            .filter_map(|p| p.mig)
            .flat_map(|g| g.profile_names())
            .map(str::to_owned)
            .collect();
        any.extend(["1c.3g.40gb", "9g.99gb"].map(str::to_owned));
        let own: Vec<String> = products::product(product)
            .and_then(|p| p.mig)
            .map(|g| g.profiles.iter().filter(|p| !p.name.contains("+me")).map(|p| p.name.to_owned()).collect())
            .unwrap_or_else(|| any.clone());
        prop_oneof![12 => proptest::sample::select(own), 1 => proptest::sample::select(any)]
    }

    /// A small number, now and then zero, one past a limit, or one that overflows.
    fn number(small: std::ops::Range<u64>) -> impl Strategy<Value = String> {
        prop_oneof![
            40 => small.prop_map(|n| n.to_string()),
            1 => Just("0".to_owned()),
            1 => Just("4294967295".to_owned()),
            1 => Just("257".to_owned()),
            1 => Just("18446744073709551615".to_owned()),
            1 => Just("-1".to_owned()),
        ]
    }

    /// Names from a small pool, so that some repeat.
    fn name(kind: &'static str) -> impl Strategy<Value = String> {
        (0u8..6).prop_map(move |i| format!("{kind}-{i:08x}-2222-3333-4444-555555555555"))
    }

    #[derive(Debug, Clone)]
    struct Gpu {
        product: String,
        has_mig: bool,
    }

    fn gpu() -> impl Strategy<Value = String> {
        product()
            .prop_flat_map(|product| {
                let has_mig = products::product(&product).is_some_and(|p| p.mig.is_some());
                let instance = (
                    profile_of(&product),
                    proptest::option::weighted(
                        0.3,
                        prop_oneof![1 => Just(0u64), 20 => 1000u64..50_000, 1 => Just(953_673_728)],
                    ),
                    proptest::option::weighted(0.3, 0u32..9),
                    proptest::option::weighted(0.15, name("MIG")),
                );
                (
                    Just(Gpu { product: product.clone(), has_mig }),
                    proptest::option::weighted(0.4, number(1..4)),
                    proptest::collection::vec((1u32..4, profile_of(&product)), 0..3),
                    proptest::option::weighted(0.05, any::<bool>()),
                    proptest::option::weighted(0.15, name("GPU")),
                    proptest::option::weighted(
                        0.2,
                        prop_oneof![8 => Just("0-3"), 8 => Just("5,1-2"), 1 => Just("0-4294967294"), 1 => Just("x")],
                    ),
                    proptest::collection::vec(instance, 0..3),
                    any::<u8>(),
                )
            })
            .prop_map(|(gpu, count, mig, mig_enabled, uuid, cpus, instances, dice)| {
                let mut t = format!("[[gpu]]\nproduct = \"{}\"\n", gpu.product);
                if let Some(c) = count {
                    t.push_str(&format!("count = {c}\n"));
                }
                // Products without MIG mostly get no MIG keys, as a real fixture writes them.
                let with_mig = gpu.has_mig || dice < 10;
                if with_mig && dice % 3 != 0 {
                    let list: Vec<String> = mig.iter().map(|(n, p)| format!("\"{n}x{p}\"")).collect();
                    t.push_str(&format!("mig = [{}]\n", list.join(", ")));
                }
                if let Some(e) = mig_enabled {
                    t.push_str(&format!("mig_enabled = {e}\n"));
                }
                if let Some(u) = uuid {
                    t.push_str(&format!("uuid = \"{u}\"\n"));
                }
                if let Some(c) = cpus {
                    t.push_str(&format!("cpu_affinity = \"{c}\"\n"));
                }
                for (profile, memory, slot, uuid) in instances.into_iter().filter(|_| with_mig && dice % 2 == 0) {
                    t.push_str(&format!("[[gpu.instance]]\nprofile = \"{profile}\"\n"));
                    if let Some(m) = memory {
                        t.push_str(&format!("memory_mib = {m}\n"));
                    }
                    if let Some(s) = slot {
                        t.push_str(&format!("slot = {s}\n"));
                    }
                    if let Some(u) = uuid {
                        t.push_str(&format!("uuid = \"{u}\"\n"));
                    }
                }
                t
            })
    }

    fn fixture_text() -> impl Strategy<Value = String> {
        (
            prop_oneof![40 => Just("node"), 1 => Just(""), 1 => Just("a\\u001bb")],
            prop_oneof![30 => Just("580.159.04"), 8 => Just("460.73.01"), 1 => Just("banana")],
            proptest::option::weighted(0.2, number(8..128)),
            proptest::option::weighted(0.2, number(1..4)),
            proptest::collection::vec(gpu(), 0..4),
            proptest::collection::vec(
                (proptest::option::weighted(0.2, proptest::collection::vec(0u32..4, 0..4)), 0u32..20),
                0..3,
            ),
            proptest::option::weighted(0.05, proptest::collection::vec(0u32..4, 0..2)),
        )
            .prop_map(|(host, driver, cpus, numa, gpus, nvlinks, lost)| {
                let mut t = format!("hostname = \"{host}\"\ndriver_version = \"{driver}\"\n");
                if let Some(c) = cpus {
                    t.push_str(&format!("cpus = {c}\n"));
                }
                if let Some(n) = numa {
                    t.push_str(&format!("numa_nodes = {n}\n"));
                }
                t.push_str(&gpus.concat());
                for (members, links) in nvlinks {
                    t.push_str("[[nvlink]]\n");
                    if let Some(m) = members {
                        t.push_str(&format!("gpus = {m:?}\n"));
                    }
                    t.push_str(&format!("links = {links}\n"));
                }
                if let Some(lost) = lost {
                    t.push_str(&format!("[faults]\nlost_gpus = {lost:?}\n"));
                }
                t
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn accepted_fixtures_are_valid_and_load_back_the_same(text in fixture_text()) {
            if let Ok(host) = fixture(&text) {
                prop_assert!(host.gpus.len() <= crate::limits::MAX_GPUS_PER_HOST);
                prop_assert!(host.validate().is_ok(), "{:?}", host.validate());
                let snapshot = crate::Snapshot { hosts: vec![host] };
                let json = serde_json::to_string(&snapshot).expect("json");
                let again = crate::snapshot_from_json(&json, Path::new("again.json")).expect("loads back");
                prop_assert_eq!(again, snapshot);
            }
        }

        #[test]
        fn no_text_makes_the_fixture_reader_panic(text in "(hostname|gpu|count|mig|\\[|\\]|=|\"|[0-9x.]|\n| ){0,200}") {
            let _ = fixture(&text);
        }
    }
}
