//! `/metrics` (Prometheus text format) and `/health` on `127.0.0.1:<metrics.port>`, served by
//! `produce`, `consume` and `run`.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Binds the port now (so a taken port is an error at start, not later) and serves until a
/// stop is requested. Port 0 serves nothing.
pub async fn start(port: u16, metrics: Arc<Metrics>, shutdown: Shutdown) -> Result<()> {
    if port == 0 {
        return Ok(());
    }
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| Error::Setup(format!("metrics.port {port}: cannot listen on 127.0.0.1:{port}: {e}")))?;
    tracing::info!("metrics on http://127.0.0.1:{port}/metrics, health on /health");
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
