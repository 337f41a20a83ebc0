//! The CLI's errors and their exit codes.

use pharox::{PharoxError, StorageError, ValidationError};

use crate::output::OutputError;
use crate::signals::Signal;

/// Why a command failed. Messages never contain passwords.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag's value was rejected (exit code 2, like clap's own errors).
    #[error("invalid --{flag}: {reason}")]
    Usage {
        /// The flag, without dashes.
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// A positional argument was rejected (exit code 2).
    #[error("invalid {name}: {reason}")]
    BadArgument {
        /// The argument as `--help` names it (`PROXY_ID`).
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The pharox layer failed.
    #[error(transparent)]
    Pharox(#[from] PharoxError),
    /// The database has no (or an outdated) pharox schema.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    #[error("the database has no current pharox schema")]
    SchemaMissing {
        /// Whether the command has `--migrate` (only `bench` does).
        migrate_flag: bool,
    },
    /// A proxy list had bad lines (exit code 2); the report listed them.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    #[error("{invalid} lines of the list are invalid{}", if *.written { "; the others were imported" } else { "; nothing was written" })]
    InvalidLines {
        /// How many.
        invalid: usize,
        /// Whether the good lines were written (`--skip-invalid`).
        written: bool,
    },
    /// The benchmark saw more simultaneous leases than capacity allows.
    #[error("over-lease detected: {0}")]
    OverLease(String),
    /// Benchmark operations failed and `--allow-errors` was not given.
    #[error("{errors} benchmark operations failed, the first with: {first}")]
    OperationsFailed {
        /// Failed acquires and releases.
        errors: u64,
        /// The earliest failure's message.
        first: String,
    },
    /// The benchmark could not remove the pool it seeded.
    #[error("could not remove the benchmark pool {pool}: {reason}")]
    Cleanup {
        /// The pool's name.
        pool: String,
        /// Why.
        reason: String,
    },
    /// A signal stopped the command (exit code 128 + the signal's number).
    #[error("stopped by {}", .0.name())]
    Interrupted(Signal),
    /// Stdout could not be written; [`OutputError::Closed`] is a quiet exit.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl From<StorageError> for CliError {
    fn from(e: StorageError) -> Self {
        Self::Pharox(e.into())
    }
}

impl From<ValidationError> for CliError {
    fn from(e: ValidationError) -> Self {
        Self::Pharox(e.into())
    }
}

impl CliError {
    /// The process exit code: 0 for a closed stdout, 2 for bad usage, 130
    /// or 143 after SIGINT or SIGTERM, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Output(OutputError::Closed) => 0,
            Self::Usage { .. }
            | Self::BadArgument { .. }
            | Self::InvalidLines { .. }
            | Self::Pharox(PharoxError::Invalid(_)) => 2,
            Self::Interrupted(signal) => signal.exit_code(),
            _ => 1,
        }
    }

    /// Whether the command ends without a word on stderr: the reader of
    /// stdout went away, so the output was not wanted any more.
    pub fn is_quiet(&self) -> bool {
        matches!(self, Self::Output(OutputError::Closed))
    }

    /// A line telling the user what to do next, where there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::SchemaMissing { migrate_flag: true } => {
                Some("apply it with `pharox migrate up --database-url URL`, or pass --migrate")
            }
            Self::SchemaMissing {
                migrate_flag: false,
            } => Some("apply it with `pharox migrate up --database-url URL`"),
            Self::InvalidLines { written: false, .. } => {
                Some("fix those lines, or pass --skip-invalid to import the others")
            }
            Self::Pharox(PharoxError::Storage(StorageError::Unavailable { .. })) => Some(
                "is PostgreSQL running and is the URL right? (postgres://user:pass@host:5432/db)",
            ),
            Self::OperationsFailed { .. } => {
                Some("--allow-errors reports failed operations and exits 0 all the same")
            }
            Self::Cleanup { .. } => {
                Some("delete that pool by hand; its proxies and leases go with it")
            }
            _ => None,
        }
    }
}

/// The kind of a failed operation, for `pharox bench`'s `errors_by_kind`:
/// the variant of the error, in snake case. The match is exhaustive on
/// purpose, so that a new variant gets a kind of its own.
pub fn error_kind(error: &PharoxError) -> &'static str {
    match error {
        PharoxError::Invalid(_) => "invalid",
        PharoxError::NoProxyAvailable { .. } => "no_proxy_available",
        PharoxError::Storage(error) => match error {
            StorageError::Invalid(_) => "invalid",
            StorageError::NotFound { .. } => "not_found",
            StorageError::Conflict(_) => "conflict",
            StorageError::LeaseNotActive(_) => "lease_not_active",
            StorageError::Unavailable { .. } => "unavailable",
            StorageError::Transient { .. } => "transient",
            StorageError::Backend { .. } => "backend",
        },
    }
}

#[cfg(test)]
mod tests {
    use pharox::LeaseId;

    use super::*;

    fn storage(error: StorageError) -> PharoxError {
        PharoxError::Storage(error)
    }

    #[test]
    fn every_error_variant_has_its_kind() {
        let invalid = || ValidationError::new("ttl", "must be positive");
        let cases = [
            (PharoxError::Invalid(invalid()), "invalid"),
            // Not what `From` builds, but a value the type allows.
            (storage(StorageError::Invalid(invalid())), "invalid"),
            (
                PharoxError::NoProxyAvailable { pool: "p".into() },
                "no_proxy_available",
            ),
            (storage(StorageError::not_found("pool", "p")), "not_found"),
            (storage(StorageError::Conflict("dup".into())), "conflict"),
            (
                storage(StorageError::LeaseNotActive(LeaseId::new())),
                "lease_not_active",
            ),
            (
                storage(StorageError::Unavailable {
                    message: "refused".into(),
                    source: None,
                }),
                "unavailable",
            ),
            (
                storage(StorageError::Transient {
                    message: "lost a race".into(),
                    source: None,
                }),
                "transient",
            ),
            (
                storage(StorageError::Backend {
                    message: "boom".into(),
                    source: None,
                }),
                "backend",
            ),
        ];
        for (error, kind) in cases {
            assert_eq!(error_kind(&error), kind, "{error:?}");
        }
    }

    #[test]
    fn a_closed_stdout_exits_0_quietly_and_signals_exit_128_plus_their_number() {
        let closed = CliError::Output(OutputError::Closed);
        assert_eq!(closed.exit_code(), 0);
        assert!(closed.is_quiet());
        let full = CliError::Output(OutputError::Io(std::io::ErrorKind::StorageFull.into()));
        assert_eq!(full.exit_code(), 1);
        assert!(!full.is_quiet());
        assert_eq!(CliError::Interrupted(Signal::Interrupt).exit_code(), 130);
        assert_eq!(CliError::Interrupted(Signal::Terminate).exit_code(), 143);
        let failed = CliError::OperationsFailed {
            errors: 3,
            first: "boom".into(),
        };
        assert_eq!(failed.exit_code(), 1);
        assert!(!failed.is_quiet());
    }
}
