//! The one API error type: every failure a handler returns becomes an RFC 9457
//! `application/problem+json` answer here.
//!
//! Client errors (4xx) are answered as they are and not logged: they are the client's
//! business. Internal errors are logged once, with a request id that the opaque 500 answer
//! carries, so an operator can find the log line from a user's report.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::ParseError;
use herald_store::StoreError;
use herald_wire::{IngestResult, Problem};

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed.
    BadRequest(String),
    /// 400: the filter does not parse.
    BadFilter(ParseError),
    /// 401: no key where one is needed, or a bad key.
    Unauthorized(String),
    /// 403: the key may not do this.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 405: a known route, another method.
    MethodNotAllowed(String),
    /// 408: the request took longer than the server's limit.
    Timeout(String),
    /// 409: every event conflicts with a stored one.
    Conflict(Vec<IngestResult>),
    /// 413: the body or the batch is too large.
    TooLarge(String),
    /// 415: unsupported content type or encoding.
    UnsupportedMediaType(String),
    /// 422: every event was rejected.
    Unprocessable(Vec<IngestResult>),
    /// 422: a JSON request body (not events) is well-formed but not of the expected shape.
    InvalidBody(String),
    /// 429 with Retry-After: the caller's rate limit.
    TooManyRequests {
        detail: String,
        retry_after_secs: u32,
    },
    /// 503 with Retry-After: overloaded or shutting down.
    Unavailable {
        detail: String,
        retry_after_secs: u32,
    },
    /// 500: an event's stored body is damaged on disk (the store logged it).
    Damaged(String),
    /// 500: logged, answered opaquely.
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Overloaded => ApiError::Unavailable {
                detail: "the write queue is full; retry after the indicated delay".into(),
                retry_after_secs: 1,
            },
            StoreError::Closed => ApiError::Unavailable {
                detail: "the server is shutting down".into(),
                retry_after_secs: 5,
            },
            StoreError::Database(msg) => ApiError::Internal(msg),
            StoreError::Conflict(msg) => ApiError::BadRequest(msg),
            e @ StoreError::Damaged(_) => ApiError::Damaged(e.to_string()),
        }
    }
}

fn problem(status: StatusCode, slug: &str, title: &str, detail: Option<String>) -> Problem {
    Problem {
        ty: format!("https://herald.dev/problems/{slug}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail,
        ..Problem::default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut retry_after = None;
        let mut unauthorized = false;
        let p = match self {
            ApiError::BadRequest(d) => problem(StatusCode::BAD_REQUEST, "bad-request", "Bad request", Some(d)),
            ApiError::BadFilter(e) => Problem {
                offset: Some(e.offset),
                term: Some(e.term.clone()),
                ..problem(StatusCode::BAD_REQUEST, "bad-filter", "Invalid filter", Some(e.message))
            },
            ApiError::Unauthorized(d) => {
                unauthorized = true;
                problem(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", Some(d))
            }
            ApiError::Forbidden(d) => problem(StatusCode::FORBIDDEN, "forbidden", "Forbidden", Some(d)),
            ApiError::NotFound(d) => problem(StatusCode::NOT_FOUND, "not-found", "Not found", Some(d)),
            ApiError::MethodNotAllowed(d) => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                Some(d),
            ),
            ApiError::Conflict(results) => Problem {
                results: Some(results),
                ..problem(
                    StatusCode::CONFLICT,
                    "conflict",
                    "Conflict",
                    Some("an event with the same source and id but different content is already stored".into()),
                )
            },
            ApiError::Timeout(d) => problem(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "Request timeout",
                Some(d),
            ),
            ApiError::TooLarge(d) => problem(StatusCode::PAYLOAD_TOO_LARGE, "too-large", "Payload too large", Some(d)),
            ApiError::UnsupportedMediaType(d) => problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                Some(d),
            ),
            ApiError::Unprocessable(results) => {
                let detail = match results.as_slice() {
                    [one] => one.reason.clone(),
                    many => Some(format!("all {} events were rejected; see results", many.len())),
                };
                Problem {
                    results: Some(results),
                    ..problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-event", "Invalid event", detail)
                }
            }
            ApiError::InvalidBody(d) => problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "Invalid request body",
                Some(d),
            ),
            ApiError::TooManyRequests { detail, retry_after_secs } => {
                retry_after = Some(retry_after_secs);
                problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests", Some(detail))
            }
            ApiError::Unavailable { detail, retry_after_secs } => {
                retry_after = Some(retry_after_secs);
                problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", Some(detail))
            }
            ApiError::Damaged(d) => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "damaged",
                "Stored event damaged",
                Some(d),
            ),
            ApiError::Internal(msg) => {
                let request_id = uuid::Uuid::now_v7().to_string();
                tracing::error!(%request_id, error = %msg, "internal error");
                Problem {
                    request_id: Some(request_id),
                    ..problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error", None)
                }
            }
        };
        let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&p).unwrap_or_default();
        let mut res = (status, body).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if unauthorized {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"herald\""),
            );
        }
        if let Some(secs) = retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}
