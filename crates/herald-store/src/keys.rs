//! API keys: stored hashed in the database, looked up by the hash of the secret a request
//! presents.
//!
//! It exists apart from the event store so that keys can be managed without a running
//! server (`herald keys create --data DIR`, for scripts that bootstrap a deployment): it
//! opens the database with its own connection and never touches the event log. The secret
//! itself is never stored; only its SHA-256 (secrets are 256 random bits, so a slow hash
//! would add nothing), and a lookup by that hash does not compare secrets byte by byte.

use crate::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Send events only (safe to embed in an application; may be limited to types/sources).
    Ingest,
    /// Read events its principals may see.
    Read,
    /// Everything, including keys.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "ingest" => Role::Ingest,
            "read" => Role::Read,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// Limits on what a key may do beyond its role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Restrictions {
    /// Ingest: type patterns the key may send (`import.*`, `user.login`); empty: any.
    pub types: Vec<String>,
    /// Ingest: sources the key may send as; empty: any.
    pub sources: Vec<String>,
    /// Read: tenants whose events the key may read; empty: no restriction.
    pub tenants: Vec<String>,
    /// Ingest: visibility of the events it sends that do not say (default: internal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visibility: Option<herald_wire::Visibility>,
}

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub principals: Vec<String>,
    pub restrictions: Restrictions,
    /// Microseconds since the epoch.
    pub created_us: i64,
    pub expires_us: Option<i64>,
    pub revoked_us: Option<i64>,
    pub last_used_us: Option<i64>,
}

impl KeyInfo {
    /// Whether the key may be used at `now_us`.
    pub fn usable(&self, now_us: i64) -> bool {
        self.revoked_us.is_none() && self.expires_us.is_none_or(|e| now_us < e)
    }
}

/// Opens a connection to the database of a data directory (creating and migrating it when
/// needed) for the small tables kept beside the events: keys, the type registry.
pub(crate) fn open_side_connection(data_dir: &Path) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        StoreError::Database(format!(
            "cannot create data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    let conn = Connection::open(data_dir.join("herald.db"))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // Same page size as the event store gives a new database (see `sqlite`).
    conn.pragma_update(None, "page_size", 16384)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    crate::sqlite::migrate(&conn)?;
    // Creating a path index (a facet) evaluates event bodies.
    crate::sqlite::register_body_function(
        &conn,
        crate::segment::SegmentReader::new(&crate::sqlite::segments_dir(data_dir)),
    )?;
    Ok(conn)
}

/// The key table, behind its own connection.
#[derive(Clone)]
pub struct KeyStore {
    conn: Arc<Mutex<Connection>>,
}

fn row(r: &rusqlite::Row) -> rusqlite::Result<KeyInfo> {
    let role: String = r.get(2)?;
    let principals: String = r.get(3)?;
    let restrictions: String = r.get(4)?;
    Ok(KeyInfo {
        id: r.get(0)?,
        name: r.get(1)?,
        role: Role::parse(&role).unwrap_or(Role::Read),
        principals: serde_json::from_str(&principals).unwrap_or_default(),
        restrictions: serde_json::from_str(&restrictions).unwrap_or_default(),
        created_us: r.get(5)?,
        expires_us: r.get(6)?,
        revoked_us: r.get(7)?,
        last_used_us: r.get(8)?,
    })
}

const COLUMNS: &str =
    "id, name, role, principals, restrictions, created, expires, revoked, last_used";

impl KeyStore {
    /// Opens the key table of a data directory (creating and migrating the database if
    /// needed). Safe while a server runs on the same directory.
    pub fn open(data_dir: &Path) -> Result<KeyStore, StoreError> {
        let conn = open_side_connection(data_dir)?;
        Ok(KeyStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().map_err(|_| StoreError::Closed)?;
            f(&c)
        })
        .await
        .map_err(|e| StoreError::Database(format!("key task failed: {e}")))?
    }

    /// Stores a new key under the hash of its secret.
    pub async fn create(&self, key: KeyInfo, hash: [u8; 32]) -> Result<KeyInfo, StoreError> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO keys (id, name, role, principals, restrictions, hash, created, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    key.id,
                    key.name,
                    key.role.as_str(),
                    serde_json::to_string(&key.principals).unwrap_or_default(),
                    serde_json::to_string(&key.restrictions).unwrap_or_default(),
                    &hash[..],
                    key.created_us,
                    key.expires_us
                ],
            )?;
            Ok(key)
        })
        .await
    }

    /// Every key, newest first.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, StoreError> {
        self.with(|c| {
            Ok(
                c.prepare(&format!("SELECT {COLUMNS} FROM keys ORDER BY created DESC"))?
                    .query_map([], row)?
                    .collect::<Result<_, _>>()?,
            )
        })
        .await
    }

    /// The key whose secret hashes to `hash`.
    pub async fn find(&self, hash: [u8; 32]) -> Result<Option<KeyInfo>, StoreError> {
        self.with(move |c| {
            Ok(
                c.prepare_cached(&format!("SELECT {COLUMNS} FROM keys WHERE hash = ?1"))?
                    .query_row(params![&hash[..]], row)
                    .optional()?,
            )
        })
        .await
    }

    /// Marks a key revoked; false when there is no such key.
    pub async fn revoke(&self, id: String, now_us: i64) -> Result<bool, StoreError> {
        self.with(move |c| {
            Ok(c.execute(
                "UPDATE keys SET revoked = coalesce(revoked, ?2) WHERE id = ?1",
                params![id, now_us],
            )? > 0)
        })
        .await
    }

    /// Records that a key was used (callers do this at most now and then).
    pub async fn touch(&self, id: String, now_us: i64) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "UPDATE keys SET last_used = ?2 WHERE id = ?1",
                params![id, now_us],
            )?;
            Ok(())
        })
        .await
    }

    /// The key that signs viewer tokens: `candidate` (fresh random bytes) becomes it unless
    /// one was stored before.
    pub async fn signing_key(&self, candidate: [u8; 32]) -> Result<Vec<u8>, StoreError> {
        self.with(move |c| {
            let hex: String = candidate.iter().map(|b| format!("{b:02x}")).collect();
            c.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('viewer_token_key', ?1)",
                params![hex],
            )?;
            let stored: String = c.query_row(
                "SELECT value FROM meta WHERE key = 'viewer_token_key'",
                [],
                |r| r.get(0),
            )?;
            (0..stored.len() / 2)
                .map(|i| u8::from_str_radix(&stored[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| StoreError::Database("the viewer token key is corrupt".into()))
        })
        .await
    }

    /// Revokes a viewer token until it expires.
    pub async fn revoke_token(
        &self,
        jti: String,
        expires_us: i64,
        now_us: i64,
    ) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "DELETE FROM revoked_tokens WHERE expires < ?1",
                params![now_us],
            )?;
            c.execute(
                "INSERT OR IGNORE INTO revoked_tokens (jti, expires) VALUES (?1, ?2)",
                params![jti, expires_us],
            )?;
            Ok(())
        })
        .await
    }

    /// Whether the key with this id exists and may be used at `now_us`.
    pub async fn usable(&self, id: String, now_us: i64) -> Result<bool, StoreError> {
        self.with(move |c| {
            Ok(
                c.prepare_cached(&format!("SELECT {COLUMNS} FROM keys WHERE id = ?1"))?
                    .query_row(params![id], row)
                    .optional()?
                    .is_some_and(|k| k.usable(now_us)),
            )
        })
        .await
    }

    /// Whether a viewer token was revoked.
    pub async fn token_revoked(&self, jti: String) -> Result<bool, StoreError> {
        self.with(move |c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM revoked_tokens WHERE jti = ?1")?
                    .exists(params![jti])?,
            )
        })
        .await
    }

    /// Whether any key exists (a first start creates an admin key when none does).
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.query_row("SELECT count(*) FROM keys", [], |r| r.get::<_, i64>(0))? == 0)
        })
        .await
    }
}
