//! Operations: `x.started`, then `x.completed` or `x.failed`, linked so that Herald can show
//! them as one run. This exists because hand-written start/end events forget the failure
//! path and the links; an [`Operation`] emits `x.failed` even when it is dropped without an
//! outcome (a panic, a cancelled task).
//!
//! Links: the `started` event's id is the operation's id. Every event of the operation
//! (`completed`/`failed`, events emitted through [`Operation::tracker`] or inside
//! [`Tracker::run`]) has `causationid` = that id and `correlationid` = the root operation's
//! id, so a whole tree of nested operations shares one correlation id and each event points
//! at its direct cause.

use crate::tracker::Tracker;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub(crate) struct OpLink {
    pub correlation: Arc<str>,
    pub started: Arc<str>,
}

tokio::task_local! {
    /// The operation the current task runs in (see [`Tracker::run`]).
    pub(crate) static OPERATION: OpLink;
}

/// A running operation. Finish it with [`Operation::complete`] or [`Operation::fail`];
/// dropping it unfinished emits `x.failed` with the error `abandoned`.
///
/// ```
/// # use herald_client::{MemoryBackend, Tracker};
/// # use serde_json::json;
/// # let (backend, seen) = MemoryBackend::new();
/// # let tracker = Tracker::builder("/lms").backend(backend).build().unwrap();
/// let import = tracker.operation("import", json!({"file": "grades.csv"}));
/// let row = import.child("import.row", json!({"line": 1}));
/// row.fail("bad grade");
/// import.complete(json!({"rows": 1}));
/// # tracker.flush(std::time::Duration::from_secs(5));
/// # let ev = seen.events();
/// # let types: Vec<&str> = ev.iter().map(|e| &*e.ty).collect();
/// # assert_eq!(types, ["import.started", "import.row.started", "import.row.failed", "import.completed"]);
/// # assert!(ev.iter().all(|e| e.correlationid.as_deref() == Some(&*ev[0].id)));
/// # assert_eq!(ev[1].causationid.as_deref(), Some(&*ev[0].id));
/// # assert_eq!(ev[2].causationid.as_deref(), Some(&*ev[1].id));
/// ```
pub struct Operation {
    /// The tracker that started it (its events are not linked by default).
    origin: Tracker,
    /// A child of `origin` whose events are linked to this operation.
    tracker: Tracker,
    name: Cow<'static, str>,
    id: Arc<str>,
    correlation: Arc<str>,
    start: Instant,
    done: bool,
}

impl Tracker {
    /// Starts an operation: emits `{name}.started` with `data`. Nested when this tracker
    /// belongs to an operation ([`Operation::tracker`]) or the task runs inside one.
    pub fn operation(
        &self,
        name: impl Into<Cow<'static, str>>,
        data: impl Into<Value>,
    ) -> Operation {
        let name = name.into();
        let parent = self
            .link()
            .or_else(|| OPERATION.try_with(|l| l.clone()).ok());
        let builder = self.event(Cow::Owned(format!("{name}.started")));
        let id = builder.event_id();
        let correlation = parent
            .as_ref()
            .map(|p| p.correlation.clone())
            .unwrap_or_else(|| id.clone());
        let mut b = builder.data(data).correlationid(correlation.clone());
        if let Some(p) = &parent {
            b = b.causationid(p.started.clone());
        }
        b.emit();
        Operation {
            tracker: self.with_link(correlation.clone(), id.clone()),
            origin: self.clone(),
            name,
            id,
            correlation,
            start: Instant::now(),
            done: false,
        }
    }

    /// Runs `fut` as an operation: `{name}.started`, then `{name}.completed` on `Ok` or
    /// `{name}.failed` with the error on `Err`. Events emitted inside (by any tracker, and
    /// nested operations) are linked to it.
    ///
    /// ```
    /// # use herald_client::{MemoryBackend, Tracker};
    /// # use serde_json::json;
    /// # let (backend, seen) = MemoryBackend::new();
    /// # let tracker = Tracker::builder("/lms").backend(backend).build().unwrap();
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// let r: Result<u32, String> = rt.block_on(tracker.run("sync", json!({}), async {
    ///     tracker.emit("sync.page", json!({"n": 1}));
    ///     Err("remote closed".to_string())
    /// }));
    /// # assert!(r.is_err());
    /// # tracker.flush(std::time::Duration::from_secs(5));
    /// # let ev = seen.events();
    /// # assert_eq!(ev[2].ty, "sync.failed");
    /// # assert_eq!(ev[2].data.as_ref().unwrap()["error"], "remote closed");
    /// # assert_eq!(ev[1].causationid.as_deref(), Some(&*ev[0].id));
    /// ```
    pub async fn run<T, E: Display, F: Future<Output = Result<T, E>>>(
        &self,
        name: impl Into<Cow<'static, str>>,
        data: impl Into<Value>,
        fut: F,
    ) -> Result<T, E> {
        let op = self.operation(name, data);
        let link = op.link();
        let r = OPERATION.scope(link, fut).await;
        match &r {
            Ok(_) => op.complete(Value::Null),
            Err(e) => op.fail(e),
        }
        r
    }

    /// [`Tracker::run`] for synchronous code.
    pub fn run_sync<T, E: Display>(
        &self,
        name: impl Into<Cow<'static, str>>,
        data: impl Into<Value>,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let op = self.operation(name, data);
        let r = OPERATION.sync_scope(op.link(), f);
        match &r {
            Ok(_) => op.complete(Value::Null),
            Err(e) => op.fail(e),
        }
        r
    }
}

impl Operation {
    fn link(&self) -> OpLink {
        OpLink {
            correlation: self.correlation.clone(),
            started: self.id.clone(),
        }
    }

    /// The operation's id (its `started` event's id).
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The root operation's id, shared by the whole tree.
    pub fn correlation_id(&self) -> &Arc<str> {
        &self.correlation
    }

    /// A tracker whose events are linked to this operation.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// A nested operation.
    pub fn child(&self, name: impl Into<Cow<'static, str>>, data: impl Into<Value>) -> Operation {
        self.tracker.operation(name, data)
    }

    fn finish(&mut self, suffix: &str, data: Value, error: Option<String>) {
        self.done = true;
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let mut obj = match data {
            Value::Object(o) => o,
            Value::Null => serde_json::Map::new(),
            other => {
                let mut m = serde_json::Map::new();
                m.insert("result".into(), other);
                m
            }
        };
        obj.insert("duration_ms".into(), json!((ms * 1000.0).round() / 1000.0));
        let mut b = self
            .origin
            .event(Cow::Owned(format!("{}.{suffix}", self.name)))
            .correlationid(self.correlation.clone())
            .causationid(self.id.clone());
        if let Some(e) = error {
            obj.insert("error".into(), Value::String(e));
            b = b.severity(herald_wire::Severity::Error);
        }
        b.data(Value::Object(obj)).emit();
    }

    /// Emits `{name}.completed` with `data` and the duration.
    pub fn complete(mut self, data: impl Into<Value>) {
        self.finish("completed", data.into(), None);
    }

    /// Emits `{name}.failed` with the error and the duration.
    pub fn fail(mut self, error: impl Display) {
        self.finish("failed", Value::Null, Some(error.to_string()));
    }

    /// Emits `{name}.failed` with the error, `data` and the duration.
    pub fn fail_with(mut self, error: impl Display, data: impl Into<Value>) {
        self.finish("failed", data.into(), Some(error.to_string()));
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        if !self.done {
            self.finish("failed", Value::Null, Some("abandoned".into()));
        }
    }
}
