//! Viewer tokens: short-lived, signed, revocable credentials that let a host application
//! show one user their own events (list, single event, stream) inside its pages.
//!
//! It exists so that the host application never hands a real key to a browser. A token is
//! `hvt_<payload>.<signature>`: the payload (base64url JSON) names a principal, a tenant,
//! optionally a subject, an expiry and an id; the signature is HMAC-SHA256 with a key kept in
//! the database (created on first use). Checking a token needs no database lookup but the
//! revocation list, which is cached like keys. A token reads what its principal and tenant
//! may read, only within that tenant (and subject), and every read through it is audited.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Json;
use crate::extract::Path;
use crate::AppState;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use herald_core::Access;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Longest lifetime of a token.
pub const MAX_TTL_US: i64 = 24 * 3600 * 1_000_000;
const DEFAULT_TTL_US: i64 = 15 * 60 * 1_000_000;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub jti: String,
    /// The user the token shows events to (`user:42`).
    pub principal: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Expiry, microseconds since the epoch.
    pub exp: i64,
}

impl Claims {
    /// What the token's holder may read.
    pub fn access(&self) -> Access {
        Access {
            admin: false,
            authenticated: true,
            principals: vec![self.principal.clone(), format!("tenant:{}", self.tenant)],
            only_tenants: Some(vec![self.tenant.clone()]),
            only_subject: self.subject.clone(),
        }
    }
}

fn key(secret: &[u8]) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret)
}

/// Signs claims into a token.
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let tag = ring::hmac::sign(&key(secret), payload.as_bytes());
    format!("hvt_{payload}.{}", B64.encode(tag.as_ref()))
}

/// Checks a token's signature and expiry (constant-time comparison of the signature).
pub fn verify(secret: &[u8], token: &str, now_us: i64) -> Result<Claims, &'static str> {
    let body = token.strip_prefix("hvt_").ok_or("not a viewer token")?;
    let (payload, sig) = body.split_once('.').ok_or("malformed viewer token")?;
    let sig = B64.decode(sig).map_err(|_| "malformed viewer token")?;
    ring::hmac::verify(&key(secret), payload.as_bytes(), &sig)
        .map_err(|_| "the viewer token's signature does not match")?;
    let json = B64.decode(payload).map_err(|_| "malformed viewer token")?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| "malformed viewer token")?;
    if now_us >= claims.exp {
        return Err("the viewer token expired");
    }
    Ok(claims)
}

/// `POST /v1/viewer-tokens` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewViewerToken {
    /// The user to show events to, e.g. `user:42`.
    pub principal: String,
    /// The tenant the events belong to.
    pub tenant: String,
    /// Only events about this subject (one resource).
    pub subject: Option<String>,
    /// Lifetime (`15m` by default, at most `24h`).
    pub ttl: Option<String>,
}

/// The answer to `POST /v1/viewer-tokens`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ViewerToken {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Its id, to revoke it.
    pub id: String,
    pub expires: String,
}

/// `POST /v1/viewer-tokens`
#[utoipa::path(
    post, path = "/v1/viewer-tokens", tag = "keys",
    request_body = NewViewerToken,
    responses(
        (status = 201, description = "A signed, short-lived token for one user's events", body = ViewerToken),
        (status = 400, description = "Invalid request", body = herald_wire::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not read that tenant's events", body = herald_wire::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn issue(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<NewViewerToken>,
) -> Result<Response, ApiError> {
    let access = caller.read()?.clone();
    if caller.viewer.is_some() {
        return Err(ApiError::Forbidden(
            "a viewer token cannot issue viewer tokens".into(),
        ));
    }
    herald_core::event::validate_principal(&req.principal, st.limits.max_name_len)
        .map_err(|e| ApiError::BadRequest(format!("principal: {e}")))?;
    if req.tenant.is_empty() || req.tenant.len() > st.limits.max_name_len {
        return Err(ApiError::BadRequest(
            "tenant: 1 to max_name_len bytes".into(),
        ));
    }
    // A read key issues tokens only for its own tenants; within one, for any principal
    // (the host application of a tenant shows each of its users their own events, which
    // the key itself may not read): give such keys to that tenant's host application only.
    let tenant_ok = access
        .only_tenants
        .as_ref()
        .is_none_or(|o| o.contains(&req.tenant))
        && (access.admin || access.tenants().any(|t| t == req.tenant));
    if !tenant_ok {
        return Err(ApiError::Forbidden(format!(
            "this key may not issue tokens for tenant `{}`",
            req.tenant
        )));
    }
    let now = crate::query::now_micros();
    let ttl = match req.ttl.as_deref() {
        None => DEFAULT_TTL_US,
        Some(t) => herald_core::timespec::parse_duration(t)
            .filter(|d| *d > 0 && *d <= MAX_TTL_US)
            .ok_or_else(|| ApiError::BadRequest(format!("ttl `{t}`: a duration up to 24h")))?,
    };
    let claims = Claims {
        jti: crate::auth::new_key_id()?.replacen("key_", "vt_", 1),
        principal: req.principal,
        tenant: req.tenant,
        subject: req.subject,
        exp: now + ttl,
    };
    let token = sign(&st.viewer_secret().await?, &claims);
    crate::audit::record(
        &st,
        "herald.audit.viewer_token.issued",
        &caller,
        serde_json::json!({"token": claims.jti, "principal": claims.principal,
                           "tenant": claims.tenant, "subject": claims.subject}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(ViewerToken {
            token,
            id: claims.jti,
            expires: herald_core::timespec::format_rfc3339(claims.exp),
        }),
    )
        .into_response())
}

/// `DELETE /v1/viewer-tokens/{id}`
#[utoipa::path(
    delete, path = "/v1/viewer-tokens/{id}", tag = "keys",
    params(("id" = String, Path, description = "The token's id")),
    responses((status = 204, description = "Revoked (at once on this server, within 5 s elsewhere)"))
)]
pub async fn revoke(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // A token id does not say which tenant it is for: only admins revoke.
    caller.admin()?;
    let now = crate::query::now_micros();
    st.keys
        .revoke_token(id.clone(), now + MAX_TTL_US, now)
        .await?;
    st.key_cache.clear();
    crate::audit::record(
        &st,
        "herald.audit.viewer_token.revoked",
        &caller,
        serde_json::json!({"token": id}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_refuse_tampering_and_expiry() {
        let secret = [7u8; 32];
        let c = Claims {
            jti: "vt_1".into(),
            principal: "user:42".into(),
            tenant: "acme".into(),
            subject: None,
            exp: 1_000,
        };
        let t = sign(&secret, &c);
        assert_eq!(verify(&secret, &t, 999), Ok(c.clone()));
        assert_eq!(verify(&secret, &t, 1_000), Err("the viewer token expired"));
        assert!(verify(&[8u8; 32], &t, 0).is_err(), "another server's key");
        // Changing the payload (another tenant) breaks the signature.
        let other = Claims {
            tenant: "beta".into(),
            ..c
        };
        let forged_payload = sign(&secret, &other);
        let (_, sig) = t.split_once('.').unwrap();
        let (payload, _) = forged_payload.split_once('.').unwrap();
        assert!(verify(&secret, &format!("{payload}.{sig}"), 0).is_err());
        assert!(verify(&secret, "hvt_garbage", 0).is_err());
    }
}
