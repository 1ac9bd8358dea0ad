//! Findings: what `doctor` (and a plan) has to say, each with an explanation and a fix.

use serde::Serialize;

use crate::wording::Message;

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

/// One finding. Its texts are [`Message`]s, which name settings for each front end to say in its
/// own words; as JSON they are the command line's text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// A stable identifier, e.g. `mixed-classes`.
    pub code: String,
    /// What was found.
    pub message: Message,
    /// Why it matters.
    pub explanation: Message,
    /// What to do about it.
    pub fix: Message,
}

impl Finding {
    pub(crate) fn new(
        severity: Severity,
        code: &str,
        message: impl Into<Message>,
        explanation: impl Into<Message>,
        fix: impl Into<Message>,
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
