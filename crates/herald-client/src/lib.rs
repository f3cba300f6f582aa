//! `herald-client`: emit events to Herald from Rust services.
//!
//! This crate exists so that application code (the learning platform first) can record what
//! happens with one cheap call, `tracker.emit(type, data)`, and trust that the event arrives
//! once, carries the request's context, and passes through the processors that must see it
//! (redaction above all), without the call ever blocking, failing or panicking. It replaces
//! what the Python reference library (Open edX `event-tracking`) did, without its faults:
//! contexts that leaked between concurrent requests, a failing processor that let an
//! unredacted event through, a failing destination that lost events with a log line, deep
//! copies at every routing node, and no event ids (so replays duplicated).
//!
//! The pieces, from the call to the wire:
//!
//! - [`Tracker`]: cheap to clone; nested contexts ([`Tracker::with_context`], merged once per
//!   child) and per-task scopes ([`Tracker::scope`], a tokio task-local, so concurrent
//!   requests never see each other's context). `emit` builds an [`Event`] (UUIDv7 id, time,
//!   source, contexts as shared layers) and pushes an `Arc` of it into a bounded queue with
//!   an explicit [`Overflow`] policy.
//! - A worker thread takes the queue in batches and runs the [`Route`] tree: each node runs
//!   its [`Processor`]s (keep, replace or drop, with a declared [`OnFailure`] policy; panics
//!   are caught) and hands survivors to its children, sharing events by `Arc`.
//! - [`Backend`]s: [`HttpBackend`] (batching, gzip, retries with backoff and jitter, per-event
//!   results, an on-disk [`spool`] that survives outages and crashes), [`FileBackend`]
//!   (NDJSON with rotation), [`StdoutBackend`], [`MemoryBackend`] (tests), and NATS behind
//!   the `nats` feature.
//! - [`Operation`]s: `x.started` then `x.completed`/`x.failed`, linked.
//! - [`Counters`]: what was emitted, sent, retried, spooled, and dropped by reason.
//! - With the `tracing-bridge` feature, [`tracing_bridge::HeraldLayer`] turns `tracing`
//!   spans and events into Herald events.
//!
//! ```
//! use herald_client::{processor::{Redact, TypeFilter}, MemoryBackend, Route, Tracker};
//! use serde_json::json;
//!
//! let (memory, seen) = MemoryBackend::new();
//! let tracker = Tracker::builder("/lms/web")
//!     .processor(Redact::remove(["data.password"]))
//!     .route(Route::new("courses").process(TypeFilter::allow(["course.*"])).to(memory))
//!     .build()
//!     .unwrap();
//! let t = tracker.with_context(json!({"site": "campus"}));
//! t.emit("course.enrolled", json!({"course": "rust-101", "password": "hunter2"}));
//! t.emit("user.login", json!({}));
//! tracker.flush(std::time::Duration::from_secs(5));
//!
//! let events = seen.events();
//! assert_eq!(events.len(), 1);
//! assert_eq!(events[0].data, Some(json!({"course": "rust-101"})));
//! assert_eq!(tracker.counters().dropped.filtered, 1);
//! ```

pub mod backend;
pub mod event;
pub mod operation;
pub mod processor;
mod queue;
pub mod route;
pub mod stats;
#[cfg(feature = "tracing-bridge")]
pub mod tracing_bridge;
mod tracker;

pub use backend::file::FileBackend;
pub use backend::http::{
    BatchOutcome, BatchSender, Delivery, DeliveryStatus, HttpBackend, HttpConfig, Retry,
};
pub use backend::spool;
pub use backend::{Backend, MemoryBackend, MemoryEvents, StdoutBackend};
pub use event::{Context, Event, Timestamp};
pub use operation::Operation;
pub use processor::{OnFailure, Processor, Verdict};
pub use queue::Overflow;
pub use route::Route;
pub use stats::{Counters, Dropped, Stats};
pub use tracker::{current_scope, EventBuilder, Scope, Tracker, TrackerBuilder};

/// The guide (`README.md`): every feature with a runnable example.
#[doc = include_str!("../README.md")]
pub mod guide {}

/// Errors of setting a tracker up (emitting has none).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory (spool, NDJSON file) could not be opened or written.
    #[error("{0}")]
    Io(String),
    /// A setting is invalid (a URL, a header value).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(String),
}
