//! SIGINT and SIGTERM as values a command waits for, so that it can stop
//! its work and tidy up instead of dying where it stands.

use crate::error::CliError;

/// A signal that asks the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (`kill`, a service manager stopping us).
    Terminate,
}

impl Signal {
    /// The exit code a shell reports for a process this signal ended:
    /// 128 + its number.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }

    /// Its conventional name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }
}

/// The handlers of SIGINT and SIGTERM. From [`install`](Self::install) on,
/// the two no longer end the process: they wait in here until
/// [`recv`](Self::recv) takes them, for as long as the process lives.
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside a tokio runtime).
    pub fn install() -> Result<Self, CliError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let handler = |kind| {
                signal(kind)
                    .map_err(|e| CliError::Other(format!("cannot handle SIGINT and SIGTERM: {e}")))
            };
            Ok(Self {
                interrupt: handler(SignalKind::interrupt())?,
                terminate: handler(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for the next signal.
    pub async fn recv(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                Some(()) = self.interrupt.recv() => Signal::Interrupt,
                Some(()) = self.terminate.recv() => Signal::Terminate,
                // Both streams ended: the runtime is shutting down, and no
                // signal will come any more.
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        match tokio::signal::ctrl_c().await {
            Ok(()) => Signal::Interrupt,
            Err(_) => std::future::pending().await,
        }
    }
}
