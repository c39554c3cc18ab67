//! Operations: liveness, readiness, metrics, and this API's OpenAPI description.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use crate::api::dto::HealthDoc;
use crate::error::ApiError;

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = HealthDoc)))]
pub(crate) async fn healthz() -> Response {
    axum::Json(HealthDoc {
        status: "ok".into(),
        checks: BTreeMap::new(),
    })
    .into_response()
}

/// Every configured dependency answers (each check bounded to 2 s).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = HealthDoc),
        (status = 503, description = "A dependency does not answer; `checks` names it", body = HealthDoc),
    )
)]
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let runs = state.readiness.iter().map(|(name, check)| async move {
        let outcome = match tokio::time::timeout(Duration::from_secs(2), check()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("did not answer within 2 s".to_owned()),
        };
        (name.clone(), outcome)
    });
    let outcomes = futures::future::join_all(runs).await;
    let ready = outcomes.iter().all(|(_, o)| o.is_ok());
    let checks = outcomes
        .into_iter()
        .map(|(name, o)| (name, o.err().unwrap_or_else(|| "ok".to_owned())))
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let doc = HealthDoc {
        status: if ready { "ready" } else { "unavailable" }.into(),
        checks,
    };
    (status, axum::Json(doc)).into_response()
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // The queue's depth is read at the scrape too, not only by workers: when every worker is
    // down is when a growing backlog most needs to show. A queue that does not answer in
    // time leaves the last value (readiness reports the queue itself).
    if let (Some(queue), Some(observer)) = (&state.jobs, state.observer())
        && let Ok(Ok(depth)) =
            tokio::time::timeout(std::time::Duration::from_secs(2), queue.depth()).await
    {
        observer.queue_depth(queue.name(), depth);
    }
    let body = match state.metrics.clone() {
        None => "# agentkit: no metrics recorder is installed (see agentkit-observe)\n".to_owned(),
        // Rendering may wait for the telemetry thread to count the latest runs, and encodes
        // every series: not work for a thread that serves requests.
        Some(render) => match tokio::task::spawn_blocking(move || render()).await {
            Ok(body) => body,
            Err(failed) => {
                return ApiError::from(agentkit_core::Error::internal(format!(
                    "rendering the metrics failed: {failed}"
                )))
                .into_response();
            }
        },
    };
    // prometheus-client writes OpenMetrics text (ending in `# EOF`); say so, so that
    // Prometheus parses it with the right grammar.
    let content_type = if body.trim_end().ends_with("# EOF") {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")))]
pub(crate) async fn openapi_json(
    Extension(doc): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Response {
    axum::Json(doc.as_ref().clone()).into_response()
}
