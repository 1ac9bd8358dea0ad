//! The signals that stop a launcher (SIGINT, SIGTERM, SIGHUP, SIGQUIT), watched from before the
//! job starts, and the names users know signals by. Nothing here starts or stops a process.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::LauncherError;

/// `SIGINT`, `SIGTERM`, ... for the signals users meet.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

/// The signals that stop a launcher: SIGINT (Ctrl-C), SIGTERM, SIGHUP and SIGQUIT (Ctrl-\\),
/// watched from the moment this is made. Make it first, before any set-up that leaves something
/// behind (a private directory, a child process): a signal that arrives during set-up is then not
/// lost, nor does it kill the launcher mid-way; it stops the job as soon as the launcher looks.
///
/// A [`Stopper`] taken from it stops the job as SIGINT would, from within the program (a
/// benchmark stopping the cluster it measured).
#[derive(Debug)]
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    requested: Option<tokio::sync::mpsc::UnboundedReceiver<()>>,
    /// The first stop signal (not a [`Stopper`]'s stop) since the last [`Signals::stopper`].
    signalled: Option<i32>,
}

/// Stops the job of the [`Signals`] it came from as SIGINT would.
#[derive(Debug, Clone)]
pub struct Stopper(tokio::sync::mpsc::UnboundedSender<()>);

impl Stopper {
    /// Asks the job to stop (once is enough; a job already gone ignores it).
    pub fn stop(&self) {
        let _ = self.0.send(());
    }
}

impl Signals {
    /// Starts watching (inside a tokio runtime with signals enabled).
    ///
    /// # Errors
    /// [`LauncherError::Signals`] if the handlers cannot be installed.
    pub fn install() -> Result<Self, LauncherError> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).map_err(LauncherError::Signals)?,
            terminate: signal(SignalKind::terminate()).map_err(LauncherError::Signals)?,
            hangup: signal(SignalKind::hangup()).map_err(LauncherError::Signals)?,
            quit: signal(SignalKind::quit()).map_err(LauncherError::Signals)?,
            requested: None,
            signalled: None,
        })
    }

    /// A handle that stops the job as SIGINT would; a new one replaces the last.
    pub fn stopper(&mut self) -> Stopper {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.requested = Some(rx);
        self.signalled = None;
        Stopper(tx)
    }

    /// The next stop signal (at once if one arrived since the last call).
    pub async fn recv(&mut self) -> i32 {
        let Self { interrupt, terminate, hangup, quit, requested, signalled } = self;
        let requested = async {
            match requested.as_mut() {
                // A stopper dropped unused asks for nothing.
                Some(rx) => match rx.recv().await {
                    Some(()) => {}
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        let (signal, by_stopper) = tokio::select! {
            _ = interrupt.recv() => (libc::SIGINT, false),
            _ = terminate.recv() => (libc::SIGTERM, false),
            _ = hangup.recv() => (libc::SIGHUP, false),
            _ = quit.recv() => (libc::SIGQUIT, false),
            () = requested => (libc::SIGINT, true),
        };
        if !by_stopper {
            signalled.get_or_insert(signal);
        }
        signal
    }

    /// The first stop signal received since the last [`Signals::stopper`] was made, if one was:
    /// a job its stopper stopped may still see a signal as it stops, and that signal counts.
    pub fn signalled(&self) -> Option<i32> {
        self.signalled
    }

    /// Runs `work` on a blocking thread; `Err(signal)` if a stop signal comes first. Then the
    /// flag `work` was given is set, and `work` gets two seconds to stop what it started (a child
    /// process) before it is abandoned.
    pub async fn or_blocking<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&std::sync::atomic::AtomicBool) -> T + Send + 'static,
    ) -> Result<T, i32> {
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cancel.clone();
        let mut task = tokio::task::spawn_blocking(move || work(&flag));
        tokio::select! {
            done = &mut task => done.map_err(|_| libc::SIGABRT),
            signal = self.recv() => {
                cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
                Err(signal)
            }
        }
    }
}
