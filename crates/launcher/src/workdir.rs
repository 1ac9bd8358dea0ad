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
//! cannot do that, so each directory holds an `owner` file (the launcher's pid and start time):
//! the launcher's guards ([`crate::guard`]), which outlive it just long enough to stop its
//! workers, remove it with [`remove_if_orphaned`]; and [`PrivateDir::create`] first removes this
//! user's directories whose launcher is gone, should a guard have been killed too.

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
        if owner_if_dead(&path, me).is_some() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// The pid of the launcher that made `path`, if `path` is a private directory of user `me`
/// (a real directory, closed to others: nothing anyone else could have placed) whose launcher
/// has ended (a zombie has ended too).
fn owner_if_dead(path: &Path, me: u32) -> Option<u32> {
    let ours = std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_dir() && m.uid() == me && m.permissions().mode() & 0o077 == 0);
    if !ours {
        return None;
    }
    let owner = std::fs::read_to_string(path.join("owner")).ok()?;
    let mut words = owner.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(started))) = (words.next(), words.next()) else { return None };
    let pid = u32::try_from(pid).ok()?;
    let alive = start_time(pid).is_some_and(|t| t == started) && !ended(pid);
    (!alive).then_some(pid)
}

/// Whether process `pid` has ended but not yet been reaped (a zombie).
fn ended(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned)))
        .is_some_and(|state| state == "Z" || state == "X")
}

/// Removes `path` if it is a private directory of ours made by `launcher`, and that launcher has
/// ended: what a guard calls once its worker is gone, when the launcher died without removing its
/// directory. Returns whether it removed it.
pub fn remove_if_orphaned(path: &Path, launcher: u32) -> bool {
    if owner_if_dead(path, my_uid()) != Some(launcher) {
        return false;
    }
    std::fs::remove_dir_all(path).is_ok() || !path.exists()
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

    #[test]
    fn a_dead_launchers_directory_is_removed_by_its_guard_and_no_other() {
        let dir = PrivateDir::create("gpucluster-orphan-test").expect("dir");
        let path = dir.path().to_owned();
        let me = std::process::id();
        // Our own (live) directory: never removed, whoever asks.
        assert!(!remove_if_orphaned(&path, me));
        assert!(path.exists());
        // Named as another launcher's, that launcher being alive: kept.
        let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let other = sleeper.id();
        std::fs::remove_file(path.join("owner")).expect("rm owner");
        std::fs::write(path.join("owner"), format!("{other} {}\n", start_time(other).expect("start"))).expect("owner");
        assert!(!remove_if_orphaned(&path, other));
        // That launcher dead but not yet reaped (a zombie), then reaped: removed, by its guard.
        sleeper.kill().expect("kill");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!remove_if_orphaned(&path, other.wrapping_add(1)), "only the named launcher's directory");
        assert!(remove_if_orphaned(&path, other), "a zombie launcher has ended");
        let _ = sleeper.wait();
        assert!(!path.exists());
        // Not a private directory of ours: never touched.
        let open = std::env::temp_dir().join(format!("gpucluster-orphan-open-{me}"));
        std::fs::create_dir_all(&open).expect("open dir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(open.join("owner"), "4194304 1\n").expect("owner");
        assert!(!remove_if_orphaned(&open, 4_194_304));
        assert!(open.exists());
        let _ = std::fs::remove_dir_all(&open);
        drop(dir);
    }
}
