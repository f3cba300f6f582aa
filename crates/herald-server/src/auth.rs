//! Who is calling: API keys from `Authorization: Bearer`, the caller's role and what it may
//! read, and the key management endpoints (`/v1/keys`).
//!
//! It exists so that every handler receives a resolved [`Caller`] and asks it for what it
//! needs (`read()`, `ingest()`, `admin()`), and the read paths pass `caller.access` down to
//! the store, which enforces it in its queries (see `herald_core::access` for the rule).
//!
//! Authentication is on when `auth.mode` is `required`, or `auto` and the server listens on
//! anything but loopback. When it is off, a request without a key acts as an admin (the
//! one-command local run); a request with a key is still held to that key.
//!
//! Secrets are 256 random bits (`hrl_` + base64url), shown once, stored as SHA-256. Keys are
//! cached for a few seconds after a lookup; revoking through the API clears the cache at
//! once, revoking from the CLI takes effect within [`CACHE_TTL`].

use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine;
use herald_core::Access;
use herald_store::{KeyInfo, KeyStore, Restrictions, Role};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a looked-up key is trusted before it is read again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// `last_used` is written at most this often per key.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// A new random secret.
pub fn new_secret() -> Result<String, ApiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::Internal("the system random generator failed".into()))?;
    Ok(format!(
        "hrl_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A key id: short, random, not secret.
pub fn new_key_id() -> Result<String, ApiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 9];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::Internal("the system random generator failed".into()))?;
    Ok(format!(
        "key_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The resolved caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key presented, if any.
    pub key: Option<KeyInfo>,
    /// What the caller may do (`None`: anonymous with authentication on).
    pub role: Option<Role>,
    /// What the caller may read.
    pub access: Access,
    /// The viewer token presented, if the caller is a host application's user.
    pub viewer: Option<crate::viewer::Claims>,
}

impl Caller {
    fn anonymous() -> Caller {
        Caller {
            key: None,
            role: None,
            access: Access::public_only(),
            viewer: None,
        }
    }

    /// Authentication is off and no key was given.
    fn local() -> Caller {
        Caller {
            key: None,
            role: Some(Role::Admin),
            access: Access::all(),
            viewer: None,
        }
    }

    fn from_key(key: KeyInfo) -> Caller {
        let only_tenants =
            (!key.restrictions.tenants.is_empty()).then(|| key.restrictions.tenants.clone());
        let access = Access {
            admin: key.role == Role::Admin,
            authenticated: true,
            principals: key.principals.clone(),
            only_tenants,
            only_subject: None,
        };
        Caller {
            role: Some(key.role),
            key: Some(key),
            access,
            viewer: None,
        }
    }

    /// May read events; returns what it may read.
    pub fn read(&self) -> Result<&Access, ApiError> {
        match self.role {
            Some(Role::Read | Role::Admin) => Ok(&self.access),
            Some(Role::Ingest) => Err(ApiError::Forbidden("this key may only send events".into())),
            None => Err(ApiError::Unauthorized(
                "reading events needs a key: Authorization: Bearer <key>".into(),
            )),
        }
    }

    /// May send events.
    pub fn ingest(&self) -> Result<(), ApiError> {
        match self.role {
            Some(Role::Ingest | Role::Admin) => Ok(()),
            Some(Role::Read) => Err(ApiError::Forbidden("this key may only read events".into())),
            None => Err(ApiError::Unauthorized(
                "sending events needs a key: Authorization: Bearer <key>".into(),
            )),
        }
    }

    fn from_viewer(claims: crate::viewer::Claims) -> Caller {
        Caller {
            key: None,
            role: Some(Role::Read),
            access: claims.access(),
            viewer: Some(claims),
        }
    }

    /// May manage keys and settings (an admin key limited to some tenants may not: it
    /// could create a key without that limit).
    pub fn admin(&self) -> Result<(), ApiError> {
        if self.viewer.is_some() {
            return Err(ApiError::Forbidden(
                "a viewer token only reads events".into(),
            ));
        }
        if self.role == Some(Role::Admin) && self.access.only_tenants.is_some() {
            return Err(ApiError::Forbidden(
                "an admin key limited to some tenants cannot manage keys".into(),
            ));
        }
        match self.role {
            Some(Role::Admin) => Ok(()),
            Some(_) => Err(ApiError::Forbidden("this needs an admin key".into())),
            None => Err(ApiError::Unauthorized(
                "this needs an admin key: Authorization: Bearer <key>".into(),
            )),
        }
    }

    /// Visibility of the events this caller sends that do not say.
    pub fn default_visibility(&self) -> Option<herald_wire::Visibility> {
        self.key.as_ref()?.restrictions.visibility
    }

    /// Why this caller may not send an event of this type and source, if it may not.
    pub fn refuses(&self, ty: &str, source: &str) -> Option<String> {
        let r = &self.key.as_ref()?.restrictions;
        if !r.types.is_empty() && !r.types.iter().any(|p| type_matches(p, ty)) {
            return Some(format!("this key may not send events of type `{ty}`"));
        }
        if !r.sources.is_empty() && !r.sources.iter().any(|s| s == source) {
            return Some(format!(
                "this key may not send events from source `{source}`"
            ));
        }
        None
    }
}

/// A type pattern: an exact type, or `prefix.*` for the types under `prefix.` (anchored:
/// `import.*` does not match `important.x` nor `import` itself).
pub fn type_matches(pattern: &str, ty: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(prefix) => ty
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1),
        None => pattern == ty,
    }
}

/// A looked-up key (or its absence) and when it was looked up.
type Cached = (Option<KeyInfo>, Instant);

/// Recently looked-up keys, by hash.
#[derive(Default)]
pub struct KeyCache {
    keys: Mutex<HashMap<[u8; 32], Cached>>,
    /// Viewer token ids and whether they are revoked.
    tokens: Mutex<HashMap<String, (bool, Instant)>>,
    touched: Mutex<HashMap<String, Instant>>,
}

impl KeyCache {
    fn get(&self, hash: &[u8; 32]) -> Option<Option<KeyInfo>> {
        let map = self.keys.lock().ok()?;
        let (k, at) = map.get(hash)?;
        (at.elapsed() < CACHE_TTL).then(|| k.clone())
    }

    fn put(&self, hash: [u8; 32], key: Option<KeyInfo>) {
        if let Ok(mut map) = self.keys.lock() {
            if map.len() > 10_000 {
                map.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            }
            map.insert(hash, (key, Instant::now()));
        }
    }

    /// Forgets every cached key and token (after a revocation).
    pub fn clear(&self) {
        if let Ok(mut map) = self.keys.lock() {
            map.clear();
        }
        if let Ok(mut map) = self.tokens.lock() {
            map.clear();
        }
    }

    fn token(&self, jti: &str) -> Option<bool> {
        let map = self.tokens.lock().ok()?;
        let (revoked, at) = map.get(jti)?;
        (at.elapsed() < CACHE_TTL).then_some(*revoked)
    }

    fn put_token(&self, jti: String, revoked: bool) {
        if let Ok(mut map) = self.tokens.lock() {
            if map.len() > 10_000 {
                map.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            }
            map.insert(jti, (revoked, Instant::now()));
        }
    }

    fn should_touch(&self, id: &str) -> bool {
        let Ok(mut t) = self.touched.lock() else {
            return false;
        };
        match t.get(id) {
            Some(at) if at.elapsed() < TOUCH_EVERY => false,
            _ => {
                t.insert(id.to_owned(), Instant::now());
                true
            }
        }
    }
}

/// Per-caller token buckets (`auth.rate_limit`, `auth.rate_burst`).
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any limit applies (`auth.rate_limit` above 0).
    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes one request from `who`'s bucket; `Err(seconds)` to wait when it is empty.
    pub fn take(&self, who: &str) -> Result<(), u32> {
        if !self.enabled() {
            return Ok(());
        }
        let Ok(mut b) = self.buckets.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        if b.len() > 100_000 {
            // Forget callers whose buckets are full again.
            let (rate, burst) = (self.rate, self.burst);
            b.retain(|_, (t, at)| *t + at.elapsed().as_secs_f64() * rate < burst);
        }
        let (tokens, at) = b.entry(who.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u32)
        }
    }
}

fn bearer(req: &Request) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::Unauthorized("the Authorization header is not ASCII".into()))?;
    match v.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim().to_owned()))
        }
        _ => Err(ApiError::Unauthorized(
            "use Authorization: Bearer <key>".into(),
        )),
    }
}

/// Resolves the caller of every request and stores it in the request's extensions.
pub async fn authenticate(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = match bearer(&req) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let caller = match resolve(&st, token).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if st.rate.enabled() {
        let who = match (&caller.key, &caller.viewer) {
            (Some(k), _) => k.id.clone(),
            (None, Some(v)) => v.jti.clone(),
            (None, None) => req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string())
                .unwrap_or_else(|| "anonymous".into()),
        };
        if let Err(secs) = st.rate.take(&who) {
            return ApiError::TooManyRequests {
                detail: format!("more than {} requests per second", st.rate.rate),
                retry_after_secs: secs,
            }
            .into_response();
        }
    }
    // Every read through a viewer token is audited (after the answer, off its path).
    let audit = caller.viewer.as_ref().map(|_| {
        (
            caller.clone(),
            req.uri().path().to_owned(),
            req.uri().query().unwrap_or("").to_owned(),
        )
    });
    req.extensions_mut().insert(caller);
    let res = next.run(req).await;
    if let Some((caller, path, query)) = audit {
        let status = res.status().as_u16();
        tokio::spawn(async move {
            let v = caller.viewer.as_ref();
            crate::audit::record(
                &st,
                "herald.audit.viewer.read",
                &caller,
                serde_json::json!({
                    "token": v.map(|c| c.jti.as_str()),
                    "principal": v.map(|c| c.principal.as_str()),
                    "tenant": v.map(|c| c.tenant.as_str()),
                    "path": path, "query": query, "status": status,
                }),
            )
            .await;
        });
    }
    res
}

async fn resolve(st: &AppState, token: Option<String>) -> Result<Caller, ApiError> {
    let Some(secret) = token else {
        return Ok(if st.auth_required {
            Caller::anonymous()
        } else {
            Caller::local()
        });
    };
    let now = crate::query::now_micros();
    if secret.starts_with("hvt_") {
        let claims = crate::viewer::verify(&st.viewer_secret().await?, &secret, now)
            .map_err(|e| ApiError::Unauthorized(e.into()))?;
        let revoked = match st.key_cache.token(&claims.jti) {
            Some(r) => r,
            None => {
                let r = st.keys.token_revoked(claims.jti.clone()).await?;
                st.key_cache.put_token(claims.jti.clone(), r);
                r
            }
        };
        if revoked {
            return Err(ApiError::Unauthorized(
                "the viewer token was revoked".into(),
            ));
        }
        return Ok(Caller::from_viewer(claims));
    }
    let hash = hash_secret(&secret);
    let key = match st.key_cache.get(&hash) {
        Some(k) => k,
        None => {
            let k = st.keys.find(hash).await?;
            st.key_cache.put(hash, k.clone());
            k
        }
    };
    let key = key
        .filter(|k| k.usable(now))
        .ok_or_else(|| ApiError::Unauthorized("the key is unknown, revoked or expired".into()))?;
    if st.key_cache.should_touch(&key.id) {
        let keys = st.keys.clone();
        let id = key.id.clone();
        tokio::spawn(async move {
            if let Err(e) = keys.touch(id, now).await {
                tracing::warn!(error = %e, "cannot record a key's last use");
            }
        });
    }
    Ok(Caller::from_key(key))
}

/// `POST /v1/keys` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// What the key is for (shown in listings).
    pub name: String,
    /// `ingest`, `read` or `admin`.
    pub role: String,
    /// `user:…`, `group:…`, `tenant:…`.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Ingest: type patterns (`import.*`) the key may send; empty: any.
    #[serde(default)]
    pub types: Vec<String>,
    /// Ingest: sources the key may send as; empty: any.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Read: tenants whose events the key may read; empty: any it may see.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Ingest: visibility of events that do not say (`public`, `internal`, `private`).
    #[serde(default)]
    pub visibility: Option<String>,
    /// Expiry: a duration from now (`30d`) or an RFC 3339 time.
    pub expires: Option<String>,
}

/// A key as listed (never with its secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub role: String,
    pub principals: Vec<String>,
    pub types: Vec<String>,
    pub sources: Vec<String>,
    pub tenants: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visibility: Option<String>,
    pub created: String,
    pub expires: Option<String>,
    pub revoked: Option<String>,
    pub last_used: Option<String>,
}

impl From<&KeyInfo> for KeyView {
    fn from(k: &KeyInfo) -> KeyView {
        let t = herald_core::timespec::format_rfc3339;
        KeyView {
            id: k.id.clone(),
            name: k.name.clone(),
            role: k.role.as_str().to_owned(),
            principals: k.principals.clone(),
            types: k.restrictions.types.clone(),
            sources: k.restrictions.sources.clone(),
            tenants: k.restrictions.tenants.clone(),
            visibility: k.restrictions.visibility.map(|v| v.as_str().to_owned()),
            created: t(k.created_us),
            expires: k.expires_us.map(t),
            revoked: k.revoked_us.map(t),
            last_used: k.last_used_us.map(t),
        }
    }
}

/// The answer to `POST /v1/keys`: the key and, once, its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: KeyView,
    /// The secret: shown this once, stored only as a hash.
    pub secret: String,
}

/// Validates a key request into a stored key (shared by the API and the CLI).
pub fn build_key(req: NewKey, now_us: i64, max_name_len: usize) -> Result<KeyInfo, ApiError> {
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiError::BadRequest(format!("role `{}`: use ingest, read or admin", req.role))
    })?;
    if req.name.trim().is_empty() || req.name.len() > 200 {
        return Err(ApiError::BadRequest("name: 1 to 200 characters".into()));
    }
    for p in &req.principals {
        herald_core::event::validate_principal(p, max_name_len)
            .map_err(|e| ApiError::BadRequest(format!("principals: {e}")))?;
    }
    for t in &req.types {
        let body = t.strip_suffix(".*").unwrap_or(t);
        herald_core::event::validate_type(body)
            .map_err(|e| ApiError::BadRequest(format!("types: `{t}`: {e}")))?;
    }
    if role != Role::Ingest && (!req.types.is_empty() || !req.sources.is_empty()) {
        return Err(ApiError::BadRequest(
            "types and sources restrict ingest keys only".into(),
        ));
    }
    if role == Role::Ingest && !req.tenants.is_empty() {
        return Err(ApiError::BadRequest(
            "tenants restrict read and admin keys only".into(),
        ));
    }
    let visibility = req
        .visibility
        .as_deref()
        .map(|v| {
            v.parse::<herald_wire::Visibility>().map_err(|_| {
                ApiError::BadRequest(format!("visibility `{v}`: public, internal or private"))
            })
        })
        .transpose()?;
    if visibility.is_some() && role == Role::Read {
        return Err(ApiError::BadRequest(
            "a default visibility applies to keys that send events".into(),
        ));
    }
    let expires_us = req
        .expires
        .as_deref()
        .map(|e| match herald_core::timespec::parse_duration(e) {
            Some(d) => Ok(now_us + d),
            None => herald_core::timespec::parse_rfc3339(e).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "expires `{e}`: use a duration (30d) or an RFC 3339 time"
                ))
            }),
        })
        .transpose()?;
    Ok(KeyInfo {
        id: new_key_id()?,
        name: req.name,
        role,
        principals: req.principals,
        restrictions: Restrictions {
            types: req.types,
            sources: req.sources,
            tenants: req.tenants,
            visibility,
        },
        created_us: now_us,
        expires_us,
        revoked_us: None,
        last_used_us: None,
    })
}

/// `POST /v1/keys`
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = NewKey,
    responses(
        (status = 201, description = "The key, with its secret (shown once)", body = CreatedKey),
        (status = 400, description = "Invalid request", body = herald_wire::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad key", body = herald_wire::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin key", body = herald_wire::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_key(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<NewKey>,
) -> Result<Response, ApiError> {
    caller.admin()?;
    let now = crate::query::now_micros();
    let key = build_key(req, now, st.limits.max_name_len)?;
    let secret = new_secret()?;
    let key = st.keys.create(key, hash_secret(&secret)).await?;
    tracing::info!(key = %key.id, role = key.role.as_str(), "key created");
    crate::audit::record(
        &st,
        "herald.audit.key.created",
        &caller,
        serde_json::json!({"key": key.id, "name": key.name, "role": key.role.as_str(),
                           "principals": key.principals}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: KeyView::from(&key),
            secret,
        }),
    )
        .into_response())
}

/// `GET /v1/keys`
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    responses((status = 200, description = "Every key, newest first (without secrets)", body = Vec<KeyView>))
)]
pub async fn list_keys(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    caller.admin()?;
    let keys = st.keys.list().await?;
    let views: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
    Ok(Json(views).into_response())
}

/// `DELETE /v1/keys/{id}`
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Revoked (at once, on this server)"),
        (status = 404, description = "No such key", body = herald_wire::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_key(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.admin()?;
    if !st
        .keys
        .revoke(id.clone(), crate::query::now_micros())
        .await?
    {
        return Err(ApiError::NotFound(format!("no key `{id}`")));
    }
    st.key_cache.clear();
    tracing::info!(key = %id, "key revoked");
    crate::audit::record(
        &st,
        "herald.audit.key.revoked",
        &caller,
        serde_json::json!({"key": id}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An unrestricted admin key named `name`.
fn admin_key(name: &str) -> Result<KeyInfo, ApiError> {
    build_key(
        NewKey {
            name: name.into(),
            role: "admin".into(),
            principals: Vec::new(),
            types: Vec::new(),
            sources: Vec::new(),
            tenants: Vec::new(),
            visibility: None,
            expires: None,
        },
        crate::query::now_micros(),
        256,
    )
}

/// Makes sure a key with this secret exists as an admin key (`HERALD_BOOTSTRAP_ADMIN_KEY`).
pub async fn ensure_bootstrap_key(keys: &KeyStore, secret: &str) -> Result<(), ApiError> {
    if secret.len() < 16 {
        return Err(ApiError::BadRequest(
            "HERALD_BOOTSTRAP_ADMIN_KEY must be at least 16 characters".into(),
        ));
    }
    let hash = hash_secret(secret);
    if keys.find(hash).await?.is_some() {
        return Ok(());
    }
    keys.create(
        admin_key("bootstrap admin (HERALD_BOOTSTRAP_ADMIN_KEY)")?,
        hash,
    )
    .await?;
    Ok(())
}

/// On a first start (no key at all), creates an admin key and returns its secret.
pub async fn first_admin_key(keys: &KeyStore) -> Result<Option<String>, ApiError> {
    if !keys.is_empty().await? {
        return Ok(None);
    }
    let secret = new_secret()?;
    keys.create(admin_key("first admin key")?, hash_secret(&secret))
        .await?;
    Ok(Some(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_patterns_are_anchored() {
        assert!(type_matches("import.*", "import.failed"));
        assert!(type_matches("import.*", "import.job.failed"));
        assert!(!type_matches("import.*", "import"));
        assert!(!type_matches("import.*", "important.x"));
        assert!(type_matches("user.login", "user.login"));
        assert!(!type_matches("user.login", "user.login.failed"));
    }

    #[test]
    fn secrets_are_random_and_hash_stably() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("hrl_") && a.len() == 4 + 43);
        assert_eq!(hash_secret(&a), hash_secret(&a));
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }
}
