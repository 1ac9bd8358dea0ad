//! The TOML fixture format of the simulated backend, parsed and resolved into a [`Machine`].
//!
//! The format is documented with examples in `docs/fixtures.md`; the presets in
//! `presets/*.toml` are written in it. Resolution places every MIG instance the way the
//! driver would (memory slices aligned to the profile's size, compute slices within the
//! product's seven or four) and rejects layouts no GPU could hold, pointing at the line.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;

use crate::cpulist::CpuListError;
use crate::products::{self, DeviceProfile, MigGeometry, Product, Profile};
use crate::snapshot::{check_driver_version, check_hostname, check_text};
use crate::text::{escape_controls, printable};
use crate::{DeviceId, TopologyError, limits};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFixture {
    #[serde(default)]
    description: Option<toml::Spanned<String>>,
    hostname: toml::Spanned<String>,
    #[serde(default = "default_driver")]
    driver_version: toml::Spanned<String>,
    #[serde(default = "default_cpus")]
    cpus: toml::Spanned<u32>,
    #[serde(default = "default_numa_nodes")]
    numa_nodes: toml::Spanned<u32>,
    #[serde(rename = "gpu", default)]
    gpus: Vec<toml::Spanned<RawGpu>>,
    #[serde(default)]
    nvlink: Vec<toml::Spanned<RawNvlink>>,
    #[serde(default)]
    pcie: RawPcie,
    #[serde(default)]
    faults: Faults,
}

// Defaults carry an empty span at 0: errors about them name the file without a line.
fn default_driver() -> toml::Spanned<String> {
    toml::Spanned::new(0..0, "580.159.04".to_owned())
}
fn default_cpus() -> toml::Spanned<u32> {
    toml::Spanned::new(0..0, 64)
}
fn default_numa_nodes() -> toml::Spanned<u32> {
    toml::Spanned::new(0..0, 2)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpu {
    product: String,
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    mig: Option<Vec<String>>,
    #[serde(default)]
    mig_enabled: Option<bool>,
    #[serde(default)]
    mig_pending: Option<bool>,
    #[serde(default)]
    numa_node: Option<u32>,
    #[serde(default)]
    cpu_affinity: Option<String>,
    #[serde(default)]
    uuid: Option<DeviceId>,
    #[serde(rename = "instance", default)]
    instances: Vec<toml::Spanned<RawInstance>>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    profile: String,
    #[serde(default)]
    memory_mib: Option<u64>,
    #[serde(default)]
    slot: Option<u32>,
    #[serde(default)]
    uuid: Option<DeviceId>,
    #[serde(default)]
    compute_instance_id: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNvlink {
    #[serde(default)]
    gpus: Option<Vec<u32>>,
    links: u32,
    #[serde(default)]
    switch: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPcie {
    #[serde(default)]
    p2p: bool,
}

/// What the simulated NVML gets wrong on purpose.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// `libnvidia-ml.so.1` cannot be loaded.
    #[serde(default)]
    pub nvml_missing: bool,
    /// Parent GPUs of MIG instances answer `NoPermission` for their memory, as in a container.
    #[serde(default)]
    pub parent_memory_no_permission: bool,
    /// MIG handles answer `NoPermission`, as without `NVIDIA_MIG_MONITOR_DEVICES=all`.
    #[serde(default)]
    pub mig_no_permission: bool,
    /// GPUs (by index) that answer `GpuIsLost`.
    #[serde(default)]
    pub lost_gpus: Vec<u32>,
}

/// A simulated host, resolved and checked.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) description: Option<String>,
    pub(crate) hostname: String,
    pub(crate) driver_version: String,
    pub(crate) gpus: Vec<SimGpu>,
    pub(crate) nvlinks: Vec<NvlinkGroup>,
    /// For each ordered pair of GPUs (`from * count + to`), the first NVLink group holding both:
    /// discovery asks about every pair, so this is looked up, not searched.
    pub(crate) link_of: Vec<Option<u32>>,
    /// For each GPU, whether it answers `GpuIsLost`.
    pub(crate) lost: Vec<bool>,
    pub(crate) pcie_p2p: bool,
    pub(crate) faults: Faults,
}

#[derive(Debug, Clone)]
pub(crate) struct SimGpu {
    pub(crate) product: &'static Product,
    pub(crate) uuid: DeviceId,
    pub(crate) mig_supported: bool,
    pub(crate) mig_enabled: bool,
    pub(crate) mig_pending: bool,
    pub(crate) numa_node: u32,
    pub(crate) cpus: Vec<u32>,
    pub(crate) instances: Vec<SimInstance>,
}

#[derive(Debug, Clone)]
pub(crate) struct SimInstance {
    pub(crate) slot: u32,
    pub(crate) uuid: DeviceId,
    pub(crate) profile: String,
    pub(crate) memory_mib: u64,
    pub(crate) sm_count: u32,
    pub(crate) gpu_instance_slices: u32,
    pub(crate) compute_instance_slices: u32,
    pub(crate) gpu_instance_id: u32,
    pub(crate) compute_instance_id: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct NvlinkGroup {
    pub(crate) gpus: Vec<u32>,
    pub(crate) links: u32,
    pub(crate) switch: bool,
}

/// Parses and resolves a fixture. `path` is only used in error messages.
///
/// Every bound of `limits` is checked before anything of that size is built, so a fixture
/// asking for four billion GPUs or CPUs costs nothing but its error.
pub(crate) fn parse(text: &str, path: &Path) -> Result<Machine, TopologyError> {
    if text.len() as u64 > limits::MAX_FIXTURE_BYTES {
        return Err(TopologyError::TooLarge { path: path.to_owned(), limit: limits::MAX_FIXTURE_BYTES });
    }
    let raw: RawFixture = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_column(text, s.start)).unzip();
        let message = escape_controls(e.message().trim()).into_owned();
        TopologyError::Fixture { path: path.to_owned(), line, column, message }
    })?;
    resolve(raw, text, path)
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.chars().count(), |nl| before[nl + 1..].chars().count()) + 1;
    (line, column)
}

/// Turns byte spans of the fixture into the line and column of its errors.
struct Locator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Locator<'_> {
    /// An error at `span`; defaults have an empty span at 0, and there is no line to point at.
    fn at(&self, span: Range<usize>, message: String) -> TopologyError {
        let (line, column) = if span == (0..0) {
            (None, None)
        } else {
            let (line, column) = line_column(self.text, span.start);
            (Some(line), Some(column))
        };
        TopologyError::Fixture { path: self.path.to_owned(), line, column, message }
    }

    /// An error about the whole fixture, with no line.
    fn whole(&self, message: String) -> TopologyError {
        TopologyError::Fixture { path: self.path.to_owned(), line: None, column: None, message }
    }
}

/// The host-wide facts of a fixture, checked.
struct Host {
    hostname: String,
    driver_version: String,
    cpus: u32,
    numa_nodes: u32,
    /// The driver names MIG devices `MIG-GPU-<uuid>/<gi>/<ci>`.
    legacy: bool,
}

/// The device names given so far and the line of each, so that no name is given twice.
#[derive(Default)]
struct Names(HashMap<DeviceId, usize>);

impl Names {
    fn once(&mut self, id: &DeviceId, span: Range<usize>, loc: &Locator<'_>) -> Result<(), TopologyError> {
        let line = line_column(loc.text, span.start).0;
        match self.0.insert(id.clone(), line) {
            Some(first) => Err(loc.at(
                span,
                format!("`{id}` is already the name of the device on line {first}; each device has its own UUID"),
            )),
            None => Ok(()),
        }
    }
}

fn resolve(raw: RawFixture, text: &str, path: &Path) -> Result<Machine, TopologyError> {
    let loc = Locator { text, path };
    let host = resolve_host(&raw, &loc)?;
    let total = count_gpus(&raw.gpus, &loc)?;
    let mut names = Names::default();
    let mut gpus = Vec::new();
    for spanned in &raw.gpus {
        resolve_gpu_entry(spanned, &host, total, &mut names, &loc, &mut gpus)?;
    }
    let nvlinks = resolve_nvlinks(&raw.nvlink, total, &loc)?;
    let link_of = link_table(&nvlinks, total as usize);
    let lost = lost_gpus(&raw.faults, total, &loc)?;
    Ok(Machine {
        description: raw.description.map(toml::Spanned::into_inner),
        hostname: host.hostname,
        driver_version: host.driver_version,
        gpus,
        nvlinks,
        link_of,
        lost,
        pcie_p2p: raw.pcie.p2p,
        faults: raw.faults,
    })
}

/// The description, host name, driver, CPUs and NUMA nodes, each within its bounds.
fn resolve_host(raw: &RawFixture, loc: &Locator<'_>) -> Result<Host, TopologyError> {
    if let Some(description) = &raw.description {
        check_text("`description`", description.get_ref(), limits::MAX_NAME_BYTES)
            .map_err(|m| loc.at(description.span(), m))?;
    }
    let hostname = raw.hostname.get_ref().clone();
    check_hostname(&hostname).map_err(|m| loc.at(raw.hostname.span(), format!("`hostname`: {m}")))?;
    let driver_version = raw.driver_version.get_ref().clone();
    check_driver_version(&driver_version).map_err(|m| loc.at(raw.driver_version.span(), m))?;
    let (cpus, numa_nodes) = (*raw.cpus.get_ref(), *raw.numa_nodes.get_ref());
    if !(1..=limits::MAX_NUMA_NODES).contains(&numa_nodes) {
        return Err(loc.at(
            raw.numa_nodes.span(),
            format!("`numa_nodes = {numa_nodes}`: give 1 to {} (limits::MAX_NUMA_NODES)", limits::MAX_NUMA_NODES),
        ));
    }
    if !(numa_nodes..=limits::MAX_CPUS).contains(&cpus) {
        return Err(loc.at(
            raw.cpus.span(),
            format!(
                "`cpus = {cpus}`: give at least `numa_nodes` ({numa_nodes}) and at most {} (limits::MAX_CPUS)",
                limits::MAX_CPUS
            ),
        ));
    }
    let legacy = crate::driver_uses_legacy_mig_names(&driver_version);
    Ok(Host { hostname, driver_version, cpus, numa_nodes, legacy })
}

/// The number of GPUs the fixture asks for, counted before anything is built, in u64 so that
/// no count can overflow the sum; at most `limits::MAX_GPUS_PER_HOST`.
fn count_gpus(gpus: &[toml::Spanned<RawGpu>], loc: &Locator<'_>) -> Result<u32, TopologyError> {
    let mut total: u64 = 0;
    for spanned in gpus {
        let count = spanned.get_ref().count;
        if count == 0 {
            return Err(loc.at(spanned.span(), "`count` must be at least 1".into()));
        }
        total += u64::from(count);
        if total > limits::MAX_GPUS_PER_HOST as u64 {
            return Err(loc.at(
                spanned.span(),
                format!(
                    "the fixture now has {total} GPUs; gpucluster accepts at most {} GPUs on one host \
                     (limits::MAX_GPUS_PER_HOST), more than any real host has",
                    limits::MAX_GPUS_PER_HOST
                ),
            ));
        }
    }
    // At most MAX_GPUS_PER_HOST, checked above.
    Ok(total as u32)
}

/// One `[[gpu]]` entry: checked once, then its `count` copies pushed onto `gpus`, each with its
/// index, name, NUMA node, CPUs and MIG instances.
fn resolve_gpu_entry(
    spanned: &toml::Spanned<RawGpu>,
    host: &Host,
    total: u32,
    names: &mut Names,
    loc: &Locator<'_>,
    gpus: &mut Vec<SimGpu>,
) -> Result<(), TopologyError> {
    let span = spanned.span();
    let g = spanned.get_ref();
    let product = products::product(&g.product).ok_or_else(|| {
        loc.at(
            span.clone(),
            format!(
                "unknown product `{}`; known products: {}",
                printable(&g.product),
                products::product_names().join(", ")
            ),
        )
    })?;
    if g.uuid.is_some() && g.count > 1 {
        return Err(loc.at(span, "`uuid` names one GPU; remove it or set `count = 1`".into()));
    }
    if let Some(uuid) = &g.uuid {
        if uuid.is_mig() {
            return Err(loc.at(span, format!("`uuid = \"{uuid}\"` is a MIG name; a GPU is named GPU-<uuid>")));
        }
        names.once(uuid, span.clone(), loc)?;
    }
    let wants_mig = g.mig.as_ref().is_some_and(|m| !m.is_empty()) || !g.instances.is_empty();
    let mig_enabled = g.mig_enabled.unwrap_or(wants_mig || g.mig.is_some());
    let geometry = match (product.mig, mig_enabled) {
        (Some(geometry), _) => Some(geometry),
        (None, false) => None,
        (None, true) => return Err(loc.at(span, format!("{} does not support MIG", product.name))),
    };
    if wants_mig && !mig_enabled {
        return Err(loc.at(span, "MIG instances are listed but `mig_enabled = false`".into()));
    }
    let most = geometry.map_or(0, |g| g.max_devices);
    let profiles = expand_profiles(g.mig.as_deref().unwrap_or_default(), g.instances.len(), most)
        .map_err(|m| loc.at(span.clone(), m))?;
    check_explicit_instances(g, span.clone(), product, names, loc)?;
    let cpulist = match &g.cpu_affinity {
        Some(list) => Some(parse_cpulist(list, host.cpus).map_err(|m| loc.at(span.clone(), m))?),
        None => None,
    };
    for copy in 0..g.count {
        let index = gpus.len() as u32;
        let uuid = g.uuid.clone().unwrap_or_else(|| DeviceId::Gpu(fake_uuid(&host.hostname, index, None)));
        let DeviceId::Gpu(gpu_uuid) = &uuid else { unreachable!("checked above that `uuid` is a GPU name") };
        let numa_node = g.numa_node.unwrap_or(index * host.numa_nodes / total.max(1));
        if numa_node >= host.numa_nodes {
            return Err(
                loc.at(span, format!("`numa_node = {numa_node}` but the host has {} NUMA nodes", host.numa_nodes))
            );
        }
        let cpus = cpulist.clone().unwrap_or_else(|| node_cpus(host, numa_node));
        let instances = match geometry.filter(|_| mig_enabled) {
            Some(geometry) => {
                let gpu = PlacedGpu { hostname: &host.hostname, index, uuid: gpu_uuid, legacy: host.legacy };
                place(geometry, &profiles, &g.instances, &gpu)
                    .map_err(|m| loc.at(span.clone(), if g.count > 1 { format!("GPU copy {copy}: {m}") } else { m }))?
            }
            None => Vec::new(),
        };
        gpus.push(SimGpu {
            product,
            uuid,
            mig_supported: product.mig.is_some(),
            mig_enabled,
            mig_pending: g.mig_pending.unwrap_or(mig_enabled),
            numa_node,
            cpus,
            instances,
        });
    }
    Ok(())
}

/// The CPUs of NUMA node `node`: the host's CPUs split evenly between its nodes, in order.
fn node_cpus(host: &Host, node: u32) -> Vec<u32> {
    let per_node = host.cpus / host.numa_nodes;
    (node * per_node..(node + 1) * per_node).collect()
}

/// The `[[gpu.instance]]` entries of one GPU entry: names given once (and only for one GPU),
/// memory within the GPU's.
fn check_explicit_instances(
    g: &RawGpu,
    span: Range<usize>,
    product: &Product,
    names: &mut Names,
    loc: &Locator<'_>,
) -> Result<(), TopologyError> {
    for instance in &g.instances {
        let i = instance.get_ref();
        if let Some(uuid) = &i.uuid
            && g.count == 1
        {
            names.once(uuid, instance.span(), loc)?;
        }
        if let Some(mib) = i.memory_mib
            && (mib == 0 || mib > product.memory_mib)
        {
            return Err(loc.at(
                instance.span(),
                format!(
                    "`memory_mib = {mib}`: an instance reports more than 0 and at most its GPU's memory \
                     ({} MiB on a {})",
                    product.memory_mib, product.name
                ),
            ));
        }
    }
    if g.count > 1 && g.instances.iter().any(|i| i.get_ref().uuid.is_some()) {
        return Err(loc.at(span, "an instance `uuid` names one device; remove it or set `count = 1`".into()));
    }
    Ok(())
}

/// The `[[nvlink]]` groups, each naming GPUs the fixture has, members sorted and once each.
fn resolve_nvlinks(
    groups: &[toml::Spanned<RawNvlink>],
    total: u32,
    loc: &Locator<'_>,
) -> Result<Vec<NvlinkGroup>, TopologyError> {
    if let Some(extra) = groups.get(limits::MAX_GPUS_PER_HOST) {
        return Err(loc.at(
            extra.span(),
            format!(
                "more than {} `[[nvlink]]` groups, more than a host of at most that many GPUs needs",
                limits::MAX_GPUS_PER_HOST
            ),
        ));
    }
    let mut nvlinks = Vec::new();
    for spanned in groups {
        let n = spanned.get_ref();
        let mut members = n.gpus.clone().unwrap_or_else(|| (0..total).collect());
        if let Some(bad) = members.iter().find(|&&i| i >= total) {
            return Err(
                loc.at(spanned.span(), format!("NVLink group names GPU {bad}, but the fixture has {total} GPUs"))
            );
        }
        members.sort_unstable();
        members.dedup();
        nvlinks.push(NvlinkGroup { gpus: members, links: n.links, switch: n.switch });
    }
    Ok(nvlinks)
}

/// [`Machine::link_of`]: for each ordered pair of `n` GPUs, the first group holding both.
fn link_table(nvlinks: &[NvlinkGroup], n: usize) -> Vec<Option<u32>> {
    let mut link_of = vec![None; n * n];
    for (g, group) in nvlinks.iter().enumerate() {
        for &a in &group.gpus {
            for &b in &group.gpus {
                link_of[a as usize * n + b as usize].get_or_insert(g as u32);
            }
        }
    }
    link_of
}

/// [`Machine::lost`] from `faults.lost_gpus`, each of which must be one of the `total` GPUs.
fn lost_gpus(faults: &Faults, total: u32, loc: &Locator<'_>) -> Result<Vec<bool>, TopologyError> {
    let mut lost = vec![false; total as usize];
    for &gpu in &faults.lost_gpus {
        if gpu >= total {
            return Err(loc.whole(format!("faults.lost_gpus names GPU {gpu}, but the fixture has {total} GPUs")));
        }
        lost[gpu as usize] = true;
    }
    Ok(lost)
}

/// `["7x1g.5gb", "3g.20gb"]` -> seven `1g.5gb` then one `3g.20gb`. `explicit` instances come on
/// top; together they may not exceed `most`, the product's MIG devices (counted before anything
/// is expanded).
fn expand_profiles(entries: &[String], explicit: usize, most: u32) -> Result<Vec<String>, String> {
    let mut parsed = Vec::new();
    let mut total = explicit as u64;
    for entry in entries {
        let compact: String = entry.split_whitespace().collect();
        let (count, profile) = match compact.split_once('x') {
            Some((n, p)) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => {
                (n.parse::<u64>().unwrap_or(u64::MAX), p.to_owned())
            }
            _ => (1, compact),
        };
        if count == 0 {
            return Err(format!("`{}`: the count must be at least 1", printable(entry)));
        }
        total = total.saturating_add(count);
        parsed.push((count, profile));
    }
    if total > u64::from(most) {
        return Err(format!("{total} MIG instances asked for, but a GPU of this product holds at most {most}"));
    }
    // At most `most` (7) in all, checked above.
    Ok(parsed.into_iter().flat_map(|(count, profile)| std::iter::repeat_n(profile, count as usize)).collect())
}

/// The GPU whose MIG instances are being placed.
struct PlacedGpu<'a> {
    hostname: &'a str,
    index: u32,
    uuid: &'a crate::Uuid,
    /// Instances get legacy names (`MIG-GPU-<uuid>/<gi>/<ci>`).
    legacy: bool,
}

/// Places instances the way the driver does: each GPU instance takes the first free run of
/// memory slices aligned to its size, and compute slices may not exceed the product's.
fn place(
    geometry: &MigGeometry,
    profiles: &[String],
    explicit: &[toml::Spanned<RawInstance>],
    gpu: &PlacedGpu<'_>,
) -> Result<Vec<SimInstance>, String> {
    let requests: Vec<(&str, Option<&RawInstance>)> = profiles
        .iter()
        .map(|p| (p.as_str(), None))
        .chain(explicit.iter().map(|i| (i.get_ref().profile.as_str(), Some(i.get_ref()))))
        .collect();
    if requests.len() as u32 > geometry.max_devices {
        return Err(format!(
            "{} MIG instances asked for, but a GPU of this product holds at most {}",
            requests.len(),
            geometry.max_devices
        ));
    }
    let mut occupancy = Occupancy::new(geometry, explicit_slots(explicit, geometry)?);
    let mut out = Vec::new();
    for (name, explicit) in requests {
        let profile = whole_instance_profile(geometry, name)?;
        let gi = profile.gpu_instance;
        let start = occupancy.take(name, &gi)?;
        let slot = occupancy.slot(explicit.and_then(|i| i.slot));
        let gpu_instance_id = geometry.gpu_instance_id(gi.memory_slices, start);
        let compute_instance_id = explicit.and_then(|i| i.compute_instance_id).unwrap_or(0);
        let uuid = instance_name(explicit, gpu, slot, gpu_instance_id, compute_instance_id)?;
        out.push(SimInstance {
            slot,
            uuid,
            profile: name.to_owned(),
            memory_mib: explicit.and_then(|i| i.memory_mib).unwrap_or(gi.memory_mib),
            sm_count: profile.sm_count(),
            gpu_instance_slices: gi.compute_slices,
            compute_instance_slices: profile.compute_slices,
            gpu_instance_id,
            compute_instance_id,
        });
    }
    out.sort_by_key(|i| i.slot);
    Ok(out)
}

/// The slots explicit instances ask for, sorted: each once, each a slot the GPU has.
fn explicit_slots(explicit: &[toml::Spanned<RawInstance>], geometry: &MigGeometry) -> Result<Vec<u32>, String> {
    let mut slots: Vec<u32> = explicit.iter().filter_map(|i| i.get_ref().slot).collect();
    slots.sort_unstable();
    if let Some(w) = slots.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("two instances ask for slot {}", w[0]));
    }
    if let Some(&s) = slots.iter().find(|&&s| s >= geometry.max_devices) {
        return Err(format!("slot {s} is past the last MIG slot ({})", geometry.max_devices - 1));
    }
    Ok(slots)
}

/// The device profile `name` of this product, which must be a whole GPU instance (the simulator
/// does not model compute instances that split one).
fn whole_instance_profile(geometry: &MigGeometry, name: &str) -> Result<DeviceProfile, String> {
    let profile: DeviceProfile = geometry.device_profile(name).ok_or_else(|| {
        format!(
            "unknown MIG profile `{}` for this product; its profiles are: {}",
            printable(name),
            geometry.profile_names().join(", ")
        )
    })?;
    if profile.compute_slices != profile.gpu_instance.compute_slices {
        return Err(format!(
            "`{name}` splits a GPU instance into compute instances, which the simulator does not model; \
             use the GPU instance profile `{}`",
            profile.gpu_instance.name
        ));
    }
    Ok(profile)
}

/// What the instances placed so far take of one GPU: memory and compute slices, instances per
/// profile, and slots.
struct Occupancy<'g> {
    geometry: &'g MigGeometry,
    memory_used: Vec<bool>,
    compute_used: u32,
    per_profile: BTreeMap<&'static str, u32>,
    taken_slots: Vec<u32>,
    next_slot: u32,
}

impl<'g> Occupancy<'g> {
    fn new(geometry: &'g MigGeometry, taken_slots: Vec<u32>) -> Self {
        Self {
            geometry,
            memory_used: vec![false; geometry.memory_slices as usize],
            compute_used: 0,
            per_profile: BTreeMap::new(),
            taken_slots,
            next_slot: 0,
        }
    }

    /// Takes the slices of one instance of `gi` (named `name` in errors): the first free run of
    /// memory slices aligned to its size; returns the first slice.
    fn take(&mut self, name: &str, gi: &Profile) -> Result<u32, String> {
        let count = self.per_profile.entry(gi.name).or_default();
        *count += 1;
        if *count > gi.max_count {
            return Err(format!("at most {} instance(s) of {} fit on one GPU", gi.max_count, gi.name));
        }
        let used = &mut self.memory_used;
        let size = gi.memory_slices as usize;
        let start = (0..used.len())
            .step_by(size)
            .find(|&s| s + size <= used.len() && used[s..s + size].iter().all(|u| !u))
            .filter(|_| self.compute_used + gi.compute_slices <= self.geometry.compute_slices)
            .ok_or_else(|| {
                format!(
                    "{name} does not fit: the instances before it leave too few free memory or compute slices \
                     (a GPU of this product has {} memory and {} compute slices)",
                    self.geometry.memory_slices, self.geometry.compute_slices
                )
            })?;
        used[start..start + size].iter_mut().for_each(|u| *u = true);
        self.compute_used += gi.compute_slices;
        Ok(start as u32)
    }

    /// The slot asked for, else the first one no instance has asked for or been given.
    fn slot(&mut self, asked: Option<u32>) -> u32 {
        if let Some(s) = asked {
            return s;
        }
        while self.taken_slots.contains(&self.next_slot) {
            self.next_slot += 1;
        }
        self.taken_slots.push(self.next_slot);
        self.next_slot
    }
}

/// An instance's name: the one the fixture gives (which must be a MIG name), else a legacy name
/// on old drivers, else a stable simulated UUID.
fn instance_name(
    explicit: Option<&RawInstance>,
    gpu: &PlacedGpu<'_>,
    slot: u32,
    gpu_instance_id: u32,
    compute_instance_id: u32,
) -> Result<DeviceId, String> {
    Ok(match explicit.and_then(|i| i.uuid.clone()) {
        Some(id) if id.is_mig() => id,
        Some(id) => return Err(format!("`uuid = \"{id}\"` is a GPU name; a MIG instance is named MIG-<uuid>")),
        None if gpu.legacy => DeviceId::LegacyMig {
            gpu: gpu.uuid.clone(),
            gpu_instance: gpu_instance_id,
            compute_instance: compute_instance_id,
        },
        None => DeviceId::Mig(fake_uuid(gpu.hostname, gpu.index, Some(slot))),
    })
}

/// `"0-15,32-47"` -> the CPUs, each below `cpus` (the host's count), in order and once each.
fn parse_cpulist(list: &str, cpus: u32) -> Result<Vec<u32>, String> {
    crate::cpulist::parse(list, cpus).map_err(|e| match e {
        CpuListError::Malformed => {
            format!("`cpu_affinity = \"{}\"` is not a CPU list like \"0-15,32-47\"", printable(list))
        }
        CpuListError::OutOfRange { cpu } => format!(
            "`cpu_affinity = \"{}\"` names CPU {cpu}, but the host has {cpus} CPUs (set `cpus`)",
            printable(list)
        ),
    })
}

/// A stable, UUID-shaped name for a simulated device: the same fixture always yields the
/// same names, and different hosts yield different ones.
fn fake_uuid(hostname: &str, gpu: u32, slot: Option<u32>) -> crate::Uuid {
    let key = format!("{hostname}/{gpu}/{}", slot.map_or("gpu".to_owned(), |s| s.to_string()));
    let a = fnv1a(key.as_bytes(), 0xcbf2_9ce4_8422_2325);
    let b = fnv1a(key.as_bytes(), a ^ 0x9e37_79b9_7f4a_7c15);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    crate::Uuid::from_bytes(bytes)
}

fn fnv1a(data: &[u8], seed: u64) -> u64 {
    let h = data.iter().fold(seed, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    // FNV alone leaves similar keys with similar prefixes; the splitmix64 finaliser spreads
    // them, so simulated UUIDs differ early, as real ones do (prefixes stay unique).
    let h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
