//! The TLS credentials of a secured Dask cluster: a fresh CA and one certificate (rcgen) that
//! the scheduler, the workers and the user's client present, kept in a private directory, and
//! the check that credentials found on disk are closed to other users.
//!
//! It decides nothing about when TLS is used (that is [`super::spec`]'s) and starts nothing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::scheduler_file::only_ours;
use crate::LauncherError;
use crate::workdir::PrivateDir;
/// The TLS credentials of a cluster: a CA, and one certificate with its key that the
/// scheduler, the workers and the user's client all present (Dask checks the peer's certificate
/// against the CA in both directions, not its host name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate (`--tls-ca-file`).
    pub ca: PathBuf,
    /// The certificate (`--tls-cert`).
    pub cert: PathBuf,
    /// Its private key (`--tls-key`), mode 0600.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Makes a fresh CA (whose key is never written down) and a certificate for `hosts` (names
    /// or IP addresses) into `dir`.
    ///
    /// # Errors
    /// [`LauncherError::Tls`] if generation fails, [`LauncherError::PrivateDir`] if writing does.
    pub fn generate(dir: &PrivateDir, hosts: &[String]) -> Result<Self, LauncherError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose, SanType,
        };
        let tls = |e: rcgen::Error| LauncherError::Tls(e.to_string());
        let ca_key = KeyPair::generate().map_err(tls)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name.push(DnType::CommonName, "gpucluster dask local CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).map_err(tls)?;
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().map_err(tls)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        params.distinguished_name.push(DnType::CommonName, "gpucluster dask local");
        for host in hosts {
            let san = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.clone().try_into().map_err(tls)?),
            };
            params.subject_alt_names.push(san);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).map_err(tls)?;
        Ok(Self {
            ca: dir.write("ca.pem", ca_cert.pem().as_bytes())?,
            cert: dir.write("cert.pem", cert.pem().as_bytes())?,
            key: dir.write("key.pem", key.serialize_pem().as_bytes())?,
        })
    }

    /// The credentials `dask local` wrote beside `scheduler_file`, if all three are there.
    pub fn beside(scheduler_file: &Path) -> Option<Self> {
        let dir = scheduler_file.parent()?;
        let files = Self { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        (files.ca.is_file() && files.cert.is_file() && files.key.is_file()).then_some(files)
    }

    /// Checks that nobody else can change them: whoever could would choose whom our workers
    /// trust (a CA of theirs) and so run code as us.
    ///
    /// # Errors
    /// [`LauncherError::UntrustedCredentials`] naming the file and what is wrong with it.
    pub fn check(&self) -> Result<(), LauncherError> {
        for file in [&self.ca, &self.cert, &self.key] {
            only_ours(file).map_err(|why| {
                LauncherError::UntrustedCredentials(format!(
                    "{} {why}: whoever can change the cluster's credentials chooses whom your workers trust",
                    file.display()
                ))
            })?;
        }
        // Whoever can read a key (the key file, or a certificate file that holds one too) can
        // connect as the cluster's own processes do.
        use std::os::unix::fs::MetadataExt;
        for file in [&self.key, &self.cert] {
            let mode = std::fs::metadata(file).map(|m| m.mode() & 0o777).unwrap_or(0);
            let holds_a_key = file == &self.key || {
                let mut head = Vec::new();
                let read = std::fs::File::open(file)
                    .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 1 << 20), &mut head));
                read.is_ok() && head.windows(11).any(|w| w == b"PRIVATE KEY")
            };
            if holds_a_key && mode & 0o077 != 0 {
                return Err(LauncherError::UntrustedCredentials(format!(
                    "{} holds a private key that other users can read (mode {mode:o}): whoever reads it can connect \
                     to the cluster as you; `chmod 600` it",
                    file.display()
                )));
            }
        }
        Ok(())
    }

    /// The Dask command-line flags that use them.
    pub fn args(&self) -> Vec<OsString> {
        vec![
            "--tls-ca-file".into(),
            self.ca.clone().into(),
            "--tls-cert".into(),
            self.cert.clone().into(),
            "--tls-key".into(),
            self.key.clone().into(),
        ]
    }

    /// Python that connects a client to the cluster of `scheduler_file` with these credentials.
    pub fn client_code(&self, scheduler_file: &Path) -> String {
        format!(
            "Client(scheduler_file={:?}, security=Security(tls_ca_file={:?}, tls_client_cert={:?}, \
             tls_client_key={:?}, require_encryption=True))",
            scheduler_file.display().to_string(),
            self.ca.display().to_string(),
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_nobody_else_can_change_are_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = PrivateDir::create("gpucluster-test").expect("dir");
        let mine = dir.write("mine.pem", b"x").expect("write");
        only_ours(&mine).expect("a file of ours in a private directory");
        // A sticky, world-writable directory (like /tmp): others cannot replace our file there.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        std::fs::write(shared.join("f"), "x").expect("write");
        only_ours(&shared.join("f")).expect("sticky");
        // Without the sticky bit, they could.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(only_ours(&shared.join("f")).expect_err("replaceable").contains("another user can change"));
        // A link of ours to a good file, but in that open directory: someone else could swap the
        // link; and a private directory inside the open one: someone else could swap the directory.
        let link = shared.join("to-mine.pem");
        std::os::unix::fs::symlink(&mine, &link).expect("link");
        assert!(only_ours(&link).expect_err("the link's directory").contains("another user can change"));
        let inner = shared.join("inner");
        std::fs::create_dir(&inner).expect("mkdir");
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::write(inner.join("f"), "x").expect("write");
        assert!(only_ours(&inner.join("f")).expect_err("a directory above").contains("another user can change"));
        assert!(only_ours(dir.path()).expect_err("a directory").contains("not a regular file"));
        std::fs::remove_file(&link).expect("rm");
        // SAFETY: getuid cannot fail.
        if unsafe { libc::getuid() } == 0 {
            // A link of another user's pointing at our file, and a directory of another user's.
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
            let link = shared.join("link");
            std::os::unix::fs::symlink(&mine, &link).expect("link");
            std::os::unix::fs::lchown(&link, Some(65534), None).expect("lchown");
            assert!(only_ours(&link).expect_err("foreign link").contains("is a link that belongs to user 65534"));
            std::os::unix::fs::chown(&shared, Some(65534), None).expect("chown");
            assert!(only_ours(&shared.join("f")).expect_err("foreign dir").contains("another user can change"));
        }
        let tls = TlsFiles::generate(&dir, &["127.0.0.1".into()]).expect("generate");
        tls.check().expect("ours");
        std::fs::set_permissions(&tls.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = tls.check().expect_err("a key others can read");
        assert!(err.to_string().contains("holds a private key that other users can read (mode 644)"), "{err}");
        std::fs::set_permissions(&tls.key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::set_permissions(&tls.ca, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(matches!(tls.check(), Err(LauncherError::UntrustedCredentials(_))));
    }

    /// The plan of the simulated A30 (4 MIG instances) and workers for it on simulated devices,
    /// with a Python that has dask-cuda or not.
    #[test]
    fn tls_credentials_are_private_and_found_beside_the_scheduler_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = PrivateDir::create("gpucluster-test").expect("dir");
        let tls = TlsFiles::generate(&dir, &["127.0.0.1".into(), "localhost".into()]).expect("generate");
        for f in [&tls.ca, &tls.cert, &tls.key] {
            let mode = std::fs::metadata(f).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        let key = std::fs::read_to_string(&tls.key).expect("key");
        assert!(key.contains("PRIVATE KEY"));
        let ca = std::fs::read_to_string(&tls.ca).expect("ca");
        assert!(ca.contains("BEGIN CERTIFICATE") && !ca.contains("PRIVATE"), "the CA's key is never written");
        assert_eq!(TlsFiles::beside(&dir.path().join("scheduler.json")), Some(tls.clone()));
        assert!(tls.client_code(&dir.path().join("scheduler.json")).contains("require_encryption=True"));
    }
}
