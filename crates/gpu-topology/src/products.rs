//! Product and MIG profile tables: what NVML reports for each product and profile.
//!
//! The figures come from `shared/reference/mig-facts.md` (NVIDIA's supported-profiles pages
//! and public `nvidia-smi mig -lgip` captures). Memory is the MiB a MIG instance's own handle
//! reports, which varies a little by driver; where no capture exists the value is an estimate
//! and marked so. The simulated backend and the `nvidia-smi -L` reader use these tables; the
//! NVML backend uses them only for a whole GPU's SM count, which NVML does not report.

/// A GPU product.
#[derive(Debug, Clone, Copy)]
pub struct Product {
    /// The name NVML reports (current drivers put `NVIDIA ` in front).
    pub name: &'static str,
    /// Other spellings (older drivers' names, short forms for fixtures).
    pub aliases: &'static [&'static str],
    /// Total memory NVML reports for the whole GPU, MiB.
    pub memory_mib: u64,
    /// Streaming multiprocessors of the whole GPU.
    pub sm_count: u32,
    /// The MIG geometry, for MIG-capable products.
    pub mig: Option<&'static MigGeometry>,
}

/// How a MIG-capable product divides.
#[derive(Debug)]
pub struct MigGeometry {
    /// Memory slices (8 on A100/H100/H200, 4 on A30).
    pub memory_slices: u32,
    /// Compute slices (7 on A100/H100/H200, 4 on A30).
    pub compute_slices: u32,
    /// What `nvmlDeviceGetMaxMigDeviceCount` returns.
    pub max_devices: u32,
    /// GPU instance profiles.
    pub profiles: &'static [Profile],
}

/// A GPU instance profile.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Name, e.g. `1g.10gb`.
    pub name: &'static str,
    /// Compute slices (the `Ng` part).
    pub compute_slices: u32,
    /// Memory slices.
    pub memory_slices: u32,
    /// SMs of one instance.
    pub sm_count: u32,
    /// Most instances of this profile on one GPU.
    pub max_count: u32,
    /// Memory an instance's handle reports, MiB.
    pub memory_mib: u64,
}

const fn p(
    name: &'static str,
    compute_slices: u32,
    memory_slices: u32,
    sm_count: u32,
    max_count: u32,
    memory_mib: u64,
) -> Profile {
    Profile { name, compute_slices, memory_slices, sm_count, max_count, memory_mib }
}

static A100_40GB: MigGeometry = MigGeometry {
    memory_slices: 8,
    compute_slices: 7,
    max_devices: 7,
    profiles: &[
        p("1g.5gb", 1, 1, 14, 7, 4864),
        p("1g.5gb+me", 1, 1, 14, 1, 4864),
        p("1g.10gb", 1, 2, 14, 4, 9856),
        p("2g.10gb", 2, 2, 28, 3, 9856),
        p("3g.20gb", 3, 4, 42, 2, 19968),
        p("4g.20gb", 4, 4, 56, 1, 19968),
        p("7g.40gb", 7, 8, 98, 1, 40192),
    ],
};

static A100_80GB: MigGeometry = MigGeometry {
    memory_slices: 8,
    compute_slices: 7,
    max_devices: 7,
    profiles: &[
        p("1g.10gb", 1, 1, 14, 7, 9856),
        p("1g.10gb+me", 1, 1, 14, 1, 9856),
        p("1g.20gb", 1, 2, 14, 4, 19968),
        p("2g.20gb", 2, 2, 28, 3, 19968),
        p("3g.40gb", 3, 4, 42, 2, 40192),
        p("4g.40gb", 4, 4, 56, 1, 40192),
        p("7g.80gb", 7, 8, 98, 1, 80896),
    ],
};

// SM counts are from H100 SXM5 captures; 4g.40gb and 7g.80gb memory are estimates.
static H100_80GB: MigGeometry = MigGeometry {
    memory_slices: 8,
    compute_slices: 7,
    max_devices: 7,
    profiles: &[
        p("1g.10gb", 1, 1, 16, 7, 9984),
        p("1g.10gb+me", 1, 1, 16, 1, 9984),
        p("1g.20gb", 1, 2, 26, 4, 20096),
        p("2g.20gb", 2, 2, 32, 3, 20096),
        p("3g.40gb", 3, 4, 60, 2, 40448),
        p("4g.40gb", 4, 4, 64, 1, 40448),
        p("7g.80gb", 7, 8, 132, 1, 80896),
    ],
};

static H100_94GB: MigGeometry = MigGeometry {
    memory_slices: 8,
    compute_slices: 7,
    max_devices: 7,
    profiles: &[
        p("1g.12gb", 1, 1, 16, 7, 11008),
        p("1g.12gb+me", 1, 1, 16, 1, 11008),
        p("1g.24gb", 1, 2, 26, 4, 22144),
        p("2g.24gb", 2, 2, 32, 3, 22144),
        p("3g.47gb", 3, 4, 60, 2, 47488),
        p("4g.47gb", 4, 4, 64, 1, 47488),
        p("7g.94gb", 7, 8, 132, 1, 95360),
    ],
};

// 3g.71gb, 4g.71gb and 7g.141gb memory are estimates (no public capture).
static H200_141GB: MigGeometry = MigGeometry {
    memory_slices: 8,
    compute_slices: 7,
    max_devices: 7,
    profiles: &[
        p("1g.18gb", 1, 1, 16, 7, 16384),
        p("1g.18gb+me", 1, 1, 16, 1, 16384),
        p("1g.35gb", 1, 2, 26, 4, 33280),
        p("2g.35gb", 2, 2, 32, 3, 33280),
        p("3g.71gb", 3, 4, 60, 2, 67072),
        p("4g.71gb", 4, 4, 64, 1, 67072),
        p("7g.141gb", 7, 8, 132, 1, 143360),
    ],
};

static A30_24GB: MigGeometry = MigGeometry {
    memory_slices: 4,
    compute_slices: 4,
    max_devices: 4,
    profiles: &[
        p("1g.6gb", 1, 1, 14, 4, 5952),
        p("1g.6gb+me", 1, 1, 14, 1, 5952),
        p("2g.12gb", 2, 2, 28, 2, 11968),
        p("2g.12gb+me", 2, 2, 28, 1, 11968),
        p("4g.24gb", 4, 4, 56, 1, 24064),
    ],
};

/// Every product the tables know.
pub static PRODUCTS: &[Product] = &[
    Product {
        name: "NVIDIA A100-SXM4-40GB",
        aliases: &["A100-SXM4-40GB", "A100-40GB"],
        memory_mib: 40960,
        sm_count: 108,
        mig: Some(&A100_40GB),
    },
    Product {
        name: "NVIDIA A100-PCIE-40GB",
        aliases: &["A100-PCIE-40GB"],
        memory_mib: 40960,
        sm_count: 108,
        mig: Some(&A100_40GB),
    },
    Product {
        name: "NVIDIA A100-SXM4-80GB",
        aliases: &["A100-SXM4-80GB", "A100-80GB"],
        memory_mib: 81920,
        sm_count: 108,
        mig: Some(&A100_80GB),
    },
    Product {
        name: "NVIDIA A100 80GB PCIe",
        aliases: &["A100-PCIE-80GB"],
        memory_mib: 81920,
        sm_count: 108,
        mig: Some(&A100_80GB),
    },
    Product {
        name: "NVIDIA H100 80GB HBM3",
        aliases: &["H100-SXM5-80GB", "H100-80GB"],
        memory_mib: 81559,
        sm_count: 132,
        mig: Some(&H100_80GB),
    },
    Product {
        name: "NVIDIA H100 PCIe",
        aliases: &["H100-PCIE-80GB"],
        memory_mib: 81559,
        sm_count: 114,
        mig: Some(&H100_80GB),
    },
    Product {
        name: "NVIDIA H100 NVL",
        aliases: &["H100-NVL-94GB", "H100-94GB"],
        memory_mib: 95830,
        sm_count: 132,
        mig: Some(&H100_94GB),
    },
    Product {
        name: "NVIDIA H200",
        aliases: &["H200-141GB", "H200-SXM5-141GB"],
        memory_mib: 143771,
        sm_count: 132,
        mig: Some(&H200_141GB),
    },
    Product {
        name: "NVIDIA H200 NVL",
        aliases: &["H200-NVL-141GB"],
        memory_mib: 143771,
        sm_count: 132,
        mig: Some(&H200_141GB),
    },
    Product {
        name: "NVIDIA A30",
        aliases: &["A30", "A30-24GB"],
        memory_mib: 24576,
        sm_count: 56,
        mig: Some(&A30_24GB),
    },
    Product {
        name: "Tesla V100-SXM2-32GB",
        aliases: &["V100-SXM2-32GB", "V100-32GB"],
        memory_mib: 32768,
        sm_count: 80,
        mig: None,
    },
    Product { name: "NVIDIA L4", aliases: &["L4"], memory_mib: 23034, sm_count: 58, mig: None },
];

/// Finds a product by its NVML name or an alias, ignoring case and a leading `NVIDIA `.
pub fn product(name: &str) -> Option<&'static Product> {
    let wanted = normalise(name);
    PRODUCTS.iter().find(|p| normalise(p.name) == wanted || p.aliases.iter().any(|a| normalise(a) == wanted))
}

/// The names a user may give, for error messages.
pub fn product_names() -> Vec<&'static str> {
    PRODUCTS.iter().map(|p| p.name).collect()
}

fn normalise(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    lower.strip_prefix("nvidia ").unwrap_or(&lower).to_owned()
}

/// A MIG device profile as `nvidia-smi -L` and NVML names it: a GPU instance profile,
/// optionally with a compute-instance part (`1c.3g.40gb`: one compute slice of a 3g.40gb).
#[derive(Debug, Clone, Copy)]
pub struct DeviceProfile {
    /// The GPU instance profile.
    pub gpu_instance: Profile,
    /// Compute slices of the compute instance (equal to the GI's when there is no `Nc.`).
    pub compute_slices: u32,
}

impl DeviceProfile {
    /// SMs of the compute instance: its share of the GPU instance's.
    pub fn sm_count(&self) -> u32 {
        self.gpu_instance.sm_count * self.compute_slices / self.gpu_instance.compute_slices
    }
}

impl MigGeometry {
    /// Looks a device profile up (`1g.10gb`, `1g.10gb+me`, `1c.3g.40gb`).
    pub fn device_profile(&self, name: &str) -> Option<DeviceProfile> {
        let (compute, gi_name) = match name.split_once("c.") {
            Some((c, rest)) if c.chars().all(|ch| ch.is_ascii_digit()) => (c.parse().ok(), rest),
            _ => (None, name),
        };
        let gpu_instance = *self.profiles.iter().find(|p| p.name == gi_name)?;
        let compute_slices = compute.unwrap_or(gpu_instance.compute_slices);
        (compute_slices >= 1 && compute_slices <= gpu_instance.compute_slices)
            .then_some(DeviceProfile { gpu_instance, compute_slices })
    }

    /// Profile names, for error messages.
    pub fn profile_names(&self) -> Vec<&'static str> {
        self.profiles.iter().map(|p| p.name).collect()
    }

    /// The GPU instance id NVML gives an instance of `memory_slices` placed at `start`.
    /// Ids number a binary tree of memory slices: 0 is the whole GPU, then halves, quarters
    /// and eighths (so 1g instances on an A100 are GI 7 to 13).
    pub fn gpu_instance_id(&self, memory_slices: u32, start: u32) -> u32 {
        (self.memory_slices / memory_slices - 1) + start / memory_slices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_with_or_without_the_vendor_prefix() {
        assert_eq!(product("A100-SXM4-40GB").map(|p| p.name), Some("NVIDIA A100-SXM4-40GB"));
        assert_eq!(product("nvidia h100 80gb hbm3").map(|p| p.sm_count), Some(132));
        assert!(product("GeForce 256").is_none());
    }

    #[test]
    fn profile_names_mean_different_memory_on_different_products() {
        let a100_40 = product("A100-40GB").and_then(|p| p.mig).expect("a100");
        let h100 = product("H100-80GB").and_then(|p| p.mig).expect("h100");
        let on_a100 = a100_40.device_profile("1g.10gb").expect("1g.10gb on A100-40GB");
        let on_h100 = h100.device_profile("1g.10gb").expect("1g.10gb on H100");
        assert_eq!(on_a100.gpu_instance.memory_slices, 2);
        assert_eq!(on_h100.gpu_instance.memory_slices, 1);
        assert_ne!(on_a100.sm_count(), on_h100.sm_count());
    }

    #[test]
    fn compute_instance_profiles_take_their_share_of_sms() {
        let h100 = product("H100-80GB").and_then(|p| p.mig).expect("h100");
        assert_eq!(h100.device_profile("1c.3g.40gb").map(|d| d.sm_count()), Some(20));
        assert!(h100.device_profile("4c.3g.40gb").is_none());
        assert!(h100.device_profile("9g.90gb").is_none());
    }

    #[test]
    fn gpu_instance_ids_follow_nvml_numbering() {
        let a100 = product("A100-40GB").and_then(|p| p.mig).expect("a100");
        assert_eq!(a100.gpu_instance_id(8, 0), 0);
        assert_eq!(a100.gpu_instance_id(4, 4), 2);
        assert_eq!(a100.gpu_instance_id(2, 0), 3);
        assert_eq!(a100.gpu_instance_id(1, 6), 13);
        let a30 = product("A30").and_then(|p| p.mig).expect("a30");
        assert_eq!(a30.gpu_instance_id(1, 0), 3);
    }
}
