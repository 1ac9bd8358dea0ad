//! `gpucluster dask local` and `gpucluster dask worker`: the plan's workers as Dask workers.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use cluster_core::wording::CommandLine;
use gpu_topology::TopologySpec;
use launcher::dask::{self, ClusterSpec, HostFacts, SchedulerRequest, TlsFiles, python, scheduler_file, session};
use launcher::workdir::PrivateDir;
use launcher::{Signals, Stop, StopWhen, Supervision};

use crate::args::{RestartArg, SelectionArgs};

#[derive(Debug, Args)]
pub(crate) struct DaskArgs {
    #[command(flatten)]
    selection: SelectionArgs,
    /// The Python interpreter with Dask (and dask-cuda, used where installed).
    #[arg(long, env = "GPUCLUSTER_PYTHON", default_value = "python3", value_name = "PYTHON")]
    python: OsString,
    /// The address workers (and the scheduler of `dask local`) listen on. Default: 127.0.0.1 for
    /// `dask local` (this host only); Dask's default (every interface) for `dask worker`, whose
    /// scheduler and peers are on other hosts.
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Restart workers that fail.
    #[arg(long, value_enum, default_value_t = RestartArg::OnFailure, value_name = "WHEN")]
    restart: RestartArg,
    /// Most restarts per worker.
    #[arg(long, default_value_t = 3, value_parser = crate::args::max_restarts, allow_negative_numbers = true, value_name = "N")]
    max_restarts: u32,
    /// The comm protocol: auto (gpucluster where its package is installed and workers share the
    /// host, else TCP, over TLS for `dask local`), tcp, ucx or gpucluster.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Auto, value_name = "PROTOCOL")]
    protocol: ProtocolArg,
    /// Further options for every worker, after `--` (e.g. `-- --lifetime 1h --rmm-pool-size 10GB`
    /// for dask-cuda workers): passed after gpucluster's own, so they win where Dask takes an
    /// option's last value.
    #[arg(last = true, value_name = "WORKER_OPTIONS")]
    worker_args: Vec<std::ffi::OsString>,
    /// Seconds workers get to stop after SIGINT, SIGTERM or SIGHUP before they are killed.
    #[arg(long, default_value_t = 10.0, value_parser = crate::args::grace, allow_negative_numbers = true, value_name = "SECONDS")]
    grace: f64,
    /// Host memory per worker, in Dask's grammar: a size (16GB, 2GiB), bytes, a fraction of
    /// this host's memory up to 1 (0.25), auto, or 0 for no limit. Default: this host's memory
    /// split evenly between its workers.
    #[arg(long, value_name = "LIMIT")]
    memory_limit: Option<String>,
    /// Start nothing: print the cluster that would start (its protocol and why, the scheduler,
    /// each worker's environment, Dask settings, resources and limits) as JSON.
    #[arg(long)]
    dry_run: bool,
}

/// `--protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProtocolArg {
    /// gpucluster where its package is installed and workers share the host, else TCP (TLS).
    Auto,
    /// Dask's TCP comm (over TLS for a secured `dask local`).
    Tcp,
    /// UCX (distributed-ucxx); it cannot authenticate peers, so `dask local` needs --insecure.
    Ucx,
    /// gpucluster's comm: device frames between workers of a host over its transport, every
    /// connection proving the cluster's secret.
    Gpucluster,
}

impl From<ProtocolArg> for dask::ProtocolRequest {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::Auto => dask::ProtocolRequest::Auto,
            ProtocolArg::Tcp => dask::ProtocolRequest::Tcp,
            ProtocolArg::Ucx => dask::ProtocolRequest::Ucx,
            ProtocolArg::Gpucluster => dask::ProtocolRequest::Gpucluster,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct DaskLocalArgs {
    #[command(flatten)]
    common: DaskArgs,
    /// Leave the cluster open: no TLS, so any user of this host (or any host that reaches it)
    /// can connect to the scheduler and run code as you. Only on a machine nobody else uses.
    #[arg(long)]
    insecure: bool,
    /// Serve Dask's dashboard from the scheduler, at ADDRESS (default 127.0.0.1:8787: this host
    /// only; it shows task names, call stacks and logs to whoever reaches it). A bare port
    /// (`:8787`) is on the scheduler's host, not every interface. Off by default: the
    /// scheduler's HTTP server then serves nothing.
    #[arg(long, value_name = "ADDRESS", num_args = 0..=1, default_missing_value = "127.0.0.1:8787")]
    dashboard: Option<String>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("scheduler").required(true).args(["address", "scheduler_file"]))]
pub(crate) struct DaskWorkerArgs {
    /// The scheduler to join, as Dask's CLI takes it: tcp://HOST:PORT, tls://..., gpucluster://...
    #[arg(value_name = "SCHEDULER_ADDRESS")]
    address: Option<String>,
    /// The scheduler file of the cluster to join (written by `dask scheduler --scheduler-file`).
    #[arg(long, value_name = "FILE")]
    scheduler_file: Option<PathBuf>,
    /// The CA certificate of a TLS scheduler (default: `ca.pem` beside the scheduler file).
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    tls_ca_file: Option<PathBuf>,
    /// The certificate workers present to a TLS scheduler (default: `cert.pem` beside the file).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca_file", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The certificate's key (default: `key.pem` beside the scheduler file).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca_file", "tls_cert"])]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    common: DaskArgs,
}

/// The cluster's output as the user sees it: Dask's INFO lines left out unless asked for, and no
/// line claiming a dashboard that is not served.
struct Shown {
    out: std::io::Stdout,
    /// Whether Dask's INFO lines are shown (the global `-v`); by default they are left out
    /// (warnings, errors and tracebacks always pass), so that the lines that matter are not buried.
    dask_info: bool,
    /// Whether the scheduler serves a dashboard.
    dashboard: bool,
}

/// Whether a line of Dask's output is one of its INFO log lines (`... - distributed.x - INFO - ...`).
fn dask_info(line: &[u8]) -> bool {
    line.windows(8).any(|w| w == b" - INFO ")
}

impl Write for Shown {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in buf.split_inclusive(|b| *b == b'\n') {
            // Without a dashboard, no line may claim one (Dask names its HTTP server's port so).
            let false_claim = !self.dashboard && line.windows(13).any(|w| w == b"dashboard at:");
            if (self.dask_info || !dask_info(line)) && !false_claim {
                self.out.write_all(line)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Where the workers find their scheduler.
enum Scheduler {
    /// `dask local`: ours, in a private directory, secured unless `insecure`, serving a dashboard
    /// at `dashboard` where asked.
    Local { insecure: bool, dashboard: Option<String> },
    /// `dask worker`: someone else's, from its scheduler file or its address.
    Join { at: JoinAt, tls: Option<TlsFiles> },
}

/// How `dask worker` was told where its scheduler is.
enum JoinAt {
    /// `--scheduler-file FILE` (TLS credentials may lie beside it).
    File(PathBuf),
    /// The address, as Dask's CLI takes it.
    Address(String),
}

/// `dask local`; `dask_info`: whether Dask's INFO lines are shown.
pub(crate) async fn local(
    spec: &TopologySpec,
    args: DaskLocalArgs,
    dask_info: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let scheduler = Scheduler::Local { insecure: args.insecure, dashboard: args.dashboard };
    run(spec, args.common, scheduler, dask_info, out).await
}

/// `dask worker`; `dask_info`: whether Dask's INFO lines are shown.
pub(crate) async fn worker(
    spec: &TopologySpec,
    args: DaskWorkerArgs,
    dask_info: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let tls = match (args.tls_ca_file, args.tls_cert, args.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsFiles { ca, cert, key }),
        _ => None,
    };
    let at = match (args.address, args.scheduler_file) {
        (Some(address), None) => JoinAt::Address(address),
        (None, Some(file)) => JoinAt::File(file),
        // clap's group: exactly one of the two.
        _ => anyhow::bail!("give the scheduler's address or --scheduler-file FILE, not both"),
    };
    run(spec, args.common, Scheduler::Join { at, tls }, dask_info, out).await
}

/// The scheduler a `dask worker` joins: its address, read from its file or given and checked,
/// and the TLS credentials to present (given, or lying beside its scheduler file), checked.
fn join_target(at: JoinAt, tls: Option<TlsFiles>) -> anyhow::Result<(String, Option<TlsFiles>)> {
    let (address, file) = match at {
        JoinAt::File(file) => (scheduler_file::scheduler_address(&file)?, Some(file)),
        JoinAt::Address(address) => {
            scheduler_file::parse_address(&address).map_err(|why| {
                // Shortened: an address is at most a few hundred characters, and the message says why.
                let shown: String = address.chars().take(120).collect();
                let more = if shown.len() < address.len() { "..." } else { "" };
                anyhow::anyhow!("the scheduler address {}{more} {why}", crate::table::escape(&format!("{shown:?}")))
            })?;
            (address, None)
        }
    };
    let tls = match tls {
        Some(t) => Some(t),
        None if address.starts_with("tls://") => Some(
            file.as_deref()
                .and_then(TlsFiles::beside)
                .ok_or_else(|| launcher::LauncherError::TlsNeeded { address: address.clone() })?,
        ),
        None => None,
    };
    if let Some(tls) = &tls {
        tls.check()?;
    }
    Ok((address, tls))
}

async fn run(
    topology: &TopologySpec,
    args: DaskArgs,
    scheduler: Scheduler,
    dask_info: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    // Watched before anything is set up: a signal during set-up stops the cluster cleanly.
    let mut signals = Signals::install()?;
    let interrupted = |signal: i32| {
        tracing::warn!("interrupted ({}) while setting up", launcher::signal_name(signal));
        Ok(launcher::exit_status_after(signal))
    };
    let started = Instant::now();
    let mut supervision = Supervision::from_flags(args.grace, args.restart.into(), args.max_restarts)?;
    supervision.stop_when = StopWhen::EssentialEndsOrNoneLeft;
    supervision.guard = Some(std::env::current_exe().context("finding this program to start the workers")?.into());
    let probe = args.python.clone();
    let python = match signals.or_blocking(move |cancel| python::probe_python(&probe, cancel)).await {
        Ok(python) => python?,
        Err(signal) => return interrupted(signal),
    };
    let facts = &python.facts;
    tracing::info!(
        "Python {}: distributed {}{}{}{}",
        python.program.to_string_lossy(),
        facts.distributed,
        if facts.dask_cuda { ", dask-cuda" } else { "" },
        if facts.ucxx { ", distributed-ucxx" } else { "" },
        if facts.gpucluster { ", the gpucluster package" } else { "" }
    );
    let (target, dashboard, insecure, tls) = match scheduler {
        Scheduler::Join { at, tls } => {
            let (address, tls) = join_target(at, tls)?;
            (SchedulerRequest::Join { address }, None, false, tls)
        }
        Scheduler::Local { insecure, dashboard } => (SchedulerRequest::Local, dashboard, insecure, None),
    };
    let snapshot = args.selection.snapshot(topology).await?;
    if snapshot.hosts.len() > 1 {
        anyhow::bail!(
            "Dask workers run on their own host: run `gpucluster dask worker` on each host, without --inventory"
        );
    }
    let plan = cluster_core::plan(&snapshot, &args.selection.request())?;
    let output = crate::plan::PlanOutput::new(&snapshot, &plan);
    crate::plan::log(&output);

    // A private directory for the workers' files (and, for `dask local`, the scheduler's, its
    // scheduler file and the credentials): never a shared scratch space another user may own.
    // A dry run makes none: its spec names where it would be.
    let dir = if args.dry_run { None } else { Some(PrivateDir::create("gpucluster-dask")?) };
    let directory = dir.as_ref().map_or_else(|| PathBuf::from(DRY_RUN_DIRECTORY), |d| d.path().to_owned());
    let request = dask::Request {
        inventories: args.selection.uses_inventories(),
        protocol: args.protocol.into(),
        insecure,
        credentials: match (&target, &tls) {
            (SchedulerRequest::Local, _) => dask::Credentials::CanGenerate,
            (_, Some(_)) => dask::Credentials::Given,
            (_, None) => dask::Credentials::Absent,
        },
        host: args.host.clone(),
        dashboard,
        memory_limit: args.memory_limit.clone(),
        device_memory_limit_asked: args.selection.request().device_memory_limit
            != cluster_core::PlanRequest::default().device_memory_limit,
        ..dask::Request::new(topology.clone(), target, directory.display().to_string())
    };
    let cluster = dask::cluster_spec(&output, &request, facts, &HostFacts::of_this_process())?;
    session::check_addresses(&cluster)?;
    let Some(dir) = dir else {
        // A dry run: the spec is the answer, and nothing was started or made.
        // Written as text: a reader that goes away (`| head`) is then an I/O error, which ends
        // the program quietly, as for every command.
        writeln!(out, "{}", serde_json::to_string_pretty(&cluster.to_json(&CommandLine))?)?;
        return Ok(0);
    };
    // A scheduler that does not answer is said at once, not after minutes of retries; asked
    // only once the spec is made, so that what the spec refuses is said without asking it.
    if let Some(address) = &cluster.join {
        let (check, program, tls_check) = (address.clone(), python.program.clone(), tls.clone());
        let answered = signals.or_blocking(move |cancel| {
            scheduler_file::check_scheduler(&check)
                .and_then(|()| python::check_handshake(&program, &check, tls_check.as_ref(), cancel))
        });
        match answered.await {
            Ok(answer) => answer?,
            Err(signal) => return interrupted(signal),
        }
        tracing::info!("the scheduler at {address} answered the Dask handshake");
        writeln!(out, "joining the Dask scheduler at {address}")?;
    }
    // Should this launcher be killed (SIGKILL), its guards remove the directory.
    supervision.private_dir = Some(dir.path().to_owned());
    let session = session::prepare(&cluster, &python, &dir, tls, &args.worker_args)?;
    // On a stop the scheduler goes first and closes its workers itself (cleanly: no worker is
    // cut off mid-heartbeat); what it leaves running is signalled after it.
    supervision.essentials_first = cluster.scheduler.is_some();
    header(out, &cluster, &python, session.tls.as_ref(), session.scheduler_file.as_deref())?;
    out.flush()?;
    if let Some(protocol) = cluster.protocol {
        tracing::info!("protocol {}: {}", protocol.scheme(), cluster.protocol_reason);
    }
    let specs = session.processes;
    tracing::info!(
        "starting {} process(es): {}",
        specs.len(),
        specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    for s in &specs {
        tracing::debug!("{}: {:?} {:?}", s.name, s.program, s.args);
    }
    let dashboard = cluster.scheduler.as_ref().and_then(|s| s.dashboard.as_ref()).and(session.scheduler_file);
    let expected = cluster.workers.len();
    let shown = Shown { out: std::io::stdout(), dask_info, dashboard: dashboard.is_some() };
    let ready: session::OnReady = Box::new(move |out| {
        tracing::info!("ready: every Dask worker registered with the scheduler");
        writeln!(out, "all {expected} Dask worker(s) registered after {:.2} s", started.elapsed().as_secs_f64())?;
        if let Some(file) = &dashboard {
            match scheduler_file::dashboard_url(file) {
                Some(url) => writeln!(out, "dashboard: {url}")?,
                None => writeln!(out, "dashboard: the scheduler did not say where it serves it")?,
            }
        }
        Ok(())
    });
    let sink: launcher::Sink = Arc::new(Mutex::new(session::Registrations::new(shown, expected, ready)));
    let supervised = launcher::supervise(specs, &supervision, sink, &mut signals).await;
    // The scheduler file, the credentials and the workers' files go with the cluster.
    drop(dir);
    let supervised = supervised?;
    let status = match &supervised.stop {
        Some(stop) => stop.exit_status().unwrap_or(1),
        None if supervised.outcomes.iter().all(|o| o.exit.success()) => 0,
        None => 1,
    };
    tracing::info!("stopped after {:.2} s, exit status {status}", started.elapsed().as_secs_f64());
    // Best effort: after SIGHUP the terminal may be gone.
    let _ = summary(&supervised, started, out);
    Ok(status)
}

/// Where a dry run's spec says the private directory would be (it makes none).
const DRY_RUN_DIRECTORY: &str = "PRIVATE_DIRECTORY";

fn header(
    out: &mut dyn Write,
    cluster: &ClusterSpec,
    python: &python::Interpreter,
    tls: Option<&TlsFiles>,
    local: Option<&std::path::Path>,
) -> std::io::Result<()> {
    // `dask local`: its scheduler file, and how to connect.
    if let Some(scheduler_file) = local {
        writeln!(out, "scheduler file: {} (removed when the cluster stops)", scheduler_file.display())?;
        match tls {
            _ if cluster.protocol == Some(dask::Protocol::Gpucluster) => {
                writeln!(
                    out,
                    "secured by the cluster's secret (gpucluster comm); from a Python with the gpucluster package:"
                )?;
                writeln!(out, "from distributed import Client")?;
                writeln!(out, "client = Client(scheduler_file={:?})", scheduler_file.display().to_string())?;
            }
            Some(tls) => {
                writeln!(out, "secured with TLS: only holders of {} can connect; from Python:", tls.key.display())?;
                // Unindented, so it pastes into a Python prompt as it is.
                writeln!(out, "from distributed import Client, Security")?;
                writeln!(out, "client = {}", tls.client_code(scheduler_file))?;
            }
            None => {}
        }
    }
    for note in &cluster.notes {
        let text = note.0.to_string();
        writeln!(out, "warning: {text}")?;
        tracing::warn!("{text}");
    }
    writeln!(
        out,
        "{} {} worker(s) (distributed {} in {}), one per device{}",
        cluster.workers.len(),
        if cluster.dask_cuda { "dask-cuda" } else { "Dask" },
        python.facts.distributed,
        python.program.to_string_lossy(),
        cluster.protocol.map_or(String::new(), |p| format!("; protocol {}: {}", p.scheme(), cluster.protocol_reason))
    )?;
    if cluster.simulated {
        writeln!(
            out,
            "simulated devices: plain `dask worker`, distributed's NVML diagnostics off \
             (these devices do not exist for the driver)"
        )?;
    }
    Ok(())
}

fn summary(supervised: &launcher::Supervised, started: Instant, out: &mut dyn Write) -> std::io::Result<()> {
    let outcomes = &supervised.outcomes;
    match &supervised.stop {
        Some(Stop::NoneLeft) => writeln!(out, "stopped: no worker could run, so the scheduler was stopped too")?,
        Some(stop) => writeln!(out, "stopped: {stop}")?,
        None => {}
    }
    writeln!(out, "summary: {} process(es) ended after {:.2} s", outcomes.len(), started.elapsed().as_secs_f64())?;
    for o in outcomes {
        writeln!(out, "  {o}")?;
    }
    // Why the workers (or the scheduler) could not run, in their own last words.
    let none_ran = !outcomes.is_empty() && outcomes.iter().all(|o| !o.exit.success());
    let why = match &supervised.stop {
        Some(Stop::NoneLeft) => outcomes.iter().rev().find(|o| !o.exit.success() && !o.last_lines.is_empty()),
        None if none_ran => {
            writeln!(out, "no worker could run")?;
            outcomes.iter().rev().find(|o| !o.last_lines.is_empty())
        }
        Some(Stop::EssentialEnded { name, .. }) => outcomes.iter().find(|o| &o.name == name),
        _ => None,
    };
    if let Some(o) = why {
        writeln!(out, "last lines of {}:", o.name)?;
        for line in o.cause_lines() {
            writeln!(out, "  | {}", crate::table::escape(line))?;
        }
    }
    Ok(())
}
