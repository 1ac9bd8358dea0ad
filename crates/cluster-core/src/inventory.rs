//! Inventories: the snapshots of several hosts (each host's `list --json`) joined into one.

use gpu_topology::text::printable;
use gpu_topology::{Snapshot, limits};

/// Why inventories cannot be joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InventoryError {
    /// Two inventories describe hosts of one name.
    #[error(
        "host `{}` appears in inventories {first} and {second}; each host must be described once \
         (hosts need distinct names for worker names to be unique)",
        printable(.host)
    )]
    DuplicateHost {
        /// The host name.
        host: String,
        /// 1-based position of the first inventory.
        first: usize,
        /// 1-based position of the second.
        second: usize,
    },
    /// One device on two hosts: the same machine saved twice under two names, most likely.
    #[error(
        "`{device}` is on host `{}` and on host `{}`; a device belongs to one host, so one machine was probably \
         saved under two names: give each host's inventory once",
        printable(.first),
        printable(.second)
    )]
    DuplicateDevice {
        /// The device's name.
        device: String,
        /// The first host that has it.
        first: String,
        /// The second.
        second: String,
    },
    /// More hosts than `limits::MAX_HOSTS`.
    #[error(
        "the inventories describe {hosts} hosts or more, over gpucluster's limit of {limit} hosts in one plan; plan \
         parts of the cluster separately"
    )]
    TooManyHosts {
        /// How many hosts were read before giving up.
        hosts: usize,
        /// The limit.
        limit: usize,
    },
    /// No inventory was given, or all were empty.
    #[error("the inventories describe no host")]
    Empty,
}

/// Joins inventories in order; host names must be unique across them, no device may appear on
/// two hosts, and there may be at most `limits::MAX_HOSTS` hosts.
///
/// # Errors
/// [`InventoryError`].
pub fn merge_inventories(inventories: Vec<Snapshot>) -> Result<Snapshot, InventoryError> {
    let total: usize = inventories.iter().map(|s| s.hosts.len()).sum();
    if total > limits::MAX_HOSTS {
        return Err(InventoryError::TooManyHosts { hosts: total, limit: limits::MAX_HOSTS });
    }
    let mut hosts = Vec::with_capacity(total);
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, inventory) in inventories.into_iter().enumerate() {
        for host in inventory.hosts {
            if let Some(&first) = seen.get(&host.hostname) {
                return Err(InventoryError::DuplicateHost { host: host.hostname, first, second: i + 1 });
            }
            seen.insert(host.hostname.clone(), i + 1);
            hosts.push(host);
        }
    }
    if hosts.is_empty() {
        return Err(InventoryError::Empty);
    }
    let joined = Snapshot { hosts };
    if let Some((device, first, second)) = joined.device_on_two_hosts() {
        return Err(InventoryError::DuplicateDevice {
            device: device.to_string(),
            first: first.to_owned(),
            second: second.to_owned(),
        });
    }
    Ok(joined)
}
