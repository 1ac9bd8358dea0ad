//! Which comm protocol a Dask cluster's processes speak, and why: the one rule both front ends
//! follow (`gpucluster dask local|worker` and `gpucluster.dask.LocalCluster`), pure.
//!
//! It owns the protocol names, what each needs (a package, credentials, an insecure cluster) and
//! the choice for `auto`. It does not start anything, read files or make credentials.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::facts::PythonFacts;
use cluster_core::wording::{Message, Setting};

/// A Dask comm protocol (the scheme of its addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Dask's TCP comm, unauthenticated.
    Tcp,
    /// Dask's TCP comm over TLS, with the cluster's certificates.
    Tls,
    /// Dask's websocket comm over TLS, with the cluster's certificates.
    Wss,
    /// UCX (distributed-ucxx), unauthenticated.
    Ucx,
    /// gpucluster's comm: TCP for messages, the transport for device frames between workers of
    /// one host, every connection proving the cluster's secret.
    Gpucluster,
}

impl Protocol {
    /// The scheme, as Dask spells it.
    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Wss => "wss",
            Protocol::Ucx => "ucx",
            Protocol::Gpucluster => "gpucluster",
        }
    }

    /// Whether peers must prove who they are before their first message.
    pub fn authenticates(self) -> bool {
        matches!(self, Protocol::Tls | Protocol::Wss | Protocol::Gpucluster)
    }

    /// Whether it speaks TLS, and so needs the cluster's certificates.
    pub fn uses_tls(self) -> bool {
        matches!(self, Protocol::Tls | Protocol::Wss)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.scheme())
    }
}

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolRequest {
    /// Choose (see [`choose_protocol`]).
    Auto,
    /// Dask's TCP comm (over TLS where the cluster is secured and credentials can be had).
    Tcp,
    /// TLS.
    Tls,
    /// Websockets over TLS.
    Wss,
    /// Websockets without TLS: refused (distributed's listener binds every interface).
    Ws,
    /// UCX.
    Ucx,
    /// gpucluster's comm.
    Gpucluster,
    /// Dask's in-process comm: refused (a cluster's workers are processes).
    Inproc,
}

impl ProtocolRequest {
    /// The name as Dask spells it (`auto` for [`ProtocolRequest::Auto`]).
    pub fn name(self) -> &'static str {
        match self {
            ProtocolRequest::Auto => "auto",
            ProtocolRequest::Tcp => "tcp",
            ProtocolRequest::Tls => "tls",
            ProtocolRequest::Wss => "wss",
            ProtocolRequest::Ws => "ws",
            ProtocolRequest::Ucx => "ucx",
            ProtocolRequest::Gpucluster => "gpucluster",
            ProtocolRequest::Inproc => "inproc",
        }
    }
}

impl Serialize for ProtocolRequest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ProtocolRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A protocol name that is no Dask comm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is no Dask comm protocol (auto, gpucluster, tls, wss, tcp, ucx)")]
pub struct UnknownProtocol(pub String);

impl FromStr for ProtocolRequest {
    type Err = UnknownProtocol;

    /// Dask's names (`tcp`, `tls`, `ucx`, ...; `ucxx` is distributed-ucxx's other name for
    /// `ucx`), with or without `://`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.strip_suffix("://").unwrap_or(s) {
            "auto" => ProtocolRequest::Auto,
            "tcp" => ProtocolRequest::Tcp,
            "tls" => ProtocolRequest::Tls,
            "wss" => ProtocolRequest::Wss,
            "ws" => ProtocolRequest::Ws,
            "ucx" | "ucxx" => ProtocolRequest::Ucx,
            "gpucluster" => ProtocolRequest::Gpucluster,
            "inproc" => ProtocolRequest::Inproc,
            other => return Err(UnknownProtocol(gpu_topology::text::printable(other).into_owned())),
        })
    }
}

/// Where TLS credentials can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Credentials {
    /// None were given and none can be made (a Python cluster without `security`).
    Absent,
    /// The user gave them (`--tls-*` files, `security=`), or they lie beside a scheduler file.
    Given,
    /// None were given, and the launcher can make a fresh set (`dask local`).
    CanGenerate,
}

/// What the cluster looks like to the protocol choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolFacts {
    /// Every pair of workers is two whole GPUs with P2P over NVLink.
    pub all_pairs_nvlink: bool,
    /// Workers on this host.
    pub workers: usize,
    /// Whether the cluster must be closed to other users (unless declared insecure).
    pub secure: bool,
    /// Whether the scheduler requires every connection to be encrypted (a TLS scheduler that
    /// workers join): gpucluster's comm authenticates every connection but encrypts none.
    pub encrypted: bool,
    /// Where TLS credentials can come from.
    pub credentials: Credentials,
}

/// Why a protocol cannot be used as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolRefusal {
    /// Not a protocol Dask has.
    Unknown(String),
    /// It needs a package this Python lacks.
    NotInstalled {
        /// The protocol.
        protocol: ProtocolRequest,
        /// What to install, and how.
        install: String,
    },
    /// It lets in whoever reaches it: only for a cluster declared insecure.
    Open {
        /// The protocol.
        protocol: ProtocolRequest,
    },
    /// It speaks TLS and no credentials can be had.
    NoCredentials {
        /// The protocol.
        protocol: ProtocolRequest,
    },
    /// The scheduler to join requires encryption, which it does not give.
    Unencrypted {
        /// The protocol.
        protocol: ProtocolRequest,
    },
    /// Websockets without TLS: distributed's listener binds every interface.
    EveryInterface,
    /// Dask's in-process comm, for workers that are processes.
    InProcess,
}

impl ProtocolRefusal {
    /// The refusal, with the settings that would make it work.
    pub fn message(&self) -> Message {
        let asked = |p: ProtocolRequest| Message::new().setting_to(Setting::Protocol, p.name());
        let secured = "every connection proves your secret";
        match self {
            ProtocolRefusal::Unknown(name) => Message::new().setting_to(Setting::Protocol, name).text(format!(
                ": no such Dask comm; use gpucluster (the default where its package is installed: {secured}, device \
                 frames over gpucluster's transport), tls or wss with TLS credentials, or tcp or ucx on a cluster \
                 declared insecure"
            )),
            ProtocolRefusal::NotInstalled { protocol, install } => {
                asked(*protocol).text(format!(": not installed for this Python ({install})"))
            }
            ProtocolRefusal::Open { protocol } => asked(*protocol)
                .text(format!(
                    ": {} lets every user of this host (and of any host that reaches it) connect and run code as \
                     you; keep ",
                    if *protocol == ProtocolRequest::Ucx { "UCX cannot authenticate peers, so it" } else { "it" }
                ))
                .setting_to(Setting::Protocol, "gpucluster")
                .text(format!(" ({secured}), give "))
                .setting(Setting::TlsCredentials)
                .text(" for TLS, or add ")
                .setting(Setting::Insecure)
                .text(" on a machine nobody else uses"),
            ProtocolRefusal::NoCredentials { protocol } => {
                asked(*protocol).text(": speaks TLS and needs its certificates: give ").setting(Setting::TlsCredentials)
            }
            ProtocolRefusal::Unencrypted { protocol } => asked(*protocol)
                .text(format!(
                    ": the scheduler speaks TLS and Dask then refuses every connection that is not encrypted; {} \
                     (use ",
                    if *protocol == ProtocolRequest::Ucx {
                        "UCX does not encrypt"
                    } else {
                        "gpucluster's comm authenticates but does not encrypt"
                    }
                ))
                .setting_to(Setting::Protocol, "tcp")
                .text(", or start the cluster with `gpucluster dask local`, which speaks gpucluster throughout)"),
            ProtocolRefusal::EveryInterface => Message::new().setting_to(Setting::Protocol, "ws").text(
                ": distributed's websocket listener binds every interface of this host, whatever the host to \
                 listen on says; use gpucluster, tls or wss with TLS credentials, or tcp on a cluster declared \
                 insecure",
            ),
            ProtocolRefusal::InProcess => Message::new()
                .setting_to(Setting::Protocol, "inproc")
                .text(": connects only within one process, and a cluster's workers are processes"),
        }
    }
}

impl fmt::Display for ProtocolRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.message().fmt(f)
    }
}

pub(super) const GPUCLUSTER_INSTALL: &str =
    "install the gpucluster wheel into it: see the user guide, \"Dask\"; `cargo xtask dask-env` makes one";

/// The comm protocol for a cluster's processes, and why; pure.
///
/// With the `gpucluster` package installed, the cluster speaks gpucluster's comm: every
/// connection proves the cluster's secret, so the cluster is closed without paying TLS on the
/// data path, and device frames between workers of one host go over the transport (host-staged
/// between MIG instances, cuda-ipc between workers of one GPU). Otherwise: UCX only where it can
/// use NVLink (whole GPUs with P2P over NVLink; without CUDA IPC it is no faster than TCP,
/// `docs/benchmarks.md`) and only for an insecure cluster (it cannot authenticate peers); else
/// TCP, over TLS when secured.
///
/// # Errors
/// A [`ProtocolRefusal`] when the request cannot be met (what is missing, or insecure).
pub fn choose_protocol(
    request: ProtocolRequest,
    facts: ProtocolFacts,
    python: &PythonFacts,
) -> Result<(Protocol, String), ProtocolRefusal> {
    use ProtocolRequest as R;
    let can_tls = facts.credentials != Credentials::Absent;
    let tls_reason = |why: &str| match facts.credentials {
        Credentials::CanGenerate => format!("{why}; over TLS, with fresh credentials only this user can read"),
        _ => format!("{why}; over TLS, with the credentials given"),
    };
    let unencrypted = "the scheduler speaks TLS and Dask then refuses every connection that is not encrypted";
    let ucx_install = format!("{} (or -cu12)", python.pip_install("distributed-ucxx-cu13"));
    match request {
        R::Inproc => Err(ProtocolRefusal::InProcess),
        R::Ws => Err(ProtocolRefusal::EveryInterface),
        R::Ucx | R::Gpucluster if facts.encrypted => Err(ProtocolRefusal::Unencrypted { protocol: request }),
        R::Auto | R::Tcp | R::Tls if facts.encrypted => {
            Ok((Protocol::Tls, format!("{unencrypted}, so workers speak TLS")))
        }
        R::Tcp if !facts.secure => Ok((Protocol::Tcp, "asked for, on a cluster declared insecure".into())),
        R::Tcp | R::Tls if can_tls => Ok((Protocol::Tls, tls_reason("asked for, on a secured cluster"))),
        R::Tcp => Err(ProtocolRefusal::Open { protocol: request }),
        R::Tls | R::Wss if !can_tls => Err(ProtocolRefusal::NoCredentials { protocol: request }),
        R::Tls => Ok((Protocol::Tls, tls_reason("asked for"))),
        R::Wss => Ok((Protocol::Wss, tls_reason("asked for"))),
        R::Ucx if !python.ucxx => Err(ProtocolRefusal::NotInstalled { protocol: request, install: ucx_install }),
        R::Ucx if facts.secure => Err(ProtocolRefusal::Open { protocol: request }),
        R::Ucx => Ok((Protocol::Ucx, "asked for, on a cluster declared insecure".into())),
        R::Gpucluster if !python.gpucluster => {
            Err(ProtocolRefusal::NotInstalled { protocol: request, install: GPUCLUSTER_INSTALL.to_owned() })
        }
        R::Gpucluster => Ok((Protocol::Gpucluster, "asked for".into())),
        R::Auto if python.gpucluster => Ok((
            Protocol::Gpucluster,
            "the gpucluster package is installed: every connection proves the cluster's secret, and device frames \
             between workers of one host go over its transport"
                .into(),
        )),
        R::Auto => {
            let nvlink = facts.all_pairs_nvlink && facts.workers > 1;
            let tcp = |why: String| {
                if !facts.secure {
                    Ok((Protocol::Tcp, why))
                } else if can_tls {
                    Ok((Protocol::Tls, tls_reason(&why)))
                } else {
                    Err(ProtocolRefusal::Open { protocol: R::Tcp })
                }
            };
            match (nvlink, python.ucxx) {
                (true, true) if facts.secure => {
                    tcp("UCX could use NVLink here, but it cannot authenticate peers; a cluster declared insecure \
                     would speak UCX"
                        .into())
                }
                (true, true) => Ok((
                    Protocol::Ucx,
                    "every pair of workers is two whole GPUs with P2P over NVLink, and distributed-ucxx is installed"
                        .into(),
                )),
                (true, false) => tcp(format!(
                    "the GPUs are NVLinked, but distributed-ucxx is not installed ({ucx_install}, for UCX)"
                )),
                (false, _) => {
                    tcp("the gpucluster package is not installed for this Python (its comm would move device frames \
                     between these workers), and nothing here is for UCX's cuda_ipc/NVLink"
                        .into())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cluster_core::wording::Piece;

    use super::*;

    /// Whether the refusal names `setting`, for the user to change.
    fn names(refusal: &ProtocolRefusal, setting: Setting) -> bool {
        refusal.message().pieces().iter().any(|p| matches!(p, Piece::Setting { setting: s, .. } if *s == setting))
    }

    fn python(gpucluster: bool, ucxx: bool) -> PythonFacts {
        PythonFacts { gpucluster, ucxx, ..PythonFacts::default() }
    }

    fn facts(nvlink: bool, workers: usize, secure: bool) -> ProtocolFacts {
        ProtocolFacts {
            all_pairs_nvlink: nvlink,
            workers,
            secure,
            encrypted: false,
            credentials: Credentials::CanGenerate,
        }
    }

    #[test]
    fn the_protocol_follows_what_is_installed_and_how_closed_the_cluster_is() {
        use ProtocolRequest::*;
        let auto = |f, p: &PythonFacts| choose_protocol(Auto, f, p).expect("auto").0;
        let plain = python(false, true);
        assert_eq!(auto(facts(true, 8, false), &plain), Protocol::Ucx);
        assert_eq!(auto(facts(false, 8, false), &plain), Protocol::Tcp);
        assert_eq!(auto(facts(true, 1, false), &plain), Protocol::Tcp);
        assert_eq!(auto(facts(true, 8, true), &plain), Protocol::Tls, "UCX cannot authenticate peers");
        assert_eq!(auto(facts(false, 8, true), &plain), Protocol::Tls);
        let ours = python(true, true);
        assert_eq!(auto(facts(false, 8, true), &ours), Protocol::Gpucluster);
        assert_eq!(auto(facts(true, 8, false), &ours), Protocol::Gpucluster);
        assert_eq!(auto(facts(false, 1, true), &ours), Protocol::Gpucluster, "one rule for one worker or many");
        // Joining a TLS scheduler: Dask refuses unencrypted comms there, ours included.
        let tls_scheduler = ProtocolFacts { encrypted: true, credentials: Credentials::Given, ..facts(false, 8, true) };
        assert_eq!(auto(tls_scheduler, &ours), Protocol::Tls);
        let err = choose_protocol(Gpucluster, tls_scheduler, &ours).expect_err("not encrypted");
        assert!(names(&err, Setting::Protocol), "{err}");
        // Requests: met where they can be, refused with the reason where they cannot.
        assert_eq!(choose_protocol(Tcp, facts(false, 8, true), &ours).expect("tcp").0, Protocol::Tls);
        assert_eq!(choose_protocol(Tcp, facts(false, 8, false), &ours).expect("tcp").0, Protocol::Tcp);
        let err = choose_protocol(Ucx, facts(false, 8, true), &ours).expect_err("insecure");
        assert!(names(&err, Setting::Insecure), "{err}");
        assert_eq!(choose_protocol(Ucx, facts(false, 8, false), &ours).expect("ucx").0, Protocol::Ucx);
        let none = python(false, false);
        assert!(choose_protocol(Gpucluster, facts(false, 8, true), &none).is_err());
        assert!(choose_protocol(Ucx, facts(false, 8, false), &none).is_err());
        let (protocol, why) = choose_protocol(Auto, facts(true, 8, false), &none).expect("auto");
        assert_eq!(protocol, Protocol::Tcp);
        assert!(why.contains("distributed-ucxx"), "{why}");
    }

    #[test]
    fn tls_needs_credentials_and_open_protocols_an_insecure_cluster() {
        use ProtocolRequest::*;
        let ours = python(true, false);
        let absent = ProtocolFacts { credentials: Credentials::Absent, ..facts(false, 4, true) };
        assert_eq!(choose_protocol(Tls, absent, &ours), Err(ProtocolRefusal::NoCredentials { protocol: Tls }));
        assert_eq!(choose_protocol(Wss, absent, &ours), Err(ProtocolRefusal::NoCredentials { protocol: Wss }));
        assert_eq!(choose_protocol(Tcp, absent, &ours), Err(ProtocolRefusal::Open { protocol: Tcp }));
        let given = ProtocolFacts { credentials: Credentials::Given, ..absent };
        assert_eq!(choose_protocol(Tls, given, &ours).expect("tls").0, Protocol::Tls);
        assert_eq!(choose_protocol(Wss, given, &ours).expect("wss").0, Protocol::Wss);
        assert_eq!(choose_protocol(Ws, given, &ours), Err(ProtocolRefusal::EveryInterface));
        assert_eq!(choose_protocol(Inproc, given, &ours), Err(ProtocolRefusal::InProcess));
        let open = ProtocolFacts { secure: false, ..absent };
        assert_eq!(choose_protocol(Tcp, open, &ours).expect("tcp").0, Protocol::Tcp);
        assert_eq!(choose_protocol(Ws, open, &ours), Err(ProtocolRefusal::EveryInterface), "ws: every interface");
    }

    #[test]
    fn names_read_as_dask_writes_them() {
        assert_eq!("gpucluster://".parse::<ProtocolRequest>(), Ok(ProtocolRequest::Gpucluster));
        assert_eq!("ucxx".parse::<ProtocolRequest>(), Ok(ProtocolRequest::Ucx));
        let err = "nope\u{1b}".parse::<ProtocolRequest>().expect_err("unknown");
        assert!(!err.to_string().contains('\u{1b}'), "{err}");
        for p in [Protocol::Tcp, Protocol::Tls, Protocol::Wss, Protocol::Ucx, Protocol::Gpucluster] {
            assert_eq!(p.scheme().parse::<ProtocolRequest>().map(|r| r.name()), Ok(p.scheme()));
        }
    }
}
