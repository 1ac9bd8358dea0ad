//! Device classes: devices grouped by the memory they report (within a tolerance) and their SM
//! count. Never by profile name: `1g.10gb` means different memory on different products, and
//! two instances of one profile can report different totals.

use gpu_topology::Snapshot;
use serde::Serialize;

use crate::devices::DeviceRef;

/// A group of devices alike in memory and SMs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceClass {
    /// `A`, `B`, ... in order of first appearance.
    pub name: String,
    /// The Dask resource this class's workers get under the `grouped` policy, e.g. `9.75GiB-16SM`.
    pub resource: String,
    /// Smallest memory reported by a member (`None` where unknown).
    pub memory_bytes: Option<u64>,
    /// Largest memory reported by a member.
    pub memory_bytes_max: Option<u64>,
    /// SMs of each member (`None` where unknown).
    pub sm_count: Option<u32>,
    /// Profile names (MIG) or product names (whole GPUs) among the members.
    pub profiles: Vec<String>,
    /// How many members are MIG instances, and how many whole GPUs.
    pub mig_devices: usize,
    /// How many members are whole GPUs.
    pub whole_gpus: usize,
    /// Members' names, in selection order.
    pub devices: Vec<String>,
    /// Members' hosts, each once.
    pub hosts: Vec<String>,
}

/// Groups `devices` into classes. Returns the classes and, for each device, its class index.
pub(crate) fn classify(
    snapshot: &Snapshot,
    devices: &[DeviceRef],
    tolerance_pct: f64,
) -> (Vec<DeviceClass>, Vec<usize>) {
    let tolerance = tolerance_pct / 100.0;
    // Sort by (SMs, memory) so that alike devices are adjacent; each class is anchored at its
    // smallest member, so a chain of small steps cannot stretch one class beyond the tolerance.
    let mut order: Vec<usize> = (0..devices.len()).collect();
    let key = |i: usize| (devices[i].sm_count(snapshot), devices[i].memory_bytes(snapshot));
    order.sort_by_cached_key(|&i| key(i));
    let mut class_of = vec![usize::MAX; devices.len()];
    let mut anchors: Vec<(Option<u32>, Option<u64>)> = Vec::new();
    for &i in &order {
        let (sm, mem) = key(i);
        let fits = anchors.last().is_some_and(|&(asm, amem)| {
            asm == sm
                && match (amem, mem) {
                    (Some(a), Some(m)) => (m - a) as f64 <= tolerance * m as f64,
                    (None, None) => true,
                    _ => false,
                }
        });
        if !fits {
            anchors.push((sm, mem));
        }
        class_of[i] = anchors.len() - 1;
    }
    // Renumber classes by first appearance in selection order, so names read naturally.
    let mut renumber = vec![usize::MAX; anchors.len()];
    let mut next = 0;
    for &c in &class_of {
        if renumber[c] == usize::MAX {
            renumber[c] = next;
            next += 1;
        }
    }
    let class_of: Vec<usize> = class_of.iter().map(|&c| renumber[c]).collect();
    let mut classes: Vec<DeviceClass> = (0..next)
        .map(|c| DeviceClass {
            name: class_name(c),
            resource: String::new(),
            memory_bytes: None,
            memory_bytes_max: None,
            sm_count: None,
            profiles: Vec::new(),
            mig_devices: 0,
            whole_gpus: 0,
            devices: Vec::new(),
            hosts: Vec::new(),
        })
        .collect();
    let mut hosts_seen: Vec<std::collections::HashSet<usize>> = vec![Default::default(); classes.len()];
    let mut profiles_seen: Vec<std::collections::HashSet<String>> = vec![Default::default(); classes.len()];
    for (d, &c) in devices.iter().zip(&class_of) {
        let class = &mut classes[c];
        let mem = d.memory_bytes(snapshot);
        if class.devices.is_empty() {
            class.memory_bytes = mem;
            class.memory_bytes_max = mem;
            class.sm_count = d.sm_count(snapshot);
        } else {
            class.memory_bytes = class.memory_bytes.min(mem);
            class.memory_bytes_max = class.memory_bytes_max.max(mem);
        }
        let profile = match d.instance(snapshot) {
            Some(m) => {
                class.mig_devices += 1;
                m.profile.clone()
            }
            None => {
                class.whole_gpus += 1;
                d.gpu(snapshot).name.clone()
            }
        };
        if profiles_seen[c].insert(profile.clone()) {
            class.profiles.push(profile);
        }
        if hosts_seen[c].insert(d.host) {
            class.hosts.push(snapshot.hosts[d.host].hostname.clone());
        }
        class.devices.push(d.ids(snapshot).0.to_string());
    }
    // A set, not a scan of the classes before: a snapshot may hold thousands of classes.
    let mut taken = std::collections::HashSet::new();
    for class in &mut classes {
        let mut resource = resource_label(class);
        if taken.contains(&resource) {
            resource = format!("{resource}-{}", class.name);
        }
        taken.insert(resource.clone());
        class.resource = resource;
    }
    (classes, class_of)
}

fn class_name(i: usize) -> String {
    let letters = (b'A'..=b'Z').map(char::from).collect::<Vec<_>>();
    if i < letters.len() { letters[i].to_string() } else { format!("C{i}") }
}

/// `9.75GiB-16SM`: readable in a Dask resource spec and unique per memory/SM pair.
fn resource_label(class: &DeviceClass) -> String {
    let memory = class.memory_bytes.map_or_else(
        || "unknown-memory".to_owned(),
        |b| {
            let gib = format!("{:.2}", b as f64 / f64::from(1u32 << 30));
            format!("{}GiB", gib.trim_end_matches('0').trim_end_matches('.'))
        },
    );
    match class.sm_count {
        Some(sm) => format!("{memory}-{sm}SM"),
        None => memory,
    }
}

pub(crate) fn largest_class(classes: &[DeviceClass]) -> usize {
    (0..classes.len())
        .max_by(|&a, &b| {
            let key = |c: &DeviceClass| (c.devices.len(), c.memory_bytes, c.sm_count);
            key(&classes[a]).cmp(&key(&classes[b])).then(b.cmp(&a))
        })
        .unwrap_or(0)
}
