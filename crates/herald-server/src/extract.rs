//! Request extractors whose rejections are problem documents.
//!
//! axum's own `Query`, `Path`, `Json` and `Bytes` answer bad input in plain text (a repeated query
//! parameter, a path segment that is not UTF-8, a JSON body of the wrong shape). Every 4xx of
//! Herald's API is `application/problem+json` instead, so that a client has one way to read
//! why a request failed. These wrappers delegate to axum's and turn the rejection into an
//! [`ApiError`] with the same status and axum's explanation as the detail.

use crate::error::ApiError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The query string, deserialized (see `axum::extract::Query`).
pub struct Query<T>(pub T);

/// Path parameters, deserialized (see `axum::extract::Path`).
pub struct Path<T>(pub T);

/// A JSON request body, deserialized; as a response, `T` serialized (see `axum::Json`).
pub struct Json<T>(pub T);

/// The raw request body, within axum's default body limit (see `axum::body::Bytes`).
pub struct Body(pub axum::body::Bytes);

fn client_error(status: StatusCode, detail: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(detail),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(detail),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::InvalidBody(detail),
        s if s.is_client_error() => ApiError::BadRequest(detail),
        // A route whose extractor does not fit it: Herald's bug, not the client's.
        _ => ApiError::Internal(detail),
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => Ok(Query(q.0)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => Err(
                ApiError::BadRequest(format!("bad query string: {}", e.body_text())),
            ),
            Err(e) => Err(client_error(e.status(), e.body_text())),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(p) => Ok(Path(p.0)),
            Err(e @ PathRejection::FailedToDeserializePathParams(_)) => Err(client_error(
                e.status(),
                format!("bad path: {}", e.body_text()),
            )),
            Err(e) => Err(client_error(e.status(), e.body_text())),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(j) => Ok(Json(j.0)),
            Err(e @ JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::UnsupportedMediaType(e.body_text()))
            }
            Err(e) => Err(client_error(e.status(), e.body_text())),
        }
    }
}

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|e| client_error(e.status(), e.body_text()))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
