//! The cluster's secret and the challenge-response that proves a peer holds it, without the
//! secret ever crossing the wire.
//!
//! The listener sends a random nonce; the connector answers with its own nonce and
//! HMAC-SHA256(secret, "gpucluster client" | listener nonce | connector nonce); the listener
//! checks it and answers HMAC-SHA256(secret, "gpucluster server" | connector nonce | listener
//! nonce). No byte of data is read before the first check passes. The gate (`gate.rs`) runs the
//! listener's half on non-blocking sockets, [`authenticate_client`] the connector's on a blocking
//! one; callers with a connection of their own (the Python comm) run both halves through
//! [`Secret`]'s methods. Where a process finds the secret when no launcher handed it one is
//! `secret_file.rs`.

use std::io::{Read, Write};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::TransportError;

/// Bytes of a challenge nonce.
pub(crate) const NONCE: usize = 32;
const TAG_BYTES: usize = 32;
/// Bytes of the connector's answer: its nonce and its tag.
pub(crate) const ANSWER_BYTES: usize = NONCE + TAG_BYTES;

/// The environment variable that carries the cluster's secret (hexadecimal) to the processes
/// gpucluster starts: never their command line, which every user can read in `/proc`.
pub const SECRET_ENV: &str = "GPUCLUSTER_SECRET";

/// The cluster's shared secret.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret from bytes (at least 16).
    ///
    /// # Errors
    /// [`TransportError::Authentication`] for a secret too short to be one.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, TransportError> {
        let bytes = bytes.into();
        if bytes.len() < 16 {
            return Err(TransportError::Authentication("a cluster secret needs at least 16 bytes".into()));
        }
        Ok(Self(bytes))
    }

    /// A fresh random secret of 32 bytes.
    ///
    /// # Errors
    /// [`TransportError::Io`] if the system has no randomness to give.
    pub fn random() -> Result<Self, TransportError> {
        Ok(Self(random_bytes::<32>()?.to_vec()))
    }

    /// The secret as hexadecimal, for handing to workers in their environment.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads the hexadecimal form.
    ///
    /// # Errors
    /// [`TransportError::Authentication`] for text that is not even-length hexadecimal.
    pub fn from_hex(text: &str) -> Result<Self, TransportError> {
        let bad = || TransportError::Authentication("the cluster secret must be hexadecimal".into());
        if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let bytes = (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| bad()));
        Self::new(bytes.collect::<Result<Vec<_>, _>>()?)
    }

    /// The secret in [`SECRET_ENV`], if that is set.
    ///
    /// # Errors
    /// [`TransportError::Authentication`] if it is set but not a secret.
    pub fn from_env() -> Result<Option<Self>, TransportError> {
        match std::env::var(SECRET_ENV) {
            Ok(text) => Self::from_hex(text.trim()).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(TransportError::Authentication(format!("{SECRET_ENV} is not hexadecimal")))
            }
        }
    }

    fn mac(&self, label: &[u8], a: &[u8], b: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(label);
        mac.update(a);
        mac.update(b);
        mac
    }
}

/// `N` bytes from the kernel's random source (`getrandom`): for secrets, nonces and the names of
/// local listeners, which must not be guessable.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], TransportError> {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: writing into our own buffer within bounds.
        let n = unsafe { libc::getrandom(out[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n < 0 {
            return Err(TransportError::Io { call: "getrandom", error: std::io::Error::last_os_error() });
        }
        filled += n as usize;
    }
    Ok(out)
}

/// The listener's half of the handshake, after it sent the nonce `ours` and read the
/// connector's `answer` ([`ANSWER_BYTES`]): checks it, and returns the proof to send back. The
/// gate (`gate.rs`) runs it on non-blocking sockets, so no peer can hold a thread with it.
pub(crate) fn check_answer(
    secret: &Secret,
    ours: &[u8; NONCE],
    answer: &[u8],
) -> Result<[u8; TAG_BYTES], TransportError> {
    if answer.len() != ANSWER_BYTES {
        return Err(TransportError::Protocol("a challenge answer of the wrong size".into()));
    }
    let (theirs, tag) = answer.split_at(NONCE);
    secret
        .mac(b"gpucluster client", ours, theirs)
        .verify_slice(tag)
        .map_err(|_| TransportError::Authentication("the peer does not hold the cluster's secret".into()))?;
    Ok(secret.mac(b"gpucluster server", theirs, ours).finalize().into_bytes().into())
}

/// The connector's half of the handshake (blocking: the caller arms a deadline on `stream`).
pub(crate) fn authenticate_client(stream: &mut (impl Read + Write), secret: &Secret) -> Result<(), TransportError> {
    let mut challenge = [0u8; NONCE];
    stream.read_exact(&mut challenge).map_err(TransportError::io("read challenge"))?;
    let answer = secret.answer(&challenge)?;
    stream.write_all(&answer).map_err(TransportError::io("answer challenge"))?;
    let mut proof = [0u8; TAG_BYTES];
    stream.read_exact(&mut proof).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => TransportError::Authentication(
            "the peer closed the connection instead of proving itself: we do not hold its cluster secret, \
             or it is turning connections away"
                .into(),
        ),
        _ => TransportError::io("read proof")(e),
    })?;
    secret.check_proof(&challenge, &answer, &proof)
}

/// The challenge-response without a socket, for callers that carry it over a connection of
/// their own (the Python comm carries it over Dask's TCP streams). The exchange: the listener
/// sends [`Secret::challenge`] ([`NONCE_BYTES`]); the connector sends [`Secret::answer`]
/// ([`ANSWER_LEN`]); the listener checks it with [`Secret::check_answer`] and sends the proof it
/// returns ([`PROOF_BYTES`]); the connector checks that with [`Secret::check_proof`].
impl Secret {
    /// A fresh random challenge.
    ///
    /// # Errors
    /// [`TransportError::Io`] if the system has no randomness to give.
    pub fn challenge() -> Result<[u8; NONCE], TransportError> {
        random_bytes::<NONCE>()
    }

    /// The connector's answer to `challenge`: a nonce of its own and its HMAC.
    ///
    /// # Errors
    /// [`TransportError::Protocol`] for a challenge of the wrong size; no randomness.
    pub fn answer(&self, challenge: &[u8]) -> Result<Vec<u8>, TransportError> {
        if challenge.len() != NONCE {
            return Err(TransportError::Protocol("a challenge of the wrong size".into()));
        }
        let ours = random_bytes::<NONCE>()?;
        let tag = self.mac(b"gpucluster client", challenge, &ours).finalize().into_bytes();
        let mut answer = Vec::with_capacity(ANSWER_BYTES);
        answer.extend_from_slice(&ours);
        answer.extend_from_slice(&tag);
        Ok(answer)
    }

    /// The listener's check of the `answer` to its challenge `ours`; returns the proof to send
    /// back.
    ///
    /// # Errors
    /// [`TransportError::Authentication`] if the answer was not made with this secret;
    /// [`TransportError::Protocol`] for sizes that are wrong.
    pub fn check_answer(&self, ours: &[u8], answer: &[u8]) -> Result<[u8; TAG_BYTES], TransportError> {
        let ours: &[u8; NONCE] =
            ours.try_into().map_err(|_| TransportError::Protocol("a challenge of the wrong size".into()))?;
        check_answer(self, ours, answer)
    }

    /// The connector's check of the listener's `proof`, given the `challenge` it received and the
    /// `answer` it sent.
    ///
    /// # Errors
    /// [`TransportError::Authentication`] if the listener does not hold this secret;
    /// [`TransportError::Protocol`] for sizes that are wrong.
    pub fn check_proof(&self, challenge: &[u8], answer: &[u8], proof: &[u8]) -> Result<(), TransportError> {
        if challenge.len() != NONCE || answer.len() != ANSWER_BYTES {
            return Err(TransportError::Protocol("a challenge or answer of the wrong size".into()));
        }
        self.mac(b"gpucluster server", &answer[..NONCE], challenge)
            .verify_slice(proof)
            .map_err(|_| TransportError::Authentication("the peer does not hold the cluster's secret".into()))
    }
}

/// Bytes of a challenge ([`Secret::challenge`]).
pub const NONCE_BYTES: usize = NONCE;
/// Bytes of an answer ([`Secret::answer`]).
pub const ANSWER_LEN: usize = ANSWER_BYTES;
/// Bytes of a proof ([`Secret::check_answer`]).
pub const PROOF_BYTES: usize = TAG_BYTES;
