//! Discovery against a mocked NVML, with the answers NVML really gives (`shared/reference/mig-facts.md` §4-5).

use std::sync::Arc;

use super::*;
use crate::DeviceId;

const GPU0: &str = "GPU-11111111-2222-3333-4444-555555555555";
const GPU1: &str = "GPU-66666666-7777-8888-9999-000000000000";

/// What the fake NVML knows about one GPU.
#[derive(Clone)]
struct FakeGpu {
    name: &'static str,
    uuid: &'static str,
    memory: NvmlResult<u64>,
    mig: NvmlResult<MigMode>,
    max_slots: u32,
    /// slot -> (uuid, memory MiB, sm, gi, ci, profile)
    slots: Vec<(u32, String, u64, u32, u32, u32, &'static str)>,
    /// A failure for one slot's handle.
    slot_failure: Option<(u32, NvmlFailure)>,
}

fn whole(uuid: &'static str) -> FakeGpu {
    FakeGpu {
        name: "NVIDIA H100 80GB HBM3",
        uuid,
        memory: Ok(81559 << 20),
        mig: Ok(MigMode { current: false, pending: false }),
        max_slots: 0,
        slots: vec![],
        slot_failure: None,
    }
}

fn mig_gpu(uuid: &'static str, slots: &[(u32, u32)]) -> FakeGpu {
    FakeGpu {
        mig: Ok(MigMode { current: true, pending: true }),
        max_slots: 7,
        slots: slots
            .iter()
            .map(|&(slot, gi)| (slot, format!("MIG-{slot:08x}-aaaa-bbbb-cccc-{gi:012x}"), 9984, 16, gi, 0, "1g.10gb"))
            .collect(),
        ..whole(uuid)
    }
}

fn mock(gpus: Vec<FakeGpu>) -> MockNvmlApi {
    let gpus = Arc::new(gpus);
    let mut m = MockNvmlApi::new();
    m.expect_hostname().return_const("node1".to_owned());
    m.expect_driver_version().returning(|| Ok("580.159.04".into()));
    let n = gpus.len() as u32;
    m.expect_device_count().returning(move || Ok(n));
    let slot_of = |g: &FakeGpu, h: Handle| {
        let s = h.mig_slot.expect("mig handle");
        g.slots.iter().find(|e| e.0 == s).cloned().expect("existing slot")
    };
    let g = gpus.clone();
    m.expect_name().returning(move |h| {
        let gpu = &g[h.gpu as usize];
        Ok(match h.mig_slot {
            None => gpu.name.to_owned(),
            Some(_) => format!("{} MIG {}", gpu.name, slot_of(gpu, h).6),
        })
    });
    let g = gpus.clone();
    m.expect_uuid().returning(move |h| {
        let gpu = &g[h.gpu as usize];
        Ok(match h.mig_slot {
            None => gpu.uuid.to_owned(),
            Some(_) => slot_of(gpu, h).1,
        })
    });
    let g = gpus.clone();
    m.expect_memory_total().returning(move |h| {
        let gpu = &g[h.gpu as usize];
        match h.mig_slot {
            None => gpu.memory,
            Some(_) => Ok(slot_of(gpu, h).2 << 20),
        }
    });
    m.expect_pci_bus_id().returning(|i| Ok(format!("00000000:{:02X}:00.0\0", 0x18 + i)));
    m.expect_numa_node().returning(|_| Err(NvmlFailure::NotSupported));
    m.expect_cpu_affinity().returning(|_| Ok(vec![0, 1, 2, 3, 8, 9, 10, 12]));
    let g = gpus.clone();
    m.expect_mig_mode().returning(move |i| g[i as usize].mig);
    let g = gpus.clone();
    m.expect_max_mig_device_count().returning(move |i| Ok(g[i as usize].max_slots));
    let g = gpus.clone();
    m.expect_mig_device_exists().returning(move |i, slot| {
        let gpu = &g[i as usize];
        if let Some((s, f)) = gpu.slot_failure
            && s == slot
        {
            return Err(f);
        }
        if gpu.slots.iter().any(|e| e.0 == slot) { Ok(()) } else { Err(NvmlFailure::NotFound) }
    });
    let g = gpus.clone();
    m.expect_gpu_instance_id().returning(move |h| Ok(slot_of(&g[h.gpu as usize], h).4));
    let g = gpus.clone();
    m.expect_compute_instance_id().returning(move |h| Ok(slot_of(&g[h.gpu as usize], h).5));
    let g = gpus;
    m.expect_mig_attributes().returning(move |h| {
        let s = slot_of(&g[h.gpu as usize], h);
        Ok(MigAttributes { sm_count: s.3, memory_mib: s.2, gpu_instance_slices: 1, compute_instance_slices: 1 })
    });
    m.expect_p2p_read().returning(|_, _| Ok(P2pStatus::Ok));
    m.expect_p2p_nvlink().returning(|_, _| Ok(P2pStatus::NotSupported));
    m.expect_direct_nvlinks().returning(|_, _| Ok(0));
    m.expect_common_ancestor().returning(|_, _| Ok(PcieLevel::Node));
    m
}

#[test]
fn whole_gpus_are_compute_devices_with_their_facts() {
    let host = discover(&mock(vec![whole(GPU0), whole(GPU1)])).expect("discover");
    assert_eq!(host.hostname, "node1");
    assert_eq!(host.driver_version.as_deref(), Some("580.159.04"));
    assert_eq!(host.gpus.len(), 2);
    let g = &host.gpus[1];
    assert_eq!(g.uuid.to_string(), GPU1);
    assert_eq!(g.memory_bytes, Some(81559 << 20));
    assert_eq!(g.sm_count, Some(132), "SM count from the product table");
    assert_eq!(g.pci_bus_id.as_deref(), Some("00000000:19:00.0"));
    assert_eq!(g.numa_node, None, "NotSupported means unknown, not an error");
    assert_eq!(g.cpu_affinity.as_deref(), Some("0-3,8-10,12"));
    assert!(g.mig_supported && !g.mig_enabled && g.is_compute_device());
    assert_eq!(host.peers.len(), 2, "one link per ordered pair");
    assert_eq!(host.peer(0, 1).map(|p| (p.p2p, p.nvlink)), Some((P2pStatus::Ok, false)));
}

#[test]
fn empty_slots_and_gaps_are_skipped() {
    // Slots 0, 2 and 5 hold instances; 1, 3, 4, 6 are empty (instances were destroyed).
    let host = discover(&mock(vec![mig_gpu(GPU0, &[(0, 7), (2, 9), (5, 12)])])).expect("discover");
    let g = &host.gpus[0];
    assert!(g.mig_enabled && !g.is_compute_device());
    let instances: Vec<_> = g.compute_devices().map(|m| m.map(|m| m.slot)).collect();
    assert_eq!(instances, vec![Some(Some(0)), Some(Some(2)), Some(Some(5))], "its instances, not the GPU itself");
    let slots: Vec<_> = g.mig_instances.iter().map(|m| (m.slot, m.gpu_instance_id)).collect();
    assert_eq!(slots, vec![(Some(0), Some(7)), (Some(2), Some(9)), (Some(5), Some(12))]);
    let m = &g.mig_instances[1];
    assert_eq!(m.profile, "1g.10gb");
    assert_eq!(m.memory_bytes, 9984 << 20, "memory from the instance's own handle");
    assert_eq!(m.sm_count, Some(16));
    assert_eq!(m.compute_instance_id, Some(0));
}

#[test]
fn mig_enabled_with_no_instances_is_reported_not_rejected() {
    let host = discover(&mock(vec![mig_gpu(GPU0, &[]), whole(GPU1)])).expect("discover");
    assert!(host.gpus[0].mig_enabled);
    assert!(host.gpus[0].mig_instances.is_empty());
    assert!(host.gpus[1].is_compute_device());
    assert_eq!(host.gpus[0].compute_devices().count(), 0, "a MIG-enabled GPU without instances offers none");
    let devices: Vec<_> = host.compute_devices().map(|(g, m)| (g.uuid.to_string(), m.is_some())).collect();
    assert_eq!(devices, vec![(GPU1.to_owned(), false)], "the whole GPU, once");
}

#[test]
fn legacy_mig_names_are_kept_as_legacy() {
    let mut gpu = mig_gpu(GPU0, &[(0, 1)]);
    gpu.slots[0].1 = format!("MIG-{GPU0}/1/0");
    let host = discover(&mock(vec![gpu])).expect("discover");
    assert!(matches!(host.gpus[0].mig_instances[0].uuid, DeviceId::LegacyMig { gpu_instance: 1, .. }));
}

#[test]
fn parent_memory_without_permission_is_unknown_not_an_error() {
    let mut gpu = mig_gpu(GPU0, &[(0, 7)]);
    gpu.memory = Err(NvmlFailure::NoPermission);
    let host = discover(&mock(vec![gpu])).expect("discover");
    assert_eq!(host.gpus[0].memory_bytes, None);
    assert_eq!(host.gpus[0].mig_instances[0].memory_bytes, 9984 << 20);
}

#[test]
fn pending_mode_is_recorded_only_when_it_differs() {
    let mut gpu = whole(GPU0);
    gpu.mig = Ok(MigMode { current: false, pending: true });
    let host = discover(&mock(vec![gpu, whole(GPU1)])).expect("discover");
    assert_eq!(host.gpus[0].mig_pending, Some(true));
    assert_eq!(host.gpus[1].mig_pending, None);
}

#[test]
fn gpus_without_mig_support_report_it() {
    let mut gpu = whole(GPU0);
    gpu.mig = Err(NvmlFailure::NotSupported);
    let host = discover(&mock(vec![gpu])).expect("discover");
    assert!(!host.gpus[0].mig_supported && !host.gpus[0].mig_enabled);
}

#[test]
fn a_slot_without_permission_is_an_error_with_a_hint() {
    let mut gpu = mig_gpu(GPU0, &[(0, 7), (1, 8)]);
    gpu.slot_failure = Some((1, NvmlFailure::NoPermission));
    let err = discover(&mock(vec![gpu])).expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("nvmlDeviceGetMigDeviceHandleByIndex"), "{text}");
    assert!(text.contains("GPU 0 MIG slot 1"), "{text}");
    assert!(text.contains("NVIDIA_MIG_MONITOR_DEVICES=all"), "{text}");
}

#[test]
fn a_lost_gpu_is_an_error_naming_it() {
    let mut m2 = MockNvmlApi::new();
    m2.expect_hostname().return_const("node1".to_owned());
    m2.expect_driver_version().returning(|| Ok("580.159.04".into()));
    m2.expect_device_count().returning(|| Ok(1));
    m2.expect_name().returning(|_| Err(NvmlFailure::GpuLost));
    let err = discover(&m2).expect_err("must fail");
    assert!(err.to_string().contains("GPU 0: GPU is lost"), "{err}");
}

#[test]
fn a_malformed_uuid_from_the_driver_is_an_error_not_a_panic() {
    let mut gpu = whole(GPU0);
    gpu.uuid = "GPU-garbage";
    let err = discover(&mock(vec![gpu])).expect_err("must fail");
    assert!(err.to_string().contains("not a device name"), "{err}");
}

#[test]
fn profile_falls_back_to_attributes_like_slurm() {
    let a = MigAttributes { sm_count: 20, memory_mib: 40448, gpu_instance_slices: 3, compute_instance_slices: 1 };
    assert_eq!(profile_from_attributes(a), "1c.3g.40gb");
    assert_eq!(profile_from_name("NVIDIA H100 80GB HBM3 MIG 1g.10gb+me").as_deref(), Some("1g.10gb+me"));
    assert_eq!(profile_from_name("NVIDIA H100 80GB HBM3"), None);
}
