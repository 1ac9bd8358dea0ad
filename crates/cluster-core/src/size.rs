//! Byte sizes written as text. The workspace reads two grammars, on purpose, and both live here
//! so that neither is written twice:
//!
//! - [`parse_dask_size`] is Dask's (`dask.utils.parse_bytes`), the grammar of memory limits
//!   (`--device-memory-limit`): `K`, `M`, `G`, `T`, `P` (with or without `B`) are decimal,
//!   `1G` = 10^9 bytes, and `Ki`, `Mi`, `Gi`, `Ti`, `Pi` (with or without `B`) are binary,
//!   `1GiB` = 2^30 bytes. A limit must mean what it means to Dask.
//! - [`parse_binary_size`] is the grammar of message and array sizes (`bench --sizes`), where
//!   powers of two are what one measures: `K`, `M`, `G` are binary whatever follows them,
//!   `1G` = `1GB` = `1GiB` = 2^30 bytes.

use gpu_topology::text::printable;

/// Why [`parse_binary_size`] refused a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SizeError {
    /// No whole number in front.
    #[error("`{}` is not a size like 8, 64K, 16M or 1G", printable(.text))]
    Malformed {
        /// What was given.
        text: String,
    },
    /// A unit other than `K`, `M` or `G`.
    #[error("`{}` has an unknown unit; use K, M or G", printable(.text))]
    UnknownUnit {
        /// What was given.
        text: String,
    },
    /// More bytes than 64 bits hold.
    #[error("`{}` is more bytes than a size can hold", printable(.text))]
    Overflow {
        /// What was given.
        text: String,
    },
}

/// Dask's size grammar (`dask.utils.parse_bytes`): an optional number (integer, decimal or
/// exponent: `1.5`, `1e9`; none means 1) and an optional unit, spaces anywhere, case ignored.
/// Units: none or `B` (bytes); `K`/`KB`, `M`/`MB`, `G`/`GB`, `T`/`TB`, `P`/`PB` (10^3 .. 10^15);
/// `Ki`/`KiB`, `Mi`/`MiB`, `Gi`/`GiB`, `Ti`/`TiB`, `Pi`/`PiB` (2^10 .. 2^50). Fractions of a
/// byte are dropped. `None` for anything else, a negative size, or one past `u64`.
pub fn parse_dask_size(text: &str) -> Option<u64> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    // The unit is the letters at the end, as Dask finds it: so `1e9B` is 10^9 bytes.
    let split = compact.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len();
    let (number, unit) = compact.split_at(split);
    let number: f64 = if number.is_empty() { 1.0 } else { number.parse().ok()? };
    let multiplier: f64 = match unit {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "pb" | "p" => 1e15,
        "kib" | "ki" => 1024.0,
        "mib" | "mi" => 1024.0 * 1024.0,
        "gib" | "gi" => 1024.0 * 1024.0 * 1024.0,
        "tib" | "ti" => 1024.0_f64.powi(4),
        "pib" | "pi" => 1024.0_f64.powi(5),
        _ => return None,
    };
    let bytes = number * multiplier;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The binary size grammar: a whole number, then right after it (no space) an optional unit,
/// case ignored: none or `B` (bytes), `K`, `M`, `G` (2^10, 2^20, 2^30) alone or followed by
/// `B`, `iB` or `i`. So `1G` = `1GB` = `1GiB` = 1,073,741,824 bytes. Zero is a size here;
/// callers that need at least a byte say so.
///
/// # Errors
/// [`SizeError::Malformed`] without a leading whole number, [`SizeError::UnknownUnit`] for any
/// other unit, [`SizeError::Overflow`] past `u64`.
pub fn parse_binary_size(text: &str) -> Result<u64, SizeError> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| SizeError::Malformed { text: text.to_owned() })?;
    let shift = match unit.to_ascii_uppercase().trim_end_matches('B').trim_end_matches('I') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(SizeError::UnknownUnit { text: text.to_owned() }),
    };
    n.checked_mul(1 << shift).ok_or_else(|| SizeError::Overflow { text: text.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_grammars_disagree_on_g_and_agree_on_gib() {
        assert_eq!(parse_dask_size("1G"), Some(1_000_000_000));
        assert_eq!(parse_binary_size("1G"), Ok(1 << 30));
        assert_eq!(parse_dask_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_binary_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_binary_size("1gb"), Ok(1 << 30));
    }

    #[test]
    fn dask_sizes() {
        assert_eq!(parse_dask_size("10GB"), Some(10_000_000_000));
        assert_eq!(parse_dask_size("1.5 GiB"), Some(3 << 29));
        assert_eq!(parse_dask_size("1e9B"), Some(1_000_000_000), "as dask.utils.parse_bytes reads it");
        assert_eq!(parse_dask_size("1e9"), Some(1_000_000_000));
        assert_eq!(parse_dask_size("nan"), None);
        assert_eq!(parse_dask_size("5000M"), Some(5_000_000_000));
        assert_eq!(parse_dask_size("kb"), Some(1000));
        assert_eq!(parse_dask_size("12"), Some(12));
        assert_eq!(parse_dask_size("-1GB"), None);
        assert_eq!(parse_dask_size("1 XB"), None);
    }

    #[test]
    fn binary_sizes() {
        assert_eq!(parse_binary_size("8"), Ok(8));
        assert_eq!(parse_binary_size("64K"), Ok(64 << 10));
        assert_eq!(parse_binary_size("16m"), Ok(16 << 20));
        assert_eq!(parse_binary_size("0"), Ok(0));
        assert_eq!(parse_binary_size("K"), Err(SizeError::Malformed { text: "K".into() }));
        assert_eq!(parse_binary_size("1 K"), Err(SizeError::UnknownUnit { text: "1 K".into() }));
        assert_eq!(parse_binary_size("1T"), Err(SizeError::UnknownUnit { text: "1T".into() }));
        assert_eq!(parse_binary_size("99999999999G"), Err(SizeError::Overflow { text: "99999999999G".into() }));
    }
}
