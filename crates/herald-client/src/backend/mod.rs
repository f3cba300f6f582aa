//! Backends: where routed events end up. This module holds the [`Backend`] trait and the
//! simple ones (in-memory for tests, stdout, NDJSON files with rotation); `http` and `spool`
//! deliver to Herald, `nats` publishes to NATS JetStream.
//!
//! A backend's `send` runs on the tracker's worker thread, so it must not wait on the
//! network: the HTTP and NATS backends hand events to their own sender threads.

pub mod file;
pub mod http;
#[cfg(feature = "nats")]
pub mod nats;
pub mod spool;

use crate::event::Event;
use crate::stats::Stats;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A destination for events.
pub trait Backend: Send + 'static {
    /// A name for logs.
    fn name(&self) -> &str;

    /// Called once when the tracker starts, with the counters to update.
    fn start(&mut self, _stats: Arc<Stats>) -> Result<(), crate::Error> {
        Ok(())
    }

    /// Takes a batch of events. Must not wait for the network.
    fn send(&mut self, events: &[Arc<Event>]);

    /// Delivers what it holds, waiting until `deadline` at most; returns how many events it
    /// still holds.
    fn flush(&mut self, _deadline: Instant) -> u64 {
        0
    }

    /// Flushes and releases resources (the tracker is shutting down).
    fn close(&mut self, deadline: Instant) -> u64 {
        self.flush(deadline)
    }
}

/// Keeps events in memory, for tests and doctests.
///
/// ```
/// use herald_client::{MemoryBackend, Tracker};
/// let (backend, seen) = MemoryBackend::new();
/// let tracker = Tracker::builder("/docs").backend(backend).build().unwrap();
/// tracker.emit("doc.read", serde_json::json!({"page": 1}));
/// tracker.flush(std::time::Duration::from_secs(5));
/// assert_eq!(seen.events()[0].ty, "doc.read");
/// ```
pub struct MemoryBackend {
    shared: Arc<MemoryShared>,
    stats: Option<Arc<Stats>>,
}

struct MemoryShared {
    events: Mutex<Vec<Arc<Event>>>,
    changed: Condvar,
}

/// Reads what a [`MemoryBackend`] received.
#[derive(Clone)]
pub struct MemoryEvents {
    shared: Arc<MemoryShared>,
}

impl MemoryBackend {
    pub fn new() -> (MemoryBackend, MemoryEvents) {
        let shared = Arc::new(MemoryShared {
            events: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        });
        (
            MemoryBackend {
                shared: shared.clone(),
                stats: None,
            },
            MemoryEvents { shared },
        )
    }
}

impl MemoryEvents {
    /// Everything received so far, in order.
    pub fn events(&self) -> Vec<Arc<Event>> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn len(&self) -> usize {
        self.shared
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Empties the list (returning it).
    pub fn take(&self) -> Vec<Arc<Event>> {
        std::mem::take(&mut *self.shared.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until at least `n` events arrived or `timeout` passed; returns the count.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.events.lock().unwrap_or_else(|e| e.into_inner());
        while g.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            g = self
                .shared
                .changed
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        g.len()
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &str {
        "memory"
    }
    fn start(&mut self, stats: Arc<Stats>) -> Result<(), crate::Error> {
        self.stats = Some(stats);
        Ok(())
    }
    fn send(&mut self, events: &[Arc<Event>]) {
        self.shared
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(events);
        self.shared.changed.notify_all();
        if let Some(s) = &self.stats {
            s.add_sent(events.len() as u64);
        }
    }
}

/// Writes events as NDJSON lines to standard output.
#[derive(Default)]
pub struct StdoutBackend {
    stats: Option<Arc<Stats>>,
    buf: Vec<u8>,
}

impl StdoutBackend {
    pub fn new() -> StdoutBackend {
        StdoutBackend::default()
    }
}

impl Backend for StdoutBackend {
    fn name(&self) -> &str {
        "stdout"
    }
    fn start(&mut self, stats: Arc<Stats>) -> Result<(), crate::Error> {
        self.stats = Some(stats);
        Ok(())
    }
    fn send(&mut self, events: &[Arc<Event>]) {
        self.buf.clear();
        for e in events {
            e.write_json(&mut self.buf);
            self.buf.push(b'\n');
        }
        let ok = std::io::stdout().lock().write_all(&self.buf).is_ok();
        if let Some(s) = &self.stats {
            if ok {
                s.add_sent(events.len() as u64);
            } else {
                s.add_backend_error(events.len() as u64);
            }
        }
    }
}
