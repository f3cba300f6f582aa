//! Validation and canonical form of incoming events.
//!
//! An event arrives as untrusted JSON (or as `ce-*` headers plus a body). This module checks
//! every attribute against CloudEvents 1.0 and Herald's rules and produces a
//! [`PreparedEvent`]: the indexed attributes as plain values plus the canonical JSON text that
//! is stored and served as is. Producing the canonical text here, once, is what lets reads
//! return stored bytes without re-serializing them.
//!
//! Invariants of the canonical text: one line, no insignificant whitespace, string attributes
//! copied as the producer's JSON tokens, server-assigned members (`seq`, `recordedtime`, a
//! default `time`) never part of the content hash, so that a retried event without a `time`
//! is still recognised as a duplicate.

use crate::json::{append_minified, TooDeep};
use crate::limits::Limits;
use crate::timespec::{format_rfc3339, parse_rfc3339, Micros};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use herald_wire::{Severity, Visibility};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// Why an event was not accepted, and where (a JSON pointer into the request body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub pointer: String,
}

/// An event that passed validation, ready to be stored.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub subject: Option<String>,
    pub actor: Option<String>,
    pub tenant: Option<String>,
    pub causationid: Option<String>,
    pub correlationid: Option<String>,
    /// The schema the producer says `data` follows (its type's schema version).
    pub dataschema: Option<String>,
    pub severity: Severity,
    pub visibility: Visibility,
    /// Principals that may read a `private` event.
    pub readers: Vec<String>,
    /// Event time (producer clock, or receive time when absent).
    pub time_us: Micros,
    pub recorded_us: Micros,
    /// Hash of (`source`, `id`): the duplicate-detection key.
    pub dedup_key: i64,
    /// Hash of the producer-supplied content except `time`: equal for a true duplicate.
    pub content_hash: i64,
    /// Whether the producer gave a `time`. A duplicate must have the same content hash and,
    /// when it gives a time, the stored time; so a retry without `time` and a re-import of an
    /// export (which carries the server-defaulted time) are both recognised as duplicates.
    pub time_given: bool,
    /// The canonical JSON without its opening `{`; the store prepends `{"seq":N,`.
    pub body_tail: String,
    /// Where `data` (minified JSON) sits in `body_tail`, for full-text indexing.
    pub data_range: Option<Range<usize>>,
    /// Where `context` sits in `body_tail`.
    pub context_range: Option<Range<usize>>,
    /// `body_tail` is ASCII without a backslash: every string in it is its value byte for
    /// byte, so a search of the JSON text stands for a search of the values (the matcher's
    /// cheap checks rely on it).
    pub plain: bool,
    /// The tokens of the search text in a Bloom filter: lets the matcher rule out a word or a
    /// string value the event does not hold without reading its text.
    pub sig: crate::matcher::TokenSig,
}

impl PreparedEvent {
    /// The complete stored JSON of the event once it has its `seq`.
    pub fn body_with_seq(&self, seq: u64) -> String {
        let mut s = String::with_capacity(self.body_tail.len() + 32);
        s.push_str("{\"seq\":");
        s.push_str(&seq.to_string());
        s.push(',');
        s.push_str(&self.body_tail);
        s
    }

    /// The parts the search text is made of, in order: the type, source, subject, actor and
    /// tenant, then the JSON of `data` and `context` (the names and the payload, not the
    /// ids). A token never spans two parts.
    pub fn search_parts(&self) -> impl Iterator<Item = &str> {
        let range = |r: &Option<std::ops::Range<usize>>| {
            r.as_ref().and_then(|r| self.body_tail.get(r.clone()))
        };
        [
            Some(self.ty.as_str()),
            Some(self.source.as_str()),
            self.subject.as_deref(),
            self.actor.as_deref(),
            self.tenant.as_deref(),
            range(&self.data_range),
            range(&self.context_range),
        ]
        .into_iter()
        .flatten()
    }

    /// The text indexed for free-text search: [`PreparedEvent::search_parts`], each followed
    /// by a space.
    pub fn search_text(&self) -> String {
        let mut t = String::with_capacity(256);
        for part in self.search_parts() {
            t.push_str(part);
            t.push(' ');
        }
        t
    }

    /// The tokens of [`PreparedEvent::search_text`], as
    /// [`crate::matcher::token_text`] joins them, cut straight from the event's parts
    /// (without building the search text first): what the full-text index is given.
    pub fn token_text(&self) -> String {
        let mut t = String::with_capacity(
            64 + [&self.data_range, &self.context_range]
                .into_iter()
                .flatten()
                .map(|r| r.len())
                .sum::<usize>(),
        );
        for part in self.search_parts() {
            crate::matcher::push_tokens(&mut t, part);
        }
        t
    }

    /// Appends what the full-text index is given for this event (after a space when `out`
    /// is not empty): a text that SQLite's FTS5 `ascii` tokenizer cuts into exactly
    /// [`PreparedEvent::token_text`]'s tokens. That tokenizer, like the core, separates
    /// tokens at every ASCII byte that is not a letter or digit and lowercases ASCII, so an
    /// ASCII part (most are) is given as it is, without being cut twice; a part with other
    /// characters is cut by the core ([`crate::matcher::push_tokens`]), whose tokens the
    /// tokenizer keeps whole because it treats every non-ASCII byte as part of a token.
    pub fn push_fts_text(&self, out: &mut String) {
        for part in self.search_parts() {
            if part.is_ascii() {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(part);
            } else {
                crate::matcher::push_tokens(out, part);
            }
        }
    }
}

/// Whether JSON is ASCII without escapes: every string in it is then its own text byte for
/// byte (see [`PreparedEvent::plain`]).
pub fn is_plain_json(json: &str) -> bool {
    json.is_ascii() && memchr::memchr(b'\\', json.as_bytes()).is_none()
}

/// The search text of a stored event (its canonical JSON), equal to
/// [`PreparedEvent::search_text`] of the event it was made from. Used where only the stored
/// body is at hand (text terms on events the full-text index does not hold yet).
pub fn search_text_of(body: &str) -> Option<String> {
    let members: std::collections::HashMap<&str, &RawValue> = serde_json::from_str(body).ok()?;
    let mut t = String::with_capacity(body.len() / 2);
    for name in ["type", "source", "subject", "actor", "tenant"] {
        if let Some(raw) = members.get(name) {
            let BorrowedStr(s) = serde_json::from_str(raw.get()).ok()?;
            t.push_str(&s);
            t.push(' ');
        }
    }
    for name in ["data", "context"] {
        if let Some(raw) = members.get(name) {
            t.push_str(raw.get());
            t.push(' ');
        }
    }
    Some(t)
}

/// Hash of (`source`, `id`) used to find duplicates. Stable across versions (xxh3).
pub fn dedup_key(source: &str, id: &str) -> i64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(source.as_bytes());
    h.update(&[0]);
    h.update(id.as_bytes());
    h.digest() as i64
}

/// The default visibility of a type, if its settings give one.
pub type TypeVisibility<'a> = dyn Fn(&str) -> Option<Visibility> + 'a;

/// What the caller knows about the request an event came in.
pub struct PrepareCtx<'a> {
    pub limits: &'a Limits,
    /// Receive time.
    pub now_us: Micros,
    /// Receive time as RFC 3339 (formatted once per request).
    pub now_text: &'a str,
    /// CloudEvents modes require `specversion`; plain JSON lets it default to 1.0.
    pub require_specversion: bool,
    /// Visibility of events that do not say (the ingesting key's default); `None`: internal.
    pub default_visibility: Option<Visibility>,
    /// The default visibility of an event type (from the type registry). When both this
    /// and `default_visibility` apply, the stricter wins.
    pub type_visibility: Option<&'a TypeVisibility<'a>>,
    /// Generates an id (UUIDv7) for events without one.
    pub new_id: &'a mut dyn FnMut() -> String,
}

/// A JSON string that borrows from the input when it has no escapes. (serde's own
/// `Deserialize` for `Cow<str>` always allocates, which cost two allocations per member of
/// every event: its name and, for strings, its value.)
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BorrowedStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The members of one JSON object, in order, values unparsed.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(16);
                while let Some(BorrowedStr(k)) = map.next_key()? {
                    let val: &'de RawValue = map.next_value()?;
                    v.push((k, val));
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V)
    }
}

// A borrowed string that keeps its original JSON token for output.
struct Str<'a> {
    value: Cow<'a, str>,
    token: &'a str,
}

fn reject(pointer: &str, member: &str, reason: impl Into<String>) -> Rejection {
    let mut p = String::with_capacity(pointer.len() + member.len() + 1);
    p.push_str(pointer);
    if !member.is_empty() {
        p.push('/');
        p.push_str(member);
    }
    Rejection {
        reason: reason.into(),
        pointer: p,
    }
}

fn is_type_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|seg| {
            let b = seg.as_bytes();
            !b.is_empty()
                && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
                && b.iter().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-'
                })
        })
}

/// Checks a CloudEvents type name: dotted, lowercase segments of `a-z 0-9 _ -`.
pub fn validate_type(s: &str) -> Result<(), String> {
    if s.len() > 256 {
        return Err(format!("type is {} bytes, more than 256", s.len()));
    }
    if !is_type_name(s) {
        return Err(format!(
            "type `{s}` is not a dotted lowercase name such as `import.completed` (segments of a-z, 0-9, `_`, `-`, each starting with a letter or digit)"
        ));
    }
    Ok(())
}

/// Checks an extension attribute name (CloudEvents: lowercase letters and digits).
pub fn is_extension_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Checks a principal (`user:42`, `group:moderators`, `tenant:acme`).
pub fn validate_principal(p: &str, max: usize) -> Result<(), String> {
    let Some((kind, name)) = p.split_once(':') else {
        return Err(format!(
            "principal `{p}` must look like user:ID, group:NAME or tenant:NAME"
        ));
    };
    if !matches!(kind, "user" | "group" | "tenant") {
        return Err(format!(
            "principal kind `{kind}` must be user, group or tenant"
        ));
    }
    if name.is_empty() || p.len() > max || p.chars().any(|c| c.is_control() || c == ',') {
        return Err(format!(
            "principal `{p}` must have a non-empty name without commas or control characters, at most {max} bytes"
        ));
    }
    Ok(())
}

/// The attributes this module knows; anything else is an extension.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Known {
    SpecVersion,
    Id,
    Source,
    Type,
    Time,
    Subject,
    DataContentType,
    DataSchema,
    Severity,
    Actor,
    Tenant,
    CausationId,
    CorrelationId,
    Visibility,
    Readers,
    Context,
    Data,
    DataBase64,
    Ignored,
}

fn known(name: &str) -> Option<Known> {
    Some(match name {
        "specversion" => Known::SpecVersion,
        "id" => Known::Id,
        "source" => Known::Source,
        "type" => Known::Type,
        "time" => Known::Time,
        "subject" => Known::Subject,
        "datacontenttype" => Known::DataContentType,
        "dataschema" => Known::DataSchema,
        "severity" => Known::Severity,
        "actor" => Known::Actor,
        "tenant" => Known::Tenant,
        "causationid" => Known::CausationId,
        "correlationid" => Known::CorrelationId,
        "visibility" => Known::Visibility,
        "readers" => Known::Readers,
        "context" => Known::Context,
        "data" => Known::Data,
        "data_base64" => Known::DataBase64,
        // Server-assigned: ignored on input so that an export can be imported again.
        "seq" | "recordedtime" => Known::Ignored,
        _ => return None,
    })
}

/// Prepares an event Herald produced itself (a stored body, a quarantined event, an event a
/// processor rewrote): no size or depth limit applies and no id is generated. `recorded_us`
/// (and `recorded_text`, its RFC 3339 form, written as `recordedtime`) is when it was first
/// received.
pub fn prepare_trusted(
    text: &str,
    recorded_us: Micros,
    recorded_text: &str,
) -> Result<PreparedEvent, Rejection> {
    trusted(text, recorded_us, recorded_text, true)
}

/// [`prepare_trusted`] for the store's own re-reads of bodies it holds (the start-up replay
/// into its index, full-text catch-up), which need the attributes and the search text but
/// never match the event: its signature is not computed (about a quarter of the work) and
/// is [`crate::matcher::TokenSig::ALL`], which rules nothing out, so a matcher given such
/// an event anyway falls through to its full checks and stays exact. Its canonical text is
/// not for storing: `recordedtime` is left empty in it.
pub fn prepare_stored(text: &str, recorded_us: Micros) -> Result<PreparedEvent, Rejection> {
    trusted(text, recorded_us, "", false)
}

fn trusted(
    text: &str,
    recorded_us: Micros,
    recorded_text: &str,
    sign: bool,
) -> Result<PreparedEvent, Rejection> {
    let limits = Limits {
        max_event_bytes: usize::MAX,
        max_depth: usize::MAX,
        ..Limits::default()
    };
    let mut no_id = String::new;
    let mut ctx = PrepareCtx {
        limits: &limits,
        now_us: recorded_us,
        now_text: recorded_text,
        require_specversion: false,
        default_visibility: None,
        type_visibility: None,
        new_id: &mut no_id,
    };
    prepare_json_with(text, "", &mut ctx, sign)
}

/// Validates one event given as JSON text. `pointer` is the JSON pointer of the event in
/// the request (`""` for a single event, `/3` for the fourth of an array).
pub fn prepare_json(
    raw: &str,
    pointer: &str,
    ctx: &mut PrepareCtx,
) -> Result<PreparedEvent, Rejection> {
    prepare_json_with(raw, pointer, ctx, true)
}

/// [`prepare_json`], with or without the token signature.
fn prepare_json_with(
    raw: &str,
    pointer: &str,
    ctx: &mut PrepareCtx,
    sign: bool,
) -> Result<PreparedEvent, Rejection> {
    if raw.len() > ctx.limits.max_event_bytes {
        return Err(reject(
            pointer,
            "",
            format!(
                "event is {} bytes, more than the limit of {} bytes",
                raw.len(),
                ctx.limits.max_event_bytes
            ),
        ));
    }
    let members: Members = match serde_json::from_str(raw) {
        Ok(m) => m,
        Err(e) => {
            let what = if raw.trim_start().starts_with('{') {
                format!("event is not valid JSON: {e}")
            } else {
                "event must be a JSON object".to_owned()
            };
            return Err(reject(pointer, "", what));
        }
    };
    let mut b = Builder {
        unsigned: !sign,
        ..Builder::default()
    };
    for (name, value) in members.0 {
        b.member(name, value, pointer, ctx)?;
    }
    b.finish(pointer, ctx)
}

/// An attribute given in binary mode (a `ce-*` header, already percent-decoded, name without
/// the prefix and lowercased).
pub struct HeaderAttr<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// Validates an event given in CloudEvents binary mode: attributes from `ce-*` headers, the
/// body as `data`. A JSON body (by `content_type`) becomes JSON `data`; UTF-8 text becomes a
/// string; anything else becomes `data_base64`.
pub fn prepare_binary(
    attrs: &[HeaderAttr],
    content_type: Option<&str>,
    body: &[u8],
    ctx: &mut PrepareCtx,
) -> Result<PreparedEvent, Rejection> {
    // Re-encode each header as a JSON string token so that one code path validates both modes.
    let mut tokens: Vec<(String, Box<RawValue>)> = Vec::with_capacity(attrs.len() + 2);
    for a in attrs {
        let tok = serde_json::to_string(a.value).unwrap_or_default();
        let raw = RawValue::from_string(tok).map_err(|e| reject("", a.name, e.to_string()))?;
        tokens.push((a.name.to_owned(), raw));
    }
    if body.len() > ctx.limits.max_event_bytes {
        return Err(reject(
            "",
            "",
            format!(
                "event is {} bytes, more than the limit of {} bytes",
                body.len(),
                ctx.limits.max_event_bytes
            ),
        ));
    }
    let is_json = content_type
        .map(|ct| {
            let ct = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            ct == "application/json" || ct.ends_with("+json") || ct == "text/json"
        })
        .unwrap_or(false);
    if let Some(ct) = content_type {
        let tok = serde_json::to_string(ct).unwrap_or_default();
        if let Ok(raw) = RawValue::from_string(tok) {
            tokens.push(("datacontenttype".to_owned(), raw));
        }
    }
    if !body.is_empty() {
        if is_json {
            let text = std::str::from_utf8(body)
                .map_err(|_| reject("", "data", "body is declared JSON but is not UTF-8"))?;
            let raw: Box<RawValue> = serde_json::from_str(text).map_err(|e| {
                reject(
                    "",
                    "data",
                    format!("body is declared JSON but is not valid: {e}"),
                )
            })?;
            tokens.push(("data".to_owned(), raw));
        } else if let Ok(text) = std::str::from_utf8(body) {
            let raw = RawValue::from_string(serde_json::to_string(text).unwrap_or_default())
                .map_err(|e| reject("", "data", e.to_string()))?;
            tokens.push(("data".to_owned(), raw));
        } else {
            let b64 = STANDARD.encode(body);
            let raw = RawValue::from_string(format!("\"{b64}\""))
                .map_err(|e| reject("", "data_base64", e.to_string()))?;
            tokens.push(("data_base64".to_owned(), raw));
        }
    }
    let mut b = Builder::default();
    for (name, value) in &tokens {
        b.member(Cow::Borrowed(name.as_str()), value, "", ctx)?;
    }
    b.finish("", ctx)
}

#[derive(Default)]
struct Builder<'a> {
    /// Leave the token signature out ([`prepare_stored`]).
    unsigned: bool,
    seen: u32,
    specversion: Option<Str<'a>>,
    id: Option<Str<'a>>,
    source: Option<Str<'a>>,
    ty: Option<Str<'a>>,
    time: Option<(Str<'a>, Micros)>,
    subject: Option<Str<'a>>,
    datacontenttype: Option<Str<'a>>,
    dataschema: Option<Str<'a>>,
    severity: Option<Severity>,
    actor: Option<Str<'a>>,
    tenant: Option<Str<'a>>,
    causationid: Option<Str<'a>>,
    correlationid: Option<Str<'a>>,
    visibility: Option<Visibility>,
    readers: Vec<String>,
    context: Option<ContextValue<'a>>,
    data: Option<&'a RawValue>,
    data_base64: Option<&'a RawValue>,
    extensions: Vec<(Cow<'a, str>, &'a RawValue)>,
}

enum ContextValue<'a> {
    Raw(&'a RawValue),
    Decoded(Box<RawValue>),
}

fn parse_str<'a>(raw: &'a RawValue, pointer: &str, member: &str) -> Result<Str<'a>, Rejection> {
    let token = raw.get();
    if !token.starts_with('"') {
        return Err(reject(
            pointer,
            member,
            format!("{member} must be a string"),
        ));
    }
    let BorrowedStr(value) = serde_json::from_str(token)
        .map_err(|e| reject(pointer, member, format!("{member}: {e}")))?;
    Ok(Str { value, token })
}

fn check_len(
    s: &Str,
    max: usize,
    pointer: &str,
    member: &str,
    allow_empty: bool,
) -> Result<(), Rejection> {
    if s.value.is_empty() && !allow_empty {
        return Err(reject(
            pointer,
            member,
            format!("{member} must not be empty"),
        ));
    }
    if s.value.len() > max {
        return Err(reject(
            pointer,
            member,
            format!(
                "{member} is {} bytes, more than the limit of {max}",
                s.value.len()
            ),
        ));
    }
    if s.value.chars().any(|c| c.is_control()) {
        return Err(reject(
            pointer,
            member,
            format!("{member} must not contain control characters"),
        ));
    }
    Ok(())
}

impl<'a> Builder<'a> {
    fn member(
        &mut self,
        name: Cow<'a, str>,
        value: &'a RawValue,
        pointer: &str,
        ctx: &mut PrepareCtx,
    ) -> Result<(), Rejection> {
        let limits = ctx.limits;
        let k = known(&name);
        // Duplicate members are ambiguous (different parsers keep different ones): refuse.
        if let Some(k) = k {
            let bit = 1u32 << (k as u32);
            if self.seen & bit != 0 && k != Known::Ignored {
                return Err(reject(
                    pointer,
                    &name,
                    format!("attribute `{name}` appears twice"),
                ));
            }
            self.seen |= bit;
        }
        // CloudEvents: a null attribute is the same as an absent one.
        if value.get() == "null" {
            return Ok(());
        }
        let Some(k) = k else {
            if !is_extension_name(&name) {
                return Err(reject(
                    pointer,
                    &escape_pointer(&name),
                    format!("attribute name `{name}` is not valid: CloudEvents attribute names are lowercase letters and digits (at most 64)"),
                ));
            }
            if self.extensions.iter().any(|(n, _)| *n == name) {
                return Err(reject(
                    pointer,
                    &name,
                    format!("attribute `{name}` appears twice"),
                ));
            }
            if self.extensions.len() >= limits.max_extensions {
                return Err(reject(
                    pointer,
                    &name,
                    format!("more than {} extension attributes", limits.max_extensions),
                ));
            }
            let first = value.get().as_bytes().first().copied().unwrap_or(b' ');
            if !(first == b'"'
                || first == b'-'
                || first.is_ascii_digit()
                || first == b't'
                || first == b'f')
            {
                return Err(reject(
                    pointer,
                    &name,
                    format!("extension `{name}` must be a string, a number or a boolean"),
                ));
            }
            if value.get().len() > limits.max_string_len {
                return Err(reject(
                    pointer,
                    &name,
                    format!(
                        "extension `{name}` is longer than {} bytes",
                        limits.max_string_len
                    ),
                ));
            }
            self.extensions.push((name, value));
            return Ok(());
        };
        let m = name.as_ref();
        match k {
            Known::Ignored => {}
            Known::SpecVersion => {
                let s = parse_str(value, pointer, m)?;
                if s.value != "1.0" {
                    return Err(reject(
                        pointer,
                        m,
                        format!("specversion `{}` is not supported; use 1.0", s.value),
                    ));
                }
                self.specversion = Some(s);
            }
            Known::Id => {
                let s = parse_str(value, pointer, m)?;
                check_len(&s, limits.max_name_len, pointer, m, false)?;
                self.id = Some(s);
            }
            Known::Source => {
                let s = parse_str(value, pointer, m)?;
                check_len(&s, limits.max_string_len, pointer, m, false)?;
                if s.value.chars().any(char::is_whitespace) {
                    return Err(reject(
                        pointer,
                        m,
                        "source must be a URI-reference without spaces",
                    ));
                }
                self.source = Some(s);
            }
            Known::Type => {
                let s = parse_str(value, pointer, m)?;
                validate_type(&s.value).map_err(|e| reject(pointer, m, e))?;
                self.ty = Some(s);
            }
            Known::Time => {
                let s = parse_str(value, pointer, m)?;
                let us = parse_rfc3339(&s.value).ok_or_else(|| {
                    reject(
                        pointer,
                        m,
                        format!(
                            "time `{}` is not an RFC 3339 timestamp such as 2026-11-01T12:00:00Z",
                            s.value
                        ),
                    )
                })?;
                self.time = Some((s, us));
            }
            Known::Subject => {
                let s = parse_str(value, pointer, m)?;
                check_len(&s, limits.max_string_len, pointer, m, false)?;
                self.subject = Some(s);
            }
            Known::DataContentType => {
                let s = parse_str(value, pointer, m)?;
                check_len(&s, limits.max_name_len, pointer, m, false)?;
                self.datacontenttype = Some(s);
            }
            Known::DataSchema => {
                let s = parse_str(value, pointer, m)?;
                check_len(&s, limits.max_string_len, pointer, m, false)?;
                if s.value.chars().any(char::is_whitespace) {
                    return Err(reject(
                        pointer,
                        m,
                        "dataschema must be a URI without spaces",
                    ));
                }
                self.dataschema = Some(s);
            }
            Known::Severity => {
                let s = parse_str(value, pointer, m)?;
                self.severity = Some(s.value.parse().map_err(|_| {
                    reject(
                        pointer,
                        m,
                        format!(
                            "severity `{}` is not one of debug, info, notice, warning, error, critical",
                            s.value
                        ),
                    )
                })?);
            }
            Known::Actor | Known::Tenant | Known::CausationId | Known::CorrelationId => {
                let s = parse_str(value, pointer, m)?;
                check_len(&s, limits.max_name_len, pointer, m, false)?;
                let slot = match k {
                    Known::Actor => &mut self.actor,
                    Known::Tenant => &mut self.tenant,
                    Known::CausationId => &mut self.causationid,
                    _ => &mut self.correlationid,
                };
                *slot = Some(s);
            }
            Known::Visibility => {
                let s = parse_str(value, pointer, m)?;
                self.visibility = Some(s.value.parse().map_err(|_| {
                    reject(
                        pointer,
                        m,
                        format!(
                            "visibility `{}` is not one of public, internal, private",
                            s.value
                        ),
                    )
                })?);
            }
            Known::Readers => {
                // An array of principals, or their documented string form "a,b".
                let list: Vec<Cow<str>> = if value.get().starts_with('"') {
                    let s = parse_str(value, pointer, m)?;
                    s.value
                        .split(',')
                        .map(|p| Cow::<str>::Owned(p.trim().to_owned()))
                        .filter(|p| !p.is_empty())
                        .collect()
                } else {
                    serde_json::from_str(value.get()).map_err(|_| {
                        reject(
                            pointer,
                            m,
                            "readers must be an array of principals (or a comma-separated string)",
                        )
                    })?
                };
                if list.len() > limits.max_readers {
                    return Err(reject(
                        pointer,
                        m,
                        format!("more than {} readers", limits.max_readers),
                    ));
                }
                for (i, p) in list.iter().enumerate() {
                    validate_principal(p, limits.max_name_len)
                        .map_err(|e| reject(pointer, &format!("readers/{i}"), e))?;
                }
                self.readers = list.into_iter().map(Cow::into_owned).collect();
            }
            Known::Context => {
                let t = value.get();
                if t.starts_with('{') {
                    self.context = Some(ContextValue::Raw(value));
                } else if t.starts_with('"') {
                    // The documented string form for strict CloudEvents consumers.
                    let s = parse_str(value, pointer, m)?;
                    let decoded: Box<RawValue> = serde_json::from_str::<Box<RawValue>>(&s.value)
                        .ok()
                        .filter(|r| r.get().trim_start().starts_with('{'))
                        .ok_or_else(|| {
                            reject(pointer, m, "context string must hold a JSON object")
                        })?;
                    self.context = Some(ContextValue::Decoded(decoded));
                } else {
                    return Err(reject(pointer, m, "context must be a JSON object"));
                }
            }
            Known::Data => self.data = Some(value),
            Known::DataBase64 => {
                let s = parse_str(value, pointer, m)?;
                STANDARD.decode(s.value.as_bytes()).map_err(|e| {
                    reject(pointer, m, format!("data_base64 is not valid base64: {e}"))
                })?;
                self.data_base64 = Some(value);
            }
        }
        Ok(())
    }

    fn finish(self, pointer: &str, ctx: &mut PrepareCtx) -> Result<PreparedEvent, Rejection> {
        let limits = ctx.limits;
        if self.specversion.is_none() && ctx.require_specversion {
            return Err(reject(
                pointer,
                "specversion",
                "specversion is required in CloudEvents mode",
            ));
        }
        let source = self
            .source
            .ok_or_else(|| reject(pointer, "source", "source is required"))?;
        let ty = self
            .ty
            .ok_or_else(|| reject(pointer, "type", "type is required"))?;
        if self.data.is_some() && self.data_base64.is_some() {
            return Err(reject(
                pointer,
                "data_base64",
                "an event has either data or data_base64, not both",
            ));
        }

        let mut out = String::with_capacity(512);
        out.push_str("\"specversion\":\"1.0\"");
        let generated_id;
        let id_value: String = match &self.id {
            Some(s) => {
                push_member(&mut out, "id", s.token);
                s.value.to_string()
            }
            None => {
                generated_id = (ctx.new_id)();
                out.push_str(",\"id\":\"");
                out.push_str(&generated_id);
                out.push('"');
                generated_id.clone()
            }
        };
        push_member(&mut out, "source", source.token);
        push_member(&mut out, "type", ty.token);
        for (name, v) in [
            ("subject", &self.subject),
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
        ] {
            if let Some(s) = v {
                push_member(&mut out, name, s.token);
            }
        }
        let severity = self.severity.unwrap_or_default();
        out.push_str(",\"severity\":\"");
        out.push_str(severity.as_str());
        out.push('"');
        for (name, v) in [
            ("actor", &self.actor),
            ("tenant", &self.tenant),
            ("causationid", &self.causationid),
            ("correlationid", &self.correlationid),
        ] {
            if let Some(s) = v {
                push_member(&mut out, name, s.token);
            }
        }
        let visibility = match self.visibility {
            Some(v) => v,
            None => {
                let by_type = ctx.type_visibility.and_then(|f| f(&ty.value));
                match (ctx.default_visibility, by_type) {
                    (Some(a), Some(b)) => {
                        if a.rank() >= b.rank() {
                            a
                        } else {
                            b
                        }
                    }
                    (a, b) => a.or(b).unwrap_or_default(),
                }
            }
        };
        out.push_str(",\"visibility\":\"");
        out.push_str(visibility.as_str());
        out.push('"');
        if !self.readers.is_empty() {
            out.push_str(",\"readers\":");
            out.push_str(&serde_json::to_string(&self.readers).unwrap_or_else(|_| "[]".into()));
        }
        let mut context_range = None;
        if let Some(c) = &self.context {
            let raw = match c {
                ContextValue::Raw(r) => r.get(),
                ContextValue::Decoded(r) => r.get(),
            };
            out.push_str(",\"context\":");
            let start = out.len();
            append_minified(raw, &mut out, limits.max_depth).map_err(|TooDeep| {
                reject(
                    pointer,
                    "context",
                    format!("context nests deeper than {} levels", limits.max_depth),
                )
            })?;
            context_range = Some(start..out.len());
        }
        for (name, v) in &self.extensions {
            push_member(&mut out, name, v.get());
        }
        let mut data_range = None;
        if let Some(d) = self.data {
            out.push_str(",\"data\":");
            let start = out.len();
            append_minified(d.get(), &mut out, limits.max_depth).map_err(|TooDeep| {
                reject(
                    pointer,
                    "data",
                    format!("data nests deeper than {} levels", limits.max_depth),
                )
            })?;
            data_range = Some(start..out.len());
        } else if let Some(d) = self.data_base64 {
            push_member(&mut out, "data_base64", d.get());
        }
        // Everything so far is the producer's content except its time; what follows is not
        // hashed.
        let content_hash = xxhash_rust::xxh3::xxh3_64(out.as_bytes()) as i64;
        let time_us = match &self.time {
            Some((t, us)) => {
                push_member(&mut out, "time", t.token);
                *us
            }
            None => {
                out.push_str(",\"time\":\"");
                out.push_str(ctx.now_text);
                out.push('"');
                ctx.now_us
            }
        };
        out.push_str(",\"recordedtime\":\"");
        out.push_str(ctx.now_text);
        out.push_str("\"}");

        let source_value = source.value.into_owned();
        let mut ev = PreparedEvent {
            dedup_key: dedup_key(&source_value, &id_value),
            id: id_value,
            source: source_value,
            ty: ty.value.into_owned(),
            subject: self.subject.map(|s| s.value.into_owned()),
            actor: self.actor.map(|s| s.value.into_owned()),
            tenant: self.tenant.map(|s| s.value.into_owned()),
            causationid: self.causationid.map(|s| s.value.into_owned()),
            correlationid: self.correlationid.map(|s| s.value.into_owned()),
            dataschema: self.dataschema.as_ref().map(|s| s.value.to_string()),
            severity,
            visibility,
            readers: self.readers,
            time_us,
            recorded_us: ctx.now_us,
            content_hash,
            time_given: self.time.is_some(),
            plain: is_plain_json(&out),
            body_tail: out,
            data_range,
            context_range,
            sig: crate::matcher::TokenSig::ALL,
        };
        if !self.unsigned {
            ev.sig = crate::matcher::TokenSig::of_parts(ev.search_parts());
        }
        Ok(ev)
    }
}

fn push_member(out: &mut String, name: &str, token: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
    out.push_str(token);
}

fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// A valid test event from JSON, received at 1970-01-01T00:00:01Z (for this crate's tests).
#[cfg(test)]
pub(crate) fn test_event(json: &str) -> PreparedEvent {
    let limits = Limits::default();
    let mut new_id = || "generated".to_owned();
    let mut ctx = PrepareCtx {
        limits: &limits,
        now_us: 1_000_000,
        now_text: "1970-01-01T00:00:01Z",
        require_specversion: false,
        default_visibility: None,
        type_visibility: None,
        new_id: &mut new_id,
    };
    prepare_json(json, "", &mut ctx).expect("a valid test event")
}

/// Formats "now" for [`PrepareCtx::now_text`].
pub fn now_text(now_us: Micros) -> String {
    format_rfc3339(now_us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn run(raw: &str) -> Result<PreparedEvent, Rejection> {
        run_with(
            raw,
            Limits {
                max_depth: 4,
                max_event_bytes: 2048,
                ..Limits::default()
            },
        )
    }

    fn run_with(raw: &str, limits: Limits) -> Result<PreparedEvent, Rejection> {
        let mut n = 0;
        let mut new_id = || {
            n += 1;
            format!("gen-{n}")
        };
        let mut ctx = PrepareCtx {
            limits: &limits,
            now_us: 1_000_000,
            now_text: "1970-01-01T00:00:01.000000Z",
            require_specversion: false,
            default_visibility: None,
            type_visibility: None,
            new_id: &mut new_id,
        };
        prepare_json(raw, "/0", &mut ctx)
    }

    #[test]
    fn plain_says_whether_the_json_holds_its_strings_byte_for_byte() {
        for (json, plain) in [
            (
                r#"{"id":"1","source":"/s","type":"t","data":{"a":"b c"}}"#,
                true,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t","actor":"us\u0065r"}"#,
                false,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t","data":"a\"b"}"#,
                false,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t","data":"straße"}"#,
                false,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t","context":{"k":"é"}}"#,
                false,
            ),
        ] {
            let ev = test_event(json);
            assert_eq!(ev.plain, plain, "{json}");
            assert_eq!(
                ev.plain,
                ev.body_tail.is_ascii() && !ev.body_tail.contains('\\'),
                "{json}"
            );
        }
    }

    /// The full-text index's tokens, cut from the event's parts, are the tokens of its search
    /// text and of the search text of its stored body.
    #[test]
    fn token_text_is_the_search_texts_tokens() {
        for raw in [
            r#"{"id":"1","source":"/S","type":"a.b"}"#,
            r#"{"id":"1","source":"/s","type":"t","subject":"p-1","actor":"user:7","tenant":"Org-1","data":{"note":"İstanbul straße","n":[1,2.5,"x-y"]},"context":{"ip":"10.0.0.1"}}"#,
            r#"{"id":"1","source":"/s","type":"t","data":"क्षेत्र नमस्ते"}"#,
        ] {
            let ev = test_event(raw);
            let want = crate::matcher::token_text(&ev.search_text());
            assert_eq!(ev.token_text(), want, "{raw}");
            let stored = search_text_of(&ev.body_with_seq(3)).expect("stored body");
            assert_eq!(crate::matcher::token_text(&stored), want, "{raw}");
        }
    }

    fn check(raw: &str, expect: Expect) {
        let actual = match run(raw) {
            Ok(ev) => format!("ok {}", ev.body_with_seq(7)),
            Err(r) => format!("rejected {}: {}", r.pointer, r.reason),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn canonical_form() {
        check(
            r#"{"type":"import.completed","source":"/importer","id":"a1","data": {"n" : [1, 2]},"tenant":"acme","x1":true}"#,
            expect![[
                r#"ok {"seq":7,"specversion":"1.0","id":"a1","source":"/importer","type":"import.completed","severity":"info","tenant":"acme","visibility":"internal","x1":true,"data":{"n":[1,2]},"time":"1970-01-01T00:00:01.000000Z","recordedtime":"1970-01-01T00:00:01.000000Z"}"#
            ]],
        );
        check(
            r#"{"type":"a","source":"/s","time":"2026-11-01T00:00:00Z","context":"{\"path\":\"/x\"}","readers":"user:1, group:g","seq":5,"recordedtime":"x"}"#,
            expect![[
                r#"ok {"seq":7,"specversion":"1.0","id":"gen-1","source":"/s","type":"a","severity":"info","visibility":"internal","readers":["user:1","group:g"],"context":{"path":"/x"},"time":"2026-11-01T00:00:00Z","recordedtime":"1970-01-01T00:00:01.000000Z"}"#
            ]],
        );
    }

    #[test]
    fn rejections() {
        check(
            r#"{"source":"/s"}"#,
            expect![[r#"rejected /0/type: type is required"#]],
        );
        check(
            r#"{"type":"Import.Done","source":"/s"}"#,
            expect![[
                r#"rejected /0/type: type `Import.Done` is not a dotted lowercase name such as `import.completed` (segments of a-z, 0-9, `_`, `-`, each starting with a letter or digit)"#
            ]],
        );
        check(
            r#"{"type":"a..b","source":"/s"}"#,
            expect![[
                r#"rejected /0/type: type `a..b` is not a dotted lowercase name such as `import.completed` (segments of a-z, 0-9, `_`, `-`, each starting with a letter or digit)"#
            ]],
        );
        check(
            r#"{"type":"a","source":""}"#,
            expect![[r#"rejected /0/source: source must not be empty"#]],
        );
        check(
            r#"{"type":"a","source":5}"#,
            expect![[r#"rejected /0/source: source must be a string"#]],
        );
        check(
            r#"{"type":"a","source":"/s","time":"yesterday"}"#,
            expect![[
                r#"rejected /0/time: time `yesterday` is not an RFC 3339 timestamp such as 2026-11-01T12:00:00Z"#
            ]],
        );
        check(
            r#"{"type":"a","source":"/s","severity":"fatal"}"#,
            expect![[
                r#"rejected /0/severity: severity `fatal` is not one of debug, info, notice, warning, error, critical"#
            ]],
        );
        check(
            r#"{"type":"a","source":"/s","My-Ext":1}"#,
            expect![[
                r#"rejected /0/My-Ext: attribute name `My-Ext` is not valid: CloudEvents attribute names are lowercase letters and digits (at most 64)"#
            ]],
        );
        check(
            r#"{"type":"a","source":"/s","ext":{"a":1}}"#,
            expect![[
                r#"rejected /0/ext: extension `ext` must be a string, a number or a boolean"#
            ]],
        );
        check(
            r#"{"type":"a","source":"/s","data":[[[[[1]]]]]}"#,
            expect![[r#"rejected /0/data: data nests deeper than 4 levels"#]],
        );
        check(
            r#"{"type":"a","type":"b","source":"/s"}"#,
            expect![[r#"rejected /0/type: attribute `type` appears twice"#]],
        );
        check(
            r#"{"type":"a","source":"/s","readers":["admin"]}"#,
            expect![[
                r#"rejected /0/readers/0: principal `admin` must look like user:ID, group:NAME or tenant:NAME"#
            ]],
        );
        check(
            r#"{"type":"a","source":"/s","specversion":"0.3"}"#,
            expect![[r#"rejected /0/specversion: specversion `0.3` is not supported; use 1.0"#]],
        );
        check(
            r#"[1]"#,
            expect![[r#"rejected /0: event must be a JSON object"#]],
        );
        check(
            &format!(
                r#"{{"type":"a","source":"/s","data":"{}"}}"#,
                "x".repeat(3000)
            ),
            expect![[r#"rejected /0: event is 3036 bytes, more than the limit of 2048 bytes"#]],
        );
        check(
            r#"{"type":"a","source":"/s","data_base64":"***"}"#,
            expect![[
                r#"rejected /0/data_base64: data_base64 is not valid base64: Invalid symbol 42, offset 0."#
            ]],
        );
    }

    /// Every string limit rejects the member past it, naming the member and the limit, and
    /// an event at the limit is stored.
    #[test]
    fn length_limits_reject_the_member_past_them() {
        let limits = Limits {
            max_string_len: 16,
            max_name_len: 8,
            max_extensions: 2,
            max_readers: 2,
            ..Limits::default()
        };
        let outcome = |raw: &str| match run_with(raw, limits.clone()) {
            Ok(_) => "ok".to_owned(),
            Err(r) => format!("{}: {}", r.pointer, r.reason),
        };
        let long = "x".repeat(17);
        let name = "n".repeat(9);
        for (member, value, max) in [
            ("source", format!("/{}", &long[1..]), 16),
            ("subject", long.clone(), 16),
            ("dataschema", format!("https://{}", &long[8..]), 16),
            ("id", name.clone(), 8),
            ("actor", name.clone(), 8),
            ("tenant", name.clone(), 8),
            ("causationid", name.clone(), 8),
            ("correlationid", name.clone(), 8),
        ] {
            let mut ev = serde_json::json!({"type":"a","source":"/s"});
            ev[member] = value.clone().into();
            assert_eq!(
                outcome(&ev.to_string()),
                format!(
                    "/0/{member}: {member} is {} bytes, more than the limit of {max}",
                    value.len()
                ),
            );
            // One byte shorter is within the limit.
            ev[member] = value[..value.len() - 1].into();
            assert_eq!(outcome(&ev.to_string()), "ok", "{member}");
        }
        assert_eq!(
            outcome(&format!(r#"{{"type":"a","source":"/s","ext":"{long}"}}"#)),
            "/0/ext: extension `ext` is longer than 16 bytes"
        );
        assert_eq!(
            outcome(r#"{"type":"a","source":"/s","e1":1,"e2":2,"e3":3}"#),
            "/0/e3: more than 2 extension attributes"
        );
        assert_eq!(outcome(r#"{"type":"a","source":"/s","e1":1,"e2":2}"#), "ok");
        assert_eq!(
            outcome(r#"{"type":"a","source":"/s","readers":["user:1","user:2","user:3"]}"#),
            "/0/readers: more than 2 readers"
        );
        assert_eq!(
            outcome(r#"{"type":"a","source":"/s","readers":["user:123456789"]}"#),
            "/0/readers/0: principal `user:123456789` must have a non-empty name without commas or control characters, at most 8 bytes"
        );
    }

    #[test]
    fn duplicate_detection_ignores_defaults() {
        let a = run(r#"{"type":"a","source":"/s","id":"1","data":{"x":1}}"#).unwrap();
        let b = run(r#"{"id":"1", "type":"a","source":"/s","data":{ "x": 1 }}"#).unwrap();
        let c = run(r#"{"type":"a","source":"/s","id":"1","data":{"x":2}}"#).unwrap();
        assert_eq!(a.dedup_key, b.dedup_key);
        assert_eq!(a.content_hash, b.content_hash);
        assert_eq!(a.dedup_key, c.dedup_key);
        assert_ne!(a.content_hash, c.content_hash);
    }

    #[test]
    fn binary_mode() {
        let limits = Limits::default();
        let mut new_id = || "g".to_owned();
        let mut ctx = PrepareCtx {
            limits: &limits,
            now_us: 0,
            now_text: "1970-01-01T00:00:00.000000Z",
            require_specversion: true,
            default_visibility: None,
            type_visibility: None,
            new_id: &mut new_id,
        };
        let attrs = [
            HeaderAttr {
                name: "specversion",
                value: "1.0",
            },
            HeaderAttr {
                name: "id",
                value: "b1",
            },
            HeaderAttr {
                name: "source",
                value: "/bin",
            },
            HeaderAttr {
                name: "type",
                value: "x.y",
            },
        ];
        let ev =
            prepare_binary(&attrs, Some("application/json"), br#"{"k": "v"}"#, &mut ctx).unwrap();
        assert!(ev
            .body_tail
            .contains(r#""datacontenttype":"application/json""#));
        assert!(ev.body_tail.contains(r#""data":{"k":"v"}"#));
        let ev = prepare_binary(
            &attrs,
            Some("application/octet-stream"),
            &[0xff, 0],
            &mut ctx,
        )
        .unwrap();
        assert!(
            ev.body_tail.contains(r#""data_base64":"/wA=""#),
            "{}",
            ev.body_tail
        );
    }
}
