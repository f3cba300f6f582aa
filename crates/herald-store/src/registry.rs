//! The type registry's tables: type settings, schema versions, the per-type catalog counters,
//! the quarantine and the opt-out list.
//!
//! It exists apart from the event store for the same reason as [`crate::keys`]: these are
//! small tables written rarely (a settings change, a quarantined event, a counter flush every
//! few seconds) that must not go through the event log, and `herald types push` can reach
//! them without opening the event segments. It uses its own connection to the same database file;
//! its writes wait for the event indexer's open transaction (at most about a second).

use crate::StoreError;
use herald_core::types::TypeSettings;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A published schema version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaVersion {
    pub version: String,
    pub schema: serde_json::Value,
    pub published_us: i64,
    /// Why a breaking change was published within a major version anyway (`force`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced: Option<String>,
}

/// A registered type or pattern with its settings and schema versions (oldest first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeRecord {
    pub pattern: String,
    pub settings: TypeSettings,
    pub updated_us: i64,
    pub schemas: Vec<SchemaVersion>,
}

/// Counter increments for one type, flushed by the server every few seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatDelta {
    pub ty: String,
    pub first_us: i64,
    pub last_us: i64,
    pub received: u64,
    pub valid: u64,
    pub invalid: u64,
    pub sampled_out: u64,
    pub dropped: u64,
    pub stored: u64,
    pub quarantined: u64,
    /// Stored events per hour (hour = microseconds / 3.6e9).
    pub hours: Vec<(i64, u64)>,
}

/// A type as the catalog shows it: every type ever seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TypeStats {
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    pub received: u64,
    pub valid: u64,
    pub invalid: u64,
    pub sampled_out: u64,
    pub dropped: u64,
    pub stored: u64,
    pub quarantined: u64,
    pub stored_24h: u64,
    pub stored_7d: u64,
}

/// One quarantined event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineRow {
    pub qid: i64,
    pub received_us: i64,
    pub ty: String,
    pub source: String,
    pub id: String,
    /// `schema`, `schema_version` or `processor`.
    pub reason: String,
    pub errors: serde_json::Value,
    /// The key (or `anonymous`) that sent it.
    pub producer: String,
    /// The event as received (canonical JSON), cut at the configured size when `truncated`.
    pub body: String,
    pub truncated: bool,
    /// How many times it was sent and quarantined.
    pub attempts: i64,
}

/// A new quarantine entry.
#[derive(Debug, Clone)]
pub struct NewQuarantined {
    pub received_us: i64,
    pub ty: String,
    pub source: String,
    pub id: String,
    pub reason: String,
    pub errors: serde_json::Value,
    pub producer: String,
    pub body: String,
    pub truncated: bool,
}

/// The registry tables behind one connection.
#[derive(Clone)]
pub struct RegistryStore {
    conn: Arc<Mutex<Connection>>,
}

const HOUR_US: i64 = 3_600_000_000;

impl RegistryStore {
    pub fn open(data_dir: &Path) -> Result<RegistryStore, StoreError> {
        let conn = crate::keys::open_side_connection(data_dir)?;
        Ok(RegistryStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection on the blocking pool.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().map_err(|_| StoreError::Closed)?;
            f(&c)
        })
        .await
        .map_err(|e| StoreError::Database(format!("registry task failed: {e}")))?
    }

    /// The same, for callers outside an async runtime (start-up, the CLI).
    pub fn with_blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let c = self.conn.lock().map_err(|_| StoreError::Closed)?;
        f(&c)
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Database(format!("stored registry JSON is invalid: {e}"))
}

/// Every registered type with its schemas.
pub fn load_types(c: &Connection) -> Result<Vec<TypeRecord>, StoreError> {
    let mut out: Vec<TypeRecord> = Vec::new();
    let mut st = c.prepare("SELECT pattern, settings, updated FROM types ORDER BY pattern")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (pattern, settings, updated_us) = row?;
        out.push(TypeRecord {
            pattern,
            settings: serde_json::from_str(&settings).map_err(json_err)?,
            updated_us,
            schemas: Vec::new(),
        });
    }
    let mut st = c.prepare(
        "SELECT pattern, version, schema, published, forced FROM schemas ORDER BY pattern, major, minor, patch",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    for row in rows {
        let (pattern, version, schema, published_us, forced) = row?;
        let sv = SchemaVersion {
            version,
            schema: serde_json::from_str(&schema).map_err(json_err)?,
            published_us,
            forced,
        };
        match out.iter_mut().find(|t| t.pattern == pattern) {
            Some(t) => t.schemas.push(sv),
            None => out.push(TypeRecord {
                pattern,
                settings: TypeSettings::default(),
                updated_us: published_us,
                schemas: vec![sv],
            }),
        }
    }
    Ok(out)
}

pub fn put_type(
    c: &Connection,
    pattern: &str,
    settings: &TypeSettings,
    now_us: i64,
) -> Result<(), StoreError> {
    let text = serde_json::to_string(settings).map_err(json_err)?;
    c.execute(
        "INSERT INTO types (pattern, settings, updated) VALUES (?1, ?2, ?3)
         ON CONFLICT(pattern) DO UPDATE SET settings = excluded.settings, updated = excluded.updated",
        params![pattern, text, now_us],
    )?;
    Ok(())
}

/// Removes a type's settings and schemas; whether it existed.
pub fn delete_type(c: &Connection, pattern: &str) -> Result<bool, StoreError> {
    let tx = c.unchecked_transaction()?;
    let n = tx.execute("DELETE FROM types WHERE pattern = ?1", params![pattern])?
        + tx.execute("DELETE FROM schemas WHERE pattern = ?1", params![pattern])?;
    tx.commit()?;
    Ok(n > 0)
}

/// Stores a schema version; an existing version is only "published again" when identical.
pub fn put_schema(
    c: &Connection,
    pattern: &str,
    version: &semver::Version,
    schema: &serde_json::Value,
    forced: Option<&str>,
    now_us: i64,
) -> Result<bool, StoreError> {
    let text = serde_json::to_string(schema).map_err(json_err)?;
    let existing: Option<String> = c
        .query_row(
            "SELECT schema FROM schemas WHERE pattern = ?1 AND major = ?2 AND minor = ?3 AND patch = ?4",
            params![pattern, version.major as i64, version.minor as i64, version.patch as i64],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(e) = existing {
        let same = serde_json::from_str::<serde_json::Value>(&e).ok().as_ref() == Some(schema);
        return if same {
            Ok(false)
        } else {
            Err(StoreError::Conflict(format!(
                "version {version} of `{pattern}` is already published with other content; publish a new version"
            )))
        };
    }
    c.execute(
        "INSERT INTO schemas (pattern, version, major, minor, patch, schema, published, forced)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            pattern,
            version.to_string(),
            version.major as i64,
            version.minor as i64,
            version.patch as i64,
            text,
            now_us,
            forced
        ],
    )?;
    c.execute(
        "INSERT INTO types (pattern, settings, updated) VALUES (?1, '{}', ?2) ON CONFLICT(pattern) DO NOTHING",
        params![pattern, now_us],
    )?;
    Ok(true)
}

/// Adds counter increments (one transaction for the whole flush).
pub fn record_stats(c: &Connection, deltas: &[StatDelta]) -> Result<(), StoreError> {
    let tx = c.unchecked_transaction()?;
    {
        let mut up = tx.prepare_cached(
            "INSERT INTO type_stats (type, first_seen, last_seen, received, valid, invalid, sampled_out, dropped, stored, quarantined)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT(type) DO UPDATE SET
               first_seen = min(first_seen, excluded.first_seen),
               last_seen = max(last_seen, excluded.last_seen),
               received = received + excluded.received,
               valid = valid + excluded.valid,
               invalid = invalid + excluded.invalid,
               sampled_out = sampled_out + excluded.sampled_out,
               dropped = dropped + excluded.dropped,
               stored = stored + excluded.stored,
               quarantined = quarantined + excluded.quarantined",
        )?;
        let mut vol = tx.prepare_cached(
            "INSERT INTO type_volume (type, hour, n) VALUES (?1, ?2, ?3)
             ON CONFLICT(type, hour) DO UPDATE SET n = n + excluded.n",
        )?;
        for d in deltas {
            up.execute(params![
                d.ty,
                d.first_us,
                d.last_us,
                d.received as i64,
                d.valid as i64,
                d.invalid as i64,
                d.sampled_out as i64,
                d.dropped as i64,
                d.stored as i64,
                d.quarantined as i64
            ])?;
            for (hour, n) in &d.hours {
                vol.execute(params![d.ty, hour, *n as i64])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// Drops hourly volumes older than eight days.
pub fn prune_volume(c: &Connection, now_us: i64) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM type_volume WHERE hour < ?1",
        params![now_us / HOUR_US - 8 * 24],
    )?;
    Ok(())
}

/// Every type ever seen, with its counters and recent volume.
pub fn catalog(c: &Connection, now_us: i64) -> Result<Vec<(String, TypeStats)>, StoreError> {
    let hour = now_us / HOUR_US;
    let mut st = c.prepare(
        "SELECT s.type, s.first_seen, s.last_seen, s.received, s.valid, s.invalid, s.sampled_out, s.dropped, s.stored, s.quarantined,
           (SELECT coalesce(sum(n), 0) FROM type_volume v WHERE v.type = s.type AND v.hour > ?1),
           (SELECT coalesce(sum(n), 0) FROM type_volume v WHERE v.type = s.type AND v.hour > ?2)
         FROM type_stats s ORDER BY s.type",
    )?;
    let rows = st.query_map(params![hour - 24, hour - 7 * 24], |r| {
        Ok((
            r.get::<_, String>(0)?,
            TypeStats {
                first_seen_us: r.get(1)?,
                last_seen_us: r.get(2)?,
                received: r.get::<_, i64>(3)? as u64,
                valid: r.get::<_, i64>(4)? as u64,
                invalid: r.get::<_, i64>(5)? as u64,
                sampled_out: r.get::<_, i64>(6)? as u64,
                dropped: r.get::<_, i64>(7)? as u64,
                stored: r.get::<_, i64>(8)? as u64,
                quarantined: r.get::<_, i64>(9)? as u64,
                stored_24h: r.get::<_, i64>(10)? as u64,
                stored_7d: r.get::<_, i64>(11)? as u64,
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Fills the catalog from events stored before it existed (migration 5).
pub(crate) fn backfill_stats(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(
        "INSERT INTO type_stats (type, first_seen, last_seen, received, valid, invalid, sampled_out, dropped, stored, quarantined)
         SELECT type, min(recorded), max(recorded), count(*), 0, 0, 0, 0, count(*), 0 FROM events GROUP BY type;",
    )?;
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    c.execute(
        "INSERT INTO type_volume (type, hour, n)
         SELECT type, recorded / ?1, count(*) FROM events WHERE recorded >= ?2 GROUP BY 1, 2",
        params![HOUR_US, now_us - 8 * 24 * HOUR_US],
    )?;
    Ok(())
}

/// Quarantines events (one transaction); an event sent again replaces its entry and counts
/// an attempt. Keeps at most `max_rows` entries, dropping the oldest; returns how many were
/// dropped.
pub fn quarantine(
    c: &Connection,
    rows: &[NewQuarantined],
    max_rows: u64,
) -> Result<u64, StoreError> {
    let tx = c.unchecked_transaction()?;
    {
        let mut ins = tx.prepare_cached(
            "INSERT INTO quarantine (received, type, source, id, reason, errors, producer, body, truncated, attempts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1)
             ON CONFLICT(source, id) DO UPDATE SET received = excluded.received, type = excluded.type,
               reason = excluded.reason, errors = excluded.errors, producer = excluded.producer,
               body = excluded.body, truncated = excluded.truncated, attempts = attempts + 1",
        )?;
        for r in rows {
            ins.execute(params![
                r.received_us,
                r.ty,
                r.source,
                r.id,
                r.reason,
                r.errors.to_string(),
                r.producer,
                r.body,
                r.truncated
            ])?;
        }
    }
    let count: i64 = tx.query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))?;
    let excess = (count as u64).saturating_sub(max_rows);
    if excess > 0 {
        tx.execute(
            "DELETE FROM quarantine WHERE qid IN (SELECT qid FROM quarantine ORDER BY qid LIMIT ?1)",
            params![excess as i64],
        )?;
    }
    tx.commit()?;
    Ok(excess)
}

fn quarantine_row(r: &rusqlite::Row) -> rusqlite::Result<QuarantineRow> {
    let errors: String = r.get(6)?;
    Ok(QuarantineRow {
        qid: r.get(0)?,
        received_us: r.get(1)?,
        ty: r.get(2)?,
        source: r.get(3)?,
        id: r.get(4)?,
        reason: r.get(5)?,
        errors: serde_json::from_str(&errors).unwrap_or(serde_json::Value::Null),
        producer: r.get(7)?,
        body: r.get(8)?,
        truncated: r.get(9)?,
        attempts: r.get(10)?,
    })
}

const Q_COLUMNS: &str =
    "qid, received, type, source, id, reason, errors, producer, body, truncated, attempts";

/// Up to `limit` entries with `qid < before`, newest first.
pub fn quarantine_page(
    c: &Connection,
    before: i64,
    limit: usize,
) -> Result<Vec<QuarantineRow>, StoreError> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {Q_COLUMNS} FROM quarantine WHERE qid < ?1 ORDER BY qid DESC LIMIT ?2"
    ))?;
    let rows = st.query_map(params![before, limit as i64], quarantine_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn quarantine_get(c: &Connection, qid: i64) -> Result<Option<QuarantineRow>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {Q_COLUMNS} FROM quarantine WHERE qid = ?1"),
        params![qid],
        quarantine_row,
    )
    .optional()?)
}

pub fn quarantine_delete(c: &Connection, qids: &[i64]) -> Result<(), StoreError> {
    let tx = c.unchecked_transaction()?;
    {
        let mut del = tx.prepare_cached("DELETE FROM quarantine WHERE qid = ?1")?;
        for q in qids {
            del.execute(params![q])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Records the errors of a replay attempt that failed again.
pub fn quarantine_update(
    c: &Connection,
    qid: i64,
    reason: &str,
    errors: &serde_json::Value,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE quarantine SET reason = ?2, errors = ?3 WHERE qid = ?1",
        params![qid, reason, errors.to_string()],
    )?;
    Ok(())
}

pub fn quarantine_count(c: &Connection) -> Result<u64, StoreError> {
    let n: i64 = c.query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))?;
    Ok(n as u64)
}

pub fn optout_list(c: &Connection) -> Result<Vec<String>, StoreError> {
    let mut st = c.prepare("SELECT actor FROM optout ORDER BY actor")?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Adds an actor to the opt-out list; whether it was new.
pub fn optout_put(c: &Connection, actor: &str, now_us: i64) -> Result<bool, StoreError> {
    Ok(c.execute(
        "INSERT INTO optout (actor, since) VALUES (?1, ?2) ON CONFLICT(actor) DO NOTHING",
        params![actor, now_us],
    )? > 0)
}

/// Removes an actor from the opt-out list; whether it was there.
pub fn optout_delete(c: &Connection, actor: &str) -> Result<bool, StoreError> {
    Ok(c.execute("DELETE FROM optout WHERE actor = ?1", params![actor])? > 0)
}

/// Creates the index of a `data.`/`context.` path now (a facet added at run time); the next
/// start keeps it because the server passes every facet to the event store.
pub fn create_path_index(c: &Connection, path: &str) -> Result<(), StoreError> {
    crate::sqlite::create_path_index(c, path).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_schemas_stats_quarantine_optout() {
        let dir = tempfile::tempdir().unwrap();
        let reg = RegistryStore::open(dir.path()).unwrap();
        reg.with_blocking(|c| {
            let s = TypeSettings {
                owner: Some("team@x".into()),
                ..TypeSettings::default()
            };
            put_type(c, "import.*", &s, 1)?;
            let v1 = semver::Version::new(1, 0, 0);
            let schema = serde_json::json!({"type": "object"});
            assert!(put_schema(c, "import.*", &v1, &schema, None, 2)?);
            assert!(!put_schema(c, "import.*", &v1, &schema, None, 3)?);
            assert!(put_schema(c, "import.*", &v1, &serde_json::json!({}), None, 3).is_err());
            put_schema(
                c,
                "import.*",
                &semver::Version::new(1, 10, 0),
                &schema,
                Some("why"),
                4,
            )?;
            put_schema(
                c,
                "import.*",
                &semver::Version::new(1, 2, 0),
                &schema,
                None,
                4,
            )?;
            let t = load_types(c)?;
            assert_eq!(t.len(), 1);
            assert_eq!(t[0].settings.owner.as_deref(), Some("team@x"));
            let versions: Vec<&str> = t[0].schemas.iter().map(|s| s.version.as_str()).collect();
            assert_eq!(versions, ["1.0.0", "1.2.0", "1.10.0"]);
            assert_eq!(t[0].schemas[2].forced.as_deref(), Some("why"));

            let now = 1000 * HOUR_US;
            let d = StatDelta {
                ty: "a.b".into(),
                first_us: now - 5,
                last_us: now,
                received: 3,
                stored: 2,
                sampled_out: 1,
                hours: vec![(now / HOUR_US, 2), (now / HOUR_US - 30, 5)],
                ..StatDelta::default()
            };
            record_stats(c, &[d.clone(), d])?;
            let cat = catalog(c, now)?;
            assert_eq!(cat[0].0, "a.b");
            assert_eq!(cat[0].1.received, 6);
            assert_eq!(cat[0].1.stored_24h, 4);
            assert_eq!(cat[0].1.stored_7d, 14);

            let q = |id: &str| NewQuarantined {
                received_us: 1,
                ty: "a.b".into(),
                source: "/s".into(),
                id: id.into(),
                reason: "schema".into(),
                errors: serde_json::json!([]),
                producer: "k".into(),
                body: "{}".into(),
                truncated: false,
            };
            assert_eq!(quarantine(c, &[q("1"), q("2"), q("1")], 10)?, 0);
            let page = quarantine_page(c, i64::MAX, 10)?;
            assert_eq!(page.len(), 2);
            assert_eq!(page.iter().find(|r| r.id == "1").unwrap().attempts, 2);
            assert_eq!(quarantine(c, &[q("3"), q("4")], 3)?, 1);
            assert_eq!(quarantine_count(c)?, 3);

            assert!(optout_put(c, "u1", 1)?);
            assert!(!optout_put(c, "u1", 2)?);
            assert_eq!(optout_list(c)?, vec!["u1".to_string()]);
            assert!(optout_delete(c, "u1")?);
            Ok(())
        })
        .unwrap();
    }
}
