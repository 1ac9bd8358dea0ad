//! Device specs in the grammar of `CUDA_VISIBLE_DEVICES`, and their resolution against a snapshot.
//!
//! A spec is a comma-separated list of entries: an NVML index (`0`), a full name (`GPU-<uuid>`,
//! `MIG-<uuid>`, legacy `MIG-GPU-<uuid>/<gi>/<ci>`), or a unique UUID prefix as CUDA accepts it
//! (`GPU-8932f937`, `MIG-c788`). Where CUDA silently truncates the list at a bad entry, every
//! problem here is an error that says what to change.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use gpu_topology::text::printable;
use gpu_topology::{DeviceId, Snapshot};

use crate::devices::DeviceRef;
use crate::wording::{Call, Message};

/// A parsed device spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The entries, in the order given.
    pub entries: Vec<SpecEntry>,
}

/// One entry of a device spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecEntry {
    /// An NVML index of a physical GPU.
    Index(u32),
    /// A full device name.
    Name(DeviceId),
    /// A UUID prefix: `GPU-<prefix>` (`mig: false`) or `MIG-<prefix>` (`mig: true`), lowercase.
    Prefix {
        /// Whether it names a MIG device.
        mig: bool,
        /// The hexadecimal text after `GPU-` / `MIG-`, lowercase.
        text: String,
    },
}

impl fmt::Display for SpecEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecEntry::Index(i) => write!(f, "{i}"),
            SpecEntry::Name(id) => write!(f, "{id}"),
            SpecEntry::Prefix { mig, text } => write!(f, "{}-{text}", if *mig { "MIG" } else { "GPU" }),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// What is wrong with a device spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// `0,,1`, a leading or trailing comma, or an empty spec.
    #[error(
        "entry {position} of the device list is empty; separate devices with single commas, like `0,1` or `MIG-<uuid>,MIG-<uuid>`"
    )]
    EmptyEntry {
        /// 1-based position.
        position: usize,
    },
    /// Not an index, name or prefix.
    #[error("`{}` is not a device: {reason}", printable(.entry))]
    Malformed {
        /// The entry.
        entry: String,
        /// What was expected.
        reason: String,
    },
    /// No device has this name.
    #[error("{}", unknown_message(.entry, .hosts))]
    Unknown {
        /// The entry.
        entry: String,
        /// The hosts searched.
        hosts: Vec<String>,
    },
    /// An index past the last GPU.
    #[error("GPU index {index} is out of range on host `{host}`, which has {count} GPU(s) (indices 0 to {})", .count.saturating_sub(1))]
    IndexOutOfRange {
        /// The index.
        index: u32,
        /// The host.
        host: String,
        /// How many GPUs it has.
        count: usize,
    },
    /// A prefix that matches several devices.
    #[error(
        "`{entry}` is ambiguous: it begins {}{}; give more of the UUID",
        .candidates.join(", "),
        if *.matches > .candidates.len() { format!(" and {} more", .matches - .candidates.len()) } else { String::new() }
    )]
    AmbiguousPrefix {
        /// The entry.
        entry: String,
        /// The first few devices it matches.
        candidates: Vec<String>,
        /// How many devices it matches in all.
        matches: usize,
    },
    /// The same device twice (perhaps spelled two ways).
    #[error("`{entry}` names {device}, which is already in the list; name each device once")]
    Duplicate {
        /// The second entry.
        entry: String,
        /// The device both name.
        device: String,
    },
    /// The parent of a MIG-enabled GPU.
    #[error(
        "`{entry}` names GPU {index} on host `{host}`, which has MIG enabled and so is not a compute device; \
         name its instances instead: {}", .instances.join(",")
    )]
    MigParent {
        /// The entry.
        entry: String,
        /// The host.
        host: String,
        /// The GPU's index.
        index: u32,
        /// Its MIG instances.
        instances: Vec<String>,
    },
    /// A MIG-enabled GPU without instances.
    #[error(
        "`{entry}` names GPU {index} on host `{host}`, which has MIG enabled but no MIG instances, so it has no \
         compute device; create instances (`nvidia-smi mig -cgi <profiles> -C`) or disable MIG (`nvidia-smi -i {index} -mig 0`)"
    )]
    MigEnabledNoInstances {
        /// The entry.
        entry: String,
        /// The host.
        host: String,
        /// The GPU's index.
        index: u32,
    },
}

impl SpecError {
    /// What is wrong, naming the command that shows more as a [`Call`]: `Display` says it in the
    /// command line's words, a front end with other words renders this.
    pub fn message(&self) -> Message {
        match self {
            SpecError::Unknown { entry, hosts } => unknown_message(entry, hosts),
            other => other.to_string().into(),
        }
    }
}

fn unknown_message(entry: &str, hosts: &[String]) -> Message {
    Message::from(format!("no device is named `{entry}`{}; ", on_hosts(hosts)))
        .call(Call::List)
        .text(" shows the names")
}

fn on_hosts(hosts: &[String]) -> String {
    const SHOWN: usize = 5;
    match hosts {
        [] => String::new(),
        [one] => format!(" on host `{}`", printable(one)),
        few if few.len() <= SHOWN => format!(" on any of the hosts {}", few.join(", ")),
        many => format!(" on any of the {} hosts", many.len()),
    }
}

const UUID_DASHES: [usize; 4] = [8, 13, 18, 23];

fn parse_entry(text: &str) -> Result<SpecEntry, SpecError> {
    let malformed = |reason: &str| SpecError::Malformed { entry: text.to_owned(), reason: reason.to_owned() };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map(SpecEntry::Index).map_err(|_| malformed("the index is too large"));
    }
    if text.starts_with("MIG-GPU-") {
        return text.parse().map(SpecEntry::Name).map_err(|e: gpu_topology::IdError| malformed(&e.reason));
    }
    let (mig, rest) = if let Some(rest) = text.strip_prefix("MIG-") {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix("GPU-") {
        (false, rest)
    } else {
        return Err(malformed(
            "expected an index (`0`), GPU-<uuid>, MIG-<uuid>, MIG-GPU-<uuid>/<gi>/<ci>, or a unique prefix such as GPU-8932f937",
        ));
    };
    if let Ok(id) = text.parse::<DeviceId>() {
        return Ok(SpecEntry::Name(id));
    }
    let shaped = !rest.is_empty()
        && rest.len() < 36
        && rest
            .chars()
            .enumerate()
            .all(|(i, c)| if UUID_DASHES.contains(&i) { c == '-' } else { c.is_ascii_hexdigit() });
    if !shaped {
        return Err(malformed(
            "after GPU- or MIG- comes a UUID (8-4-4-4-12 hexadecimal digits) or the start of one, like GPU-8932f937",
        ));
    }
    Ok(SpecEntry::Prefix { mig, text: rest.to_ascii_lowercase() })
}

impl FromStr for DeviceSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let entries = s
            .split(',')
            .enumerate()
            .map(|(i, raw)| {
                let entry = raw.trim();
                if entry.is_empty() { Err(SpecError::EmptyEntry { position: i + 1 }) } else { parse_entry(entry) }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DeviceSpec { entries })
    }
}

/// The devices of a snapshot indexed by name, built once per resolution (and each part only
/// when an entry needs it): a spec may name thousands of devices of a snapshot of hundreds of
/// thousands, and looking each up by scanning would be quadratic.
struct Index<'s> {
    snapshot: &'s Snapshot,
    by_name: Option<HashMap<&'s DeviceId, DeviceRef>>,
    by_legacy_ids: Option<HashMap<(&'s DeviceId, u32, u32), DeviceRef>>,
    /// (UUID text after `GPU-`/`MIG-`, device), sorted, for prefixes of each kind.
    prefixes: [Option<Vec<(String, DeviceRef)>>; 2],
}

impl<'s> Index<'s> {
    fn new(snapshot: &'s Snapshot) -> Self {
        Self { snapshot, by_name: None, by_legacy_ids: None, prefixes: [None, None] }
    }

    /// Devices named `id`: the device of that name, and (for a legacy name) the device NVML
    /// now names `MIG-<uuid>` with the same parent and instance ids. The first in snapshot
    /// order wins: names are unique in a validated snapshot.
    fn named(&mut self, id: &DeviceId) -> Option<DeviceRef> {
        let snapshot = self.snapshot;
        let by_name = self.by_name.get_or_insert_with(|| {
            let mut map = HashMap::new();
            for r in crate::devices::all_devices(snapshot) {
                map.entry(r.ids(snapshot).0).or_insert(r);
            }
            map
        });
        let direct = by_name.get(id).copied();
        let DeviceId::LegacyMig { gpu, gpu_instance, compute_instance } = id else { return direct };
        let by_legacy = self.by_legacy_ids.get_or_insert_with(|| {
            let mut map = HashMap::new();
            for r in crate::devices::all_devices(snapshot) {
                let (Some(m), Some(parent)) = (r.instance(snapshot), r.ids(snapshot).1) else { continue };
                if let (Some(gi), Some(ci)) = (m.gpu_instance_id, m.compute_instance_id) {
                    map.entry((parent, gi, ci)).or_insert(r);
                }
            }
            map
        });
        let parent = DeviceId::Gpu(gpu.clone());
        let legacy = by_legacy.get(&(&parent, *gpu_instance, *compute_instance)).copied();
        direct.into_iter().chain(legacy).min()
    }

    /// Every device whose UUID starts with `text` (`GPU-` devices, or `MIG-<uuid>` ones).
    fn with_prefix(&mut self, mig: bool, text: &str) -> Vec<DeviceRef> {
        let snapshot = self.snapshot;
        let sorted = self.prefixes[usize::from(mig)].get_or_insert_with(|| {
            let mut list: Vec<(String, DeviceRef)> = crate::devices::all_devices(snapshot)
                .into_iter()
                .filter_map(|r| match (r.ids(snapshot).0, mig) {
                    (DeviceId::Gpu(u), false) | (DeviceId::Mig(u), true) => Some((u.to_string(), r)),
                    _ => None,
                })
                .collect();
            list.sort();
            list
        });
        let start = sorted.partition_point(|(u, _)| u.as_str() < text);
        let mut found: Vec<DeviceRef> =
            sorted[start..].iter().take_while(|(u, _)| u.starts_with(text)).map(|(_, r)| *r).collect();
        found.sort_unstable();
        found
    }
}

/// Candidates an ambiguous prefix lists before it says how many more there are.
const CANDIDATES_SHOWN: usize = 5;

/// Resolves `spec` against every host of `snapshot`. Indices name a GPU on every host (as
/// `CUDA_VISIBLE_DEVICES` would on each); names and prefixes name a device wherever it is.
pub(crate) fn resolve(spec: &DeviceSpec, snapshot: &Snapshot) -> Result<Vec<DeviceRef>, SpecError> {
    let mut index = Index::new(snapshot);
    let mut out: Vec<DeviceRef> = Vec::new();
    let mut chosen: HashSet<DeviceRef> = HashSet::new();
    for entry in &spec.entries {
        let entry_text = entry.to_string();
        let unknown = || SpecError::Unknown {
            entry: entry_text.clone(),
            hosts: snapshot.hosts.iter().map(|h| h.hostname.clone()).collect(),
        };
        let found: Vec<DeviceRef> = match entry {
            SpecEntry::Index(wanted) => {
                let mut refs = Vec::new();
                for (h, host) in snapshot.hosts.iter().enumerate() {
                    // GPUs are usually listed in index order; look there first.
                    let g = match host.gpus.get(*wanted as usize) {
                        Some(gpu) if gpu.index == *wanted => Some(*wanted as usize),
                        _ => host.gpus.iter().position(|g| g.index == *wanted),
                    };
                    let g = g.ok_or_else(|| SpecError::IndexOutOfRange {
                        index: *wanted,
                        host: host.hostname.clone(),
                        count: host.gpus.len(),
                    })?;
                    refs.push(DeviceRef { host: h, gpu: g, mig: None });
                }
                refs
            }
            SpecEntry::Name(id) => vec![index.named(id).ok_or_else(unknown)?],
            SpecEntry::Prefix { mig, text } => {
                let matches = index.with_prefix(*mig, text);
                if matches.len() > 1 {
                    return Err(SpecError::AmbiguousPrefix {
                        entry: entry_text,
                        candidates: matches
                            .iter()
                            .take(CANDIDATES_SHOWN)
                            .map(|r| r.ids(snapshot).0.to_string())
                            .collect(),
                        matches: matches.len(),
                    });
                }
                if matches.is_empty() {
                    return Err(unknown());
                }
                matches
            }
        };
        for r in &found {
            let host = &snapshot.hosts[r.host];
            let gpu = &host.gpus[r.gpu];
            if r.mig.is_none() && gpu.mig_enabled {
                return Err(if gpu.mig_instances.is_empty() {
                    SpecError::MigEnabledNoInstances {
                        entry: entry_text.clone(),
                        host: host.hostname.clone(),
                        index: gpu.index,
                    }
                } else {
                    SpecError::MigParent {
                        entry: entry_text.clone(),
                        host: host.hostname.clone(),
                        index: gpu.index,
                        instances: gpu.mig_instances.iter().map(|m| m.uuid.to_string()).collect(),
                    }
                });
            }
            if !chosen.insert(*r) {
                return Err(SpecError::Duplicate { entry: entry_text.clone(), device: r.describe(snapshot) });
            }
            out.push(*r);
        }
    }
    // Keep hosts together, each in the order its entries were given.
    out.sort_by_key(|r| r.host);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_kind_of_entry() {
        let spec: DeviceSpec =
            " 0, GPU-8932f937 ,MIG-C788,MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2/1/0".parse().expect("spec");
        assert_eq!(spec.entries[0], SpecEntry::Index(0));
        assert_eq!(spec.entries[1], SpecEntry::Prefix { mig: false, text: "8932f937".into() });
        assert_eq!(spec.entries[2], SpecEntry::Prefix { mig: true, text: "c788".into() });
        assert!(matches!(spec.entries[3], SpecEntry::Name(DeviceId::LegacyMig { .. })));
        assert_eq!(spec.to_string(), "0,GPU-8932f937,MIG-c788,MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2/1/0");
    }

    #[test]
    fn errors_for_each_malformed_shape() {
        for (text, expected) in [
            ("", "entry 1 of the device list is empty"),
            ("0,,1", "entry 2"),
            ("0,", "entry 2"),
            ("Foo", "expected an index"),
            ("-1", "expected an index"),
            ("GPU-", "after GPU- or MIG- comes a UUID"),
            ("GPU-xyz", "after GPU- or MIG- comes a UUID"),
            ("GPU-8932f9370", "after GPU- or MIG- comes a UUID"),
            ("MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2/1", "legacy MIG name"),
            ("99999999999", "too large"),
        ] {
            let err = text.parse::<DeviceSpec>().expect_err(text);
            assert!(err.to_string().contains(expected), "{text:?}: {err}");
        }
    }

    fn entry() -> impl Strategy<Value = SpecEntry> {
        prop_oneof![
            any::<u32>().prop_map(SpecEntry::Index),
            any::<[u8; 16]>().prop_map(|b| SpecEntry::Name(DeviceId::Gpu(gpu_topology::Uuid::from_bytes(b)))),
            any::<[u8; 16]>().prop_map(|b| SpecEntry::Name(DeviceId::Mig(gpu_topology::Uuid::from_bytes(b)))),
            (any::<[u8; 16]>(), any::<u32>(), any::<u32>()).prop_map(|(b, gi, ci)| SpecEntry::Name(
                DeviceId::LegacyMig { gpu: gpu_topology::Uuid::from_bytes(b), gpu_instance: gi, compute_instance: ci }
            )),
            (any::<bool>(), any::<[u8; 16]>(), 1..36usize).prop_map(|(mig, b, len)| {
                let full = gpu_topology::Uuid::from_bytes(b).to_string();
                SpecEntry::Prefix { mig, text: full[..len].trim_end_matches('-').to_owned() }
            }),
        ]
        .prop_filter("a prefix cannot be empty", |e| !matches!(e, SpecEntry::Prefix { text, .. } if text.is_empty()))
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in "[0-9a-fA-FGPUMI ,/x-]{0,60}") {
            let _ = text.parse::<DeviceSpec>();
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in ".{0,80}") {
            if let Ok(spec) = text.parse::<DeviceSpec>() {
                prop_assert_eq!(spec.to_string().parse::<DeviceSpec>().expect("reparse"), spec);
            }
        }

        #[test]
        fn format_then_parse_is_identity(entries in proptest::collection::vec(entry(), 1..6)) {
            let spec = DeviceSpec { entries };
            prop_assert_eq!(spec.to_string().parse::<DeviceSpec>().expect("round trip"), spec);
        }
    }

    fn machine(preset: &str) -> Snapshot {
        let source = gpu_topology::TopologySpec::Sim(preset.into()).open().expect("preset");
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt")
            .block_on(source.snapshot())
            .expect("snapshot")
    }

    /// Each compute device of `snapshot` with every way a spec may name it: its index (whole
    /// GPUs), its full name, its shortest unique prefix, its legacy name (MIG with known ids).
    fn spellings(snapshot: &Snapshot) -> Vec<(DeviceRef, Vec<String>)> {
        let all: Vec<String> =
            crate::devices::all_devices(snapshot).iter().map(|r| r.ids(snapshot).0.to_string()).collect();
        crate::devices::compute_devices(snapshot)
            .0
            .into_iter()
            .map(|r| {
                let name = r.ids(snapshot).0.to_string();
                let mut ways = vec![name.clone()];
                if r.mig.is_none() {
                    ways.push(r.gpu(snapshot).index.to_string());
                }
                if !name.starts_with("MIG-GPU-")
                    && let Some(prefix) = (5..name.len())
                        .map(|n| &name[..n])
                        .filter(|p| !p.ends_with('-'))
                        .find(|p| all.iter().filter(|u| u.starts_with(p)).count() == 1)
                {
                    ways.push(prefix.to_owned());
                }
                if let (Some(m), Some(DeviceId::Gpu(parent))) = (r.instance(snapshot), r.ids(snapshot).1)
                    && let (Some(gi), Some(ci)) = (m.gpu_instance_id, m.compute_instance_id)
                {
                    ways.push(format!("MIG-GPU-{parent}/{gi}/{ci}"));
                }
                (r, ways)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// A spec naming devices (each once, spelled any way CUDA accepts) resolves to exactly
        /// those devices, in order, and so does the spec printed again.
        #[test]
        fn accepted_specs_resolve_to_the_devices_they_name(
            preset in proptest::sample::select(vec!["dgx-a100", "hgx-h100", "legacy-r460", "h100-mixed"]),
            picks in proptest::collection::vec((any::<proptest::sample::Index>(), any::<proptest::sample::Index>()), 1..8),
        ) {
            let snapshot = machine(preset);
            let devices = spellings(&snapshot);
            let mut wanted: Vec<DeviceRef> = Vec::new();
            let mut entries = Vec::new();
            for (device, way) in picks {
                let (r, ways) = &devices[device.index(devices.len())];
                if !wanted.contains(r) {
                    wanted.push(*r);
                    entries.push(ways[way.index(ways.len())].clone());
                }
            }
            let spec: DeviceSpec = entries.join(",").parse().expect("a spec of real names");
            prop_assert_eq!(&resolve(&spec, &snapshot).expect("resolves"), &wanted);
            let again: DeviceSpec = spec.to_string().parse().expect("printed again");
            prop_assert_eq!(resolve(&again, &snapshot).expect("resolves again"), wanted);
        }

        #[test]
        fn no_spec_makes_resolution_panic(text in "[0-9a-fA-FGPUMI ,/x-]{0,60}") {
            if let Ok(spec) = text.parse::<DeviceSpec>() {
                let _ = resolve(&spec, &machine("legacy-r460"));
            }
        }
    }
}
