//! The `smi:PATH` backend: reads the text `nvidia-smi -L` printed on some host.
//!
//! This is for planning offline from what a user can paste; NVML is the source of truth on a
//! live machine. The text gives names, UUIDs and MIG profiles only, so memory and SM counts come
//! from the product and profile tables (`products`), GPU/compute instance ids only from legacy
//! names, and a GPU without MIG lines is taken as MIG disabled. The host is named after the file.
//!
//! Text no `nvidia-smi` could print is refused at its line: more GPUs than `limits` allows, a
//! GPU index or a name twice, two `Device N` of one number on a GPU, more MIG devices or GPU instances than the
//! GPU holds, a legacy MIG name under another GPU. Lines may end in `\n`, `\r\n` or `\r`, and a
//! byte-order mark is ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::snapshot::{HostTopology, MigInstance, PhysicalGpu, Snapshot, check_hostname, check_text};
use crate::text::{self, read_text};
use crate::{DeviceId, TopologyError, TopologySource, limits, products};

/// A topology read from `nvidia-smi -L` text.
#[derive(Debug, Clone)]
pub struct SmiSource {
    path: PathBuf,
}

impl SmiSource {
    /// Reads the file at `path` when a snapshot is asked for.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

#[async_trait]
impl TopologySource for SmiSource {
    fn describe(&self) -> String {
        format!("smi:{}", self.path.display())
    }

    async fn snapshot(&self) -> Result<Snapshot, TopologyError> {
        let text = read_text(&self.path, limits::MAX_INPUT_BYTES)?;
        let hostname = self.path.file_stem().map_or("smi".into(), |s| s.to_string_lossy().into_owned());
        check_hostname(&hostname).map_err(|reason| TopologyError::InvalidSnapshot {
            host: hostname.clone(),
            reason: format!("{reason}; the host is named after the file, so rename the file"),
        })?;
        let host = parse(&text, &self.path, &hostname)?;
        host.validate()?;
        Ok(Snapshot { hosts: vec![host] })
    }
}

/// Parses `nvidia-smi -L` output into one host.
///
/// # Errors
/// [`TopologyError::SmiText`] naming the first line that is not what `nvidia-smi -L` prints, or
/// that contradicts the lines before it.
pub fn parse(text: &str, path: &Path, hostname: &str) -> Result<HostTopology, TopologyError> {
    let mut gpus: Vec<PhysicalGpu> = Vec::new();
    let mut first_seen: HashMap<DeviceId, usize> = HashMap::new();
    let mut indices: HashMap<u32, usize> = HashMap::new();
    let mut layout = Layout::default();
    let mut last_line = 0;
    for (number, line) in text::lines(text).enumerate() {
        last_line = number + 1;
        let err = |message: &str| TopologyError::SmiText {
            path: path.to_owned(),
            line: number + 1,
            text: line.to_owned(),
            message: message.to_owned(),
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let uuid = if let Some(rest) = trimmed.strip_prefix("GPU ") {
            if gpus.len() == limits::MAX_GPUS_PER_HOST {
                return Err(err(&format!(
                    "GPU {} is one too many: gpucluster accepts at most {} GPUs on one host (limits::MAX_GPUS_PER_HOST), \
                     more than any real host has",
                    limits::MAX_GPUS_PER_HOST + 1,
                    limits::MAX_GPUS_PER_HOST
                )));
            }
            let gpu = parse_gpu(rest).map_err(|m| err(&m))?;
            if let Some(first) = indices.insert(gpu.index, number + 1) {
                return Err(err(&format!("GPU {} was already listed on line {first}", gpu.index)));
            }
            layout = Layout::default();
            let uuid = gpu.uuid.clone();
            gpus.push(gpu);
            uuid
        } else if let Some(rest) = trimmed.strip_prefix("MIG ") {
            let gpu = gpus.last_mut().ok_or_else(|| err("a MIG line must follow the line of its GPU"))?;
            let instance = parse_mig(rest, gpu, &mut layout).map_err(|m| err(&m))?;
            let uuid = instance.uuid.clone();
            gpu.mig_enabled = true;
            gpu.mig_instances.push(instance);
            uuid
        } else {
            return Err(err(
                "expected `GPU <index>: <name> (UUID: GPU-...)` or `  MIG <profile> Device <n>: (UUID: MIG-...)`",
            ));
        };
        if let Some(first) = first_seen.insert(uuid.clone(), number + 1) {
            return Err(err(&format!("`{uuid}` was already listed on line {first}; each device appears once")));
        }
    }
    if gpus.is_empty() {
        return Err(TopologyError::SmiText {
            path: path.to_owned(),
            line: last_line.max(1),
            text: String::new(),
            message: "no `GPU <index>: ...` line found; is this the output of `nvidia-smi -L`?".into(),
        });
    }
    Ok(HostTopology { hostname: hostname.to_owned(), driver_version: None, gpus, peers: Vec::new() })
}

/// What the MIG lines so far take of their GPU, to refuse more than it holds.
#[derive(Debug, Default)]
struct Layout {
    slots: Vec<u32>,
    per_profile: HashMap<&'static str, u32>,
    memory_slices: u32,
    compute_slices: u32,
}

/// `(UUID: X)` at the end of a line -> (what comes before, X).
fn split_uuid(text: &str) -> Result<(&str, DeviceId), String> {
    let (head, tail) = text
        .rsplit_once("(UUID:")
        .ok_or_else(|| "expected the device's `(UUID: ...)` at the end of the line".to_owned())?;
    let uuid = tail.trim().strip_suffix(')').ok_or_else(|| "expected `)` after the UUID".to_owned())?;
    Ok((head.trim(), uuid.trim().parse().map_err(|e: crate::ids::IdError| e.to_string())?))
}

fn parse_gpu(rest: &str) -> Result<PhysicalGpu, String> {
    let (index, rest) = rest.split_once(':').ok_or("expected `GPU <index>: <name> (UUID: GPU-...)`")?;
    let index: u32 = index.trim().parse().map_err(|_| format!("`{}` is not a GPU index", index.trim()))?;
    let (name, uuid) = split_uuid(rest)?;
    if uuid.is_mig() {
        return Err(format!("a GPU line must carry a GPU-<uuid>, not `{uuid}`"));
    }
    if name.is_empty() {
        return Err("the GPU's name is missing".into());
    }
    check_text("the GPU's name", name, limits::MAX_NAME_BYTES)?;
    let product = products::product(name);
    Ok(PhysicalGpu {
        index,
        uuid,
        name: name.to_owned(),
        memory_bytes: product.map(|p| p.memory_mib << 20),
        sm_count: product.map(|p| p.sm_count),
        pci_bus_id: None,
        numa_node: None,
        cpu_affinity: None,
        mig_supported: product.is_some_and(|p| p.mig.is_some()),
        mig_enabled: false,
        mig_pending: None,
        mig_instances: Vec::new(),
    })
}

fn parse_mig(rest: &str, gpu: &PhysicalGpu, layout: &mut Layout) -> Result<MigInstance, String> {
    let (profile, rest) = rest.split_once(" Device ").ok_or("expected `MIG <profile> Device <n>: (UUID: MIG-...)`")?;
    let profile = profile.trim();
    let (slot, rest) = rest.split_once(':').ok_or("expected `Device <n>:`")?;
    let slot: u32 = slot.trim().parse().map_err(|_| format!("`{}` is not a MIG device number", slot.trim()))?;
    let (before, uuid) = split_uuid(rest)?;
    if !before.is_empty() {
        return Err(format!("unexpected `{before}` before the UUID"));
    }
    if !uuid.is_mig() {
        return Err(format!("a MIG line must carry a MIG-<uuid>, not `{uuid}`"));
    }
    let product = products::product(&gpu.name).ok_or_else(|| {
        format!(
            "`{}` is not a product gpucluster knows, so the memory of its {profile} instances is unknown; \
             known products: {} (or describe the host in a file: fixture)",
            gpu.name,
            products::product_names().join(", ")
        )
    })?;
    let geometry = product.mig.ok_or_else(|| format!("{} does not support MIG", product.name))?;
    let device = geometry.device_profile(profile).ok_or_else(|| {
        format!(
            "{} has no MIG profile `{profile}`; its profiles are: {}",
            product.name,
            geometry.profile_names().join(", ")
        )
    })?;
    let (gpu_instance_id, compute_instance_id) = match &uuid {
        DeviceId::LegacyMig { gpu: parent, gpu_instance, compute_instance } => {
            if DeviceId::Gpu(parent.clone()) != gpu.uuid {
                return Err(format!(
                    "`{uuid}` names GPU-{parent} as its GPU, but it is listed under GPU {} ({})",
                    gpu.index, gpu.uuid
                ));
            }
            (Some(*gpu_instance), Some(*compute_instance))
        }
        _ => (None, None),
    };
    if layout.slots.contains(&slot) {
        return Err(format!("GPU {} already has a MIG `Device {slot}`; each device number appears once", gpu.index));
    }
    if slot >= geometry.max_devices {
        return Err(format!(
            "`Device {slot}` is past the last MIG device of one {} (Device {})",
            product.name,
            geometry.max_devices - 1
        ));
    }
    layout.slots.push(slot);
    // A whole GPU instance takes its slices; compute instances of a shared GPU instance (`1c.3g...`)
    // cannot be placed from this text (no GPU instance ids), so only their count is bounded.
    let gi = device.gpu_instance;
    if device.compute_slices == gi.compute_slices {
        let count = layout.per_profile.entry(gi.name).or_default();
        *count += 1;
        layout.memory_slices += gi.memory_slices;
        layout.compute_slices += gi.compute_slices;
        if *count > gi.max_count {
            return Err(format!("one {} holds at most {} {} instance(s)", product.name, gi.max_count, gi.name));
        }
        if layout.memory_slices > geometry.memory_slices || layout.compute_slices > geometry.compute_slices {
            return Err(format!(
                "{profile} does not fit beside the MIG devices before it: one {} has {} memory and {} compute slices",
                product.name, geometry.memory_slices, geometry.compute_slices
            ));
        }
    }
    Ok(MigInstance {
        uuid,
        profile: profile.to_owned(),
        memory_bytes: device.gpu_instance.memory_mib << 20,
        sm_count: Some(device.sm_count()),
        gpu_instance_id,
        compute_instance_id,
        slot: Some(slot),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> Result<HostTopology, TopologyError> {
        parse(text, Path::new("node.txt"), "node")
    }

    #[test]
    fn rapids_guide_example() {
        let text = "GPU 0: NVIDIA A100-PCIE-40GB (UUID: GPU-84fd49f2-48ad-50e8-9f2e-3bf0dfd47ccb)\n  \
                    MIG 2g.10gb     Device  0: (UUID: MIG-41b3359c-e721-56e5-8009-12e5797ed514)\n  \
                    MIG 2g.10gb     Device  1: (UUID: MIG-65b79fff-6d3c-5490-a288-b31ec705f310)\n  \
                    MIG 2g.10gb     Device  2: (UUID: MIG-c6e2bae8-46d4-5a7e-9a68-c6cf1f680ba0)\n";
        let h = host(text).expect("parse");
        assert_eq!(h.gpus.len(), 1);
        let g = &h.gpus[0];
        assert!(g.mig_enabled);
        assert_eq!(g.memory_bytes, Some(40960 << 20));
        assert_eq!(g.mig_instances.len(), 3);
        assert_eq!(g.mig_instances[2].slot, Some(2));
        assert_eq!(g.mig_instances[2].memory_bytes, 9856 << 20);
        assert_eq!(g.mig_instances[2].sm_count, Some(28));
        assert_eq!(g.mig_instances[2].gpu_instance_id, None);
    }

    #[test]
    fn h100_h200_legacy_and_mixed_gpus() {
        let text = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-2222-3333-4444-555555555555)\r\n\
                    \x20 MIG 1c.3g.40gb  Device  0: (UUID: MIG-c788f2ec-4b8a-5a62-8b0e-a8a6c6a3d0f1)\r\n\
                    \x20 MIG 3g.40gb     Device  1: (UUID: MIG-d788f2ec-4b8a-5a62-8b0e-a8a6c6a3d0f1)\r\n\
                    GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-66666666-7777-8888-9999-000000000000)\r\n\
                    GPU 2: NVIDIA H200 (UUID: GPU-76666666-7777-8888-9999-000000000000)\n\
                    \x20 MIG 1g.18gb Device 0: (UUID: MIG-e788f2ec-4b8a-5a62-8b0e-a8a6c6a3d0f1)\n\
                    \n\
                    GPU 3: A100-SXM4-40GB (UUID: GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2)\n\
                    \x20 MIG 3g.20gb Device 0: (UUID: MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2/1/0)\n";
        let h = host(text).expect("parse");
        assert_eq!(h.gpus.len(), 4);
        assert_eq!(h.gpus[0].mig_instances[0].sm_count, Some(20), "1c of a 3g gets a third of its SMs");
        assert_eq!(h.gpus[0].mig_instances[0].memory_bytes, 40448 << 20);
        assert!(!h.gpus[1].mig_enabled && h.gpus[1].is_compute_device());
        assert_eq!(h.gpus[2].mig_instances[0].memory_bytes, 16384 << 20);
        let legacy = &h.gpus[3].mig_instances[0];
        assert_eq!((legacy.gpu_instance_id, legacy.compute_instance_id), (Some(1), Some(0)));
        h.validate().expect("valid");
    }

    #[test]
    fn unknown_product_without_mig_is_fine_with_it_is_not() {
        let ok =
            host("GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-11111111-2222-3333-4444-555555555555)\n").expect("parse");
        assert_eq!(ok.gpus[0].memory_bytes, None);
        let err = host(
            "GPU 0: NVIDIA B300 (UUID: GPU-11111111-2222-3333-4444-555555555555)\n  \
             MIG 1g.23gb Device 0: (UUID: MIG-c788f2ec-4b8a-5a62-8b0e-a8a6c6a3d0f1)\n",
        )
        .expect_err("unknown product");
        assert!(err.to_string().contains("node.txt:2:"), "{err}");
        assert!(err.to_string().contains("not a product gpucluster knows"), "{err}");
    }

    #[test]
    fn errors_name_the_line_and_what_was_expected() {
        for (text, line, expected) in [
            ("hello\n", 1, "expected `GPU <index>"),
            ("  MIG 1g.5gb Device 0: (UUID: MIG-c788f2ec-4b8a-5a62-8b0e-a8a6c6a3d0f1)\n", 1, "must follow"),
            ("GPU x: A100-SXM4-40GB (UUID: GPU-11111111-2222-3333-4444-555555555555)\n", 1, "not a GPU index"),
            ("GPU 0: A100-SXM4-40GB (UUID: GPU-1111)\n", 1, "8-4-4-4-12"),
            ("GPU 0: A100-SXM4-40GB\n", 1, "(UUID: ...)"),
            (
                "GPU 0: A100-SXM4-40GB (UUID: GPU-11111111-2222-3333-4444-555555555555)\n  MIG 9g.99gb Device 0: (UUID: MIG-c788f2ec-4b8a-5a62-8b0e-a8a6c6a3d0f1)\n",
                2,
                "no MIG profile `9g.99gb`",
            ),
            (
                "GPU 0: A100-SXM4-40GB (UUID: GPU-11111111-2222-3333-4444-555555555555)\n  MIG 1g.5gb Device 0: (UUID: GPU-c788f2ec-4b8a-5a62-8b0e-a8a6c6a3d0f1)\n",
                2,
                "must carry a MIG-<uuid>",
            ),
            ("\n\n", 2, "no `GPU <index>: ...` line"),
        ] {
            let err = host(text).expect_err(text);
            let msg = err.to_string();
            assert!(msg.contains(&format!("node.txt:{line}:")), "{text}: {msg}");
            assert!(msg.contains(expected), "{text}: {msg}");
        }
    }

    const A100: &str = "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-11111111-2222-3333-4444-555555555555)";

    fn mig_line(profile: &str, device: u32, uuid: &str) -> String {
        format!("  MIG {profile} Device {device}: (UUID: {uuid})")
    }

    fn mig_uuid(i: u32) -> String {
        format!("MIG-{i:08x}-2222-3333-4444-555555555555")
    }

    /// Text no `nvidia-smi -L` could print: each refused at its line, saying what is wrong.
    #[test]
    fn contradictory_text_is_refused_at_its_line() {
        let twenty: Vec<String> = (0..20).map(|i| mig_line("7g.40gb", i, &mig_uuid(i))).collect();
        let many: Vec<String> = (0..207).map(|i| mig_line("1g.5gb", i, &mig_uuid(i))).collect();
        for (lines, line, expected) in [
            (
                vec![A100.to_owned(), mig_line("1g.5gb", 0, &mig_uuid(0)), mig_line("1g.5gb", 0, &mig_uuid(1))],
                3,
                "already has a MIG `Device 0`",
            ),
            (
                vec![A100.to_owned(), mig_line("1g.5gb", 0, &mig_uuid(0)), mig_line("1g.5gb", 1, &mig_uuid(0))],
                3,
                "was already listed on line 2",
            ),
            (std::iter::once(A100.to_owned()).chain(twenty).collect(), 3, "holds at most 1 7g.40gb"),
            (std::iter::once(A100.to_owned()).chain(many).collect(), 9, "past the last MIG device"),
            (
                vec![A100.to_owned(), mig_line("3g.20gb", 0, "MIG-GPU-99999999-2222-3333-4444-555555555555/1/0")],
                2,
                "but it is listed under GPU 0",
            ),
            (vec![A100.to_owned(), A100.replace("GPU 0", "GPU 1")], 2, "was already listed on line 1"),
            (vec![A100.to_owned(), A100.replace("1111", "9999")], 2, "GPU 0 was already listed on line 1"),
            (
                vec!["GPU 0: A100\u{1b}[2J (UUID: GPU-11111111-2222-3333-4444-555555555555)".to_owned()],
                1,
                "control character",
            ),
        ] {
            let text = lines.join("\n");
            let msg = host(&text).expect_err(&text).to_string();
            assert!(msg.contains(&format!("node.txt:{line}:")), "{msg}");
            assert!(msg.contains(expected), "{msg}");
        }
    }

    #[test]
    fn more_gpus_than_any_host_has_stop_at_the_first_one_too_many() {
        let text: String = (0..100_000)
            .map(|i| format!("GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:08x}-2222-3333-4444-555555555555)\n"))
            .collect();
        let msg = host(&text).expect_err("too many").to_string();
        assert!(msg.contains("node.txt:257:") && msg.contains("at most 256 GPUs on one host"), "{msg}");
    }

    #[test]
    fn cr_only_line_ends_read_like_any_others() {
        let text = format!("{A100}\r{}\r", mig_line("3g.20gb", 0, &mig_uuid(0)));
        assert_eq!(host(&text).expect("CR-only").gpus[0].mig_instances.len(), 1);
    }

    fn read(bytes: &[u8]) -> Result<Snapshot, TopologyError> {
        let dir = std::env::temp_dir().join(format!("gpu-topology-smi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(format!("host-{}.txt", bytes.len()));
        std::fs::write(&path, bytes).expect("write");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        let result = rt.block_on(SmiSource::new(&path).snapshot());
        let _ = std::fs::remove_file(&path);
        result
    }

    #[test]
    fn byte_order_marks_utf16_binary_and_endless_files() {
        let bom = [b"\xef\xbb\xbf".as_slice(), A100.as_bytes()].concat();
        assert_eq!(read(&bom).expect("UTF-8 with a BOM").hosts[0].gpus.len(), 1);
        let utf16: Vec<u8> = [0xff, 0xfe].into_iter().chain(A100.encode_utf16().flat_map(u16::to_le_bytes)).collect();
        assert!(read(&utf16).expect_err("UTF-16").to_string().contains("UTF-16"));
        assert!(read(b"\x7fELF\x02\x01\0\0").expect_err("binary").to_string().contains("NUL byte"));
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        let err = rt.block_on(SmiSource::new("/dev/zero").snapshot()).expect_err("endless");
        assert!(matches!(err, TopologyError::TooLarge { limit, .. } if limit == limits::MAX_INPUT_BYTES), "{err}");
    }

    /// The parser against text built from what `nvidia-smi -L` prints and what it never does:
    /// it must not panic, and whatever it accepts must be valid and read back the same, both
    /// printed again as `nvidia-smi -L` text and as a snapshot.
    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn name() -> impl Strategy<Value = String> {
            let mut names: Vec<String> = products::PRODUCTS
                .iter()
                .flat_map(|p| std::iter::once(p.name).chain(p.aliases.iter().copied()))
                .map(str::to_owned)
                .collect();
            names
                .extend(["NVIDIA GeForce RTX 4090", "X".repeat(300).as_str(), "A100\u{1b}[2J", " "].map(str::to_owned));
            proptest::sample::select(names)
        }

        fn profile() -> impl Strategy<Value = String> {
            let mut profiles: Vec<String> = products::PRODUCTS
                .iter()
                .filter_map(|p| p.mig)
                .flat_map(|g| g.profile_names())
                .map(str::to_owned)
                .collect();
            profiles.extend(["1c.3g.40gb", "2c.4g.20gb", "9g.99gb", ""].map(str::to_owned));
            proptest::sample::select(profiles)
        }

        /// UUIDs from a small pool, so that some repeat.
        fn uuid() -> impl Strategy<Value = String> {
            (0u8..64).prop_map(|i| format!("{i:08x}-2222-3333-4444-555555555555"))
        }

        /// A GPU line and its MIG lines: mostly what a real GPU shows, sometimes not.
        fn block() -> impl Strategy<Value = Vec<String>> {
            (0u32..4, name(), uuid()).prop_flat_map(|(index, name, gpu)| {
                let own: Vec<String> = products::product(&name)
                    .and_then(|p| p.mig)
                    .map(|g| g.profile_names().into_iter().map(str::to_owned).collect())
                    .unwrap_or_else(|| vec!["1g.10gb".to_owned()]);
                let profile = prop_oneof![6 => proptest::sample::select(own), 1 => profile()];
                let mig = (profile, 0u32..8, uuid(), 0u32..15, 0u32..3, 0u8..8).prop_map({
                    let gpu = gpu.clone();
                    move |(p, d, u, gi, ci, legacy)| match legacy {
                        0 => format!("  MIG {p} Device {d}: (UUID: MIG-GPU-{gpu}/{gi}/{ci})"),
                        _ => format!("  MIG {p} Device {d}: (UUID: MIG-{u})"),
                    }
                });
                let head = format!("GPU {index}: {name} (UUID: GPU-{gpu})");
                proptest::collection::vec(mig, 0..4)
                    .prop_map(move |migs| std::iter::once(head.clone()).chain(migs).collect::<Vec<_>>())
            })
        }

        fn line() -> impl Strategy<Value = String> {
            prop_oneof![
                2 => (0u32..300, name(), uuid()).prop_map(|(i, n, u)| format!("GPU {i}: {n} (UUID: GPU-{u})")),
                2 => (profile(), 0u32..9, uuid()).prop_map(|(p, d, u)| format!("  MIG {p} Device {d}: (UUID: MIG-{u})")),
                1 => ".{0,60}",
                1 => Just(String::new()),
            ]
        }

        fn render(host: &HostTopology) -> String {
            let mut text = String::new();
            for gpu in &host.gpus {
                text.push_str(&format!("GPU {}: {} (UUID: {})\n", gpu.index, gpu.name, gpu.uuid));
                for m in &gpu.mig_instances {
                    let slot = m.slot.expect("nvidia-smi text always numbers MIG devices");
                    text.push_str(&format!("  MIG {} Device {slot}: (UUID: {})\n", m.profile, m.uuid));
                }
            }
            text
        }

        proptest! {
            #[test]
            fn accepted_text_is_valid_and_reads_back_the_same(
                blocks in proptest::collection::vec(block(), 0..5),
                odd in proptest::option::weighted(0.2, (0usize..20, line())),
                end in proptest::sample::select(vec!["\n", "\r\n", "\r"]),
            ) {
                let mut lines: Vec<String> = blocks.concat();
                if let Some((at, line)) = odd {
                    lines.insert(at.min(lines.len()), line);
                }
                let text = lines.join(end);
                if let Ok(host) = host(&text) {
                    prop_assert!(host.validate().is_ok(), "{:?}", host.validate());
                    prop_assert_eq!(&super::host(&render(&host)).expect("printed again"), &host);
                    let snapshot = Snapshot { hosts: vec![host] };
                    let json = serde_json::to_string(&snapshot).expect("json");
                    let again = crate::snapshot_from_json(&json, Path::new("again.json")).expect("reads back");
                    prop_assert_eq!(again, snapshot);
                }
            }

            #[test]
            fn no_bytes_make_the_reader_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                if let Ok(text) = crate::text::decode(bytes) {
                    let _ = host(&text);
                }
            }
        }
    }
}
