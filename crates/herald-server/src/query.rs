//! `GET /v1/events` and `GET /v1/events/{key}`: listings with the filter language and keyset
//! cursors, and single events by `seq` or by `source` + `id`.
//!
//! Stored events are canonical JSON already, so a listing is assembled by concatenating the
//! stored bytes; only a strict CloudEvents consumer (`Accept: application/cloudevents+json`
//! or `application/cloudevents-batch+json`) gets them re-encoded, with Herald's structured
//! members in their documented string form (see `docs/api.md`).

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::AppState;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::cursor::Cursor;
use herald_core::filter::Filter;
use herald_core::timespec::parse_bound;
use herald_core::Access;
use herald_store::EventQuery;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Query parameters of `GET /v1/events`. All are strings so that a bad value gets a
/// problem+json answer naming it.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Filter in Herald's filter language, e.g. `type:import.* severity:>=error`.
    pub filter: Option<String>,
    /// Lower time bound (inclusive): a duration back from now (`24h`), a date or RFC 3339.
    pub since: Option<String>,
    /// Upper time bound (exclusive), same forms as `since`.
    pub until: Option<String>,
    /// Page size (default 50, at most the configured maximum).
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The media types a listing can be answered in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Herald,
    CloudEventsBatch,
    Ndjson,
}

fn format_of(headers: &HeaderMap) -> Format {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("application/cloudevents-batch+json") {
        Format::CloudEventsBatch
    } else if accept.contains("application/x-ndjson") {
        Format::Ndjson
    } else {
        Format::Herald
    }
}

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Re-encodes a stored event for strict CloudEvents consumers: extension values must be
/// primitives, so `context` becomes its JSON text and `readers` a comma-separated list.
pub fn to_strict(body: &str) -> String {
    let Ok(mut map) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(body)
    else {
        return body.to_owned();
    };
    if let Some(ctx) = map.get_mut("context") {
        if ctx.is_object() {
            *ctx = serde_json::Value::String(ctx.to_string());
        }
    }
    if let Some(readers) = map.get_mut("readers") {
        if let Some(list) = readers.as_array() {
            let joined: Vec<&str> = list.iter().filter_map(|v| v.as_str()).collect();
            *readers = serde_json::Value::String(joined.join(","));
        }
    }
    serde_json::to_string(&map).unwrap_or_else(|_| body.to_owned())
}

/// Parses the listing parameters into a store query (shared with the export path).
pub fn build_query(
    st: &AppState,
    p: &ListParams,
    now: i64,
    access: &Access,
) -> Result<EventQuery, ApiError> {
    let filter =
        Filter::parse(p.filter.as_deref().unwrap_or(""), now).map_err(ApiError::BadFilter)?;
    let since_us = p
        .since
        .as_deref()
        .map(|s| parse_bound(s, now))
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("since: {e}")))?;
    let until_us = p
        .until
        .as_deref()
        .map(|s| parse_bound(s, now))
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("until: {e}")))?;
    let limit = match p.limit.as_deref() {
        None => st.query.default_limit,
        Some(l) => {
            let n: usize = l.parse().map_err(|_| {
                ApiError::BadRequest(format!("limit `{l}` is not a positive number"))
            })?;
            if n == 0 || n > st.query.max_limit {
                return Err(ApiError::BadRequest(format!(
                    "limit must be between 1 and {}",
                    st.query.max_limit
                )));
            }
            n
        }
    };
    let cursor = p
        .cursor
        .as_deref()
        .map(|c| {
            Cursor::decode(c)
                .ok_or_else(|| ApiError::BadRequest("cursor is not one this server issued".into()))
        })
        .transpose()?;
    Ok(EventQuery {
        filter,
        since_us,
        until_us,
        limit,
        cursor,
        access: access.clone(),
    })
}

/// `GET /v1/events`
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(ListParams),
    responses(
        (status = 200, description = "A page of events, newest first (by event time, then seq). `Accept: application/cloudevents-batch+json` gives a plain array of strict CloudEvents and `application/x-ndjson` one event per line; both carry the next cursor in the `Herald-Next-Cursor` header.", body = herald_wire::EventPage),
        (status = 400, description = "Bad filter, bound, limit or cursor", body = herald_wire::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_events(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Result<Response, ApiError> {
    list(&st, caller.read()?, &headers, &p).await
}

/// `GET /v1/public/events`
#[utoipa::path(
    get,
    path = "/v1/public/events",
    tag = "events",
    params(ListParams),
    responses(
        (status = 200, description = "Public events only, as `GET /v1/events`; no key needed", body = herald_wire::EventPage),
        (status = 404, description = "The public feed is off (`auth.public_feed`)", body = herald_wire::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_public(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Result<Response, ApiError> {
    if !st.public_feed {
        return Err(ApiError::NotFound(
            "the public feed is off (auth.public_feed)".into(),
        ));
    }
    list(&st, &Access::public_only(), &headers, &p).await
}

async fn list(
    st: &AppState,
    access: &Access,
    headers: &HeaderMap,
    p: &ListParams,
) -> Result<Response, ApiError> {
    let q = build_query(st, p, now_micros(), access)?;
    let page = st.store.query(q).await?;
    let next = page.next.map(|c| c.encode());
    let format = format_of(headers);
    let size: usize = page.events.iter().map(|e| e.body.len() + 1).sum();
    let mut out = String::with_capacity(size + 64);
    let content_type = match format {
        Format::Herald => {
            out.push_str("{\"events\":[");
            for (i, e) in page.events.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&e.body);
            }
            out.push(']');
            if let Some(c) = &next {
                out.push_str(",\"next_cursor\":\"");
                out.push_str(c);
                out.push('"');
            }
            out.push('}');
            "application/json"
        }
        Format::CloudEventsBatch => {
            out.push('[');
            for (i, e) in page.events.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&to_strict(&e.body));
            }
            out.push(']');
            "application/cloudevents-batch+json"
        }
        Format::Ndjson => {
            for e in &page.events {
                out.push_str(&e.body);
                out.push('\n');
            }
            "application/x-ndjson"
        }
    };
    let mut res = (StatusCode::OK, out).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(c) = next {
        if let Ok(v) = HeaderValue::from_str(&c) {
            res.headers_mut().insert("herald-next-cursor", v);
        }
    }
    Ok(res)
}

#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    /// Look the event up by producer identity: `key` is then the event's `id`.
    pub source: Option<String>,
}

/// `GET /v1/events/{key}`
#[utoipa::path(
    get,
    path = "/v1/events/{key}",
    tag = "events",
    params(
        ("key" = String, Path, description = "The event's seq, or its id when `source` is given"),
        GetParams,
    ),
    responses(
        (status = 200, description = "The event (`Accept: application/cloudevents+json` for the strict CloudEvents form)", body = herald_wire::Event),
        (status = 400, description = "Key is not a seq and no source was given", body = herald_wire::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such event", body = herald_wire::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_event(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(p): Query<GetParams>,
) -> Result<Response, ApiError> {
    let access = caller.read()?;
    // An event the caller may not read is "not found", as if it did not exist.
    let found = match &p.source {
        Some(source) => st.store.get_by_id(source, &key, access).await?,
        None => {
            let seq: u64 = key.parse().map_err(|_| {
                ApiError::BadRequest(format!(
                    "`{key}` is not a seq; to look an event up by id, add ?source=SOURCE"
                ))
            })?;
            st.store.get_by_seq(seq, access).await?
        }
    };
    let ev = found.ok_or_else(|| ApiError::NotFound("no such event".into()))?;
    let strict = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/cloudevents+json"));
    let (body, ct) = if strict {
        (to_strict(&ev.body), "application/cloudevents+json")
    } else {
        (ev.body, "application/json")
    };
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_form_flattens_structured_members() {
        let s = to_strict(
            r#"{"seq":1,"readers":["user:1","group:a"],"context":{"path":"/x"},"data":{"k":[1]}}"#,
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["readers"], "user:1,group:a");
        assert_eq!(v["context"], r#"{"path":"/x"}"#);
        assert_eq!(v["data"]["k"][0], 1);
    }
}
