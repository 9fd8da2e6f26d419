//! `/metrics` (Prometheus text format) and `/health` on `metrics.listen` (by default
//! `127.0.0.1:9464`), served by `produce`, `consume` and `run`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Binds the address now (so a taken port is an error at start, not later) and serves until a
/// stop is requested. `None` serves nothing.
pub async fn start(listen: Option<SocketAddr>, metrics: Arc<Metrics>, shutdown: Shutdown) -> Result<()> {
    let Some(addr) = listen else { return Ok(()) };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Setup(format!("metrics.listen {addr}: cannot listen on {addr}: {e}")))?;
    tracing::info!("metrics on http://{addr}/metrics, health on /health");
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health", get(render_health))
        .with_state(metrics);
    tokio::spawn(async move {
        let stop = shutdown.clone();
        if let Err(e) =
            axum::serve(listener, app).with_graceful_shutdown(async move { stop.wait().await }).await
        {
            tracing::warn!("metrics endpoint stopped: {e}");
        }
    });
    Ok(())
}

async fn render_metrics(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.encode())
}

async fn render_health(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
) -> impl IntoResponse {
    let failing = metrics.health.failing();
    let status = if failing.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": if failing.is_empty() { "ok" } else { "failing" },
        "failing": failing.into_iter().collect::<serde_json::Map<_, _>>(),
    });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}
