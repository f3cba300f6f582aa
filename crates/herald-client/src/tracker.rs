//! The [`Tracker`]: what application code holds to emit events. It exists to make emitting
//! safe to call anywhere: cheap to clone, no shared mutable context (contexts are immutable
//! objects shared by `Arc`, and the per-request context lives in a tokio task-local, so
//! concurrent requests cannot see each other's), and an `emit` that builds the event, puts
//! it in a bounded queue and returns without waiting, failing or panicking.

use crate::event::{Context, Event, Object, Timestamp};
use crate::operation::{OpLink, OPERATION};
use crate::queue::{Control, Overflow, Queue, Reply};
use crate::route::{run_worker, Route};
use crate::stats::{Counters, Stats};
use crate::{Backend, Processor};
use herald_wire::{Severity, Visibility};
use serde_json::Value;
use std::borrow::Cow;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

tokio::task_local! {
    /// The context of the current task's scope (see [`Tracker::scope`]), merged with the
    /// scopes it is nested in.
    static SCOPE: Arc<Object>;
}

/// Emits events. Clone it freely: clones share the queue, the worker and the backends.
///
/// ```
/// use herald_client::{MemoryBackend, Tracker};
/// use serde_json::json;
/// let (backend, seen) = MemoryBackend::new();
/// let tracker = Tracker::builder("/lms").backend(backend).build().unwrap();
/// let course = tracker.with_context(json!({"course": "rust-101"}));
/// let lesson = course.with_context(json!({"lesson": 3}));
/// lesson.emit("lesson.viewed", json!({"seconds": 42}));
/// tracker.flush(std::time::Duration::from_secs(5));
/// let ev = &seen.events()[0];
/// assert_eq!(ev.context.get("course"), Some(&json!("rust-101")));
/// assert_eq!(ev.context.get("lesson"), Some(&json!(3)));
/// ```
#[derive(Clone)]
pub struct Tracker {
    shared: Arc<Shared>,
    context: Option<Arc<Object>>,
    defaults: Arc<Defaults>,
}

struct Shared {
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    source: Arc<str>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The worker drains what is queued, closes the backends and stops by itself.
        self.queue.close();
    }
}

/// Attributes a child tracker sets on every event it emits.
#[derive(Debug, Clone, Default)]
struct Defaults {
    severity: Option<Severity>,
    subject: Option<Arc<str>>,
    actor: Option<Arc<str>>,
    tenant: Option<Arc<str>>,
    visibility: Option<Visibility>,
    correlationid: Option<Arc<str>>,
    causationid: Option<Arc<str>>,
}

/// Configures and starts a [`Tracker`].
pub struct TrackerBuilder {
    source: Arc<str>,
    capacity: usize,
    overflow: Overflow,
    root: Route,
    context: Option<Object>,
}

impl TrackerBuilder {
    /// The queue's capacity in events (default 65,536).
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }

    /// What `emit` does when the queue is full (default: drop the new event, counted).
    pub fn overflow(mut self, o: Overflow) -> Self {
        self.overflow = o;
        self
    }

    /// A processor of the root route (runs before any backend sees the event).
    pub fn processor(mut self, p: impl Processor) -> Self {
        self.root = self.root.process(p);
        self
    }

    /// A backend under the root route.
    pub fn backend(mut self, b: impl Backend) -> Self {
        self.root = self.root.to(b);
        self
    }

    /// A child route under the root route.
    pub fn route(mut self, r: Route) -> Self {
        self.root = self.root.route(r);
        self
    }

    /// Replaces the root route.
    pub fn root(mut self, r: Route) -> Self {
        self.root = r;
        self
    }

    /// The tracker's own context (an object), in every event.
    pub fn context(mut self, ctx: Value) -> Self {
        if let Value::Object(o) = ctx {
            self.context = Some(o);
        }
        self
    }

    /// Starts the backends and the worker thread.
    pub fn build(mut self) -> Result<Tracker, crate::Error> {
        let stats = Arc::new(Stats::default());
        self.root.start(&stats)?;
        let queue = Arc::new(Queue::new(self.capacity, self.overflow));
        let (q, s, root) = (queue.clone(), stats.clone(), self.root);
        std::thread::Builder::new()
            .name("herald-tracker".into())
            .spawn(move || run_worker(q, root, s))
            .map_err(|e| crate::Error::Io(format!("cannot start the worker thread: {e}")))?;
        Ok(Tracker {
            shared: Arc::new(Shared {
                queue,
                stats,
                source: self.source,
            }),
            context: self.context.map(Arc::new),
            defaults: Arc::new(Defaults::default()),
        })
    }
}

impl Tracker {
    /// A builder for a tracker whose events have this `source` (e.g. `/lms/web`).
    pub fn builder(source: impl Into<Arc<str>>) -> TrackerBuilder {
        TrackerBuilder {
            source: source.into(),
            capacity: 65_536,
            overflow: Overflow::default(),
            root: Route::new("root"),
            context: None,
        }
    }

    /// A child tracker whose events also carry these context keys (an object; on a key
    /// present in both, the child's value wins). The merge happens here, once, not per event.
    pub fn with_context(&self, ctx: Value) -> Tracker {
        let Value::Object(add) = ctx else {
            return self.clone();
        };
        let merged = match &self.context {
            Some(base) => {
                let mut m = (**base).clone();
                m.extend(add);
                m
            }
            None => add,
        };
        Tracker {
            context: Some(Arc::new(merged)),
            ..self.clone()
        }
    }

    fn with_defaults(&self, f: impl FnOnce(&mut Defaults)) -> Tracker {
        let mut d = (*self.defaults).clone();
        f(&mut d);
        Tracker {
            defaults: Arc::new(d),
            ..self.clone()
        }
    }

    /// A child tracker whose events have this actor.
    pub fn with_actor(&self, actor: impl Into<Arc<str>>) -> Tracker {
        let a = actor.into();
        self.with_defaults(|d| d.actor = Some(a))
    }

    /// A child tracker whose events have this tenant.
    pub fn with_tenant(&self, tenant: impl Into<Arc<str>>) -> Tracker {
        let t = tenant.into();
        self.with_defaults(|d| d.tenant = Some(t))
    }

    /// A child tracker whose events have this subject.
    pub fn with_subject(&self, subject: impl Into<Arc<str>>) -> Tracker {
        let s = subject.into();
        self.with_defaults(|d| d.subject = Some(s))
    }

    /// A child tracker whose events have this severity unless told otherwise.
    pub fn with_severity(&self, severity: Severity) -> Tracker {
        self.with_defaults(|d| d.severity = Some(severity))
    }

    /// A child tracker whose events have this visibility unless told otherwise.
    pub fn with_visibility(&self, v: Visibility) -> Tracker {
        self.with_defaults(|d| d.visibility = Some(v))
    }

    pub(crate) fn with_link(&self, correlation: Arc<str>, cause: Arc<str>) -> Tracker {
        self.with_defaults(|d| {
            d.correlationid = Some(correlation);
            d.causationid = Some(cause);
        })
    }

    /// The operation link this tracker's events carry (correlation id, causation id).
    pub(crate) fn link(&self) -> Option<OpLink> {
        match (&self.defaults.correlationid, &self.defaults.causationid) {
            (Some(c), Some(s)) => Some(OpLink {
                correlation: c.clone(),
                started: s.clone(),
            }),
            _ => None,
        }
    }

    /// This tracker's own context (not the task scope's).
    pub fn context(&self) -> Option<&Object> {
        self.context.as_deref()
    }

    /// The events' `source`.
    pub fn source(&self) -> &Arc<str> {
        &self.shared.source
    }

    /// Runs `fut` with a context that every event emitted in it (by any tracker) carries:
    /// the request's context for a request's task. Scopes nest (the inner one's keys win),
    /// and tasks never see each other's: the context lives in the task, not in the tracker.
    ///
    /// A task spawned inside does not inherit it; pass it on with [`current_scope`] and
    /// [`Scope::enter`].
    ///
    /// ```
    /// # use herald_client::{MemoryBackend, Tracker};
    /// # use serde_json::json;
    /// # let (backend, seen) = MemoryBackend::new();
    /// # let tracker = Tracker::builder("/web").backend(backend).build().unwrap();
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// rt.block_on(tracker.scope(json!({"request_id": "r1"}), async {
    ///     tracker.emit("page.viewed", json!({"path": "/"}));
    /// }));
    /// # tracker.flush(std::time::Duration::from_secs(5));
    /// # assert_eq!(seen.events()[0].context.get("request_id"), Some(&json!("r1")));
    /// ```
    pub fn scope<F: Future>(&self, ctx: Value, fut: F) -> impl Future<Output = F::Output> {
        SCOPE.scope(Arc::new(nested_scope(ctx)), fut)
    }

    /// [`Tracker::scope`] for synchronous code on the current thread.
    pub fn scope_sync<R>(&self, ctx: Value, f: impl FnOnce() -> R) -> R {
        SCOPE.sync_scope(Arc::new(nested_scope(ctx)), f)
    }

    /// Emits an event of this type with this payload (`Value::Null` for none).
    /// Returns at once; never fails or panics (see the counters for what became of it).
    pub fn emit(&self, ty: impl Into<Cow<'static, str>>, data: impl Into<Value>) {
        let ty = ty.into();
        let data = data.into();
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let mut ev = self.new_event(ty);
            if !data.is_null() {
                ev.data = Some(data);
            }
            self.shared.queue.push(Arc::new(ev));
        }));
    }

    /// A builder for an event with more attributes than `emit` takes.
    ///
    /// ```
    /// # use herald_client::{MemoryBackend, Tracker};
    /// # use herald_wire::Severity;
    /// # let (backend, seen) = MemoryBackend::new();
    /// # let tracker = Tracker::builder("/lms").backend(backend).build().unwrap();
    /// tracker
    ///     .event("grade.changed")
    ///     .severity(Severity::Notice)
    ///     .subject("course/rust-101")
    ///     .actor("user/42")
    ///     .data(serde_json::json!({"from": "B", "to": "A"}))
    ///     .emit();
    /// # tracker.flush(std::time::Duration::from_secs(5));
    /// # assert_eq!(seen.events()[0].severity, Some(Severity::Notice));
    /// ```
    pub fn event(&self, ty: impl Into<Cow<'static, str>>) -> EventBuilder<'_> {
        EventBuilder {
            tracker: self,
            event: self.new_event(ty.into()),
        }
    }

    fn new_event(&self, ty: Cow<'static, str>) -> Event {
        let mut ev = Event::new(ty, self.shared.source.clone());
        let d = &*self.defaults;
        ev.severity = d.severity;
        ev.subject = d.subject.clone();
        ev.actor = d.actor.clone();
        ev.tenant = d.tenant.clone();
        ev.visibility = d.visibility;
        ev.correlationid = d.correlationid.clone();
        ev.causationid = d.causationid.clone();
        if ev.correlationid.is_none() {
            if let Ok(link) = OPERATION.try_with(|l| l.clone()) {
                ev.correlationid = Some(link.correlation);
                ev.causationid = Some(link.started);
            }
        }
        ev.context = Context::layered(self.context.clone(), SCOPE.try_with(|s| s.clone()).ok());
        ev
    }

    /// Queues an event built elsewhere (its id, time and context are kept as they are).
    pub fn emit_event(&self, ev: Event) {
        let _ = catch_unwind(AssertUnwindSafe(|| self.shared.queue.push(Arc::new(ev))));
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        let (emitted, queued, full) = self.shared.queue.counts();
        self.shared.stats.snapshot(emitted, queued, full)
    }

    /// Waits until every event emitted before this call has gone through the processors
    /// and the backends have delivered what they hold, or until `timeout`. Returns how many
    /// events the backends still hold (0: all delivered). Blocks the calling thread: on an
    /// async runtime, use [`Tracker::flush_async`].
    pub fn flush(&self, timeout: Duration) -> u64 {
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + timeout;
        self.shared.queue.control(Control::Flush {
            deadline,
            reply: Reply::Sync(tx),
        });
        // A little past the deadline: the worker answers when its backends give up.
        rx.recv_timeout(timeout + Duration::from_secs(1))
            .unwrap_or(u64::MAX)
    }

    /// [`Tracker::flush`] without blocking the runtime.
    pub async fn flush_async(&self, timeout: Duration) -> u64 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.queue.control(Control::Flush {
            deadline: Instant::now() + timeout,
            reply: Reply::Async(tx),
        });
        match tokio::time::timeout(timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(n)) => n,
            _ => u64::MAX,
        }
    }

    /// Stops intake, delivers what is queued within `timeout`, and closes the backends
    /// (a spool keeps what could not be sent for the next start). Emits after this are
    /// counted as `dropped.queue_full`. Returns how many events were left undelivered.
    pub fn shutdown(&self, timeout: Duration) -> u64 {
        let (tx, rx) = std::sync::mpsc::channel();
        self.shared.queue.control(Control::Close {
            deadline: Instant::now() + timeout,
            reply: Reply::Sync(tx),
        });
        let n = rx
            .recv_timeout(timeout + Duration::from_secs(1))
            .unwrap_or(u64::MAX);
        self.shared.queue.close();
        n
    }

    /// [`Tracker::shutdown`] without blocking the runtime.
    pub async fn shutdown_async(&self, timeout: Duration) -> u64 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.queue.control(Control::Close {
            deadline: Instant::now() + timeout,
            reply: Reply::Async(tx),
        });
        let n = match tokio::time::timeout(timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(n)) => n,
            _ => u64::MAX,
        };
        self.shared.queue.close();
        n
    }
}

fn nested_scope(ctx: Value) -> Object {
    let add = match ctx {
        Value::Object(o) => o,
        _ => Object::new(),
    };
    match SCOPE.try_with(|s| s.clone()) {
        Ok(parent) => {
            let mut m = (*parent).clone();
            m.extend(add);
            m
        }
        Err(_) => add,
    }
}

/// The current task's scope, to carry into a spawned task.
#[derive(Clone, Debug)]
pub struct Scope {
    ctx: Option<Arc<Object>>,
    op: Option<OpLink>,
}

/// The context scope (and operation) of the current task, if any.
///
/// ```
/// # use herald_client::{current_scope, MemoryBackend, Tracker};
/// # use serde_json::json;
/// # let (backend, seen) = MemoryBackend::new();
/// # let tracker = Tracker::builder("/web").backend(backend).build().unwrap();
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// rt.block_on(tracker.scope(json!({"request_id": "r1"}), async {
///     let t = tracker.clone();
///     tokio::spawn(current_scope().enter(async move { t.emit("job.queued", json!({})) }))
///         .await
///         .unwrap();
/// }));
/// # tracker.flush(std::time::Duration::from_secs(5));
/// # assert_eq!(seen.events()[0].context.get("request_id"), Some(&json!("r1")));
/// ```
pub fn current_scope() -> Scope {
    Scope {
        ctx: SCOPE.try_with(|s| s.clone()).ok(),
        op: OPERATION.try_with(|l| l.clone()).ok(),
    }
}

impl Scope {
    /// Runs `fut` inside this scope.
    pub async fn enter<F: Future>(self, fut: F) -> F::Output {
        match (self.ctx, self.op) {
            (Some(c), Some(o)) => SCOPE.scope(c, OPERATION.scope(o, fut)).await,
            (Some(c), None) => SCOPE.scope(c, fut).await,
            (None, Some(o)) => OPERATION.scope(o, fut).await,
            (None, None) => fut.await,
        }
    }
}

/// Builds one event; [`EventBuilder::emit`] queues it.
pub struct EventBuilder<'a> {
    tracker: &'a Tracker,
    event: Event,
}

impl EventBuilder<'_> {
    pub fn data(mut self, data: impl Into<Value>) -> Self {
        let d = data.into();
        self.event.data = (!d.is_null()).then_some(d);
        self
    }
    /// Sets the id (by default a new UUIDv7). A resend with the same id and source is a
    /// duplicate on the server.
    pub fn id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.event.id = id.into();
        self
    }
    pub fn time(mut self, t: SystemTime) -> Self {
        self.event.time = Timestamp::from_system_time(t);
        self
    }
    pub fn source(mut self, s: impl Into<Arc<str>>) -> Self {
        self.event.source = s.into();
        self
    }
    pub fn severity(mut self, s: Severity) -> Self {
        self.event.severity = Some(s);
        self
    }
    pub fn subject(mut self, s: impl Into<Arc<str>>) -> Self {
        self.event.subject = Some(s.into());
        self
    }
    pub fn actor(mut self, s: impl Into<Arc<str>>) -> Self {
        self.event.actor = Some(s.into());
        self
    }
    pub fn tenant(mut self, s: impl Into<Arc<str>>) -> Self {
        self.event.tenant = Some(s.into());
        self
    }
    pub fn correlationid(mut self, s: impl Into<Arc<str>>) -> Self {
        self.event.correlationid = Some(s.into());
        self
    }
    pub fn causationid(mut self, s: impl Into<Arc<str>>) -> Self {
        self.event.causationid = Some(s.into());
        self
    }
    pub fn visibility(mut self, v: Visibility) -> Self {
        self.event.visibility = Some(v);
        self
    }
    pub fn readers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, r: I) -> Self {
        self.event.readers = r.into_iter().map(Into::into).collect();
        self
    }
    /// Adds one key to this event's context (over the tracker's and the scope's).
    pub fn context(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.event.context.insert(key, value.into());
        self
    }
    /// The event as built so far.
    pub fn peek(&self) -> &Event {
        &self.event
    }
    /// The id the event will have.
    pub fn event_id(&self) -> Arc<str> {
        self.event.id.clone()
    }
    /// Queues the event; returns its id.
    pub fn emit(self) -> Arc<str> {
        let id = self.event.id.clone();
        self.tracker.emit_event(self.event);
        id
    }
}
