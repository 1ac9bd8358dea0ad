//! Criterion benchmarks, one group per area. Run with `cargo bench -p benches`.

use criterion::{Criterion, criterion_group, criterion_main};
use gpu_topology::sim::SimSource;
use gpu_topology::{Snapshot, TopologySource, TopologySpec};

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

/// The largest real host: 64 H100 GPUs behind one NVSwitch fabric, each split into 7 MIG
/// instances (448 workers, 100,128 pairs of them).
const LARGEST_HOST: &str = "hostname = \"largest\"\n[[gpu]]\nproduct = \"H100-80GB\"\ncount = 64\n\
                            mig = [\"7x1g.10gb\"]\n[[nvlink]]\nlinks = 18\nswitch = true\n";

/// The largest real host end to end, and a cluster of thousands of hosts: the quality bar is
/// "lists and plans in well under a second".
fn scale(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let source = SimSource::from_fixture(LARGEST_HOST, std::path::Path::new("largest.toml")).expect("fixture");
    c.bench_function("scale/discover the largest real host (64 GPUs x 7 MIG)", |b| {
        b.iter(|| rt.block_on(source.snapshot()).expect("snapshot"));
    });
    let largest = rt.block_on(source.snapshot()).expect("snapshot");
    let request = cluster_core::PlanRequest::default();
    c.bench_function("scale/plan the largest real host", |b| {
        b.iter(|| cluster_core::plan(&largest, &request).expect("plan"));
    });
    let dir = std::env::temp_dir().join(format!("gpucluster-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let fixture = dir.join("largest.toml");
    std::fs::write(&fixture, LARGEST_HOST).expect("fixture");
    let topology = format!("file:{}", fixture.display());
    for command in [&["list"][..], &["plan"], &["plan", "--json"]] {
        let args: Vec<&str> =
            ["gpucluster", "--topology", &topology].into_iter().chain(command.iter().copied()).collect();
        c.bench_function(&format!("scale/gpucluster {} on the largest real host", command.join(" ")), |b| {
            b.iter(|| assert_eq!(gpucluster::run(args.clone(), &mut std::io::sink(), &mut std::io::sink()), 0));
        });
    }

    let mut group = c.benchmark_group("scale");
    group.sample_size(10);
    let hosts = cluster(2_000);
    let parts: Vec<Snapshot> = hosts.hosts.chunks(100).map(|h| Snapshot { hosts: h.to_vec() }).collect();
    group.bench_function("join and validate 20 inventories of 2000 hosts", |b| {
        b.iter(|| cluster_core::merge_inventories(parts.clone()).expect("join").validate().expect("valid"));
    });
    let json = serde_json::to_string(&hosts).expect("json");
    group.bench_function("load a snapshot of 2000 hosts", |b| {
        b.iter(|| gpu_topology::snapshot_from_json(&json, std::path::Path::new("hosts.json")).expect("load"));
    });
    let big = cluster(10_000);
    group.bench_function("doctor 10000 hosts x 8 GPUs x 7 MIG", |b| {
        b.iter(|| cluster_core::doctor(&big, &request, &cluster_core::Environment::default()));
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, topology, planning, scale);
criterion_main!(benches);
