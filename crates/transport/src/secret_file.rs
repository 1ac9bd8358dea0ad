//! Where a process finds the cluster's secret when no launcher handed it one: the secret of
//! the user, in a file only that user can read.
//!
//! The launcher hands its processes a fresh secret in [`SECRET_ENV`](crate::SECRET_ENV). A Dask
//! cluster started from Python (`LocalCluster(protocol="gpucluster")`, a worker joined by hand,
//! the client in a notebook) has no launcher: its processes agree by reading the same file,
//! `$XDG_CONFIG_HOME/gpucluster/secret` (else `~/.config/gpucluster/secret`), made on first use
//! with 32 random bytes, mode 0600 in a 0700 directory. Another user can neither read it nor
//! plant one: the file and its directory must belong to us, and be closed to everyone else, or
//! the secret is refused with the reason. Across hosts, copy the file (as Munge's key is copied),
//! or set `GPUCLUSTER_SECRET_FILE`.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{Secret, TransportError};

/// Names a file holding the secret (hexadecimal), instead of the per-user default.
pub const SECRET_FILE_ENV: &str = "GPUCLUSTER_SECRET_FILE";

fn refuse(path: &Path, why: impl std::fmt::Display) -> TransportError {
    TransportError::Authentication(format!("cannot use the cluster secret in {}: {why}", path.display()))
}

/// The file [`Secret::for_this_user`] reads when no variable names a secret.
///
/// # Errors
/// Neither `XDG_CONFIG_HOME` nor `HOME` is set.
pub fn default_secret_file() -> Result<PathBuf, TransportError> {
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or_else(|| {
            TransportError::Authentication(format!(
                "no cluster secret: set {} or {SECRET_FILE_ENV}, or HOME so that one can be kept in \
                 ~/.config/gpucluster/secret",
                crate::SECRET_ENV
            ))
        })?)
        .join(".config"),
    };
    Ok(config.join("gpucluster").join("secret"))
}

/// Checks that `meta` (of `path`) is ours and that nobody else may write it (nor, for a file,
/// read it).
fn check_private(path: &Path, meta: &std::fs::Metadata, file: bool) -> Result<(), TransportError> {
    // SAFETY: a plain call without arguments.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(refuse(path, format!("it belongs to user {}, not to us ({me})", meta.uid())));
    }
    let open_to_others = if file { meta.mode() & 0o077 } else { meta.mode() & 0o022 };
    if open_to_others != 0 {
        let fix = if file { "chmod 600" } else { "chmod go-w" };
        return Err(refuse(path, format!("its mode {:o} lets other users in ({fix} it)", meta.mode() & 0o777)));
    }
    Ok(())
}

fn read_secret(path: &Path) -> Result<Secret, TransportError> {
    // O_NONBLOCK: opening a FIFO someone planted there would otherwise wait for a writer for
    // ever (and be retried after Ctrl-C); it opens at once and is refused below as not a regular
    // file. On a regular file the flag changes nothing.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| refuse(path, e))?;
    let meta = file.metadata().map_err(|e| refuse(path, e))?;
    if !meta.is_file() {
        return Err(refuse(path, "not a regular file"));
    }
    check_private(path, &meta, true)?;
    let mut text = String::new();
    Read::by_ref(&mut file).take(4096).read_to_string(&mut text).map_err(|e| refuse(path, e))?;
    Secret::from_hex(text.trim()).map_err(|e| refuse(path, e))
}

/// Makes the file with a fresh secret; `Ok(false)` if another process made it first.
fn create_secret(path: &Path) -> Result<bool, TransportError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| refuse(dir, e))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| refuse(dir, e))?;
    if !meta.is_dir() {
        return Err(refuse(dir, "not a directory"));
    }
    check_private(dir, &meta, false)?;
    let secret = Secret::random()?;
    // Written under a temporary name and linked into place, so no reader sees half a secret.
    let temporary = dir.join(format!(".secret.{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temporary)
        .map_err(|e| refuse(&temporary, e))?;
    let written = file.write_all(format!("{}\n", secret.to_hex()).as_bytes()).and_then(|()| file.sync_all());
    let linked = written.and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(refuse(path, e)),
    }
}

impl Secret {
    /// The secret of this process's cluster: [`SECRET_ENV`](crate::SECRET_ENV) (what launchers
    /// hand their processes), else the file named by [`SECRET_FILE_ENV`], else the user's own
    /// secret file ([`default_secret_file`]), made on first use.
    ///
    /// # Errors
    /// [`TransportError::Authentication`] with the reason: a variable that holds no secret, a
    /// file that is not ours or is open to other users, no home directory.
    pub fn for_this_user() -> Result<Self, TransportError> {
        if let Some(secret) = Secret::from_env()? {
            return Ok(secret);
        }
        if let Some(path) = std::env::var_os(SECRET_FILE_ENV).filter(|v| !v.is_empty()) {
            return read_secret(Path::new(&path));
        }
        let path = default_secret_file()?;
        match read_secret(&path) {
            Ok(secret) => Ok(secret),
            Err(_) if !path.exists() && std::fs::symlink_metadata(&path).is_err() => {
                create_secret(&path)?;
                read_secret(&path)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gpucluster-secret-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_secret_is_made_once_private_and_read_back_the_same() {
        let dir = scratch("made");
        let path = dir.join("gpucluster").join("secret");
        assert!(create_secret(&path).expect("create"));
        assert!(!create_secret(&path).expect("second"), "a second maker keeps the first secret");
        let meta = std::fs::metadata(&path).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().expect("dir")).expect("dir").permissions().mode() & 0o777, 0o700);
        let a = read_secret(&path).expect("read");
        let b = read_secret(&path).expect("read");
        assert_eq!(a.to_hex(), b.to_hex());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_open_to_others_or_a_link_is_refused_with_the_fix() {
        let dir = scratch("open");
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("secret");
        std::fs::write(&path, "00112233445566778899aabbccddeeff\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read_secret(&path).expect_err("readable by others");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(read_secret(&path).is_ok());
        let link = dir.join("link");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        let err = read_secret(&link).expect_err("a link");
        assert!(err.to_string().contains(&link.display().to_string()), "{err}");
        std::fs::write(&path, "not hex").expect("write");
        let err = read_secret(&path).expect_err("garbage");
        assert!(err.to_string().contains("hexadecimal"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fifo_or_a_device_in_its_place_is_refused_at_once_not_waited_on() {
        let dir = scratch("fifo");
        std::fs::create_dir_all(&dir).expect("dir");
        let fifo = dir.join("secret");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo");
        let started = std::time::Instant::now();
        let err = read_secret(&fifo).expect_err("a FIFO");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "waited {:?}", started.elapsed());
        let err = read_secret(Path::new("/dev/zero")).expect_err("a device");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
