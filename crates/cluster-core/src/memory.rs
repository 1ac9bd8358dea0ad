//! Device memory sizes as Dask-CUDA parses them (`parse_device_memory_limit`), computed from the
//! worker's own device: for a MIG worker, its instance, never the parent GPU.
//!
//! The grammar follows Dask-CUDA exactly (its test cases are `mod dask_cuda_conformance` in `tests.rs`):
//! `"auto"` is the whole device, `"default"` is 80 % of it; `None`, `0`, `"0"`, `0.0` and
//! `"0 GiB"` mean no limit; an integer is bytes (`1` and `"1"` are one byte); a number with a
//! fraction part in (0, 1] is a fraction of the device (`1.0` is all of it); anything else is a
//! size with units as `dask.utils.parse_bytes` reads them ([`parse_dask_size`]: `"10GB"` =
//! 10^10, `"5000M"`, `"1.5 GiB"`). Results are floored to the alignment (256 bytes for pool sizes).
//!
//! Two inputs Dask-CUDA takes silently are refused here, since neither is ever meant: a number
//! written with a fraction part above 1 (`2.0`, `1.5`), which Dask-CUDA reads as 2 or 1 bytes,
//! and a limit that comes to 0 bytes (`1e-300` of a device), which Dask would read as no limit.
//! A limit above the device's memory is an error too; one below 1 % of it is allowed, and the
//! plan warns about it (`device-memory-limit-small`).

use gpu_topology::text::printable;

use crate::size::parse_dask_size;

/// What is wrong with a memory size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// Not a size.
    #[error(
        "`{}` is not a memory size: use `auto` (the whole device), `default` (80 %), a fraction such as 0.5, \
         bytes such as 1000000000, or a size with units such as 10GB or 9.5GiB",
        printable(.text)
    )]
    Malformed {
        /// What was given.
        text: String,
    },
    /// A fraction of a device whose size is unknown.
    #[error(
        "`{}` is a fraction of the device's memory, which {device} does not report; give an absolute size such as 10GB",
        printable(.text)
    )]
    UnknownTotal {
        /// What was given.
        text: String,
        /// The device.
        device: String,
    },
    /// A number with a fraction part above 1: neither a fraction nor bytes.
    #[error(
        "`{}` is neither a fraction of the device's memory, which is more than 0 and at most 1 (0.5 is half), \
         nor bytes, which are whole numbers (2000000000) or sizes with units (2GB, 1.5GiB)",
        printable(.text)
    )]
    FractionAboveOne {
        /// What was given.
        text: String,
    },
    /// A limit that comes to 0 bytes, which Dask reads as no limit at all.
    #[error(
        "`{}` comes to 0 bytes of {device}'s {total} bytes (per worker); give a larger limit, or 0 for no limit",
        printable(.text)
    )]
    RoundsToZero {
        /// What was given.
        text: String,
        /// The device's memory.
        total: u64,
        /// The device.
        device: String,
    },
    /// More than the device has.
    #[error("`{}` is {bytes} bytes, more than the {total} bytes of {device}; give at most `auto`", printable(.text))]
    TooLarge {
        /// What was given.
        text: String,
        /// Its value.
        bytes: u64,
        /// The device's memory.
        total: u64,
        /// The device.
        device: String,
    },
}

enum Parsed {
    None,
    Fraction(f64),
    Bytes(u64),
}

fn parse(text: &str) -> Result<Parsed, MemoryError> {
    let malformed = || MemoryError::Malformed { text: text.to_owned() };
    let t = text.trim();
    match t.to_ascii_lowercase().as_str() {
        "auto" => return Ok(Parsed::Fraction(1.0)),
        "default" => return Ok(Parsed::Fraction(0.8)),
        "" | "none" => return Ok(Parsed::None),
        _ => {}
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = t.parse().map_err(|_| malformed())?;
        return Ok(if n == 0 { Parsed::None } else { Parsed::Bytes(n) });
    }
    if let Ok(f) = t.parse::<f64>() {
        if !f.is_finite() || f < 0.0 {
            return Err(malformed());
        }
        // `2.0` reads as a fraction gone wrong; `1e9` (no point) stays bytes, as in Dask-CUDA.
        if f > 1.0 && t.contains('.') && !t.contains(['e', 'E']) {
            return Err(MemoryError::FractionAboveOne { text: text.to_owned() });
        }
        return Ok(if f == 0.0 {
            Parsed::None
        } else if f <= 1.0 {
            Parsed::Fraction(f)
        } else {
            Parsed::Bytes(f.floor() as u64)
        });
    }
    let bytes = parse_dask_size(t).ok_or_else(malformed)?;
    Ok(if bytes == 0 { Parsed::None } else { Parsed::Bytes(bytes) })
}

/// Parses `text` against a device of `total` bytes (`None` when unknown) named `device` in
/// errors, floored to `alignment`. `Ok(None)` means no limit.
///
/// # Errors
/// [`MemoryError`] for text that is no size, a fraction of an unknown total, or more than the
/// device has.
pub fn parse_device_bytes(
    text: &str,
    total: Option<u64>,
    alignment: u64,
    device: &str,
) -> Result<Option<u64>, MemoryError> {
    let bytes = match parse(text)? {
        Parsed::None => return Ok(None),
        Parsed::Bytes(b) => b,
        Parsed::Fraction(f) => {
            let total =
                total.ok_or_else(|| MemoryError::UnknownTotal { text: text.to_owned(), device: device.to_owned() })?;
            (total as f64 * f) as u64
        }
    };
    if let Some(total) = total
        && bytes > total
    {
        return Err(MemoryError::TooLarge { text: text.to_owned(), bytes, total, device: device.to_owned() });
    }
    let alignment = alignment.max(1);
    let aligned = bytes / alignment * alignment;
    if aligned == 0 {
        return Err(MemoryError::RoundsToZero {
            text: text.to_owned(),
            total: total.unwrap_or(bytes),
            device: device.to_owned(),
        });
    }
    Ok(Some(aligned))
}

/// Checks that `text` is a memory size at all, before any device is known.
///
/// # Errors
/// [`MemoryError::Malformed`].
pub fn validate(text: &str) -> Result<(), MemoryError> {
    parse(text).map(|_| ())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const TOTAL: u64 = 80 << 30;

    fn size() -> impl Strategy<Value = String> {
        let unit = proptest::sample::select(vec!["", "B", "K", "MB", "GiB", "gb", " TiB", "kb", "x"]);
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            (0.0f64..2.0).prop_map(|f| f.to_string()),
            (0u32..2000, unit).prop_map(|(n, u)| format!("{n}{u}")),
            (0u32..100, 0u32..100, proptest::sample::select(vec!["GB", "GiB", ""]))
                .prop_map(|(a, b, u)| format!("{a}.{b}{u}")),
            "[0-9eE.+-]{0,12}",
            Just("auto".to_owned()),
            Just("default".to_owned()),
        ]
    }

    proptest! {
        /// An accepted limit is a positive number of bytes within the device, and those bytes
        /// written out read back as themselves.
        #[test]
        fn accepted_sizes_are_within_the_device_and_read_back(text in size()) {
            if let Ok(Some(bytes)) = parse_device_bytes(&text, Some(TOTAL), 256, "d") {
                prop_assert!(bytes > 0 && bytes <= TOTAL && bytes % 256 == 0, "{text}: {bytes}");
                prop_assert_eq!(parse_device_bytes(&bytes.to_string(), Some(TOTAL), 256, "d"), Ok(Some(bytes)));
            }
        }

        #[test]
        fn no_text_makes_the_parser_panic(text in ".{0,40}", total in proptest::option::of(any::<u64>())) {
            let _ = parse_device_bytes(&text, total, 256, "d");
            let _ = validate(&text);
        }
    }
}
