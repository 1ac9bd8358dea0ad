//! The vocabulary of messages that point the user to a setting or a command, as data: which
//! setting to change to what ([`Setting`], [`Remedy`]) and which command shows more ([`Call`]),
//! kept apart from the words each front end says them in ([`Terms`]).
//!
//! This module owns the pieces ([`Message`]) and the one layout of a list of choices
//! ([`two_columns`]); it says nothing in any front end's words except the command line's
//! ([`CommandLine`]), which are also the words of the JSON documents. The Python package's words
//! are the binding's (`crates/gpucluster-py`), which implements [`Terms`] too.
//!
//! # Design
//!
//! A refusal of `cluster-core` (and of the crates above it) is built from pieces: text, a
//! setting with the value to give it, a command, a list of remedies. Each front end renders the
//! same pieces in its own words: the binary writes `--policy largest-group`, Python
//! `policy="largest-group"`. Nothing rewrites finished text, so a message can say anything
//! around a setting without a front end mistaking prose for a flag.
//!
//! The command line's terms live here, not in the binary, because the JSON documents carry
//! them: `plan --json` and `doctor --json` print findings' text in the command line's words, and
//! `gpucluster.plan()` returns the same document as `plan --json`, so both front ends must be able
//! to write it. For the same reason `Display` (and so every `Error` impl built on a [`Message`]) and
//! `Serialize` render in [`CommandLine`] terms: a third, neutral rendering would be words nobody
//! reads. Front ends with other words call [`Message::render`].
//!
//! `gpu-topology` depends on no crate of ours, so its errors say only what it saw (no NVML, an
//! empty file); the remedies that name a setting are added here, by variant
//! ([`topology_remedy`]), and rendered by each front end after the error's own text.

use std::borrow::Cow;
use std::fmt;

use gpu_topology::TopologyError;

/// A setting a user gives gpucluster (on the command line, or as a keyword argument in Python),
/// named by a message. Each variant says its flag and its Python keyword; the words themselves
/// are the front ends' ([`Terms`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Setting {
    /// Where the machine's description comes from (`nvml`, `sim:NAME`, `file:PATH`,
    /// `smi:PATH`): `--topology` / `topology=`.
    Topology,
    /// A host's saved snapshot to plan across hosts: `--inventory` / no Python keyword.
    Inventory,
    /// The devices to use, in `CUDA_VISIBLE_DEVICES`' grammar: `--devices` / `devices=`.
    Devices,
    /// The homogeneity policy: `--policy` / `policy=`.
    Policy,
    /// Memory within this many percent counts as alike: `--memory-tolerance` /
    /// `memory_tolerance=`.
    MemoryTolerance,
    /// Each worker's device memory limit, in Dask-CUDA's grammar: `--device-memory-limit` /
    /// `device_memory_limit=`.
    DeviceMemoryLimit,
    /// Workers sharing each device: `--workers-per-device` / `workers_per_device=`.
    WorkersPerDevice,
    /// The Dask comm protocol: `--protocol` / `protocol=`.
    Protocol,
    /// Leave a Dask cluster open to anyone who reaches it: `--insecure` / `insecure=True`.
    Insecure,
    /// TLS certificates for a Dask cluster: `--tls-ca-file`, `--tls-cert` and `--tls-key` /
    /// `security=` (a `distributed.Security`). Messages give it no value.
    TlsCredentials,
    /// Where the Dask scheduler serves its dashboard: `--dashboard` / `dashboard_address=`.
    Dashboard,
    /// The address Dask workers (and a local scheduler) listen on: `--host` / `host=`.
    Host,
    /// The Python interpreter with Dask: `--python` / no Python keyword (Python is the caller).
    Python,
    /// Seconds workers get to stop before they are killed: `--grace` / no Python keyword.
    Grace,
    /// Host memory per Dask worker, in Dask's grammar: `--memory-limit` / `memory_limit=`.
    MemoryLimit,
    /// The scheduler's address file that Dask workers read: `--scheduler-file` / no Python
    /// keyword.
    SchedulerFile,
    /// Threads per Dask worker: Dask's `--nthreads`, given after `--` / `threads_per_worker=`.
    Threads,
    /// How many of the planned workers run: fewer `--devices` / `n_workers=`.
    Workers,
    /// An RMM pool on each Dask worker's device: dask-cuda's `--rmm-pool-size`, given after
    /// `--` / `rmm_pool_size=`.
    RmmPoolSize,
}

/// A command (or, in Python, a function) that a message points to for more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Call {
    /// The machine's devices and their names: `gpucluster list` / `gpucluster.topology()`.
    List,
    /// The machine as JSON: `gpucluster list --json` / `gpucluster.topology()`.
    ListJson,
    /// What a snapshot is, as a noun: "the JSON `gpucluster list --json` prints" / "the JSON of
    /// `gpucluster.topology()`".
    SnapshotJson,
    /// The simulated machines: `gpucluster list --presets` / `gpucluster.presets()`.
    ListPresets,
    /// The plan for the settings given: `gpucluster plan` / `gpucluster.plan()`.
    Plan,
    /// Workers started one per device: `gpucluster up` / no Python function (the command line's).
    Up,
    /// Dask workers started one per device: `gpucluster dask` / `gpucluster.dask.LocalCluster`.
    Dask,
}

/// One piece of a [`Message`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Piece {
    /// Words that are the same in every front end.
    Text(Cow<'static, str>),
    /// A setting to give, with the value to give it where the message has one
    /// (`--policy warn`, `policy="warn"`; `--devices`, `devices=...`).
    Setting {
        /// The setting.
        setting: Setting,
        /// Its value, as the user writes it.
        value: Option<String>,
    },
    /// A setting named as the subject of what follows (`--device-memory-limit: ...`,
    /// `device_memory_limit: ...`).
    Name(Setting),
    /// A command or function, quoted as code.
    Call(Call),
    /// Choices, one a line, as two aligned columns ([`Terms::remedies`]).
    Remedies(Vec<Remedy>),
}

/// A message that may name settings and commands: built of [`Piece`]s, rendered by a front end
/// in its own words ([`Message::render`]). `Display` and `Serialize` say it in the command line's
/// words ([`CommandLine`]), which the JSON documents carry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pieces: Vec<Piece>,
}

impl Message {
    /// An empty message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds words that are the same in every front end.
    #[must_use]
    pub fn text(mut self, text: impl Into<Cow<'static, str>>) -> Self {
        let text = text.into();
        if !text.is_empty() {
            self.pieces.push(Piece::Text(text));
        }
        self
    }

    /// Adds a setting to give, without a value (`--devices`, `devices=...`).
    #[must_use]
    pub fn setting(mut self, setting: Setting) -> Self {
        self.pieces.push(Piece::Setting { setting, value: None });
        self
    }

    /// Adds a setting with the value to give it (`--policy warn`, `policy="warn"`).
    #[must_use]
    pub fn setting_to(mut self, setting: Setting, value: impl Into<String>) -> Self {
        self.pieces.push(Piece::Setting { setting, value: Some(value.into()) });
        self
    }

    /// Adds a setting named as the subject of what follows (`--device-memory-limit: ...`).
    #[must_use]
    pub fn name(mut self, setting: Setting) -> Self {
        self.pieces.push(Piece::Name(setting));
        self
    }

    /// Adds a command or function.
    #[must_use]
    pub fn call(mut self, call: Call) -> Self {
        self.pieces.push(Piece::Call(call));
        self
    }

    /// Adds choices, one a line.
    #[must_use]
    pub fn remedies(mut self, remedies: Vec<Remedy>) -> Self {
        self.pieces.push(Piece::Remedies(remedies));
        self
    }

    /// Adds another message's pieces.
    #[must_use]
    pub fn append(mut self, other: Message) -> Self {
        self.pieces.extend(other.pieces);
        self
    }

    /// The pieces, in order.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// Whether the message says nothing.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The message in `terms`' words.
    pub fn render(&self, terms: &dyn Terms) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Setting { setting, value } => out.push_str(&terms.setting(*setting, value.as_deref())),
                Piece::Name(setting) => out.push_str(&terms.name(*setting)),
                Piece::Call(call) => out.push_str(&terms.call(*call)),
                Piece::Remedies(remedies) => out.push_str(&terms.remedies(remedies)),
            }
        }
        out
    }
}

impl From<&'static str> for Message {
    fn from(text: &'static str) -> Self {
        Message::new().text(text)
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::new().text(text)
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&CommandLine))
    }
}

impl serde::Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

/// One way to go on: give `setting` the `value`, which does `effect`. A list of them is a
/// [`Piece::Remedies`], the "to go on, choose one of:" of a refusal.
#[derive(Debug, Clone, PartialEq)]
pub struct Remedy {
    /// The setting to give.
    pub setting: Setting,
    /// Its value, as the user writes it.
    pub value: Option<String>,
    /// Words after the value, on its line (`(56 devices: ...)`).
    pub aside: Option<Message>,
    /// What choosing it does.
    pub effect: Message,
}

impl Remedy {
    /// Give `setting` the `value`, which does `effect`.
    pub fn new(setting: Setting, value: impl Into<String>, effect: impl Into<Message>) -> Self {
        Self { setting, value: Some(value.into()), aside: None, effect: effect.into() }
    }

    /// The same, with words after the value.
    #[must_use]
    pub fn with_aside(self, aside: impl Into<Message>) -> Self {
        Self { aside: Some(aside.into()), ..self }
    }
}

/// A front end's words for the pieces of a [`Message`]: the binary's ([`CommandLine`]), the
/// Python package's (in `crates/gpucluster-py`).
pub trait Terms {
    /// A setting to give, with its value where the message has one: `--policy warn`,
    /// `--devices`.
    fn setting(&self, setting: Setting, value: Option<&str>) -> String;

    /// A setting named as the subject of what follows: `--device-memory-limit` (before `: `).
    fn name(&self, setting: Setting) -> String;

    /// A command or function, quoted as code: `` `gpucluster list` ``.
    fn call(&self, call: Call) -> String;

    /// Choices, one a line, without a final line break: [`two_columns`] unless a front end lays
    /// them out its own way.
    fn remedies(&self, remedies: &[Remedy]) -> String {
        two_columns(self, remedies)
    }
}

/// Where the second column of [`two_columns`] begins (counting from 0: the first column is
/// indented by two spaces and gets 24 more and a space).
pub const REMEDY_COLUMN: usize = 27;

/// Choices as two aligned columns, each line indented by two spaces: the setting and its value
/// (and the remedy's aside), then what it does from [`REMEDY_COLUMN`] on. A first column too long
/// for that, or a list of devices (whose length varies with the machine), has the effect on the
/// next line, at the same column, so that a list can be read, and copied, whole.
pub fn two_columns<T: Terms + ?Sized>(terms: &T, remedies: &[Remedy]) -> String {
    let lines: Vec<String> = remedies
        .iter()
        .map(|r| {
            let mut left = terms.setting(r.setting, r.value.as_deref());
            if let Some(aside) = &r.aside {
                left.push(' ');
                left.push_str(&aside.render(&AsDyn(terms)));
            }
            let effect = r.effect.render(&AsDyn(terms));
            let width = left.chars().count();
            let room = REMEDY_COLUMN - 3;
            if r.setting == Setting::Devices || width > room {
                format!("  {left}\n{}{effect}", " ".repeat(REMEDY_COLUMN))
            } else {
                format!("  {left}{} {effect}", " ".repeat(room - width))
            }
        })
        .collect();
    lines.join("\n")
}

/// `terms` as a trait object, so that [`two_columns`] (generic, so that a default method can
/// call it) renders asides and effects through [`Message::render`].
struct AsDyn<'t, T: ?Sized>(&'t T);

impl<T: Terms + ?Sized> Terms for AsDyn<'_, T> {
    fn setting(&self, setting: Setting, value: Option<&str>) -> String {
        self.0.setting(setting, value)
    }

    fn name(&self, setting: Setting) -> String {
        self.0.name(setting)
    }

    fn call(&self, call: Call) -> String {
        self.0.call(call)
    }

    fn remedies(&self, remedies: &[Remedy]) -> String {
        self.0.remedies(remedies)
    }
}

/// The command line's words: flags (`--policy warn`) and commands (`` `gpucluster list` ``).
/// The JSON documents (`plan --json`, `doctor --json`, and so `gpucluster.plan()`) carry them too.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommandLine;

impl CommandLine {
    /// The flag of `setting`.
    pub fn flag(setting: Setting) -> &'static str {
        match setting {
            Setting::Topology => "--topology",
            Setting::Inventory => "--inventory",
            Setting::Devices => "--devices",
            Setting::Policy => "--policy",
            Setting::MemoryTolerance => "--memory-tolerance",
            Setting::DeviceMemoryLimit => "--device-memory-limit",
            Setting::WorkersPerDevice => "--workers-per-device",
            Setting::Protocol => "--protocol",
            Setting::Insecure => "--insecure",
            Setting::TlsCredentials => "--tls-ca-file, --tls-cert and --tls-key",
            Setting::Dashboard => "--dashboard",
            Setting::Host => "--host",
            Setting::Python => "--python",
            Setting::Grace => "--grace",
            Setting::MemoryLimit => "--memory-limit",
            Setting::SchedulerFile => "--scheduler-file",
            // A Dask (or dask-cuda) worker's own options: `dask local` passes them on after `--`.
            Setting::Threads => "-- --nthreads",
            Setting::Workers => "--devices",
            Setting::RmmPoolSize => "-- --rmm-pool-size",
        }
    }
}

impl Terms for CommandLine {
    fn setting(&self, setting: Setting, value: Option<&str>) -> String {
        match value {
            Some(value) => format!("{} {value}", Self::flag(setting)),
            None => Self::flag(setting).to_owned(),
        }
    }

    fn name(&self, setting: Setting) -> String {
        Self::flag(setting).to_owned()
    }

    fn call(&self, call: Call) -> String {
        match call {
            Call::List => "`gpucluster list`",
            Call::ListJson => "`gpucluster list --json`",
            Call::SnapshotJson => "the JSON `gpucluster list --json` prints",
            Call::ListPresets => "`gpucluster list --presets`",
            Call::Plan => "`gpucluster plan`",
            Call::Up => "`gpucluster up`",
            Call::Dask => "`gpucluster dask`",
        }
        .to_owned()
    }
}

/// What to do about a `gpu-topology` error where a setting or a command helps, said after the
/// error's own text (it begins with its own separator): another source of the machine's
/// description when NVML cannot be used, what a snapshot is when a file is empty. `None` for
/// errors whose text says all there is.
pub fn topology_remedy(error: &TopologyError) -> Option<Message> {
    let elsewhere = |before: &'static str| Message::from(before).setting_to(Setting::Topology, "sim:NAME");
    match error {
        TopologyError::BackendUnavailable { .. } => Some(
            elsewhere(" To work without one, pass ")
                .text(" (see ")
                .call(Call::ListPresets)
                .text("), file:PATH or smi:PATH"),
        ),
        TopologyError::NvmlNotCompiled => {
            Some(elsewhere("; pass ").text(", file:PATH or smi:PATH, or rebuild with default features"))
        }
        TopologyError::EmptyFile { .. } => Some(Message::from(", and a snapshot is ").call(Call::SnapshotJson)),
        _ => None,
    }
}
