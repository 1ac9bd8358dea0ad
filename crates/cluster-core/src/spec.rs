//! Device specs in the grammar of `CUDA_VISIBLE_DEVICES`, and their resolution against a snapshot.
//!
//! A spec is a comma-separated list of entries: an NVML index (`0`), a full name (`GPU-<uuid>`,
//! `MIG-<uuid>`, legacy `MIG-GPU-<uuid>/<gi>/<ci>`), or a unique UUID prefix as CUDA accepts it
//! (`GPU-8932f937`, `MIG-c788`). Where CUDA silently truncates the list at a bad entry, every
//! problem here is an error that says what to change.

use std::fmt;
use std::str::FromStr;

use gpu_topology::{DeviceId, Snapshot};

use crate::devices::DeviceRef;

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
    #[error("`{entry}` is not a device: {reason}")]
    Malformed {
        /// The entry.
        entry: String,
        /// What was expected.
        reason: String,
    },
    /// No device has this name.
    #[error("no device is named `{entry}`{}; `gpucluster list` shows the names", on_hosts(.hosts))]
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
    #[error("`{entry}` is ambiguous: it begins {}; give more of the UUID", .candidates.join(", "))]
    AmbiguousPrefix {
        /// The entry.
        entry: String,
        /// Every device it matches.
        candidates: Vec<String>,
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

fn on_hosts(hosts: &[String]) -> String {
    match hosts {
        [] => String::new(),
        [one] => format!(" on host `{one}`"),
        many => format!(" on any of the hosts {}", many.join(", ")),
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

impl SpecEntry {
    fn matches(&self, device: &DeviceId) -> bool {
        match (self, device) {
            (SpecEntry::Index(_), _) => false,
            (SpecEntry::Name(name), _) => name == device,
            (SpecEntry::Prefix { mig: false, text }, DeviceId::Gpu(u)) => u.to_string().starts_with(text.as_str()),
            (SpecEntry::Prefix { mig: true, text }, DeviceId::Mig(u)) => u.to_string().starts_with(text.as_str()),
            (SpecEntry::Prefix { .. }, _) => false,
        }
    }
}

/// Resolves `spec` against every host of `snapshot`. Indices name a GPU on every host (as
/// `CUDA_VISIBLE_DEVICES` would on each); names and prefixes name a device wherever it is.
pub(crate) fn resolve(spec: &DeviceSpec, snapshot: &Snapshot) -> Result<Vec<DeviceRef>, SpecError> {
    let all = crate::devices::all_devices(snapshot);
    let mut out: Vec<DeviceRef> = Vec::new();
    for entry in &spec.entries {
        let entry_text = entry.to_string();
        let found: Vec<DeviceRef> = match entry {
            SpecEntry::Index(index) => {
                let mut refs = Vec::new();
                for (h, host) in snapshot.hosts.iter().enumerate() {
                    let g =
                        host.gpus.iter().position(|g| g.index == *index).ok_or_else(|| SpecError::IndexOutOfRange {
                            index: *index,
                            host: host.hostname.clone(),
                            count: host.gpus.len(),
                        })?;
                    refs.push(DeviceRef { host: h, gpu: g, mig: None });
                }
                refs
            }
            _ => {
                let matches: Vec<DeviceRef> = all
                    .iter()
                    .copied()
                    .filter(|r| entry.matches(r.ids(snapshot).0) || legacy_matches(entry, *r, snapshot))
                    .collect();
                match matches.len() {
                    0 => {
                        return Err(SpecError::Unknown {
                            entry: entry_text,
                            hosts: snapshot.hosts.iter().map(|h| h.hostname.clone()).collect(),
                        });
                    }
                    1 => matches,
                    _ if matches!(entry, SpecEntry::Prefix { .. }) => {
                        return Err(SpecError::AmbiguousPrefix {
                            entry: entry_text,
                            candidates: matches.iter().map(|r| r.ids(snapshot).0.to_string()).collect(),
                        });
                    }
                    // A full name is unique in a validated snapshot; two hosts cannot share one.
                    _ => matches[..1].to_vec(),
                }
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
            if out.contains(r) {
                return Err(SpecError::Duplicate { entry: entry_text.clone(), device: r.describe(snapshot) });
            }
            out.push(*r);
        }
    }
    // Keep hosts together, each in the order its entries were given.
    out.sort_by_key(|r| r.host);
    Ok(out)
}

/// NVML accepts a legacy name for a device it now names `MIG-<uuid>`: match on the parent GPU and
/// the instance ids.
fn legacy_matches(entry: &SpecEntry, r: DeviceRef, snapshot: &Snapshot) -> bool {
    let SpecEntry::Name(DeviceId::LegacyMig { gpu, gpu_instance, compute_instance }) = entry else {
        return false;
    };
    let Some(m) = r.mig else { return false };
    let parent = &snapshot.hosts[r.host].gpus[r.gpu];
    let mig = &parent.mig_instances[m];
    parent.uuid == DeviceId::Gpu(gpu.clone())
        && mig.gpu_instance_id == Some(*gpu_instance)
        && mig.compute_instance_id == Some(*compute_instance)
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
}
