//! Cross-crate tests: the command line driven in process, over every simulated machine.
//! One binary, one module per area (see `docs/ARCHITECTURE.md`, testing).

mod dask_spec;
mod list;
mod plan;
mod regression;

/// Runs gpucluster with `args` and returns (status, stdout, stderr).
pub(crate) fn gpucluster(args: &[&str]) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = gpucluster::run(std::iter::once("gpucluster").chain(args.iter().copied()), &mut out, &mut err);
    (status, String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned())
}

/// A scratch directory removed when dropped.
pub(crate) struct Scratch(pub(crate) std::path::PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gpucluster-it-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
