//! Herald's storage layer: the [`Store`] trait and its embedded SQLite implementation.
//!
//! This crate exists so that everything above it (ingest, query, and later the stream, rules
//! and retention) talks to one interface, and a PostgreSQL implementation can be added
//! behind the same trait and pass the same [`contract`] tests. It owns durability: an
//! `append` future resolves only after the events are committed and fsynced.
//!
//! Invariants:
//! - Filter values reach SQL only as bound parameters; the only user text pasted into SQL is
//!   a `data.`/`context.` path, which the core's parser restricts to `[A-Za-z0-9_-]` segments.
//! - One writer per database; concurrent appends are batched into one transaction (group
//!   commit). Every queue is bounded and a full one is an error ([`StoreError::Overloaded`]),
//!   never unbounded memory.
//! - Listings are ordered by (event time, seq) descending, so keyset cursors are stable under
//!   concurrent inserts.

use herald_core::cursor::Cursor;
use herald_core::filter::Filter;
use herald_core::{Access, PreparedEvent};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub mod contract;
mod dedup;
mod jsonpath;
pub mod keys;
mod log;
pub mod memory;
pub mod registry;
mod segment;
mod sql;
pub mod sqlite;
mod throttle;

pub use herald_core::matcher::LiveEvent;
pub use keys::{KeyInfo, KeyStore, Restrictions, Role};
pub use registry::RegistryStore;
pub use sqlite::{SqliteOptions, SqliteStore, ATTRIBUTE_INDEXES};

/// A boxed future, so that [`Store`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What became of one appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored under this new `seq`.
    Stored(u64),
    /// Same `source`+`id` and content already stored under this `seq`.
    Duplicate(u64),
    /// Same `source`+`id` stored under this `seq` with different content.
    Conflict(u64),
}

/// Errors a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write queue is full: retry later (HTTP 503 with `Retry-After`).
    #[error("the write queue is full")]
    Overloaded,
    /// The store is shutting down or its writer stopped.
    #[error("the store is closed")]
    Closed,
    /// The database failed (disk full, IO error, corruption). Nothing of the failed batch
    /// was acknowledged.
    #[error("database error: {0}")]
    Database(String),
    /// The request contradicts what is stored (for example a schema version published
    /// again with other content).
    #[error("{0}")]
    Conflict(String),
    /// The stored body of this event cannot be read: the disk changed or lost its record
    /// (the log says how). Listings and streams pass over such an event; a read of it by
    /// seq or id is this error.
    #[error("the stored body of event {0} is damaged on disk")]
    Damaged(u64),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// A listing request. Bounds are in microseconds since the epoch, `until` exclusive.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub filter: Filter,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    pub limit: usize,
    /// Continue after this position (exclusive).
    pub cursor: Option<Cursor>,
    /// Who is reading: only events they may read are listed (the default, an anonymous
    /// caller, sees public events only).
    pub access: Access,
}

/// A stored event: its position and its canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub time_us: i64,
    pub body: String,
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub events: Vec<StoredEvent>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// Events as they are acknowledged, in `seq` order, one batch per group commit: what the
/// live stream and (later) notification rules consume. Shared, never copied per subscriber.
pub type LiveBatch = Arc<[herald_core::matcher::LiveEvent]>;

/// A catch-up read for the live stream: events after a position, oldest first.
#[derive(Debug, Clone, Default)]
pub struct ScanQuery {
    pub filter: Filter,
    /// Only events with `seq` greater than this.
    pub after_seq: u64,
    /// Only events whose `time` is at least this (microseconds since the epoch).
    pub since_us: Option<i64>,
    pub limit: usize,
    /// Who is reading (see [`EventQuery::access`]).
    pub access: Access,
}

/// A page of a catch-up read.
#[derive(Debug, Clone, Default)]
pub struct ScanPage {
    pub events: Vec<StoredEvent>,
    /// Every event up to this `seq` was examined: resume after it. At least `after_seq`.
    pub scanned_to: u64,
    /// True when the page reached the end of what is stored.
    pub done: bool,
}

/// The positions a stream can resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    /// The oldest `seq` still stored (`last + 1` when nothing is stored). Resuming from an
    /// older position would miss events that retention removed.
    pub oldest: u64,
    /// The newest acknowledged `seq` (0 when nothing was ever stored).
    pub last: u64,
}

/// What the writer reports after each commit, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct CommitInfo {
    pub events: usize,
    pub requests: usize,
    pub duration: Duration,
}

/// Called by the writer after each commit (keep it cheap: it runs on the writer thread).
pub type CommitObserver = Arc<dyn Fn(CommitInfo) + Send + Sync>;

/// The storage interface every backend implements.
pub trait Store: Send + Sync + 'static {
    /// Appends events durably; resolves after the commit is on disk, one outcome per event
    /// in order.
    fn append(
        &self,
        events: Vec<PreparedEvent>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, StoreError>>;

    /// Lists events matching the query, newest first.
    fn query(&self, q: EventQuery) -> BoxFuture<'_, Result<Page, StoreError>>;

    /// One event by its sequence number, if the caller may read it.
    fn get_by_seq<'a>(
        &'a self,
        seq: u64,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<Option<StoredEvent>, StoreError>>;

    /// One event by its producer identity, if the caller may read it.
    fn get_by_id<'a>(
        &'a self,
        source: &'a str,
        id: &'a str,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<Option<StoredEvent>, StoreError>>;

    /// Events acknowledged from now on, in `seq` order. A receiver that falls more than the
    /// channel's capacity behind gets `Lagged` and must catch up with [`Store::scan`]; every
    /// event published before this call is visible to a scan started after it.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<LiveBatch>;

    /// Events after a position, oldest first (the catch-up half of a stream).
    fn scan(&self, q: ScanQuery) -> BoxFuture<'_, Result<ScanPage, StoreError>>;

    /// The oldest stored and newest acknowledged positions.
    fn seq_range(&self) -> BoxFuture<'_, Result<SeqRange, StoreError>>;

    /// Write requests waiting for the writer.
    fn queue_depth(&self) -> usize;

    /// Waits until every event acknowledged before the call is committed to the store's
    /// indexes, the full-text index included (asking for that commit now). Reads never need it (they see acknowledged
    /// events either way); benches and tests use it to measure or exercise the indexes.
    fn settle(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    /// Acknowledged events not committed to the store's indexes yet (reads see them all the
    /// same): how far its indexing is behind. Zero for a store that indexes as it writes.
    fn index_backlog(&self) -> u64 {
        0
    }

    /// Acknowledged events the full-text index does not hold yet (text search finds them
    /// the same, in memory or by scanning): how far text indexing is behind, as after the
    /// index was deleted. Zero for a store without one.
    fn text_backlog(&self) -> u64 {
        0
    }

    /// Duplicate keys of recent events held in memory (see the store's duplicate-key
    /// index): up to about a million, more only while they cannot be written to disk.
    fn dedup_keys_in_memory(&self) -> u64 {
        0
    }

    /// Reads that met a damaged stored body (since the store opened): those events are
    /// left out of listings and streams, and reading one by seq or id fails.
    fn damaged_reads(&self) -> u64 {
        0
    }

    /// Stops taking appends, commits what was queued, and stops the writer.
    fn close(&self) -> BoxFuture<'_, ()>;
}
