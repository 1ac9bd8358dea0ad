//! `gpucluster doctor`: findings with explanation and fix, as text or JSON, and the exit status
//! they imply; a machine that cannot be read is itself a finding.

use std::io::{self, Write};

use cluster_core::wording::{Call, Message, Setting};
use cluster_core::{Finding, Severity};
use gpu_topology::TopologyError;
use serde::Serialize;

use crate::table::escape;

/// `doctor --help`'s account of the exit statuses.
pub(crate) const EXIT_STATUS: &str = "Exit status (the report goes to stdout, also with --json):
  0  nothing found, or notes only
  1  warnings, and no errors: it works, probably not as intended
  2  errors: it will not work as configured; this includes a machine whose GPUs cannot be read
     (no NVIDIA driver, NVML missing or failing), reported as a finding with its fix
When doctor cannot run at all, it prints `error: ...` on stderr and no report, as every command
does: status 2 for a command line that does not parse, 1 for a --topology or --inventory that
names nothing or cannot be read.";

fn label(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

pub(crate) fn write_findings(findings: &[Finding], out: &mut dyn Write) -> io::Result<()> {
    for f in findings {
        writeln!(out, "{:<8}{}: {}", label(f.severity), f.code, escape(&f.message.to_string()))?;
        for (i, line) in f.explanation.to_string().lines().enumerate() {
            writeln!(out, "        {}{}", if i == 0 { "why: " } else { "     " }, escape(line))?;
        }
        writeln!(out, "        fix: {}", escape(&f.fix.to_string()))?;
    }
    Ok(())
}

/// The finding for a machine whose NVML cannot be used (no driver, a build without NVML, a
/// failing library): why, and what to do. `None` for other errors, such as a description
/// (`file:`, `smi:`, `--inventory`) that does not parse, which stop doctor as they stop any
/// command.
pub(crate) fn unusable_nvml(error: &anyhow::Error) -> Option<Finding> {
    let finding = |code: &str, message: String, explanation: &'static str, fix: Message| Finding {
        severity: Severity::Error,
        code: code.to_owned(),
        message: message.into(),
        explanation: explanation.into(),
        fix,
    };
    let elsewhere = Message::from("to plan for another machine instead, pass ")
        .setting_to(Setting::Topology, "sim:NAME")
        .text(" (")
        .call(Call::ListPresets)
        .text("), file:PATH or smi:PATH");
    match error.chain().find_map(|c| c.downcast_ref::<TopologyError>())? {
        TopologyError::BackendUnavailable { library, reason } => Some(finding(
            "nvml-unavailable",
            format!("cannot use NVML ({library}): {reason}"),
            "NVML, the NVIDIA driver's management library, is how gpucluster sees this machine's GPUs and MIG \
             instances: without it nothing else can be checked",
            Message::from(format!(
                "install the NVIDIA driver (it provides {library}) and check that `nvidia-smi` works; in a \
                 container, start it with the GPUs (`--gpus all` with the NVIDIA Container Toolkit); "
            ))
            .append(elsewhere),
        )),
        TopologyError::NvmlNotCompiled => Some(finding(
            "nvml-not-compiled",
            "this gpucluster was built without the `nvml` feature".to_owned(),
            "a build without NVML cannot read a real machine, only descriptions of one",
            Message::from(
                "install a build with default features (`cargo install --locked --path crates/gpucluster`); ",
            )
            .append(elsewhere),
        )),
        e @ TopologyError::Nvml { .. } => Some(finding(
            "nvml-failed",
            e.to_string(),
            "NVML answered, but not well enough to know this machine's devices",
            "check the GPUs' state with `nvidia-smi -q`; a GPU that fell off the bus, or a driver updated without \
             a reboot, needs a reset or a reboot"
                .into(),
        )),
        _ => None,
    }
}

#[derive(Serialize)]
struct Report<'a> {
    findings: &'a [Finding],
    errors: usize,
    warnings: usize,
    notes: usize,
    exit_status: u8,
}

/// Prints the findings and a summary (or, with `json`, the report as JSON); returns 2 if any
/// error, 1 if any warning, else 0.
pub(crate) fn report(findings: &[Finding], json: bool, out: &mut dyn Write) -> anyhow::Result<u8> {
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings, notes) = (count(Severity::Error), count(Severity::Warning), count(Severity::Info));
    let status = if errors > 0 {
        2
    } else if warnings > 0 {
        1
    } else {
        0
    };
    if json {
        serde_json::to_writer_pretty(&mut *out, &Report { findings, errors, warnings, notes, exit_status: status })?;
        writeln!(out)?;
    } else {
        write_findings(findings, out)?;
        writeln!(out, "doctor: {errors} error(s), {warnings} warning(s), {notes} note(s)")?;
    }
    Ok(status)
}
