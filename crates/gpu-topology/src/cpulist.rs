//! Linux CPU lists (`0-15,32-47`), the form in which NVML and sysfs name the CPUs closest to a
//! GPU: the one parser of the workspace, strict for descriptions (fixtures) and lenient for
//! pinning processes (the launcher, the Python package).

use crate::limits;

/// Why a CPU list was refused by [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuListError {
    /// Not a list of CPUs and ranges (`0-15,32-47`): a part that is no number or range, a range
    /// that runs backwards, or a list longer than [`limits::MAX_CPULIST_BYTES`].
    Malformed,
    /// The list names a CPU that the host does not have.
    OutOfRange {
        /// The highest CPU of the offending part.
        cpu: u32,
    },
}

/// The CPUs of `list`, each below `cpus` (the host's count), in order and once each.
///
/// Repeated and overlapping ranges cost no memory: the result is a set of the host's CPUs.
///
/// # Errors
/// [`CpuListError::Malformed`] for anything but comma-separated CPUs and `a-b` ranges with
/// `a <= b`; [`CpuListError::OutOfRange`] for a CPU at or above `cpus`.
pub fn parse(list: &str, cpus: u32) -> Result<Vec<u32>, CpuListError> {
    if list.len() > limits::MAX_CPULIST_BYTES {
        return Err(CpuListError::Malformed);
    }
    let mut named = vec![false; cpus as usize];
    for part in list.split(',') {
        let (a, b) = range(part).ok_or(CpuListError::Malformed)?;
        if b >= cpus {
            return Err(CpuListError::OutOfRange { cpu: b });
        }
        named[a as usize..=b as usize].iter_mut().for_each(|n| *n = true);
    }
    Ok((0..cpus).filter(|&c| named[c as usize]).collect())
}

/// The CPUs of `list` that can be read, in order and once each: parts that are not CPUs or
/// ranges are skipped, and CPUs at or above [`limits::MAX_CPUS`] are dropped.
///
/// This is for pinning a process, which is best effort: a list the launcher cannot read in
/// full still pins to what it can read, and an unreadable one pins to nothing (no pinning).
pub fn parse_lenient(list: &str) -> Vec<usize> {
    let mut named = vec![false; limits::MAX_CPUS as usize];
    for (a, b) in list.split(',').filter_map(range) {
        if a < limits::MAX_CPUS {
            named[a as usize..=b.min(limits::MAX_CPUS - 1) as usize].iter_mut().for_each(|n| *n = true);
        }
    }
    (0..named.len()).filter(|&c| named[c]).collect()
}

/// One part of a list, `7` or `0-15` (spaces around numbers allowed), as an inclusive range.
fn range(part: &str) -> Option<(u32, u32)> {
    let (a, b) = match part.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let cpu = part.trim().parse().ok()?;
            (cpu, cpu)
        }
    };
    (a <= b).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_lists() {
        assert_eq!(parse("0-3,8,10-11", 16), Ok(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse(" 8 , 0 - 1,1", 16), Ok(vec![0, 1, 8]));
        assert_eq!(parse("x", 16), Err(CpuListError::Malformed));
        assert_eq!(parse("3-1", 16), Err(CpuListError::Malformed));
        assert_eq!(parse("0,,1", 16), Err(CpuListError::Malformed));
        assert_eq!(parse("0-16", 16), Err(CpuListError::OutOfRange { cpu: 16 }));
    }

    #[test]
    fn lenient_lists_skip_what_they_cannot_read() {
        assert_eq!(parse_lenient("0-3,8,10-11"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert!(parse_lenient("x").is_empty());
        assert_eq!(parse_lenient("x,2,3-1,0"), vec![0, 2]);
        assert_eq!(parse_lenient("8190-4294967295").len(), 2);
    }
}
