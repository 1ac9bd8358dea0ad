//! Byte amounts as people read them: the one formatter for memory ([`gib`], `40.00 GiB`) and
//! the one for sizes given in whole units ([`human_size`], `16 MiB`), for every crate's tables
//! and messages. Reading sizes that users write is `cluster-core`'s (`parse_binary_size`).

/// Bytes as GiB with two decimals, the precision MIG memory differs at (`9.62 GiB`, `40.00 GiB`).
/// Amounts under 0.01 GiB (a limit of a few bytes is legal, if odd) are shown in MiB or bytes
/// (`0.95 MiB`, `512 B`), so that they do not read as zero.
pub fn gib(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..10_737_418 => format!("{:.2} MiB", bytes as f64 / f64::from(1u32 << 20)),
        _ => format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30)),
    }
}

/// A size in the largest binary unit that holds it whole: `16 MiB`, `1 GiB`, `64 KiB`, and
/// bytes otherwise (`1000 B`). For sizes users give in whole units (messages, chunks), where a
/// rounded figure would hide which size was meant.
pub fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_reads_in_gib_and_small_amounts_do_not_read_as_zero() {
        assert_eq!(gib(40 << 30), "40.00 GiB");
        assert_eq!(gib(9984 << 20), "9.75 GiB");
        assert_eq!(gib(10_737_418), "0.01 GiB");
        assert_eq!(gib(1_000_000), "0.95 MiB");
        assert_eq!(gib(1023), "1023 B");
        assert_eq!(gib(0), "0 B");
    }

    #[test]
    fn whole_sizes_keep_their_unit() {
        assert_eq!(human_size(16 << 20), "16 MiB");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(3 << 30), "3 GiB");
        assert_eq!(human_size(64 << 10), "64 KiB");
        assert_eq!(human_size((1 << 30) + (1 << 20)), "1025 MiB");
        assert_eq!(human_size(1000), "1000 B");
        assert_eq!(human_size(8), "8 B");
        assert_eq!(human_size(0), "0 B");
    }
}
