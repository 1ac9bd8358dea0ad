//! `gpucluster dask local` and `gpucluster dask worker`: the plan's workers as Dask workers.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Args;
use gpu_topology::TopologySpec;
use launcher::Supervision;
use launcher::dask::{self, DaskWorkers};

use crate::cli::SelectionArgs;

#[derive(Debug, Args)]
pub(crate) struct DaskArgs {
    #[command(flatten)]
    selection: SelectionArgs,
    /// The Python interpreter with Dask (and dask-cuda, used where installed).
    #[arg(long, env = "GPUCLUSTER_PYTHON", default_value = "python3", value_name = "PYTHON")]
    python: OsString,
    /// The address workers (and the scheduler of `dask local`) listen on.
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Restart workers that fail (never, on-failure).
    #[arg(long, default_value = "on-failure", value_parser = ["never", "on-failure"], value_name = "WHEN")]
    restart: String,
    /// Most restarts per worker.
    #[arg(long, default_value_t = 3, value_name = "N")]
    max_restarts: u32,
    /// Seconds workers get to stop after SIGINT or SIGTERM before they are killed.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    grace: f64,
}

#[derive(Debug, Args)]
pub(crate) struct DaskWorkerArgs {
    /// The scheduler file of the cluster to join (written by `dask scheduler --scheduler-file`).
    #[arg(long, value_name = "FILE")]
    pub(crate) scheduler_file: PathBuf,
    #[command(flatten)]
    pub(crate) common: DaskArgs,
}

/// Writes workers' output through, and says once when every worker has registered.
struct ReadyWatch {
    out: std::io::Stdout,
    started: Instant,
    expected: usize,
    registered: usize,
}

impl Write for ReadyWatch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let registered = String::from_utf8_lossy(buf).matches("Registered to:").count();
        self.out.write_all(buf)?;
        if registered > 0 && self.registered < self.expected {
            self.registered += registered;
            if self.registered >= self.expected {
                writeln!(
                    self.out,
                    "all {} Dask worker(s) registered after {:.2} s",
                    self.expected,
                    self.started.elapsed().as_secs_f64()
                )?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

pub(crate) async fn run(
    spec: &TopologySpec,
    args: DaskArgs,
    scheduler_file: Option<PathBuf>,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let started = Instant::now();
    let supervision = Supervision::from_flags(args.grace, args.restart == "on-failure", args.max_restarts)?;
    let python = dask::probe_python(&args.python)?;
    if let Some(file) = &scheduler_file {
        let address = dask::scheduler_address(file)?;
        writeln!(out, "joining the Dask scheduler at {address}")?;
    }
    let snapshot = args.selection.snapshot(spec).await?;
    if snapshot.hosts.len() > 1 {
        anyhow::bail!(
            "Dask workers run on their own host: run `gpucluster dask worker` on each host, without --inventory"
        );
    }
    let plan = cluster_core::plan(&snapshot, &args.selection.request())?;
    let local = scheduler_file.is_none();
    let dir = std::env::temp_dir().join(format!("gpucluster-dask-{}", std::process::id()));
    let file = match scheduler_file {
        Some(f) => f,
        None => {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            dir.join("scheduler.json")
        }
    };
    let output = crate::plan::PlanOutput::new(&snapshot, &plan);
    let all_nvlink = output.paths().iter().all(|p| p.rule() == transport::PathRule::NvLink);
    let (protocol, why) = dask::choose_protocol(all_nvlink, plan.workers.len(), &python);
    let config = DaskWorkers {
        python: python.clone(),
        scheduler_file: file.clone(),
        host: args.host.clone(),
        host_memory_per_worker: dask::host_memory().map(|m| m / plan.workers.len().max(1) as u64),
        // Joining workers follow the scheduler's protocol; a local cluster sets it.
        protocol: (local && protocol != "tcp").then_some(protocol),
    };
    let mut specs = dask::worker_specs(&plan.workers, &config);
    if local {
        specs.insert(0, dask::scheduler_spec(&python, &file, args.host.as_deref(), protocol));
        writeln!(out, "scheduler file: {} (connect with distributed.Client(scheduler_file=...))", file.display())?;
    }
    writeln!(
        out,
        "{} {} worker(s) ({} from {}), one per device{}",
        plan.workers.len(),
        if python.dask_cuda { "dask-cuda" } else { "Dask" },
        python.python.to_string_lossy(),
        python.distributed,
        if local { format!("; protocol {protocol}: {why}") } else { String::new() }
    )?;
    out.flush()?;
    let sink: launcher::Sink = Arc::new(Mutex::new(ReadyWatch {
        out: std::io::stdout(),
        started,
        expected: plan.workers.len(),
        registered: 0,
    }));
    let outcomes = launcher::supervise(specs, &supervision, sink).await;
    if local {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let outcomes = outcomes?;
    writeln!(out, "summary: {} process(es) ended after {:.2} s", outcomes.len(), started.elapsed().as_secs_f64())?;
    for o in &outcomes {
        writeln!(out, "  {o}")?;
    }
    // Stopped by a signal is how these end; anything else is a failure.
    let signalled = |e: launcher::Exit| matches!(e, launcher::Exit::Signal(_)) || e.success();
    Ok(if outcomes.iter().all(|o| signalled(o.exit)) { 0 } else { 1 })
}
