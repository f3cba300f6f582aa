//! Processors: steps that look at an event on the worker thread and keep, replace or drop
//! it, each with a declared failure policy.
//!
//! This exists because of the reference library's worst fault: a processor that raised let
//! the unprocessed event through, so a failing redaction sent what it should have removed.
//! Here a processor's error or panic is caught and its [`OnFailure`] decides; the built-in
//! redaction and hashing steps drop by default. Processors take the event by reference and
//! return a replacement only when they change it, so filters and samplers never copy.

use crate::event::{stable_hash, Event, Object};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// What a processor decided.
// Not boxed: a verdict is moved once per call, and boxing the replacement would cost an
// allocation per changed event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Verdict {
    /// Pass the event on as it is.
    Keep,
    /// Pass this event on instead (a changed copy).
    Replace(Event),
    /// Stop the event here, counted under the reason.
    Drop(DropReason),
}

/// Why a processor dropped an event (the counter it goes to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Filtered,
    Sampled,
}

/// What happens to an event when its processor fails (returns an error or panics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Drop the event (counted as `dropped.processor_failed`). The default, and the only
    /// safe choice for a step that removes or hides data.
    #[default]
    Drop,
    /// Pass the event on unchanged (counted as `processor_errors`). For steps whose output
    /// is optional, such as enrichment.
    Pass,
}

/// A processor's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorError(pub String);

impl fmt::Display for ProcessorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProcessorError {}

impl From<String> for ProcessorError {
    fn from(s: String) -> Self {
        ProcessorError(s)
    }
}

impl From<&str> for ProcessorError {
    fn from(s: &str) -> Self {
        ProcessorError(s.to_owned())
    }
}

/// A step of a route. Called on the tracker's worker thread, never on the emitting one.
pub trait Processor: Send + Sync + 'static {
    fn process(&self, event: &Event) -> Result<Verdict, ProcessorError>;

    /// What to do when `process` fails or panics.
    fn on_failure(&self) -> OnFailure {
        OnFailure::Drop
    }

    /// A name for logs.
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(std::any::type_name::<Self>())
    }
}

/// A processor from a closure, with a failure policy.
///
/// ```
/// use herald_client::processor::{from_fn, OnFailure, Verdict};
/// let p = from_fn("tag", OnFailure::Pass, |e| {
///     let mut e = e.clone();
///     e.context.insert("tagged", true.into());
///     Ok(Verdict::Replace(e))
/// });
/// # let _ = p;
/// ```
pub fn from_fn<F>(name: &'static str, on_failure: OnFailure, f: F) -> FnProcessor<F>
where
    F: Fn(&Event) -> Result<Verdict, ProcessorError> + Send + Sync + 'static,
{
    FnProcessor {
        name,
        on_failure,
        f,
    }
}

pub struct FnProcessor<F> {
    name: &'static str,
    on_failure: OnFailure,
    f: F,
}

impl<F> Processor for FnProcessor<F>
where
    F: Fn(&Event) -> Result<Verdict, ProcessorError> + Send + Sync + 'static,
{
    fn process(&self, event: &Event) -> Result<Verdict, ProcessorError> {
        (self.f)(event)
    }
    fn on_failure(&self) -> OnFailure {
        self.on_failure
    }
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(self.name)
    }
}

/// A type pattern: `*` matches any run of characters, and the pattern must match the whole
/// type (it is anchored at both ends: `course.*` does not match `mycourse.x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePattern {
    parts: Vec<String>,
    leading: bool,
    trailing: bool,
}

impl TypePattern {
    pub fn new(pattern: &str) -> TypePattern {
        TypePattern {
            parts: pattern
                .split('*')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
            leading: pattern.starts_with('*'),
            trailing: pattern.ends_with('*'),
        }
    }

    pub fn matches(&self, s: &str) -> bool {
        if self.parts.is_empty() {
            // "" matches only ""; "*" (or "**") matches everything.
            return self.leading || s.is_empty();
        }
        let mut rest = s;
        let n = self.parts.len();
        for (i, part) in self.parts.iter().enumerate() {
            let first = i == 0;
            let last = i == n - 1;
            if first && !self.leading {
                match rest.strip_prefix(part.as_str()) {
                    Some(r) => rest = r,
                    None => return false,
                }
                if last && !self.trailing {
                    return rest.is_empty();
                }
                continue;
            }
            if last && !self.trailing {
                return rest.len() >= part.len() && rest.ends_with(part.as_str());
            }
            match rest.find(part.as_str()) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

/// Keeps only events whose type matches one of the patterns (allowlist) or none of them
/// (denylist); others are dropped as `filtered`.
#[derive(Debug, Clone)]
pub struct TypeFilter {
    patterns: Vec<TypePattern>,
    allow: bool,
}

impl TypeFilter {
    /// Keep only these types.
    pub fn allow<I: IntoIterator<Item = S>, S: AsRef<str>>(patterns: I) -> TypeFilter {
        TypeFilter {
            patterns: patterns
                .into_iter()
                .map(|p| TypePattern::new(p.as_ref()))
                .collect(),
            allow: true,
        }
    }

    /// Drop these types.
    pub fn deny<I: IntoIterator<Item = S>, S: AsRef<str>>(patterns: I) -> TypeFilter {
        TypeFilter {
            allow: false,
            ..Self::allow(patterns)
        }
    }
}

impl Processor for TypeFilter {
    fn process(&self, event: &Event) -> Result<Verdict, ProcessorError> {
        let hit = self.patterns.iter().any(|p| p.matches(&event.ty));
        Ok(if hit == self.allow {
            Verdict::Keep
        } else {
            Verdict::Drop(DropReason::Filtered)
        })
    }
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(if self.allow { "allow" } else { "deny" })
    }
}

/// Keeps a fraction of events, deterministically by a unit (a path such as `actor` or
/// `data.user_id`): every event of a kept unit is kept, in every process. Events without
/// the unit are sampled by their id.
#[derive(Debug, Clone)]
pub struct Sample {
    threshold: u64,
    unit: Option<String>,
}

impl Sample {
    /// Keep `rate` (0.0 to 1.0) of the events.
    pub fn new(rate: f64) -> Sample {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        Sample {
            threshold: (rate * u64::MAX as f64) as u64,
            unit: None,
        }
    }

    /// Decide per value of this path rather than per event.
    pub fn by(mut self, unit: impl Into<String>) -> Sample {
        self.unit = Some(unit.into());
        self
    }
}

impl Processor for Sample {
    fn process(&self, event: &Event) -> Result<Verdict, ProcessorError> {
        let h = match self.unit.as_deref().and_then(|u| event.get(u)) {
            Some(v) => match &*v {
                Value::String(s) => stable_hash(s.as_bytes()),
                other => stable_hash(other.to_string().as_bytes()),
            },
            None => stable_hash(event.id.as_bytes()),
        };
        // Mix so that nearby inputs spread over the whole range.
        let h = h ^ (h >> 31);
        let h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Ok(if self.threshold == u64::MAX || h < self.threshold {
            Verdict::Keep
        } else {
            Verdict::Drop(DropReason::Sampled)
        })
    }
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("sample")
    }
}

/// Removes or masks values at paths (`data.user.email`, `context.ip`, `actor`). Fails
/// closed: when it fails, the event is dropped unless told otherwise.
#[derive(Debug, Clone)]
pub struct Redact {
    paths: Vec<String>,
    mask: Option<Value>,
    on_failure: OnFailure,
}

impl Redact {
    /// Remove the values at these paths.
    pub fn remove<I: IntoIterator<Item = S>, S: Into<String>>(paths: I) -> Redact {
        Redact {
            paths: paths.into_iter().map(Into::into).collect(),
            mask: None,
            on_failure: OnFailure::Drop,
        }
    }

    /// Replace the values at these paths with `"[redacted]"`.
    pub fn mask<I: IntoIterator<Item = S>, S: Into<String>>(paths: I) -> Redact {
        Redact {
            mask: Some(Value::String("[redacted]".into())),
            ..Self::remove(paths)
        }
    }

    pub fn on_failure(mut self, p: OnFailure) -> Redact {
        self.on_failure = p;
        self
    }
}

impl Processor for Redact {
    fn process(&self, event: &Event) -> Result<Verdict, ProcessorError> {
        if !self.paths.iter().any(|p| event.get(p).is_some()) {
            return Ok(Verdict::Keep);
        }
        let mut e = event.clone();
        for p in &self.paths {
            match &self.mask {
                Some(m) => {
                    e.update(p, |_| m.clone());
                }
                None => {
                    e.remove(p);
                }
            }
        }
        Ok(Verdict::Replace(e))
    }
    fn on_failure(&self) -> OnFailure {
        self.on_failure
    }
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("redact")
    }
}

/// Replaces values at paths with a keyed hash (HMAC-SHA256, hex, first 16 bytes), so that
/// events stay joinable by the value without revealing it. The key matters: an unkeyed hash
/// of an e-mail address is reversed by hashing a list of addresses.
#[derive(Debug, Clone)]
pub struct Hash {
    paths: Vec<String>,
    key: ring::hmac::Key,
}

impl Hash {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(key: &[u8], paths: I) -> Hash {
        Hash {
            paths: paths.into_iter().map(Into::into).collect(),
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        }
    }

    fn digest(&self, v: &Value) -> Value {
        let text = match v {
            Value::String(s) => Cow::Borrowed(s.as_str()),
            other => Cow::Owned(other.to_string()),
        };
        let tag = ring::hmac::sign(&self.key, text.as_bytes());
        let mut out = String::with_capacity(32);
        for b in &tag.as_ref()[..16] {
            out.push_str(&format!("{b:02x}"));
        }
        Value::String(out)
    }
}

impl Processor for Hash {
    fn process(&self, event: &Event) -> Result<Verdict, ProcessorError> {
        if !self.paths.iter().any(|p| event.get(p).is_some()) {
            return Ok(Verdict::Keep);
        }
        let mut e = event.clone();
        for p in &self.paths {
            e.update(p, |v| self.digest(v));
        }
        Ok(Verdict::Replace(e))
    }
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("hash")
    }
}

/// Adds context keys to every event (a host name, a build, a region). Fails open: an event
/// is better sent without enrichment than lost.
#[derive(Debug, Clone)]
pub struct Enrich {
    context: Object,
}

impl Enrich {
    /// Adds these keys to the context (an object; other values add nothing). Keys already in
    /// the event's context are kept.
    pub fn context(values: Value) -> Enrich {
        Enrich {
            context: match values {
                Value::Object(o) => o,
                _ => Object::new(),
            },
        }
    }
}

impl Processor for Enrich {
    fn process(&self, event: &Event) -> Result<Verdict, ProcessorError> {
        if self.context.keys().all(|k| event.context.get(k).is_some()) {
            return Ok(Verdict::Keep);
        }
        let mut e = event.clone();
        for (k, v) in &self.context {
            if e.context.get(k).is_none() {
                e.context.insert(k.clone(), v.clone());
            }
        }
        Ok(Verdict::Replace(e))
    }
    fn on_failure(&self) -> OnFailure {
        OnFailure::Pass
    }
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("enrich")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_patterns_are_anchored() {
        let cases = [
            ("course.*", "course.enrolled", true),
            ("course.*", "mycourse.enrolled", false),
            ("course.*", "course", false),
            ("*.failed", "import.failed", true),
            ("*.failed", "import.failed.x", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.cd", false),
            ("*", "anything", true),
            ("exact.type", "exact.type", true),
            ("exact.type", "exact.types", false),
            ("*mid*", "x.mid.y", true),
            ("ab*ab", "ab", false),
        ];
        for (p, s, want) in cases {
            assert_eq!(TypePattern::new(p).matches(s), want, "{p} on {s}");
        }
    }
}
