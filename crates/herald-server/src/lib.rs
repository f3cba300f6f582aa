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

pub mod audit;
pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod ingest;
pub mod listen;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod pipeline;
pub mod query;
pub mod registry;
pub mod stream;
pub mod viewer;

use axum::routing::{get, post};
use axum::Router;
use herald_store::Store;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use config::{Config, QueryConfig, ServerConfig, StoreConfig, StreamConfig};

/// What every handler can reach.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub limits: herald_core::Limits,
    pub query: QueryConfig,
    pub stream: StreamConfig,
    pub metrics: Arc<metrics::Metrics>,
    /// False while starting and once shutdown has begun (`/readyz` answers 503).
    pub ready: AtomicBool,
    /// Stream subscriber slots (`stream.max_subscribers`).
    pub subscribers: Arc<tokio::sync::Semaphore>,
    /// Set to true when shutdown begins: long-lived streams end so that it can finish.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Routes live events to stream subscribers; started with the first subscriber.
    hub: std::sync::OnceLock<Arc<stream::Hub>>,
    pub keys: herald_store::KeyStore,
    pub key_cache: auth::KeyCache,
    /// Requests without a key are anonymous (public events only) rather than local admins.
    pub auth_required: bool,
    pub public_feed: bool,
    /// The key that signs viewer tokens (read from the database on first use).
    viewer_secret: tokio::sync::OnceCell<Vec<u8>>,
    pub cors_origins: Vec<String>,
    pub rate: auth::RateLimiter,
    /// Type settings, schemas, opt-outs, processors and the catalog's counters.
    pub registry: registry::Registry,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        keys: herald_store::KeyStore,
        cfg: &Config,
        metrics: Arc<metrics::Metrics>,
    ) -> Result<Arc<Self>, String> {
        let registry = registry::Registry::open(&cfg.store.data_dir, cfg.pipeline.clone())?;
        Ok(Arc::new(AppState {
            registry,
            keys,
            key_cache: auth::KeyCache::default(),
            auth_required: cfg.auth.required(&cfg.server.listen),
            public_feed: cfg.auth.public_feed,
            viewer_secret: tokio::sync::OnceCell::new(),
            cors_origins: cfg.server.cors_origins.clone(),
            rate: auth::RateLimiter::new(cfg.auth.rate_limit, cfg.auth.rate_burst),
            store,
            limits: cfg.limits.clone(),
            query: cfg.query.clone(),
            stream: cfg.stream.clone(),
            metrics,
            ready: AtomicBool::new(true),
            subscribers: Arc::new(tokio::sync::Semaphore::new(cfg.stream.max_subscribers)),
            shutdown: tokio::sync::watch::Sender::new(false),
            hub: std::sync::OnceLock::new(),
        }))
    }

    /// The viewer token signing key (created in the database on first use).
    pub async fn viewer_secret(&self) -> Result<Vec<u8>, error::ApiError> {
        self.viewer_secret
            .get_or_try_init(|| async {
                use ring::rand::SecureRandom;
                let mut candidate = [0u8; 32];
                ring::rand::SystemRandom::new()
                    .fill(&mut candidate)
                    .map_err(|_| {
                        error::ApiError::Internal("the system random generator failed".into())
                    })?;
                Ok::<_, error::ApiError>(self.keys.signing_key(candidate).await?)
            })
            .await
            .cloned()
    }

    /// The stream hub (started on the current runtime on first use).
    pub fn hub(&self) -> Arc<stream::Hub> {
        self.hub
            .get_or_init(|| stream::Hub::start(&self.store, self.metrics.clone()))
            .clone()
    }
}

/// Builds the whole HTTP application.
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = std::time::Duration::from_secs(state.query.request_timeout_secs.max(1));
    let requests = Router::new()
        .route("/v1/events", post(ingest::ingest).get(query::list_events))
        .route("/v1/events/{key}", get(query::get_event))
        .route("/v1/public/events", get(query::list_public))
        .route("/v1/keys", post(auth::create_key).get(auth::list_keys))
        .route("/v1/keys/{id}", axum::routing::delete(auth::revoke_key))
        .route("/v1/viewer-tokens", post(viewer::issue))
        .route(
            "/v1/viewer-tokens/{id}",
            axum::routing::delete(viewer::revoke),
        )
        .route("/v1/types", get(registry::list_types))
        .route(
            "/v1/types/{type}",
            get(registry::get_type)
                .put(registry::put_type)
                .delete(registry::delete_type),
        )
        .route(
            "/v1/types/{type}/schemas/{version}",
            get(registry::get_schema).put(registry::put_schema),
        )
        .route("/v1/optout", get(registry::list_optout))
        .route(
            "/v1/optout/{actor}",
            axum::routing::put(registry::put_optout).delete(registry::delete_optout),
        )
        .route("/v1/quarantine", get(pipeline::list_quarantine))
        .route("/v1/quarantine/replay", post(pipeline::replay))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(axum::middleware::map_response(ops::timeout_problem));
    // Streams live as long as the client wants: no request timeout; their own heartbeats
    // and slow-client limit apply instead.
    let streams = Router::new()
        .route("/v1/stream", get(stream::stream))
        .route("/v1/public/stream", get(stream::public_stream));
    let mut app = requests
        .merge(streams)
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed);
    // Outside authentication: a browser's preflight carries no key.
    if let Some(cors) = cors(&state.cors_origins) {
        app = app.layer(cors);
    }
    app.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
    ))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        metrics::track,
    ))
    .with_state(state)
}

/// CORS for browser pages on other origins (`server.cors_origins`).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| axum::http::HeaderValue::from_str(o).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                axum::http::Method::GET,
                axum::http::Method::POST,
                axum::http::Method::PUT,
                axum::http::Method::DELETE,
            ])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                axum::http::HeaderName::from_static("herald-next-cursor"),
                axum::http::header::RETRY_AFTER,
            ]),
    )
}

/// Serves the application until `shutdown` resolves, then stops accepting connections,
/// lets in-flight requests finish, and closes the store (which commits what was queued).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        state,
        None,
        std::time::Duration::from_secs(10),
        shutdown,
    )
    .await
}

/// [`serve`] with TLS and a header-read timeout (`server.tls_*`, `server.header_timeout_secs`).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    registry::start_flusher(&state);
    let st = state.clone();
    let result = listen::run(listener, app, tls, header_timeout, async move {
        shutdown.await;
        st.ready.store(false, Ordering::SeqCst);
        st.shutdown.send_replace(true);
        tracing::info!("shutting down: no new connections, finishing requests in flight");
    })
    .await;
    state.registry.flush(&state.metrics).await;
    state.store.close().await;
    tracing::info!("store closed");
    result
}
