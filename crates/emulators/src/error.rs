//! Errors of the emulator harness: each one is a single actionable line (a log tail, when
//! there is one, follows on the next lines).

use std::path::PathBuf;
use std::time::Duration;

use crate::Service;

/// What went wrong while starting, probing or stopping an emulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A preinstalled program (an emulator or the Java runtime) is not on this machine.
    #[error("{what} not found ({looked}): install the Debian package {package} (apt-get install -y {package})")]
    MissingPackage {
        /// The missing program, e.g. "Pub/Sub emulator".
        what: String,
        /// Where it was looked for.
        looked: String,
        /// The Debian package that provides it.
        package: &'static str,
    },

    /// The project-local Python environment (`.venv/emulators`) is missing or could not be set up.
    #[error("emulator set-up failed: {message}")]
    Setup {
        /// One line saying what failed and what to do.
        message: String,
    },

    /// An emulator process could not be spawned at all.
    #[error("could not start the {service} emulator ({program}): {source}")]
    Spawn {
        /// The service.
        service: Service,
        /// The program that was executed.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// An emulator exited on its own (during start-up or later).
    #[error("the {service} emulator exited ({status}); log {log}{tail}", log = log.display())]
    Exited {
        /// The service.
        service: Service,
        /// The exit status as text.
        status: String,
        /// The emulator's log file.
        log: PathBuf,
        /// The last lines of the log, each on its own line (empty when the log is empty).
        tail: String,
    },

    /// An emulator did not answer a real request within the start timeout.
    #[error("the {service} emulator did not answer on {endpoint} within {timeout:?} (last probe: {last}); log {log}{tail}", log = log.display())]
    NotReady {
        /// The service.
        service: Service,
        /// The endpoint that was probed.
        endpoint: String,
        /// The timeout that elapsed.
        timeout: Duration,
        /// The outcome of the last probe.
        last: String,
        /// The emulator's log file.
        log: PathBuf,
        /// The last lines of the log, each on its own line.
        tail: String,
    },

    /// The service was not started by this [`crate::Emulators`].
    #[error("the {0} emulator is not part of this emulator set (start it with Emulators::start(&[Service::{0:?}]))")]
    NotStarted(Service),

    /// Any other I/O failure (creating the log directory, picking a free port...).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
