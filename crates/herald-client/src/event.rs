//! The event as the library holds it between `emit` and a backend: an immutable record
//! shared by `Arc` between routing branches, serialized to Herald's JSON only when a backend
//! writes it.
//!
//! It exists apart from `herald_wire::Event` because the emit path must be cheap: the id and
//! the time are generated without formatting more than once, the source and the contexts are
//! shared (`Arc`), and the context is kept as layers (tracker, task scope, event) that are
//! merged when the event is written, not when it is emitted. [`Event::to_wire`] gives the
//! wire form.

use herald_wire::{Severity, Visibility};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A JSON object, the shape of a context.
pub type Object = Map<String, Value>;

/// One event. Cloning it copies `data` (the contexts and strings are shared); a processor
/// that changes an event pays that copy, one that only looks at it does not.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Producer id, a UUIDv7 unless the builder set one. With `source` it identifies the
    /// event, so a resend after a crash is a `duplicate` on the server, not a second copy.
    pub id: Arc<str>,
    /// Dotted lowercase type, e.g. `course.enrolled`.
    pub ty: Cow<'static, str>,
    pub source: Arc<str>,
    pub time: Timestamp,
    pub severity: Option<Severity>,
    pub subject: Option<Arc<str>>,
    pub actor: Option<Arc<str>>,
    pub tenant: Option<Arc<str>>,
    pub correlationid: Option<Arc<str>>,
    pub causationid: Option<Arc<str>>,
    pub visibility: Option<Visibility>,
    pub readers: Vec<String>,
    pub context: Context,
    pub data: Option<Value>,
}

impl Event {
    /// An event with a new id and the current time, no context and no data.
    pub fn new(ty: impl Into<Cow<'static, str>>, source: Arc<str>) -> Event {
        // One clock read for both the time and the id's timestamp.
        let time = Timestamp::now();
        Event {
            id: id_at(time.0.div_euclid(1000).max(0) as u64),
            ty: ty.into(),
            source,
            time,
            severity: None,
            subject: None,
            actor: None,
            tenant: None,
            correlationid: None,
            causationid: None,
            visibility: None,
            readers: Vec::new(),
            context: Context::default(),
            data: None,
        }
    }

    /// Appends the event as one line of Herald JSON (no newline).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Serializing plain maps, strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(out, self);
    }

    /// The event as Herald JSON text.
    pub fn to_json(&self) -> String {
        let mut v = Vec::with_capacity(256);
        self.write_json(&mut v);
        String::from_utf8(v).unwrap_or_default()
    }

    /// The wire form (for code that speaks `herald_wire`).
    pub fn to_wire(&self) -> herald_wire::Event {
        herald_wire::Event {
            specversion: "1.0".into(),
            id: self.id.to_string(),
            source: self.source.to_string(),
            ty: self.ty.to_string(),
            time: Some(self.time.to_rfc3339()),
            subject: self.subject.as_deref().map(str::to_owned),
            severity: self.severity,
            actor: self.actor.as_deref().map(str::to_owned),
            tenant: self.tenant.as_deref().map(str::to_owned),
            causationid: self.causationid.as_deref().map(str::to_owned),
            correlationid: self.correlationid.as_deref().map(str::to_owned),
            visibility: self.visibility,
            readers: self.readers.clone(),
            context: (!self.context.is_empty()).then(|| self.context.to_map()),
            data: self.data.clone(),
            ..herald_wire::Event::default()
        }
    }

    /// The value at a dotted path: `data.a.b`, `context.ip`, or a top-level attribute
    /// (`actor`, `subject`, `tenant`, `type`, `source`, `id`, `correlationid`, `causationid`).
    pub fn get(&self, path: &str) -> Option<Cow<'_, Value>> {
        let (root, rest) = split_root(path);
        match root {
            "data" => {
                let data = self.data.as_ref()?;
                lookup(data, rest).map(Cow::Borrowed)
            }
            "context" => {
                let mut segs = rest.split('.');
                let first = segs.next().filter(|s| !s.is_empty())?;
                let mut v = self.context.get(first)?;
                for s in segs {
                    v = v.get(s)?;
                }
                Some(Cow::Borrowed(v))
            }
            _ if rest.is_empty() => self
                .attr(root)
                .map(|s| Cow::Owned(Value::String(s.to_owned()))),
            _ => None,
        }
    }

    /// A top-level string attribute by name.
    pub fn attr(&self, name: &str) -> Option<&str> {
        match name {
            "id" => Some(&self.id),
            "type" => Some(&self.ty),
            "source" => Some(&self.source),
            "subject" => self.subject.as_deref(),
            "actor" => self.actor.as_deref(),
            "tenant" => self.tenant.as_deref(),
            "correlationid" => self.correlationid.as_deref(),
            "causationid" => self.causationid.as_deref(),
            _ => None,
        }
    }

    /// Replaces the value at a path (see [`Event::get`]) with what `f` returns for it; `f` is
    /// called only when the path exists. Returns whether it did.
    pub fn update(&mut self, path: &str, f: impl FnOnce(&Value) -> Value) -> bool {
        let (root, rest) = split_root(path);
        match root {
            "data" => match self.data.as_mut().and_then(|d| lookup_mut(d, rest)) {
                Some(v) => {
                    *v = f(v);
                    true
                }
                None => false,
            },
            "context" => {
                if self.context.get_path(rest).is_none() {
                    return false;
                }
                let map = self.context.make_mut();
                let mut segs = rest.split('.');
                let Some(first) = segs.next() else {
                    return false;
                };
                let Some(mut v) = map.get_mut(first) else {
                    return false;
                };
                for s in segs {
                    let Some(next) = v.get_mut(s) else {
                        return false;
                    };
                    v = next;
                }
                *v = f(v);
                true
            }
            "subject" | "actor" | "tenant" if rest.is_empty() => {
                let slot = match root {
                    "subject" => &mut self.subject,
                    "actor" => &mut self.actor,
                    _ => &mut self.tenant,
                };
                match slot.take() {
                    Some(old) => {
                        let new = f(&Value::String(old.to_string()));
                        *slot = match new {
                            Value::String(s) => Some(s.into()),
                            Value::Null => None,
                            other => Some(other.to_string().into()),
                        };
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }

    /// Removes the value at a `data.` or `context.` path, or an optional attribute.
    pub fn remove(&mut self, path: &str) -> bool {
        let (root, rest) = split_root(path);
        match root {
            "data" => {
                let Some((parent, last)) = rest.rsplit_once('.').or(Some(("", rest))) else {
                    return false;
                };
                if last.is_empty() {
                    return self.data.take().is_some();
                }
                let Some(d) = self.data.as_mut() else {
                    return false;
                };
                let target = if parent.is_empty() {
                    Some(d)
                } else {
                    lookup_mut(d, parent)
                };
                target
                    .and_then(|t| t.as_object_mut())
                    .map(|o| o.remove(last).is_some())
                    .unwrap_or(false)
            }
            "context" => {
                if self.context.get_path(rest).is_none() {
                    return false;
                }
                let map = self.context.make_mut();
                let (parent, last) = rest.rsplit_once('.').unwrap_or(("", rest));
                if parent.is_empty() {
                    return map.remove(last).is_some();
                }
                let mut segs = parent.split('.');
                let Some(mut v) = segs.next().and_then(|s| map.get_mut(s)) else {
                    return false;
                };
                for s in segs {
                    let Some(next) = v.get_mut(s) else {
                        return false;
                    };
                    v = next;
                }
                v.as_object_mut()
                    .map(|o| o.remove(last).is_some())
                    .unwrap_or(false)
            }
            "subject" if rest.is_empty() => self.subject.take().is_some(),
            "actor" if rest.is_empty() => self.actor.take().is_some(),
            "tenant" if rest.is_empty() => self.tenant.take().is_some(),
            _ => false,
        }
    }
}

fn split_root(path: &str) -> (&str, &str) {
    path.split_once('.').unwrap_or((path, ""))
}

fn lookup<'a>(mut v: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(v);
    }
    for s in path.split('.') {
        v = match v {
            Value::Object(o) => o.get(s)?,
            Value::Array(a) => a.get(s.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

fn lookup_mut<'a>(mut v: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    if path.is_empty() {
        return Some(v);
    }
    for s in path.split('.') {
        v = match v {
            Value::Object(o) => o.get_mut(s)?,
            Value::Array(a) => a.get_mut(s.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("specversion", "1.0")?;
        m.serialize_entry("id", &*self.id)?;
        m.serialize_entry("source", &*self.source)?;
        m.serialize_entry("type", &*self.ty)?;
        m.serialize_entry("time", &self.time)?;
        if let Some(v) = self.severity {
            m.serialize_entry("severity", v.as_str())?;
        }
        for (k, v) in [
            ("subject", &self.subject),
            ("actor", &self.actor),
            ("tenant", &self.tenant),
            ("correlationid", &self.correlationid),
            ("causationid", &self.causationid),
        ] {
            if let Some(v) = v {
                m.serialize_entry(k, &**v)?;
            }
        }
        if let Some(v) = self.visibility {
            m.serialize_entry("visibility", v.as_str())?;
        }
        if !self.readers.is_empty() {
            m.serialize_entry("readers", &self.readers)?;
        }
        if !self.context.is_empty() {
            m.serialize_entry("context", &self.context)?;
        }
        if let Some(d) = &self.data {
            m.serialize_entry("data", d)?;
        }
        m.end()
    }
}

/// An event's context: up to three layers merged when read or written, so that emitting
/// shares the tracker's and the task scope's objects instead of copying them.
///
/// On a key present in several layers, the event's own layer wins over the task scope's,
/// which wins over the tracker's (the request is more specific than the service).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    tracker: Option<Arc<Object>>,
    scope: Option<Arc<Object>>,
    own: Option<Arc<Object>>,
}

impl Context {
    pub(crate) fn layered(tracker: Option<Arc<Object>>, scope: Option<Arc<Object>>) -> Context {
        Context {
            tracker,
            scope,
            own: None,
        }
    }

    fn layers(&self) -> impl Iterator<Item = &Object> {
        // Highest precedence first.
        [&self.own, &self.scope, &self.tracker]
            .into_iter()
            .flatten()
            .map(|a| &**a)
    }

    pub fn is_empty(&self) -> bool {
        self.layers().all(|l| l.is_empty())
    }

    /// The value of a top-level context key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.layers().find_map(|l| l.get(key))
    }

    /// The value at a dotted path inside the context.
    pub fn get_path(&self, path: &str) -> Option<&Value> {
        let (first, rest) = path.split_once('.').unwrap_or((path, ""));
        self.get(first).and_then(|v| lookup(v, rest))
    }

    /// The merged context as one object.
    pub fn to_map(&self) -> Object {
        let mut out = Object::new();
        for l in [&self.tracker, &self.scope, &self.own]
            .into_iter()
            .flatten()
        {
            for (k, v) in l.iter() {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }

    /// Merges the layers into the event's own object and gives it for changes.
    pub fn make_mut(&mut self) -> &mut Object {
        if self.tracker.is_some() || self.scope.is_some() {
            let merged = self.to_map();
            self.tracker = None;
            self.scope = None;
            self.own = Some(Arc::new(merged));
        }
        Arc::make_mut(self.own.get_or_insert_with(Default::default))
    }

    /// Sets one key of the event's own layer.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        Arc::make_mut(self.own.get_or_insert_with(Default::default)).insert(key.into(), value);
    }
}

impl Serialize for Context {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let layers: Vec<&Object> = self.layers().collect();
        let mut m = s.serialize_map(None)?;
        for (i, l) in layers.iter().enumerate() {
            for (k, v) in l.iter() {
                // A key shadowed by a layer of higher precedence is written by that layer.
                if layers[..i].iter().any(|h| h.contains_key(k)) {
                    continue;
                }
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// Microseconds since the Unix epoch, written as RFC 3339 UTC with microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(d.as_micros() as i64),
            Err(e) => Timestamp(-(e.duration().as_micros() as i64)),
        }
    }

    pub fn from_system_time(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(d.as_micros() as i64),
            Err(e) => Timestamp(-(e.duration().as_micros() as i64)),
        }
    }

    /// `2026-05-01T12:34:56.123456Z`
    pub fn to_rfc3339(self) -> String {
        let mut buf = [0u8; 27];
        self.format(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn format(self, buf: &mut [u8; 27]) {
        let us = self.0.rem_euclid(1_000_000);
        let secs = self.0.div_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, mo, d) = civil_from_days(days);
        let y = y.clamp(0, 9999) as u32;
        let put = |buf: &mut [u8; 27], at: usize, v: u32, n: usize| {
            let mut v = v;
            for i in (0..n).rev() {
                buf[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(buf, 0, y, 4);
        buf[4] = b'-';
        put(buf, 5, mo, 2);
        buf[7] = b'-';
        put(buf, 8, d, 2);
        buf[10] = b'T';
        put(buf, 11, (sod / 3600) as u32, 2);
        buf[13] = b':';
        put(buf, 14, (sod / 60 % 60) as u32, 2);
        buf[16] = b':';
        put(buf, 17, (sod % 60) as u32, 2);
        buf[19] = b'.';
        put(buf, 20, us as u32, 6);
        buf[26] = b'Z';
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 27];
        self.format(&mut buf);
        // The buffer holds ASCII digits and separators only.
        s.serialize_str(std::str::from_utf8(&buf).unwrap_or("1970-01-01T00:00:00.000000Z"))
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

thread_local! {
    /// A per-thread generator for the random bits of ids: seeded once from the OS through
    /// `RandomState`, so that making an id costs no system call.
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Timestamp::now().0 as u128);
    h.finish() | 1
}

/// wyrand: fast, and good enough for the 74 random bits of a UUIDv7.
fn next_random() -> u64 {
    RNG.with(|c| {
        let s = c.get().wrapping_add(0xa076_1d64_78bd_642f);
        c.set(s);
        let t = (s as u128).wrapping_mul((s ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// A random number from the thread's generator (jitter, sampling of id-less events).
pub(crate) fn random_u64() -> u64 {
    next_random()
}

/// A new UUIDv7 (time-ordered) as text.
pub fn new_id() -> Arc<str> {
    let ms = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as u64,
        Err(_) => 0,
    };
    id_at(ms)
}

/// A UUIDv7 with this Unix time in milliseconds.
fn id_at(ms: u64) -> Arc<str> {
    let a = next_random().to_le_bytes();
    let b = next_random().to_le_bytes();
    let mut rand = [0u8; 10];
    rand[..8].copy_from_slice(&a);
    rand[8..].copy_from_slice(&b[..2]);
    let id = uuid::Builder::from_unix_timestamp_millis(ms, &rand).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    Arc::from(&*id.hyphenated().encode_lower(&mut buf))
}

/// FNV-1a, 64 bits: a hash that is the same in every process and version (sampling).
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            Timestamp(1_777_638_896_123_456).to_rfc3339(),
            "2026-05-01T12:34:56.123456Z"
        );
        assert_eq!(
            Timestamp(951_782_400_000_001).to_rfc3339(),
            "2000-02-29T00:00:00.000001Z"
        );
    }

    #[test]
    fn ids_are_distinct_uuid_v7() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 7);
    }

    #[test]
    fn context_layers_merge_with_precedence() {
        let t = Arc::new(json!({"a": 1, "b": 1}).as_object().unwrap().clone());
        let s = Arc::new(json!({"b": 2, "c": 2}).as_object().unwrap().clone());
        let mut c = Context::layered(Some(t), Some(s));
        c.insert("c", json!(3));
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"a": 1, "b": 2, "c": 3})
        );
        assert_eq!(Value::Object(c.to_map()), json!({"a": 1, "b": 2, "c": 3}));
        assert_eq!(c.get("b"), Some(&json!(2)));
    }

    #[test]
    fn paths_read_update_and_remove() {
        let mut e = Event::new("a.b", "/t".into());
        e.data = Some(json!({"user": {"email": "x@y", "n": [1, 2]}}));
        e.context.insert("ip", json!("1.2.3.4"));
        e.actor = Some("u1".into());
        assert_eq!(e.get("data.user.n.1").as_deref(), Some(&json!(2)));
        assert!(e.update("data.user.email", |_| json!("[redacted]")));
        assert!(!e.update("data.user.missing", |_| json!(1)));
        assert!(e.remove("context.ip"));
        assert!(e.update("actor", |_| json!("h")));
        let v: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["data"]["user"]["email"], "[redacted]");
        assert_eq!(v["actor"], "h");
        assert!(v.get("context").is_none());
    }
}
