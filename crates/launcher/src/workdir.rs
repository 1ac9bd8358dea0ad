//! Private working directories: created fresh for each launcher, never reused, never reached
//! through a link, readable by their owner only, and removed however the launcher ends.
//!
//! A predictable path in a shared `/tmp` lets another user of the host pre-create it (and read
//! or replace what we write there) or plant a link that makes us overwrite a file we own. So the
//! directory's name carries 64 random bits, `mkdir` must create it (it fails on anything already
//! there, a link included, and never follows one), its mode is 0700, and files inside are
//! created with `O_EXCL | O_NOFOLLOW` and mode 0600. It lives in `$XDG_RUNTIME_DIR` (a per-user
//! tmpfs) where that is private, else in the temporary directory.
//!
//! The directory is removed when its [`PrivateDir`] is dropped. A launcher killed by SIGKILL
//! cannot do that, so each directory holds an `owner` file (the launcher's pid and start time),
//! and [`PrivateDir::create`] first removes this user's directories whose launcher is gone.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::LauncherError;

/// A private directory, removed on drop.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

fn random_hex() -> Result<String, std::io::Error> {
    let mut bytes = [0u8; 8];
    // SAFETY: writing into our own 8-byte buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err(std::io::Error::last_os_error());
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn my_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// The start time of process `pid` (clock ticks since boot), to tell a live launcher from a
/// later process that reused its pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Where private directories go: `$XDG_RUNTIME_DIR` if it is a directory of ours that nobody
/// else can enter, else the temporary directory.
fn parent() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && dir.is_absolute()
        && std::fs::symlink_metadata(&dir)
            .is_ok_and(|m| m.is_dir() && m.uid() == my_uid() && m.permissions().mode() & 0o077 == 0)
    {
        return dir;
    }
    std::env::temp_dir()
}

impl PrivateDir {
    /// Creates `<parent>/<prefix>-<16 hex digits>`, mode 0700, after removing this user's
    /// directories of the same prefix whose launcher has died.
    ///
    /// # Errors
    /// [`LauncherError::PrivateDir`] if no fresh directory can be made.
    pub fn create(prefix: &str) -> Result<Self, LauncherError> {
        let parent = parent();
        sweep_stale(&parent, prefix);
        let failed = |path: &Path, e: std::io::Error| LauncherError::PrivateDir { path: path.to_owned(), error: e };
        let mut last = None;
        for _ in 0..8 {
            let name = random_hex().map_err(|e| failed(&parent, e))?;
            let path = parent.join(format!("{prefix}-{name}"));
            // mkdir fails on anything already there and never follows a link.
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let dir = Self { path };
                    dir.check().map_err(|e| failed(&dir.path, e))?;
                    let me = std::process::id();
                    let owner = format!("{me} {}\n", start_time(me).unwrap_or(0));
                    dir.write("owner", owner.as_bytes())?;
                    return Ok(dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(failed(&path, e)),
                Err(e) => return Err(failed(&path, e)),
            }
        }
        Err(last.unwrap_or_else(|| failed(&parent, std::io::Error::other("no free name"))))
    }

    /// Checks that the directory is still ours, a real directory, and closed to others.
    fn check(&self) -> std::io::Result<()> {
        let m = std::fs::symlink_metadata(&self.path)?;
        if !m.is_dir() || m.uid() != my_uid() || m.permissions().mode() & 0o077 != 0 {
            return Err(std::io::Error::other("it is not a private directory of ours"));
        }
        Ok(())
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the file `name` inside (mode 0600; it must not exist yet, and a link is never
    /// followed) and writes `contents`; returns its path.
    ///
    /// # Errors
    /// [`LauncherError::PrivateDir`] if the file cannot be created or written.
    pub fn write(&self, name: &str, contents: &[u8]) -> Result<PathBuf, LauncherError> {
        let path = self.path.join(name);
        let failed = |e: std::io::Error| LauncherError::PrivateDir { path: path.clone(), error: e };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(failed)?;
        file.write_all(contents).map_err(failed)?;
        Ok(path)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes `parent/<prefix>-*` directories of this user whose launcher is gone.
fn sweep_stale(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    let me = my_uid();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        if rest.len() != 16 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let path = entry.path();
        // Only real directories of ours, closed to others: nothing anyone else could have placed.
        let ours = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_dir() && m.uid() == me && m.permissions().mode() & 0o077 == 0);
        if !ours {
            continue;
        }
        let Ok(owner) = std::fs::read_to_string(path.join("owner")) else { continue };
        let mut words = owner.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(pid)), Some(Ok(started))) = (words.next(), words.next()) else { continue };
        let alive = u32::try_from(pid).ok().and_then(start_time).is_some_and(|t| t == started);
        if !alive {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_private_directory_is_removed_on_drop() {
        let dir = PrivateDir::create("gpucluster-test").expect("create");
        let path = dir.path().to_owned();
        let m = std::fs::symlink_metadata(&path).expect("stat");
        assert_eq!(m.permissions().mode() & 0o777, 0o700);
        let file = dir.write("secret", b"x").expect("write");
        assert_eq!(std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777, 0o600);
        assert!(dir.write("secret", b"y").is_err(), "an existing file is never overwritten");
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn a_planted_link_is_never_followed() {
        let dir = PrivateDir::create("gpucluster-test").expect("create");
        let target = dir.path().join("target");
        std::fs::write(&target, "mine").expect("write");
        std::os::unix::fs::symlink(&target, dir.path().join("planted")).expect("link");
        assert!(dir.write("planted", b"overwritten").is_err());
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "mine");
    }

    #[test]
    fn directories_of_dead_launchers_are_swept() {
        let parent = parent();
        let stale = parent.join(format!("gpucluster-sweep-{:016x}", u64::from(std::process::id())));
        let _ = std::fs::remove_dir_all(&stale);
        std::fs::DirBuilder::new().mode(0o700).create(&stale).expect("mkdir");
        // A pid that cannot be alive, and a live one with the wrong start time.
        std::fs::write(stale.join("owner"), "4194304 1\n").expect("owner");
        let live = parent.join(format!("gpucluster-sweep-{:016x}", u64::from(std::process::id()) + 1));
        let _ = std::fs::remove_dir_all(&live);
        std::fs::DirBuilder::new().mode(0o700).create(&live).expect("mkdir");
        let me = std::process::id();
        std::fs::write(live.join("owner"), format!("{me} {}\n", start_time(me).expect("start"))).expect("owner");
        sweep_stale(&parent, "gpucluster-sweep");
        assert!(!stale.exists(), "a dead launcher's directory is removed");
        assert!(live.exists(), "a live launcher's directory is kept");
        let _ = std::fs::remove_dir_all(&live);
    }
}
