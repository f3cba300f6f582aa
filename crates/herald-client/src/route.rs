//! Routing: a tree whose nodes run their processors and hand the surviving events to their
//! children (routes or backends), and the worker thread that feeds the tree from the queue.
//!
//! Events travel as `Arc<Event>`: a branch that keeps an event shares it with its siblings,
//! and only a processor that changes it makes a copy, which its own subtree then shares.
//! The reference library deep-copied the event at every node, which was most of its cost.

use crate::backend::Backend;
use crate::event::Event;
use crate::processor::{DropReason, OnFailure, Processor, Verdict};
use crate::queue::{Control, Queue};
use crate::stats::Stats;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A node of the routing tree: processors, then children.
///
/// ```
/// use herald_client::{Route, MemoryBackend, processor::TypeFilter};
/// let (audit, _seen) = MemoryBackend::new();
/// let (all, _) = MemoryBackend::new();
/// let root = Route::new("root")
///     .to(all)
///     .route(Route::new("audit").process(TypeFilter::allow(["audit.*"])).to(audit));
/// # let _ = root;
/// ```
pub struct Route {
    name: String,
    processors: Vec<Box<dyn Processor>>,
    children: Vec<Node>,
}

enum Node {
    Route(Route),
    Backend(Box<dyn Backend>),
}

impl Route {
    pub fn new(name: impl Into<String>) -> Route {
        Route {
            name: name.into(),
            processors: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Adds a processor; they run in the order added.
    pub fn process(mut self, p: impl Processor) -> Route {
        self.processors.push(Box::new(p));
        self
    }

    /// Adds a boxed processor.
    pub fn process_boxed(mut self, p: Box<dyn Processor>) -> Route {
        self.processors.push(p);
        self
    }

    /// Sends the events that pass this route's processors to a backend.
    pub fn to(mut self, b: impl Backend) -> Route {
        self.children.push(Node::Backend(Box::new(b)));
        self
    }

    /// Sends the events that pass this route's processors to a backend (boxed).
    pub fn to_boxed(mut self, b: Box<dyn Backend>) -> Route {
        self.children.push(Node::Backend(b));
        self
    }

    /// Adds a child route (its processors see only what passed this one's).
    pub fn route(mut self, r: Route) -> Route {
        self.children.push(Node::Route(r));
        self
    }

    pub(crate) fn start(&mut self, stats: &Arc<Stats>) -> Result<(), crate::Error> {
        for c in &mut self.children {
            match c {
                Node::Route(r) => r.start(stats)?,
                Node::Backend(b) => b.start(stats.clone())?,
            }
        }
        Ok(())
    }

    /// Runs the processors on every event, then gives the survivors to every child.
    pub(crate) fn dispatch(&mut self, mut events: Vec<Arc<Event>>, stats: &Stats) {
        if !self.processors.is_empty() {
            events.retain_mut(|ev| {
                for p in &self.processors {
                    match run_one(&**p, ev, stats, &self.name) {
                        Step::Keep => {}
                        Step::Replace(e) => *ev = Arc::new(e),
                        Step::Drop => return false,
                    }
                }
                true
            });
        }
        if events.is_empty() {
            return;
        }
        let n = self.children.len();
        for (i, c) in self.children.iter_mut().enumerate() {
            // The last child takes the list itself; the others get a copy of the pointers.
            let batch = if i + 1 == n {
                std::mem::take(&mut events)
            } else {
                events.clone()
            };
            match c {
                Node::Route(r) => r.dispatch(batch, stats),
                Node::Backend(b) => {
                    let r = catch_unwind(AssertUnwindSafe(|| b.send(&batch)));
                    if r.is_err() {
                        tracing::error!(backend = %b.name(), "backend panicked in send");
                        stats.add_backend_error(batch.len() as u64);
                    }
                }
            }
        }
    }

    /// Flushes every backend; returns how many events they still hold.
    pub(crate) fn flush(&mut self, deadline: Instant) -> u64 {
        let mut pending = 0;
        for c in &mut self.children {
            pending += match c {
                Node::Route(r) => r.flush(deadline),
                Node::Backend(b) => {
                    catch_unwind(AssertUnwindSafe(|| b.flush(deadline))).unwrap_or(0)
                }
            };
        }
        pending
    }

    pub(crate) fn close(&mut self, deadline: Instant) -> u64 {
        let mut pending = 0;
        for c in &mut self.children {
            pending += match c {
                Node::Route(r) => r.close(deadline),
                Node::Backend(b) => {
                    catch_unwind(AssertUnwindSafe(|| b.close(deadline))).unwrap_or(0)
                }
            };
        }
        pending
    }
}

// Not boxed, like `Verdict`: moved once, and a box would be an allocation per change.
#[allow(clippy::large_enum_variant)]
enum Step {
    Keep,
    Replace(Event),
    Drop,
}

fn run_one(p: &dyn Processor, ev: &Event, stats: &Stats, route: &str) -> Step {
    let failed = match catch_unwind(AssertUnwindSafe(|| p.process(ev))) {
        Ok(Ok(Verdict::Keep)) => return Step::Keep,
        Ok(Ok(Verdict::Replace(e))) => return Step::Replace(e),
        Ok(Ok(Verdict::Drop(DropReason::Filtered))) => {
            Stats::add(&stats.filtered, 1);
            return Step::Drop;
        }
        Ok(Ok(Verdict::Drop(DropReason::Sampled))) => {
            Stats::add(&stats.sampled, 1);
            return Step::Drop;
        }
        Ok(Err(e)) => e.0,
        Err(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into()),
    };
    let policy = catch_unwind(AssertUnwindSafe(|| p.on_failure())).unwrap_or_default();
    let name = catch_unwind(AssertUnwindSafe(|| p.name())).unwrap_or_default();
    match policy {
        OnFailure::Drop => {
            tracing::warn!(route, processor = %name, error = %failed, id = %ev.id, "processor failed; event dropped");
            Stats::add(&stats.processor_failed, 1);
            Step::Drop
        }
        OnFailure::Pass => {
            tracing::warn!(route, processor = %name, error = %failed, id = %ev.id, "processor failed; event passed unchanged");
            Stats::add(&stats.processor_errors, 1);
            Step::Keep
        }
    }
}

/// The worker thread's loop: take what is queued, route it, answer controls; on close,
/// drain, close the backends and return.
pub(crate) fn run_worker(queue: Arc<Queue>, mut root: Route, stats: Arc<Stats>) {
    let mut spare = VecDeque::new();
    let mut batch: Vec<Arc<Event>> = Vec::new();
    let mut busy = false;
    loop {
        let take = queue.take(std::mem::take(&mut spare), Duration::from_millis(500), busy);
        let mut events = take.events;
        busy = !events.is_empty();
        if !events.is_empty() {
            Stats::add(&stats.processed, events.len() as u64);
            // Route in slices so that one huge backlog does not become one huge batch.
            while !events.is_empty() {
                let n = events.len().min(4096);
                batch.clear();
                batch.extend(events.drain(..n));
                root.dispatch(std::mem::take(&mut batch), &stats);
            }
        }
        spare = events;
        let mut closing: Option<(Instant, crate::queue::Reply)> = None;
        for c in take.controls {
            match c {
                Control::Flush { deadline, reply } => reply.send(root.flush(deadline)),
                Control::Close { deadline, reply } => closing = Some((deadline, reply)),
            }
        }
        if let Some((deadline, reply)) = closing {
            drain_rest(&queue, &mut root, &stats);
            reply.send(root.close(deadline));
            return;
        }
        if take.closed {
            drain_rest(&queue, &mut root, &stats);
            // Nobody waits: the tracker is gone. Give the backends a moment to deliver.
            root.close(Instant::now() + Duration::from_secs(5));
            return;
        }
    }
}

fn drain_rest(queue: &Queue, root: &mut Route, stats: &Stats) {
    loop {
        let take = queue.take(VecDeque::new(), Duration::ZERO, false);
        if take.events.is_empty() {
            for c in take.controls {
                match c {
                    Control::Flush { reply, .. } | Control::Close { reply, .. } => reply.send(0),
                }
            }
            return;
        }
        Stats::add(&stats.processed, take.events.len() as u64);
        root.dispatch(take.events.into_iter().collect(), stats);
    }
}
