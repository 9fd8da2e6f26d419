//! The polling source's part of `status`: the watermark from the state file, and from
//! PostgreSQL the orders behind it and those below it never published.

use std::fmt;

use serde::Serialize;
use tokio_postgres::Client;

use super::{PollPosition, Unpublished, unpublished};
use crate::config::TableName;
use crate::db;
use crate::error::{Error, Result};
use crate::order::format_ts;

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

/// Where polling stands: `position` from the state file, and with `client` (when PostgreSQL
/// answered) the orders not yet published.
pub async fn status(
    table: &TableName,
    client: Option<&Client>,
    position: &PollPosition,
) -> Result<PollStatus> {
    let watermark = position.watermark;
    let (mut behind, mut lag, mut lost) = (None, None, None);
    if let Some(client) = client {
        let t = table.quoted();
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
                Error::Postgres(format!("table {}: {}", table, db::error_text(&e)))
            })?;
        let unreadable =
            |e: tokio_postgres::Error| Error::Postgres(format!("table {}: {}", table, db::error_text(&e)));
        behind = Some(row.try_get::<_, i64>(0).map_err(unreadable)?);
        lag = watermark.and(row.try_get::<_, Option<f64>>(1).map_err(unreadable)?).map(|l| l.max(0.0));
        lost = unpublished(client, table, position).await?;
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

impl fmt::Display for PollStatus {
    /// `watermark … behind … orders, … s`, and a line for the orders lost below it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wm = match (&self.watermark, self.watermark_order_id) {
            (Some(t), Some(id)) => format!("{t} #{id}"),
            (Some(t), None) => t.clone(),
            _ => "none yet".into(),
        };
        let behind = self.orders_behind.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
        let lag = self.lag_seconds.map(|l| format!("{l:.1} s")).unwrap_or_else(|| "-".into());
        writeln!(f, "watermark {wm}   behind {behind} orders, {lag}")?;
        match self.unpublished_below_watermark {
            Some(n) if n > 0 => {
                let found = Unpublished { count: n, ids: self.unpublished_order_ids.clone() };
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
}
