//! Command-line grammar (clap) and dispatch to the commands.

use std::io::Write;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gpu_topology::{Snapshot, TopologySpec};

use crate::list;

/// Turns the GPUs and MIG instances of one or many hosts into a correctly configured cluster of
/// workers, one per compute device.
#[derive(Debug, Parser)]
#[command(name = "gpucluster", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Where the machine's topology comes from: `nvml` (this machine), `sim:NAME` (a built-in
    /// simulated machine; `sim:list` names them), `file:PATH` (a TOML fixture or a `list --json`
    /// snapshot) or `smi:PATH` (the text of `nvidia-smi -L`).
    #[arg(long, global = true, env = "GPUCLUSTER_TOPOLOGY", default_value = "nvml", value_name = "SRC")]
    topology: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every physical GPU and MIG instance, and how the GPUs reach each other.
    List(ListArgs),
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

/// Reads the snapshot the user pointed at.
async fn load(spec: &TopologySpec) -> anyhow::Result<Snapshot> {
    let source = spec.open()?;
    let snapshot = source.snapshot().await.with_context(|| format!("reading the topology from {spec}"))?;
    Ok(snapshot)
}

pub(crate) async fn execute(cli: Cli, out: &mut dyn Write) -> anyhow::Result<u8> {
    let spec: TopologySpec = cli.global.topology.parse()?;
    match cli.command {
        Command::List(args) => {
            if args.presets || spec == TopologySpec::Sim("list".into()) {
                list::presets(out)?;
                return Ok(0);
            }
            let snapshot = load(&spec).await?;
            if args.json {
                serde_json::to_writer_pretty(&mut *out, &snapshot)?;
                writeln!(out)?;
            } else {
                list::table(&snapshot, &spec, out)?;
            }
            Ok(0)
        }
    }
}
