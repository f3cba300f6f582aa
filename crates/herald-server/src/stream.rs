//! `GET /v1/stream`: matching events as server-sent events, live, with gap-free resume.
//!
//! It exists to give browsers and tools one long-lived feed that never skips or repeats an
//! event, across network drops, slow readers and server restarts.
//!
//! One **hub** task reads the store's live channel and routes each event to the
//! subscribers whose filter matches it ([`herald_core::matcher`], the same semantics as the
//! SQL). It does not evaluate every filter on every event: subscribers are indexed by a
//! positive exact term of their filter (actor, subject, correlation id, tenant, type or
//! source), so an event is only tested against the subscribers registered under its own
//! values plus those whose filter has no such term. The hub never waits for a subscriber:
//! it `try_send`s into each subscriber's bounded queue and, when one is full, marks that
//! subscriber as lagging and stops feeding it.
//!
//! Each subscriber is one task that:
//!
//! 1. registers with the hub *first*, then reads its starting point, so that every event is
//!    either found by the catch-up read or routed to it (the store guarantees that what was
//!    published before is visible to a read that starts after);
//! 2. catches up from storage (events after `Last-Event-ID`/`after`, or since a time), oldest
//!    first, in pages;
//! 3. then sends what the hub routes to it, skipping anything at or below the last position
//!    it sent, which makes the seam exact.
//!
//! A lagging subscriber re-enables itself and catches up from storage again (the same
//! register-then-read order), so a slow reader costs itself time, never ingest or other
//! readers. One that accepts nothing for `slow_client_timeout_secs`, or is still more than
//! `max_lag_events` behind while catching up, is disconnected with a final `disconnect`
//! event saying why; its browser reconnects and resumes from where it was.
//!
//! Frames: `id:` is the `seq`, `event:` the type, `data:` the stored JSON on one line. A
//! frame with only `id:` moves the client's resume position without delivering an event
//! (at the start, after a catch-up, and with heartbeats when nothing matched meanwhile), and
//! `event: reset` says that the requested position is gone and where the stream continues.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Query;
use crate::query::now_micros;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::filter::Filter;
use herald_core::filter::{Cond, Field, Pattern, TermKind, Value};
use herald_core::matcher::LiveEvent;
use herald_core::matcher::Matcher;
use herald_core::timespec::parse_bound;
use herald_core::Access;
use herald_store::{LiveBatch, ScanQuery, Store};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit};

/// Query parameters of `GET /v1/stream`.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Filter in Herald's filter language; only matching events are sent.
    pub filter: Option<String>,
    /// Resume after this `seq` (what `Last-Event-ID` carries; for clients that cannot set
    /// headers). The header wins when both are given.
    pub after: Option<String>,
    /// Start with the events whose time is at least this (`10m`, a date or RFC 3339), then
    /// follow live.
    pub since: Option<String>,
}

/// Where a subscriber starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// Only events acknowledged from now on.
    Live,
    /// Events after this seq.
    After(u64),
    /// Events with a time at least this, then live.
    Since(i64),
}

/// `GET /v1/stream`
#[utoipa::path(
    get,
    path = "/v1/stream",
    tag = "stream",
    params(
        StreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this seq (sent by browsers when they reconnect)"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `id:` seq, `event:` type, `data:` the event JSON. Also `event: reset` (the requested position is no longer stored; `data` says where the stream continues), `event: disconnect` (the server closes the stream; `data.reason` says why), id-only frames that move the resume position, and `: ping` heartbeats.", content_type = "text/event-stream"),
        (status = 400, description = "Bad filter, `after`, `Last-Event-ID` or `since`", body = herald_wire::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many subscribers, or shutting down; retry after `Retry-After`", body = herald_wire::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stream(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(p): Query<StreamParams>,
) -> Result<Response, ApiError> {
    let access = caller.read()?.clone();
    let credential = match (&caller.key, &caller.viewer) {
        (Some(k), _) => Credential::Key(k.id.clone(), k.expires_us),
        (None, Some(v)) => Credential::Token(v.jti.clone(), v.exp),
        (None, None) => Credential::None,
    };
    open(st, access, credential, headers, p).await
}

/// What a stream was opened with: it ends when that expires or is revoked.
#[derive(Debug, Clone)]
enum Credential {
    None,
    /// A key id and its expiry.
    Key(String, Option<i64>),
    /// A viewer token id and its expiry.
    Token(String, i64),
}

impl Credential {
    fn expires_us(&self) -> Option<i64> {
        match self {
            Credential::None => None,
            Credential::Key(_, e) => *e,
            Credential::Token(_, e) => Some(*e),
        }
    }

    /// Still valid (checked with heartbeats). A failed lookup counts as valid: the store's
    /// trouble is not the client's.
    async fn valid(&self, st: &AppState) -> bool {
        let now = now_micros();
        if self.expires_us().is_some_and(|e| now >= e) {
            return false;
        }
        match self {
            Credential::None => true,
            Credential::Key(id, _) => st.keys.usable(id.clone(), now).await.unwrap_or(true),
            Credential::Token(jti, _) => !st.keys.token_revoked(jti.clone()).await.unwrap_or(false),
        }
    }
}

/// `GET /v1/public/stream`
#[utoipa::path(
    get,
    path = "/v1/public/stream",
    tag = "stream",
    params(StreamParams),
    responses(
        (status = 200, description = "Public events only, as `GET /v1/stream`; no key needed", content_type = "text/event-stream"),
        (status = 404, description = "The public feed is off (`auth.public_feed`)", body = herald_wire::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn public_stream(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<StreamParams>,
) -> Result<Response, ApiError> {
    if !st.public_feed {
        return Err(ApiError::NotFound(
            "the public feed is off (auth.public_feed)".into(),
        ));
    }
    open(st, Access::public_only(), Credential::None, headers, p).await
}

async fn open(
    st: Arc<AppState>,
    access: Access,
    credential: Credential,
    headers: HeaderMap,
    p: StreamParams,
) -> Result<Response, ApiError> {
    let now = now_micros();
    let filter =
        Filter::parse(p.filter.as_deref().unwrap_or(""), now).map_err(ApiError::BadFilter)?;
    let header_after = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("").trim().to_owned())
        .filter(|v| !v.is_empty());
    let start = match (header_after.as_deref().or(p.after.as_deref()), &p.since) {
        (Some(a), _) => Start::After(a.parse().map_err(|_| {
            ApiError::BadRequest(format!(
                "`{a}` is not a position: Last-Event-ID and after take the seq of an event"
            ))
        })?),
        (None, Some(s)) => Start::Since(
            parse_bound(s, now).map_err(|e| ApiError::BadRequest(format!("since: {e}")))?,
        ),
        (None, None) => Start::Live,
    };
    if *st.shutdown.borrow() {
        return Err(ApiError::Unavailable {
            detail: "the server is shutting down".into(),
            retry_after_secs: 5,
        });
    }
    let permit = st
        .subscribers
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable {
            detail: format!(
                "this server already serves {} streams; retry later or raise stream.max_subscribers",
                st.stream.max_subscribers
            ),
            retry_after_secs: 5,
        })?;
    // Register before reading the starting point: see the module documentation.
    let hub = st.hub();
    let (routed_tx, routed) = mpsc::channel::<Routed>(st.stream.client_buffer.max(1));
    let entry = Arc::new(Entry {
        matcher: Matcher::new(filter.clone()),
        access: access.clone(),
        tx: routed_tx,
        lagged: AtomicBool::new(false),
        wake: Notify::new(),
    });
    let registration = hub.register(entry.clone());
    let range = st.store.seq_range().await?;

    let (tx, rx) = mpsc::channel::<Bytes>(st.stream.client_buffer.max(1));
    let (final_tx, final_rx) = oneshot::channel::<Bytes>();
    let sub = Subscriber {
        st: st.clone(),
        entry,
        registration,
        filter,
        access,
        credential,
        tx,
        last: 0,
        since_us: None,
        _permit: permit,
    };
    tokio::spawn(sub.run(start, range, routed, final_tx));

    let body = futures_util::stream::unfold((rx, Some(final_rx)), |(mut rx, fin)| async move {
        match rx.recv().await {
            Some(b) => Some((Ok::<_, std::convert::Infallible>(b), (rx, fin))),
            // The task ended: send its last word, if any, then end the body.
            None => match fin {
                Some(f) => f.await.ok().map(|b| (Ok(b), (rx, None))),
                None => None,
            },
        }
    });
    let mut res = (StatusCode::OK, Body::from_stream(body)).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    // nginx and similar proxies buffer responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// Why the server ended a stream (the `reason` of the final `disconnect` event and the
/// label of `herald_stream_disconnected_total`).
#[derive(Debug, Clone, Copy)]
enum EndReason {
    ClientGone,
    SlowClient,
    TooFarBehind,
    Shutdown,
    StoreFailed,
    CredentialsEnded,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientGone => "client_gone",
            EndReason::SlowClient => "slow_client",
            EndReason::TooFarBehind => "too_far_behind",
            EndReason::Shutdown => "shutdown",
            EndReason::StoreFailed => "store_failed",
            EndReason::CredentialsEnded => "credentials_ended",
        }
    }

    fn message(self) -> &'static str {
        match self {
            EndReason::ClientGone => "",
            EndReason::SlowClient => "the client did not read for too long",
            EndReason::TooFarBehind => "the client fell too far behind the live events",
            EndReason::Shutdown => "the server is shutting down",
            EndReason::StoreFailed => "the server could not read stored events",
            EndReason::CredentialsEnded => "the key or viewer token expired or was revoked",
        }
    }
}

struct Subscriber {
    st: Arc<AppState>,
    entry: Arc<Entry>,
    /// Keeps the subscriber registered with the hub while it lives.
    registration: Registration,
    filter: Filter,
    access: Access,
    credential: Credential,
    tx: mpsc::Sender<Bytes>,
    /// Every event up to this seq was sent or skipped as not matching.
    last: u64,
    since_us: Option<i64>,
    _permit: OwnedSemaphorePermit,
}

impl Subscriber {
    async fn run(
        mut self,
        start: Start,
        range: herald_store::SeqRange,
        mut routed: mpsc::Receiver<Routed>,
        final_tx: oneshot::Sender<Bytes>,
    ) {
        let m = self.st.metrics.clone();
        m.stream_subscribers.inc();
        let end = self.serve(start, range, &mut routed).await;
        m.stream_subscribers.dec();
        if !matches!(end, EndReason::ClientGone) {
            m.stream_disconnected
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: end.as_str().to_owned(),
                })
                .inc();
            let data = serde_json::json!({"reason": end.as_str(), "detail": end.message()});
            let _ = final_tx.send(Bytes::from(format!("event: disconnect\ndata: {data}\n\n")));
        }
    }

    async fn serve(
        &mut self,
        start: Start,
        range: herald_store::SeqRange,
        routed: &mut mpsc::Receiver<Routed>,
    ) -> EndReason {
        let mut out = String::with_capacity(256);
        let _ = write!(out, "retry: {}\n\n", self.st.stream.retry_ms);
        let catch_up = match start {
            Start::Live => {
                self.last = range.last;
                false
            }
            Start::After(after) => {
                if after.saturating_add(1) < range.oldest && range.oldest <= range.last {
                    // Retention removed what the client asked for: say so, go on from the
                    // oldest event still stored.
                    self.last = range.oldest - 1;
                    reset(&mut out, "expired", after, self.last);
                } else if after > range.last {
                    // A position this server never had (restored from an older backup, or
                    // another server): go on from the newest event.
                    self.last = range.last;
                    reset(&mut out, "unknown_position", after, self.last);
                } else {
                    self.last = after;
                }
                true
            }
            Start::Since(t) => {
                self.since_us = Some(t);
                self.last = 0;
                true
            }
        };
        if !catch_up {
            // Give the client a position at once, so that a reconnection before the first
            // event resumes from here instead of missing what came in between.
            let _ = write!(out, "id: {}\n\n", self.last);
        }
        if let Err(e) = self.send(std::mem::take(&mut out)).await {
            return e;
        }
        if catch_up {
            if let Err(e) = self.catch_up(false).await {
                return e;
            }
            self.since_us = None;
        }
        let heartbeat = Duration::from_secs(self.st.stream.heartbeat_secs.max(1));
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut shutdown = self.st.shutdown.subscribe();
        let mut told = self.last;
        let expiry = self.credential.expires_us().map(|e| {
            let left = (e - now_micros()).max(0) as u64;
            tokio::time::Instant::now() + Duration::from_micros(left)
        });
        loop {
            if self.entry.lagged.load(Ordering::SeqCst) {
                // The hub stopped feeding us: drop what it queued (the catch-up reads it
                // again), take part again, then read what was missed from storage
                // (register-then-read, as at the start).
                while routed.try_recv().is_ok() {}
                self.entry.lagged.store(false, Ordering::SeqCst);
                self.st.metrics.stream_lagged.inc();
                if let Err(e) = self.catch_up(true).await {
                    return e;
                }
            }
            tokio::select! {
                r = routed.recv() => match r {
                    Some(d) => {
                        if let Err(e) = self.deliver(&d).await {
                            return e;
                        }
                    }
                    None => return EndReason::Shutdown,
                },
                _ = self.entry.wake.notified() => {}
                _ = async {
                    match expiry {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => return EndReason::CredentialsEnded,
                _ = ticker.tick() => {
                    if !self.credential.valid(&self.st).await {
                        return EndReason::CredentialsEnded;
                    }
                    // Everything the hub routed up to `done` is queued; if the queue is empty
                    // and we are not lagging, nothing else up to there matched.
                    let done = self.registration.hub.done.load(Ordering::SeqCst);
                    if routed.is_empty() && !self.entry.lagged.load(Ordering::SeqCst) {
                        self.last = self.last.max(done);
                    }
                    // A comment keeps proxies from closing an idle connection; an id-only
                    // frame moves the client's resume position past what did not match.
                    let beat: Bytes = if self.last > told {
                        told = self.last;
                        Bytes::from(format!(": ping\nid: {}\n\n", self.last))
                    } else {
                        Bytes::from_static(b": ping\n\n")
                    };
                    // Skipped when the connection is backed up anyway.
                    let _ = self.tx.try_send(beat);
                }
                _ = self.tx.closed() => return EndReason::ClientGone,
                _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => return EndReason::Shutdown,
            }
        }
    }

    /// Hands a chunk to the connection, waiting at most the slow-client timeout.
    async fn send(&self, chunk: String) -> Result<(), EndReason> {
        if chunk.is_empty() {
            return Ok(());
        }
        let timeout = Duration::from_secs(self.st.stream.slow_client_timeout_secs.max(1));
        match tokio::time::timeout(timeout, self.tx.send(Bytes::from(chunk))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(EndReason::ClientGone),
            Err(_) => Err(EndReason::SlowClient),
        }
    }

    /// Sends the routed events that are past `last`.
    async fn deliver(&mut self, d: &Routed) -> Result<(), EndReason> {
        let now = now_micros();
        let mut out = String::new();
        let mut sent = 0u64;
        for &i in &d.events {
            let Some(ev) = d.batch.get(i as usize) else {
                continue;
            };
            if ev.seq <= self.last {
                continue;
            }
            let _ = write!(out, "id: {}\nevent: {}\ndata: ", ev.seq, ev.event.ty);
            ev.write_body(&mut out);
            out.push_str("\n\n");
            sent += 1;
            self.last = ev.seq;
            self.st
                .metrics
                .stream_latency
                .observe((now - ev.event.recorded_us).max(0) as f64 / 1e6);
        }
        if sent > 0 {
            self.st.metrics.stream_sent.inc_by(sent);
            self.send(out).await?;
        }
        Ok(())
    }

    /// Sends every matching stored event after `last`, oldest first, until the store has no
    /// more; then moves the client's position to the newest event examined.
    /// `lagging`: the catch-up was forced by falling behind, and is limited by
    /// `max_lag_events`.
    async fn catch_up(&mut self, lagging: bool) -> Result<(), EndReason> {
        let page_size = self.st.stream.catchup_page.max(1);
        let mut last_sent = self.last;
        loop {
            let page = self
                .st
                .store
                .scan(ScanQuery {
                    filter: self.filter.clone(),
                    after_seq: self.last,
                    since_us: self.since_us,
                    limit: page_size,
                    access: self.access.clone(),
                })
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "stream catch-up read failed");
                    EndReason::StoreFailed
                })?;
            let mut out = String::new();
            for e in &page.events {
                let ty = event_type(&e.body);
                let _ = write!(out, "id: {}\nevent: {ty}\ndata: {}\n\n", e.seq, e.body);
                last_sent = e.seq;
            }
            self.st.metrics.stream_sent.inc_by(page.events.len() as u64);
            self.last = page.scanned_to;
            if page.done && self.last > last_sent {
                // Nothing matched up to here: tell the client, so it resumes from here.
                let _ = write!(out, "id: {}\n\n", self.last);
            }
            self.send(out).await?;
            if page.done {
                return Ok(());
            }
            let limit = self.st.stream.max_lag_events;
            if lagging && limit > 0 {
                let newest = self.st.store.seq_range().await.map(|r| r.last).unwrap_or(0);
                if newest.saturating_sub(self.last) > limit {
                    return Err(EndReason::TooFarBehind);
                }
            }
        }
    }
}

/// What the hub routes to one subscriber: indices of matching events in a live batch.
pub struct Routed {
    batch: LiveBatch,
    events: Vec<u32>,
}

/// A subscriber as the hub sees it.
pub struct Entry {
    matcher: Matcher,
    /// What the subscriber may read: applied with the filter, as the store applies it.
    access: Access,
    tx: mpsc::Sender<Routed>,
    /// Set by the hub when it stopped feeding this subscriber (its queue was full, or the
    /// hub itself fell behind); cleared by the subscriber when it takes part again.
    lagged: AtomicBool,
    wake: Notify,
}

/// The fields a subscriber can be indexed under: positive exact terms on these.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum KeyField {
    Actor,
    Subject,
    Correlation,
    Tenant,
    Type,
    /// The first segment of the type (`import` for `import.failed`): for type prefixes.
    TypeRoot,
    Source,
}

impl KeyField {
    /// Most selective first: the index uses the first one a filter has.
    const ORDER: [KeyField; 7] = [
        KeyField::Actor,
        KeyField::Subject,
        KeyField::Correlation,
        KeyField::Tenant,
        KeyField::Type,
        KeyField::TypeRoot,
        KeyField::Source,
    ];

    fn of(field: &Field) -> Option<KeyField> {
        Some(match field {
            Field::Actor => KeyField::Actor,
            Field::Subject => KeyField::Subject,
            Field::CorrelationId => KeyField::Correlation,
            Field::Tenant => KeyField::Tenant,
            Field::Type => KeyField::Type,
            Field::Source => KeyField::Source,
            _ => return None,
        })
    }

    fn value(self, ev: &LiveEvent) -> Option<&str> {
        let e = &ev.event;
        match self {
            KeyField::Actor => e.actor.as_deref(),
            KeyField::Subject => e.subject.as_deref(),
            KeyField::Correlation => e.correlationid.as_deref(),
            KeyField::Tenant => e.tenant.as_deref(),
            KeyField::Type => Some(&e.ty),
            KeyField::TypeRoot => Some(e.ty.split('.').next().unwrap_or(&e.ty)),
            KeyField::Source => Some(&e.source),
        }
    }
}

/// The index key of a filter: a positive term whose values are all exact strings. An
/// event can only match the filter if its value of that field is one of them.
fn index_key(filter: &Filter) -> Option<(KeyField, Vec<String>)> {
    let mut best: Option<(KeyField, Vec<String>)> = None;
    for t in &filter.terms {
        if t.negated {
            continue;
        }
        let TermKind::Field {
            field,
            cond: Cond::AnyOf(pats),
        } = &t.kind
        else {
            continue;
        };
        let Some(mut k) = KeyField::of(field) else {
            continue;
        };
        let exact: Option<Vec<String>> = pats
            .iter()
            .map(|p| match p {
                Pattern::Exact(Value::Str(s)) => Some(s.clone()),
                _ => None,
            })
            .collect();
        let values = match exact {
            Some(v) => v,
            // Type prefixes that name a whole first segment (`import.*`) can still be
            // indexed by that segment.
            None if k == KeyField::Type => {
                let roots: Option<Vec<String>> = pats
                    .iter()
                    .map(|p| match p {
                        Pattern::Exact(Value::Str(s)) => {
                            Some(s.split('.').next().unwrap_or(s).to_owned())
                        }
                        Pattern::Prefix(p) => p.split_once('.').map(|(root, _)| root.to_owned()),
                        _ => None,
                    })
                    .collect();
                let Some(mut roots) = roots else { continue };
                roots.sort();
                roots.dedup();
                k = KeyField::TypeRoot;
                roots
            }
            None => continue,
        };
        let rank = |k: KeyField| KeyField::ORDER.iter().position(|x| *x == k);
        if best.as_ref().is_none_or(|(b, _)| rank(k) < rank(*b)) {
            best = Some((k, values));
        }
    }
    best
}

#[derive(Default)]
struct Routes {
    next_id: u64,
    entries: HashMap<u64, Arc<Entry>>,
    /// Subscribers indexed by a field value.
    by_value: HashMap<KeyField, HashMap<String, Vec<u64>>>,
    /// Subscribers whose filter has no index key: tested on every event.
    unindexed: Vec<u64>,
    keys: HashMap<u64, Option<(KeyField, Vec<String>)>>,
}

/// Routes live events to subscribers (see the module documentation).
pub struct Hub {
    routes: Mutex<Routes>,
    /// Every live event up to this seq has been routed.
    done: AtomicU64,
}

/// Unregisters its subscriber when dropped.
pub struct Registration {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Ok(mut r) = self.hub.routes.lock() else {
            return;
        };
        r.entries.remove(&self.id);
        match r.keys.remove(&self.id).flatten() {
            Some((field, values)) => {
                if let Some(m) = r.by_value.get_mut(&field) {
                    for v in values {
                        if let Some(list) = m.get_mut(&v) {
                            list.retain(|x| *x != self.id);
                            if list.is_empty() {
                                m.remove(&v);
                            }
                        }
                    }
                }
            }
            None => r.unindexed.retain(|x| *x != self.id),
        }
    }
}

impl Hub {
    /// Starts the hub on the current runtime, reading the store's live channel.
    pub fn start(store: &Arc<dyn Store>, metrics: Arc<crate::metrics::Metrics>) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            routes: Mutex::new(Routes::default()),
            done: AtomicU64::new(0),
        });
        let rx = store.subscribe();
        tokio::spawn(hub.clone().run(rx, metrics));
        hub
    }

    fn register(self: &Arc<Self>, entry: Arc<Entry>) -> Registration {
        let key = index_key(entry.matcher.filter());
        let mut r = match self.routes.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        r.next_id += 1;
        let id = r.next_id;
        match &key {
            Some((field, values)) => {
                for v in values {
                    r.by_value
                        .entry(*field)
                        .or_default()
                        .entry(v.clone())
                        .or_default()
                        .push(id);
                }
            }
            None => r.unindexed.push(id),
        }
        r.keys.insert(id, key);
        r.entries.insert(id, entry);
        Registration {
            hub: self.clone(),
            id,
        }
    }

    async fn run(
        self: Arc<Self>,
        mut rx: tokio::sync::broadcast::Receiver<LiveBatch>,
        metrics: Arc<crate::metrics::Metrics>,
    ) {
        let mut routed: HashMap<u64, Vec<u32>> = HashMap::new();
        loop {
            let batch = match rx.recv().await {
                Ok(b) => b,
                Err(RecvError::Lagged(n)) => {
                    // The hub itself fell behind: every subscriber reads what it missed
                    // from storage.
                    tracing::warn!(
                        batches = n,
                        "the stream hub fell behind; subscribers catch up from storage"
                    );
                    metrics.stream_hub_lagged.inc();
                    if let Ok(r) = self.routes.lock() {
                        for e in r.entries.values() {
                            e.lagged.store(true, Ordering::SeqCst);
                            e.wake.notify_one();
                        }
                    }
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let Some(last) = batch.last().map(|e| e.seq) else {
                continue;
            };
            {
                let Ok(r) = self.routes.lock() else { return };
                for (i, ev) in batch.iter().enumerate() {
                    let mut consider = |id: u64| {
                        if let Some(e) = r.entries.get(&id) {
                            if !e.lagged.load(Ordering::SeqCst)
                                && e.matcher.matches(ev)
                                && e.access.can_read(&ev.event)
                            {
                                routed.entry(id).or_default().push(i as u32);
                            }
                        }
                    };
                    for (field, values) in &r.by_value {
                        if let Some(ids) = field.value(ev).and_then(|v| values.get(v)) {
                            ids.iter().copied().for_each(&mut consider);
                        }
                    }
                    r.unindexed.iter().copied().for_each(&mut consider);
                }
                for (id, events) in routed.drain() {
                    let Some(e) = r.entries.get(&id) else {
                        continue;
                    };
                    // Read again with the strongest ordering: a subscriber that re-enabled
                    // itself before this batch was published must get it.
                    if e.lagged.load(Ordering::SeqCst) {
                        continue;
                    }
                    let msg = Routed {
                        batch: batch.clone(),
                        events,
                    };
                    if e.tx.try_send(msg).is_err() {
                        e.lagged.store(true, Ordering::SeqCst);
                        e.wake.notify_one();
                    }
                }
            }
            self.done.store(last, Ordering::SeqCst);
        }
    }
}

fn reset(out: &mut String, reason: &str, requested: u64, resume_after: u64) {
    let data = serde_json::json!({
        "reason": reason,
        "requested_after": requested,
        "resume_after": resume_after,
    });
    let _ = write!(out, "id: {resume_after}\nevent: reset\ndata: {data}\n\n");
}

/// The `type` of a stored body without parsing all of it (the canonical form puts it among
/// the first members; types are dotted lowercase names, nothing to unescape).
fn event_type(body: &str) -> &str {
    body.split_once("\"type\":\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(t, _)| t)
        .filter(|t| {
            t.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        })
        .unwrap_or("message")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_is_read_from_the_canonical_body() {
        assert_eq!(
            event_type(
                r#"{"seq":3,"specversion":"1.0","id":"a","source":"/s","type":"import.failed","data":{"type":"x"}}"#
            ),
            "import.failed"
        );
        assert_eq!(event_type(r#"{"seq":3}"#), "message");
    }

    #[test]
    fn subscribers_are_indexed_by_their_most_selective_exact_term() {
        let key = |f: &str| {
            index_key(&Filter::parse(f, 0).expect("filter"))
                .map(|(k, v)| format!("{k:?} {}", v.join(",")))
                .unwrap_or_else(|| "unindexed".into())
        };
        assert_eq!(key("type:a.b tenant:acme,beta"), "Tenant acme,beta");
        assert_eq!(key("type:a.b,c.d severity:>=error"), "Type a.b,c.d");
        assert_eq!(key("-actor:user:1 source:/x"), "Source /x");
        assert_eq!(key("type:a.* tenant:x*"), "TypeRoot a");
        assert_eq!(key("type:imp* tenant:x*"), "unindexed");
        assert_eq!(key("type:a.b.*,c.d,a.x"), "TypeRoot a,c");
        assert_eq!(key("actor:user:1 type:a.b"), "Actor user:1");
        assert_eq!(key("data.country:fr \"timeout\""), "unindexed");
    }
}
