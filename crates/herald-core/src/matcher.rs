//! In-memory evaluation of a [`Filter`] against one event, with exactly the semantics of the
//! store's SQL (see `herald-store/src/sql.rs`), for the live stream and, later, notification
//! rules.
//!
//! It exists so that an event seen live and the same event found by a listing agree on
//! whether a filter matches: a subscriber that resumes from storage and then switches to live
//! must see one consistent selection. The rules written down here are the ones the SQL
//! compiler follows:
//!
//! - A term on an absent field (a missing attribute, a missing or JSON-`null` path) does not
//!   match, and its negation does.
//! - `data.`/`context.` values compare like SQLite's `json_extract`: `true`/`false` are the
//!   numbers 1/0, objects and arrays are their JSON text, numbers equal numbers (1 = 1.0),
//!   strings equal strings, and a number never equals a string. Ordered comparisons only
//!   compare numbers with numbers and strings with strings (byte order).
//! - Text terms are phrases over the event's search text ([`PreparedEvent::search_text`]),
//!   cut into [`tokens`] exactly as the full-text index does.

use crate::event::PreparedEvent;
use crate::filter::{CmpOp, Cond, Field, Filter, Pattern, TermKind, Value};
use std::cmp::Ordering;
use std::sync::OnceLock;

/// A stored event as the live stream sees it: its `seq`, its attributes, and lazily parsed
/// parts shared by every subscriber that evaluates a filter on it.
#[derive(Debug)]
pub struct LiveEvent {
    pub seq: u64,
    pub event: PreparedEvent,
    data: OnceLock<Option<serde_json::Value>>,
    context: OnceLock<Option<serde_json::Value>>,
    text: OnceLock<Vec<String>>,
}

impl LiveEvent {
    pub fn new(seq: u64, event: PreparedEvent) -> LiveEvent {
        LiveEvent {
            seq,
            event,
            data: OnceLock::new(),
            context: OnceLock::new(),
            text: OnceLock::new(),
        }
    }

    /// Writes the stored JSON of the event (`{"seq":N,...}`) into `out`.
    pub fn write_body(&self, out: &mut String) {
        out.push_str("{\"seq\":");
        out.push_str(itoa::Buffer::new().format(self.seq));
        out.push(',');
        out.push_str(&self.event.body_tail);
    }
}

/// What a filter reads of an event. A [`LiveEvent`] keeps what it parses (its `data`, its
/// `context`, its tokens) for every subscriber that evaluates a filter on it; an [`Unshared`]
/// view parses for one evaluation and keeps nothing, for events held in bulk (a listing of
/// the events the index does not hold yet), where cached parses would multiply the memory.
pub trait EventParts {
    fn seq(&self) -> u64;
    fn event(&self) -> &PreparedEvent;
    fn data(&self) -> Option<&serde_json::Value>;
    fn context(&self) -> Option<&serde_json::Value>;
    fn text(&self) -> &[String];
}

impl EventParts for LiveEvent {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn event(&self) -> &PreparedEvent {
        &self.event
    }

    fn data(&self) -> Option<&serde_json::Value> {
        self.data
            .get_or_init(|| parse_range(&self.event, self.event.data_range.clone()))
            .as_ref()
    }

    fn context(&self) -> Option<&serde_json::Value> {
        self.context
            .get_or_init(|| parse_range(&self.event, self.event.context_range.clone()))
            .as_ref()
    }

    fn text(&self) -> &[String] {
        self.text
            .get_or_init(|| tokens(&self.event.search_text()).collect())
    }
}

impl<T: EventParts + ?Sized> EventParts for &T {
    fn seq(&self) -> u64 {
        (**self).seq()
    }

    fn event(&self) -> &PreparedEvent {
        (**self).event()
    }

    fn data(&self) -> Option<&serde_json::Value> {
        (**self).data()
    }

    fn context(&self) -> Option<&serde_json::Value> {
        (**self).context()
    }

    fn text(&self) -> &[String] {
        (**self).text()
    }
}

/// An event seen for one evaluation: its parts are parsed when a term needs them and
/// dropped with the view.
pub struct Unshared<'a> {
    seq: u64,
    event: &'a PreparedEvent,
    data: OnceLock<Option<serde_json::Value>>,
    context: OnceLock<Option<serde_json::Value>>,
    text: OnceLock<Vec<String>>,
}

impl<'a> Unshared<'a> {
    pub fn new(seq: u64, event: &'a PreparedEvent) -> Unshared<'a> {
        Unshared {
            seq,
            event,
            data: OnceLock::new(),
            context: OnceLock::new(),
            text: OnceLock::new(),
        }
    }
}

impl EventParts for Unshared<'_> {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn event(&self) -> &PreparedEvent {
        self.event
    }

    fn data(&self) -> Option<&serde_json::Value> {
        self.data
            .get_or_init(|| parse_range(self.event, self.event.data_range.clone()))
            .as_ref()
    }

    fn context(&self) -> Option<&serde_json::Value> {
        self.context
            .get_or_init(|| parse_range(self.event, self.event.context_range.clone()))
            .as_ref()
    }

    fn text(&self) -> &[String] {
        self.text
            .get_or_init(|| tokens(&self.event.search_text()).collect())
    }
}

fn parse_range(ev: &PreparedEvent, r: Option<std::ops::Range<usize>>) -> Option<serde_json::Value> {
    let r = r?;
    serde_json::from_str(ev.body_tail.get(r)?).ok()
}

/// Cuts text into lowercase tokens: runs of letters and digits, everything else separates
/// them. The full-text index is given these tokens ([`token_text`]) and cuts only between
/// them, so it agrees in every script.
pub fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| t.to_lowercase())
}

/// The tokens of `text`, as [`tokens`] cuts them, joined by single spaces: what the full-text
/// index is given, so that its own tokenizer (which cuts some scripts differently) sees the
/// same words as a query does.
pub fn token_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_tokens(&mut out, text);
    out
}

/// For each ASCII byte, its lowercase form when it is part of a token (alphanumeric), else 0.
const ASCII_TOKEN_BYTE: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() {
            t[b] = c.to_ascii_lowercase();
        }
        b += 1;
    }
    t
};

/// Appends the tokens of `text` to `out` as [`token_text`] joins them, after a space when
/// `out` is not empty: so pushing several texts gives the tokens of those texts joined by
/// spaces. ASCII text (most events) is cut byte by byte; a token is copied without an
/// allocation of its own unless it is not ASCII.
pub fn push_tokens(out: &mut String, text: &str) {
    if text.is_ascii() {
        // For ASCII, `char::is_alphanumeric` is `u8::is_ascii_alphanumeric` and lowercasing
        // is ASCII lowercasing. One pass, byte by byte, through a table that gives each
        // byte's lowercase form, or 0 for a byte that separates tokens.
        let mut in_token = false;
        for &b in text.as_bytes() {
            let c = ASCII_TOKEN_BYTE[usize::from(b)];
            if c == 0 {
                in_token = false;
                continue;
            }
            if !in_token {
                if !out.is_empty() {
                    out.push(' ');
                }
                in_token = true;
            }
            out.push(char::from(c));
        }
        return;
    }
    for tok in text.split(|c: char| !c.is_alphanumeric()) {
        if tok.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        if tok.is_ascii() {
            let at = out.len();
            out.push_str(tok);
            out[at..].make_ascii_lowercase();
        } else {
            out.push_str(&tok.to_lowercase());
        }
    }
}

/// A 512-bit Bloom filter of an event's tokens (the [`tokens`] of its search text), two bits
/// per token: an event whose signature lacks a bit of a phrase's tokens cannot hold the
/// phrase. The test is a few instructions, where looking for a word in the event's JSON reads
/// hundreds of bytes; listings under ingest test every event the indexes lack, and live
/// streams every event, so a rare word or value rules most of them out this way. With the
/// ~70 distinct tokens of a typical event, about 5% of events pass for one absent token. It
/// is made once per event at ingest (about 0.9 µs for 700 bytes, see the `prepare` bench).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenSig([u64; 8]);

/// Where a token's hash starts.
const SIG_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

impl TokenSig {
    /// Every bit set: the signature of an event whose tokens were not hashed (see
    /// [`crate::event::prepare_stored`]). It holds every token, so it rules nothing out.
    pub const ALL: TokenSig = TokenSig([u64::MAX; 8]);

    /// The signature of the tokens of `parts` (a token never spans two parts), cut as
    /// [`tokens`] cuts them.
    pub fn of_parts<'a>(parts: impl IntoIterator<Item = &'a str>) -> TokenSig {
        let mut sig = TokenSig::default();
        for part in parts {
            if part.is_ascii() {
                // As `push_tokens` cuts ASCII: the hash of each token's lowercase bytes, in one
                // pass without copying it.
                let mut h = SIG_SEED;
                let mut in_token = false;
                for &b in part.as_bytes() {
                    let c = ASCII_TOKEN_BYTE[usize::from(b)];
                    if c != 0 {
                        h = step(h, c);
                        in_token = true;
                    } else if in_token {
                        sig.add(h);
                        h = SIG_SEED;
                        in_token = false;
                    }
                }
                if in_token {
                    sig.add(h);
                }
            } else {
                for t in tokens(part) {
                    sig.add(token_hash(&t));
                }
            }
        }
        sig
    }

    /// The bits of `tokens` (already cut by [`tokens`]): what [`TokenSig::holds`] looks for.
    pub fn of_tokens<S: AsRef<str>>(tokens: &[S]) -> TokenSig {
        let mut sig = TokenSig::default();
        for t in tokens {
            sig.add(token_hash(t.as_ref()));
        }
        sig
    }

    /// True when every bit of `mask` is set: the tokens `mask` was made of may all be here.
    /// False only when one of them is not.
    pub fn holds(&self, mask: &TokenSig) -> bool {
        self.0.iter().zip(&mask.0).all(|(s, m)| s & m == *m)
    }

    fn add(&mut self, h: u64) {
        // One multiplication mixes every byte into the high bits, which pick the two bits.
        let z = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        for bit in [z >> 55, (z >> 46) & 511] {
            self.0[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
    }
}

/// One byte into a token's hash: a rotation and an xor, cheap enough for every byte of every
/// event (`add` mixes the result).
#[inline]
fn step(h: u64, c: u8) -> u64 {
    h.rotate_left(7) ^ u64::from(c)
}

/// The hash of a token's bytes, as [`TokenSig::of_parts`] computes it.
fn token_hash(token: &str) -> u64 {
    token.bytes().fold(SIG_SEED, step)
}

/// True when the tokens of `phrase` appear consecutively in `haystack` (already tokens). A
/// phrase without any token matches nothing, as in the full-text index.
pub fn phrase_in(haystack: &[String], phrase: &str) -> bool {
    let want: Vec<String> = tokens(phrase).collect();
    tokens_in(haystack, &want)
}

/// [`phrase_in`] with the phrase already cut into tokens.
pub fn tokens_in(haystack: &[String], want: &[String]) -> bool {
    if want.is_empty() || want.len() > haystack.len() {
        return false;
    }
    haystack.windows(want.len()).any(|w| w == want)
}

/// A phrase cut once for every event it is tested on: its tokens and what [`may_hold`] looks
/// for. The matcher tests it on prepared events; the store's SQL scan of the events its
/// full-text index lacks, on their canonical JSON alone ([`JsonPhrase::is_in`]).
#[derive(Debug, Clone)]
pub struct JsonPhrase {
    tokens: Vec<String>,
    probes: Vec<Probe>,
}

impl JsonPhrase {
    pub fn new(phrase: &str) -> JsonPhrase {
        let tokens: Vec<String> = tokens(phrase).collect();
        let probes = probes_of(&tokens);
        JsonPhrase { tokens, probes }
    }

    /// Whether the event stored as `json` holds the phrase in its search text, cut into
    /// tokens as the full-text index does. JSON that is ASCII without escapes holds every
    /// part of the search text byte for byte, so a word it lacks in any case rules the event
    /// out before the text is built; other JSON (an escaped letter, a character that
    /// lowercases into ASCII) is always looked at in full.
    pub fn is_in(&self, json: &str) -> bool {
        if crate::event::is_plain_json(json)
            && !self.probes.iter().all(|p| probe_in(p, json.as_bytes()))
        {
            return false;
        }
        let Some(text) = crate::event::search_text_of(json) else {
            return false;
        };
        let toks: Vec<String> = tokens(&text).collect();
        tokens_in(&toks, &self.tokens)
    }
}

/// A value as SQLite sees it, for comparisons.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sv<'a> {
    Int(i64),
    Real(f64),
    Text(&'a str),
}

/// An owned text for JSON objects and arrays (their minified JSON), kept alongside.
enum Extracted<'a> {
    Borrowed(Sv<'a>),
    Json(String),
}

impl<'a> Extracted<'a> {
    fn sv(&self) -> Sv<'_> {
        match self {
            Extracted::Borrowed(s) => *s,
            Extracted::Json(s) => Sv::Text(s),
        }
    }
}

fn extract<'a>(
    root: Option<&'a serde_json::Value>,
    path: &[String],
) -> Option<&'a serde_json::Value> {
    let mut v = root?;
    for seg in path {
        v = v.as_object()?.get(seg.as_str())?;
    }
    Some(v)
}

/// `json_extract` semantics: JSON null is SQL NULL.
fn json_sv(v: &serde_json::Value) -> Option<Extracted<'_>> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => Extracted::Borrowed(Sv::Int(*b as i64)),
        J::Number(n) => Extracted::Borrowed(match n.as_i64() {
            Some(i) => Sv::Int(i),
            None => Sv::Real(n.as_f64().unwrap_or(f64::NAN)),
        }),
        J::String(s) => Extracted::Borrowed(Sv::Text(s)),
        other => Extracted::Json(other.to_string()),
    })
}

/// The SQL parameter a filter value binds as.
fn value_sv(v: &Value) -> Sv<'_> {
    match v {
        Value::Str(s) => Sv::Text(s),
        Value::Num(n) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Sv::Int(*n as i64)
            } else {
                Sv::Real(*n)
            }
        }
        Value::Bool(b) => Sv::Int(*b as i64),
        Value::Severity(s) => Sv::Int(s.rank() as i64),
        Value::Visibility(v) => Sv::Int(v.rank() as i64),
        Value::Time(t) => Sv::Int(*t),
        Value::Seq(s) => Sv::Int(i64::try_from(*s).unwrap_or(i64::MAX)),
    }
}

fn num(s: Sv<'_>) -> Option<f64> {
    match s {
        Sv::Int(i) => Some(i as f64),
        Sv::Real(r) => Some(r),
        Sv::Text(_) => None,
    }
}

/// Ordering within one kind (numbers or strings); `None` across kinds.
fn same_kind_cmp(a: Sv<'_>, b: Sv<'_>) -> Option<Ordering> {
    match (a, b) {
        (Sv::Int(x), Sv::Int(y)) => Some(x.cmp(&y)),
        (Sv::Text(x), Sv::Text(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (x, y) => num(x)?.partial_cmp(&num(y)?),
    }
}

fn cmp_holds(op: CmpOp, o: Ordering) -> bool {
    match op {
        CmpOp::Gt => o == Ordering::Greater,
        CmpOp::Ge => o != Ordering::Less,
        CmpOp::Lt => o == Ordering::Less,
        CmpOp::Le => o != Ordering::Greater,
    }
}

fn cond_holds(cond: &Cond, v: Sv<'_>) -> bool {
    match cond {
        Cond::Exists => true,
        Cond::Cmp(op, want) => same_kind_cmp(v, value_sv(want)).is_some_and(|o| cmp_holds(*op, o)),
        Cond::AnyOf(pats) => pats.iter().any(|p| match p {
            Pattern::Exact(want) => same_kind_cmp(v, value_sv(want)) == Some(Ordering::Equal),
            Pattern::Prefix(prefix) => matches!(v, Sv::Text(t) if t.starts_with(prefix.as_str())),
        }),
    }
}

/// Evaluates one term, `None` when the field is absent (SQL NULL).
fn term_value(ev: &impl EventParts, field: &Field, cond: &Cond) -> Option<bool> {
    let e = ev.event();
    let text = |s: &Option<String>| s.as_deref().map(|t| cond_holds(cond, Sv::Text(t)));
    match field {
        Field::Type => Some(cond_holds(cond, Sv::Text(&e.ty))),
        Field::Source => Some(cond_holds(cond, Sv::Text(&e.source))),
        Field::Id => Some(cond_holds(cond, Sv::Text(&e.id))),
        Field::Subject => text(&e.subject),
        Field::Actor => text(&e.actor),
        Field::Tenant => text(&e.tenant),
        Field::CorrelationId => text(&e.correlationid),
        Field::CausationId => text(&e.causationid),
        Field::Severity => Some(cond_holds(cond, Sv::Int(e.severity.rank() as i64))),
        Field::Visibility => Some(cond_holds(cond, Sv::Int(e.visibility.rank() as i64))),
        Field::Time => Some(cond_holds(cond, Sv::Int(e.time_us))),
        Field::Seq => Some(cond_holds(
            cond,
            Sv::Int(i64::try_from(ev.seq()).unwrap_or(i64::MAX)),
        )),
        Field::Data(path) | Field::Context(path) => {
            let root = if matches!(field, Field::Data(_)) {
                ev.data()
            } else {
                ev.context()
            };
            let v = extract(root, path)?;
            if matches!(cond, Cond::Exists) {
                // `json_type` is not NULL for a JSON null: the member is present.
                return Some(true);
            }
            let x = json_sv(v)?;
            Some(cond_holds(cond, x.sv()))
        }
    }
}

/// False when the event's search text cannot hold every token of `phrase`: an ASCII token
/// (tokens are lowercase) that occurs, in any case, in none of the parts the search text is
/// made of. Tokens never span two parts, so this only rules out events that do not match;
/// it spares cutting the text of most events for a rare word. A part that is not ASCII may
/// lowercase into ASCII letters it does not hold (the Kelvin sign `K` becomes `k`), so it
/// may hold any token.
///
/// Most events are ASCII without escapes: each part is then in the canonical JSON byte for
/// byte, so one search of it per token rules out most events before the parts are looked
/// at one by one (a listing under ingest tests every event the indexes lack this way).
fn may_hold(ev: &PreparedEvent, probes: &[Probe]) -> bool {
    if ev.plain && !probes.iter().all(|t| probe_in(t, ev.body_tail.as_bytes())) {
        return false;
    }
    probes.iter().all(|t| {
        ev.search_parts().any(|p| {
            let p = p.as_bytes();
            // Every part of a plain event is ASCII.
            (!ev.plain && !p.is_ascii()) || probe_in(t, p)
        })
    })
}

/// Whether ASCII text holds the probe's token, in any case.
fn probe_in(t: &Probe, text: &[u8]) -> bool {
    match &t.exact {
        Some(f) => f.find(text).is_some(),
        None => contains_ascii_ci(text, &t.token, t.anchor),
    }
}

/// A token [`may_hold`] looks for.
#[derive(Debug, Clone)]
struct Probe {
    /// Lowercase ASCII.
    token: Vec<u8>,
    /// For a token without letters (case does not matter): a searcher for its bytes.
    exact: Option<memchr::memmem::Finder<'static>>,
    /// Where [`contains_ascii_ci`] anchors its search ([`rarest`]).
    anchor: usize,
}

/// What [`may_hold`] looks for in a phrase's tokens: the ASCII ones (any other may hide
/// anywhere), each once, longest first, so that a rare word rules an event out before a
/// common one is found.
fn probes_of(phrase: &[String]) -> Vec<Probe> {
    let mut toks: Vec<&String> = phrase.iter().filter(|t| t.is_ascii()).collect();
    toks.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    toks.dedup();
    toks.into_iter()
        .map(|t| Probe {
            token: t.as_bytes().to_vec(),
            anchor: rarest(t.as_bytes()),
            exact: (!t.bytes().any(|b| b.is_ascii_alphabetic()))
                .then(|| memchr::memmem::Finder::new(t.as_bytes()).into_owned()),
        })
        .collect()
}

/// One of the strings a `data.`/`context.` term compares with (see [`may_equal`]).
#[derive(Debug, Clone)]
struct Literal {
    /// The string between quotes, as JSON without escapes holds it.
    quoted: memchr::memmem::Finder<'static>,
    /// Its tokens.
    sig: TokenSig,
}

/// False when a `data.`/`context.` term on exact strings (`literals`) cannot hold: the part
/// has no escapes (no `\\`), so each string value in it appears between quotes byte for
/// byte, and none of the strings does. Spares parsing the JSON of most events for a rare
/// value (the signature, [`TermPlan::ruled_out_by`], has ruled most out before). True
/// whenever it cannot tell.
fn may_equal(ev: &PreparedEvent, field: &Field, literals: Option<&[Literal]>) -> bool {
    let Some(literals) = literals else {
        return true;
    };
    let range = match field {
        Field::Data(_) => &ev.data_range,
        Field::Context(_) => &ev.context_range,
        _ => return true,
    };
    // Absent: the term's value is absent too.
    let Some(part) = range.as_ref().and_then(|r| ev.body_tail.get(r.clone())) else {
        return true;
    };
    let part = part.as_bytes();
    literals.iter().any(|l| l.quoted.find(part).is_some())
        || (!ev.plain && memchr::memchr(b'\\', part).is_some())
}

/// Whether `hay` contains `needle` (lowercase ASCII) in any ASCII case. The search looks for
/// the needle's byte at `anchor` (in both cases), then compares around each find: with
/// [`rarest`] as the anchor, few finds need comparing.
fn contains_ascii_ci(hay: &[u8], needle: &[u8], anchor: usize) -> bool {
    let Some(&b) = needle.get(anchor) else {
        return needle.is_empty();
    };
    if hay.len() < needle.len() {
        return false;
    }
    let last_start = hay.len() - needle.len();
    // A find at `j` of the slice from `anchor` is a candidate that starts at `j`.
    memchr::memchr2_iter(
        b,
        b.to_ascii_uppercase(),
        &hay[anchor..=last_start + anchor],
    )
    .any(|j| hay[j..j + needle.len()].eq_ignore_ascii_case(needle))
}

/// The position of the byte of `needle` that is likely rarest in event text (by a fixed
/// ranking: `0`, `1`, `2` and common English letters are frequent; `q`, `z`, `j`, `x` are
/// not), so that [`contains_ascii_ci`] stops at few places.
fn rarest(needle: &[u8]) -> usize {
    const LETTERS: &[u8] = b"etaoinsrhldcumfpgwybvkxjqz";
    let rank = |b: u8| -> usize {
        match b {
            b'0'..=b'2' => 40,
            b'3'..=b'9' => 20,
            b'a'..=b'z' => LETTERS.iter().position(|&l| l == b).map_or(0, |p| 35 - p),
            _ => 10,
        }
    };
    needle
        .iter()
        .enumerate()
        .min_by_key(|(_, &b)| rank(b))
        .map_or(0, |(i, _)| i)
}

/// True when every term of `filter` matches the event.
/// (For one evaluation; to evaluate a filter on many events, build a [`Matcher`] once.)
pub fn matches(filter: &Filter, ev: &LiveEvent) -> bool {
    Matcher::new(filter.clone()).matches(ev)
}

/// A filter ready to be evaluated on many events: its phrases are cut into tokens once.
#[derive(Debug, Clone)]
pub struct Matcher {
    filter: Filter,
    /// What each term needs, by term position.
    plans: Vec<TermPlan>,
}

/// What a term needs for its evaluation, made once per [`Matcher`].
#[derive(Debug, Clone)]
enum TermPlan {
    Text {
        /// The tokens of the phrase, and what [`may_hold`] looks for.
        phrase: JsonPhrase,
        /// Their signature (see [`TokenSig::holds`]).
        sig: TokenSig,
    },
    Field {
        /// For a `data.`/`context.` term on exact strings: each string quoted, as JSON
        /// without escapes holds it, ready to be searched for, with the signature of its
        /// tokens (see [`may_equal`]).
        literals: Option<Vec<Literal>>,
    },
}

impl TermPlan {
    /// Whether an event's signature (and whether its JSON is plain, see
    /// [`crate::event::PreparedEvent::plain`]) rules the term out: a phrase whose tokens are
    /// not all in it, or, in a plain event, whose strings appear byte for byte among its
    /// tokens, a `data.`/`context.` value none of whose literals' tokens are. The one test
    /// both [`Matcher::matches`] (first, before it reads the event's text: a separate
    /// allocation, a cache miss each when a listing tests tens of thousands of events) and
    /// [`Matcher::may_match`] make.
    fn ruled_out_by(&self, sig: &TokenSig, plain: bool) -> bool {
        match self {
            TermPlan::Text { sig: phrase, .. } => !sig.holds(phrase),
            TermPlan::Field {
                literals: Some(literals),
            } => plain && !literals.iter().any(|l| sig.holds(&l.sig)),
            TermPlan::Field { literals: None } => false,
        }
    }

    fn of(kind: &TermKind) -> TermPlan {
        match kind {
            TermKind::Text(phrase) => {
                let phrase = JsonPhrase::new(phrase);
                TermPlan::Text {
                    sig: TokenSig::of_tokens(&phrase.tokens),
                    phrase,
                }
            }
            TermKind::Field {
                field: Field::Data(_) | Field::Context(_),
                cond: Cond::AnyOf(pats),
            } => TermPlan::Field {
                literals: pats
                    .iter()
                    .map(|p| match p {
                        // JSON text of an array or an object equals such a string too.
                        Pattern::Exact(Value::Str(s)) if !s.starts_with(['[', '{']) => {
                            Some(Literal {
                                quoted: memchr::memmem::Finder::new(format!("\"{s}\"").as_bytes())
                                    .into_owned(),
                                sig: TokenSig::of_tokens(&tokens(s).collect::<Vec<_>>()),
                            })
                        }
                        _ => None,
                    })
                    .collect(),
            },
            TermKind::Field { .. } => TermPlan::Field { literals: None },
        }
    }
}

impl Matcher {
    pub fn new(filter: Filter) -> Matcher {
        let plans = filter.terms.iter().map(|t| TermPlan::of(&t.kind)).collect();
        Matcher { filter, plans }
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// False when the signature of an event (and whether its JSON is plain, see
    /// [`crate::event::PreparedEvent::plain`]) rules out a positive term of the filter, as
    /// [`Matcher::matches`] would rule it out first; true when it cannot tell. A scan over
    /// many events can test a compact copy of their signatures this way before it reads the
    /// events themselves.
    pub fn may_match(&self, sig: &TokenSig, plain: bool) -> bool {
        self.filter
            .terms
            .iter()
            .zip(&self.plans)
            .all(|(t, plan)| t.negated || !plan.ruled_out_by(sig, plain))
    }

    /// True when every term of the filter matches the event.
    pub fn matches(&self, ev: &impl EventParts) -> bool {
        self.filter.terms.iter().zip(&self.plans).all(|(t, plan)| {
            let e = ev.event();
            let v = match (&t.kind, plan) {
                _ if plan.ruled_out_by(&e.sig, e.plain) => Some(false),
                (TermKind::Text(_), TermPlan::Text { phrase, .. }) => {
                    Some(may_hold(e, &phrase.probes) && tokens_in(ev.text(), &phrase.tokens))
                }
                (TermKind::Field { field, cond }, TermPlan::Field { literals }) => {
                    if may_equal(e, field, literals.as_deref()) {
                        term_value(ev, field, cond)
                    } else {
                        Some(false)
                    }
                }
                _ => unreachable!("a term's plan is of its kind"),
            };
            if t.negated {
                !v.unwrap_or(false)
            } else {
                v.unwrap_or(false)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_text_is_the_tokens_joined() {
        for text in [
            "",
            "Hello, World!",
            "{\"org\":\"org-0001\",\"n\":5}",
            "İstanbul straße ǅemal ﬁle ΟΔΟΣ οδος",
            "क्षेत्र नमस्ते 😀 a\u{E000}b",
            "  --  ",
            "a",
            "-A-",
            "Mozilla/5.0 (X11; Linux x86_64) 10.0.0.1 ÉCOLE école",
        ] {
            assert_eq!(
                token_text(text),
                tokens(text).collect::<Vec<_>>().join(" "),
                "{text}"
            );
        }
        // Every ASCII byte between two letters, through the byte path, against the char
        // path of `tokens`.
        for b in 0u8..128 {
            let text = format!("Ab{}cD", char::from(b));
            assert_eq!(
                token_text(&text),
                tokens(&text).collect::<Vec<_>>().join(" "),
                "{text:?}"
            );
        }
        // Every ASCII string of up to three characters from a mixed alphabet, through the
        // byte path, against the char path of `tokens`.
        let alphabet = ['a', 'Z', '0', ' ', '-', '_', '.', '~'];
        let mut strings = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = strings
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            strings.extend(longer);
        }
        for text in &strings {
            assert_eq!(
                token_text(text),
                tokens(text).collect::<Vec<_>>().join(" "),
                "{text:?}"
            );
        }
        // Pushing texts one after another is cutting them joined by a space.
        let mut out = String::new();
        for part in ["Type.A", "", "ΟΔΟΣ-x", "  ", "y"] {
            push_tokens(&mut out, part);
        }
        assert_eq!(out, token_text("Type.A  ΟΔΟΣ-x    y"));
    }

    use super::*;
    use crate::event::test_event;

    fn live(json: &str) -> LiveEvent {
        LiveEvent::new(7, test_event(json))
    }

    #[test]
    fn substrings_are_found_in_any_ascii_case() {
        let has = |hay: &[u8], needle: &[u8]| {
            let got = contains_ascii_ci(hay, needle, rarest(needle));
            // Whatever the anchor, the same answer.
            for anchor in 0..needle.len() {
                assert_eq!(contains_ascii_ci(hay, needle, anchor), got, "{anchor}");
            }
            got
        };
        assert!(has(b"Kettle Boiled", b"boiled"));
        assert!(has(b"xKETTLE", b"kettle"));
        assert!(has(b"kettle", b"kettle"));
        assert!(has(b"abc", b""));
        assert!(!has(b"kettl", b"kettle"));
        assert!(!has(b"ke ttle", b"kettle"));
        assert!(!has(b"", b"a"));
        assert_eq!(rarest(b"00000003e7"), 7);
        assert_eq!(rarest(b"quiz"), 3);
        // Against a plain search, on every needle of up to 3 bytes over a small alphabet, in
        // haystacks that hold it at the start, in the middle, at the end or not at all.
        let alphabet = b"aZz0 q";
        let mut needles: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..3 {
            let longer: Vec<Vec<u8>> = needles
                .iter()
                .flat_map(|n| alphabet.iter().map(move |&c| [n.as_slice(), &[c]].concat()))
                .collect();
            needles.extend(longer);
        }
        needles.sort();
        needles.dedup();
        for needle in &needles {
            let lower = needle.to_ascii_lowercase();
            if lower.iter().any(|b| !b.is_ascii_alphanumeric()) {
                continue;
            }
            for hay in &needles {
                let plain = hay
                    .windows(lower.len().max(1))
                    .any(|w| w.eq_ignore_ascii_case(&lower))
                    || lower.is_empty();
                assert_eq!(has(hay, &lower), plain, "{lower:?} in {hay:?}");
            }
        }
    }

    /// The cheap test never rules out an event that holds the phrase: checked on every
    /// token of a few events, in every case, and on tokens they do not hold.
    #[test]
    fn may_hold_never_rules_out_a_match() {
        for json in [
            r#"{"id":"1","source":"/S/x","type":"a.b","subject":"Sub-1","actor":"user:ABC","tenant":"Org-9","data":{"msg":"Kettle BOILED at 10:00","n":[1,2.5]},"context":{"ip":"10.0.0.1"}}"#,
            r#"{"id":"1","source":"/s","type":"t","data":"İstanbul straße naïve"}"#,
            "{\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\",\"data\":\"\u{212A}ettle\"}",
            // Escapes: the decoded attribute is not in the JSON byte for byte.
            r#"{"id":"1","source":"/s","type":"t","actor":"us\u0065r:K\u0065ttle","data":{"m\u0073g":"a\"b"}}"#,
        ] {
            let ev = test_event(json);
            let live = LiveEvent::new(1, ev.clone());
            let toks: Vec<String> = tokens(&ev.search_text()).collect();
            for t in &toks {
                assert!(
                    may_hold(&ev, &probes_of(std::slice::from_ref(t))),
                    "{t} in {json}"
                );
            }
            for w in toks.windows(2) {
                let phrase = w.to_vec();
                assert!(may_hold(&ev, &probes_of(&phrase)), "{phrase:?} in {json}");
                assert!(tokens_in(live.text(), &phrase));
            }
            for absent in ["kettles", "zzz", "boiledat", "1000", "0001"] {
                let phrase = vec![absent.to_owned()];
                assert!(!tokens_in(live.text(), &phrase));
                if json.is_ascii() {
                    assert!(!may_hold(&ev, &probes_of(&phrase)), "{absent} in {json}");
                }
            }
            // The same from the stored body alone, as the store's SQL scan tests it: every
            // token and pair of the search text, in upper case too, and none of the absent.
            let stored = ev.body_with_seq(7);
            // A token cut again is itself, except one that lowercasing gave a combining mark
            // (`İ` is `i` and a dot above): looked for as the user writes it, elsewhere.
            let whole = |t: &String| tokens(t).eq([t.clone()]);
            for t in toks.iter().filter(|t| whole(t)) {
                assert!(JsonPhrase::new(t).is_in(&stored), "{t} in {stored}");
                assert!(
                    JsonPhrase::new(&t.to_ascii_uppercase()).is_in(&stored),
                    "{t} in upper case in {stored}"
                );
            }
            for w in toks.windows(2).filter(|w| w.iter().all(whole)) {
                let phrase = w.join(" ");
                assert!(
                    JsonPhrase::new(&phrase).is_in(&stored),
                    "{phrase} in {stored}"
                );
            }
            for absent in ["kettles", "zzz", "boiledat", "1000", "0001", "kettle msg"] {
                assert!(
                    !JsonPhrase::new(absent).is_in(&stored),
                    "{absent} in {stored}"
                );
            }
        }
    }

    /// An event's signature is the signature of its search text's tokens: cut in one pass
    /// from its parts, it holds exactly the bits of every token (so it never rules out a
    /// phrase the event holds), ASCII or not, with escapes or not.
    #[test]
    fn token_sig_is_the_search_texts_tokens() {
        for json in [
            r#"{"id":"1","source":"/S/x","type":"a.b","subject":"Sub-1","actor":"user:ABC","tenant":"Org-9","data":{"msg":"Kettle BOILED at 10:00","n":[1,2.5]},"context":{"ip":"10.0.0.1"}}"#,
            r#"{"id":"1","source":"/s","type":"t","data":"İstanbul straße naïve ǅemal"}"#,
            "{\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\",\"data\":\"\u{212A}ettle\"}",
            r#"{"id":"1","source":"/s","type":"t","actor":"us\u0065r:K\u0065ttle","data":{"m\u0073g":"a\"b"}}"#,
            r#"{"id":"1","source":"/s","type":"t"}"#,
        ] {
            let ev = test_event(json);
            let toks: Vec<String> = tokens(&ev.search_text()).collect();
            assert_eq!(ev.sig, TokenSig::of_tokens(&toks), "{json}");
            for t in &toks {
                assert!(ev.sig.holds(&TokenSig::of_tokens(std::slice::from_ref(t))));
            }
        }
        assert_eq!(TokenSig::of_parts(["", " - "]), TokenSig::default());
    }

    proptest::proptest! {
        /// The one-pass cut of ASCII text (no copies) finds the tokens `tokens` finds, for
        /// texts of every length and mix, and hashes each as a query's token is hashed.
        #[test]
        fn token_sig_of_ascii_text_is_its_tokens_sig(
            text in "[a-zA-Z0-9 ._:/\\-]{0,300}",
            other in "[a-z0-9\u{e9}\u{130}\u{212a} -]{0,40}",
        ) {
            let toks: Vec<String> = tokens(&text).collect();
            proptest::prop_assert_eq!(TokenSig::of_parts([text.as_str()]), TokenSig::of_tokens(&toks));
            let both: Vec<String> = tokens(&text).chain(tokens(&other)).collect();
            proptest::prop_assert_eq!(
                TokenSig::of_parts([text.as_str(), other.as_str()]),
                TokenSig::of_tokens(&both)
            );
        }
    }

    /// Long tokens, tokens at the end of a text and runs of separators count as one token each.
    #[test]
    fn token_sig_counts_long_and_final_tokens() {
        for text in [
            format!("{}ABCDEFGHIJ", "x".repeat(58)),
            format!("{} abcdefghijklmnopq", "-".repeat(63)),
            "a".repeat(64),
            "b".repeat(65),
            format!("{}Z", " ".repeat(127)),
            "Order77 order77 ORDER77".to_owned(),
        ] {
            let toks: Vec<String> = tokens(&text).collect();
            assert_eq!(
                TokenSig::of_parts([text.as_str()]),
                TokenSig::of_tokens(&toks),
                "{text}"
            );
        }
        // A long token is not its prefix.
        assert_ne!(
            TokenSig::of_parts(["abcdefghijk"]),
            TokenSig::of_parts(["abcdefgh"])
        );
    }

    /// The signature rules out most words an event does not hold (a saturated one would let
    /// every event through to the text search).
    #[test]
    fn token_sig_rules_out_most_absent_words() {
        let ev = test_event(
            r#"{"id":"4c1d9397-124d-439a-8841-ac3dc97c93c7","type":"page.viewed","source":"mobile-ios","actor":"user-091227","tenant":"org-0123","data":{"request_id":"4fc1eb0df2cede37","session_id":"af29240adbdd","ip":"129.192.57.42","user_agent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36","app_version":"4.13.9","duration_ms":362,"page":{"path":"/price/batch/4339","referrer":"direct","viewport":[1280,640]},"metrics":{"latency_ms":14.996,"bytes":1638408},"tags":["sync"],"note":"import variant index price facet bundle channe"}}"#,
        );
        let passed = (0..1000)
            .filter(|i| ev.sig.holds(&TokenSig::of_tokens(&[format!("absent{i}")])))
            .count();
        assert!(passed < 150, "{passed} of 1000 absent words pass");
        // Through the matcher: a string value the event does not hold, and one it holds.
        let m = Matcher::new(Filter::parse("data.page.referrer:\"org-0150 zz\"", 0).unwrap());
        assert!(!m.matches(&LiveEvent::new(1, ev.clone())));
        let m = Matcher::new(Filter::parse("data.page.referrer:direct", 0).unwrap());
        assert!(m.matches(&LiveEvent::new(1, ev)));
    }

    /// `may_match` never rules out an event that matches (text, data and context terms,
    /// negated ones, escapes, absent fields), and it does rule out events by a word or
    /// value they do not hold.
    #[test]
    fn may_match_never_rules_out_a_match() {
        let events = [
            r#"{"id":"1","source":"/s","type":"page.viewed","actor":"user-7","data":{"org":"org-0150","note":"Kettle boiled at 10:00","n":3},"context":{"ip":"10.0.0.1"}}"#,
            r#"{"id":"2","source":"/s","type":"page.viewed","data":{"org":"org-0151","note":"tea \"kettle\" time"}}"#,
            r#"{"id":"3","source":"/s","type":"job.failed","context":{"ip":"10.0.0.2"}}"#,
            r#"{"id":"4","source":"/s","type":"t","data":{"org":"İstanbul"}}"#,
        ]
        .map(test_event);
        let filters = [
            "kettle",
            "\"kettle boiled\"",
            "-kettle",
            "absentword",
            "-absentword",
            "data.org:org-0150",
            "data.org:org-0150,org-0151",
            "-data.org:org-0150",
            "data.org:İstanbul",
            "context.ip:\"10.0.0.1\"",
            "data.n:3",
            "type:page.viewed kettle",
            "data.org:org-0150 absentword",
        ];
        let mut ruled_out = 0;
        for f in filters {
            let m = Matcher::new(Filter::parse(f, 0).unwrap());
            for ev in &events {
                let may = m.may_match(&ev.sig, ev.plain);
                if m.matches(&LiveEvent::new(1, ev.clone())) {
                    assert!(may, "{f} on {}", ev.id);
                } else if !may {
                    ruled_out += 1;
                }
            }
        }
        assert!(ruled_out >= 10, "{ruled_out} ruled out");
    }

    /// An event prepared without a signature (`TokenSig::ALL`, as the store re-reads its
    /// bodies) is matched exactly as the signed event: nothing is ruled out by the signature,
    /// the full checks decide.
    #[test]
    fn an_unsigned_event_matches_as_the_signed_one() {
        let ev = test_event(
            r#"{"id":"1","source":"/s","type":"page.viewed","actor":"user-7","data":{"org":"org-0150","note":"Kettle boiled at 10:00","n":3},"context":{"ip":"10.0.0.1"}}"#,
        );
        let body = ev.body_with_seq(1);
        let unsigned = crate::event::prepare_stored(&body, ev.recorded_us).expect("stored body");
        assert_eq!(unsigned.sig, TokenSig::ALL);
        assert_ne!(ev.sig, TokenSig::ALL);
        for (filter, want) in [
            ("kettle", true),
            ("\"kettle boiled\"", true),
            ("\"boiled kettle\"", false),
            ("absentword", false),
            ("data.org:org-0150", true),
            ("data.org:org-0151", false),
            ("context.ip:\"10.0.0.1\"", true),
            ("data.n:3 -kettle", false),
        ] {
            let m = Matcher::new(Filter::parse(filter, 0).unwrap());
            assert_eq!(m.matches(&LiveEvent::new(1, ev.clone())), want, "{filter}");
            assert_eq!(
                m.matches(&LiveEvent::new(1, unsigned.clone())),
                want,
                "{filter} unsigned"
            );
        }
    }

    /// The cheap test of exact strings never rules out a match: with and without escapes,
    /// nested and top-level paths, several values, a value that is a key elsewhere.
    #[test]
    fn may_equal_never_rules_out_a_match() {
        let cases = [
            (
                r#"{"id":"1","source":"/s","type":"t","data":{"org":"org-1","n":5,"a":{"b":"x y"}}}"#,
                "data.org:org-1",
                true,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t","data":{"org":"org-1"}}"#,
                "data.org:org-2",
                false,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t","data":{"org":"org-1"}}"#,
                "data.org:org-2,org-1",
                true,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t","data":{"a":{"b":"x y"}}}"#,
                "data.a.b:\"x y\"",
                true,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t","data":{"org":"\u006frg-1"}}"#,
                "data.org:org-1",
                true,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t","data":{"q":"a\/b"}}"#,
                "data.q:a/b",
                true,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t","data":{"a":[1,2]}}"#,
                "data.a:\"[1,2]\"",
                true,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t","data":{"a":{"b":1}}}"#,
                "data.a:\"{\\\"b\\\":1}\"",
                true,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t","data":{"org-1":"x"}}"#,
                "data.org:org-1",
                false,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t","context":{"ip":"10.0.0.1"}}"#,
                "context.ip:10.0.0.1",
                true,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t","context":{"ip":"10.0.0.1"}}"#,
                "-context.ip:10.0.0.2",
                true,
            ),
            (
                r#"{"id":"1","source":"/s","type":"t"}"#,
                "-data.org:x",
                true,
            ),
        ];
        for (json, f, want) in cases {
            let ev = test_event(json);
            let m = Matcher::new(Filter::parse(f, 0).unwrap());
            assert_eq!(m.matches(&Unshared::new(1, &ev)), want, "{f} on {json}");
            let slow = LiveEvent::new(1, ev.clone());
            let t = &m.filter.terms[0];
            let TermKind::Field { field, cond } = &t.kind else {
                unreachable!()
            };
            let v = term_value(&slow, field, cond);
            let exact = if t.negated {
                !v.unwrap_or(false)
            } else {
                v.unwrap_or(false)
            };
            assert_eq!(exact, want, "{f} on {json} without the cheap test");
        }
    }

    /// A view that keeps nothing answers as the live event does.
    #[test]
    fn unshared_views_match_as_live_events() {
        let json = r#"{"id":"1","source":"/s","type":"a.b","actor":"user:1","data":{"n":5,"msg":"Kettle boiled"},"context":{"ip":"10.0.0.1"}}"#;
        let ev = test_event(json);
        let live = LiveEvent::new(7, ev.clone());
        for f in [
            "type:a.*",
            "data.n:>4",
            "data.n:<4",
            "context.ip:10.0.0.1",
            "kettle",
            "\"kettle boiled\"",
            "-boiled",
            "seq:7",
            "actor:user:2",
        ] {
            let m = Matcher::new(Filter::parse(f, 0).unwrap());
            assert_eq!(m.matches(&Unshared::new(7, &ev)), m.matches(&live), "{f}");
        }
        assert!(Matcher::new(Filter::parse("kettle data.n:5", 0).unwrap())
            .matches(&Unshared::new(7, &ev)));
    }

    fn check(json: &str, cases: &[(&str, bool)]) {
        let ev = live(json);
        for (f, want) in cases {
            let filter = Filter::parse(f, 2_000_000).expect("filter");
            assert_eq!(matches(&filter, &ev), *want, "filter {f:?} on {json}");
        }
    }

    #[test]
    fn fields_and_negation() {
        check(
            r#"{"type":"import.failed","source":"/importer","severity":"error","tenant":"acme",
                "data":{"country":"fr","rows":12,"ok":true,"nested":{"a":[1,2]},"nil":null,"code":"12"}}"#,
            &[
                ("", true),
                ("type:import.*", true),
                ("type:import", false),
                ("type:imp*", true),
                ("-type:import.*", false),
                ("severity:>=error", true),
                ("severity:>error", false),
                ("tenant:acme,beta", true),
                ("actor:x", false),
                ("-actor:x", true),
                ("actor:*", false),
                ("-actor:*", true),
                ("data.country:fr,be", true),
                ("data.rows:12", true),
                ("data.rows:12.0", true),
                ("data.rows:\"12\"", false),
                ("data.code:12", false),
                ("data.code:\"12\"", true),
                ("data.rows:>10", true),
                ("data.rows:<=11", false),
                ("data.code:>1", false),
                ("data.code:>\"1\"", true),
                ("data.rows:>\"1\"", false),
                ("data.ok:true", true),
                ("data.ok:1", true),
                ("data.nil:*", true),
                ("data.nil:x", false),
                ("-data.nil:x", true),
                ("data.nested.a:\"[1,2]\"", true),
                ("data.missing:*", false),
                ("data.country.x:fr", false),
                ("seq:7", true),
                ("seq:>7", false),
                ("\"import failed\"", true),
                ("FAILED", true),
                ("fail", false),
                ("\"failed import\"", false),
                ("country fr", true),
                ("\"!!!\"", false),
            ],
        );
    }

    #[test]
    fn tokens_fold_case_and_split_on_punctuation() {
        let t: Vec<String> = tokens("Import.Failed {\"réason\":\"time-out\"} x_y").collect();
        assert_eq!(t, ["import", "failed", "réason", "time", "out", "x", "y"]);
    }
}
