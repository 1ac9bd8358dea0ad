//! What the launcher's refusals say a user should change, as data: the settings of a
//! request ([`Setting`]) inside messages ([`Words`]), so that each front end names them in its
//! own terms (the binary as flags, `--protocol ucx`; the Python package as keyword arguments,
//! `protocol='ucx'`) and no message is rewritten after it was written.
//!
//! It owns the vocabulary only; which setting a message names is decided where the message is
//! made ([`crate::dask::spec`], [`crate::dask::protocol`]), and how a setting is spelled by the front ends'
//! [`Terms`].

use std::fmt;

/// A setting of a Dask request, as every front end has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Setting {
    /// The comm protocol (`--protocol`, `protocol=`).
    Protocol,
    /// Leaving the cluster open to other users (`--insecure`, `insecure=True`).
    Insecure,
    /// TLS credentials (`--tls-ca-file`/`--tls-cert`/`--tls-key`, `security=`).
    Credentials,
    /// The address to listen on (`--host`, `host=`).
    Host,
    /// Where the scheduler serves its dashboard (`--dashboard`, `dashboard_address=`).
    Dashboard,
    /// Host memory per worker (`--memory-limit`, `memory_limit=`).
    MemoryLimit,
    /// Threads per worker (`--nthreads`, `threads_per_worker=`).
    Threads,
    /// How many of the planned workers run (`n_workers=`).
    Workers,
    /// How many workers share a device (`--workers-per-device`, `workers_per_device=`).
    WorkersPerDevice,
    /// An RMM pool on each worker's device (`--rmm-pool-size`, `rmm_pool_size=`).
    RmmPoolSize,
    /// A device memory limit (`--device-memory-limit`, `device_memory_limit=`).
    DeviceMemoryLimit,
    /// The Python interpreter with Dask (`--python`; in Python, the interpreter itself).
    Python,
    /// Seconds processes get to stop before they are killed (`--grace`).
    Grace,
}

/// How a front end spells a [`Setting`].
pub trait Terms {
    /// The setting given `value` (`--protocol ucx`, `protocol='ucx'`), or, without a value, the
    /// setting turned on or named (`--insecure`, `insecure=True`).
    fn setting(&self, setting: Setting, value: Option<&str>) -> String;
}

/// The words of the crate's own `Display`: settings by their plain names (`protocol=ucx`,
/// `insecure`), for logs and for callers that have no terms of their own.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainTerms;

impl Terms for PlainTerms {
    fn setting(&self, setting: Setting, value: Option<&str>) -> String {
        let name = match setting {
            Setting::Protocol => "protocol",
            Setting::Insecure => "insecure",
            Setting::Credentials => "credentials",
            Setting::Host => "host",
            Setting::Dashboard => "dashboard",
            Setting::MemoryLimit => "memory-limit",
            Setting::Threads => "threads",
            Setting::Workers => "workers",
            Setting::WorkersPerDevice => "workers-per-device",
            Setting::RmmPoolSize => "rmm-pool-size",
            Setting::DeviceMemoryLimit => "device-memory-limit",
            Setting::Python => "python",
            Setting::Grace => "grace",
        };
        match value {
            Some(v) => format!("{name}={v}"),
            None => name.to_owned(),
        }
    }
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Setting(Setting, Option<String>),
}

/// A message that names settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Words(Vec<Piece>);

impl Words {
    /// Plain text.
    pub fn text(text: impl Into<String>) -> Self {
        Self(vec![Piece::Text(text.into())])
    }

    /// Followed by plain text.
    #[must_use]
    pub fn then(mut self, text: impl Into<String>) -> Self {
        self.0.push(Piece::Text(text.into()));
        self
    }

    /// Followed by a setting (`value`: what it is set to, if the message says).
    #[must_use]
    pub fn set(mut self, setting: Setting, value: Option<&str>) -> Self {
        self.0.push(Piece::Setting(setting, value.map(str::to_owned)));
        self
    }

    /// Followed by `other`.
    #[must_use]
    pub fn and(mut self, other: Words) -> Self {
        self.0.extend(other.0);
        self
    }

    /// The settings it names, in order.
    pub fn settings(&self) -> impl Iterator<Item = Setting> + '_ {
        self.0.iter().filter_map(|p| match p {
            Piece::Setting(s, _) => Some(*s),
            Piece::Text(_) => None,
        })
    }

    /// The message in `terms`.
    pub fn render(&self, terms: &dyn Terms) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.clone(),
                Piece::Setting(s, v) => terms.setting(*s, v.as_deref()),
            })
            .collect()
    }
}

impl fmt::Display for Words {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&PlainTerms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flags;

    impl Terms for Flags {
        fn setting(&self, setting: Setting, value: Option<&str>) -> String {
            let flag = if setting == Setting::Insecure { "--insecure" } else { "--protocol" };
            value.map_or_else(|| flag.to_owned(), |v| format!("{flag} {v}"))
        }
    }

    #[test]
    fn a_message_names_its_settings_in_the_front_ends_terms() {
        let words = Words::default()
            .set(Setting::Protocol, Some("ucx"))
            .then(": it cannot authenticate peers; add ")
            .set(Setting::Insecure, None)
            .then(" to accept that");
        assert_eq!(words.render(&Flags), "--protocol ucx: it cannot authenticate peers; add --insecure to accept that");
        assert_eq!(words.settings().collect::<Vec<_>>(), [Setting::Protocol, Setting::Insecure]);
        assert!(words.to_string().starts_with("protocol=ucx: "), "{words}");
        assert!(!words.to_string().contains("--"), "no flag in the plain words: {words}");
    }
}
