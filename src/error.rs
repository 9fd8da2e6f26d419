//! The library's error type: every variant is one line that says what failed and where.

/// A configuration problem: one line that names the key and says what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Anything that stops a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is wrong; nothing was contacted.
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    /// PostgreSQL refused, failed or holds something unexpected.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// The table or topic is missing, or the table's columns have the wrong types: retrying
    /// cannot help. The message names the service.
    #[error("{0}")]
    Setup(String),
    /// The broker refused or failed.
    #[error("Kafka: {0}")]
    Kafka(String),
    /// A file of ours (state, checkpoint, lake) could not be read or written.
    #[error("{0}")]
    Storage(String),
    /// The process itself failed: a thread panicked, a runtime could not start.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What the loops do about an error. [`Error::policy`] is the one place that decides it;
/// every retry loop asks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// A service failed or did not answer (PostgreSQL, the broker, the lake's storage): retry
    /// with backoff, the position not advanced, so nothing accepted is lost or doubled.
    Transient,
    /// Only the operator can fix it (the configuration, the table, a topic, a role's rights, a
    /// state that belongs to another pipeline): stop, with the one line that says how.
    OperatorFix,
    /// The process failed (a thread or runtime): stop.
    Fatal,
}

impl Error {
    /// Whether to retry, or stop for the operator or for good.
    pub fn policy(&self) -> Policy {
        match self {
            Error::Postgres(_) | Error::Kafka(_) | Error::Storage(_) => Policy::Transient,
            Error::Config(_) | Error::Setup(_) => Policy::OperatorFix,
            Error::Internal(_) => Policy::Fatal,
        }
    }

    /// `policy() == Policy::Transient`.
    pub fn is_transient(&self) -> bool {
        self.policy() == Policy::Transient
    }

    /// The process exit code: 2 for usage or configuration errors, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => 2,
            _ => 1,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
