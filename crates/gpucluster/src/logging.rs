//! Diagnostics on stderr through `tracing`: the level the global `-v`/`-q` flags choose, and the
//! one-line format of the program's own messages (`warning: ...`, `info: ...`).
//!
//! What a command is for (tables, JSON, a launcher's header and summary) goes to stdout and is
//! never an event; its error goes to stderr as `error: ...` from `run`. Events are the rest: what
//! the program is doing (info, debug, trace), warnings, and progress lines of long measurements,
//! which carry the [`PROGRESS`] target so that they show by default and go with `-q`.

use std::fmt;

use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

/// The target of progress lines (`tracing::info!(target: PROGRESS, ...)`): shown at the default
/// level, without a level label, and silenced by `-q`.
pub(crate) const PROGRESS: &str = "gpucluster::progress";

/// The level of `-v` given `verbose` times, or of `-q`.
pub(crate) fn level(verbose: u8, quiet: bool) -> LevelFilter {
    match (quiet, verbose) {
        (true, _) => LevelFilter::ERROR,
        (false, 0) => LevelFilter::WARN,
        (false, 1) => LevelFilter::INFO,
        (false, 2) => LevelFilter::DEBUG,
        (false, _) => LevelFilter::TRACE,
    }
}

/// Sends this process's events to stderr from now on, at `level`. The first call wins: a test
/// that runs the program in process many times keeps the level of the first run.
pub(crate) fn init(level: LevelFilter) {
    let progress = if level == LevelFilter::ERROR { LevelFilter::OFF } else { level.max(LevelFilter::INFO) };
    let filter = Targets::new().with_default(level).with_target(PROGRESS, progress);
    let lines = tracing_subscriber::fmt::layer().event_format(Lines).with_writer(std::io::stderr);
    let subscriber = tracing_subscriber::registry().with(lines).with(filter);
    // Already set (an earlier run in this process): that one stays.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// `warning: the message key=value`, or the bare message for a progress line.
struct Lines;

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != PROGRESS {
            let label = match *meta.level() {
                Level::ERROR => "error",
                Level::WARN => "warning",
                Level::INFO => "info",
                Level::DEBUG => "debug",
                Level::TRACE => "trace",
            };
            write!(writer, "{label}: ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
