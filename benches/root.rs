//! Criterion benchmarks, one group per area. Run with `cargo bench -p benches`.

use criterion::{Criterion, criterion_group, criterion_main};
use gpu_topology::{Snapshot, TopologySpec};

fn snapshot(name: &str) -> Snapshot {
    let spec: TopologySpec = format!("sim:{name}").parse().expect("preset name");
    let source = spec.open().expect("preset");
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(source.snapshot())
        .expect("snapshot")
}

/// Discovery through the simulated NVML: the cost `list` adds before any policy runs.
fn topology(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let source = TopologySpec::Sim("dgx-a100".into()).open().expect("preset");
    c.bench_function("topology/discover dgx-a100 (8 GPUs x 7 MIG)", |b| {
        b.iter(|| rt.block_on(source.snapshot()).expect("snapshot"));
    });
    let json = serde_json::to_string(&snapshot("dgx-a100")).expect("json");
    c.bench_function("topology/load dgx-a100 snapshot JSON", |b| {
        b.iter(|| serde_json::from_str::<Snapshot>(&json).expect("parse").validate().expect("valid"));
    });
}

/// A cluster of `hosts` DGX-A100-like hosts (8 GPUs x 7 MIG instances each), every host with
/// its own name and device names.
fn cluster(hosts: usize) -> Snapshot {
    let template = snapshot("dgx-a100").hosts.remove(0);
    let hosts = (0..hosts)
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

fn renumber(id: &gpu_topology::DeviceId, host: usize) -> gpu_topology::DeviceId {
    let text = id.to_string();
    let (kind, uuid) = text.split_at(4);
    format!("{kind}{:08x}{}", host, &uuid[8..]).parse().expect("renumbered name")
}

/// Planning: the quality bar is under 1 ms for one host and under 1 s for 10,000 hosts x 8 GPUs
/// x 7 MIG instances (560,000 workers).
fn planning(c: &mut Criterion) {
    let request = cluster_core::PlanRequest::default();
    let one = cluster(1);
    c.bench_function("plan/1 host x 8 GPUs x 7 MIG", |b| {
        b.iter(|| cluster_core::plan(&one, &request).expect("plan"));
    });
    let big = cluster(10_000);
    let mut group = c.benchmark_group("plan");
    group.sample_size(10);
    group.bench_function("10000 hosts x 8 GPUs x 7 MIG", |b| {
        b.iter(|| cluster_core::plan(&big, &request).expect("plan"));
    });
    group.finish();
}

criterion_group!(benches, topology, planning);
criterion_main!(benches);
