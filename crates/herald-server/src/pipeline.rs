//! The ingest pipeline between validation of the envelope and the store: allow/deny,
//! opt-out, sampling, schema validation and the configured processors, per event, in that
//! order; and the quarantine API (`/v1/quarantine`, `/v1/quarantine/replay`).
//!
//! It exists so that ingest and quarantine replay run exactly the same steps. An event comes
//! out stored (possibly rewritten), refused, dropped on purpose, or quarantined; never
//! silently passed through: a processor that fails or panics quarantines its event.
//! The event is parsed only as far as a step needs it: `data` alone for validation, the
//! whole event only when something rewrites it, which is rebuilt into its canonical form
//! while keeping the producer's content hash (so a retry is still a duplicate).

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Json;
use crate::extract::Query;
use crate::query::now_micros;
use crate::registry::{OptOutMode, Snapshot, TypeEntry};
use crate::AppState;
use axum::extract::{Extension, State};
use herald_core::event::now_text;
use herald_core::pipeline::{unit_value, RequestInfo, Step};
use herald_core::types::{sample_keeps, sampled_rate, ValidationMode};
use herald_core::PreparedEvent;
use herald_store::registry::{self as reg, NewQuarantined, QuarantineRow};
use herald_store::AppendOutcome;
use herald_wire::SchemaError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;

/// What the pipeline decided for one event.
#[derive(Debug)]
pub enum Outcome {
    /// Store it; `warnings` are schema violations under validation mode `warn`;
    /// `validated`: its type has a schema it was checked against.
    Store {
        event: PreparedEvent,
        warnings: Vec<SchemaError>,
        validated: bool,
    },
    /// Refused by allow/deny (answered `rejected`).
    Refuse(String),
    /// Dropped on purpose (answered `dropped`): sampled out or opted out.
    Drop { reason: String, sampled: bool },
    /// Kept in the quarantine (answered `quarantined`).
    Quarantine {
        event: PreparedEvent,
        /// `schema`, `schema_version` or `processor`.
        kind: &'static str,
        message: String,
        errors: Vec<SchemaError>,
    },
}

/// The event as a JSON object, parsed on first need.
struct Doc<'a> {
    ev: &'a PreparedEvent,
    map: Option<Map<String, Value>>,
    changed: bool,
}

impl Doc<'_> {
    fn get(&mut self) -> Result<&mut Map<String, Value>, String> {
        if self.map.is_none() {
            let mut text = String::with_capacity(self.ev.body_tail.len() + 1);
            text.push('{');
            text.push_str(&self.ev.body_tail);
            let mut m: Map<String, Value> = serde_json::from_str(&text)
                .map_err(|e| format!("cannot parse the prepared event: {e}"))?;
            m.remove("recordedtime");
            self.map = Some(m);
        }
        Ok(self.map.as_mut().expect("parsed above"))
    }
}

/// `data` of a prepared event, parsed (Null when absent).
fn data_of(ev: &PreparedEvent) -> Result<Value, String> {
    match &ev.data_range {
        Some(r) => serde_json::from_str(&ev.body_tail[r.clone()])
            .map_err(|e| format!("cannot parse data: {e}")),
        None => Ok(Value::Null),
    }
}

/// Runs every step for one event.
pub fn process(
    snap: &Snapshot,
    reg: &crate::registry::Registry,
    ev: PreparedEvent,
    req: &RequestInfo,
) -> Outcome {
    // Allow/deny decide on the type alone, before anything is parsed.
    for p in &reg.processors {
        if let Some(Step::Refuse(why)) = p.decide(&ev.ty) {
            return Outcome::Refuse(why);
        }
    }
    let entry = snap.table.get(&ev.ty).cloned();
    let validated = entry
        .as_ref()
        .is_some_and(|e| e.settings.validation != ValidationMode::Off && e.latest().is_some());
    let mut doc = Doc {
        ev: &ev,
        map: None,
        changed: false,
    };
    match run_steps(snap, reg, entry.as_deref(), &mut doc, req) {
        Ok(Decision::Continue(warnings)) => {
            if !doc.changed {
                return Outcome::Store {
                    event: ev,
                    warnings,
                    validated,
                };
            }
            let map = doc.map.take().expect("changed implies parsed");
            match rebuild(&ev, map) {
                Ok(event) => Outcome::Store {
                    event,
                    warnings,
                    validated,
                },
                Err(message) => Outcome::Quarantine {
                    event: ev,
                    kind: "processor",
                    message,
                    errors: Vec::new(),
                },
            }
        }
        Ok(Decision::Drop { reason, sampled }) => Outcome::Drop { reason, sampled },
        Ok(Decision::Invalid {
            kind,
            message,
            errors,
        }) => Outcome::Quarantine {
            event: ev,
            kind,
            message,
            errors,
        },
        Err(message) => Outcome::Quarantine {
            event: ev,
            kind: "processor",
            message,
            errors: Vec::new(),
        },
    }
}

enum Decision {
    Continue(Vec<SchemaError>),
    Drop {
        reason: String,
        sampled: bool,
    },
    Invalid {
        kind: &'static str,
        message: String,
        errors: Vec<SchemaError>,
    },
}

fn run_steps(
    snap: &Snapshot,
    reg: &crate::registry::Registry,
    entry: Option<&TypeEntry>,
    doc: &mut Doc,
    req: &RequestInfo,
) -> Result<Decision, String> {
    let ev = doc.ev;
    // Opt-out.
    if let Some(actor) = &ev.actor {
        if snap.optout.contains(actor) {
            match reg.config.optout {
                OptOutMode::Drop => {
                    return Ok(Decision::Drop {
                        reason: "the actor opted out".into(),
                        sampled: false,
                    })
                }
                OptOutMode::Anonymize => {
                    let m = doc.get()?;
                    m.remove("actor");
                    for p in &reg.config.optout_paths {
                        herald_core::pipeline::remove_path(m, p)?;
                    }
                    doc.changed = true;
                }
            }
        }
    }
    let settings = entry.map(|e| &e.settings);
    // Sampling.
    if let Some(s) = settings.and_then(|s| s.sampling.as_ref()) {
        let unit: Option<String> = match s.unit.as_deref() {
            None => None,
            Some("actor") => ev.actor.clone(),
            Some("subject") => ev.subject.clone(),
            Some("tenant") => ev.tenant.clone(),
            Some(path) => unit_value(doc.get()?, path),
        };
        let key = unit.as_deref().unwrap_or(&ev.id);
        if !sample_keeps(key.as_bytes(), s.rate) {
            return Ok(Decision::Drop {
                reason: format!("sampled out (rate {})", s.rate),
                sampled: true,
            });
        }
        if s.rate < 1.0 {
            doc.get()?
                .insert("sampledrate".into(), Value::from(sampled_rate(s.rate)));
            doc.changed = true;
        }
    }
    // Validation.
    let mut warnings = Vec::new();
    let mut schema_for_enrich: Option<Arc<Value>> = None;
    if let Some(e) = entry {
        let mode = e.settings.validation;
        match e.version_for(ev.dataschema.as_deref()) {
            Err(message) if mode != ValidationMode::Off => {
                if mode == ValidationMode::Enforce {
                    return Ok(Decision::Invalid {
                        kind: "schema_version",
                        message,
                        errors: Vec::new(),
                    });
                }
                warnings.push(SchemaError {
                    pointer: String::new(),
                    keyword: "dataschema".into(),
                    message,
                });
            }
            Err(_) => {}
            Ok(p) => {
                if let Some(p) = p {
                    schema_for_enrich = Some(p.schema.clone());
                    if mode != ValidationMode::Off {
                        let data = data_of(ev)?;
                        let errors = p.compiled.validate(&data);
                        if !errors.is_empty() {
                            if mode == ValidationMode::Enforce {
                                return Ok(Decision::Invalid {
                                    kind: "schema",
                                    message: format!(
                                        "data does not match version {} of the schema of `{}` ({} errors)",
                                        p.version,
                                        e.pattern,
                                        errors.len()
                                    ),
                                    errors,
                                });
                            }
                            warnings = errors;
                        }
                    }
                }
            }
        }
        if !warnings.is_empty() {
            doc.get()?
                .insert("schemaerrors".into(), Value::from(warnings.len()));
            doc.changed = true;
        }
    }
    // Configured processors that edit, in order.
    for p in reg
        .processors
        .iter()
        .filter(|p| p.edits() && p.applies_to(&ev.ty))
    {
        let schema = schema_for_enrich.clone();
        let declares = move |path: &[&str]| {
            schema
                .as_deref()
                .is_some_and(|s| herald_core::schema::declares(s, path))
        };
        let m = doc.get()?;
        let step =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.run(m, req, &declares)))
                .map_err(|_| format!("processor {} panicked", p.name))?
                .map_err(|e| format!("processor {}: {e}", p.name))?;
        match step {
            Step::Continue { changed } => doc.changed |= changed,
            Step::Refuse(why) => return Err(why),
        }
    }
    Ok(Decision::Continue(warnings))
}

/// The canonical form of a rewritten event, keeping what identifies the producer's content.
fn rebuild(orig: &PreparedEvent, map: Map<String, Value>) -> Result<PreparedEvent, String> {
    let text = Value::Object(map).to_string();
    let mut ev =
        herald_core::event::prepare_trusted(&text, orig.recorded_us, &now_text(orig.recorded_us))
            .map_err(|r| {
            format!(
                "the processed event is invalid: {} at {}",
                r.reason, r.pointer
            )
        })?;
    ev.content_hash = orig.content_hash;
    ev.time_given = orig.time_given;
    Ok(ev)
}

/// A quarantine entry for an event.
pub fn quarantine_entry(
    reg: &crate::registry::Registry,
    ev: &PreparedEvent,
    kind: &str,
    message: &str,
    errors: &[SchemaError],
    producer: &str,
) -> NewQuarantined {
    let mut body = String::with_capacity(ev.body_tail.len() + 1);
    body.push('{');
    body.push_str(&ev.body_tail);
    let max = reg.config.quarantine_max_event_bytes.max(64);
    let truncated = body.len() > max;
    if truncated {
        let mut cut = max;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
    }
    NewQuarantined {
        received_us: ev.recorded_us,
        ty: ev.ty.clone(),
        source: ev.source.clone(),
        id: ev.id.clone(),
        reason: kind.to_owned(),
        errors: serde_json::json!({ "message": message, "errors": errors }),
        producer: producer.to_owned(),
        body,
        truncated,
    }
}

/// Who sent a request, for the quarantine.
pub fn producer_of(caller: &Caller) -> String {
    match &caller.key {
        Some(k) => format!("key:{}", k.id),
        None => "anonymous".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Quarantine API

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct QuarantineParams {
    /// A filter in the query language, matched against the quarantined events.
    pub filter: Option<String>,
    /// `schema`, `schema_version` or `processor`.
    pub reason: Option<String>,
    pub limit: Option<usize>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A quarantined event as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuarantinedEvent {
    pub qid: i64,
    pub received: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub source: String,
    pub id: String,
    pub reason: String,
    pub message: String,
    pub errors: Vec<SchemaError>,
    pub producer: String,
    pub attempts: i64,
    pub truncated: bool,
    /// The event as received (a string when it was cut).
    #[schema(value_type = Object)]
    pub event: Value,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuarantinePage {
    pub events: Vec<QuarantinedEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// How many events the quarantine holds in all.
    pub total: u64,
}

fn shown(r: QuarantineRow) -> QuarantinedEvent {
    let message = r.errors["message"].as_str().unwrap_or("").to_owned();
    let errors: Vec<SchemaError> =
        serde_json::from_value(r.errors["errors"].clone()).unwrap_or_default();
    let event = if r.truncated {
        Value::String(r.body)
    } else {
        serde_json::from_str(&r.body).unwrap_or(Value::String(r.body))
    };
    QuarantinedEvent {
        qid: r.qid,
        received: now_text(r.received_us),
        ty: r.ty,
        source: r.source,
        id: r.id,
        reason: r.reason,
        message,
        errors,
        producer: r.producer,
        attempts: r.attempts,
        truncated: r.truncated,
        event,
    }
}

/// A quarantined event as a live event for the filter matcher (`None` when cut).
fn as_live(r: &QuarantineRow) -> Option<herald_core::matcher::LiveEvent> {
    if r.truncated {
        return None;
    }
    let ev = reprepare(&r.body, r.received_us).ok()?;
    Some(herald_core::matcher::LiveEvent::new(0, ev))
}

fn reprepare(body: &str, recorded_us: i64) -> Result<PreparedEvent, herald_core::Rejection> {
    herald_core::event::prepare_trusted(body, recorded_us, &now_text(recorded_us))
}

/// Rows of the quarantine matching a filter and reason, newest first, from `before`.
async fn select(
    st: &AppState,
    filter: Option<&str>,
    reason: Option<&str>,
    mut before: i64,
    limit: usize,
) -> Result<(Vec<QuarantineRow>, Option<i64>), ApiError> {
    let matcher = match filter.filter(|f| !f.trim().is_empty()) {
        Some(f) => Some(herald_core::matcher::Matcher::new(
            herald_core::Filter::parse(f, now_micros()).map_err(ApiError::BadFilter)?,
        )),
        None => None,
    };
    let mut out = Vec::new();
    // Scan in pages; a filter that matches little scans at most this many rows per call.
    let mut budget = 100_000usize;
    loop {
        let page = st
            .registry
            .store
            .with(move |c| reg::quarantine_page(c, before, 500))
            .await?;
        let n = page.len();
        for r in page {
            before = r.qid;
            budget = budget.saturating_sub(1);
            if reason.is_some_and(|x| x != r.reason) {
                continue;
            }
            if let Some(m) = &matcher {
                match as_live(&r) {
                    Some(live) if m.matches(&live) => {}
                    _ => continue,
                }
            }
            out.push(r);
            if out.len() == limit {
                return Ok((out, Some(before)));
            }
        }
        if n < 500 {
            return Ok((out, None));
        }
        if budget == 0 {
            return Ok((out, Some(before)));
        }
    }
}

/// `GET /v1/quarantine`: quarantined events, newest first.
#[utoipa::path(get, path = "/v1/quarantine", tag = "types", params(QuarantineParams),
    responses((status = 200, description = "A page of quarantined events", body = QuarantinePage)))]
pub async fn list_quarantine(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<QuarantineParams>,
) -> Result<Json<QuarantinePage>, ApiError> {
    caller.admin()?;
    let limit = p
        .limit
        .unwrap_or(st.query.default_limit)
        .clamp(1, st.query.max_limit);
    let before = match p.cursor.as_deref() {
        Some(c) => c
            .parse::<i64>()
            .map_err(|_| ApiError::BadRequest("invalid cursor".into()))?,
        None => i64::MAX,
    };
    let (rows, next) = select(&st, p.filter.as_deref(), p.reason.as_deref(), before, limit).await?;
    let total = st.registry.store.with(reg::quarantine_count).await?;
    Ok(Json(QuarantinePage {
        events: rows.into_iter().map(shown).collect(),
        next_cursor: next.map(|n| n.to_string()),
        total,
    }))
}

/// What to replay.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayRequest {
    /// Quarantined events matching this filter (all when absent, unless `qids` is given).
    pub filter: Option<String>,
    pub reason: Option<String>,
    /// These entries only.
    pub qids: Vec<i64>,
    /// At most this many (default 1000, at most 10000).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplayResult {
    pub qid: i64,
    pub id: String,
    /// `stored`, `duplicate`, `conflict`, `quarantined` (still failing), `dropped` or
    /// `rejected`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplayResponse {
    pub replayed: usize,
    pub stored: usize,
    pub duplicates: usize,
    pub still_quarantined: usize,
    pub results: Vec<ReplayResult>,
}

/// `POST /v1/quarantine/replay`: validates a selection again with the current settings
/// and moves the events that pass into the event log, under their original ids (so a
/// replay is idempotent: an event already stored is a duplicate).
#[utoipa::path(post, path = "/v1/quarantine/replay", tag = "types",
    request_body = ReplayRequest,
    responses((status = 200, description = "What became of each entry", body = ReplayResponse)))]
pub async fn replay(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    crate::extract::Body(body): crate::extract::Body,
) -> Result<Json<ReplayResponse>, ApiError> {
    caller.admin()?;
    let req: ReplayRequest = if body.is_empty() {
        ReplayRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid replay request: {e}")))?
    };
    let limit = req.limit.unwrap_or(1000).clamp(1, 10_000);
    let rows = if req.qids.is_empty() {
        select(
            &st,
            req.filter.as_deref(),
            req.reason.as_deref(),
            i64::MAX,
            limit,
        )
        .await?
        .0
    } else {
        let qids: Vec<i64> = req.qids.iter().take(limit).copied().collect();
        st.registry
            .store
            .with(move |c| {
                let mut v = Vec::new();
                for q in qids {
                    if let Some(r) = reg::quarantine_get(c, q)? {
                        v.push(r);
                    }
                }
                Ok(v)
            })
            .await?
    };
    let snap = st.registry.snapshot();
    let info = RequestInfo {
        client_ip: None,
        user_agent: None,
        hash_key: st.registry.config.hash_key.as_bytes(),
    };
    let mut resp = ReplayResponse::default();
    let mut to_store: Vec<(i64, String, PreparedEvent)> = Vec::new();
    let mut failed: Vec<(i64, &'static str, Value)> = Vec::new();
    let mut gone: Vec<i64> = Vec::new();
    for r in rows {
        resp.replayed += 1;
        let result = |status: &str, reason: Option<String>| ReplayResult {
            qid: r.qid,
            id: r.id.clone(),
            status: status.into(),
            seq: None,
            reason,
        };
        if r.truncated {
            resp.results.push(result(
                "quarantined",
                Some("the event was cut when quarantined and cannot be replayed".into()),
            ));
            resp.still_quarantined += 1;
            continue;
        }
        let ev = match reprepare(&r.body, r.received_us) {
            Ok(ev) => ev,
            Err(e) => {
                resp.results.push(result("rejected", Some(e.reason)));
                continue;
            }
        };
        match process(&snap, &st.registry, ev, &info) {
            Outcome::Store { event, .. } => to_store.push((r.qid, r.id.clone(), event)),
            Outcome::Quarantine {
                kind,
                message,
                errors,
                ..
            } => {
                resp.still_quarantined += 1;
                failed.push((
                    r.qid,
                    kind,
                    serde_json::json!({ "message": message, "errors": errors }),
                ));
                resp.results.push(result("quarantined", Some(message)));
            }
            Outcome::Drop { reason, .. } => {
                gone.push(r.qid);
                resp.results.push(result("dropped", Some(reason)));
            }
            Outcome::Refuse(reason) => {
                resp.results.push(result("rejected", Some(reason)));
            }
        }
    }
    if !to_store.is_empty() {
        let events: Vec<PreparedEvent> = to_store.iter().map(|(_, _, e)| e.clone()).collect();
        let outcomes = st.store.append(events).await?;
        let now = now_micros();
        let mut stats = Vec::new();
        for ((qid, id, ev), o) in to_store.into_iter().zip(outcomes) {
            let (status, seq) = match o {
                AppendOutcome::Stored(s) => {
                    resp.stored += 1;
                    let si = crate::registry::stat_index(&mut stats, &ev.ty, now);
                    stats[si].stored += 1;
                    ("stored", s)
                }
                AppendOutcome::Duplicate(s) => {
                    resp.duplicates += 1;
                    ("duplicate", s)
                }
                AppendOutcome::Conflict(s) => ("conflict", s),
            };
            if status != "conflict" {
                gone.push(qid);
            }
            resp.results.push(ReplayResult {
                qid,
                id,
                status: status.into(),
                seq: Some(seq),
                reason: None,
            });
        }
        st.registry.add(stats, now);
    }
    st.registry
        .store
        .with(move |c| {
            for (qid, kind, errors) in &failed {
                reg::quarantine_update(c, *qid, kind, errors)?;
            }
            reg::quarantine_delete(c, &gone)
        })
        .await?;
    resp.results.sort_by_key(|r| std::cmp::Reverse(r.qid));
    crate::audit::record(
        &st,
        "herald.audit.quarantine.replayed",
        &caller,
        serde_json::json!({ "replayed": resp.replayed, "stored": resp.stored, "duplicates": resp.duplicates, "still_quarantined": resp.still_quarantined }),
    )
    .await;
    Ok(Json(resp))
}
