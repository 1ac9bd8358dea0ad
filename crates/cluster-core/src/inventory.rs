//! Inventories: the snapshots of several hosts (each host's `list --json`) joined into one.

use gpu_topology::Snapshot;

/// Why inventories cannot be joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InventoryError {
    /// Two inventories describe hosts of one name.
    #[error(
        "host `{host}` appears in inventories {first} and {second}; each host must be described once \
         (hosts need distinct names for worker names to be unique)"
    )]
    DuplicateHost {
        /// The host name.
        host: String,
        /// 1-based position of the first inventory.
        first: usize,
        /// 1-based position of the second.
        second: usize,
    },
    /// No inventory was given, or all were empty.
    #[error("the inventories describe no host")]
    Empty,
}

/// Joins inventories in order; host names must be unique across them.
///
/// # Errors
/// [`InventoryError`].
pub fn merge_inventories(inventories: Vec<Snapshot>) -> Result<Snapshot, InventoryError> {
    let mut hosts = Vec::new();
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
    Ok(Snapshot { hosts })
}
