//! Command-line grammar (clap) and dispatch to the commands.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gpu_topology::TopologySpec;
use launcher::transport_bench::{self, BenchConfig, BenchPeer, BenchReport, LocalPaths};
use transport::device::DeviceKind;
use transport::{RingGeometry, TransferPath};

use crate::args::{RestartArg, SelectionArgs, SizeList, count, grace, load, max_restarts, repeats, size_list};
use crate::{doctor, list, plan};

/// What `--version` says: the version, the commit it was built from (`-dirty` when the tree had
/// changes; `unknown` outside a git checkout) and the cargo features it was built with.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GPUCLUSTER_BUILD"), ")");

/// Turns the GPUs and MIG instances of one or many hosts into a correctly configured cluster of
/// workers, one per compute device.
#[derive(Debug, Parser)]
#[command(name = "gpucluster", version = VERSION, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Where the machine's topology comes from: `nvml` (this machine), `sim:NAME` (a built-in
    /// simulated machine; `gpucluster --topology sim:list list`, or `list --presets`, names them), `file:PATH` (a
    /// TOML fixture or a `list --json` snapshot) or `smi:PATH` (the text of `nvidia-smi -L`).
    #[arg(long, global = true, env = "GPUCLUSTER_TOPOLOGY", default_value = "nvml", value_name = "SRC")]
    topology: String,
    /// Say more on stderr: -v what the command is doing (and, for `dask local` and `dask worker`,
    /// Dask's INFO lines), -vv debug, -vvv trace. By default only warnings and progress.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Say nothing on stderr but errors: no warnings, no progress.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every physical GPU and MIG instance, and how the GPUs reach each other.
    List(ListArgs),
    /// Show which devices become workers, how each is configured, and the path between each pair.
    Plan(PlanArgs),
    /// Check the machine, the environment and the plan; exit 0 if clean, 1 on warnings, 2 on errors.
    #[command(after_help = crate::doctor::EXIT_STATUS)]
    Doctor(DoctorArgs),
    /// Launch one worker per planned device and supervise them; without a command, run the
    /// built-in worker (device check, transfers to its peers) and print the cluster's matrix.
    Up(UpArgs),
    /// The planned workers as Dask workers.
    #[command(subcommand)]
    Dask(DaskCommand),
    /// Measure the transport.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print a completion script for a shell, e.g. `gpucluster completions bash >
    /// ~/.local/share/bash-completion/completions/gpucluster`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The built-in worker of `up` (started by gpucluster itself).
    #[command(hide = true)]
    Worker,
    /// The peer worker of `bench transport` (started by gpucluster itself).
    #[command(hide = true)]
    TransportPeer {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct UpArgs {
    #[command(flatten)]
    selection: SelectionArgs,
    /// Restart workers that fail.
    #[arg(long, value_enum, default_value_t = RestartArg::Never, value_name = "WHEN")]
    restart: RestartArg,
    /// Most restarts per worker with --restart on-failure.
    #[arg(long, default_value_t = 3, value_parser = max_restarts, allow_negative_numbers = true, value_name = "N")]
    max_restarts: u32,
    /// Seconds workers get to stop after SIGINT, SIGTERM or SIGHUP before they are killed.
    #[arg(long, default_value_t = 10.0, value_parser = grace, allow_negative_numbers = true, value_name = "SECONDS")]
    grace: f64,
    /// Stop the job if it has not ended after this many seconds (default: 60 plus a quarter per
    /// worker for the built-in worker; no limit for a command).
    #[arg(long, value_parser = time_limit, allow_negative_numbers = true, value_name = "SECONDS")]
    time_limit: Option<f64>,
    /// The command to run per worker instead of the built-in worker (after `--`).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Subcommand)]
enum DaskCommand {
    /// A Dask scheduler and one Dask worker per planned device on this host, until stopped;
    /// secured with TLS unless --insecure.
    Local(crate::dask::DaskLocalArgs),
    /// This host's workers for an existing scheduler (each host names its own MIG devices).
    Worker(crate::dask::DaskWorkerArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Bandwidth and latency of every path between two worker processes, against ceilings measured
    /// in the same run. Real GPU memory with --topology nvml, simulated memory otherwise.
    Transport(BenchArgs),
    /// A device array between two Dask workers, over each comm protocol (gpucluster, TCP, UCX
    /// where installed): GB/s from the receiving worker's transfer log and from wall time; also
    /// dask-cuda's transpose_sum where dask-cuda is installed. Two workers on the one device
    /// where there is one.
    Dask(crate::bench_dask::BenchDaskArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Message sizes, comma-separated, with binary K, M, G units (1G = 1GiB = 2^30 bytes, unlike
    /// --device-memory-limit, where 1G is 10^9). Default: 8 B to 1 GiB on a GPU, 8 B to 16 MiB on
    /// simulated memory.
    #[arg(long, value_parser = size_list, allow_negative_numbers = true, value_name = "SIZES")]
    sizes: Option<SizeList>,
    /// Timed round trips per size from 2 MiB up (20 times as many below); the median counts.
    #[arg(long, default_value_t = 10, value_parser = repeats, allow_negative_numbers = true, value_name = "N")]
    repeats: usize,
    /// Paths to measure, comma-separated (default: every path this machine allows).
    #[arg(long, value_delimiter = ',', value_name = "PATHS")]
    paths: Vec<String>,
    /// Slots of the shared ring (2 to 64).
    #[arg(long, default_value_t = 4, value_parser = slots, allow_negative_numbers = true, value_name = "N")]
    slots: usize,
    /// Bytes per slot (K, M units): a multiple of 4K, at most 1G.
    #[arg(long, default_value = "4M", value_parser = chunk, allow_negative_numbers = true, value_name = "BYTES")]
    chunk: usize,
    /// Run the peer worker as a thread of this process instead of a second process (a diagnostic:
    /// one CUDA context, so no switching between processes on the GPU).
    #[arg(long)]
    peer_thread: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also draw the results as an SVG plot.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Print (and plot) a report saved earlier with --json instead of measuring.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

fn parse_one_size(s: &str) -> Result<usize, String> {
    let sizes = crate::args::parse_sizes(s)?;
    sizes.first().copied().filter(|_| sizes.len() == 1).ok_or_else(|| format!("`{s}` is not one size"))
}

/// `--slots`: what the transport's ring allows (`transport::RingGeometry`), checked here so that
/// a wrong flag fails before any worker starts.
fn slots(s: &str) -> Result<usize, String> {
    let (low, high) = (RingGeometry::MIN_SLOTS, RingGeometry::MAX_SLOTS);
    count(s, low as u64, high as u64).map(|n| n as usize)
}

/// `--chunk`: a slot size the ring allows (`transport::RingGeometry`).
fn chunk(s: &str) -> Result<usize, String> {
    let bytes = parse_one_size(s)?;
    if !RingGeometry::chunk_allowed(bytes) {
        let unit = RingGeometry::CHUNK_UNIT >> 10;
        return Err(format!(
            "{bytes} bytes is not a slot size: give a multiple of {unit}K from {unit}K to {}G",
            RingGeometry::MAX_CHUNK >> 30
        ));
    }
    Ok(bytes)
}

fn time_limit(s: &str) -> Result<f64, String> {
    let seconds: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if seconds > 0.0 && seconds <= 1e6 {
        Ok(seconds)
    } else {
        Err(format!("{seconds} is out of range: give more than 0 and at most 1000000 seconds"))
    }
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Print the snapshot as JSON (loadable again with `--topology file:PATH`).
    #[arg(long)]
    json: bool,
    /// List the built-in simulated machines instead.
    #[arg(long)]
    presets: bool,
}

#[derive(Debug, Args)]
struct DoctorArgs {
    #[command(flatten)]
    selection: SelectionArgs,
    /// Print the findings as JSON: `{"findings": [{"severity", "code", "message", "explanation",
    /// "fix"}], "errors", "warnings", "notes", "exit_status"}`.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PlanArgs {
    #[command(flatten)]
    selection: SelectionArgs,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn execute(cli: Cli, out: &mut dyn Write) -> anyhow::Result<u8> {
    crate::logging::init(crate::logging::level(cli.global.verbose, cli.global.quiet));
    let spec = cli.global.topology.parse::<TopologySpec>();
    let json = match &cli.command {
        Command::List(ListArgs { json, .. }) | Command::Plan(PlanArgs { json, .. }) => *json,
        Command::Doctor(DoctorArgs { json, .. }) => *json,
        _ => false,
    };
    match (&cli.command, &spec) {
        // Commands that read no machine: a topology, even a wrong one, changes nothing for them.
        (Command::Completions { shell }, _) => {
            // Into a buffer first: the generator panics on a write error (`completions bash | head`).
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut completion_command(), "gpucluster", &mut script);
            out.write_all(&script)?;
            return Ok(0);
        }
        (Command::Worker | Command::TransportPeer { .. }, _) => {}
        // `--topology sim:list` names the simulated machines, whatever the command.
        (_, Ok(TopologySpec::Sim(name))) if name == "list" => {
            list::presets(json, out)?;
            return Ok(0);
        }
        _ => {}
    }
    let spec = spec?;
    match cli.command {
        Command::List(args) => {
            if args.presets {
                list::presets(args.json, out)?;
                return Ok(0);
            }
            let snapshot = load(&spec).await?;
            if args.json {
                plan::write_json(&snapshot, out)?;
            } else {
                list::table(&snapshot, &spec, out)?;
            }
            Ok(0)
        }
        Command::Plan(args) => {
            let snapshot = args.selection.snapshot(&spec).await?;
            let request = args.selection.request();
            let plan = match cluster_core::plan(&snapshot, &request) {
                Ok(plan) => plan,
                Err(e) => {
                    // The strict refusal in full for tools (every class, every device's whole
                    // name), where the message on stderr shows the first few of each.
                    if let (true, cluster_core::PlanError::Mixed { classes, tolerance_pct }) = (args.json, &e) {
                        let refusal = serde_json::json!({
                            "refused": { "reason": "mixed", "message": e.to_string(),
                                         "memory_tolerance_pct": tolerance_pct, "classes": classes }
                        });
                        plan::write_json(&refusal, out)?;
                    }
                    return Err(e.into());
                }
            };
            let output = plan::PlanOutput::new(&snapshot, &plan);
            if args.json {
                plan::write_json(&output, out)?;
            } else {
                plan::table(&output, &request, out)?;
            }
            Ok(0)
        }
        Command::Doctor(args) => doctor_command(&spec, args, out).await,
        Command::Completions { .. } => unreachable!("run before the topology is checked"),
        Command::Bench(BenchCommand::Transport(args)) => bench_transport(&spec, args, out).await,
        Command::Bench(BenchCommand::Dask(args)) => crate::bench_dask::run(&spec, args, out).await,
        Command::Up(args) => {
            crate::up::run(
                &spec,
                args.selection.snapshot(&spec).await?,
                &args.selection,
                crate::up::Options {
                    restart: args.restart.into(),
                    max_restarts: args.max_restarts,
                    grace: args.grace,
                    time_limit: args.time_limit,
                    command: args.command,
                },
                out,
            )
            .await
        }
        // With -v, Dask's own INFO lines are shown too.
        Command::Dask(DaskCommand::Local(args)) => crate::dask::local(&spec, args, cli.global.verbose > 0, out).await,
        Command::Dask(DaskCommand::Worker(args)) => crate::dask::worker(&spec, args, cli.global.verbose > 0, out).await,
        Command::Worker => Ok(tokio::task::spawn_blocking(launcher::builtin::run).await?),
        Command::TransportPeer { args } => {
            let parsed = transport::peer::PeerArgs::parse(&args).map_err(anyhow::Error::msg)?;
            tokio::task::spawn_blocking(move || transport::peer::run(&parsed)).await??;
            Ok(0)
        }
    }
}

/// `doctor`. A machine whose NVML cannot be used (no driver) is what doctor is asked about most:
/// it is a finding with its fix, and exit status 2, not a failure of doctor.
async fn doctor_command(spec: &TopologySpec, args: DoctorArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let findings = match args.selection.snapshot(spec).await {
        Ok(snapshot) => {
            let env = cluster_core::Environment {
                cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
                ucx_tls: std::env::var("UCX_TLS").ok(),
            };
            cluster_core::doctor(&snapshot, &args.selection.request(), &env)
        }
        Err(e) => vec![doctor::unusable_nvml(&e).ok_or(e)?],
    };
    doctor::report(&findings, args.json, out)
}

/// The grammar as completions offer it: without the hidden commands that gpucluster starts
/// itself (`worker`, `transport-peer`), which the bash and fish generators would offer too.
fn completion_command() -> clap::Command {
    let full = <Cli as clap::CommandFactory>::command();
    let visible: Vec<clap::Command> = full.get_subcommands().filter(|c| !c.is_hide_set()).cloned().collect();
    clap::Command::new("gpucluster")
        .version(VERSION)
        .propagate_version(true)
        .args(full.get_arguments().cloned())
        .subcommands(visible)
}

/// Measures on this machine's first compute device; `Err(signal)` when a signal interrupted it
/// (the measuring thread and the peer worker, killed by the kernel with this process, end with it).
async fn measure(spec: &TopologySpec, args: &BenchArgs) -> anyhow::Result<Result<BenchReport, i32>> {
    let mut signals = launcher::Signals::install()?;
    let snapshot = load(spec).await?;
    // The benchmark stands for two workers sharing this machine's first compute device (as
    // `up --workers-per-device 2` places them): the paths they may use come from the path choice.
    let local = LocalPaths::of(&snapshot);
    let device = if spec.is_real() { DeviceKind::Cuda } else { DeviceKind::Simulated };
    let allowed = local.allowed();
    let paths = if args.paths.is_empty() {
        allowed.clone()
    } else {
        let mut paths = Vec::new();
        for p in &args.paths {
            let path: TransferPath = p.parse()?;
            if !allowed.contains(&path) {
                anyhow::bail!(
                    "--paths {}: not available between two workers of this machine's first device ({}); measure {}",
                    path.name(),
                    local.reason(),
                    allowed.iter().map(|p| p.name()).collect::<Vec<_>>().join(" or ")
                );
            }
            paths.push(path);
        }
        paths
    };
    let sizes = args.sizes.clone().map(|s| s.0).unwrap_or_else(|| match device {
        DeviceKind::Cuda => vec![8, 64, 1 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20, 1 << 30],
        DeviceKind::Simulated => vec![8, 64, 1 << 10, 64 << 10, 1 << 20, 16 << 20],
    });
    let peer = if args.peer_thread {
        BenchPeer::Thread
    } else {
        // This binary again, as its hidden `transport-peer` command.
        let program = std::env::current_exe().context("finding this program to start the peer worker")?;
        BenchPeer::Process { program, args: vec!["transport-peer".into()] }
    };
    let config = BenchConfig {
        device,
        mig: local.simulates_mig(device),
        sizes,
        repeats: args.repeats,
        paths,
        ring: RingGeometry::new(args.slots, args.chunk)?,
        peer,
    };
    let progress = crate::bench::ProgressLine::new(!args.json && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let mut report = match signals.or_blocking(move |_| transport_bench::run(&config, &progress)).await {
        Ok(report) => report?,
        Err(signal) => return Ok(Err(signal)),
    };
    report.notes.extend(local.cuda_ipc_note());
    Ok(Ok(report))
}

async fn bench_transport(spec: &TopologySpec, args: BenchArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let report = match &args.report {
        // A saved report needs no machine at all.
        Some(file) => {
            let text = gpu_topology::text::read_text(file, 16 << 20)?;
            serde_json::from_str(&text).with_context(|| {
                format!("{} is not a saved bench report", crate::table::escape(&file.display().to_string()))
            })?
        }
        None => {
            if let Some(file) = &args.plot {
                crate::bench::check_output(file)?;
            }
            match measure(spec, &args).await? {
                Ok(report) => report,
                Err(signal) => {
                    tracing::warn!("bench interrupted ({})", launcher::signal_name(signal));
                    return Ok(launcher::exit_status_after(signal));
                }
            }
        }
    };
    // The figures first: a plot that cannot be written costs them nothing.
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        crate::bench::table(&report, out)?;
    }
    if let Some(file) = &args.plot {
        crate::bench::plot(&report, file)?;
        if !args.json {
            writeln!(out, "plot: {}", crate::table::escape(&file.display().to_string()))?;
        }
    }
    Ok(0)
}
