//! `gpucluster doctor`: findings with explanation and fix, and the exit status they imply.

use std::io::{self, Write};

use cluster_core::{Finding, Severity};

use crate::table::escape;

fn label(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

pub(crate) fn write_findings(findings: &[Finding], out: &mut dyn Write) -> io::Result<()> {
    for f in findings {
        writeln!(out, "{:<8}{}: {}", label(f.severity), f.code, escape(&f.message))?;
        for (i, line) in f.explanation.lines().enumerate() {
            writeln!(out, "        {}{}", if i == 0 { "why: " } else { "     " }, escape(line))?;
        }
        writeln!(out, "        fix: {}", escape(&f.fix))?;
    }
    Ok(())
}

/// Prints the findings and a summary; returns 2 if any error, 1 if any warning, else 0.
pub(crate) fn report(findings: &[Finding], out: &mut dyn Write) -> anyhow::Result<u8> {
    write_findings(findings, out)?;
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings, infos) = (count(Severity::Error), count(Severity::Warning), count(Severity::Info));
    writeln!(out, "doctor: {errors} error(s), {warnings} warning(s), {infos} note(s)")?;
    Ok(if errors > 0 {
        2
    } else if warnings > 0 {
        1
    } else {
        0
    })
}
