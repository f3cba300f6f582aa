//! Counters of what happened to events: emitted, sent, dropped (by reason), retried,
//! spooled. They exist so that no event disappears silently: every event the library gives
//! up on is counted under a reason, and [`crate::Tracker::counters`] shows them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters shared by the tracker, its worker and its backends.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) processed: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) spooled: AtomicU64,
    pub(crate) processor_errors: AtomicU64,
    pub(crate) filtered: AtomicU64,
    pub(crate) sampled: AtomicU64,
    pub(crate) processor_failed: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) conflict: AtomicU64,
    pub(crate) spool_full: AtomicU64,
    pub(crate) buffer_full: AtomicU64,
    pub(crate) gave_up: AtomicU64,
    pub(crate) shutdown: AtomicU64,
    pub(crate) backend_error: AtomicU64,
}

impl Stats {
    /// Adds `n` events delivered by a backend (stored or duplicate on Herald, written to a
    /// file, published, ...).
    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Relaxed);
    }

    /// Adds `n` events a backend could not write and gave up on.
    pub fn add_backend_error(&self, n: u64) {
        self.backend_error.fetch_add(n, Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
}

/// Why events were dropped. Each is a count of events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// The tracker's queue was full (overflow policy drop newest/oldest, or a blocked emit
    /// timed out).
    pub queue_full: u64,
    /// A processor said drop (allow/deny filters).
    pub filtered: u64,
    /// A sampler left the event out (in this process, or Herald's sampling or opt-out list:
    /// answered `dropped`).
    pub sampled: u64,
    /// A processor failed or panicked and its failure policy is "drop".
    pub processor_failed: u64,
    /// Herald rejected the event as invalid, or kept it in its quarantine (it is reported,
    /// never retried).
    pub rejected: u64,
    /// Herald holds another event with the same source and id but different content.
    pub conflict: u64,
    /// The on-disk spool was at its size limit.
    pub spool_full: u64,
    /// The in-memory send buffer (HTTP without spool, NATS) was at its limit.
    pub buffer_full: u64,
    /// A backend without spool ran out of retries.
    pub gave_up: u64,
    /// Still in memory when a shutdown deadline passed (a spool keeps them instead).
    pub shutdown: u64,
    /// A backend could not write (file system error, serialization).
    pub backend_error: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.queue_full
            + self.filtered
            + self.sampled
            + self.processor_failed
            + self.rejected
            + self.conflict
            + self.spool_full
            + self.buffer_full
            + self.gave_up
            + self.shutdown
            + self.backend_error
    }
}

/// A snapshot of the counters.
///
/// `sent` counts deliveries: an event routed to two backends counts twice when both deliver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// `emit` calls (including those whose event was dropped at once).
    pub emitted: u64,
    /// Events waiting in the tracker's queue now.
    pub queued: u64,
    /// Events taken from the queue by the worker.
    pub processed: u64,
    /// Deliveries acknowledged by backends (Herald: stored or duplicate).
    pub sent: u64,
    /// Events resent after a timeout, a 429 or a 5xx (one per event per retry).
    pub retried: u64,
    /// Events written to the on-disk spool.
    pub spooled: u64,
    /// Processor failures whose policy let the event pass unchanged.
    pub processor_errors: u64,
    pub dropped: Dropped,
}

impl Stats {
    pub(crate) fn snapshot(&self, emitted: u64, queued: u64, queue_full: u64) -> Counters {
        let g = |c: &AtomicU64| c.load(Relaxed);
        Counters {
            emitted,
            queued,
            processed: g(&self.processed),
            sent: g(&self.sent),
            retried: g(&self.retried),
            spooled: g(&self.spooled),
            processor_errors: g(&self.processor_errors),
            dropped: Dropped {
                queue_full,
                filtered: g(&self.filtered),
                sampled: g(&self.sampled),
                processor_failed: g(&self.processor_failed),
                rejected: g(&self.rejected),
                conflict: g(&self.conflict),
                spool_full: g(&self.spool_full),
                buffer_full: g(&self.buffer_full),
                gave_up: g(&self.gave_up),
                shutdown: g(&self.shutdown),
                backend_error: g(&self.backend_error),
            },
        }
    }
}
