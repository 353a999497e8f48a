//! One shutdown path for every command (DESIGN §3, after mini-redis's
//! `shutdown.rs`): the command installs `shutdown_signal()` once, at its
//! start, and passes it to whatever must react. It resolves on Ctrl-C
//! (SIGINT) or SIGTERM (what a Kubernetes pod stop sends); the command then
//! stops its run, flushes its observers and exits with one of the codes
//! below. A second signal exits at once.

use anyhow::{Context, Result};
use tokio::sync::watch;

use medfed_actors::RunOutcome;

/// The run completed (every task finished), or a server shut down cleanly.
pub const EXIT_COMPLETED: u8 = 0;
/// An error stopped the command before or outside a run (reported on stderr).
pub const EXIT_ERROR: u8 = 1;
/// The run ended because a task aborted (below quorum, failed...).
pub const EXIT_ABORTED: u8 = 2;
/// Ctrl-C or SIGTERM stopped the run before it completed; it is recorded as
/// stopped, with the rounds it completed. Also the code of a second signal,
/// which exits without the clean stop.
pub const EXIT_STOPPED: u8 = 3;

/// How a run ended, as the exit code reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Completed,
    Aborted,
    Stopped,
}

impl From<RunOutcome> for RunEnd {
    fn from(outcome: RunOutcome) -> Self {
        match outcome {
            RunOutcome::Finished => RunEnd::Completed,
            RunOutcome::Stopped => RunEnd::Stopped,
            RunOutcome::Aborted => RunEnd::Aborted,
        }
    }
}

impl RunEnd {
    pub fn exit_code(self) -> u8 {
        match self {
            RunEnd::Completed => EXIT_COMPLETED,
            RunEnd::Aborted => EXIT_ABORTED,
            RunEnd::Stopped => EXIT_STOPPED,
        }
    }
}

/// The process's shutdown request, level-triggered: once a signal arrived,
/// every `received()` resolves at once, so a signal that lands while the
/// command is busy elsewhere is never missed.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    received: watch::Receiver<Option<&'static str>>,
}

/// Listen for Ctrl-C and SIGTERM from now on (needs the tokio runtime).
pub fn shutdown_signal() -> Result<ShutdownSignal> {
    let (tx, received) = watch::channel(None);
    let mut signals = Signals::install()?;
    tokio::spawn(async move {
        let first = signals.next().await;
        let _ = tx.send(Some(first));
        let second = signals.next().await;
        eprintln!("{second} again: exiting now, without a clean stop");
        std::process::exit(i32::from(EXIT_STOPPED));
    });
    Ok(ShutdownSignal { received })
}

impl ShutdownSignal {
    /// Resolves with the signal's name ("Ctrl-C", "SIGTERM") once one arrived.
    pub async fn received(&mut self) -> &'static str {
        match self.received.wait_for(Option::is_some).await {
            Ok(name) => name.unwrap_or("a signal"),
            // The listener is gone only if the runtime is shutting down.
            Err(_) => std::future::pending().await,
        }
    }

    /// Whether a signal has arrived, without waiting.
    pub fn is_received(&self) -> bool {
        self.received.borrow().is_some()
    }

    /// Run blocking preparation (loading data, generating synthetic images,
    /// a centralized baseline) off the runtime, unless a signal comes first:
    /// `Ok(None)` then, and the work is left to finish on its own thread
    /// (the process exits without waiting for it, see `main`).
    pub async fn unless_received<T: Send + 'static>(
        &mut self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<Option<T>> {
        if self.is_received() {
            return Ok(None);
        }
        let job = tokio::task::spawn_blocking(work);
        tokio::select! {
            done = job => done.context("the preparation thread failed")?.map(Some),
            signal = self.received() => {
                eprintln!("{signal}: stopping before the run started");
                Ok(None)
            }
        }
    }
}

#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("listening for Ctrl-C (SIGINT)")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "Ctrl-C",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) -> &'static str {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "Ctrl-C",
            Err(_) => std::future::pending().await,
        }
    }
}
