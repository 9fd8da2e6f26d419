//! The slot monitor of logical capture: while the producer runs, every [`INTERVAL`] it reads
//! the replication slot on a connection of its own and exports it as the `orderstream_slot_*`
//! gauges. It only reads; a failed reading is logged at debug level and the gauges keep their
//! last values until the next one succeeds.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_postgres::Client;

use super::Published;
use super::slot::{self, LagClock, SlotStatus};
use crate::config::PostgresConfig;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, SlotMetrics};
use crate::shutdown::Shutdown;

/// How often the slot is read.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Reads the slot every [`INTERVAL`] until a stop is requested. `published`: the commit of the
/// newest change the producer has published and saved, as the source hands it on.
pub async fn run(pg: PostgresConfig, published: Published, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let mut client: Option<Client> = None;
    let mut clock = LagClock::new();
    loop {
        if let Err(e) = tick(&pg, &mut client, &mut clock, &published, &metrics).await {
            tracing::debug!("slot monitor: {e}");
            client = None;
        }
        if shutdown.sleep(INTERVAL).await {
            return;
        }
    }
}

async fn tick(
    pg: &PostgresConfig,
    client: &mut Option<Client>,
    clock: &mut LagClock,
    published: &Published,
    metrics: &Metrics,
) -> Result<()> {
    if client.is_none() {
        let connect = tokio::time::timeout(INTERVAL, crate::db::connect(pg)).await.map_err(|_| {
            Error::Postgres(format!("{}: no answer within {} s", crate::db::describe(pg), INTERVAL.as_secs()))
        })?;
        *client = Some(connect?);
    }
    let Some(c) = client.as_ref() else { return Ok(()) };
    let reading = slot::read(c, &pg.slot).await?;
    let lag_seconds = match reading.state.as_ref().and_then(|s| s.confirmed_flush_lsn) {
        Some(confirmed) => clock.observe(Utc::now(), reading.current_wal_lsn, confirmed, *published.borrow()),
        None => {
            clock.reset();
            0.0
        }
    };
    export(&metrics.slot, &reading, lag_seconds);
    Ok(())
}

fn export(m: &SlotMetrics, reading: &SlotStatus, lag_seconds: f64) {
    let s = reading.state.as_ref();
    let num = |v: Option<i64>| v.unwrap_or(0);
    m.active.set(i64::from(s.is_some_and(|s| s.active)));
    m.confirmed_lsn
        .set(num(s.and_then(|s| s.confirmed_flush_lsn).map(|l| i64::try_from(l.0).unwrap_or(i64::MAX))));
    m.retained_wal_bytes.set(num(s.and_then(|s| s.retained_wal_bytes)));
    m.lag_bytes.set(num(s.and_then(|s| s.lag_bytes)));
    m.lag_seconds.set(lag_seconds);
}
