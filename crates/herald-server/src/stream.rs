//! `GET /v1/stream`: matching events as server-sent events, live, with gap-free resume.
//!
//! It exists to give browsers and tools one long-lived feed that never skips or repeats an
//! event, across network drops, slow readers and server restarts. Each subscriber is one
//! task that:
//!
//! 1. subscribes to the store's live channel *first*, then reads its starting point, so that
//!    every event is either found by the catch-up read or arrives on the channel (the store
//!    guarantees that what was published before the subscription is visible to a read that
//!    starts after it);
//! 2. catches up from storage (events after `Last-Event-ID`/`after`, or since a time), oldest
//!    first, in pages;
//! 3. then follows the live channel, evaluating the filter in memory
//!    ([`herald_core::matcher`], the same semantics as the SQL) and skipping anything at or
//!    below the last position it sent, which makes the seam exact.
//!
//! A subscriber that falls behind the live channel (its ring buffer is shared and bounded)
//! is told `Lagged` and catches up from storage again, so a slow reader costs itself time,
//! never ingest or other readers. One that accepts nothing for `slow_client_timeout_secs`,
//! or falls more than `max_lag_events` behind, is disconnected with a final `disconnect`
//! event saying why; its browser reconnects and resumes from where it was.
//!
//! Frames: `id:` is the `seq`, `event:` the type, `data:` the stored JSON on one line. A
//! frame with only `id:` moves the client's resume position without delivering an event
//! (used at the start and after a catch-up that matched nothing), and `event: reset` says
//! that the requested position is gone and where the stream continues instead.

use crate::error::ApiError;
use crate::query::now_micros;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::filter::Filter;
use herald_core::matcher::matches;
use herald_core::timespec::parse_bound;
use herald_store::{LiveBatch, ScanQuery};
use serde::Deserialize;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

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
    headers: HeaderMap,
    Query(p): Query<StreamParams>,
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
    // Subscribe before reading the starting point: see the module documentation.
    let live = st.store.subscribe();
    let range = st.store.seq_range().await?;

    let (tx, rx) = mpsc::channel::<Bytes>(st.stream.client_buffer.max(1));
    let (final_tx, final_rx) = oneshot::channel::<Bytes>();
    let sub = Subscriber {
        st: st.clone(),
        filter,
        tx,
        last: 0,
        since_us: None,
        _permit: permit,
    };
    tokio::spawn(sub.run(start, range, live, final_tx));

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
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientGone => "client_gone",
            EndReason::SlowClient => "slow_client",
            EndReason::TooFarBehind => "too_far_behind",
            EndReason::Shutdown => "shutdown",
            EndReason::StoreFailed => "store_failed",
        }
    }

    fn message(self) -> &'static str {
        match self {
            EndReason::ClientGone => "",
            EndReason::SlowClient => "the client did not read for too long",
            EndReason::TooFarBehind => "the client fell too far behind the live events",
            EndReason::Shutdown => "the server is shutting down",
            EndReason::StoreFailed => "the server could not read stored events",
        }
    }
}

struct Subscriber {
    st: Arc<AppState>,
    filter: Filter,
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
        mut live: tokio::sync::broadcast::Receiver<LiveBatch>,
        final_tx: oneshot::Sender<Bytes>,
    ) {
        let m = self.st.metrics.clone();
        m.stream_subscribers.inc();
        let end = self.serve(start, range, &mut live).await;
        m.stream_subscribers.dec();
        drop(live);
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
        live: &mut tokio::sync::broadcast::Receiver<LiveBatch>,
    ) -> EndReason {
        let mut out = String::with_capacity(256);
        let _ = write!(out, "retry: {}\n\n", self.st.stream.retry_ms);
        let catch_up = match start {
            Start::Live => {
                self.last = range.last;
                false
            }
            Start::After(after) => {
                if after + 1 < range.oldest && range.oldest <= range.last {
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
        loop {
            tokio::select! {
                r = live.recv() => match r {
                    Ok(batch) => {
                        if let Err(e) = self.deliver(&batch).await {
                            return e;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        self.st.metrics.stream_lagged.inc();
                        if let Err(e) = self.catch_up(true).await {
                            return e;
                        }
                    }
                    Err(RecvError::Closed) => return EndReason::Shutdown,
                },
                _ = ticker.tick() => {
                    // A comment: keeps proxies from closing an idle connection. Skipped
                    // when the connection is backed up anyway.
                    let _ = self.tx.try_send(Bytes::from_static(b": ping\n\n"));
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

    /// Sends the matching events of a live batch that are past `last`.
    async fn deliver(&mut self, batch: &LiveBatch) -> Result<(), EndReason> {
        let Some(newest) = batch.last().map(|e| e.seq) else {
            return Ok(());
        };
        if newest <= self.last {
            return Ok(());
        }
        let now = now_micros();
        let mut out = String::new();
        let mut sent = 0u64;
        for ev in batch.iter().filter(|e| e.seq > self.last) {
            if matches(&self.filter, ev) {
                let _ = write!(out, "id: {}\nevent: {}\ndata: ", ev.seq, ev.event.ty);
                ev.write_body(&mut out);
                out.push_str("\n\n");
                sent += 1;
                self.st
                    .metrics
                    .stream_latency
                    .observe((now - ev.event.recorded_us).max(0) as f64 / 1e6);
            }
        }
        self.last = newest;
        if sent > 0 {
            self.st.metrics.stream_sent.inc_by(sent);
            self.send(out).await?;
        }
        Ok(())
    }

    /// Sends every matching stored event after `last`, oldest first, until the store has no
    /// more; then moves the client's position to the newest event examined.
    /// `lagging`: the catch-up was forced by falling behind the live buffer, and is limited
    /// by `max_lag_events`.
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
}
