//! Operational endpoints: health, readiness, metrics, the OpenAPI document, and the answer
//! for unknown routes.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: the server takes traffic (503 while shutting down).
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Starting or shutting down"),
))]
pub async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// `GET /metrics`: OpenMetrics text, which Prometheus scrapes.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Metrics in OpenMetrics text format", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.queue_depth.set(st.store.queue_depth() as i64);
    st.metrics
        .index_backlog
        .set(i64::try_from(st.store.index_backlog()).unwrap_or(i64::MAX));
    st.metrics
        .text_backlog
        .set(i64::try_from(st.store.text_backlog()).unwrap_or(i64::MAX));
    st.metrics
        .dedup_keys_in_memory
        .set(i64::try_from(st.store.dedup_keys_in_memory()).unwrap_or(i64::MAX));
    // The store counts; the counter follows (a scrape between two others adds the difference).
    let damaged = st.store.damaged_reads();
    let seen = st.metrics.damaged_reads.get();
    if damaged > seen {
        st.metrics.damaged_reads.inc_by(damaged - seen);
    }
    let mut res = st.metrics.render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    res
}

/// `GET /openapi.json`: this API's OpenAPI document, generated from the code.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "OpenAPI document")))]
pub async fn openapi() -> Response {
    let mut res = crate::openapi::document().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see /openapi.json".into())
}

/// The request timeout's answer (an empty 408 from the timeout layer) as a problem document.
pub async fn timeout_problem(res: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    if res.status() == axum::http::StatusCode::REQUEST_TIMEOUT
        && !res.headers().contains_key(axum::http::header::CONTENT_TYPE)
    {
        return ApiError::Timeout(
            "the request took longer than the server's limit (query.request_timeout_secs)".into(),
        )
        .into_response();
    }
    res
}

/// A known route asked with a method it does not take (axum adds the `Allow` header).
pub async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "this route does not take {method}; see the Allow header and /openapi.json"
    ))
}
