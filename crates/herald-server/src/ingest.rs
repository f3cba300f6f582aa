//! `POST /v1/events`: from request body to durable store, one result per event.
//!
//! The content modes (plain JSON object or array, NDJSON, CloudEvents structured, batched and
//! binary) only differ in how the body is split into events; each event then goes through the
//! same validation in `herald-core`, and all valid events of the request go to the store in
//! one append, which resolves after the commit is on disk. A bad event is reported in its
//! result and never blocks the others.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::pipeline::Outcome;
use crate::query::now_micros;
use crate::AppState;
use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::event::{now_text, prepare_binary, prepare_json, HeaderAttr, PrepareCtx};
use herald_core::pipeline::RequestInfo;
use herald_core::{PreparedEvent, Rejection};
use herald_store::registry::{NewQuarantined, StatDelta};
use herald_store::AppendOutcome;
use herald_wire::{IngestResponse, IngestResult, IngestStatus};
use serde_json::value::RawValue;
use std::sync::Arc;

/// How the body carries events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `application/json`: one object or an array.
    Json,
    /// `application/x-ndjson`: one event per line.
    Ndjson,
    /// `application/cloudevents+json`: one structured event.
    Structured,
    /// `application/cloudevents-batch+json`: an array of structured events.
    Batch,
    /// `ce-*` headers with the body as data.
    Binary,
}

pub const ACCEPTED_TYPES: &str = "application/json, application/x-ndjson, application/cloudevents+json, application/cloudevents-batch+json, or CloudEvents binary mode (ce-* headers)";

fn mode(headers: &HeaderMap) -> Result<Mode, ApiError> {
    if headers.contains_key("ce-specversion") {
        return Ok(Mode::Binary);
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match ct.as_deref() {
        Some("application/json") | Some("text/json") => Ok(Mode::Json),
        Some("application/x-ndjson")
        | Some("application/ndjson")
        | Some("application/jsonl")
        | Some("application/x-jsonlines") => Ok(Mode::Ndjson),
        Some("application/cloudevents+json") => Ok(Mode::Structured),
        Some("application/cloudevents-batch+json") => Ok(Mode::Batch),
        Some(other) => Err(ApiError::UnsupportedMediaType(format!(
            "content type `{other}` is not accepted; use {ACCEPTED_TYPES}"
        ))),
        None => Err(ApiError::UnsupportedMediaType(format!(
            "a Content-Type is required; use {ACCEPTED_TYPES}"
        ))),
    }
}

/// Reads the body up to the configured limit (413 beyond), checking Content-Length first so
/// that an honest oversized request is refused before it is read. A gzip body
/// (`Content-Encoding: gzip`, as the client library sends) is decompressed under the same
/// limit, so a small compressed body cannot expand past it (a decompression bomb is a 413).
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<bytes::Bytes, ApiError> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max as u64 {
            return Err(ApiError::TooLarge(format!(
                "the body is {len} bytes, more than the limit of {max} bytes"
            )));
        }
    }
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        None => false,
        Some(enc) if enc.eq_ignore_ascii_case("identity") => false,
        Some(enc) if enc.eq_ignore_ascii_case("gzip") || enc.eq_ignore_ascii_case("x-gzip") => true,
        Some(enc) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content encoding `{enc}` is not supported; send the body uncompressed or as gzip"
            )))
        }
    };
    let raw = axum::body::to_bytes(body, max).await.map_err(|e| {
        // The only error besides a broken connection is the length limit.
        let msg = e.to_string();
        if msg.contains("length limit") {
            ApiError::TooLarge(format!("the body is more than the limit of {max} bytes"))
        } else {
            ApiError::BadRequest(format!("cannot read the body: {msg}"))
        }
    })?;
    if !gzip {
        return Ok(raw);
    }
    // Decompression is CPU work: off the runtime's threads.
    tokio::task::spawn_blocking(move || gunzip(&raw, max))
        .await
        .map_err(|e| ApiError::Internal(format!("decompression task failed: {e}")))?
}

/// Decompresses a gzip body, refusing output past `max` bytes.
fn gunzip(raw: &[u8], max: usize) -> Result<bytes::Bytes, ApiError> {
    use std::io::Read;
    let mut out = Vec::with_capacity((raw.len() * 4).min(max));
    flate2::read::MultiGzDecoder::new(raw)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid gzip: {e}")))?;
    if out.len() > max {
        return Err(ApiError::TooLarge(format!(
            "the decompressed body is more than the limit of {max} bytes"
        )));
    }
    Ok(out.into())
}

/// Decodes `%XX` escapes (CloudEvents HTTP binding encodes header values this way).
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One entry per event of the request: prepared, or rejected.
type Parsed = Vec<Result<PreparedEvent, Rejection>>;

/// A body at least this large (about 80 events of 800 bytes, a few hundred µs of parsing
/// and more) is parsed on the blocking pool instead of an async worker (see `ingest`).
const OFFLOAD_BYTES: usize = 64 * 1024;

fn too_many(n: usize, max: usize) -> ApiError {
    ApiError::TooLarge(format!(
        "the request has {n} events, more than the limit of {max}"
    ))
}

fn split_and_prepare(
    mode: Mode,
    headers: &HeaderMap,
    body: &[u8],
    ctx: &mut PrepareCtx,
) -> Result<Parsed, ApiError> {
    let max_batch = ctx.limits.max_batch_len;
    match mode {
        Mode::Binary => {
            let mut owned: Vec<(String, String)> = Vec::new();
            for (name, value) in headers {
                if let Some(attr) = name.as_str().strip_prefix("ce-") {
                    let v = value.to_str().map_err(|_| {
                        ApiError::BadRequest(format!("header {name} is not visible ASCII"))
                    })?;
                    owned.push((attr.to_owned(), percent_decode(v)));
                }
            }
            let attrs: Vec<HeaderAttr> = owned
                .iter()
                .map(|(n, v)| HeaderAttr { name: n, value: v })
                .collect();
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            Ok(vec![prepare_binary(&attrs, ct, body, ctx)])
        }
        Mode::Ndjson => {
            let text = std::str::from_utf8(body)
                .map_err(|e| ApiError::BadRequest(format!("the body is not UTF-8: {e}")))?;
            let lines: Vec<&str> = text
                .split('\n')
                .map(|l| l.trim())
                .filter(|l| !l.is_empty())
                .collect();
            if lines.len() > max_batch {
                return Err(too_many(lines.len(), max_batch));
            }
            let mut out = Vec::with_capacity(lines.len());
            for (i, line) in lines.iter().enumerate() {
                out.push(prepare_json(line, &format!("/{i}"), ctx));
            }
            Ok(out)
        }
        Mode::Json | Mode::Structured | Mode::Batch => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
            let is_array = first == Some(b'[');
            match (mode, is_array) {
                (Mode::Structured, true) => {
                    return Err(ApiError::BadRequest(
                        "application/cloudevents+json carries one event; send arrays as application/cloudevents-batch+json".into(),
                    ))
                }
                (Mode::Batch, false) => {
                    return Err(ApiError::BadRequest(
                        "application/cloudevents-batch+json must be a JSON array of events".into(),
                    ))
                }
                _ => {}
            }
            if is_array {
                let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
                    ApiError::BadRequest(format!("the body is not a valid JSON array: {e}"))
                })?;
                if items.len() > max_batch {
                    return Err(too_many(items.len(), max_batch));
                }
                let mut out = Vec::with_capacity(items.len());
                for (i, raw) in items.iter().enumerate() {
                    out.push(prepare_json(raw.get(), &format!("/{i}"), ctx));
                }
                Ok(out)
            } else if first == Some(b'{') {
                let text = std::str::from_utf8(body)
                    .map_err(|e| ApiError::BadRequest(format!("the body is not UTF-8: {e}")))?;
                // The event's own parse reads the whole body (trailing characters included),
                // so a body it accepts is one JSON value. Only when it refuses the event is
                // the body parsed again, to answer 400 for a body that is not JSON at all
                // rather than reject the event: one parse instead of two per request.
                let event = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
                let prepared = prepare_json(event, "", ctx);
                if prepared.is_err() {
                    serde_json::from_str::<&RawValue>(text).map_err(|e| {
                        ApiError::BadRequest(format!("the body is not valid JSON: {e}"))
                    })?;
                }
                Ok(vec![prepared])
            } else {
                Err(ApiError::BadRequest(
                    "the body must be a JSON object or an array of objects".into(),
                ))
            }
        }
    }
}

/// Validates every event of the body against the limits, with "now" read once per request.
fn prepare_all(
    mode: Mode,
    headers: &HeaderMap,
    body: &[u8],
    limits: &herald_core::Limits,
    default_visibility: Option<herald_wire::Visibility>,
    type_visibility: &dyn Fn(&str) -> Option<herald_wire::Visibility>,
    now_us: i64,
) -> Result<Parsed, ApiError> {
    let now = now_text(now_us);
    let mut new_id = || uuid::Uuid::now_v7().to_string();
    let mut ctx = PrepareCtx {
        limits,
        now_us,
        now_text: &now,
        require_specversion: matches!(mode, Mode::Structured | Mode::Batch | Mode::Binary),
        default_visibility,
        type_visibility: Some(type_visibility),
        new_id: &mut new_id,
    };
    split_and_prepare(mode, headers, body, &mut ctx)
}

/// A low-cardinality label for a rejection: the attribute it concerns.
fn reason_label(pointer: &str) -> String {
    // "/type" for a single event, "/3/type" inside a batch, "/3" for the whole event.
    let mut segs = pointer.split('/').skip(1);
    let member = match segs.next() {
        Some(s) if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) => segs.next(),
        other => other,
    };
    let known = [
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "datacontenttype",
        "dataschema",
        "severity",
        "actor",
        "tenant",
        "causationid",
        "correlationid",
        "visibility",
        "readers",
        "context",
        "data",
        "data_base64",
    ];
    match member {
        None | Some("") => "event".to_owned(),
        Some(m) if known.contains(&m) => m.to_owned(),
        Some(_) => "extension".to_owned(),
    }
}

/// What [`decide`] needs of a request besides its body and headers.
struct Request {
    mode: Mode,
    /// "Now" for every event of the request.
    now_us: i64,
    client_ip: Option<std::net::IpAddr>,
}

/// What the per-event steps decided for one request, before anything is written.
struct Decided {
    /// One per event, in order.
    results: Vec<IngestResult>,
    to_store: Vec<PreparedEvent>,
    /// For each event of `to_store`, its entry in `stats`.
    stored_stat: Vec<usize>,
    quarantine: Vec<NewQuarantined>,
    /// For each entry of `quarantine`, its entry in `stats`.
    quarantine_stat: Vec<usize>,
    /// Counters per type for the catalog, gathered per request and added once.
    stats: Vec<StatDelta>,
}

/// Parses and validates every event of the body, then runs each through the caller's
/// restrictions and the pipeline (type settings, processors, schemas): what to store, what to
/// quarantine, and the result of each. CPU only, no I/O: a large body runs it on the blocking
/// pool.
fn decide(
    st: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: &[u8],
    req: &Request,
) -> Result<Decided, ApiError> {
    let now_us = req.now_us;
    let snap = st.registry.snapshot();
    let parsed = {
        let type_visibility = |ty: &str| snap.table.get(ty).and_then(|e| e.settings.visibility);
        prepare_all(
            req.mode,
            headers,
            body,
            &st.limits,
            caller.default_visibility(),
            &type_visibility,
            now_us,
        )?
    };
    // Where rejections point: `/type` for a lone event, `/3/type` inside a list.
    let single = !matches!(req.mode, Mode::Ndjson | Mode::Batch)
        && body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[');
    if parsed.is_empty() {
        return Err(ApiError::BadRequest("the request holds no events".into()));
    }
    let m = &st.metrics;
    m.received.inc_by(parsed.len() as u64);
    let header_text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let info = RequestInfo {
        client_ip: req.client_ip,
        user_agent: header_text(header::USER_AGENT),
        hash_key: st.registry.config.hash_key.as_bytes(),
    };
    let producer = crate::pipeline::producer_of(caller);
    let type_pointer = |index: usize| {
        if single {
            "/type".to_owned()
        } else {
            format!("/{index}/type")
        }
    };

    let mut stats: Vec<StatDelta> = Vec::new();
    let mut results: Vec<IngestResult> = Vec::with_capacity(parsed.len());
    let mut to_store = Vec::with_capacity(parsed.len());
    let mut stored_stat: Vec<usize> = Vec::with_capacity(parsed.len());
    let mut quarantine: Vec<NewQuarantined> = Vec::new();
    let mut quarantine_stat: Vec<usize> = Vec::new();
    let result = |index: usize, status: IngestStatus| IngestResult {
        index,
        status,
        seq: None,
        id: None,
        reason: None,
        pointer: None,
        errors: Vec::new(),
    };
    for (index, p) in parsed.into_iter().enumerate() {
        // A key limited to some types or sources has the others rejected, one by one.
        let p = p.and_then(|ev| match caller.refuses(&ev.ty, &ev.source) {
            Some(reason) => Err(Rejection {
                reason,
                pointer: type_pointer(index),
            }),
            None => Ok(ev),
        });
        let ev = match p {
            Ok(ev) => ev,
            Err(r) => {
                m.rejected
                    .get_or_create(&crate::metrics::ReasonLabel {
                        reason: reason_label(&r.pointer),
                    })
                    .inc();
                results.push(IngestResult {
                    reason: Some(r.reason),
                    pointer: Some(r.pointer),
                    ..result(index, IngestStatus::Rejected)
                });
                continue;
            }
        };
        let si = crate::registry::stat_index(&mut stats, &ev.ty, now_us);
        stats[si].received += 1;
        let id = ev.id.clone();
        match crate::pipeline::process(&snap, &st.registry, ev, &info) {
            Outcome::Store {
                event,
                warnings,
                validated,
            } => {
                if validated {
                    if warnings.is_empty() {
                        stats[si].valid += 1;
                        m.outcome("valid");
                    } else {
                        stats[si].invalid += 1;
                        m.outcome("invalid");
                    }
                }
                results.push(IngestResult {
                    id: Some(id),
                    errors: warnings,
                    ..result(index, IngestStatus::Stored)
                });
                to_store.push(event);
                stored_stat.push(si);
            }
            Outcome::Refuse(reason) => {
                m.outcome("refused");
                results.push(IngestResult {
                    id: Some(id),
                    reason: Some(reason),
                    pointer: Some(type_pointer(index)),
                    ..result(index, IngestStatus::Rejected)
                });
            }
            Outcome::Drop { reason, sampled } => {
                if sampled {
                    stats[si].sampled_out += 1;
                    m.outcome("sampled_out");
                } else {
                    stats[si].dropped += 1;
                    m.outcome("opted_out");
                }
                results.push(IngestResult {
                    id: Some(id),
                    reason: Some(reason),
                    ..result(index, IngestStatus::Dropped)
                });
            }
            Outcome::Quarantine {
                event,
                kind,
                message,
                errors,
            } => {
                if kind == "processor" {
                    m.outcome("processor_failed");
                } else {
                    stats[si].invalid += 1;
                    m.outcome("invalid");
                }
                quarantine.push(crate::pipeline::quarantine_entry(
                    &st.registry,
                    &event,
                    kind,
                    &message,
                    &errors,
                    &producer,
                ));
                quarantine_stat.push(si);
                results.push(IngestResult {
                    id: Some(id),
                    reason: Some(message),
                    errors,
                    ..result(index, IngestStatus::Quarantined)
                });
            }
        }
    }
    Ok(Decided {
        results,
        to_store,
        stored_stat,
        quarantine,
        quarantine_stat,
        stats,
    })
}

/// `POST /v1/events`
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    request_body(
        description = "One event, a JSON array, NDJSON, CloudEvents structured or batched, or binary mode (ce-* headers, body as data).",
        content(
            (herald_wire::Event = "application/json"),
            (Vec<herald_wire::Event> = "application/cloudevents-batch+json"),
            (herald_wire::Event = "application/cloudevents+json"),
            (String = "application/x-ndjson"),
        )
    ),
    responses(
        (status = 201, description = "Every event is stored (or was already stored, or dropped on purpose: sampled out or opted out); all are on disk", body = IngestResponse),
        (status = 207, description = "Mixed results (some rejected, quarantined or conflicting); see each result", body = IngestResponse),
        (status = 400, description = "Malformed body", body = herald_wire::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Every event conflicts with a stored one", body = herald_wire::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body or batch too large", body = herald_wire::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported content type", body = herald_wire::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Every event was rejected or quarantined", body = herald_wire::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Write queue full or shutting down; retry after Retry-After", body = herald_wire::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ingest(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.ingest()?;
    let mode = mode(&headers)?;
    let body = read_body(&headers, body, st.limits.max_body_bytes).await?;
    let now_us = now_micros();
    let req = Request {
        mode,
        now_us,
        client_ip: peer.map(|Extension(ConnectInfo(a))| a.ip()),
    };
    let Decided {
        mut results,
        to_store,
        stored_stat,
        quarantine,
        quarantine_stat,
        mut stats,
    } = if body.len() >= OFFLOAD_BYTES {
        // Milliseconds of parsing, and of schema validation where types have schemas: off the
        // async workers, so that the requests they serve meanwhile (queries, streams, small
        // appends) do not wait behind it.
        let st = st.clone();
        let caller = caller.clone();
        let headers = headers.clone();
        tokio::task::spawn_blocking(move || decide(&st, &caller, &headers, &body, &req))
            .await
            .map_err(|e| ApiError::Internal(format!("the ingest task failed: {e}")))??
    } else {
        decide(&st, &caller, &headers, &body, &req)?
    };
    let m = &st.metrics;
    // The quarantine is written before the answer: a quarantined event is kept durably too.
    if !quarantine.is_empty() {
        let max = st.registry.config.quarantine_max_events;
        let evicted = st
            .registry
            .store
            .with(move |c| herald_store::registry::quarantine(c, &quarantine, max))
            .await?;
        if evicted > 0 {
            m.quarantine_evicted.inc_by(evicted);
            tracing::warn!(evicted, "the quarantine is full; dropped its oldest events");
        }
        for si in quarantine_stat {
            stats[si].quarantined += 1;
            m.outcome("quarantined");
        }
    }
    if !to_store.is_empty() {
        let outcomes = st.store.append(to_store).await?;
        let mut it = outcomes.into_iter().zip(stored_stat);
        for r in results
            .iter_mut()
            .filter(|r| r.status == IngestStatus::Stored)
        {
            match it.next() {
                Some((AppendOutcome::Stored(seq), si)) => {
                    r.seq = Some(seq);
                    stats[si].stored += 1;
                }
                Some((AppendOutcome::Duplicate(seq), _)) => {
                    r.status = IngestStatus::Duplicate;
                    r.seq = Some(seq);
                }
                Some((AppendOutcome::Conflict(seq), _)) => {
                    r.status = IngestStatus::Conflict;
                    r.seq = Some(seq);
                    r.reason = Some(
                        "an event with this source and id is stored with different content".into(),
                    );
                }
                None => {
                    return Err(ApiError::Internal(
                        "the store returned fewer outcomes than events".into(),
                    ))
                }
            }
        }
    }
    st.registry.add(stats, now_us);
    let mut resp = IngestResponse {
        results: Vec::new(),
        ..IngestResponse::default()
    };
    for r in &results {
        match r.status {
            IngestStatus::Stored => resp.stored += 1,
            IngestStatus::Duplicate => resp.duplicates += 1,
            IngestStatus::Conflict => resp.conflicts += 1,
            IngestStatus::Rejected => resp.rejected += 1,
            IngestStatus::Quarantined => resp.quarantined += 1,
            IngestStatus::Dropped => resp.dropped += 1,
        }
    }
    m.stored.inc_by(resp.stored as u64);
    m.duplicates.inc_by(resp.duplicates as u64);
    m.conflicts.inc_by(resp.conflicts as u64);
    let total = results.len();
    if resp.rejected + resp.quarantined == total {
        return Err(ApiError::Unprocessable(results));
    }
    if resp.conflicts == total {
        return Err(ApiError::Conflict(results));
    }
    let status = if resp.stored + resp.duplicates + resp.dropped == total {
        StatusCode::CREATED
    } else {
        StatusCode::MULTI_STATUS
    };
    resp.results = results;
    // Sized for the answer (about 60 bytes per result, ids included), so that a batch's is
    // written without regrowing the buffer; `axum::Json` starts at 128 bytes and doubles.
    let mut out = Vec::with_capacity(128 + 72 * resp.results.len());
    serde_json::to_writer(&mut out, &resp)
        .map_err(|e| ApiError::Internal(format!("cannot write the answer: {e}")))?;
    Ok((
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(out),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%C3%A9"), "a bé");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn gzip_bodies_are_decompressed_within_the_limit() {
        use std::io::Write;
        let gz = |data: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        let body = b"{\"type\":\"a.b\",\"source\":\"/x\"}\n".repeat(100);
        assert_eq!(&gunzip(&gz(&body), 1 << 20).unwrap()[..], &body[..]);
        // A bomb: 64 MiB of zeros compress to about 64 KiB; the limit stops it.
        let bomb = gz(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        assert!(matches!(gunzip(&bomb, 1 << 20), Err(ApiError::TooLarge(_))));
        assert!(matches!(
            gunzip(b"not gzip", 1 << 20),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn reason_labels_are_bounded() {
        assert_eq!(reason_label("/3/type"), "type");
        assert_eq!(reason_label("/3"), "event");
        assert_eq!(reason_label(""), "event");
        assert_eq!(reason_label("/type"), "type");
        assert_eq!(reason_label("/0/myext"), "extension");
        assert_eq!(reason_label("/0/readers/2"), "readers");
    }
}
