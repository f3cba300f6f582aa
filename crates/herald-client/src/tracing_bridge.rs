//! A bridge from the `tracing` crate (feature `tracing-bridge`): spans and events at or above
//! a level become Herald events, so that a service instrumented with `tracing` reports to
//! Herald without a second set of calls.
//!
//! A span becomes an operation: `span.<name>.started` when it opens, `span.<name>.completed`
//! (with its duration and fields) when it closes, nested spans linked to their parent like
//! nested [`crate::Operation`]s. An event becomes `log.<level>` (`log.warn`), with its
//! message, target and fields as data, its severity mapped from the level, and linked to the
//! span it happened in. The library's own logs (target `herald_client`) are left out, so a
//! failing delivery cannot feed itself.
//!
//! ```
//! use herald_client::{tracing_bridge::HeraldLayer, MemoryBackend, Tracker};
//! use tracing_subscriber::layer::SubscriberExt;
//! let (backend, seen) = MemoryBackend::new();
//! let tracker = Tracker::builder("/svc").backend(backend).build().unwrap();
//! let subscriber = tracing_subscriber::registry()
//!     .with(HeraldLayer::new(tracker.clone(), tracing::Level::INFO));
//! tracing::subscriber::with_default(subscriber, || {
//!     let span = tracing::info_span!("checkout", cart = 7);
//!     let _g = span.enter();
//!     tracing::warn!(items = 3, "stock low");
//!     tracing::debug!("below the level: not sent");
//! });
//! tracker.flush(std::time::Duration::from_secs(5));
//! let types: Vec<String> = seen.events().iter().map(|e| e.ty.to_string()).collect();
//! assert_eq!(types, ["span.checkout.started", "log.warn", "span.checkout.completed"]);
//! ```

use crate::operation::Operation;
use crate::tracker::Tracker;
use herald_wire::Severity;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event as TracingEvent, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` layer. Spans and events less severe than `level` are ignored.
pub struct HeraldLayer {
    tracker: Tracker,
    level: Level,
    spans: bool,
}

impl HeraldLayer {
    pub fn new(tracker: Tracker, level: Level) -> HeraldLayer {
        HeraldLayer {
            tracker,
            level,
            spans: true,
        }
    }

    /// Send events only, not spans.
    pub fn without_spans(mut self) -> HeraldLayer {
        self.spans = false;
        self
    }

    fn wanted(&self, meta: &tracing::Metadata<'_>) -> bool {
        // In `tracing`, more verbose levels compare greater.
        *meta.level() <= self.level && !meta.target().starts_with("herald_client")
    }
}

struct SpanOp(Operation);

#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

/// A span name as a type segment: lowercase, `[a-z0-9_]` only.
fn segment(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "span".into()
    } else {
        s
    }
}

fn severity(level: &Level) -> Severity {
    match *level {
        Level::ERROR => Severity::Error,
        Level::WARN => Severity::Warning,
        Level::INFO => Severity::Info,
        _ => Severity::Debug,
    }
}

impl<S> Layer<S> for HeraldLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !self.spans || !self.wanted(attrs.metadata()) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let name = format!("span.{}", segment(attrs.metadata().name()));
        // The nearest enclosing span that became an operation is the parent.
        let parent_op = span.scope().skip(1).find_map(|p| {
            p.extensions()
                .get::<SpanOp>()
                .map(|o| o.0.tracker().clone())
        });
        let tracker = parent_op.as_ref().unwrap_or(&self.tracker);
        let op = tracker.operation(name, Value::Object(fields.0));
        span.extensions_mut().insert(SpanOp(op));
    }

    fn on_event(&self, event: &TracingEvent<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !self.wanted(meta) {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut data = fields.0;
        data.insert("target".into(), Value::String(meta.target().to_owned()));
        let level = meta.level().as_str().to_ascii_lowercase();
        let tracker = ctx
            .event_scope(event)
            .and_then(|scope| {
                scope.into_iter().find_map(|s| {
                    s.extensions()
                        .get::<SpanOp>()
                        .map(|o| o.0.tracker().clone())
                })
            })
            .unwrap_or_else(|| self.tracker.clone());
        tracker
            .event(format!("log.{level}"))
            .severity(severity(meta.level()))
            .data(Value::Object(data))
            .emit();
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let op = span.extensions_mut().remove::<SpanOp>();
        if let Some(SpanOp(op)) = op {
            op.complete(Value::Null);
        }
    }
}
