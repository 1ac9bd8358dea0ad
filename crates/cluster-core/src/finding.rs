//! Findings: what `doctor` (and a plan) has to say, each with an explanation and a fix.

use serde::Serialize;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Worth knowing; nothing to change.
    Info,
    /// Works, but probably not as intended.
    Warning,
    /// Will not work as configured.
    Error,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// A stable identifier, e.g. `mixed-classes`.
    pub code: String,
    /// What was found.
    pub message: String,
    /// Why it matters.
    pub explanation: String,
    /// What to do about it.
    pub fix: String,
}

impl Finding {
    pub(crate) fn new(
        severity: Severity,
        code: &str,
        message: impl Into<String>,
        explanation: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            code: code.to_owned(),
            message: message.into(),
            explanation: explanation.into(),
            fix: fix.into(),
        }
    }
}
