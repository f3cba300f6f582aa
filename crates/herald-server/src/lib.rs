//! Herald's HTTP server: the axum application, the ingest path from request body to durable
//! store, the query API, metrics and the OpenAPI document.
//!
//! This crate exists to hold everything that knows about HTTP, so that the core and the store
//! stay testable without sockets and the `herald` binary stays "CLI definition plus glue".
//! [`router`] builds the whole application from an [`AppState`], so tests can drive it on
//! `127.0.0.1:0` exactly as a user would.
//!
//! Invariants: every client error is answered as `application/problem+json` through the one
//! [`error::ApiError`] type and is not logged; internal errors are logged once with a request
//! id and answered as an opaque 500 carrying that id. Nothing here blocks the runtime on disk:
//! the store runs SQLite on its own threads.

pub mod config;
pub mod error;
pub mod ingest;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod query;

use axum::routing::{get, post};
use axum::Router;
use herald_core::Limits;
use herald_store::Store;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use config::{Config, QueryConfig, ServerConfig, StoreConfig};

/// What every handler can reach.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub limits: Limits,
    pub query: QueryConfig,
    pub metrics: Arc<metrics::Metrics>,
    /// False while starting and once shutdown has begun (`/readyz` answers 503).
    pub ready: AtomicBool,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        limits: Limits,
        query: QueryConfig,
        metrics: Arc<metrics::Metrics>,
    ) -> Arc<Self> {
        Arc::new(AppState {
            store,
            limits,
            query,
            metrics,
            ready: AtomicBool::new(true),
        })
    }
}

/// Builds the whole HTTP application.
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = std::time::Duration::from_secs(state.query.request_timeout_secs.max(1));
    Router::new()
        .route("/v1/events", post(ingest::ingest).get(query::list_events))
        .route("/v1/events/{key}", get(query::get_event))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(ops::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(state)
}

/// Serves the application until `shutdown` resolves, then stops accepting connections,
/// lets in-flight requests finish, and closes the store (which commits what was queued).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let st = state.clone();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            st.ready.store(false, Ordering::SeqCst);
            tracing::info!("shutting down: no new connections, finishing requests in flight");
        })
        .await;
    state.store.close().await;
    tracing::info!("store closed");
    result
}
