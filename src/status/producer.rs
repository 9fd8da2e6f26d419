//! The producer part of `status`: what its state file says, read with the decoder of the
//! configured capture mode (each mode writes its own first lines, see [`crate::source::Source`]).

use std::fmt;

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{Capture, Config};
use crate::error::{Error, Result};
use crate::producer::state::{self, State};
use crate::source::logical::{LogicalPosition, LogicalSource, Snapshot};
use crate::source::poll::{PollPosition, PollSource, Unpublished, format_ts, unpublished};

/// The producer, from its state file.
#[derive(Debug, Serialize)]
pub struct ProducerStatus {
    /// The state file.
    pub state_file: String,
    /// Messages published so far (the last sequence number).
    pub published: u64,
    /// Whether a producer of this configuration runs (`None`: PostgreSQL, where its writer
    /// lock is seen, did not answer).
    pub running: Option<bool>,
    /// What the state file says, per capture mode.
    #[serde(flatten)]
    pub capture: CaptureStatus,
}

/// Where capture stands, per mode; `capture` names the mode in the JSON form.
#[derive(Debug, Serialize)]
#[serde(tag = "capture", rename_all = "lowercase")]
pub enum CaptureStatus {
    /// `postgres.capture: poll`.
    Poll(PollStatus),
    /// `postgres.capture: logical`.
    Logical(LogicalStatus),
}

/// Timestamp polling.
#[derive(Debug, Serialize)]
pub struct PollStatus {
    /// created_at of the watermark.
    pub watermark: Option<String>,
    /// order_id of the watermark.
    pub watermark_order_id: Option<i64>,
    /// Orders in the table not yet published.
    pub orders_behind: Option<i64>,
    /// Newest created_at in the table minus the watermark's, in seconds.
    pub lag_seconds: Option<f64>,
    /// Orders at or below the watermark never published (lost to polling); `None` when it
    /// cannot be counted (PostgreSQL unreachable or before 14, no watermark yet).
    pub unpublished_below_watermark: Option<i64>,
    /// The lowest ten of them.
    pub unpublished_order_ids: Vec<i64>,
}

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

/// Reads the state file with the decoder of `postgres.capture`; in poll mode `client` (when
/// PostgreSQL answered) gives the orders not yet published.
pub async fn read(cfg: &Config, client: Option<&Client>) -> Result<ProducerStatus> {
    let path = state::path(&cfg.streaming.last_processed_timestamp_location);
    let state_file = path.display().to_string();
    match cfg.postgres.capture {
        Capture::Logical => {
            let saved =
                state::load::<LogicalSource>(&path)?.unwrap_or_else(State::beginning::<LogicalSource>);
            Ok(ProducerStatus {
                state_file,
                published: saved.seq,
                running: None,
                capture: CaptureStatus::Logical(logical(&saved.position)),
            })
        }
        Capture::Poll => {
            let saved = state::load::<PollSource>(&path)?.unwrap_or_else(State::beginning::<PollSource>);
            let poll = poll(cfg, client, &saved.position).await?;
            Ok(ProducerStatus {
                state_file,
                published: saved.seq,
                running: None,
                capture: CaptureStatus::Poll(poll),
            })
        }
    }
}

fn logical(p: &LogicalPosition) -> LogicalStatus {
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

async fn poll(cfg: &Config, client: Option<&Client>, position: &PollPosition) -> Result<PollStatus> {
    let watermark = position.watermark;
    let (mut behind, mut lag, mut lost) = (None, None, None);
    if let Some(client) = client {
        let t = cfg.postgres.table.quoted();
        // No watermark yet: every row is behind (NULL parameters).
        let (ts, id) = (watermark.map(|w| w.0), watermark.map(|w| w.1));
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE $1::timestamp IS NULL OR (created_at, order_id) > ($1::timestamp, $2::int8)), \
                     extract(epoch FROM max(created_at) FILTER (WHERE isfinite(created_at)) - $1::timestamp)::float8 \
                     FROM {t}"
                ),
                &[&ts, &id],
            )
            .await
            .map_err(|e| {
                Error::Postgres(format!("table {}: {}", cfg.postgres.table, crate::db::error_text(&e)))
            })?;
        let unreadable = |e: tokio_postgres::Error| {
            Error::Postgres(format!("table {}: {}", cfg.postgres.table, crate::db::error_text(&e)))
        };
        behind = Some(row.try_get::<_, i64>(0).map_err(unreadable)?);
        lag = watermark.and(row.try_get::<_, Option<f64>>(1).map_err(unreadable)?).map(|l| l.max(0.0));
        lost = unpublished(client, &cfg.postgres.table, position).await?;
    }
    let (unpublished_below_watermark, unpublished_order_ids) = match lost {
        Some(Unpublished { count, ids }) => (Some(count), ids),
        None => (None, Vec::new()),
    };
    Ok(PollStatus {
        watermark: watermark.map(|(t, _)| format_ts(&t)),
        watermark_order_id: watermark.map(|(_, id)| id).filter(|id| *id != i64::MAX),
        orders_behind: behind,
        lag_seconds: lag,
        unpublished_below_watermark,
        unpublished_order_ids,
    })
}

impl fmt::Display for ProducerStatus {
    /// The producer part of `status`: two lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.capture {
            CaptureStatus::Poll(_) => "poll",
            CaptureStatus::Logical(_) => "logical",
        };
        writeln!(f, "{:<11} state {} (capture {mode})", "Producer", self.state_file)?;
        match &self.capture {
            CaptureStatus::Poll(p) => {
                let wm = match (&p.watermark, p.watermark_order_id) {
                    (Some(t), Some(id)) => format!("{t} #{id}"),
                    (Some(t), None) => t.clone(),
                    _ => "none yet".into(),
                };
                let behind = p.orders_behind.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
                let lag = p.lag_seconds.map(|l| format!("{l:.1} s")).unwrap_or_else(|| "-".into());
                writeln!(
                    f,
                    "{:<11} published {}   watermark {wm}   behind {behind} orders, {lag}",
                    "", self.published
                )?;
                match p.unpublished_below_watermark {
                    Some(n) if n > 0 => {
                        let found = Unpublished { count: n, ids: p.unpublished_order_ids.clone() };
                        writeln!(
                            f,
                            "{:<11} unpublished below watermark {n} (order_id {}): lost to polling",
                            "",
                            found.ids_text()
                        )
                    }
                    Some(_) => writeln!(f, "{:<11} unpublished below watermark 0", ""),
                    None => Ok(()),
                }
            }
            CaptureStatus::Logical(l) => {
                let last = match (&l.last_lsn, l.last_change_index) {
                    (Some(lsn), Some(i)) => format!("{lsn}:{i}"),
                    _ => "none yet".into(),
                };
                writeln!(
                    f,
                    "{:<11} published {} messages   last {last}   flush {}   snapshot {}",
                    "", self.published, l.flush_lsn, l.snapshot
                )
            }
        }
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
