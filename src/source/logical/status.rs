//! The log-based source's part of `status`: the state file's position and snapshot progress.

use std::fmt;

use serde::Serialize;

use super::{LogicalPosition, Snapshot};

/// Log-based capture.
#[derive(Debug, Serialize)]
pub struct LogicalStatus {
    /// Commit LSN of the transaction of the last change published.
    pub last_lsn: Option<String>,
    /// That change's index within its transaction.
    pub last_change_index: Option<i32>,
    /// The LSN the slot may confirm.
    pub flush_lsn: String,
    /// The initial snapshot's progress.
    pub snapshot: SnapshotStatus,
}

/// The initial snapshot's progress, as the state file says.
#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum SnapshotStatus {
    /// Not started (no slot yet).
    Pending,
    /// Reading the table.
    Running {
        /// The slot's consistent point.
        at: String,
        /// The last `order_id` published.
        after_order_id: Option<i64>,
        /// The next change index.
        next_index: i32,
    },
    /// Complete: streaming from the log.
    Done,
}

/// Where log-based capture stands, from the state file's position.
pub fn status(p: &LogicalPosition) -> LogicalStatus {
    let snapshot = match &p.snapshot {
        Snapshot::Pending => SnapshotStatus::Pending,
        Snapshot::Running { at, after, next } => {
            SnapshotStatus::Running { at: at.to_string(), after_order_id: *after, next_index: *next }
        }
        Snapshot::Done => SnapshotStatus::Done,
    };
    LogicalStatus {
        last_lsn: p.last.map(|(lsn, _)| lsn.to_string()),
        last_change_index: p.last.map(|(_, i)| i),
        flush_lsn: p.flush.to_string(),
        snapshot,
    }
}

impl fmt::Display for LogicalStatus {
    /// `last … flush … snapshot …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = match (&self.last_lsn, self.last_change_index) {
            (Some(lsn), Some(i)) => format!("{lsn}:{i}"),
            _ => "none yet".into(),
        };
        writeln!(f, "last {last}   flush {}   snapshot {}", self.flush_lsn, self.snapshot)
    }
}

impl fmt::Display for SnapshotStatus {
    /// `pending`, `running at 0/16B3748 after order_id 105`, `done`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotStatus::Pending => f.write_str("pending"),
            SnapshotStatus::Running { at, after_order_id: Some(id), .. } => {
                write!(f, "running at {at} after order_id {id}")
            }
            SnapshotStatus::Running { at, after_order_id: None, .. } => {
                write!(f, "running at {at}, no row yet")
            }
            SnapshotStatus::Done => f.write_str("done"),
        }
    }
}
