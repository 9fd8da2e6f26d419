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
}

impl Error {
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
