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

criterion_group!(benches, topology);
criterion_main!(benches);
