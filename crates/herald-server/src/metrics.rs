//! Prometheus metrics: declared in one place, low-cardinality labels only.
//!
//! It exists so that every counter the ingest path, the store writer and the HTTP layer
//! update is registered once with its help text, and `/metrics` renders them all.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    pub received: Counter,
    pub stored: Counter,
    pub duplicates: Counter,
    pub conflicts: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    pub http_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    pub queue_depth: Gauge,
    pub index_backlog: Gauge,
    pub text_backlog: Gauge,
    pub dedup_keys_in_memory: Gauge,
    pub damaged_reads: Counter,
    pub commit_events: Histogram,
    pub commit_duration: Histogram,
    pub stream_subscribers: Gauge,
    pub stream_sent: Counter,
    pub stream_lagged: Counter,
    pub stream_hub_lagged: Counter,
    pub stream_disconnected: Family<ReasonLabel, Counter>,
    pub stream_latency: Histogram,
    pub audit_failed: Counter,
    /// Events by pipeline outcome: valid, invalid (schema), sampled_out, opted_out,
    /// quarantined, refused (allow/deny).
    pub pipeline: Family<ReasonLabel, Counter>,
    pub quarantine_evicted: Counter,
    pub registry_flush_failed: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let received = Counter::default();
        let stored = Counter::default();
        let duplicates = Counter::default();
        let conflicts = Counter::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0001, 2.0, 18))) as fn() -> Histogram,
        );
        let queue_depth = Gauge::default();
        let index_backlog = Gauge::default();
        let text_backlog = Gauge::default();
        let dedup_keys_in_memory = Gauge::default();
        let damaged_reads = Counter::default();
        let commit_events = Histogram::new(exponential_buckets(1.0, 4.0, 10));
        let commit_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "herald_events_received",
            "Events received by ingest requests",
            received.clone(),
        );
        registry.register(
            "herald_events_stored",
            "Events committed to the store",
            stored.clone(),
        );
        registry.register(
            "herald_events_duplicate",
            "Events already stored with the same content",
            duplicates.clone(),
        );
        registry.register(
            "herald_events_conflict",
            "Events whose source and id are stored with other content",
            conflicts.clone(),
        );
        registry.register(
            "herald_events_rejected",
            "Events rejected by validation, by attribute",
            rejected.clone(),
        );
        registry.register(
            "herald_http_request_duration_seconds",
            "HTTP request latency",
            http_duration.clone(),
        );
        registry.register(
            "herald_ingest_queue_depth",
            "Write requests waiting for the store writer",
            queue_depth.clone(),
        );
        registry.register(
            "herald_store_index_backlog",
            "Acknowledged events the indexer has not committed yet (reads find them in memory meanwhile)",
            index_backlog.clone(),
        );
        registry.register(
            "herald_store_fulltext_backlog",
            "Acknowledged events the full-text index does not hold yet (text search scans them meanwhile; large after the index was deleted)",
            text_backlog.clone(),
        );
        registry.register(
            "herald_store_dedup_keys_in_memory",
            "Duplicate keys of recent events held in memory (written to disk about every million; grows past that only while they cannot be, as the log says)",
            dedup_keys_in_memory.clone(),
        );
        registry.register(
            "herald_store_damaged_reads",
            "Reads that met an event body the disk damaged (left out of listings and streams; the log says which)",
            damaged_reads.clone(),
        );
        registry.register(
            "herald_store_commit_events",
            "Events per group commit (one fsync of the event segment)",
            commit_events.clone(),
        );
        registry.register(
            "herald_store_commit_duration_seconds",
            "Time to write and fsync one group commit",
            commit_duration.clone(),
        );
        let stream_subscribers = Gauge::default();
        let stream_sent = Counter::default();
        let stream_lagged = Counter::default();
        let stream_hub_lagged = Counter::default();
        let stream_disconnected = Family::<ReasonLabel, Counter>::default();
        let stream_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "herald_stream_subscribers",
            "Open /v1/stream connections",
            stream_subscribers.clone(),
        );
        registry.register(
            "herald_stream_events_sent",
            "Events sent to stream subscribers (live and catch-up)",
            stream_sent.clone(),
        );
        registry.register(
            "herald_stream_lagged",
            "Times a subscriber fell behind the live buffer and caught up from storage",
            stream_lagged.clone(),
        );
        registry.register(
            "herald_stream_hub_lagged",
            "Times the stream hub fell behind the store's live channel (every subscriber then caught up from storage)",
            stream_hub_lagged.clone(),
        );
        registry.register(
            "herald_stream_disconnected",
            "Streams the server ended, by reason",
            stream_disconnected.clone(),
        );
        registry.register(
            "herald_stream_delivery_latency_seconds",
            "From receiving an event to handing it to a live subscriber's connection",
            stream_latency.clone(),
        );
        let audit_failed = Counter::default();
        registry.register(
            "herald_audit_failed",
            "Audit events that could not be recorded (see the log)",
            audit_failed.clone(),
        );
        let pipeline = Family::<ReasonLabel, Counter>::default();
        let quarantine_evicted = Counter::default();
        let registry_flush_failed = Counter::default();
        registry.register(
            "herald_pipeline_events",
            "Events by pipeline outcome (valid, invalid, sampled_out, opted_out, quarantined, refused, processor_failed)",
            pipeline.clone(),
        );
        registry.register(
            "herald_quarantine_evicted",
            "Quarantined events dropped because the quarantine was full (oldest first)",
            quarantine_evicted.clone(),
        );
        registry.register(
            "herald_registry_flush_failed",
            "Failed writes of the type catalog's counters (kept and retried; see the log)",
            registry_flush_failed.clone(),
        );
        Arc::new(Metrics {
            pipeline,
            quarantine_evicted,
            registry_flush_failed,
            audit_failed,
            stream_subscribers,
            stream_sent,
            stream_lagged,
            stream_hub_lagged,
            stream_disconnected,
            stream_latency,
            registry,
            received,
            stored,
            duplicates,
            conflicts,
            rejected,
            http_duration,
            queue_depth,
            index_backlog,
            text_backlog,
            dedup_keys_in_memory,
            damaged_reads,
            commit_events,
            commit_duration,
        })
    }

    /// Counts one pipeline outcome.
    pub fn outcome(&self, what: &str) {
        self.pipeline
            .get_or_create(&ReasonLabel {
                reason: what.to_owned(),
            })
            .inc();
    }

    /// The store's commit observer, feeding the commit histograms.
    pub fn commit_observer(self: &Arc<Self>) -> herald_store::CommitObserver {
        let m = self.clone();
        Arc::new(move |info: herald_store::CommitInfo| {
            m.commit_events.observe(info.events as f64);
            m.commit_duration.observe(info.duration.as_secs_f64());
        })
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Middleware recording the latency of every request by route template.
pub async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let res = next.run(req).await;
    state
        .metrics
        .http_duration
        .get_or_create(&HttpLabels {
            method,
            route,
            status: res.status().as_u16(),
        })
        .observe(start.elapsed().as_secs_f64());
    res
}
