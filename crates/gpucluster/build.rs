//! Build script of the `gpucluster` binary: records what was built, for `gpucluster --version`.
//!
//! It sets `GPUCLUSTER_BUILD` to `commit <short hash>[-dirty]; features: <list>`. The commit comes
//! from git when the source is a git checkout and git is installed; otherwise it is `unknown`, so
//! a build from a tarball works as any other. The script reruns when HEAD or the branch it points
//! to moves, or this crate's source changes (the crate is rebuilt then anyway): not on every
//! build. A tree made dirty elsewhere after the last build shows the state of that build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Files whose change means HEAD moved: HEAD itself, the branch it names (or the folder it would
/// be written to, while the branch is only packed) and the packed refs.
fn watched(dir: &Path) -> Vec<PathBuf> {
    let path = |name: &str| git(dir, &["rev-parse", "--git-path", name]).map(|p| dir.join(p));
    let mut files: Vec<PathBuf> = [path("HEAD"), path("packed-refs")].into_iter().flatten().collect();
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]).and_then(|b| path(&b)) {
        if branch.exists() {
            files.push(branch);
        } else {
            files.extend(branch.parent().map(Path::to_path_buf));
        }
    }
    // A path that does not exist would make cargo rerun this script on every build.
    files.retain(|f| f.exists());
    files
}

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src");
    for file in watched(&dir) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let commit = match git(&dir, &["rev-parse", "--short", "HEAD"]) {
        Some(hash) if !hash.is_empty() => {
            // Untracked files do not make a build dirty; `--no-optional-locks` keeps git from
            // rewriting the index (which would change what cargo watches).
            let status = git(&dir, &["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"]);
            if status.is_some_and(|s| !s.is_empty()) { format!("{hash}-dirty") } else { hash }
        }
        _ => "unknown".to_owned(),
    };
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(|f| f.to_lowercase().replace('_', "-")))
        .filter(|f| f != "default")
        .collect();
    features.sort();
    let features = if features.is_empty() { "none".to_owned() } else { features.join(", ") };
    println!("cargo:rustc-env=GPUCLUSTER_BUILD=commit {commit}; features: {features}");
}
