//! Device identity: the names NVIDIA gives compute devices, parsed and printed exactly.
//!
//! A physical GPU is `GPU-<uuid>`; a MIG device is `MIG-<uuid>` on drivers from R470
//! (470.42.01) on, and `MIG-GPU-<gpu uuid>/<gpu instance id>/<compute instance id>` before.
//! This module only knows the grammar of full names; resolving names, indices and prefixes
//! against a machine is selection policy and lives in `cluster-core`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Whether a driver of `version` (NVML's `580.159.04` form) names MIG devices the legacy way,
/// `MIG-GPU-<uuid>/<gi>/<ci>`: R470 (470.42.01) introduced `MIG-<uuid>`.
///
/// Parts are compared as numbers, in order (`460.73.01` < `470.42.01` < `1000.1`); a version
/// that does not start with a number is not called legacy.
pub fn driver_uses_legacy_mig_names(version: &str) -> bool {
    const FIRST_WITH_MIG_UUIDS: [u32; 3] = [470, 42, 1];
    let parts: Vec<u32> = version.split('.').map_while(|p| p.parse().ok()).collect();
    !parts.is_empty() && parts.as_slice() < FIRST_WITH_MIG_UUIDS.as_slice()
}

/// The 128-bit UUID inside a device name, kept as the lowercase text NVML prints.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid([u8; 16]);

impl Uuid {
    /// Builds a UUID from its 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 bytes of the UUID.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Formatted into one buffer: plans print hundreds of thousands of names.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 36];
        let mut at = 0;
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                text[at] = b'-';
                at += 1;
            }
            text[at] = HEX[usize::from(b >> 4)];
            text[at + 1] = HEX[usize::from(b & 0xf)];
            at += 2;
        }
        // Only ASCII hex digits and dashes were written.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Uuid {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let groups: Vec<&str> = s.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lengths != [8, 4, 4, 4, 12] {
            return Err(IdError::new(
                s,
                "a UUID is 32 hexadecimal digits grouped 8-4-4-4-12, like 8932f937-d72c-4106-c12f-20bd9faed9f6",
            ));
        }
        let hex: String = groups.concat();
        // Checked before slicing below, which would split a multi-byte character.
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdError::new(s, "a UUID holds only hexadecimal digits (0-9, a-f)"));
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = &hex[2 * i..2 * i + 2];
            *byte = u8::from_str_radix(pair, 16)
                .map_err(|_| IdError::new(s, "a UUID holds only hexadecimal digits (0-9, a-f)"))?;
        }
        Ok(Self(bytes))
    }
}

/// The full name of a device as NVML and `CUDA_VISIBLE_DEVICES` spell it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum DeviceId {
    /// A physical GPU: `GPU-<uuid>`.
    Gpu(Uuid),
    /// A MIG device on a driver from R470 on: `MIG-<uuid>`.
    Mig(Uuid),
    /// A MIG device on a driver before R470: `MIG-GPU-<gpu uuid>/<gi>/<ci>`.
    LegacyMig {
        /// UUID of the parent GPU.
        gpu: Uuid,
        /// GPU instance id.
        gpu_instance: u32,
        /// Compute instance id.
        compute_instance: u32,
    },
}

impl DeviceId {
    /// Whether this names a MIG device (in either naming scheme).
    pub fn is_mig(&self) -> bool {
        !matches!(self, DeviceId::Gpu(_))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceId::Gpu(u) => write!(f, "GPU-{u}"),
            DeviceId::Mig(u) => write!(f, "MIG-{u}"),
            DeviceId::LegacyMig { gpu, gpu_instance, compute_instance } => {
                write!(f, "MIG-GPU-{gpu}/{gpu_instance}/{compute_instance}")
            }
        }
    }
}

impl FromStr for DeviceId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let with_context = |e: IdError| IdError::new(s, e.reason);
        if let Some(rest) = s.strip_prefix("MIG-GPU-") {
            let mut parts = rest.split('/');
            let (Some(uuid), Some(gi), Some(ci), None) = (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(IdError::new(
                    s,
                    "a legacy MIG name is MIG-GPU-<gpu uuid>/<gpu instance id>/<compute instance id>",
                ));
            };
            let id = |t: &str, what: &str| {
                t.parse::<u32>().map_err(|_| IdError::new(s, format!("the {what} id `{t}` is not a number")))
            };
            return Ok(DeviceId::LegacyMig {
                gpu: uuid.parse().map_err(with_context)?,
                gpu_instance: id(gi, "GPU instance")?,
                compute_instance: id(ci, "compute instance")?,
            });
        }
        if let Some(rest) = s.strip_prefix("MIG-") {
            return Ok(DeviceId::Mig(rest.parse().map_err(with_context)?));
        }
        if let Some(rest) = s.strip_prefix("GPU-") {
            return Ok(DeviceId::Gpu(rest.parse().map_err(with_context)?));
        }
        Err(IdError::new(s, "a device name starts with GPU-, MIG- or MIG-GPU- (as `nvidia-smi -L` prints it)"))
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A device name that does not follow NVIDIA's grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a device name: {reason}")]
pub struct IdError {
    /// The text that was given.
    pub text: String,
    /// What was expected instead.
    pub reason: String,
}

impl IdError {
    fn new(text: &str, reason: impl Into<String>) -> Self {
        Self { text: text.to_owned(), reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GPU: &str = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6";

    #[test]
    fn parses_the_three_forms() {
        let gpu: DeviceId = GPU.parse().expect("gpu name");
        assert!(!gpu.is_mig());
        assert_eq!(gpu.to_string(), GPU);

        let mig: DeviceId = "MIG-c788f2ec-4b8a-5a62-8b0e-a8a6c6a3d0f1".parse().expect("mig name");
        assert!(matches!(mig, DeviceId::Mig(_)));

        let legacy: DeviceId = "MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2/1/0".parse().expect("legacy name");
        assert_eq!(
            legacy,
            DeviceId::LegacyMig {
                gpu: "e91edf3b-b297-37c1-a2a7-7601c3238fa2".parse().expect("uuid"),
                gpu_instance: 1,
                compute_instance: 0
            }
        );
        assert_eq!(legacy.to_string(), "MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2/1/0");
    }

    #[test]
    fn uppercase_hex_is_accepted_and_printed_lowercase() {
        let id: DeviceId = GPU.to_uppercase().parse().expect("upper");
        assert_eq!(id.to_string(), GPU);
    }

    #[test]
    fn errors_say_what_was_expected() {
        for (text, expected) in [
            ("0", "starts with GPU-, MIG-"),
            ("GPU-8932f937", "8-4-4-4-12"),
            ("GPU-8932f937-d72c-4106-c12f-20bd9faed9fz", "hexadecimal"),
            ("MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2/1", "legacy MIG name"),
            ("MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2/x/0", "GPU instance id `x`"),
            ("GPU-8932f937-d72c-4106-c12f-20bd9faed9f\u{e9}", "8-4-4-4-12"),
        ] {
            let err = text.parse::<DeviceId>().expect_err(text);
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in ".{0,80}") {
            let _ = text.parse::<DeviceId>();
        }

        #[test]
        fn format_then_parse_is_identity(bytes in any::<[u8; 16]>(), other in any::<[u8; 16]>(),
                                          gi in any::<u32>(), ci in any::<u32>(), kind in 0..3u8) {
            let id = match kind {
                0 => DeviceId::Gpu(Uuid::from_bytes(bytes)),
                1 => DeviceId::Mig(Uuid::from_bytes(bytes)),
                _ => DeviceId::LegacyMig { gpu: Uuid::from_bytes(other), gpu_instance: gi, compute_instance: ci },
            };
            prop_assert_eq!(id.to_string().parse::<DeviceId>().expect("round trip"), id);
        }
    }
}
