//! `orderstream run`: the producer and the consumer in one process, as separate tasks sharing
//! the shutdown signal and the metrics. If either stops with an error the other is stopped
//! cleanly too, and the first error is returned.

use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Runs producer and consumer until a stop is requested or one of them fails.
pub async fn run(cfg: &Config, metrics: Arc<Metrics>, shutdown: Shutdown) -> Result<()> {
    let consumer = {
        let (cfg, metrics, shutdown) = (cfg.clone(), metrics.clone(), shutdown.clone());
        tokio::task::spawn_blocking(move || {
            let result = crate::sink::consume(&cfg, metrics, shutdown.clone());
            // A consumer that gives up takes the producer with it.
            shutdown.trigger();
            result
        })
    };
    let produced = crate::producer::produce(cfg, metrics, shutdown.clone()).await;
    shutdown.trigger();
    let consumed = consumer.await.map_err(|e| Error::Internal(format!("the consumer thread failed: {e}")))?;
    produced.and(consumed)
}
