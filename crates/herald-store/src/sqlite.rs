//! The embedded store: event segments (see `segment`) hold the events, written by a single
//! writer thread that acknowledges whatever is waiting with one fsync (group commit); one
//! SQLite database in WAL mode indexes them, committed in long transactions by an indexer
//! thread, and is read through a small pool of read-only connections. See ARCHITECTURE.md
//! for the threads and their invariants.
//!
//! Why a dedicated thread: SQLite allows one writer at a time and its calls block, so the
//! writer lives off the async runtime, and batching the appends of concurrent requests into
//! one fsync is what makes durable ingest fast (one fsync costs 0.1–0.2 ms here, whether it
//! covers one event or ten thousand).

use crate::dedup::DedupIndex;
use crate::log::Log;
use crate::segment::{SegmentReader, SegmentWriter};
use crate::sql::{compile, compile_counted, path_expr, TextTail, BODY, DAY_EXPR};
use crate::throttle::LogThrottle;
use crate::{
    AppendOutcome, BoxFuture, CommitInfo, CommitObserver, EventQuery, LiveBatch, LiveEvent, Page,
    ScanPage, ScanQuery, SeqRange, Store, StoreError, StoredEvent,
};
use herald_core::cursor::Cursor;
use herald_core::filter::parse_path;
use herald_core::matcher::Unshared;
use herald_core::{Access, PreparedEvent};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::{oneshot, Semaphore};

/// Settings of the SQLite store (the `[store]` section of the config).
#[derive(Clone)]
pub struct SqliteOptions {
    /// Where `herald.db` lives.
    pub data_dir: PathBuf,
    /// Maintain the FTS5 full-text index.
    pub fulltext: bool,
    /// `data.`/`context.` paths that get an index, e.g. `data.country`.
    pub indexed_paths: Vec<String>,
    /// Envelope attributes that get an index, among [`ATTRIBUTE_INDEXES`] (`type`, `time`
    /// and the duplicate key are always indexed).
    pub attribute_indexes: Vec<String>,
    /// Write requests that may wait for the writer before appends are refused.
    pub queue_capacity: usize,
    /// Most events acknowledged by one log fsync (one group of requests).
    pub max_commit_events: usize,
    /// Acknowledged events the indexer may be behind (not inserted yet) before the writer
    /// waits for it, which fills the request queue (ingest answers 503). Reads find those
    /// events in memory and test each one, so this bounds both memory and that work.
    pub max_index_backlog: usize,
    /// Read-only connections for queries.
    pub read_connections: usize,
    /// Page cache per connection, in MiB.
    pub cache_mib: usize,
    /// fsync the event segment before acknowledging. Turning it off keeps data safe from a
    /// process crash but not from a power loss.
    pub fsync: bool,
    /// Write event segments with direct I/O (`O_DIRECT`, where the file system has it)
    /// instead of through the page cache: less CPU per event, and a query's first read of
    /// a new event's body goes to the disk (see [`SegmentWriter::set_direct`]).
    pub direct_writes: bool,
    /// Group commits the live channel holds for subscribers that fall behind; a subscriber
    /// further behind catches up from the database.
    pub live_capacity: usize,
    /// Size at which the writer closes an event segment and starts the next.
    pub segment_bytes: u64,
    /// Duplicate keys of recent events held in memory before they are written out as a
    /// sorted run (see `dedup`): about 32 bytes of memory each.
    pub dedup_memory_keys: usize,
    pub on_commit: Option<CommitObserver>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            data_dir: PathBuf::from("herald-data"),
            fulltext: true,
            indexed_paths: Vec::new(),
            attribute_indexes: ATTRIBUTE_INDEXES.iter().map(|a| a.0.to_string()).collect(),
            queue_capacity: 4096,
            max_commit_events: 50_000,
            max_index_backlog: 50_000,
            read_connections: 4,
            cache_mib: 256,
            fsync: true,
            direct_writes: true,
            live_capacity: 1024,
            segment_bytes: 256 << 20,
            dedup_memory_keys: crate::dedup::DEFAULT_RECENT_MAX,
            on_commit: None,
        }
    }
}

impl std::fmt::Debug for SqliteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOptions")
            .field("data_dir", &self.data_dir)
            .field("fulltext", &self.fulltext)
            .field("indexed_paths", &self.indexed_paths)
            .field("attribute_indexes", &self.attribute_indexes)
            .finish_non_exhaustive()
    }
}

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    seq           INTEGER PRIMARY KEY,
    time          INTEGER NOT NULL,
    recorded      INTEGER NOT NULL,
    type          TEXT NOT NULL,
    source        TEXT NOT NULL,
    id            TEXT NOT NULL,
    subject       TEXT,
    severity      INTEGER NOT NULL,
    actor         TEXT,
    tenant        TEXT,
    correlationid TEXT,
    causationid   TEXT,
    visibility    INTEGER NOT NULL,
    dkey          INTEGER NOT NULL,
    chash         INTEGER NOT NULL,
    body          TEXT NOT NULL
);
CREATE INDEX events_time ON events(time);
CREATE INDEX events_type_time ON events(type, time);
CREATE INDEX events_dkey ON events(dkey);
CREATE INDEX events_tenant_time ON events(tenant, time) WHERE tenant IS NOT NULL;
CREATE INDEX events_actor_time ON events(actor, time) WHERE actor IS NOT NULL;
CREATE INDEX events_subject_time ON events(subject, time) WHERE subject IS NOT NULL;
CREATE INDEX events_correlation ON events(correlationid, time) WHERE correlationid IS NOT NULL;
CREATE INDEX events_causation ON events(causationid) WHERE causationid IS NOT NULL;

CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"#,
    // 2: who may read a private event, as `\x1fprincipal\x1f...` (see `sql::access_clause`);
    // filled from the stored bodies by `backfill_readers`.
    r#"
ALTER TABLE events ADD COLUMN readers TEXT;
"#,
    // 3: API keys (see `keys`).
    r#"
CREATE TABLE keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    principals   TEXT NOT NULL,
    restrictions TEXT NOT NULL,
    hash         BLOB NOT NULL UNIQUE,
    created      INTEGER NOT NULL,
    expires      INTEGER,
    revoked      INTEGER,
    last_used    INTEGER
);
"#,
    // 4: revoked viewer tokens (kept until they would have expired anyway).
    r#"
CREATE TABLE revoked_tokens (jti TEXT PRIMARY KEY, expires INTEGER NOT NULL);
"#,
    // 5: the type registry (see `registry`): settings, schema versions, the catalog's
    // counters (filled from the stored events by `registry::backfill_stats`), the quarantine
    // and the opt-out list.
    r#"
CREATE TABLE types (pattern TEXT PRIMARY KEY, settings TEXT NOT NULL, updated INTEGER NOT NULL);
CREATE TABLE schemas (
    pattern   TEXT NOT NULL,
    version   TEXT NOT NULL,
    major     INTEGER NOT NULL,
    minor     INTEGER NOT NULL,
    patch     INTEGER NOT NULL,
    schema    TEXT NOT NULL,
    published INTEGER NOT NULL,
    forced    TEXT,
    PRIMARY KEY (pattern, major, minor, patch)
);
CREATE TABLE type_stats (
    type        TEXT PRIMARY KEY,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    received    INTEGER NOT NULL,
    valid       INTEGER NOT NULL,
    invalid     INTEGER NOT NULL,
    sampled_out INTEGER NOT NULL,
    dropped     INTEGER NOT NULL,
    stored      INTEGER NOT NULL,
    quarantined INTEGER NOT NULL
);
CREATE TABLE type_volume (type TEXT NOT NULL, hour INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (type, hour)) WITHOUT ROWID;
CREATE TABLE quarantine (
    qid       INTEGER PRIMARY KEY,
    received  INTEGER NOT NULL,
    type      TEXT NOT NULL,
    source    TEXT NOT NULL,
    id        TEXT NOT NULL,
    reason    TEXT NOT NULL,
    errors    TEXT NOT NULL,
    producer  TEXT NOT NULL,
    body      TEXT NOT NULL,
    truncated INTEGER NOT NULL,
    attempts  INTEGER NOT NULL
);
CREATE UNIQUE INDEX quarantine_key ON quarantine (source, id);
CREATE TABLE optout (actor TEXT PRIMARY KEY, since INTEGER NOT NULL);
"#,
    // 6: bodies live in the event segments (see `segment`); a row holds where. Rows stored
    // before keep their body in `body` (and no `loc`); new rows have an empty `body`.
    r#"
ALTER TABLE events ADD COLUMN loc INTEGER;
ALTER TABLE events ADD COLUMN len INTEGER;
"#,
    // 7: the optional attribute indexes and the path indexes lead with the event's day
    // (`sql::DAY_EXPR`), so that ingest inserts into one day's part of each, which stays
    // in memory, instead of at random places in the whole history. `days` lists the days
    // that hold events (the indexer adds a day when it first sees one), so that a listing
    // reads the days that exist, one at a time. `meta.days_seq`: every event up to this seq
    // has its day in `days` (see `complete_days`). The new indexes are built by
    // `sync_attribute_indexes` and `sync_path_indexes`.
    r#"
CREATE TABLE days (day INTEGER PRIMARY KEY);
INSERT INTO days SELECT DISTINCT time/86400000000 FROM events;
INSERT OR REPLACE INTO meta (key, value) SELECT 'days_seq', coalesce(max(seq), 0) FROM events;
DROP INDEX IF EXISTS events_tenant_time;
DROP INDEX IF EXISTS events_actor_time;
DROP INDEX IF EXISTS events_subject_time;
DROP INDEX IF EXISTS events_correlation;
DROP INDEX IF EXISTS events_causation;
"#,
    // 8: duplicates are found through the duplicate-key index (`dedup`), kept beside the
    // database; it is read back from `events(seq, dkey)` at open.
    r#"
DROP INDEX IF EXISTS events_dkey;
"#,
    // 9: the attribute indexes hold `seq`, `visibility` and `tenant` after the time (see
    // `ATTRIBUTE_INDEXES`); `sync_attribute_indexes` builds them again.
    r#"
DROP INDEX IF EXISTS events_tenant_day;
DROP INDEX IF EXISTS events_actor_day;
DROP INDEX IF EXISTS events_subject_day;
DROP INDEX IF EXISTS events_correlation_day;
DROP INDEX IF EXISTS events_causation_day;
"#,
];

/// Fills the `readers` column of events stored before it existed.
fn backfill_readers(conn: &Connection) -> rusqlite::Result<()> {
    let rows: Vec<(i64, String)> = conn
        .prepare(
            "SELECT seq, body FROM events WHERE visibility = 2 AND instr(body, '\"readers\":') > 0",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut update = conn.prepare("UPDATE events SET readers = ?1 WHERE seq = ?2")?;
    for (seq, body) in rows {
        let readers = reprepare(&body, 0).map(|e| e.readers).unwrap_or_default();
        update.execute(params![crate::sql::readers_column(&readers), seq])?;
    }
    Ok(())
}

/// The full-text index lives in its own database file (`fts.db`), written by its own thread:
/// SQLite allows one writer per file, so indexing text in parallel with the event writer
/// uses the second core instead of lengthening every commit.
///
/// FTS5's `ascii` tokenizer cuts at every ASCII byte that is not a letter or digit and
/// lowercases ASCII, as the core's [`herald_core::matcher::tokens`] does, and keeps every
/// non-ASCII byte in a token. So the index is given an event's ASCII parts as they are and
/// the core's tokens of its other parts, joined by spaces
/// ([`PreparedEvent::push_fts_text`]): it holds exactly the core's tokens, and the index,
/// the scan of its tail and the live stream agree, in every script
/// (`fts_text_gives_the_index_the_cores_tokens`). (`unicode61`, used before, cut some words
/// at combining marks and kept others whole, unlike the core.) `detail=none`
/// keeps only which events hold a token, not where: the index is
/// about half as large and much cheaper to write; a phrase is found as "all its tokens", and
/// `herald_text` then checks that they are consecutive (see `sql::compile`). An index built
/// with other settings is dropped and rebuilt at start.
const FTS_SCHEMA: &str = "
CREATE VIRTUAL TABLE IF NOT EXISTS events_fts USING fts5(text, content='', contentless_delete=1, detail=none, tokenize='ascii');
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";
/// FTS5 settings (kept in the index's own config table): merge segments only when 16 of a
/// level exist (default 4) and write 16 KB leaf pages (default 4 KB). Ingest then spends
/// about a third less CPU on text indexing; a query reads a few more segments.
const FTS_TUNING: &str = "
INSERT INTO events_fts(events_fts, rank) VALUES('automerge', 16);
INSERT INTO events_fts(events_fts, rank) VALUES('crisismerge', 16);
INSERT INTO events_fts(events_fts, rank) VALUES('pgsz', 16000);
";
/// While a long catch-up runs, which ends with a merge of everything: no merging along the
/// way, except to keep a level under 64 segments (FTS5 refuses more than 2,000 in all).
const FTS_CATCH_UP_TUNING: &str = "
INSERT INTO events_fts(events_fts, rank) VALUES('automerge', 0);
INSERT INTO events_fts(events_fts, rank) VALUES('crisismerge', 64);
";
const FTS_TOKENIZER: &str = "detail=none, tokenize='ascii'";

/// Opens `fts.db` with its schema, and says how far it got (its watermark). A file SQLite
/// finds damaged is moved aside (`fts.db.damaged`, replacing an older one) and the index
/// started anew: the full-text thread rebuilds it from the events in the background, so a
/// damaged index never keeps Herald from starting.
fn open_fts(path: &Path) -> Result<(Connection, u64), StoreError> {
    fn open(path: &Path) -> rusqlite::Result<(Connection, u64)> {
        let conn = Connection::open(path)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        fts_schema(&conn)?;
        let seq = fts_seq(&conn)?;
        Ok((conn, seq))
    }
    match open(path) {
        Err(rusqlite::Error::SqliteFailure(e, msg))
            if matches!(
                e.code,
                rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
            ) =>
        {
            tracing::error!(
                error = %rusqlite::Error::SqliteFailure(e, msg),
                file = %path.display(),
                "the full-text index is damaged: moving it aside to fts.db.damaged and rebuilding it in the background"
            );
            move_fts_aside(path)?;
            Ok(open(path)?)
        }
        other => Ok(other?),
    }
}

/// Renames a damaged `fts.db` (and its WAL and shared memory) to `fts.db.damaged`.
fn move_fts_aside(path: &Path) -> Result<(), StoreError> {
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        let to = PathBuf::from(format!("{}.damaged{suffix}", path.display()));
        match std::fs::rename(&from, &to) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::Database(format!(
                    "cannot move the damaged full-text index {} aside: {e}",
                    from.display()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Creates the full-text schema, dropping an index built with another tokenizer (its
/// watermark goes with it, so the start-up catch-up indexes every event again).
fn fts_schema(fts: &Connection) -> rusqlite::Result<()> {
    let existing: Option<String> = fts
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'events_fts'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if existing.is_some_and(|sql| !sql.contains(FTS_TOKENIZER)) {
        tracing::info!("the full-text index uses an older tokenizer; rebuilding it");
        fts.execute_batch("DROP TABLE events_fts; DELETE FROM meta WHERE key = 'fts_seq';")?;
    }
    fts.execute_batch(FTS_SCHEMA)?;
    fts.execute_batch(FTS_TUNING)?;
    Ok(())
}

/// Registers `herald_body(body, loc, len)`, the stored JSON of an event: `body` for rows
/// stored before segments, else read from its segment (see [`BODY`], the expression every
/// query uses), and `herald_path(body, loc, len, path)`, `json_extract` of that body (see
/// [`path_expr`], the expression of path indexes and path filters). Deterministic: a
/// segment's records never change. Every connection that reads bodies or writes the events
/// table (path indexes evaluate `herald_path`) needs them.
///
/// A statement often names the body several times per row (a `herald_text` for each text
/// term, a `herald_path` for each unindexed path): the last body read is kept (in the
/// returned [`BodyCache`]), so the row's other calls share it instead of reading the segment
/// again. A location's record never changes while it is indexed, so it cannot be stale.
pub(crate) fn register_body_function(
    conn: &Connection,
    segments: SegmentReader,
) -> rusqlite::Result<BodyCache> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS;
    let cache = BodyCache::default();
    let (last, segs) = (cache.clone(), segments.clone());
    conn.create_scalar_function("herald_body", 3, flags, move |ctx| {
        Ok(body_arg(ctx, &last, &segs)?.map(|(body, _)| body))
    })?;
    // `herald_path(body, loc, len, '$.data."a"')`: `json_extract` of `herald_body(...)`,
    // read by `jsonpath` without building the whole body's JSONB (see `sql::path_expr`).
    let last = cache.clone();
    conn.create_scalar_function("herald_path", 4, flags, move |ctx| {
        use rusqlite::types::Value;
        let path = ctx.get_or_create_aux(3, |v| {
            crate::jsonpath::parse_json_path(v.as_str().unwrap_or("")).ok_or_else(|| {
                rusqlite::Error::UserFunctionError(
                    format!("herald_path: bad path {:?}", v.as_str().unwrap_or("")).into(),
                )
            })
        })?;
        let Some((body, roots)) = body_arg(ctx, &last, &segments)? else {
            return Ok(Value::Null);
        };
        use crate::jsonpath::PathValue;
        let found = match roots.as_ref().and_then(|r| r.value(&body, &path[0])) {
            Some(None) => Ok(PathValue::Null),
            Some(Some(value)) => crate::jsonpath::extract(value, &path[1..]),
            None => crate::jsonpath::extract(&body, &path),
        };
        // A stored body is JSON (Herald wrote it, and its checksum held): a value the walk
        // cannot read is NULL, said once in the log, rather than an error that would stop
        // the indexer at this event (an index expression that fails fails the insert).
        let found = found.unwrap_or_else(|_| {
            static SAID: AtomicBool = AtomicBool::new(false);
            if !SAID.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    path = ?path,
                    "a stored event's body is not JSON where a path leads; it reads as null"
                );
            }
            PathValue::Null
        });
        Ok(match found {
            PathValue::Null => Value::Null,
            PathValue::Int(i) => Value::Integer(i),
            PathValue::Real(r) => Value::Real(r),
            PathValue::Text(t) => Value::Text(t.into_owned()),
        })
    })?;
    Ok(cache)
}

/// The body that the first three arguments (`body`, `loc`, `len`) of `herald_body` and
/// `herald_path` name: from the row, the cache, or the segment; with where its `data` and
/// `context` are when the indexer said so.
fn body_arg(
    ctx: &rusqlite::functions::Context<'_>,
    last: &BodyCache,
    segments: &SegmentReader,
) -> rusqlite::Result<Option<(Arc<str>, Option<Roots>)>> {
    let loc = ctx.get::<Option<i64>>(1)?;
    let Some(loc) = loc else {
        return ctx.get::<String>(0).map(|b| Some((Arc::from(b), None)));
    };
    let len = ctx.get::<i64>(2)?;
    if let Some(hit) = last.get(loc, len) {
        return Ok(Some(hit));
    }
    last.segment_reads.fetch_add(1, Ordering::Relaxed);
    // A body the disk damaged is NULL: index expressions and start-up catch-ups pass over
    // it, listings leave it out, a read of it by seq or id fails; the log and
    // `herald_store_damaged_reads_total` say so.
    let body = segments
        .read_or_damaged(loc, len.max(0) as u64)
        .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?
        .map(Arc::<str>::from);
    if let Some(b) = &body {
        last.put(loc, len, b.clone(), None);
    }
    Ok(body.map(|b| (b, None)))
}

/// Where the values of a body's `data` and `context` members are in it (`None`: no such
/// member), as the indexer knows from the event it holds.
#[derive(Clone, Debug)]
pub(crate) struct Roots {
    data: Option<std::ops::Range<usize>>,
    context: Option<std::ops::Range<usize>>,
}

impl Roots {
    /// The members of `ev`, whose body `write_body` wrote with `prefix` bytes before its
    /// `body_tail`.
    fn of(ev: &PreparedEvent, prefix: usize) -> Roots {
        let shift = |r: &Option<std::ops::Range<usize>>| {
            r.as_ref().map(|r| r.start + prefix..r.end + prefix)
        };
        Roots {
            data: shift(&ev.data_range),
            context: shift(&ev.context_range),
        }
    }

    /// The text of member `root` of `body` (the same value as the walk from the top finds:
    /// each is the body's only member of its name): `Some(None)` when the body has no such
    /// member, `None` when these roots cannot say (another member, or a range that is not
    /// one of this body's, which the indexer never makes).
    fn value<'b>(&self, body: &'b str, root: &str) -> Option<Option<&'b str>> {
        let at = match root {
            "data" => &self.data,
            "context" => &self.context,
            _ => return None,
        };
        match at {
            None => Some(None),
            Some(r) => body.get(r.clone()).map(Some),
        }
    }
}

/// Whether an index of the events table reads bodies (a path index, on `herald_path`). An
/// error answers yes: seeding the body costs a copy, not a wrong answer.
fn indexes_read_bodies(conn: &Connection) -> bool {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'events' AND sql LIKE '%herald_path(%')",
        [],
        |r| r.get::<_, bool>(0),
    )
    .unwrap_or(true)
}

/// The body `herald_body` last returned on one connection, by its location (`loc`, `len`).
/// Besides the calls of one row sharing it (see [`register_body_function`]), the indexer
/// puts in each event's body, which it holds in memory, before it inserts the event: a path
/// index's expression then finds it here instead of reading it back from its segment (a
/// read and a checksum per event, about a tenth of the indexer's time with one path index).
#[derive(Clone, Default)]
pub(crate) struct BodyCache(Arc<BodyCacheInner>);

#[derive(Default)]
pub(crate) struct BodyCacheInner {
    last: Mutex<Option<CachedBody>>,
    /// Bodies `herald_body` and `herald_path` read from segments (tests check that inserts
    /// read none).
    segment_reads: AtomicU64,
}

/// A body at `(loc, len)`, and where its roots are when the indexer said so.
struct CachedBody {
    at: (i64, i64),
    body: Arc<str>,
    roots: Option<Roots>,
}

impl std::ops::Deref for BodyCache {
    type Target = BodyCacheInner;
    fn deref(&self) -> &BodyCacheInner {
        &self.0
    }
}

impl BodyCache {
    fn get(&self, loc: i64, len: i64) -> Option<(Arc<str>, Option<Roots>)> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some(c) if c.at == (loc, len) => Some((c.body.clone(), c.roots.clone())),
            _ => None,
        }
    }

    /// Keeps `body` as the record at `loc`, `len` (it must be that record's text, and
    /// `roots` must say where its members are).
    fn put(&self, loc: i64, len: i64, body: Arc<str>, roots: Option<Roots>) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(CachedBody {
            at: (loc, len),
            body,
            roots,
        });
    }
}

/// How often `herald_text` ran (tests check that queries do not call it on every row).
#[cfg(test)]
static HERALD_TEXT_CALLS: AtomicU64 = AtomicU64::new(0);

/// Registers `herald_text(body, phrase)`: true when the phrase occurs in the search text of
/// a stored event, cut into tokens as the full-text index does.
fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "herald_text",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            #[cfg(test)]
            HERALD_TEXT_CALLS.fetch_add(1, Ordering::Relaxed);
            // The phrase is the same on every row of a statement: cut it once.
            let phrase = ctx.get_or_create_aux(1, |v| {
                Ok::<_, rusqlite::Error>(herald_core::matcher::JsonPhrase::new(
                    v.as_str().unwrap_or(""),
                ))
            })?;
            Ok(phrase.is_in(ctx.get_raw(0).as_str().unwrap_or("")))
        },
    )
}

struct WriteJob {
    events: Vec<PreparedEvent>,
    reply: oneshot::Sender<Result<Vec<AppendOutcome>, StoreError>>,
}

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    tx: RwLock<Option<SyncSender<WriteJob>>>,
    /// `herald_body`'s cache on the indexer's connection (tests count its segment reads).
    #[cfg(test)]
    indexer_bodies: BodyCache,
    dedup: Arc<DedupIndex>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    indexer: Mutex<Option<std::thread::JoinHandle<()>>>,
    queued: Arc<AtomicUsize>,
    readers: Arc<ReadPool>,
    fulltext: bool,
    unindexed: Arc<Unindexed>,
    untexted: Arc<Mutex<Untexted>>,
    /// Read by `get_by_id` (see [`Pending`]).
    pending: Arc<Pending>,
    fts_watermark: Arc<AtomicU64>,
    progress: Arc<Progress>,
    fts_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Mutex<Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>>,
    live: tokio::sync::broadcast::Sender<LiveBatch>,
    /// Shares its count of damaged reads with every connection's `herald_body`.
    segments: SegmentReader,
    /// One listing at a time may scan a long tail past the full-text index (see `query`).
    long_text_reads: tokio::sync::Semaphore,
}

struct ReadPool {
    conns: Mutex<Vec<Reader>>,
    permits: Semaphore,
    /// Where `fts.db` is, attached to every reader as `fts`.
    fts_path: PathBuf,
    fts_health: Arc<FtsHealth>,
}

/// A read connection, and which `fts.db` it has attached.
struct Reader {
    conn: Connection,
    /// The [`FtsHealth::generation`] of the attached file.
    fts_generation: u64,
}

impl std::ops::Deref for Reader {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

/// What readers and the full-text thread tell each other about `fts.db` going bad at run
/// time (found damaged at open, it is moved aside there; see [`open_fts`]).
#[derive(Default)]
struct FtsHealth {
    /// A read failed as SQLite does on a damaged file: the full-text thread checks `fts.db`
    /// (`quick_check`, at most once per [`FTS_CHECK_EVERY`]), since the damage may be in
    /// `herald.db` instead.
    suspect: AtomicBool,
    /// Bumped each time a damaged `fts.db` was moved aside and replaced by a new one:
    /// readers attach the new file before their next read.
    generation: AtomicU64,
}

/// Whether an error is SQLite finding a file damaged.
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// The same, for an error already turned into text (SQLite's fixed messages for both).
fn is_damage_message(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(m) if m.contains("database disk image is malformed") || m.contains("file is not a database"))
}

/// A full-text index found suspect is checked at most this often.
const FTS_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

fn configure(conn: &Connection, opts: &SqliteOptions) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "cache_size", -((opts.cache_mib * 1024) as i64))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "mmap_size", 1i64 << 30)?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) `DATA_DIR/herald.db`, migrates it, creates the configured
    /// path indexes, and starts the writer thread.
    pub fn open(opts: SqliteOptions) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(&opts.data_dir).map_err(|e| {
            StoreError::Database(format!(
                "cannot create data directory {}: {e}",
                opts.data_dir.display()
            ))
        })?;
        let path = opts.data_dir.join("herald.db");
        let conn = Connection::open(&path)?;
        // Events are ~1 KB: 16 KiB pages hold 15 of them instead of 3, so inserts split and
        // write far fewer pages. Only a new database takes it (before WAL mode and tables).
        conn.pragma_update(None, "page_size", 16384)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Database(format!(
                "cannot switch {} to WAL mode (got {mode})",
                path.display()
            )));
        }
        // SQLite holds no event that is not also in a segment: after a power loss it may
        // miss its last commits (never be corrupt, in WAL mode), and the start-up replay of
        // the segments brings them back. So its commits need no fsync.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints run on their own thread (see `checkpointer`); the writer checkpoints
        // inline only if the WAL grows past this many pages (~400 MiB), as a safety net.
        conn.pragma_update(None, "wal_autocheckpoint", 100_000)?;
        configure(&conn, &opts)?;
        migrate(&conn)?;
        complete_days(&conn)?;
        let seg_dir = segments_dir(&opts.data_dir);
        let segments = SegmentReader::new(&seg_dir);
        let bodies = register_body_function(&conn, segments.clone())?;
        sync_path_indexes(&conn, &opts.indexed_paths)?;
        sync_attribute_indexes(&conn, &opts.attribute_indexes)?;
        conn.execute_batch("PRAGMA optimize=0x10002")?;
        replay_legacy_logs(&conn, &opts.data_dir)?;
        let seg_err = |e: std::io::Error| {
            StoreError::Database(format!(
                "cannot open the event segments in {}: {e}",
                seg_dir.display()
            ))
        };
        let indexed = indexed_position(&conn)?;
        let mut seg_writer =
            SegmentWriter::open(&seg_dir, opts.segment_bytes, indexed_body(indexed))
                .map_err(seg_err)?;
        seg_writer.set_direct(opts.direct_writes);
        let next_seq = replay_segments(&conn, &seg_dir, indexed, seg_writer.end())? as i64 + 1;
        // After the replay: the keys of every stored event are in SQLite.
        let dedup = DedupIndex::open(
            &opts.data_dir.join("dedup"),
            &conn,
            next_seq as u64 - 1,
            opts.dedup_memory_keys,
        )?;
        let fts_path = opts.data_dir.join("fts.db");
        // The index can always be rebuilt from the events, so it need not be fsynced; after a
        // crash the full-text thread first indexes the events past its watermark again.
        let (fts_conn, fts_seq) = open_fts(&fts_path)?;
        let fts_watermark = Arc::new(AtomicU64::new(fts_seq));
        let fts_health = Arc::new(FtsHealth::default());

        let mut readers = Vec::with_capacity(opts.read_connections);
        for _ in 0..opts.read_connections.max(1) {
            let mut r = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )?;
            r.progress_handler(1000, Some(read_budget_spent))?;
            configure(&r, &opts)?;
            r.execute(
                "ATTACH DATABASE ?1 AS fts",
                params![fts_path.to_string_lossy()],
            )?;
            r.pragma_update(None, "query_only", true)?;
            register_functions(&r)?;
            register_body_function(&r, segments.clone())?;
            readers.push(Reader {
                conn: r,
                fts_generation: 0,
            });
        }

        let (tx, rx) = sync_channel(opts.queue_capacity.max(1));
        let progress = Arc::new(Progress {
            acked: AtomicU64::new(next_seq as u64 - 1),
            commit_wanted: AtomicBool::new(false),
            committed: tokio::sync::watch::Sender::new(next_seq as u64 - 1),
        });
        let queued = Arc::new(AtomicUsize::new(0));
        let (live, _) = tokio::sync::broadcast::channel(opts.live_capacity.max(1));
        let pending = Arc::new(Pending::default());
        let unindexed = Arc::new(Unindexed::default());
        // Text terms scan the events past the watermark in SQL until the full-text thread has
        // caught up.
        let untexted = Arc::new(Mutex::new(Untexted::default()));
        let backlog = Arc::new(Backlog {
            events: Mutex::new(0),
            drained: Condvar::new(),
        });
        let failed = Arc::new(AtomicBool::new(false));
        let probe = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&probe, &opts)?;
        // Bounded by events, not batches: the writer waits while the indexer is more than
        // `max_index_backlog` events behind (`Writer::hand_to_indexer`). A bound of 1,024
        // batches, which single-event requests fill with groups of ~10 events, stopped every
        // acknowledgement for as long as an index commit (100–170 ms under load) once 10k
        // events were waiting, far below the backlog meant to allow.
        let (index_tx, index_rx) = std::sync::mpsc::channel::<IndexBatch>();
        let writer = Writer {
            probe,
            dedup: dedup.clone(),
            rx,
            next_seq: next_seq as u64,
            queued: queued.clone(),
            max_commit_events: opts.max_commit_events.max(1),
            on_commit: opts.on_commit.clone(),
            seg: seg_writer,
            progress: progress.clone(),
            pending: pending.clone(),
            unindexed: unindexed.clone(),
            backlog: backlog.clone(),
            max_backlog: opts.max_index_backlog.max(1),
            live: live.clone(),
            index_tx: Some(index_tx),
            failed: failed.clone(),
            fsync: opts.fsync,
        };
        let mut indexer = Indexer {
            conn,
            rx: index_rx,
            progress: progress.clone(),
            pending: pending.clone(),
            unindexed: unindexed.clone(),
            untexted: untexted.clone(),
            backlog,
            txn: Vec::new(),
            txn_started: None,
            txn_events: 0,
            days: Days::default(),
            bodies: bodies.clone(),
            seed_bodies: false,
            body_buf: String::new(),
            fts_batch: Vec::new(),
            fts_tx: None,
            failed,
            #[cfg(test)]
            gate: INDEXER_GATE.with(|g| g.borrow().clone()),
        };
        let fts_thread = if opts.fulltext {
            // Each message is one commit's events (up to 100,000, or 1 s of them).
            let (ftx, frx) = sync_channel(16);
            indexer.fts_tx = Some(ftx);
            let events = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            configure(&events, &opts)?;
            // It reads each row once, in order: no use for a large cache.
            events.pragma_update(None, "cache_size", -8192)?;
            register_body_function(&events, segments.clone())?;
            let fts = FtsIndexer {
                conn: fts_conn,
                path: fts_path.clone(),
                health: fts_health.clone(),
                damaged: false,
                checked_at: None,
                events,
                rx: frx,
                catching_up: true,
                catch_up: None,
                pending: Vec::new(),
                pending_events: 0,
                watermark: fts_watermark.clone(),
                untexted: untexted.clone(),
                flush_failures: LogThrottle::default(),
                unmerged: true,
                #[cfg(test)]
                handover_pause: HANDOVER_PAUSE.with(|p| p.get()),
            };
            Some(
                std::thread::Builder::new()
                    .name("herald-fulltext".into())
                    .spawn(move || fts.run())
                    .map_err(|e| {
                        StoreError::Database(format!("cannot start the full-text thread: {e}"))
                    })?,
            )
        } else {
            None
        };
        let indexer = std::thread::Builder::new()
            .name("herald-indexer".into())
            .spawn(move || indexer.run())
            .map_err(|e| StoreError::Database(format!("cannot start the indexer thread: {e}")))?;
        let handle = std::thread::Builder::new()
            .name("herald-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        let stop_checkpointer = Arc::new(AtomicBool::new(false));
        let checkpointer = {
            let conn = Connection::open(&path)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            let stop = stop_checkpointer.clone();
            std::thread::Builder::new()
                .name("herald-checkpoint".into())
                .spawn(move || checkpointer(conn, stop))
                .map_err(|e| {
                    StoreError::Database(format!("cannot start the checkpoint thread: {e}"))
                })?
        };
        Ok(SqliteStore {
            tx: RwLock::new(Some(tx)),
            #[cfg(test)]
            indexer_bodies: bodies,
            dedup,
            writer: Mutex::new(Some(handle)),
            indexer: Mutex::new(Some(indexer)),
            queued,
            readers: Arc::new(ReadPool {
                permits: Semaphore::new(readers.len()),
                conns: Mutex::new(readers),
                fts_path: fts_path.clone(),
                fts_health: fts_health.clone(),
            }),
            fulltext: opts.fulltext,
            unindexed,
            untexted,
            pending,
            fts_watermark,
            progress,
            fts_thread: Mutex::new(fts_thread),
            checkpointer: Mutex::new(Some((stop_checkpointer, checkpointer))),
            live,
            segments,
            long_text_reads: tokio::sync::Semaphore::new(1),
        })
    }

    /// While the full-text index is far behind (rebuilt after `fts.db` was deleted), a read
    /// with a text term scans the events past it in SQL: seconds per million. True when
    /// this read would scan more than [`LONG_TEXT_SCAN`] of them, up to seq `upto`, with
    /// the index at `watermark`.
    fn long_text_scan(&self, filter: &herald_core::Filter, watermark: u64, upto: u64) -> bool {
        filter.has_text()
            && upto.saturating_sub(watermark) > LONG_TEXT_SCAN
            && !self
                .untexted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .complete
    }

    /// Waits for the turn of a long text scan (see [`Self::long_text_scan`]): one at a
    /// time, so that they never hold every read connection.
    async fn long_text_turn(
        &self,
        long: bool,
    ) -> Result<Option<tokio::sync::SemaphorePermit<'_>>, StoreError> {
        if !long {
            return Ok(None);
        }
        self.long_text_reads
            .acquire()
            .await
            .map(Some)
            .map_err(|_| StoreError::Closed)
    }

    /// Read-your-writes: waits until every event acknowledged before this call is committed in
    /// SQLite (asking the writer to commit its open transaction now if needed).
    async fn visible(&self) -> Result<(), StoreError> {
        let target = self.progress.acked.load(Ordering::Acquire);
        let mut rx = self.progress.committed.subscribe();
        if *rx.borrow() >= target {
            return Ok(());
        }
        self.progress.commit_wanted.store(true, Ordering::Release);
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            rx.wait_for(|c| *c >= target),
        )
        .await
        .map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(()),
            _ => Err(StoreError::Database(
                "the writer did not commit recent events in time".into(),
            )),
        }
    }

    /// Runs `f` on a read connection on the blocking thread pool, after [`Self::visible`].
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.visible().await?;
        self.read_now(f).await
    }

    /// Runs `f` on a read connection on the blocking thread pool, on what SQLite holds now.
    async fn read_now<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = self.readers.clone();
        let permit = pool
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool2 = pool.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut conn = pool2
                .conns
                .lock()
                .map_err(|_| StoreError::Closed)?
                .pop()
                .ok_or(StoreError::Closed)?;
            let out = pool2.attach_current_fts(&mut conn).and_then(|()| f(&conn));
            if out.as_ref().is_err_and(is_damage_message) {
                pool2.fts_health.suspect.store(true, Ordering::Release);
            }
            if let Ok(mut g) = pool2.conns.lock() {
                g.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?;
        drop(permit);
        res
    }
}

impl ReadPool {
    /// Attaches the current `fts.db` if a damaged one was replaced since `r` attached it.
    fn attach_current_fts(&self, r: &mut Reader) -> Result<(), StoreError> {
        let generation = self.fts_health.generation.load(Ordering::Acquire);
        if r.fts_generation == generation {
            return Ok(());
        }
        // Cached statements name the old file's tables.
        r.conn.flush_prepared_statement_cache();
        r.conn.pragma_update(None, "query_only", false)?;
        let attached = r.conn.execute_batch("DETACH DATABASE fts").and_then(|()| {
            r.conn.execute(
                "ATTACH DATABASE ?1 AS fts",
                params![self.fts_path.to_string_lossy()],
            )
        });
        r.conn.pragma_update(None, "query_only", true)?;
        attached?;
        r.fts_generation = generation;
        Ok(())
    }
}

pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(0);
    if version > MIGRATIONS.len() {
        return Err(StoreError::Database(format!(
            "the database has schema version {version}, newer than this Herald ({}); upgrade Herald",
            MIGRATIONS.len()
        )));
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
        // IMMEDIATE: another process (the key CLI, a second start) may migrate at the same
        // time; the version is read again under the write lock.
        let tx =
            rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        let now: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if usize::try_from(now).unwrap_or(0) > i {
            continue;
        }
        tx.execute_batch(m)?;
        if i == 1 {
            backfill_readers(&tx)?;
        }
        if i == 4 {
            crate::registry::backfill_stats(&tx)?;
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// The index name for a path: stable, SQL-safe. (`events_path_` named the indexes on the
/// expression of bodies kept in rows, before segments, `events_p2_` those not bucketed by
/// day, and `events_p3_` those on `json_extract` of the body rather than `herald_path`;
/// `sync_path_indexes` drops them, and the next start builds their replacements.)
fn path_index_name(path: &str) -> String {
    format!("events_p4_{:016x}", xxhash_path(path))
}

fn xxhash_path(path: &str) -> u64 {
    // FNV-1a: tiny, stable, and only used to name indexes.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in path.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn path_index(
    conn: &Connection,
    root: &str,
    segs: &[String],
    p: &str,
) -> Result<String, StoreError> {
    let name = path_index_name(p);
    let expr = path_expr(root, segs);
    logged_build(&format!("the index of {p}"), || {
        conn.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS {name} ON events({DAY_EXPR}, {expr}, time)"
        ))
    })?;
    Ok(name)
}

/// Runs a schema step that may read every stored event (building an index), logging every
/// 10 s that it is still running, so that a slow start or a long request is explained.
fn logged_build<T>(what: &str, f: impl FnOnce() -> T) -> T {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let started = Instant::now();
            let mut next = started + EVERY;
            while !done.load(Ordering::Acquire) {
                std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
                if !done.load(Ordering::Acquire) && Instant::now() >= next {
                    tracing::info!(
                        secs = started.elapsed().as_secs(),
                        "still building {what} over the stored events"
                    );
                    next += EVERY;
                }
            }
        });
        let out = f();
        done.store(true, Ordering::Release);
        watcher.thread().unpark();
        out
    })
}

/// Creates the index of one `data.`/`context.` path (a facet added while running); returns
/// its name.
pub(crate) fn create_path_index(conn: &Connection, p: &str) -> Result<String, StoreError> {
    let (root, rest) = p
        .split_once('.')
        .filter(|(root, _)| matches!(*root, "data" | "context"))
        .ok_or_else(|| {
            StoreError::Database(format!("path `{p}` must start with data. or context."))
        })?;
    let segs = parse_path(rest)
        .ok_or_else(|| StoreError::Database(format!("path `{p}` has an invalid segment")))?;
    path_index(conn, root, &segs, p)
}

/// Creates an index for each configured path and drops the ones no longer configured.
fn sync_path_indexes(conn: &Connection, paths: &[String]) -> Result<(), StoreError> {
    let mut wanted = Vec::new();
    for p in paths {
        let (root, rest) = p
            .split_once('.')
            .filter(|(root, _)| matches!(*root, "data" | "context"))
            .ok_or_else(|| {
                StoreError::Database(format!(
                    "indexed path `{p}` must start with data. or context."
                ))
            })?;
        let segs = parse_path(rest).ok_or_else(|| {
            StoreError::Database(format!("indexed path `{p}` has an invalid segment"))
        })?;
        wanted.push(path_index(conn, root, &segs, p)?);
    }
    let existing: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND (name LIKE 'events_path_%' OR name LIKE 'events_p2_%' OR name LIKE 'events_p3_%' OR name LIKE 'events_p4_%')",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for name in existing {
        if !wanted.contains(&name) {
            conn.execute_batch(&format!("DROP INDEX {name}"))?;
        }
    }
    Ok(())
}

/// The envelope attributes whose index is optional (`store.attribute_indexes`), with the
/// index each one gets. An index costs ingest: each event inserts an entry at a random
/// place among the values of its attribute, which makes these indexes the indexer's largest
/// cost (about 1.4 µs per index and event on a small database, measured with `herald bench
/// ingest`). Each leads with the event's day ([`crate::sql::DAY_EXPR`]), so those random
/// places are within one day's part of the index, which stays in memory however long the
/// history grows; a listing then reads day by day (see [`crate::sql::day_indexed`]). A
/// filter on an attribute without its index still works, by scanning within the query's
/// other bounds. After the time come `seq` (so the index gives listing order, time then
/// seq, without a sort) and the columns of a key's access rule, `visibility` and `tenant`:
/// SQLite then rules out an event the key may not read from the index entry, before it
/// fetches the row (through a read key with 8 tenants, an actor whose ~20,000 events are all
/// in other tenants: 28 → 8.7 ms over 1,000,000 events; ingest: +3% of the indexer's
/// instructions, `scripts/callgrind-ingest.sh`).
pub const ATTRIBUTE_INDEXES: &[(&str, &str, &str)] = &[
    (
        "tenant",
        "events_tenant_day",
        "events(time/86400000000, tenant, time, seq, visibility) WHERE tenant IS NOT NULL",
    ),
    (
        "actor",
        "events_actor_day",
        "events(time/86400000000, actor, time, seq, visibility, tenant) WHERE actor IS NOT NULL",
    ),
    (
        "subject",
        "events_subject_day",
        "events(time/86400000000, subject, time, seq, visibility, tenant) WHERE subject IS NOT NULL",
    ),
    (
        "correlationid",
        "events_correlation_day",
        "events(time/86400000000, correlationid, time, seq, visibility, tenant) WHERE correlationid IS NOT NULL",
    ),
    (
        "causationid",
        "events_causation_day",
        "events(time/86400000000, causationid, time, seq, visibility, tenant) WHERE causationid IS NOT NULL",
    ),
];

/// Creates the index of each attribute in `wanted` (building it over the stored events when
/// it is missing) and drops the others. An unknown name is an error, not ignored.
fn sync_attribute_indexes(conn: &Connection, wanted: &[String]) -> Result<(), StoreError> {
    if let Some(bad) = wanted
        .iter()
        .find(|w| !ATTRIBUTE_INDEXES.iter().any(|a| a.0 == w.as_str()))
    {
        let known: Vec<&str> = ATTRIBUTE_INDEXES.iter().map(|a| a.0).collect();
        return Err(StoreError::Database(format!(
            "store.attribute_indexes: `{bad}` cannot be indexed; choose among {} (type and time are always indexed)",
            known.join(", ")
        )));
    }
    let existing: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    // A new database has nothing to build over: creating its indexes is not news.
    let stored: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM events)", [], |r| r.get(0))?;
    for (attr, name, def) in ATTRIBUTE_INDEXES {
        let exists = existing.iter().any(|e| e == name);
        let want = wanted.iter().any(|w| w == attr);
        if want && !exists && !stored {
            conn.execute_batch(&format!("CREATE INDEX {name} ON {def}"))?;
        } else if want && !exists {
            tracing::info!(
                attribute = attr,
                index = name,
                "building an attribute index over the stored events"
            );
            let t = Instant::now();
            logged_build(&format!("the {attr} index"), || {
                conn.execute_batch(&format!("CREATE INDEX {name} ON {def}"))
            })?;
            tracing::info!(
                attribute = attr,
                ms = t.elapsed().as_millis() as u64,
                "attribute index built"
            );
        } else if !want && exists {
            tracing::info!(
                attribute = attr,
                index = name,
                "dropping an attribute index (not in store.attribute_indexes)"
            );
            conn.execute_batch(&format!("DROP INDEX {name}"))?;
        }
    }
    Ok(())
}

/// The highest seq whose text is in the FTS index.
fn fts_seq(conn: &Connection) -> rusqlite::Result<u64> {
    let v: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'fts_seq'", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Prepares a stored body again (it was valid when stored, so no limit applies), for log
/// replay and full-text catch-up. `recorded_us` becomes its `recorded` column.
fn reprepare(body: &str, recorded_us: i64) -> Result<PreparedEvent, herald_core::Rejection> {
    herald_core::event::prepare_stored(body, recorded_us)
}

/// Seconds, to a tenth, for the log.
fn tenths(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// Says how far the full-text thread's catch-up from SQLite has got (tens of seconds per
/// million events): once at the start when it has many events to do, then every 5 seconds,
/// and when it is done.
struct CatchUpProgress {
    total: u64,
    done: u64,
    /// It runs with [`FTS_CATCH_UP_TUNING`] and must end with a merge.
    merge: bool,
    started: Instant,
    reported: Instant,
}

impl CatchUpProgress {
    /// Catch-ups of fewer events take a second or less and are not announced.
    const ANNOUNCE: u64 = 50_000;
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    fn new(total: u64) -> CatchUpProgress {
        if total >= Self::ANNOUNCE {
            tracing::info!(
                events = total,
                "indexing the text of stored events in the background; text search scans them meanwhile"
            );
        }
        let now = Instant::now();
        CatchUpProgress {
            total,
            done: 0,
            merge: false,
            started: now,
            reported: now,
        }
    }

    /// Called after each batch, with how many events it held.
    fn step(&mut self, events: u64) {
        self.done += events;
        if self.reported.elapsed() < Self::EVERY {
            return;
        }
        self.reported = Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        tracing::info!(
            done = self.done,
            of = self.total,
            percent = (self.done * 100)
                .checked_div(self.total)
                .unwrap_or(100)
                .min(100),
            events_per_s = (self.done as f64 / secs) as u64,
            "indexing the text of stored events"
        );
    }

    fn finish(&self) {
        if self.done >= Self::ANNOUNCE || self.started.elapsed() >= Self::EVERY {
            tracing::info!(
                events = self.done,
                seconds = tenths(self.started.elapsed()),
                "indexed the text of the stored events the full-text index lacked"
            );
        }
    }
}

/// Logs a step of the writer that held up acknowledgements for long (the disk stalled, or
/// a background thread fell behind), so that latency spikes can be explained.
fn slow(what: &'static str, since: Instant, events: usize) {
    slow_after(100, what, since, events);
}

/// [`slow`] for the indexer's steps, which hold up no acknowledgement: a commit of a
/// second's worth of events at a low priority takes a few hundred milliseconds under load.
fn slow_indexer(what: &'static str, since: Instant, events: usize) {
    slow_after(2000, what, since, events);
}

/// Under sustained overload a step is slow at every commit (the writer waits for the
/// indexer several times a second): each step is logged at most once per
/// [`LogThrottle::EVERY_MS`], with how many slow ones it stands for.
fn slow_after(limit_ms: u128, what: &'static str, since: Instant, events: usize) {
    let ms = since.elapsed().as_millis();
    if ms < limit_ms {
        return;
    }
    // One throttle per step (a handful), found under a lock taken only by slow steps, with
    // the longest duration since its last report (a line stands for the worst of them).
    static LOGS: Mutex<Vec<(&str, LogThrottle, u128)>> = Mutex::new(Vec::new());
    let due = {
        let mut logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
        let i = match logs.iter().position(|(w, _, _)| *w == what) {
            Some(i) => i,
            None => {
                logs.push((what, LogThrottle::default(), 0));
                logs.len() - 1
            }
        };
        let (_, log, longest) = &mut logs[i];
        *longest = (*longest).max(ms);
        log.due().map(|also| (also, std::mem::take(longest)))
    };
    if let Some((also, longest_ms)) = due {
        tracing::warn!(
            ms,
            events,
            also_since_last_report = also,
            longest_ms,
            "slow store step: {what}"
        );
    }
}

/// Lowers the scheduling priority of the calling thread (Linux: a per-thread nice value).
/// Background work that can lag without harm (indexing, text indexing, checkpoints) then
/// yields the cores to what answers requests and feeds live streams, whose latency matters.
/// The indexer can lag: listings read what it has not committed from memory, and its
/// bounded backlog stops the writer (and then ingest) before it falls too far behind.
pub(crate) fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority with `who = 0` only changes the calling thread's nice value; it
    // reads no memory of ours.
    unsafe {
        let _ = libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Copies committed WAL frames into the database file in the background (PASSIVE: never
/// blocks the writer or readers), so that the writer does not stall on checkpoints.
fn checkpointer(conn: Connection, stop: Arc<AtomicBool>) {
    lower_priority();
    let mut failing = false;
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(std::time::Duration::from_millis(100));
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
            Ok(_) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "background checkpoint failed; retrying");
                }
                failing = true;
            }
        }
    }
}

/// The SQL that inserts one event (shared by the writer and log replay).
const INSERT_EVENT: &str =
    "INSERT INTO events (seq, time, recorded, type, source, id, subject, severity, actor, tenant, \
     correlationid, causationid, visibility, dkey, chash, body, readers, loc, len) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)";

/// Where an event's body is: in a segment (`loc`, `len`), or, for a legacy log replay, in the
/// row itself.
enum BodyAt<'a> {
    Segment(i64, usize),
    Row(&'a str),
}

/// The days that hold events (the `days` table) as far as one writing connection knows: an
/// insert adds its event's day to the table the first time it sees that day. After a
/// rollback the set is forgotten (the rows it stood for may be gone); adding a day again is
/// harmless.
#[derive(Default)]
struct Days(std::collections::HashSet<i64>);

impl Days {
    fn note(&mut self, conn: &Connection, time_us: i64) -> rusqlite::Result<()> {
        let day = crate::sql::day_of(time_us);
        if self.0.contains(&day) {
            return Ok(());
        }
        conn.prepare_cached("INSERT OR IGNORE INTO days (day) VALUES (?1)")?
            .execute([day])?;
        self.0.insert(day);
        Ok(())
    }

    fn forget(&mut self) {
        self.0.clear();
    }
}

fn insert_event(
    conn: &Connection,
    days: &mut Days,
    seq: u64,
    ev: &PreparedEvent,
    at: BodyAt<'_>,
) -> rusqlite::Result<()> {
    days.note(conn, ev.time_us)?;
    let (body, loc, len) = match at {
        BodyAt::Segment(loc, len) => ("", Some(loc), Some(len as i64)),
        BodyAt::Row(body) => (body, None, None),
    };
    conn.prepare_cached(INSERT_EVENT)?.execute(params![
        seq as i64,
        ev.time_us,
        ev.recorded_us,
        ev.ty,
        ev.source,
        ev.id,
        ev.subject,
        ev.severity.rank(),
        ev.actor,
        ev.tenant,
        ev.correlationid,
        ev.causationid,
        ev.visibility.rank(),
        ev.dedup_key,
        ev.content_hash,
        body,
        crate::sql::readers_column(&ev.readers),
        loc,
        len,
    ])?;
    Ok(())
}

/// The directory of the event segments in a data directory.
pub fn segments_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("segments")
}

/// The seq a stored body starts with (`{"seq":N,...`).
fn seq_of(body: &str) -> Option<u64> {
    body.strip_prefix("{\"seq\":")
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse::<u64>().ok())
}

/// The `recordedtime` of a stored body, in microseconds (the other members are skipped,
/// not built).
fn recorded_of(body: &str) -> i64 {
    #[derive(serde::Deserialize)]
    struct Recorded<'a> {
        #[serde(borrow)]
        recordedtime: Option<&'a str>,
    }
    serde_json::from_str::<Recorded<'_>>(body)
        .ok()
        .and_then(|r| r.recordedtime)
        .and_then(herald_core::timespec::parse_rfc3339)
        .unwrap_or(0)
}

/// Indexes one stored body again (start-up replay): its attributes are prepared from it.
fn index_stored(
    conn: &Connection,
    days: &mut Days,
    seq: u64,
    body: &str,
    at: BodyAt<'_>,
    origin: &str,
) -> Result<(), StoreError> {
    let ev = reprepare(body, recorded_of(body)).map_err(|r| {
        StoreError::Database(format!("{origin} record does not parse: {}", r.reason))
    })?;
    insert_event(conn, days, seq, &ev, at)?;
    Ok(())
}

/// Where indexing got to, as (seq, location, length): the mark the indexer commits with its
/// rows, or (for a database from before the mark) the newest row. The mark stays when rows
/// are deleted, so their events are neither indexed again nor their seqs reused.
type IndexedAt = Option<(i64, Option<i64>, Option<i64>)>;

fn indexed_position(conn: &Connection) -> Result<IndexedAt, StoreError> {
    let mark: Option<(i64, Option<i64>, Option<i64>)> = conn
        .query_row("SELECT value FROM meta WHERE key = 'indexed'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .and_then(|v| {
            let mut it = v.split(' ').map(|x| x.parse::<i64>().ok());
            Some((it.next()??, Some(it.next()??), Some(it.next()??)))
        });
    let newest: Option<(i64, Option<i64>, Option<i64>)> = conn
        .query_row(
            "SELECT seq, loc, len FROM events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(match (mark, newest) {
        (Some(m), Some(n)) if n.0 > m.0 => Some(n),
        (Some(m), _) => Some(m),
        (None, n) => n,
    })
}

/// The location and length of the newest body the index holds (an acknowledged record).
fn indexed_body(at: IndexedAt) -> Option<(i64, u64)> {
    at.and_then(|(_, loc, len)| Some((loc?, len? as u64)))
}

/// Inserts the segment records that SQLite does not hold yet (after a crash, or a power
/// loss that cost SQLite its last commits), in one transaction. Returns the highest seq.
/// `from`: [`indexed_position`], read once at open (the segment writer was opened after it).
fn replay_segments(
    conn: &Connection,
    dir: &Path,
    from: IndexedAt,
    end: i64,
) -> Result<u64, StoreError> {
    let mut last = from.map(|n| n.0 as u64).unwrap_or(0);
    let after = indexed_body(from);
    let tx = conn.unchecked_transaction()?;
    let mut newest_loc = None;
    let mut replayed = 0usize;
    let mut failure: Option<StoreError> = None;
    let mut days = Days::default();
    let res = crate::segment::replay(dir, after, Some(end), &mut |loc, body| {
        let step = (|| {
            let seq = seq_of(body)
                .ok_or_else(|| StoreError::Database("an event segment record has no seq".into()))?;
            // Records of a batch whose write failed may follow (their seqs were never
            // reused, so they are higher); anything at or below what SQLite holds is known.
            if seq <= last {
                return Ok(());
            }
            index_stored(
                &tx,
                &mut days,
                seq,
                body,
                BodyAt::Segment(loc, body.len()),
                "an event segment",
            )?;
            last = seq;
            newest_loc = Some((loc, body.len()));
            replayed += 1;
            Ok(())
        })();
        step.map_err(|e| {
            failure = Some(e);
            std::io::Error::other("replay stopped")
        })
    });
    if let Some(e) = failure {
        return Err(e);
    }
    res.map_err(|e| StoreError::Database(format!("cannot read the event segments: {e}")))?;
    if let Some((loc, len)) = newest_loc {
        mark_indexed(&tx, last, loc, len)?;
    }
    tx.commit()?;
    if replayed > 0 {
        tracing::info!(
            events = replayed,
            "indexed acknowledged events from the event segments"
        );
    }
    Ok(last)
}

/// Records, in the index's transaction, the newest event it holds and where its body is:
/// the start-up replay of the segments continues after it.
fn mark_indexed(conn: &Connection, seq: u64, loc: i64, len: usize) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('indexed', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![format!("{seq} {loc} {len}")])?;
    // Every event inserted by this code has its day in `days` (see `Days`).
    mark_days(conn, seq)
}

fn mark_days(conn: &Connection, seq: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('days_seq', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![seq.to_string()])?;
    Ok(())
}

/// Adds to `days` the days of events past `meta.days_seq`, which only this code advances:
/// a server of an earlier version that kept running while another process (such as
/// `herald key`) applied the migration that made `days` inserted events without adding
/// their days. Usually no event is past the mark, and this is one lookup.
fn complete_days(conn: &Connection) -> Result<(), StoreError> {
    let mark: u64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'days_seq'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let newest: i64 =
        conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?;
    if newest as u64 <= mark {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    let added = tx.execute(
        "INSERT OR IGNORE INTO days SELECT DISTINCT time/86400000000 FROM events WHERE seq > ?1",
        [mark as i64],
    )?;
    mark_days(&tx, newest as u64)?;
    tx.commit()?;
    tracing::info!(
        events = newest as u64 - mark,
        days = added,
        "listed the days of events stored without them"
    );
    Ok(())
}

/// Data directories of earlier versions kept recent events in a two-file write-ahead log
/// (`events.log`, `events.log.1`) and bodies in SQLite: the records SQLite lacks are
/// inserted the old way (body in the row), then the files are removed.
fn replay_legacy_logs(conn: &Connection, data_dir: &Path) -> Result<(), StoreError> {
    let names = [data_dir.join("events.log"), data_dir.join("events.log.1")];
    if !names.iter().any(|p| p.exists()) {
        return Ok(());
    }
    let mut records = Vec::new();
    for p in &names {
        let read = Log::open(p).and_then(|mut log| log.records());
        records.extend(read.map_err(|e| {
            StoreError::Database(format!(
                "cannot read the write-ahead log {}: {e}",
                p.display()
            ))
        })?);
    }
    let mut parsed = Vec::with_capacity(records.len());
    for body in &records {
        let seq = seq_of(body)
            .ok_or_else(|| StoreError::Database("a write-ahead log record has no seq".into()))?;
        parsed.push((seq, body));
    }
    // Two files, each in seq order; together they may interleave.
    parsed.sort_by_key(|(seq, _)| *seq);
    let mut last: u64 = conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| {
        r.get::<_, i64>(0)
    })? as u64;
    let mut replayed = 0usize;
    let tx = conn.unchecked_transaction()?;
    let mut days = Days::default();
    for (seq, body) in parsed {
        if seq <= last {
            continue;
        }
        index_stored(
            &tx,
            &mut days,
            seq,
            body,
            BodyAt::Row(body),
            "a write-ahead log",
        )?;
        last = seq;
        replayed += 1;
    }
    tx.commit()?;
    for p in &names {
        if let Err(e) = std::fs::remove_file(p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(StoreError::Database(format!(
                    "cannot remove {}: {e}",
                    p.display()
                )));
            }
        }
    }
    tracing::info!(
        events = replayed,
        "moved from the write-ahead log of an earlier version to event segments"
    );
    Ok(())
}

/// What the writer shares with readers: how far events are durable and visible.
struct Progress {
    /// Every event with `seq <=` this is durable (in the log or in SQLite).
    acked: AtomicU64,
    /// Someone waits for the indexer to commit its open transaction (`Store::settle`).
    commit_wanted: AtomicBool,
    /// Every event with `seq <=` this is committed in SQLite (visible to readers).
    committed: tokio::sync::watch::Sender<u64>,
}

/// An acknowledged event that SQLite does not hold yet, for duplicate detection.
struct PendingEvent {
    seq: u64,
    chash: i64,
    time_us: i64,
    source: String,
    id: String,
}

/// Acknowledged events on their way to SQLite, by duplicate key. The writer adds, the
/// indexer removes after its commit; the writer holds the lock while it looks for
/// duplicates of a group, so an event is always in this map or visible in SQLite.
type Pending = Mutex<HashMap<i64, Vec<PendingEvent>, crate::dedup::RandomState>>;

/// Acknowledged batches that SQLite does not hold yet, oldest first: the writer adds a group's
/// batch before it answers anyone, the indexer removes batches once its commit holds them.
/// So every acknowledged event is here or in any SQLite snapshot taken after looking here;
/// listings read it from memory instead of waiting for the indexer (see
/// [`SqliteStore::query`]). At most the indexer's backlog (`max_index_backlog`) plus its open
/// transaction.
type Unindexed = Mutex<std::collections::VecDeque<MemBatch>>;

/// A batch of acknowledged events held in memory until SQLite ([`Unindexed`]) and the
/// full-text index ([`Untexted`]) hold them, with a compact copy of what a listing tests
/// first on each event: its time, seq and token signature, 88 bytes where the event is
/// several hundred with its text elsewhere. A listing under heavy ingest passes over tens of
/// thousands of these events, most ruled out by their time or signature; reading only the
/// keys for those keeps the scan in a few megabytes of memory read in order
/// ([`Matcher::may_match`](herald_core::matcher::Matcher::may_match)).
#[derive(Clone)]
struct MemBatch {
    events: LiveBatch,
    keys: Arc<[ScanKey]>,
}

/// See [`MemBatch`].
#[derive(Clone, Copy)]
struct ScanKey {
    time_us: i64,
    seq: u64,
    sig: herald_core::matcher::TokenSig,
    plain: bool,
}

impl MemBatch {
    fn new(events: LiveBatch) -> MemBatch {
        let keys = events
            .iter()
            .map(|e| ScanKey {
                time_us: e.event.time_us,
                seq: e.seq,
                sig: e.event.sig,
                plain: e.event.plain,
            })
            .collect();
        MemBatch { events, keys }
    }
}

impl std::ops::Deref for MemBatch {
    type Target = [LiveEvent];

    fn deref(&self) -> &[LiveEvent] {
        &self.events
    }
}

/// Events that SQLite holds, or is committing, and the full-text index does not hold yet,
/// oldest first: the indexer adds a transaction's batches before its commit, the full-text
/// thread removes them once its own commit holds them. A listing reads the acknowledged
/// seq, then looks at [`Unindexed`], then here, then takes its SQLite snapshot: every event
/// up to that seq is then among the unindexed ones, here, or in the snapshot's full-text
/// index (an event acknowledged later may have been committed and missed here, so the
/// listing leaves those out). Text terms test these events in memory (see [`text_hits`])
/// instead of reading their bodies from the segments, which under heavy ingest meant up to
/// 200,000 reads per listing. The batches are the ones the full-text thread holds anyway;
/// this adds only their handles.
///
/// While the full-text thread catches up from SQLite (at start, or after its writes failed),
/// the events past its watermark are not all here (`complete` is false) and text terms scan
/// them in SQL instead. Its hand-over back to this list is in three steps, so that no
/// committed event is ever in neither place: the full-text thread sets `collecting` once
/// its reads from SQLite have caught up; from the indexer's next commit on, every batch is
/// added here, and the indexer notes the last seq of each commit it did not add
/// (`not_added_through`); once the index holds everything up to that seq, every committed
/// event past its watermark is here, and the full-text thread sets `complete`.
#[derive(Default)]
struct Untexted {
    batches: std::collections::VecDeque<MemBatch>,
    /// Every committed event past the full-text watermark is in `batches`.
    complete: bool,
    /// The indexer adds each commit's batches (see above).
    collecting: bool,
    /// The last seq of the newest commit whose batches the indexer did not add.
    not_added_through: u64,
    /// The full-text thread cannot write its index (it retries): nothing to wait for.
    failing: bool,
}

impl Untexted {
    /// Forgets the batches: the full-text thread catches up from SQLite again.
    fn abandon(&mut self) {
        self.complete = false;
        self.collecting = false;
        self.batches.clear();
    }

    /// Called by the indexer before each commit, with the commit's batches.
    fn committing(&mut self, batches: &[MemBatch], last: u64) {
        if self.complete || self.collecting {
            self.batches.extend(batches.iter().cloned());
        } else {
            self.not_added_through = last;
        }
    }

    /// Called by the full-text thread after each of its commits, with its watermark: drops
    /// the batches the index now holds, and completes the hand-over when it can.
    fn indexed_through(&mut self, watermark: u64) {
        while self
            .batches
            .front()
            .and_then(|b| b.last())
            .is_some_and(|e| e.seq <= watermark)
        {
            self.batches.pop_front();
        }
        if self.collecting && watermark >= self.not_added_through {
            self.complete = true;
        }
    }
}

/// Events handed to the indexer and not inserted yet: the writer waits above
/// `SqliteOptions::max_index_backlog` (which fills the request queue, and ingest answers
/// 503).
struct Backlog {
    events: Mutex<usize>,
    drained: Condvar,
}

/// The indexer commits its SQLite transaction after this many events, or when it is this
/// old, or when `Store::settle` asks for it, whichever comes first. Each commit writes every
/// index page it touched; a second's worth of events shares those pages (a measured ~25%
/// more sustained ingest than 200 ms), and readers never wait for the age (they read the
/// events of the open transaction from memory). The events of the open transaction are kept
/// in memory for a retry, which bounds it by count.
const TXN_MAX_EVENTS: usize = 100_000;
const TXN_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(1000);
/// A group of fewer events than this makes the indexer wait [`GATHER_WAIT`] for more before
/// it inserts them, and take up to this many (see `Indexer::gather`).
const GATHER_EVENTS: usize = 1_000;
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// The writer thread: the durability point. It never writes to SQLite, so SQLite's commits
/// (hundreds of milliseconds for large transactions) never hold up acknowledgements.
struct Writer {
    /// Read-only connection that checks candidate duplicates among committed events.
    probe: Connection,
    /// Which events may hold a duplicate key.
    dedup: Arc<DedupIndex>,
    rx: Receiver<WriteJob>,
    next_seq: u64,
    queued: Arc<AtomicUsize>,
    max_commit_events: usize,
    on_commit: Option<CommitObserver>,
    /// Where the bodies go: the durability point.
    seg: SegmentWriter,
    progress: Arc<Progress>,
    pending: Arc<Pending>,
    unindexed: Arc<Unindexed>,
    backlog: Arc<Backlog>,
    /// Waits above this many events in `backlog` (`SqliteOptions::max_index_backlog`).
    max_backlog: usize,
    /// Publishes acknowledged events to live subscribers (never blocks: a full channel
    /// overwrites the oldest batch, and receivers that missed it catch up from SQLite).
    live: tokio::sync::broadcast::Sender<LiveBatch>,
    index_tx: Option<std::sync::mpsc::Sender<IndexBatch>>,
    /// Set when the indexer cannot store events any more: refuse appends.
    failed: Arc<AtomicBool>,
    /// fsync the segment before answering (see [`SqliteOptions::fsync`]).
    fsync: bool,
}

/// Acknowledged events for the indexer, with where each body is in the segments.
struct IndexBatch {
    events: MemBatch,
    /// `(loc, len)` of each event's body, in the order of `events`.
    locs: Vec<(i64, usize)>,
}

impl Writer {
    fn run(mut self) {
        // Every sender gone (the store is closing): the queue is drained, stop.
        while let Ok(first) = self.rx.recv() {
            self.handle(first);
        }
        // Dropping the indexer's channel lets it commit what it holds and stop.
        self.index_tx = None;
    }

    /// Writes one group of requests to the log, fsyncs, answers each request, publishes the
    /// stored events and hands them to the indexer.
    fn handle(&mut self, first: WriteJob) {
        let started = Instant::now();
        let mut n = first.events.len();
        let mut jobs = vec![first];
        while n < self.max_commit_events {
            match self.rx.try_recv() {
                Ok(job) => {
                    n += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        self.queued.fetch_sub(jobs.len(), Ordering::Relaxed);
        if self.failed.load(Ordering::Acquire) {
            for job in jobs {
                let _ = job.reply.send(Err(StoreError::Database(
                    "the store failed earlier; restart Herald (acknowledged events are safe in the log)".into(),
                )));
            }
            return;
        }
        if let Err(e) = self.seg.roll_if_full() {
            // The current segment just grows past its limit; the next group tries again.
            tracing::warn!(error = %e, "cannot start a new event segment");
        }
        let mut stored: Vec<LiveEvent> = Vec::with_capacity(n);
        let mut locs = Vec::with_capacity(n);
        let mut outcomes = Vec::with_capacity(jobs.len());
        let result = self
            .write(&mut jobs, &mut stored, &mut locs, &mut outcomes)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let t = Instant::now();
                let r = self
                    .seg
                    .sync(self.fsync)
                    .map_err(|e| format!("event segment: {e}"));
                slow("event segment fsync", t, n);
                r
            });
        if let Err(e) = result {
            // Nothing of this group was acknowledged: forget it. Its seqs are not handed
            // out again: part of its records may have reached the file, and a replay must
            // never take one of them for an acknowledged event with the same seq (at worst
            // it brings back an event whose sender was told it failed, and a retry with
            // the same id is then a duplicate).
            self.seg.discard_unsynced();
            if let Ok(mut p) = self.pending.lock() {
                for ev in &stored {
                    if let Some(list) = p.get_mut(&ev.event.dedup_key) {
                        list.retain(|x| x.seq != ev.seq);
                        if list.is_empty() {
                            p.remove(&ev.event.dedup_key);
                        }
                    }
                }
            }
            tracing::error!(error = %e, events = n, "write failed; the batch was not stored");
            for job in jobs {
                let _ = job.reply.send(Err(StoreError::Database(e.clone())));
            }
            return;
        }
        let last = self.next_seq - 1;
        let batch = (!stored.is_empty()).then(|| MemBatch::new(LiveBatch::from(stored)));
        // Before anyone hears of these events: a listing looks here first, then in SQLite.
        if let Some(b) = &batch {
            self.unindexed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(b.clone());
        }
        self.progress.acked.store(last, Ordering::SeqCst);
        if let Some(cb) = &self.on_commit {
            cb(CommitInfo {
                events: n,
                requests: jobs.len(),
                duration: started.elapsed(),
            });
        }
        // Announced live before the appenders hear back: a subscriber that arrives after an
        // append returned never receives that append's events as new. One that arrives after
        // this check still sees these events: they are acknowledged (above), so its catch-up
        // read, which starts after it subscribed, includes them.
        if let Some(b) = &batch {
            if self.live.receiver_count() > 0 {
                let _ = self.live.send(b.events.clone());
            }
        }
        for (job, out) in jobs.into_iter().zip(outcomes) {
            let _ = job.reply.send(Ok(out));
        }
        let Some(batch) = batch else {
            return;
        };
        self.hand_to_indexer(IndexBatch {
            events: batch,
            locs,
        });
    }

    /// Hands a batch to the indexer, waiting while it is too far behind.
    fn hand_to_indexer(&mut self, batch: IndexBatch) {
        let Some(tx) = &self.index_tx else { return };
        let t = Instant::now();
        if let Ok(mut backlog) = self.backlog.events.lock() {
            // An indexer that stopped (even by a panic) sets `failed` and wakes us.
            while *backlog > self.max_backlog && !self.failed.load(Ordering::Acquire) {
                match self.backlog.drained.wait(backlog) {
                    Ok(b) => backlog = b,
                    Err(_) => return,
                }
            }
            *backlog += batch.events.len();
        }
        slow("waiting for the indexer", t, batch.events.len());
        if tx.send(batch).is_err() {
            tracing::error!("the indexer stopped; refusing writes until restart");
            self.failed.store(true, Ordering::Release);
            self.index_tx = None;
        }
    }

    /// Finds duplicates and conflicts, gives the new events their seqs and buffers their log
    /// records. The pending lock is held throughout, and each look in SQLite (a snapshot of
    /// its own: a candidate is checked on its own) is taken after it: an event the indexer
    /// committed and dropped from `pending` before is in the snapshot, and none is dropped
    /// meanwhile. A new event, almost always without candidates, costs no SQL.
    fn write(
        &mut self,
        jobs: &mut [WriteJob],
        stored: &mut Vec<LiveEvent>,
        locs: &mut Vec<(i64, usize)>,
        outcomes: &mut Vec<Vec<AppendOutcome>>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let pending = self.pending.clone();
        let mut pending = match pending.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        };
        let mut lookup = self
            .probe
            .prepare_cached("SELECT chash, source, id, time FROM events WHERE seq = ?1")?;
        let mut body = String::new();
        let mut candidates = Vec::new();
        let mut keys = Vec::new();
        for job in jobs.iter_mut() {
            let mut outs = Vec::with_capacity(job.events.len());
            for ev in std::mem::take(&mut job.events) {
                let same = |chash: i64, time: i64| {
                    chash == ev.content_hash && (!ev.time_given || time == ev.time_us)
                };
                let mut found = pending.get(&ev.dedup_key).and_then(|list| {
                    list.iter()
                        .find(|p| p.source == ev.source && p.id == ev.id)
                        .map(|p| (p.seq, same(p.chash, p.time_us)))
                });
                if found.is_none() {
                    // Candidates in `pending` were looked at above; the others are checked
                    // in the snapshot (absent: never acknowledged, or deleted since).
                    candidates.clear();
                    self.dedup
                        .candidates(ev.dedup_key as u64, &mut candidates)
                        .map_err(|e| format!("duplicate-key index: {e}"))?;
                    for &seq in &candidates {
                        let mut rows = lookup.query(params![seq as i64])?;
                        if let Some(r) = rows.next()? {
                            let source: String = r.get(1)?;
                            let id: String = r.get(2)?;
                            if source == ev.source && id == ev.id {
                                found = Some((seq, same(r.get(0)?, r.get(3)?)));
                                break;
                            }
                        }
                    }
                }
                match found {
                    Some((seq, true)) => outs.push(AppendOutcome::Duplicate(seq)),
                    Some((seq, false)) => outs.push(AppendOutcome::Conflict(seq)),
                    None => {
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        body.clear();
                        let live = LiveEvent::new(seq, ev);
                        live.write_body(&mut body);
                        locs.push((self.seg.push(&body), body.len()));
                        let e = &live.event;
                        keys.push((e.dedup_key as u64, seq));
                        pending.entry(e.dedup_key).or_default().push(PendingEvent {
                            seq,
                            chash: e.content_hash,
                            time_us: e.time_us,
                            source: e.source.clone(),
                            id: e.id.clone(),
                        });
                        stored.push(live);
                        outs.push(AppendOutcome::Stored(seq));
                    }
                }
            }
            outcomes.push(outs);
        }
        // Kept even if this group fails: a record that reached the segment may come back
        // at the next start, and a key without its event only costs a look.
        self.dedup.insert(&keys, self.next_seq - 1);
        drop(lookup);
        Ok(())
    }
}

/// The indexer thread: owns the SQLite write connection and inserts acknowledged events in
/// long transactions (few large commits rewrite far fewer index pages than many small ones).
struct Indexer {
    conn: Connection,
    rx: Receiver<IndexBatch>,
    progress: Arc<Progress>,
    pending: Arc<Pending>,
    unindexed: Arc<Unindexed>,
    untexted: Arc<Mutex<Untexted>>,
    backlog: Arc<Backlog>,
    /// The batches of the open transaction: to drop from `pending` after the commit, and to
    /// insert again if the transaction fails.
    txn: Vec<IndexBatch>,
    txn_started: Option<Instant>,
    txn_events: usize,
    days: Days,
    /// `herald_body`'s cache on `conn`: before each insert the event's body goes in when
    /// `seed_bodies` says an index evaluates it (a path index; checked as each transaction
    /// begins, since the schema registry adds them while Herald runs), so that the index
    /// does not read it back from its segment (see [`BodyCache`]).
    bodies: BodyCache,
    seed_bodies: bool,
    body_buf: String,
    /// The batches of the open transaction, handed to the full-text thread after the commit
    /// (it gives FTS5 their text itself, off this thread).
    fts_batch: Vec<MemBatch>,
    fts_tx: Option<SyncSender<Vec<MemBatch>>>,
    #[cfg(test)]
    gate: Option<Arc<Gate>>,
    failed: Arc<AtomicBool>,
}

/// However the indexer thread ends, the writer must not wait for it any more: an exit
/// without the writer's leave (a panic) marks the store failed and wakes the writer.
impl Drop for Indexer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the indexer stopped unexpectedly; refusing writes until restart (acknowledged events are safe in the event segments)");
            self.failed.store(true, Ordering::Release);
        }
        // Under the lock, so that a writer between its check and its wait cannot miss it.
        let _guard = self.backlog.events.lock();
        self.backlog.drained.notify_all();
    }
}

impl Indexer {
    fn run(mut self) {
        lower_priority();
        loop {
            // With a transaction open, wake up often enough to commit on time or on demand.
            let next = if self.txn_started.is_some() {
                self.rx.recv_timeout(std::time::Duration::from_millis(1))
            } else {
                self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            };
            match next {
                Ok(batch) => {
                    #[cfg(test)]
                    if let Some(gate) = &self.gate {
                        gate.pass();
                    }
                    let mut batches = vec![batch];
                    self.gather(&mut batches);
                    for batch in batches {
                        let n = batch.events.len();
                        // After a failure nothing more is committed: the events stay in the
                        // event segments, and the next start replays everything past
                        // SQLite's mark (committing later batches would skip the failed
                        // ones).
                        if !self.failed.load(Ordering::Acquire) {
                            self.add(batch);
                        }
                        if let Ok(mut b) = self.backlog.events.lock() {
                            *b = b.saturating_sub(n);
                        }
                        self.backlog.drained.notify_all();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.failed.load(Ordering::Acquire) {
                continue;
            }
            if let Some(started) = self.txn_started {
                if self.txn_events >= TXN_MAX_EVENTS
                    || started.elapsed() >= TXN_MAX_AGE
                    || self.progress.commit_wanted.load(Ordering::Acquire)
                {
                    self.commit();
                }
            }
        }
        if self.txn_started.is_some() && !self.failed.load(Ordering::Acquire) {
            self.commit();
        }
        self.fts_tx = None;
        if let Err(e) = self
            .conn
            .execute_batch("PRAGMA optimize; PRAGMA wal_checkpoint(TRUNCATE);")
        {
            tracing::warn!(error = %e, "final optimize and checkpoint failed");
        }
    }

    /// When `batches` (which holds one group) is small, as the groups of single-event
    /// requests are (~10 events), waits [`GATHER_WAIT`] and adds the groups the writer queued
    /// meanwhile, up to [`GATHER_EVENTS`] events: inserting a few events at a time, woken by
    /// each group, cost twice the CPU per event of inserting them by the hundred (cold caches
    /// between wake-ups). Readers do not wait for this (they find the events in `unindexed`);
    /// a large group is inserted at once, as before. A writer gone is found by the next
    /// receive.
    fn gather(&mut self, batches: &mut Vec<IndexBatch>) {
        let mut n: usize = batches.iter().map(|b| b.events.len()).sum();
        if n >= GATHER_EVENTS {
            return;
        }
        if !self.progress.commit_wanted.load(Ordering::Acquire) {
            std::thread::sleep(GATHER_WAIT);
        }
        while n < GATHER_EVENTS {
            let Ok(b) = self.rx.try_recv() else { return };
            n += b.events.len();
            batches.push(b);
        }
    }

    fn add(&mut self, batch: IndexBatch) {
        if self.txn_started.is_none() {
            if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
                tracing::error!(error = %e, "cannot begin an index transaction");
                self.fail();
                return;
            }
            self.txn_started = Some(Instant::now());
            self.txn_events = 0;
            self.seed_bodies = indexes_read_bodies(&self.conn);
        }
        if let Err(e) = self.insert(&batch) {
            tracing::error!(error = %e, "index insert failed; retrying the transaction");
            self.txn.push(batch);
            self.retry();
            return;
        }
        self.txn_events += batch.events.len();
        self.txn.push(batch);
    }

    fn insert(&mut self, batch: &IndexBatch) -> rusqlite::Result<()> {
        for (ev, &(loc, len)) in batch.events.iter().zip(&batch.locs) {
            if self.seed_bodies {
                self.body_buf.clear();
                ev.write_body(&mut self.body_buf);
                let prefix = self.body_buf.len() - ev.event.body_tail.len();
                self.bodies.put(
                    loc,
                    len as i64,
                    Arc::from(self.body_buf.as_str()),
                    Some(Roots::of(&ev.event, prefix)),
                );
            }
            insert_event(
                &self.conn,
                &mut self.days,
                ev.seq,
                &ev.event,
                BodyAt::Segment(loc, len),
            )?;
        }
        if self.fts_tx.is_some() {
            self.fts_batch.push(batch.events.clone());
        }
        Ok(())
    }

    /// Rolls the open transaction back and inserts its batches again in a new one (a
    /// transient failure such as a full disk that was freed). Every event is acknowledged
    /// and safe in the log meanwhile; if this fails too, the store stops taking writes and a
    /// restart replays the log.
    fn retry(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        self.days.forget();
        self.fts_batch.clear();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let batches = std::mem::take(&mut self.txn);
        let res = self.conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
            for b in &batches {
                self.insert(b)?;
            }
            Ok(())
        });
        self.txn_events = batches.iter().map(|b| b.events.len()).sum();
        self.txn = batches;
        match res {
            Ok(()) => self.txn_started = Some(Instant::now()),
            Err(e) => {
                tracing::error!(error = %e, "index transaction failed again");
                self.fail();
            }
        }
    }

    fn fail(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        self.days.forget();
        self.txn_started = None;
        tracing::error!("the index cannot store events; refusing writes until restart (acknowledged events are safe in the event segments)");
        self.failed.store(true, Ordering::Release);
    }

    /// Commits the open SQLite transaction, publishes what readers can now see, drops the
    /// committed events from `pending`, and hands the search texts to the full-text thread.
    fn commit(&mut self) {
        let Some(last) = self.txn.last().and_then(|b| b.events.last()).map(|e| e.seq) else {
            let _ = self.conn.execute_batch("COMMIT");
            self.txn_started = None;
            return;
        };
        let t = Instant::now();
        // Before the commit: a reader that finds these events in SQLite finds them here too
        // until the full-text index holds them (see `Untexted`). A failed commit that is
        // retried adds them again; the full-text thread drops both copies.
        if self.fts_tx.is_some() && !self.fts_batch.is_empty() {
            self.untexted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .committing(&self.fts_batch, last);
        }
        let mark = self
            .txn
            .last()
            .and_then(|b| b.locs.last())
            .map_or(Ok(()), |&(loc, len)| {
                mark_indexed(&self.conn, last, loc, len)
            });
        if let Err(e) = mark.and_then(|()| self.conn.execute_batch("COMMIT")) {
            tracing::error!(error = %e, "index commit failed; retrying");
            self.retry();
            return;
        }
        slow_indexer("SQLite commit", t, self.txn_events);
        self.txn_started = None;
        self.txn_events = 0;
        self.progress.commit_wanted.store(false, Ordering::Release);
        // Before readers hear of the commit, so that none finds these batches in memory
        // after it stopped waiting for them (they are in SQLite either way).
        {
            let mut u = self.unindexed.lock().unwrap_or_else(|p| p.into_inner());
            while u
                .front()
                .and_then(|b| b.last())
                .is_some_and(|e| e.seq <= last)
            {
                u.pop_front();
            }
        }
        self.progress.committed.send_replace(last);
        if let Ok(mut p) = self.pending.lock() {
            for ev in self.txn.iter().flat_map(|b| b.events.iter()) {
                if let Some(list) = p.get_mut(&ev.event.dedup_key) {
                    list.retain(|x| x.seq != ev.seq);
                    if list.is_empty() {
                        p.remove(&ev.event.dedup_key);
                    }
                }
            }
        }
        self.txn.clear();
        if let Some(tx) = &self.fts_tx {
            // Bounded: if text indexing falls behind, the indexer waits here (and, past
            // its backlog, the writer and then ingest).
            let t = Instant::now();
            let n = self.fts_batch.iter().map(|b| b.len()).sum();
            let sent =
                self.fts_batch.is_empty() || tx.send(std::mem::take(&mut self.fts_batch)).is_ok();
            slow_indexer("waiting for the full-text thread", t, n);
            if !sent {
                tracing::error!(
                    "the full-text thread stopped; text search scans events until restart"
                );
                self.fts_tx = None;
                let mut u = self.untexted.lock().unwrap_or_else(|p| p.into_inner());
                u.abandon();
                u.failing = true;
            }
        }
    }
}

/// Full-text rows are written in batches of at least this many events, or after
/// [`FTS_MAX_DELAY`], whichever comes first: large FTS5 transactions make fewer segments to
/// merge. Queries find the events not indexed yet in `Untexted`, so results stay exact
/// meanwhile.
const FTS_BATCH: usize = 20_000;
const FTS_MAX_DELAY: std::time::Duration = std::time::Duration::from_millis(200);
/// Events the full-text thread holds while its flushes fail before it gives up (see
/// [`FtsIndexer::run`]).
const FTS_MAX_PENDING: usize = if cfg!(test) { 5_000 } else { 500_000 };

/// A listing with a text term while the full-text index lacks more than this many events
/// (and `Untexted` does not hold them) scans them in SQL: only one such listing runs at a
/// time.
const LONG_TEXT_SCAN: u64 = if cfg!(test) { 1_000 } else { 100_000 };

/// A catch-up of at least this many events ends by merging the index's segments (see
/// [`FtsIndexer::optimize`]).
const FTS_OPTIMIZE_AFTER: u64 = if cfg!(test) { 10_000 } else { 100_000 };

/// Gives FTS5 the text of `events` (seq, event) and moves the index's watermark to `last`,
/// in one transaction.
fn write_texts<E: std::borrow::Borrow<PreparedEvent>>(
    conn: &mut Connection,
    events: impl IntoIterator<Item = (i64, E)>,
    last: u64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut ins = tx.prepare_cached("INSERT INTO events_fts (rowid, text) VALUES (?1, ?2)")?;
        let mut text = String::with_capacity(1024);
        for (seq, ev) in events {
            text.clear();
            ev.borrow().push_fts_text(&mut text);
            ins.execute(params![seq, text])?;
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('fts_seq', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![last.to_string()],
        )?;
    }
    tx.commit()
}

/// How long the full-text thread must have had nothing to index before it merges segments.
const FTS_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Pages of FTS5 segments merged per idle step of the full-text thread (16 KB each), about
/// a tenth of a second of work (see [`FtsIndexer::merge_step`]).
const FTS_IDLE_MERGE_PAGES: i64 = 256;

/// How long the full-text thread waits before it retries a catch-up step that failed.
const FTS_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The full-text thread: owns `fts.db`, indexes what the writer committed.
///
/// It starts by catching up from SQLite: the events past its watermark (all of them after
/// the index was deleted or rebuilt, the last moments' after a crash) are read back from
/// the events table in batches, oldest first, while the server already serves; what the
/// indexer hands over meanwhile is dropped, since SQLite holds it and the reads find it.
/// Then it indexes what the indexer hands over (see [`Untexted`] for the hand-over). Should
/// its writes fail until it holds [`FTS_MAX_PENDING`] events, it drops them and catches up
/// from SQLite again, retrying every [`FTS_RETRY`]: memory stays bounded, and text search
/// scans the events past its watermark meanwhile.
struct FtsIndexer {
    conn: Connection,
    /// `fts.db`, and what readers say of it (see [`FtsHealth`]).
    path: PathBuf,
    health: Arc<FtsHealth>,
    /// A write found `fts.db` damaged: replace it (see [`FtsIndexer::replace_damaged`]).
    damaged: bool,
    /// When `fts.db` was last checked after a reader suspected it.
    checked_at: Option<Instant>,
    /// A read-only connection to the events database, for catching up.
    events: Connection,
    rx: Receiver<Vec<MemBatch>>,
    /// Reading the events past the watermark from SQLite (see above); the progress report
    /// of the current catch-up, once started.
    catching_up: bool,
    catch_up: Option<CatchUpProgress>,
    /// Committed batches not in the index yet, and how many events they hold.
    pending: Vec<MemBatch>,
    pending_events: usize,
    /// Every event with `seq <=` this is in the index (shared with readers).
    watermark: Arc<AtomicU64>,
    untexted: Arc<Mutex<Untexted>>,
    flush_failures: LogThrottle,
    /// Written to since its segments were last merged when idle (see `merge_step`).
    unmerged: bool,
    #[cfg(test)]
    handover_pause: std::time::Duration,
}

/// A gate a test closes to stop a thread where it calls [`Gate::pass`].
#[cfg(test)]
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

#[cfg(test)]
impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }

    /// Waits while the gate is closed.
    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Closed by a test, stops the indexer of a store opened on this thread before it
    /// inserts what it received (tests hold it back to fill its backlog).
    static INDEXER_GATE: std::cell::RefCell<Option<Arc<Gate>>> =
        const { std::cell::RefCell::new(None) };
    /// How long the full-text thread of a store opened on this thread pauses before and
    /// after it sets `Untexted::collecting`: tests widen the hand-over's windows with it.
    static HANDOVER_PAUSE: std::cell::Cell<std::time::Duration> =
        const { std::cell::Cell::new(std::time::Duration::ZERO) };
}

/// What one step of the full-text thread's catch-up found.
enum CatchUp {
    /// It indexed a whole batch: there may be more.
    More,
    /// The index holds every event SQLite held when the step read it.
    Done,
    /// The store is closing.
    Closed,
}

impl FtsIndexer {
    fn run(mut self) {
        lower_priority();
        let mut flushed_at = Instant::now();
        let mut received_at = Instant::now();
        loop {
            self.check_suspect();
            if self.damaged {
                self.replace_damaged();
                continue;
            }
            if self.catching_up {
                match self.catch_up_step() {
                    Ok(CatchUp::More) => {}
                    Ok(CatchUp::Done) => {
                        self.catching_up = false;
                        if let Some(p) = self.catch_up.take() {
                            p.finish();
                            if p.merge || p.done >= FTS_OPTIMIZE_AFTER {
                                self.optimize();
                            }
                        }
                        #[cfg(test)]
                        std::thread::sleep(self.handover_pause);
                        let mut u = self.untexted.lock().unwrap_or_else(|p| p.into_inner());
                        if std::mem::replace(&mut u.failing, false) {
                            tracing::info!("the full-text index is written again");
                        }
                        u.collecting = true;
                        u.indexed_through(self.watermark.load(Ordering::Acquire));
                        drop(u);
                        #[cfg(test)]
                        std::thread::sleep(self.handover_pause);
                    }
                    Ok(CatchUp::Closed) => return,
                    Err(e) => {
                        let was_failing = std::mem::replace(
                            &mut self
                                .untexted
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .failing,
                            true,
                        );
                        if !was_failing {
                            tracing::error!(error = %e, "the full-text index cannot catch up; text search scans the events past it meanwhile; retrying every second");
                        }
                        std::thread::sleep(FTS_RETRY);
                    }
                }
                continue;
            }
            match self.rx.recv_timeout(FTS_MAX_DELAY) {
                Ok(batches) => {
                    received_at = Instant::now();
                    self.pending_events += batches.iter().map(|b| b.len()).sum::<usize>();
                    self.pending.extend(batches);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.pending.is_empty() && self.unmerged && received_at.elapsed() >= FTS_IDLE
                    {
                        self.merge_step();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.pending_events >= FTS_BATCH
                || (!self.pending.is_empty() && flushed_at.elapsed() >= FTS_MAX_DELAY)
            {
                self.flush();
                flushed_at = Instant::now();
            }
            if self.pending_events > FTS_MAX_PENDING {
                // Flushes keep failing (a full disk): holding more would grow without bound.
                // The events are in SQLite: drop them and read them back from there once
                // writes succeed again; text queries scan them meanwhile.
                tracing::error!(
                    pending = self.pending_events,
                    "the full-text index cannot be written; text search scans the events past it meanwhile; retrying"
                );
                self.pending.clear();
                self.pending_events = 0;
                let mut u = self.untexted.lock().unwrap_or_else(|p| p.into_inner());
                u.abandon();
                u.failing = true;
                self.catching_up = true;
            }
        }
        self.flush();
    }

    /// One step of merging the index's segments once nothing came to be indexed for
    /// [`FTS_IDLE`] (under steady ingest, which hands over a batch every second, it never
    /// runs): up to [`FTS_IDLE_MERGE_PAGES`] pages, on levels with 4 segments or more
    /// (`usermerge`).
    /// Ingest merges lazily (`automerge` 16, a third less CPU per event), which leaves up to
    /// 15 segments per level; a phrase with a common word reads that word's list in each
    /// (7 ms for a rare and a common word over 1.25M events, 0.2 ms merged). Steps go on at
    /// each idle tick until one does no work (FTS5 then changes fewer than 2 rows).
    fn merge_step(&mut self) {
        let before = self.conn.total_changes();
        match self.conn.execute(
            "INSERT INTO events_fts(events_fts, rank) VALUES('merge', ?1)",
            [FTS_IDLE_MERGE_PAGES],
        ) {
            Ok(_) => self.unmerged = self.conn.total_changes() - before >= 2,
            Err(e) => {
                self.damaged |= is_damage(&e);
                // Only queries are slower; the next flush tries again.
                tracing::warn!(error = %e, "cannot merge the full-text index's segments");
                self.unmerged = false;
            }
        }
    }

    /// Merges the index's segments into one (a catch-up of many batches leaves one segment
    /// per batch, and a query with a common word reads that word's list in each), and puts
    /// back the merge settings of ingest ([`FTS_TUNING`]).
    fn optimize(&mut self) {
        let t = Instant::now();
        let merged = self
            .conn
            .execute("INSERT INTO events_fts(events_fts) VALUES('optimize')", []);
        let tuned = self.conn.execute_batch(FTS_TUNING);
        match merged.and(tuned) {
            Ok(_) => tracing::info!(
                seconds = tenths(t.elapsed()),
                "merged the full-text index's segments"
            ),
            // Only queries are slower: the index is whole (unless it is damaged).
            Err(e) => {
                self.damaged |= is_damage(&e);
                tracing::warn!(error = %e, "cannot merge the full-text index's segments");
            }
        }
    }

    /// After a read failed as on a damaged file (at most once per [`FTS_CHECK_EVERY`]):
    /// checks `fts.db`, and marks it damaged if it is.
    fn check_suspect(&mut self) {
        if !self.health.suspect.swap(false, Ordering::AcqRel)
            || self
                .checked_at
                .is_some_and(|t| t.elapsed() < FTS_CHECK_EVERY)
        {
            return;
        }
        self.checked_at = Some(Instant::now());
        // On a connection of its own: this thread's cache may hold good copies of damaged
        // pages.
        let checked: rusqlite::Result<String> =
            Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|c| c.query_row("PRAGMA quick_check(1)", [], |r| r.get(0)));
        match checked {
            Ok(ok) if ok == "ok" => tracing::info!(
                "a read failed as on a damaged file, but the full-text index is whole"
            ),
            Ok(problem) => {
                tracing::warn!(%problem, "the full-text index failed its check");
                self.damaged = true;
            }
            Err(e) if is_damage(&e) => self.damaged = true,
            Err(e) => tracing::warn!(error = %e, "cannot check the full-text index"),
        }
    }

    /// Moves a damaged `fts.db` aside and starts a new one, which catches up from SQLite as
    /// after the file was deleted; text queries scan the events past its watermark (now 0)
    /// meanwhile, and readers attach the new file before their next read.
    fn replace_damaged(&mut self) {
        tracing::error!(file = %self.path.display(), "the full-text index is damaged: moving it aside to fts.db.damaged and rebuilding it in the background");
        {
            let mut u = self.untexted.lock().unwrap_or_else(|p| p.into_inner());
            u.abandon();
            u.failing = true;
        }
        self.watermark.store(0, Ordering::Release);
        self.pending.clear();
        self.pending_events = 0;
        // Close the damaged file before it moves.
        let Ok(placeholder) = Connection::open_in_memory() else {
            std::thread::sleep(FTS_RETRY);
            return;
        };
        drop(std::mem::replace(&mut self.conn, placeholder));
        match move_fts_aside(&self.path).and_then(|()| open_fts(&self.path)) {
            Ok((conn, seq)) => {
                self.conn = conn;
                self.watermark.store(seq, Ordering::Release);
                self.health.generation.fetch_add(1, Ordering::AcqRel);
                self.damaged = false;
                self.catching_up = true;
                self.catch_up = None;
                self.unmerged = false;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot replace the damaged full-text index; retrying every second");
                std::thread::sleep(FTS_RETRY);
            }
        }
    }

    /// Drops what the indexer handed over (SQLite holds it, and the read below finds it),
    /// then indexes the next [`FTS_BATCH`] events past the watermark, read from SQLite, in
    /// one transaction.
    fn catch_up_step(&mut self) -> Result<CatchUp, StoreError> {
        loop {
            match self.rx.try_recv() {
                Ok(_) => {}
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Ok(CatchUp::Closed),
            }
        }
        let from = self.watermark.load(Ordering::Acquire);
        if self.catch_up.is_none() {
            let total: i64 = self.events.query_row(
                "SELECT count(*) FROM events WHERE seq > ?1",
                params![from as i64],
                |r| r.get(0),
            )?;
            let mut progress = CatchUpProgress::new(total as u64);
            if progress.total >= FTS_OPTIMIZE_AFTER {
                // It ends with a merge of everything: 9% less CPU without merging meanwhile.
                self.conn.execute_batch(FTS_CATCH_UP_TUNING)?;
                progress.merge = true;
            }
            self.catch_up = Some(progress);
        }
        let rows: Vec<(i64, Option<String>)> = self
            .events
            .prepare_cached(&format!(
                "SELECT seq, {BODY} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?
            .query_map(params![from as i64, FTS_BATCH as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let Some(&(last, _)) = rows.last() else {
            return Ok(CatchUp::Done);
        };
        // A stored body is a valid event; preparing it again yields the same search text.
        // (None: damaged on disk, see `register_body_function`.)
        let events = rows.iter().filter_map(|(seq, body)| {
            let ev = reprepare(body.as_deref()?, 0).ok()?;
            Some((*seq, ev))
        });
        if let Err(e) = write_texts(&mut self.conn, events, last as u64) {
            self.damaged |= is_damage(&e);
            return Err(e.into());
        }
        self.watermark.store(last as u64, Ordering::Release);
        self.unmerged = true;
        if let Some(p) = &mut self.catch_up {
            p.step(rows.len() as u64);
        }
        Ok(if rows.len() < FTS_BATCH {
            CatchUp::Done
        } else {
            CatchUp::More
        })
    }

    /// Writes pending rows in one transaction and advances the watermark.
    fn flush(&mut self) {
        let Some(last) = self.pending.last().and_then(|b| b.last()).map(|e| e.seq) else {
            return;
        };
        // The catch-up from SQLite may have indexed the first ones, or all of them, already.
        let from = self.watermark.load(Ordering::Acquire);
        if last <= from {
            self.pending.clear();
            self.pending_events = 0;
            return;
        }
        let events = self
            .pending
            .iter()
            .flat_map(|b| b.iter())
            .filter(|ev| ev.seq > from)
            .map(|ev| (ev.seq as i64, &ev.event));
        let res = write_texts(&mut self.conn, events, last);
        match res {
            Ok(()) => {
                self.pending.clear();
                self.pending_events = 0;
                self.watermark.store(last, Ordering::Release);
                self.unmerged = true;
                // After the commit: a reader that no longer finds them in memory finds them
                // in the index.
                self.untexted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .indexed_through(last);
            }
            // The events are stored; only their text index lags. Queries still find them (in
            // `Untexted`), and the next flush retries (up to `FTS_MAX_PENDING`). A flush is
            // tried every `FTS_MAX_DELAY`: said at most once per `LogThrottle::EVERY_MS`. A
            // damaged file is replaced instead.
            Err(e) => {
                self.damaged |= is_damage(&e);
                if let Some(also) = self.flush_failures.due() {
                    tracing::warn!(error = %e, pending = self.pending_events, also_since_last_report = also, "full-text indexing failed; will retry")
                }
            }
        }
    }
}

thread_local! {
    /// When a statement on this thread must stop (see [`read_budget_spent`]); `None`: no
    /// limit.
    static READ_DEADLINE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// The progress handler of read connections (every 1,000 SQLite instructions): true, which
/// interrupts the statement, once this thread's [`READ_DEADLINE`] has passed.
fn read_budget_spent() -> bool {
    READ_DEADLINE.with(|d| d.get().is_some_and(|t| Instant::now() >= t))
}

/// How long a listing may test a common text term row by row before it takes the
/// full-text index's list of hits instead (see [`SqliteStore::query`]).
const TEXT_ROW_BUDGET: std::time::Duration = std::time::Duration::from_millis(5);

/// Runs `f` with a deadline on this thread's SQLite statements; `Ok(None)` when it was
/// interrupted by the deadline.
fn within<T>(
    budget: std::time::Duration,
    f: impl FnOnce() -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    /// Clears the deadline however `f` ends (a panic included), so that no later
    /// statement on this pooled thread is cut short.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            READ_DEADLINE.with(|d| d.set(None));
        }
    }
    READ_DEADLINE.with(|d| d.set(Some(Instant::now() + budget)));
    let clear = Clear;
    let res = f();
    drop(clear);
    match res {
        Ok(v) => Ok(Some(v)),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A text term with at most this many hits in the full-text index can drive a listing
/// (see [`drive_by_text_hits`]); a token with more is common (see [`count_text_terms`]).
const FEW_TEXT_HITS: i64 = 2000;

/// Counts, for each text term of `filter`, the events the full-text index gives it (up to
/// [`FEW_TEXT_HITS`] + 1), and chooses the query its index check uses. A phrase of several
/// tokens where some are rare and some common is checked with its rare tokens only: FTS5
/// finds the events holding every token by stepping through each token's list, and a
/// common token's list is most of the index (13 ms a statement for a request id `req-…`
/// over 500,000 events, whose `req` every event holds, against 0.2 ms for the id alone).
/// Each token is counted once; a term whose tokens are all common keeps every token (its
/// events may still be few). One-token negated terms are not counted (nothing to narrow,
/// and only positive terms drive a listing). Nothing to count without text terms.
fn count_text_terms(
    conn: &Connection,
    filter: &herald_core::Filter,
) -> rusqlite::Result<crate::sql::TextCounts> {
    if !filter.has_text() {
        return Ok(crate::sql::TextCounts::new());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT count(*) FROM (SELECT 1 FROM fts.events_fts WHERE events_fts MATCH ?1 LIMIT ?2)",
    )?;
    let mut count = |query: &str| -> rusqlite::Result<i64> {
        stmt.query_row(params![query, FEW_TEXT_HITS + 1], |r| r.get(0))
    };
    let mut by_token: HashMap<String, i64> = HashMap::new();
    let mut out = crate::sql::TextCounts::new();
    for term in &filter.terms {
        let herald_core::filter::TermKind::Text(text) = &term.kind else {
            continue;
        };
        let tokens: Vec<String> = herald_core::matcher::tokens(text).collect();
        if out.contains_key(text) || (term.negated && tokens.len() < 2) {
            continue;
        }
        let Some(all) = crate::sql::fts_query(&tokens) else {
            continue;
        };
        let mut rare: Vec<String> = Vec::new();
        let mut rarest = i64::MAX;
        if tokens.len() > 1 {
            for t in &tokens {
                let n = match by_token.get(t) {
                    Some(n) => *n,
                    None => {
                        let n = count(
                            &crate::sql::fts_query(std::slice::from_ref(t)).unwrap_or_default(),
                        )?;
                        by_token.insert(t.clone(), n);
                        n
                    }
                };
                if n <= FEW_TEXT_HITS && !rare.contains(t) {
                    rare.push(t.clone());
                    rarest = rarest.min(n);
                }
            }
        }
        // One token, or every token common: the whole term.
        let query = crate::sql::fts_query(&rare).unwrap_or(all);
        // One rare token was counted above.
        let hits = if rare.len() == 1 {
            rarest
        } else {
            count(&query)?
        };
        out.insert(text.clone(), crate::sql::TermHits { query, hits });
    }
    Ok(out)
}

/// A listing with a text term walks the time index and tests each row against the term's
/// full-text hits: tens of ms over a million events even when one event matches. When a
/// positive text term has few hits (as [`count_text_terms`] counted them), this adds the
/// redundant condition `seq IN (hits ∪ tail)` in front, which SQLite uses to fetch those
/// rows by seq and sort them instead; the tail is the term's hits among the events the index
/// lacks, found in memory ([`TextTail::Hits`]), or else every event past the index's
/// watermark within the listing's time bounds (`span`), which the walk would test one by one
/// as well. Results are the same: the term itself still decides.
fn drive_by_text_hits(
    filter: &herald_core::Filter,
    counts: &crate::sql::TextCounts,
    tail: TextTail<'_>,
    acked: u64,
    span: (Option<i64>, Option<i64>),
    w: &mut crate::sql::Where,
) -> TextDrive {
    // Past this, the index is so far behind that the tail alone is a long read; walk
    // instead.
    const LONG_TAIL: u64 = 200_000;
    if let TextTail::Past(watermark) = tail {
        if acked.saturating_sub(watermark) > LONG_TAIL {
            return TextDrive::Unknown;
        }
    }
    let mut best: Option<(i64, &str, &str)> = None;
    let mut common = false;
    for term in &filter.terms {
        let herald_core::filter::TermKind::Text(text) = &term.kind else {
            continue;
        };
        if term.negated {
            continue;
        }
        let Some(c) = counts.get(text) else {
            continue;
        };
        if c.hits <= FEW_TEXT_HITS && best.is_none_or(|(n, _, _)| c.hits < n) {
            best = Some((c.hits, c.query.as_str(), text.as_str()));
        } else if c.hits > FEW_TEXT_HITS {
            common = true;
        }
    }
    let Some((_, query, text)) = best else {
        return if common {
            TextDrive::Common
        } else {
            TextDrive::Unknown
        };
    };
    let query = query.to_owned();
    let mut inner = std::mem::take(&mut w.sql);
    if inner.is_empty() {
        inner.push('1');
    }
    let mut tail_where = crate::sql::Where::default();
    tail_where.params.push(rusqlite::types::Value::Text(query));
    match tail {
        TextTail::Past(watermark) => {
            // The tail by seq (`+time` keeps SQLite off the time index, which would read
            // the whole span), keeping only the events within the span.
            tail_where
                .sql
                .push_str("SELECT seq FROM events WHERE seq > ?");
            tail_where.params.push(rusqlite::types::Value::Integer(
                i64::try_from(watermark).unwrap_or(i64::MAX),
            ));
            if let Some(since) = span.0 {
                tail_where.sql.push_str(" AND +time >= ?");
                tail_where
                    .params
                    .push(rusqlite::types::Value::Integer(since));
            }
            if let Some(until) = span.1 {
                tail_where.sql.push_str(" AND +time < ?");
                tail_where
                    .params
                    .push(rusqlite::types::Value::Integer(until));
            }
        }
        // Found in memory already.
        TextTail::Hits(hits) => {
            tail_where.sql.push_str("SELECT value FROM json_each(?)");
            tail_where
                .params
                .push(rusqlite::types::Value::Text(crate::sql::json_array(&hits(
                    text,
                ))));
        }
    }
    w.sql = format!(
        "seq IN (SELECT rowid FROM fts.events_fts WHERE events_fts MATCH ? UNION ALL {}) AND ({inner})",
        tail_where.sql
    );
    w.params.splice(0..0, tail_where.params);
    w.uses_fts = true;
    TextDrive::Driven
}

/// A listing read one day at a time, newest day first, until `want` events: for a filter
/// that a day-bucketed index serves (see [`crate::sql::day_indexed`]). Each day's statement
/// holds the day both as [`DAY_EXPR`] (which those indexes lead with) and as a time range
/// (which the time and type indexes use), so SQLite picks the best index for each day. Days
/// are disjoint and read in order, so the result is in listing order. One read transaction
/// holds every statement, so all see the same events.
fn list_by_day(
    conn: &Connection,
    w: &crate::sql::Where,
    (lo, hi): (i64, i64),
    want: usize,
    segments: &SegmentReader,
) -> rusqlite::Result<Vec<StoredEvent>> {
    #[cfg(test)]
    DAY_LISTINGS.fetch_add(1, Ordering::Relaxed);
    let tx = conn.unchecked_transaction()?;
    let days: Vec<i64> = conn
        .prepare_cached("SELECT day FROM days WHERE day >= ?1 AND day <= ?2 ORDER BY day DESC")?
        .query_map(params![lo, hi], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached(&day_listing_sql(w))?;
    let mut out: Vec<Listed> = Vec::new();
    for day in days {
        if out.len() >= want {
            break;
        }
        // A budget (see `within`) covers the whole listing: the progress handler only sees
        // one day's statement, which may be short.
        if read_budget_spent() {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERRUPT),
                None,
            ));
        }
        let (from, to) = crate::sql::day_span(day);
        let head = [
            rusqlite::types::Value::Integer(day),
            rusqlite::types::Value::Integer(from),
            rusqlite::types::Value::Integer(to),
        ];
        let left = rusqlite::types::Value::Integer((want - out.len()) as i64);
        let params = head.iter().chain(&w.params).chain(std::iter::once(&left));
        let rows = stmt.query_map(rusqlite::params_from_iter(params), listed)?;
        for r in rows {
            out.push(r?);
        }
    }
    drop(stmt);
    tx.commit()?;
    with_bodies(out, segments)
}

/// How many listings were read day by day (tests check that the path they test ran).
#[cfg(test)]
static DAY_LISTINGS: AtomicU64 = AtomicU64::new(0);

/// The statement [`list_by_day`] runs for each day: the day, its time range, the listing's
/// conditions, and how many events are still wanted.
fn day_listing_sql(w: &crate::sql::Where) -> String {
    format!(
        "SELECT {LISTED} FROM events WHERE {DAY_EXPR} = ? AND time >= ? AND time < ? AND ({}) ORDER BY time DESC, seq DESC LIMIT ?",
        w.sql
    )
}

/// The events of `batches` (acknowledged, not in SQLite yet) that a listing holds, in listing
/// order, at most `want`: its bounds, cursor and access rule, and its filter evaluated by the
/// core's matcher, whose semantics are the SQL compiler's (the live stream relies on the
/// same). Each event is looked at through an [`Unshared`] view, so that parsing its data or
/// its text for this listing leaves nothing behind in the shared batch.
fn unindexed_matches(batches: &[MemBatch], q: &EventQuery, want: usize) -> Vec<StoredEvent> {
    use std::cmp::Reverse;
    if batches.is_empty() || want == 0 {
        return Vec::new();
    }
    let matcher = herald_core::matcher::Matcher::new(q.filter.clone());
    // The best `want` so far, the last of them on top. Newest first: events mostly arrive
    // in time order, so once `want` are found, most older events fall below the last of
    // them and are passed over without evaluating the filter.
    let mut best: std::collections::BinaryHeap<Reverse<(i64, u64, usize, usize)>> =
        std::collections::BinaryHeap::with_capacity(want + 1);
    for (bi, batch) in batches.iter().enumerate().rev() {
        // The keys first: most events are passed over without reading them.
        for (ei, k) in batch.keys.iter().enumerate().rev() {
            let t = k.time_us;
            if best.len() == want
                && best
                    .peek()
                    .is_some_and(|Reverse(w)| (t, k.seq) < (w.0, w.1))
            {
                continue;
            }
            if outside_listing(q, t, k.seq) || !matcher.may_match(&k.sig, k.plain) {
                continue;
            }
            let ev = &batch[ei];
            if !q.access.can_read(&ev.event) || !matcher.matches(&Unshared::new(ev.seq, &ev.event))
            {
                continue;
            }
            best.push(Reverse((t, k.seq, bi, ei)));
            if best.len() > want {
                best.pop();
            }
        }
    }
    let mut hits: Vec<&LiveEvent> = best
        .into_iter()
        .map(|Reverse((_, _, bi, ei))| &batches[bi][ei])
        .collect();
    hits.sort_unstable_by_key(|e| Reverse((e.event.time_us, e.seq)));
    hits.into_iter().map(stored_from_memory).collect()
}

/// The seqs of the events of `batches` (committed to SQLite, not in the full-text index yet)
/// whose text holds `text`, within the listing's bounds and before its cursor: the matcher
/// decides, as the index and `herald_text` would (its cheap check for the phrase's words
/// passes over most events without cutting their text).
fn text_hits(batches: &[MemBatch], text: &str, q: &EventQuery) -> Vec<u64> {
    let matcher = herald_core::matcher::Matcher::new(herald_core::Filter {
        terms: vec![herald_core::filter::Term {
            negated: false,
            kind: herald_core::filter::TermKind::Text(text.to_owned()),
            span: (0, 0),
        }],
    });
    batches
        .iter()
        .flat_map(|b| b.keys.iter().zip(b.iter()))
        .filter(|(k, ev)| {
            !outside_listing(q, k.time_us, k.seq)
                && matcher.may_match(&k.sig, k.plain)
                && q.access.can_read(&ev.event)
                && matcher.matches(&Unshared::new(ev.seq, &ev.event))
        })
        .map(|(k, _)| k.seq)
        .collect()
}

/// Past this many events in [`Untexted`] (the full-text thread is far behind), a listing's
/// text terms scan the tail in SQL instead of testing each event in memory.
const UNTEXTED_TESTED_MAX: usize = 500_000;

/// The acknowledged event `seq` if SQLite does not hold it yet (see [`Unindexed`]), as the
/// store returns it, when `access` may read it: `Some(None)` when it may not. `None` when it
/// is not there (committed before this look, or never acknowledged): SQLite then answers.
fn unindexed_by_seq(
    unindexed: &Unindexed,
    seq: u64,
    access: &Access,
) -> Option<Option<StoredEvent>> {
    let u = unindexed.lock().unwrap_or_else(|p| p.into_inner());
    // Batches are in seq order, each a run of increasing seqs.
    let i = u.partition_point(|b| b.last().is_some_and(|e| e.seq < seq));
    let batch = u.get(i)?;
    let at = batch.binary_search_by_key(&seq, |e| e.seq).ok()?;
    let ev = &batch[at];
    if !access.can_read(&ev.event) {
        return Some(None);
    }
    Some(Some(stored_from_memory(ev)))
}

/// An acknowledged event held in memory as the store returns it: its stored JSON, written as
/// the writer wrote it to its segment.
fn stored_from_memory(ev: &LiveEvent) -> StoredEvent {
    let mut body = String::with_capacity(ev.event.body_tail.len() + 24);
    ev.write_body(&mut body);
    StoredEvent {
        seq: ev.seq,
        time_us: ev.event.time_us,
        body,
    }
}

/// The batches of `unindexed` now (their handles): what a read looks at before its SQLite
/// snapshot.
fn snapshot(unindexed: &Unindexed) -> Vec<MemBatch> {
    unindexed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// Whether an event at `time_us`, `seq` lies outside a listing's time bounds or at or before
/// its cursor (as `sql::compile` writes them).
fn outside_listing(q: &EventQuery, time_us: i64, seq: u64) -> bool {
    q.since_us.is_some_and(|s| time_us < s)
        || q.until_us.is_some_and(|u| time_us >= u)
        || q.cursor
            .is_some_and(|c| (time_us, seq) >= (c.time_us, c.seq))
}

/// The first `limit` events of `batches` (acknowledged, not in SQLite yet) that a catch-up
/// read holds, in seq order: after its position and up to `upto`, from its `since`, readable
/// by its caller, matching its filter.
fn unindexed_after(
    batches: &[MemBatch],
    q: &ScanQuery,
    upto: u64,
    limit: usize,
) -> Vec<StoredEvent> {
    if batches.is_empty() {
        return Vec::new();
    }
    let matcher = herald_core::matcher::Matcher::new(q.filter.clone());
    batches
        .iter()
        .flat_map(|b| b.keys.iter().zip(b.iter()))
        .filter(|(k, ev)| {
            k.seq > q.after_seq
                && k.seq <= upto
                && q.since_us.is_none_or(|s| k.time_us >= s)
                && matcher.may_match(&k.sig, k.plain)
                && q.access.can_read(&ev.event)
                && matcher.matches(&Unshared::new(ev.seq, &ev.event))
        })
        .take(limit)
        .map(|(_, ev)| stored_from_memory(ev))
        .collect()
}

/// What [`drive_by_text_hits`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextDrive {
    /// A positive text term has few hits: the listing is driven by them.
    Driven,
    /// Every positive text term has many hits (a common word).
    Common,
    /// No positive text term, or the index's unindexed tail is too long to tell.
    Unknown,
}

/// A row of `seq, time, herald_body(...)`. A body the disk damaged (`herald_body` gives
/// NULL) is an empty `body`, which no stored event has: listings and scans count the row
/// for their limits and positions, then leave it out ([`readable`]); a read by seq or id
/// answers [`StoreError::Damaged`] ([`undamaged`]).
fn row_to_event(r: &rusqlite::Row) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: r.get::<_, i64>(0)? as u64,
        time_us: r.get(1)?,
        body: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
    })
}

/// What a listing or a stream's catch-up selects of each event: its seq and time, and its
/// body (rows stored before segments) or where the body is in the segments, read afterwards
/// by [`with_bodies`].
const LISTED: &str = "seq, time, body, loc, len";

/// A listed event whose body is not read yet (see [`LISTED`]).
struct Listed {
    seq: u64,
    time_us: i64,
    body: Option<String>,
    /// `(loc, len)` in the segments.
    at: Option<(i64, u64)>,
}

fn listed(r: &rusqlite::Row) -> rusqlite::Result<Listed> {
    let at = match r.get::<_, Option<i64>>(3)? {
        Some(loc) => Some((loc, r.get::<_, i64>(4)?.max(0) as u64)),
        None => None,
    };
    Ok(Listed {
        seq: r.get::<_, i64>(0)? as u64,
        time_us: r.get(1)?,
        body: r.get(2)?,
        at,
    })
}

/// A listing's (or catch-up's) events with their bodies, in order, a damaged body empty (as
/// [`row_to_event`] has it). The bodies are read one after another, mostly from the page
/// cache; once one has to wait for the disk, the kernel is asked for the records of all
/// the others at once ([`SegmentReader::will_need`]), so that the disk reads them in
/// parallel rather than each in turn as the listing reaches it. A listing of a type that is
/// one event in 50, read before anything else read its pages (segments written past the
/// page cache, or pages the cache has let go), 100 events a page: 1.7–1.9 ms a page, where
/// reading every body in turn took 4.7–5.1; 0.6–0.7 ms once the page cache holds them.
fn with_bodies(
    mut rows: Vec<Listed>,
    segments: &SegmentReader,
) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut asked = false;
    let mut out = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let row = &mut rows[i];
        let (seq, time_us) = (row.seq, row.time_us);
        let body = match (row.at, row.body.take()) {
            (None, Some(inline)) => inline,
            (Some((loc, len)), _) => {
                let (body, slow) = segments
                    .read_listed(loc, len)
                    .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
                if slow && !asked {
                    asked = true;
                    segments.will_need(rows[i + 1..].iter().filter_map(|r| r.at));
                }
                body.unwrap_or_default()
            }
            (None, None) => String::new(),
        };
        out.push(StoredEvent { seq, time_us, body });
    }
    Ok(out)
}

/// Leaves out the events whose body is damaged (see [`row_to_event`]).
fn readable(events: &mut Vec<StoredEvent>) {
    events.retain(|e| !e.body.is_empty());
}

/// One event read by seq or id, unless its body is damaged (see [`row_to_event`]).
fn undamaged(found: Option<StoredEvent>) -> Result<Option<StoredEvent>, StoreError> {
    match found {
        Some(e) if e.body.is_empty() => Err(StoreError::Damaged(e.seq)),
        other => Ok(other),
    }
}

impl Store for SqliteStore {
    fn append(
        &self,
        events: Vec<PreparedEvent>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, StoreError>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let (reply, rx) = oneshot::channel();
            {
                let guard = self.tx.read().map_err(|_| StoreError::Closed)?;
                let tx = guard.as_ref().ok_or(StoreError::Closed)?;
                self.queued.fetch_add(1, Ordering::Relaxed);
                match tx.try_send(WriteJob { events, reply }) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                        return Err(StoreError::Overloaded);
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                        return Err(StoreError::Closed);
                    }
                }
            }
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn query(&self, q: EventQuery) -> BoxFuture<'_, Result<Page, StoreError>> {
        // Read the watermark before the query's snapshot: the snapshot then holds at least
        // the FTS rows up to it (the tail after it is scanned when `Untexted` is not used).
        let fts = self
            .fulltext
            .then(|| self.fts_watermark.load(Ordering::Acquire));
        let progress = self.progress.clone();
        let unindexed = self.unindexed.clone();
        let untexted = self.untexted.clone();
        let by_day = crate::sql::day_indexed(&q.filter, &q.access);
        let days = crate::sql::day_range(q.since_us, q.until_us, q.cursor);
        let long_scan = fts.is_some_and(|wm| {
            self.long_text_scan(&q.filter, wm, self.progress.acked.load(Ordering::Acquire))
        });
        let segments = self.segments.clone();
        let read = self.read_now(move |conn| {
            let limit = q.limit.max(1);
            // Every event up to here is in the look at memory below or committed before it
            // (the writer adds a batch to `unindexed` before it acknowledges it).
            let acked = progress.acked.load(Ordering::Acquire);
            // Acknowledged events SQLite does not hold yet, looked at before any SQLite
            // snapshot (see `Unindexed`): the listing takes them from memory instead of
            // waiting for the indexer, which under heavy ingest is seconds behind.
            let batches = snapshot(&unindexed);
            let recent = unindexed_matches(&batches, &q, limit + 1);
            drop(batches);
            // Then, still before the snapshot, the events the full-text index lacks (see
            // `Untexted`): each text term's hits among them are found here, once.
            let has_text = q.filter.has_text();
            let untexted: Option<Vec<MemBatch>> = fts.filter(|_| has_text).and_then(|_| {
                let u = untexted.lock().unwrap_or_else(|p| p.into_inner());
                u.complete.then(|| u.batches.iter().cloned().collect())
            });
            // So many that testing them all would cost more than scanning in SQL (the
            // full-text thread is far behind): scan.
            let untexted = untexted
                .filter(|b| b.iter().map(|b| b.len()).sum::<usize>() <= UNTEXTED_TESTED_MAX);
            let found_hits = std::cell::RefCell::new(HashMap::<String, Vec<u64>>::new());
            let hits_of = |text: &str| -> Vec<u64> {
                let Some(batches) = &untexted else {
                    return Vec::new();
                };
                found_hits
                    .borrow_mut()
                    .entry(text.to_owned())
                    .or_insert_with(|| text_hits(batches, text, &q))
                    .clone()
            };
            let tail = match (fts, &untexted) {
                (Some(_), Some(_)) => Some(TextTail::Hits(&hits_of)),
                (Some(wm), None) => Some(TextTail::Past(wm)),
                (None, _) => None,
            };
            let list = |w: &crate::sql::Where| -> rusqlite::Result<Vec<StoredEvent>> {
                // A text term answered by the full-text index is one list of hits per
                // statement: reading day by day would build it once per day.
                if by_day && !w.uses_fts {
                    return list_by_day(conn, w, days, limit + 1, &segments);
                }
                let sql = format!(
                    "SELECT {LISTED} FROM events WHERE {} ORDER BY time DESC, seq DESC LIMIT {}",
                    w.sql,
                    limit + 1
                );
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(w.params.iter()), listed)?;
                with_bodies(rows.collect::<rusqlite::Result<_>>()?, &segments)
            };
            // Counted before compiling: a phrase's index check may use its rare tokens only.
            let counts = match tail {
                Some(_) => count_text_terms(conn, &q.filter)?,
                None => crate::sql::TextCounts::new(),
            };
            let mut w = compile_counted(
                &q.filter,
                &q.access,
                (q.since_us, q.until_us),
                q.cursor,
                tail,
                &counts,
            );
            if matches!(tail, Some(TextTail::Hits(_))) {
                // An event acknowledged after the look at memory may be committed before
                // the snapshot without being in `Untexted` when it was looked at: its text
                // terms would read as false (a negated one as true). The listing started
                // before it was acknowledged, so it leaves it out (`+` keeps SQLite off a
                // plan by seq).
                w.and();
                w.sql.push_str("+seq <= ");
                w.param(rusqlite::types::Value::Integer(
                    i64::try_from(acked).unwrap_or(i64::MAX),
                ));
            }
            let mut found = None;
            if let Some(tail) = tail {
                let driven = drive_by_text_hits(
                    &q.filter,
                    &counts,
                    tail,
                    acked,
                    (q.since_us, q.until_us),
                    &mut w,
                );
                // A common text term: the index's list of its hits costs tens of ms to build
                // (every event holding the word), while a listing usually meets its page
                // after testing a few hundred rows. So test the rows first (as for events
                // past the index), for a few ms at most, then fall back to the list. Both
                // answer exactly the same.
                // The same holds for a listing read day by day (an attribute or path) with a
                // text term the index cannot size: the rows of the attribute, tested day by
                // day, usually fill the page first.
                if driven == TextDrive::Common
                    || (by_day && driven == TextDrive::Unknown && w.uses_fts)
                {
                    let by_row =
                        compile(&q.filter, &q.access, q.since_us, q.until_us, q.cursor, None);
                    found = within(TEXT_ROW_BUDGET, || list(&by_row))?;
                }
            }
            let mut events = match found {
                Some(events) => events,
                None => list(&w)?,
            };
            if !recent.is_empty() {
                // Both lists are in listing order; an event committed since the look at
                // memory is in both.
                events.extend(recent);
                events.sort_unstable_by_key(|e| std::cmp::Reverse((e.time_us, e.seq)));
                events.dedup_by_key(|e| e.seq);
            }
            let next = if events.len() > limit {
                events.truncate(limit);
                events.last().map(|e| Cursor {
                    time_us: e.time_us,
                    seq: e.seq,
                })
            } else {
                None
            };
            readable(&mut events);
            Ok(Page { events, next })
        });
        Box::pin(async move {
            let _turn = self.long_text_turn(long_scan).await?;
            read.await
        })
    }

    fn get_by_seq<'a>(
        &'a self,
        seq: u64,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<Option<StoredEvent>, StoreError>> {
        // Read-your-writes without waiting for the indexer: an acknowledged event is in
        // memory until SQLite holds it, and a SQLite snapshot taken after looking there holds
        // it otherwise (the indexer removes it only after its commit).
        if let Some(found) = unindexed_by_seq(&self.unindexed, seq, access) {
            return Box::pin(async move { Ok(found) });
        }
        let mut w = crate::sql::Where::default();
        crate::sql::access_clause(&mut w, access);
        Box::pin(self.read_now(move |conn| {
            let sql = format!(
                "SELECT seq, time, {BODY} FROM events WHERE seq = ? AND ({})",
                if w.sql.is_empty() { "1" } else { &w.sql }
            );
            w.params.insert(
                0,
                rusqlite::types::Value::Integer(i64::try_from(seq).unwrap_or(-1)),
            );
            undamaged(
                conn.prepare_cached(&sql)?
                    .query_row(rusqlite::params_from_iter(w.params.iter()), row_to_event)
                    .optional()?,
            )
        }))
    }

    fn get_by_id<'a>(
        &'a self,
        source: &'a str,
        id: &'a str,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<Option<StoredEvent>, StoreError>> {
        let key = herald_core::event::dedup_key(source, id);
        // As `get_by_seq`: an acknowledged event SQLite does not hold yet is in `pending`
        // (by duplicate key, with its seq) and in memory; a snapshot taken after looking
        // there holds the others. `pending` also holds the writer's group before its fsync:
        // only seqs acknowledged count.
        // The writer holds `pending` while it handles a group: rather than block this
        // thread, wait for the indexer then (as before memory was looked at).
        let acked = self.progress.acked.load(Ordering::Acquire);
        let pending = match self.pending.try_lock() {
            Ok(p) => Some(p),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let looked = pending.map(|p| {
            p.get(&key).and_then(|list| {
                list.iter()
                    .find(|e| e.source == source && e.id == id && e.seq <= acked)
                    .map(|e| e.seq)
            })
        });
        if let Some(found) = looked
            .flatten()
            .and_then(|seq| unindexed_by_seq(&self.unindexed, seq, access))
        {
            return Box::pin(async move { Ok(found) });
        }
        let mut w = crate::sql::Where::default();
        crate::sql::access_clause(&mut w, access);
        let (source, id) = (source.to_owned(), id.to_owned());
        let dedup = self.dedup.clone();
        let read = move |conn: &Connection| {
            // Every acknowledged event's key is in the index before it is acknowledged.
            let mut candidates = Vec::new();
            dedup
                .candidates(key as u64, &mut candidates)
                .map_err(|e| StoreError::Database(format!("duplicate-key index: {e}")))?;
            candidates.sort_unstable_by(|a, b| b.cmp(a));
            let sql = format!(
                "SELECT seq, time, {BODY} FROM events WHERE seq = ? AND source = ? AND id = ? AND ({})",
                if w.sql.is_empty() { "1" } else { &w.sql }
            );
            let mut st = conn.prepare_cached(&sql)?;
            let mut params = vec![
                rusqlite::types::Value::Integer(0),
                rusqlite::types::Value::Text(source),
                rusqlite::types::Value::Text(id),
            ];
            params.extend(w.params);
            for seq in candidates {
                params[0] = rusqlite::types::Value::Integer(seq as i64);
                let row = st
                    .query_row(rusqlite::params_from_iter(params.iter()), row_to_event)
                    .optional()?;
                if row.is_some() {
                    return undamaged(row);
                }
            }
            Ok(None)
        };
        if looked.is_some() {
            Box::pin(self.read_now(read))
        } else {
            Box::pin(self.read(read))
        }
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<LiveBatch> {
        self.live.subscribe()
    }

    fn scan(&self, q: ScanQuery) -> BoxFuture<'_, Result<ScanPage, StoreError>> {
        let fts = self
            .fulltext
            .then(|| self.fts_watermark.load(Ordering::Acquire));
        // Everything acknowledged before the read starts is in the look at memory or in the
        // snapshot after it (as for listings: no waiting for the indexer); the page ends at
        // the newest acknowledged event known now, so `scanned_to` never passes an event the
        // read could not see.
        let upto = self.progress.acked.load(Ordering::Acquire);
        let unindexed = self.unindexed.clone();
        // A catch-up from far behind the full-text index scans its whole tail.
        let long_scan =
            fts.is_some_and(|wm| self.long_text_scan(&q.filter, wm.max(q.after_seq), upto));
        let segments = self.segments.clone();
        let read = self.read_now(move |conn| {
            let limit = q.limit.max(1);
            let batches = snapshot(&unindexed);
            let recent = unindexed_after(&batches, &q, upto, limit);
            drop(batches);
            // A phrase's index check may use its rare tokens only (see `count_text_terms`).
            let counts = if fts.is_some() {
                count_text_terms(conn, &q.filter)?
            } else {
                crate::sql::TextCounts::new()
            };
            let mut w = compile_counted(
                &q.filter,
                &q.access,
                (q.since_us, None),
                None,
                fts.map(TextTail::Past),
                &counts,
            );
            let sql = format!(
                "SELECT {LISTED} FROM events WHERE seq > ? AND seq <= ? AND ({}) ORDER BY seq LIMIT {}",
                w.sql, limit
            );
            w.params.insert(0, rusqlite::types::Value::Integer(upto as i64));
            w.params.insert(0, rusqlite::types::Value::Integer(q.after_seq as i64));
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(w.params.iter()), listed)?
                .collect::<Result<_, _>>()?;
            let mut events = with_bodies(rows, &segments)?;
            if !recent.is_empty() {
                // Each list holds the first matches of its part; an event committed since
                // the look at memory is in both.
                events.extend(recent);
                events.sort_unstable_by_key(|e| e.seq);
                events.dedup_by_key(|e| e.seq);
                events.truncate(limit);
            }
            let done = events.len() < limit;
            let scanned_to = if done {
                upto.max(q.after_seq)
            } else {
                events.last().map(|e| e.seq).unwrap_or(q.after_seq)
            };
            readable(&mut events);
            Ok(ScanPage {
                events,
                scanned_to,
                done,
            })
        });
        Box::pin(async move {
            let _turn = self.long_text_turn(long_scan).await?;
            read.await
        })
    }

    fn seq_range(&self) -> BoxFuture<'_, Result<SeqRange, StoreError>> {
        let last = self.progress.acked.load(Ordering::Acquire);
        // Without waiting for the indexer: the oldest event SQLite holds, or else the oldest
        // acknowledged one in memory.
        let in_memory = self
            .unindexed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .and_then(|b| b.first())
            .map(|e| e.seq);
        Box::pin(async move {
            let oldest = self
                .read_now(move |conn| {
                    Ok(conn
                        .query_row("SELECT min(seq) FROM events", [], |r| {
                            r.get::<_, Option<i64>>(0)
                        })?
                        .map(|s| s as u64))
                })
                .await?;
            Ok(SeqRange {
                oldest: oldest.or(in_memory).unwrap_or(last + 1),
                last,
            })
        })
    }

    fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn settle(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let target = self.progress.acked.load(Ordering::Acquire);
            self.visible().await?;
            // The full-text thread flushes within `FTS_MAX_DELAY` of the indexer's commit, or
            // reads the events from SQLite while it catches up; while its writes fail, or
            // once it stopped, there is nothing to wait for.
            let deadline = Instant::now() + std::time::Duration::from_secs(120);
            while self.fulltext && self.fts_watermark.load(Ordering::Acquire) < target {
                if self
                    .untexted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .failing
                {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(StoreError::Database(
                        "the full-text index did not catch up in time".into(),
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Ok(())
        })
    }

    fn damaged_reads(&self) -> u64 {
        self.segments.damaged_reads()
    }

    fn dedup_keys_in_memory(&self) -> u64 {
        self.dedup.keys_in_memory() as u64
    }

    fn text_backlog(&self) -> u64 {
        if !self.fulltext {
            return 0;
        }
        self.progress
            .acked
            .load(Ordering::Acquire)
            .saturating_sub(self.fts_watermark.load(Ordering::Acquire))
    }

    fn index_backlog(&self) -> u64 {
        let committed = *self.progress.committed.borrow();
        self.progress
            .acked
            .load(Ordering::Acquire)
            .saturating_sub(committed)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Dropping the only sender lets the writer drain the queue and exit.
            if let Ok(mut g) = self.tx.write() {
                g.take();
            }
            let handle = self.writer.lock().ok().and_then(|mut g| g.take());
            if let Some(h) = handle {
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
            // No more keys come: a run or merge being written is abandoned (the keys of a
            // frozen map are read back from SQLite at the next start).
            let dedup = self.dedup.clone();
            let _ = tokio::task::spawn_blocking(move || dedup.stop()).await;
            // The writer dropped its channel: the indexer commits what it holds and exits.
            let indexer = self.indexer.lock().ok().and_then(|mut g| g.take());
            if let Some(h) = indexer {
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
            // The indexer dropped its sender: the full-text thread flushes and exits.
            let fts = self.fts_thread.lock().ok().and_then(|mut g| g.take());
            if let Some(h) = fts {
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
            let cp = self.checkpointer.lock().ok().and_then(|mut g| g.take());
            if let Some((stop, h)) = cp {
                stop.store(true, Ordering::Release);
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
        })
    }
}

/// The database file inside a data directory.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("herald.db")
}

/// A connection to a data directory's database (created and migrated if needed) with the
/// SQL functions its indexes use, for maintenance and tests: a plain SQLite connection
/// cannot change the events table once a path index exists.
pub fn open_database(data_dir: &Path) -> Result<Connection, StoreError> {
    crate::keys::open_side_connection(data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in `dir` with the default options and these indexed paths.
    fn open_in(dir: &Path, indexed_paths: &[&str]) -> SqliteStore {
        SqliteStore::open(SqliteOptions {
            data_dir: dir.to_owned(),
            indexed_paths: indexed_paths.iter().map(|p| p.to_string()).collect(),
            ..SqliteOptions::default()
        })
        .expect("open")
    }

    /// The full-text index holds exactly the core's tokens of each event, read back from
    /// FTS5's own vocabulary: ASCII parts given as they are (punctuation, `_`, escapes,
    /// upper case, digits, a long run), other scripts cut by the core, and a mix of both.
    #[test]
    fn fts_text_gives_the_index_the_cores_tokens() {
        let fts = Connection::open_in_memory().expect("open");
        fts_schema(&fts).expect("schema");
        fts.execute_batch("CREATE VIRTUAL TABLE vocab USING fts5vocab(events_fts, 'row');")
            .expect("vocab");
        let long = "x".repeat(3000);
        let bodies = [
            r#"{"seq":1,"specversion":"1.0","id":"a","source":"/S","type":"a.b","visibility":"internal","time":"2026-11-01T00:00:00Z","recordedtime":"2026-11-01T00:00:00Z"}"#.to_owned(),
            r#"{"seq":1,"specversion":"1.0","id":"a","source":"/web/api_v2","type":"user.login_failed","subject":"Order-77/line_3","actor":"user:Ann.Lee@example.com","tenant":"ACME-1","visibility":"internal","data":{"msg":"Timeout\nafter \"30s\" (E_TIMEOUT); retry=3","n":[1,2.5e-3,-7],"deep":{"k_1":null,"ok":true}},"context":{"ip":"10.0.0.1","ua":"Mozilla/5.0 (X11)"},"time":"2026-11-01T00:00:00Z","recordedtime":"2026-11-01T00:00:00Z"}"#.to_owned(),
            r#"{"seq":1,"specversion":"1.0","id":"a","source":"/s","type":"t","actor":"Jürgen","visibility":"internal","data":{"note":"İstanbul straße ÀB_cd","s":"क्षेत्र नमस्ते","e":"caf\u00e9 Ωmega-2"},"time":"2026-11-01T00:00:00Z","recordedtime":"2026-11-01T00:00:00Z"}"#.to_owned(),
            format!(r#"{{"seq":1,"specversion":"1.0","id":"a","source":"/s","type":"t","visibility":"internal","data":{{"long":"{long}","K":"Kelvin"}},"time":"2026-11-01T00:00:00Z","recordedtime":"2026-11-01T00:00:00Z"}}"#),
        ];
        for body in &bodies {
            let ev = reprepare(body, 0).expect("valid body");
            let mut want: Vec<String> = herald_core::matcher::tokens(&ev.search_text()).collect();
            want.sort();
            want.dedup();
            let mut text = String::new();
            ev.push_fts_text(&mut text);
            fts.execute("DELETE FROM events_fts", []).expect("clear");
            fts.execute(
                "INSERT INTO events_fts (rowid, text) VALUES (1, ?1)",
                [&text],
            )
            .expect("insert");
            let got: Vec<String> = fts
                .prepare("SELECT term FROM vocab ORDER BY term")
                .expect("prepare")
                .query_map([], |r| r.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("terms");
            assert_eq!(got, want, "{body}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(dir.path(), &["data.country"]);
        crate::contract::run_all(&store).await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contract_without_fulltext_or_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(SqliteOptions {
            data_dir: dir.path().to_owned(),
            fulltext: false,
            fsync: false,
            ..SqliteOptions::default()
        })
        .expect("open");
        crate::contract::run_all(&store).await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_events_and_continues_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = SqliteOptions {
            data_dir: dir.path().to_owned(),
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(opts.clone()).expect("open");
        let out = store
            .append(vec![crate::contract::event(
                r#"{"id":"1","source":"/s","type":"a"}"#,
            )])
            .await
            .expect("append");
        store.close().await;
        assert!(store
            .append(vec![crate::contract::event(
                r#"{"id":"9","source":"/s","type":"a"}"#
            )])
            .await
            .is_err());
        let store = SqliteStore::open(opts).expect("reopen");
        let out2 = store
            .append(vec![crate::contract::event(
                r#"{"id":"2","source":"/s","type":"a"}"#,
            )])
            .await
            .expect("append");
        assert_eq!(
            (out[0], out2[0]),
            (AppendOutcome::Stored(1), AppendOutcome::Stored(2))
        );
        store.close().await;
    }

    /// Duplicates and conflicts are found among events whose keys are in memory, in runs on
    /// disk, and read back from SQLite after the runs are lost; a read by id finds old and
    /// new events alike.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicates_are_found_through_the_key_runs_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        const KEYS: usize = 100;
        let n = KEYS * 7 + 13;
        let ev = |i: usize, v: u32| {
            crate::contract::event(&format!(
                r#"{{"id":"e{i}","source":"/s","type":"a","time":"2026-11-01T00:00:00Z","data":{{"v":{v}}}}}"#
            ))
        };
        let check = |store: SqliteStore| async move {
            let all: Vec<usize> = (0..n).collect();
            for chunk in all.chunks(50) {
                let out = store
                    .append(chunk.iter().map(|&i| ev(i, 1)).collect())
                    .await
                    .expect("append");
                let want: Vec<AppendOutcome> = chunk
                    .iter()
                    .map(|&i| AppendOutcome::Duplicate(i as u64 + 1))
                    .collect();
                assert_eq!(out, want);
            }
            let out = store
                .append(vec![ev(0, 2), ev(n / 2, 2), ev(n - 1, 2)])
                .await
                .expect("append");
            assert_eq!(
                out,
                [
                    AppendOutcome::Conflict(1),
                    AppendOutcome::Conflict(n as u64 / 2 + 1),
                    AppendOutcome::Conflict(n as u64)
                ]
            );
            for i in [0, 1, n / 3, n - 1] {
                let got = store
                    .get_by_id("/s", &format!("e{i}"), &Access::all())
                    .await
                    .expect("get")
                    .expect("found");
                assert_eq!(got.seq, i as u64 + 1);
            }
            assert!(store
                .get_by_id("/s", "absent", &Access::all())
                .await
                .expect("get")
                .is_none());
            store.close().await;
        };
        let open = || {
            SqliteStore::open(SqliteOptions {
                data_dir: dir.path().to_owned(),
                dedup_memory_keys: KEYS,
                ..SqliteOptions::default()
            })
            .expect("open")
        };
        let store = open();
        for i in 0..n {
            let out = store.append(vec![ev(i, 1)]).await.expect("append");
            assert_eq!(out, [AppendOutcome::Stored(i as u64 + 1)]);
        }
        let runs = |dir: &Path| {
            std::fs::read_dir(dir.join("dedup"))
                .expect("dedup dir")
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".dk"))
                })
                .count()
        };
        check(store).await;
        assert!(runs(dir.path()) >= 1, "keys were written out as runs");
        check(open()).await;
        std::fs::remove_dir_all(dir.path().join("dedup")).expect("remove runs");
        check(open()).await;
        assert!(runs(dir.path()) >= 1, "runs written again from SQLite");
    }

    async fn all_ids(store: &SqliteStore) -> Vec<String> {
        ids_matching(store, herald_core::Filter::default()).await
    }

    /// The ids of the first 100 events `filter` lists, sorted.
    async fn ids_matching(store: &SqliteStore, filter: herald_core::Filter) -> Vec<String> {
        let q = EventQuery {
            filter,
            limit: 100,
            access: Access::all(),
            ..EventQuery::default()
        };
        let mut ids: Vec<String> = store
            .query(q)
            .await
            .unwrap()
            .events
            .iter()
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.body).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        ids.sort();
        ids
    }

    /// Waits until the full-text index holds every event up to `seq`.
    async fn wait_for_fulltext(store: &SqliteStore, seq: u64) {
        for _ in 0..250 {
            if store.fts_watermark.load(Ordering::Acquire) >= seq {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the full-text index did not reach {seq}");
    }

    /// SQLite's plan for a listing with this `WHERE` clause, one line per step.
    fn plan_of(conn: &Connection, w: &crate::sql::Where) -> String {
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT seq, time, body FROM events WHERE {} ORDER BY time DESC, seq DESC LIMIT 51",
            w.sql
        );
        let mut stmt = conn.prepare(&sql).unwrap();
        let rows: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(w.params.iter()), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.join("; ")
    }

    /// SQLite's plan for one day of a listing read day by day ([`list_by_day`]).
    fn day_plan_of(conn: &Connection, w: &crate::sql::Where) -> String {
        let sql = format!("EXPLAIN QUERY PLAN {}", day_listing_sql(w));
        let head = [
            rusqlite::types::Value::Integer(0),
            rusqlite::types::Value::Integer(0),
            rusqlite::types::Value::Integer(1),
        ];
        let limit = rusqlite::types::Value::Integer(51);
        let params = head.iter().chain(&w.params).chain(std::iter::once(&limit));
        let mut stmt = conn.prepare(&sql).unwrap();
        let rows: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.join("; ")
    }

    /// The indexer gives a path index each event's body from memory, and where its `data`
    /// and `context` are: inserting reads no body back from the segments, and the indexes
    /// hold what the walk over the bodies in the segments gives (an integrity check computes
    /// every entry again from them), with and without `data` or `context`, nested or not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn path_indexes_take_bodies_from_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = ["data.org", "context.ip", "data.o.x"];
        let store = open_in(dir.path(), &paths);
        for chunk in 0..4 {
            let events = (0..25)
                .map(|i| {
                    let data = match i % 4 {
                        0 => String::new(),
                        1 => r#","data":null"#.to_string(),
                        _ => format!(
                            r#","data":{{"org":"o{}","pad":"{}","o":{{"x":[{i},"{{\"}}"]}}}}"#,
                            i % 5,
                            "x".repeat(i * 10),
                        ),
                    };
                    let context = if i % 3 == 0 {
                        format!(r#","context":{{"ip":"10.0.0.{i}","org":"not data's"}}"#)
                    } else {
                        String::new()
                    };
                    crate::contract::event(&format!(
                        r#"{{"id":"{chunk}-{i}","source":"/s","type":"t","xorg":"ext"{context}{data}}}"#
                    ))
                })
                .collect();
            store.append(events).await.expect("append");
        }
        store.settle().await.expect("settle");
        assert_eq!(
            store.indexer_bodies.segment_reads.load(Ordering::Relaxed),
            0,
            "inserts read bodies back from the segments"
        );
        store.close().await;
        let db = open_database(dir.path()).unwrap();
        let check: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let count = |path: &str, root: &str, segs: &[&str], v: &str| -> i64 {
            let segs: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
            db.query_row(
                &format!(
                    "SELECT count(*) FROM events INDEXED BY {} WHERE {} = ?1",
                    path_index_name(path),
                    path_expr(root, &segs),
                ),
                [v],
                |r| r.get(0),
            )
            .unwrap()
        };
        // i in {2,3,6,7,...}: data objects; o1 where i % 5 == 1 among them.
        let want = (0..25).filter(|i| i % 4 >= 2 && i % 5 == 1).count() as i64 * 4;
        assert_eq!(count("data.org", "data", &["org"], "o1"), want);
        assert_eq!(count("context.ip", "context", &["ip"], "10.0.0.3"), 4);
        assert_eq!(count("data.o.x", "data", &["o", "x"], "[6,\"{\\\"}\"]"), 4);
    }

    /// A number beyond a double's range (which ingest accepts as JSON) in an indexed path is
    /// an infinity, as in `json_extract`: the indexer stores it and goes on, and a
    /// comparison finds it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_path_index_takes_numbers_beyond_a_double() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(dir.path(), &["data.x"]);
        let ev = |id: &str, x: &str| {
            crate::contract::event(&format!(
                r#"{{"id":"{id}","source":"/s","type":"t","data":{{"x":{x}}}}}"#
            ))
        };
        store
            .append(vec![ev("1", "1e400"), ev("2", "-1E+400"), ev("3", "7")])
            .await
            .unwrap();
        store.settle().await.expect("the indexer took them");
        let out = store.append(vec![ev("4", "3")]).await.unwrap();
        assert_eq!(out[0], AppendOutcome::Stored(4));
        store.settle().await.expect("and goes on");
        store.close().await;
        let db = open_database(dir.path()).unwrap();
        let above: Vec<String> = db
            .prepare(&format!(
                "SELECT id FROM events INDEXED BY {} WHERE {} > 5 ORDER BY seq",
                path_index_name("data.x"),
                path_expr("data", &["x".to_string()]),
            ))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(above, ["1", "3"]);
    }

    /// A path index on `json_extract` (`events_p3_`, before `herald_path`) is dropped at the
    /// next start and built again on `herald_path`, which listings then use.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json_extract_path_indexes_are_rebuilt_on_herald_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(dir.path(), &[]);
        store
            .append(vec![crate::contract::event(
                r#"{"id":"1","source":"/s","type":"t","data":{"org":"o1"}}"#,
            )])
            .await
            .unwrap();
        store.close().await;
        let old = format!("events_p3_{:016x}", xxhash_path("data.org"));
        open_database(dir.path())
            .unwrap()
            .execute_batch(&format!(
                "CREATE INDEX {old} ON events({DAY_EXPR}, json_extract({BODY},'$.data.\"org\"'), time)"
            ))
            .unwrap();
        let store = open_in(dir.path(), &["data.org"]);
        store.close().await;
        let names: Vec<String> = open_database(dir.path())
            .unwrap()
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'events_p%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(names, [path_index_name("data.org")]);
        assert!(names[0].starts_with("events_p4_"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleted_rows_are_not_indexed_again_and_their_seqs_not_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = SqliteOptions {
            data_dir: dir.path().to_owned(),
            indexed_paths: vec!["data.n".into()],
            ..SqliteOptions::default()
        };
        let ev = |id: &str| {
            crate::contract::event(&format!(
                r#"{{"id":"{id}","source":"/s","type":"a","data":{{"n":1}}}}"#
            ))
        };
        let store = SqliteStore::open(opts.clone()).expect("open");
        store.append(vec![ev("1"), ev("2"), ev("3")]).await.unwrap();
        store.close().await;
        // Retention (to come) deletes rows; their records stay in the segments.
        let db = open_database(dir.path()).unwrap();
        db.execute("DELETE FROM events", []).unwrap();
        drop(db);
        let store = SqliteStore::open(opts).expect("reopen");
        assert!(
            all_ids(&store).await.is_empty(),
            "nothing came back from the segments"
        );
        let out = store.append(vec![ev("4")]).await.unwrap();
        assert_eq!(out[0], AppendOutcome::Stored(4));
        assert_eq!(all_ids(&store).await, ["4"]);
        store.close().await;
    }

    /// Where event `seq`'s body is in its segment (location and length), as the index says.
    fn damage_site(dir: &Path, seq: i64) -> (i64, i64) {
        open_database(dir)
            .unwrap()
            .query_row("SELECT loc, len FROM events WHERE seq = ?1", [seq], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
    }

    /// The disk changes one byte in the middle of the body at `(loc, len)`.
    fn damage_body(dir: &Path, (loc, len): (i64, i64)) {
        let (n, off) = crate::segment::split(loc);
        let path = crate::segment::segment_path(&segments_dir(dir), n);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[off as usize + len as usize / 2] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_events_after_a_damaged_one_come_back_from_the_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ev = |id: u32| {
            crate::contract::event(&format!(
                r#"{{"id":"{id}","source":"/s","type":"a","data":{{"kettle":"on"}}}}"#
            ))
        };
        let store = open_in(dir.path(), &[]);
        store.append((1..=5).map(ev).collect()).await.unwrap();
        store.close().await;
        let site = damage_site(dir.path(), 3);
        // The index lost every event (as after a power cut before its first commit: it is
        // not fsynced), and the disk changed a byte of event 3's record.
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let p = f.unwrap().path();
            if p.is_file() {
                std::fs::remove_file(p).unwrap();
            }
        }
        damage_body(dir.path(), site);

        // The events after it are indexed again, not cut off with it.
        let store = open_in(dir.path(), &[]);
        assert_eq!(all_ids(&store).await, ["1", "2", "4", "5"]);
        let out = store.append(vec![ev(6), ev(4)]).await.unwrap();
        assert_eq!(
            out,
            [AppendOutcome::Stored(6), AppendOutcome::Duplicate(4)],
            "seqs go on after the kept ones, whose ids are known"
        );
        store.close().await;
        let store = open_in(dir.path(), &[]);
        assert_eq!(all_ids(&store).await, ["1", "2", "4", "5", "6"]);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_body_is_left_out_of_listings_and_scans_and_named_when_asked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ev = |id: u32| {
            crate::contract::event(&format!(
                r#"{{"id":"{id}","source":"/s","type":"a","time":"2026-11-0{id}T00:00:00Z","data":{{"kettle":"on"}}}}"#
            ))
        };
        let store = open_in(dir.path(), &[]);
        store.append((1..=5).map(ev).collect()).await.unwrap();
        store.close().await;
        // The disk changes one byte of event 3's body.
        damage_body(dir.path(), damage_site(dir.path(), 3));

        let store = open_in(dir.path(), &[]);
        let access = Access::all();
        // Pages of two: the damaged event counts for the page it falls in, so the pages
        // still meet every other event, and the last one says it is the last.
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = store
                .query(EventQuery {
                    limit: 2,
                    cursor,
                    access: access.clone(),
                    ..EventQuery::default()
                })
                .await
                .expect("a listing over a damaged body answers");
            seen.extend(page.events.iter().map(|e| e.seq));
            pages += 1;
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, [5, 4, 2, 1]);
        assert_eq!(pages, 3);
        // A text term reads bodies too.
        let text = store
            .query(EventQuery {
                filter: herald_core::filter::Filter::parse("kettle", 0).unwrap(),
                limit: 10,
                access: access.clone(),
                ..EventQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(text.events.len(), 4);
        let scan = store
            .scan(ScanQuery {
                limit: 10,
                access: access.clone(),
                ..ScanQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(
            scan.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 4, 5]
        );
        assert!(scan.done);
        assert!(matches!(
            store.get_by_seq(3, &access).await,
            Err(StoreError::Damaged(3))
        ));
        assert!(matches!(
            store.get_by_id("/s", "3", &access).await,
            Err(StoreError::Damaged(3))
        ));
        assert!(store.get_by_seq(4, &access).await.unwrap().is_some());
        assert!(store.damaged_reads() >= 4, "{}", store.damaged_reads());
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_data_directory_with_the_earlier_write_ahead_log_is_moved_to_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = SqliteOptions {
            data_dir: dir.path().to_owned(),
            ..SqliteOptions::default()
        };
        // Event 1 reached SQLite with its body in the row; event 2 only the old log.
        let store = SqliteStore::open(opts.clone()).expect("open");
        store
            .append(vec![crate::contract::event(
                r#"{"id":"1","source":"/s","type":"a"}"#,
            )])
            .await
            .unwrap();
        store.close().await;
        let db = open_database(dir.path()).unwrap();
        let body: String = db
            .query_row(&format!("SELECT {BODY} FROM events"), [], |r| r.get(0))
            .unwrap();
        db.execute(
            "UPDATE events SET body = ?1, loc = NULL, len = NULL",
            [&body],
        )
        .unwrap();
        db.execute("DELETE FROM meta WHERE key = 'indexed'", [])
            .unwrap();
        drop(db);
        std::fs::remove_dir_all(segments_dir(dir.path())).unwrap();
        let mut log = Log::open(&dir.path().join("events.log")).unwrap();
        log.push(
            &body
                .replace(r#""seq":1"#, r#""seq":2"#)
                .replace(r#""id":"1""#, r#""id":"2""#),
        );
        log.sync(true).unwrap();
        drop(log);
        let store = SqliteStore::open(opts.clone()).expect("reopen");
        assert_eq!(all_ids(&store).await, ["1", "2"]);
        assert!(
            !dir.path().join("events.log").exists(),
            "the old log is gone"
        );
        let out = store
            .append(vec![crate::contract::event(
                r#"{"id":"3","source":"/s","type":"a"}"#,
            )])
            .await
            .unwrap();
        assert_eq!(out[0], AppendOutcome::Stored(3));
        store.close().await;
        let store = SqliteStore::open(opts).expect("reopen again");
        assert_eq!(all_ids(&store).await, ["1", "2", "3"]);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fulltext_index_catches_up_and_is_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = |fulltext| SqliteOptions {
            data_dir: dir.path().to_owned(),
            fulltext,
            ..SqliteOptions::default()
        };
        // Stored without full text, then reopened with it: the gap is indexed at start.
        let store = SqliteStore::open(opts(false)).expect("open");
        let ev = |id: &str, word: &str| {
            crate::contract::event(&format!(
                r#"{{"id":"{id}","source":"/s","type":"a","data":{{"msg":"{word}"}}}}"#
            ))
        };
        store
            .append(vec![ev("1", "kettle"), ev("2", "teapot")])
            .await
            .unwrap();
        store.close().await;
        let store = SqliteStore::open(opts(true)).expect("reopen");
        // Found before the catch-up too (scanned in SQL), then through the index.
        assert_eq!(text_count(&store, "kettle").await, 1);
        wait_for_fulltext(&store, 2).await;
        assert_eq!(text_count(&store, "kettle").await, 1);
        // New events are found at once (in memory), then through the index after a flush.
        store.append(vec![ev("3", "kettle")]).await.unwrap();
        assert_eq!(text_count(&store, "kettle").await, 2);
        // Idle, the indexer commits after TXN_MAX_AGE (1 s), then the full-text thread
        // flushes.
        wait_for_fulltext(&store, 3).await;
        assert_eq!(text_count(&store, "kettle").await, 2);
        assert_eq!(text_count(&store, "KETTLE").await, 2, "case-insensitive");
        assert_eq!(text_count(&store, "-kettle").await, 1);
        store.close().await;
    }

    /// A damaged `fts.db` does not keep the store from opening: it is moved aside and the
    /// index is rebuilt from the events.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_fulltext_index_is_moved_aside_and_rebuilt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(dir.path(), &[]);
        store.append(worded(0, 100, "tea")).await.unwrap();
        store.settle().await.unwrap();
        store.close().await;
        drop(store);
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("fts.db{suffix}")));
        }
        std::fs::write(dir.path().join("fts.db"), vec![0x5a; 64 * 1024]).unwrap();
        let store = open_in(dir.path(), &[]);
        assert_eq!(text_count(&store, "w42").await, 1, "scanned meanwhile");
        wait_for_fulltext(&store, 100).await;
        assert_eq!(text_count(&store, "w42").await, 1, "from the rebuilt index");
        assert_eq!(text_count(&store, "tea").await, 100);
        let kept = std::fs::read(dir.path().join("fts.db.damaged")).expect("kept aside");
        assert_eq!(kept, vec![0x5a; 64 * 1024]);
        store.close().await;
    }

    /// `fts.db` damaged while the store runs: a text read that fails on it has the full-text
    /// thread check the file, move it aside and rebuild the index from the events; readers
    /// attach the new file, and text search answers again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fulltext_index_damaged_while_serving_is_moved_aside_and_rebuilt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(dir.path(), &[]);
        store.append(worded(0, 3000, "tea")).await.unwrap();
        store.settle().await.unwrap();
        wait_for_fulltext(&store, 3000).await;
        assert_eq!(text_count(&store, "w42").await, 1);
        // Everything in the file itself, then garbage over all but its first two pages.
        let path = dir.path().join("fts.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 16 * 1024, "{} bytes", bytes.len());
        for (i, b) in bytes[8192..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31) ^ 0xa5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let q = |word: &str| EventQuery {
            filter: herald_core::Filter::parse(word, 0).unwrap(),
            limit: 10_000,
            access: Access::all(),
            ..EventQuery::default()
        };
        let first = store.query(q("w42")).await;
        assert!(
            first.as_ref().is_err_and(is_damage_message),
            "the damaged index fails the read: {:?}",
            first.map(|p| p.events.len())
        );
        // Rebuilt: found through the scan of the events past the new index, then through it.
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let found = store.query(q("w42")).await.map(|p| p.events.len());
            if found.as_ref().is_ok_and(|n| *n == 1)
                && store.fts_watermark.load(Ordering::Acquire) >= 3000
            {
                break;
            }
            assert!(Instant::now() < deadline, "not rebuilt: {found:?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(text_count(&store, "tea").await, 3000);
        assert_eq!(text_count(&store, "w2999").await, 1);
        assert_eq!(
            std::fs::read(dir.path().join("fts.db.damaged")).expect("kept aside"),
            bytes
        );
        store.close().await;
    }

    /// How many segments the full-text index of `dir` has, read from FTS5's structure record
    /// (row 10 of `events_fts_data`: a 4-byte cookie, an optional 4-byte V2 mark, then the
    /// number of levels and of segments as varints; both are under 128 here).
    fn fts_segments(dir: &Path) -> u8 {
        let fts = Connection::open(dir.join("fts.db")).unwrap();
        let s: Vec<u8> = fts
            .query_row("SELECT block FROM events_fts_data WHERE id = 10", [], |r| {
                r.get(0)
            })
            .unwrap();
        let at = if s[4..8] == [0xff, 0, 0, 1] { 8 } else { 4 };
        assert!(s[at] < 128 && s[at + 1] < 128, "{s:?}");
        s[at + 1]
    }

    /// Ingest merges the full-text index's segments lazily (16 to a level); when nothing
    /// waits to be indexed, the full-text thread merges levels of 4 or more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fulltext_index_merges_its_segments_when_idle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(dir.path(), &[]);
        // One flush, so one segment, per round.
        for round in 0..12 {
            store.append(worded(round * 10, 10, "tea")).await.unwrap();
            store.settle().await.unwrap();
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while fts_segments(dir.path()) > 3 {
            assert!(
                Instant::now() < deadline,
                "{} segments left",
                fts_segments(dir.path())
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(text_count(&store, "tea").await, 120);
        assert_eq!(text_count(&store, "w77").await, 1);
        store.close().await;
    }

    /// The number of events holding `word`, up to 10,000.
    async fn text_count(store: &SqliteStore, word: &str) -> usize {
        let q = EventQuery {
            filter: herald_core::Filter::parse(word, 0).unwrap(),
            limit: 10_000,
            access: Access::all(),
            ..EventQuery::default()
        };
        store.query(q).await.unwrap().events.len()
    }

    /// `n` events from `from` on, each with a word of its own (`w<i>`) and `tag`.
    fn worded(from: usize, n: usize, tag: &str) -> Vec<herald_core::PreparedEvent> {
        (from..from + n)
            .map(|i| {
                crate::contract::event(&format!(
                    r#"{{"id":"{i}","source":"/s","type":"a","data":{{"msg":"w{i} {tag}"}}}}"#
                ))
            })
            .collect()
    }

    /// Text terms scanned in SQL (here without the full-text index) find what the index
    /// would: a word in upper case, or in a character that lowercases into ASCII (the
    /// Kelvin sign, which a `LIKE` on the body used to miss), and an escape in `data` as it
    /// is written (the search text holds `data` as JSON).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn text_scanned_in_sql_finds_escaped_and_folded_words() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(SqliteOptions {
            data_dir: dir.path().to_owned(),
            fulltext: false,
            ..SqliteOptions::default()
        })
        .expect("open");
        let events = [
            r#"{"id":"1","source":"/s","type":"a","data":{"msg":"k\u0065ttle boiled"}}"#,
            r#"{"id":"2","source":"/s","type":"a","data":{"msg":"KETTLE Boiled"}}"#,
            "{\"id\":\"3\",\"source\":\"/s\",\"type\":\"a\",\"data\":{\"msg\":\"\u{212A}ettle boiled\"}}",
            r#"{"id":"4","source":"/s","type":"a","data":{"msg":"kettles boiled"}}"#,
            r#"{"id":"5","source":"/s","type":"a","data":{"msg":"boiled kettle"}}"#,
        ];
        store
            .append(events.iter().map(|e| crate::contract::event(e)).collect())
            .await
            .unwrap();
        store.settle().await.unwrap();
        let ids =
            |filter: &str| ids_matching(&store, herald_core::Filter::parse(filter, 0).unwrap());
        assert_eq!(ids("kettle").await, ["2", "3", "5"]);
        assert_eq!(ids("\"kettle boiled\"").await, ["2", "3"]);
        assert_eq!(ids("u0065ttle").await, ["1"]);
        assert_eq!(ids("kettle -boiled").await, Vec::<String>::new());
        store.close().await;
    }

    /// The writer waits for the indexer by events (`max_index_backlog`), not by the batches
    /// it hands over: 1,500 single-event groups are acknowledged while the indexer inserts
    /// nothing (a channel of 1,024 batches stopped them at 1,026), and past a backlog of 100
    /// events appends wait until it inserts again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_waits_for_the_indexer_by_events_not_batches() {
        let append_one = |store: Arc<SqliteStore>, i: usize| async move {
            let ev = crate::contract::event(&format!(r#"{{"id":"{i}","source":"/s","type":"a"}}"#));
            store.append(vec![ev]).await.map(|_| ())
        };
        let within = |ms| tokio::time::Duration::from_millis(ms);
        for (backlog, appends, acknowledged) in [(50_000, 1_500, 1_500), (100, 200, 102)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let gate = Arc::new(Gate::default());
            INDEXER_GATE.with(|g| *g.borrow_mut() = Some(gate.clone()));
            let store = Arc::new(
                SqliteStore::open(SqliteOptions {
                    data_dir: dir.path().to_owned(),
                    max_index_backlog: backlog,
                    ..SqliteOptions::default()
                })
                .expect("open"),
            );
            INDEXER_GATE.with(|g| *g.borrow_mut() = None);
            gate.set(true);
            // One request at a time: each is a group of its own. The writer answers a group,
            // then hands it over: with a backlog of 100 it waits with the 102nd, once 101
            // events (more than the backlog) are handed over, and the 103rd is not answered.
            for i in 0..acknowledged {
                tokio::time::timeout(within(10_000), append_one(store.clone(), i))
                    .await
                    .unwrap_or_else(|_| {
                        panic!("append {i} unanswered after 10 s (backlog {backlog})")
                    })
                    .expect("append");
            }
            if acknowledged < appends {
                let next = append_one(store.clone(), acknowledged);
                assert!(
                    tokio::time::timeout(within(1_000), next).await.is_err(),
                    "append {acknowledged} waits for the indexer"
                );
            }
            gate.set(false);
            for i in acknowledged..appends {
                tokio::time::timeout(within(10_000), append_one(store.clone(), i))
                    .await
                    .expect("appends go on once the indexer does")
                    .expect("append");
            }
            store.settle().await.unwrap();
            assert_eq!(store.seq_range().await.unwrap().last, appends as u64);
            Arc::try_unwrap(store)
                .ok()
                .expect("one handle")
                .close()
                .await;
        }
    }

    /// The hand-over of `Untexted` (see its doc): after the catch-up, it is complete only once
    /// the index holds every event of the commits the indexer did not add.
    #[test]
    fn untexted_is_complete_only_once_nothing_is_missing() {
        let batch = |seqs: std::ops::RangeInclusive<u64>| {
            let events: Vec<LiveEvent> = seqs
                .map(|seq| {
                    LiveEvent::new(
                        seq,
                        crate::contract::event(&format!(
                            r#"{{"id":"{seq}","source":"/s","type":"a"}}"#
                        )),
                    )
                })
                .collect();
            vec![MemBatch::new(events.into())]
        };
        let mut u = Untexted::default();
        // Committed while the full-text thread catches up: not added.
        u.committing(&batch(1..=10), 10);
        u.committing(&batch(11..=20), 20);
        assert!(u.batches.is_empty());
        // The catch-up's last read held up to 10; 11..=20 come over the channel.
        u.collecting = true;
        u.indexed_through(10);
        assert!(!u.complete, "11..=20 are neither indexed nor here");
        u.committing(&batch(21..=30), 30);
        assert_eq!(u.batches.len(), 1);
        assert!(!u.complete);
        u.indexed_through(20);
        assert!(u.complete);
        assert_eq!(u.batches.len(), 1, "21..=30 are not indexed yet");
        u.committing(&batch(31..=40), 40);
        u.indexed_through(30);
        assert_eq!(
            u.batches.front().and_then(|b| b.first()).map(|e| e.seq),
            Some(31)
        );
        // Writes failed: back to catching up.
        u.abandon();
        assert!(!u.complete && u.batches.is_empty());
        u.committing(&batch(41..=50), 50);
        assert!(u.batches.is_empty());
        u.collecting = true;
        u.indexed_through(45);
        assert!(!u.complete);
        u.indexed_through(50);
        assert!(u.complete);
    }

    /// The full-text catch-up runs while the store serves, and its hand-over to the events
    /// the indexer commits meanwhile leaves no moment at which a committed event is found
    /// neither in the index nor in memory: a word of each event is searched for while
    /// batches are appended and committed, before, during and after the hand-over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn text_search_stays_exact_while_the_fulltext_index_catches_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = |fulltext| SqliteOptions {
            data_dir: dir.path().to_owned(),
            fulltext,
            ..SqliteOptions::default()
        };
        let stored = 3 * FTS_BATCH + 500;
        let store = SqliteStore::open(opts(false)).expect("open");
        store.append(worded(0, stored, "old")).await.unwrap();
        store.close().await;

        // Commits land between the catch-up's last read and the hand-over, and a bad
        // hand-over would be seen for a while.
        HANDOVER_PAUSE.with(|p| p.set(std::time::Duration::from_millis(300)));
        let store = SqliteStore::open(opts(true)).expect("reopen");
        HANDOVER_PAUSE.with(|p| p.set(std::time::Duration::ZERO));
        let complete = |store: &SqliteStore| store.untexted.lock().unwrap().complete;
        assert!(!complete(&store), "the catch-up runs in the background");
        let mut next = stored;
        let mut rounds_after = 0;
        let mut rounds = 0;
        while rounds_after < 20 {
            rounds += 1;
            assert!(rounds < 5000, "the catch-up did not finish");
            store.append(worded(next, 50, "fresh")).await.unwrap();
            next += 50;
            // Commits fall in the hand-over.
            store.visible().await.unwrap();
            // Every event appended since the reopen is found.
            assert_eq!(
                text_count(&store, "fresh").await,
                next - stored,
                "round {rounds}"
            );
            for i in [0, stored / 2, stored - 1, stored, next - 50, next - 1] {
                assert_eq!(
                    text_count(&store, &format!("w{i}")).await,
                    1,
                    "w{i}, round {rounds}"
                );
            }
            if complete(&store) {
                rounds_after += 1;
            }
        }
        store.settle().await.unwrap();
        assert!(store.fts_watermark.load(Ordering::Acquire) >= next as u64);
        for i in (0..next).step_by(997) {
            assert_eq!(text_count(&store, &format!("w{i}")).await, 1, "w{i}");
        }
        store.close().await;
        // The catch-up merged without merging along the way, then put ingest's settings back.
        let fts = Connection::open(dir.path().join("fts.db")).unwrap();
        let setting = |k: &str| -> i64 {
            fts.query_row("SELECT v FROM events_fts_config WHERE k = ?1", [k], |r| {
                r.get(0)
            })
            .unwrap()
        };
        assert_eq!((setting("automerge"), setting("crisismerge")), (16, 16));
    }

    /// While the full-text index cannot be written, the full-text thread holds at most
    /// `FTS_MAX_PENDING` events, then drops them and retries from SQLite; text search scans
    /// meanwhile, and once writes succeed again the index catches up and is used.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fulltext_index_recovers_after_its_writes_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(dir.path(), &[]);
        wait_for_fulltext(&store, 0).await;
        while !store.untexted.lock().unwrap().complete {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Another connection holds fts.db's write lock: every flush fails (busy).
        let blocker = Connection::open(dir.path().join("fts.db")).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let total = FTS_MAX_PENDING + 2000;
        for from in (0..total).step_by(1000) {
            store.append(worded(from, 1000, "tea")).await.unwrap();
            store.visible().await.unwrap();
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while !store.untexted.lock().unwrap().failing {
            assert!(
                Instant::now() < deadline,
                "the full-text thread never gave up holding events"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(!store.untexted.lock().unwrap().complete);
        assert_eq!(store.fts_watermark.load(Ordering::Acquire), 0);
        for i in [0, total / 2, total - 1] {
            assert_eq!(
                text_count(&store, &format!("w{i}")).await,
                1,
                "scanned: w{i}"
            );
        }
        // Such scans are long: one at a time, and other reads do not wait for them.
        let turn = store.long_text_reads.acquire().await.unwrap();
        let waited = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            text_count(&store, "w0"),
        )
        .await;
        assert!(waited.is_err(), "a long text scan waits for its turn");
        let catch_up = ScanQuery {
            filter: herald_core::Filter::parse("w0", 0).unwrap(),
            after_seq: 0,
            since_us: None,
            limit: 10,
            access: Access::all(),
        };
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(300), store.scan(catch_up)).await;
        assert!(
            waited.is_err(),
            "so does a stream's catch-up over the same tail"
        );
        let q = EventQuery {
            filter: herald_core::Filter::parse("type:a", 0).unwrap(),
            limit: 1,
            access: Access::all(),
            ..EventQuery::default()
        };
        assert_eq!(store.query(q).await.unwrap().events.len(), 1);
        drop(turn);
        blocker.execute_batch("ROLLBACK").unwrap();
        wait_for_fulltext(&store, total as u64).await;
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while !store.untexted.lock().unwrap().complete {
            assert!(Instant::now() < deadline, "the hand-over never completed");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(!store.untexted.lock().unwrap().failing);
        for i in [0, total / 2, total - 1] {
            assert_eq!(
                text_count(&store, &format!("w{i}")).await,
                1,
                "indexed: w{i}"
            );
        }
        store.append(worded(total, 1, "tea")).await.unwrap();
        assert_eq!(
            text_count(&store, &format!("w{total}")).await,
            1,
            "in memory"
        );
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_phrase_is_checked_only_on_the_events_the_index_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(dir.path(), &[]);
        let events: Vec<_> = (0..2000)
            .map(|i| {
                let msg = if i == 777 { "kettle boiled" } else { "tea" };
                crate::contract::event(&format!(
                    r#"{{"id":"{i}","source":"/s","type":"a","data":{{"msg":"{msg}"}}}}"#
                ))
            })
            .collect();
        store.append(events).await.unwrap();
        store.close().await;
        // Reopened, as a running server is: the statistics SQLite gathers at start make it
        // walk the time index, testing each row.
        let store = SqliteStore::open(SqliteOptions {
            data_dir: dir.path().to_owned(),
            ..SqliteOptions::default()
        })
        .expect("reopen");
        wait_for_fulltext(&store, 2000).await;
        let before = HERALD_TEXT_CALLS.load(Ordering::Relaxed);
        let q = EventQuery {
            filter: herald_core::Filter::parse("\"kettle boiled\"", 0).unwrap(),
            limit: 10,
            access: Access::all(),
            ..EventQuery::default()
        };
        assert_eq!(store.query(q).await.unwrap().events.len(), 1);
        let calls = HERALD_TEXT_CALLS.load(Ordering::Relaxed) - before;
        // Other tests of this binary may run queries meanwhile; 2,000 calls is the bug.
        assert!(
            calls < 100,
            "herald_text ran {calls} times for one candidate"
        );
        store.close().await;
    }

    /// A store holding 3,000 events whose `data.msg` is `msg(i)`, all in the full-text index.
    async fn tea_store(dir: &Path, msg: impl Fn(usize) -> &'static str) -> SqliteStore {
        let store = open_in(dir, &[]);
        let events: Vec<_> = (0..3000)
            .map(|i| {
                crate::contract::event(&format!(
                    r#"{{"id":"{i}","source":"/s","type":"a","time":"{}","data":{{"msg":"{}"}}}}"#,
                    herald_core::timespec::format_rfc3339(
                        1_790_000_000_000_000 + i as i64 * 1_000_000
                    ),
                    msg(i)
                ))
            })
            .collect();
        store.append(events).await.unwrap();
        wait_for_fulltext(&store, 3000).await;
        store
    }

    /// Words of scripts with combining marks are found through the index, which holds the
    /// core's tokens; before, `unicode61` cut such a word in pieces and FTS5 refused the
    /// query ("phrase queries are not supported"), or missed the event (`İstanbul`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn words_with_combining_marks_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(dir.path(), &[]);
        store
            .append(vec![
                crate::contract::event(
                    r#"{"id":"1","source":"/s","type":"a","data":{"msg":"क्षेत्र नमस्ते"}}"#,
                ),
                crate::contract::event(
                    r#"{"id":"2","source":"/s","type":"a","data":{"msg":"क्षत्रिय"}}"#,
                ),
                crate::contract::event(
                    r#"{"id":"3","source":"/s","type":"a","data":{"msg":"İstanbul"}}"#,
                ),
            ])
            .await
            .unwrap();
        wait_for_fulltext(&store, 3).await;
        let seqs = |filter: &'static str| {
            let q = EventQuery {
                filter: herald_core::Filter::parse(filter, 0).unwrap(),
                limit: 10,
                access: Access::all(),
                ..EventQuery::default()
            };
            let store = &store;
            async move {
                let page = store.query(q).await.expect(filter);
                page.events.iter().map(|e| e.seq).collect::<Vec<u64>>()
            }
        };
        // Event 2 holds the same letters (क, ष, त, र) in another word.
        assert_eq!(seqs("क्षेत्र").await, vec![1]);
        assert_eq!(seqs("नमस्ते").await, vec![1]);
        assert_eq!(seqs("क्षत्रिय").await, vec![2]);
        assert_eq!(seqs("\"क्षेत्र नमस्ते\"").await, vec![1]);
        assert!(seqs("नमस्कार").await.is_empty());
        // The core lowercases İ to i and a combining dot; the index holds that token.
        assert_eq!(seqs("İstanbul").await, vec![3]);
        store.close().await;
        drop(store);

        // An index built with the tokenizer of earlier versions is rebuilt at start.
        let fts = Connection::open(dir.path().join("fts.db")).unwrap();
        fts.execute_batch(
            "DROP TABLE events_fts;
             CREATE VIRTUAL TABLE events_fts USING fts5(text, content='', contentless_delete=1, detail=none, tokenize='unicode61 remove_diacritics 0');
             INSERT INTO events_fts (rowid, text) VALUES (3, 'İstanbul');",
        )
        .unwrap();
        drop(fts);
        let store = SqliteStore::open(SqliteOptions {
            data_dir: dir.path().to_owned(),
            ..SqliteOptions::default()
        })
        .expect("reopen");
        wait_for_fulltext(&store, 3).await;
        for (filter, want) in [("İstanbul", 1), ("क्षेत्र", 1), ("नमस्कार", 0)]
        {
            let q = EventQuery {
                filter: herald_core::Filter::parse(filter, 0).unwrap(),
                limit: 10,
                access: Access::all(),
                ..EventQuery::default()
            };
            assert_eq!(store.query(q).await.unwrap().events.len(), want, "{filter}");
        }
        let fts = Connection::open(dir.path().join("fts.db")).unwrap();
        let sql: String = fts
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'events_fts'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(sql.contains(FTS_TOKENIZER), "{sql}");
        store.close().await;
    }

    /// A listing with a common word tests rows one by one (a page is met after a few rows)
    /// instead of building the index's list of every event holding the word; both ways
    /// answer the same, and a statement past its budget is interrupted, not failed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_common_text_term_is_tested_row_by_row_within_a_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = tea_store(dir.path(), |i| if i % 3 == 0 { "green tea" } else { "tea" }).await;
        let q = |filter: &str| EventQuery {
            filter: herald_core::Filter::parse(filter, 0).unwrap(),
            limit: 10,
            access: Access::all(),
            ..EventQuery::default()
        };
        let seqs = |page: Page| page.events.iter().map(|e| e.seq).collect::<Vec<_>>();
        let before = HERALD_TEXT_CALLS.load(Ordering::Relaxed);
        let tea = seqs(store.query(q("tea")).await.unwrap());
        // The list of hits answers a one-word term without `herald_text`; rows tested one by
        // one call it for each row until the page is full (11 rows here).
        assert!(HERALD_TEXT_CALLS.load(Ordering::Relaxed) - before >= 11);
        assert_eq!(tea, (2991..=3000).rev().collect::<Vec<u64>>());
        let green = seqs(store.query(q("green -kettle")).await.unwrap());
        assert_eq!(
            green,
            vec![2998, 2995, 2992, 2989, 2986, 2983, 2980, 2977, 2974, 2971]
        );

        // The same listings through the index's list of hits.
        let conn = store.readers.conns.lock().unwrap().pop().unwrap();
        for (filter, want) in [("tea", &tea), ("green -kettle", &green)] {
            let f = herald_core::Filter::parse(filter, 0).unwrap();
            let w = compile(
                &f,
                &Access::all(),
                None,
                None,
                None,
                Some(TextTail::Past(3000)),
            );
            let sql = format!(
                "SELECT seq FROM events WHERE {} ORDER BY time DESC, seq DESC LIMIT 10",
                w.sql
            );
            let got: Vec<u64> = conn
                .prepare(&sql)
                .unwrap()
                .query_map(rusqlite::params_from_iter(w.params.iter()), |r| {
                    r.get::<_, i64>(0).map(|s| s as u64)
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(&got, want, "{filter}");
        }

        // A statement past its budget is interrupted (`None`), and the connection then runs
        // without a deadline.
        let long = "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 100000000) SELECT count(*) FROM c";
        let t = Instant::now();
        let cut = within(std::time::Duration::from_millis(5), || {
            conn.query_row(long, [], |r| r.get::<_, i64>(0))
        })
        .unwrap();
        assert_eq!(cut, None);
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        let n: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3000);
        store.readers.conns.lock().unwrap().push(conn);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rare_text_term_drives_the_listing_by_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = tea_store(
            dir.path(),
            |i| if i % 1000 == 7 { "kettle tea" } else { "tea" },
        )
        .await;
        let q = |filter: &str| EventQuery {
            filter: herald_core::Filter::parse(filter, 0).unwrap(),
            limit: 10,
            access: Access::all(),
            ..EventQuery::default()
        };
        assert_eq!(store.query(q("kettle")).await.unwrap().events.len(), 3);
        assert_eq!(
            store.query(q("\"kettle tea\"")).await.unwrap().events.len(),
            3
        );
        assert_eq!(store.query(q("kettle -tea")).await.unwrap().events.len(), 0);
        let wm = 3000;
        let conn = store.readers.conns.lock().unwrap().pop().unwrap();
        let drive = |filter: &str, wm: u64, span: (Option<i64>, Option<i64>)| {
            let f = herald_core::Filter::parse(filter, 0).unwrap();
            let counts = count_text_terms(&conn, &f).unwrap();
            let mut w = compile_counted(
                &f,
                &Access::all(),
                span,
                None,
                Some(TextTail::Past(wm)),
                &counts,
            );
            let drive = drive_by_text_hits(&f, &counts, TextTail::Past(wm), 3000, span, &mut w);
            (drive, w)
        };
        let plan = |filter: &str| plan_of(&conn, &drive(filter, wm, (None, None)).1);
        let rare = plan("kettle");
        assert!(rare.contains("INTEGER PRIMARY KEY"), "{rare}");
        let common = plan("tea");
        assert!(!common.contains("INTEGER PRIMARY KEY"), "{common}");
        // An index far behind (here: as if it held only the first 500 events) still drives a
        // rare term, with the tail tested row by row, and finds the same events, within any
        // time bounds.
        let seqs = |w: &crate::sql::Where| -> Vec<i64> {
            conn.prepare(&format!(
                "SELECT seq FROM events WHERE {} ORDER BY time DESC, seq DESC",
                w.sql
            ))
            .unwrap()
            .query_map(rusqlite::params_from_iter(w.params.iter()), |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
        };
        let kettles = seqs(&drive("kettle", wm, (None, None)).1);
        assert_eq!(kettles.len(), 3);
        // The index loses the two newer ones: only the tail (past the watermark) finds them.
        {
            let fts = Connection::open(dir.path().join("fts.db")).unwrap();
            for seq in &kettles[..2] {
                assert!(*seq > 500);
                fts.execute("DELETE FROM events_fts WHERE rowid = ?1", [seq])
                    .unwrap();
            }
        }
        assert_eq!(seqs(&drive("kettle", wm, (None, None)).1), kettles[2..]);
        let (d, all) = drive("kettle", 500, (None, None));
        assert_eq!(d, TextDrive::Driven);
        assert_eq!(seqs(&all), kettles);
        let times: Vec<i64> = conn
            .prepare("SELECT time FROM events ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let span = (Some(times[1000]), Some(times[2500]));
        let (d, bounded) = drive("kettle", 500, span);
        assert_eq!(d, TextDrive::Driven);
        assert_eq!(seqs(&bounded), kettles[..2]);
        // The same with the events the index lacks found in memory (`Untexted`): their hits
        // are given as a list, for the driven listing and for the compiled term alike.
        let lost: Vec<u64> = kettles[..2].iter().map(|&s| s as u64).collect();
        let in_memory = |_: &str| lost.clone();
        let f = herald_core::Filter::parse("kettle", 0).unwrap();
        let mut w = compile(
            &f,
            &Access::all(),
            None,
            None,
            None,
            Some(TextTail::Hits(&in_memory)),
        );
        assert_eq!(seqs(&w), kettles);
        let d = drive_by_text_hits(
            &f,
            &count_text_terms(&conn, &f).unwrap(),
            TextTail::Hits(&in_memory),
            3000,
            (None, None),
            &mut w,
        );
        assert_eq!(d, TextDrive::Driven);
        assert_eq!(seqs(&w), kettles);
        let nothing = |_: &str| Vec::new();
        let w = compile(
            &f,
            &Access::all(),
            None,
            None,
            None,
            Some(TextTail::Hits(&nothing)),
        );
        assert_eq!(seqs(&w), kettles[2..]);
        // A phrase with a common token (`tea`, in every event) is checked in the index with
        // its rare ones only, and still decided as a phrase; the driven listing is the
        // same. Negated, the same check (a one-token negated term is not counted).
        let counted = |filter: &str| {
            let f = herald_core::Filter::parse(filter, 0).unwrap();
            count_text_terms(&conn, &f).unwrap()
        };
        let c = counted("\"tea kettle\" msg -\"kettle tea\" -tea");
        assert_eq!(c["tea kettle"].query, "\"kettle\"");
        // (The index lost two of the three above.)
        assert_eq!(c["tea kettle"].hits, 1);
        assert_eq!(c["msg"].query, "\"msg\"");
        assert!(c["msg"].hits > FEW_TEXT_HITS);
        assert_eq!(c["kettle tea"].query, "\"kettle\"");
        assert!(!c.contains_key("tea"));
        // Every token common: all of them.
        assert_eq!(
            counted("\"msg tea\"")["msg tea"].query,
            "\"msg\" AND \"tea\""
        );
        let (d, w) = drive("\"kettle tea\"", 500, (None, None));
        assert_eq!(d, TextDrive::Driven);
        assert!(plan_of(&conn, &w).contains("INTEGER PRIMARY KEY"));
        assert_eq!(seqs(&w), kettles);
        assert_eq!(
            seqs(&drive("\"tea kettle\"", 500, (None, None)).1),
            Vec::<i64>::new()
        );
        store.readers.conns.lock().unwrap().push(conn);
        assert_eq!(
            store.query(q("\"tea kettle\"")).await.unwrap().events.len(),
            0
        );
        let not_kettle = store.query(q("-\"kettle tea\"")).await.unwrap();
        assert_eq!(not_kettle.events.len(), 10);
        assert!(not_kettle.events.iter().all(|e| !e.body.contains("kettle")));
        store.close().await;
    }

    /// A long schema step returns its result as soon as it is done: the watcher that logs
    /// its progress never holds it up.
    #[test]
    fn logged_build_returns_promptly() {
        let t = Instant::now();
        let v = logged_build("a test index", || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            7
        });
        assert_eq!(v, 7);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
    }

    /// `store.attribute_indexes` decides which optional indexes exist: a dropped one is
    /// gone (and its filter still answers, by scanning), an added one is built over the
    /// events already stored, and an unknown attribute is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attribute_indexes_follow_the_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = |attrs: &[&str]| SqliteOptions {
            data_dir: dir.path().to_owned(),
            attribute_indexes: attrs.iter().map(|a| a.to_string()).collect(),
            ..SqliteOptions::default()
        };
        let index_names = |store: &SqliteStore| -> Vec<String> {
            let conn = store.readers.conns.lock().unwrap().pop().unwrap();
            let names = conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<Vec<String>, _>>()
                .unwrap();
            store.readers.conns.lock().unwrap().push(conn);
            names
        };
        let actor_plan = |store: &SqliteStore| -> String {
            let conn = store.readers.conns.lock().unwrap().pop().unwrap();
            let f = herald_core::Filter::parse("actor:user:7", 0).unwrap();
            let plan = day_plan_of(&conn, &compile(&f, &Access::all(), None, None, None, None));
            store.readers.conns.lock().unwrap().push(conn);
            plan
        };
        async fn by_actor(store: &SqliteStore) -> Vec<u64> {
            let q = EventQuery {
                filter: herald_core::Filter::parse("actor:user:7", 0).unwrap(),
                limit: 100,
                access: Access::all(),
                ..EventQuery::default()
            };
            let page = store.query(q).await.unwrap();
            let mut seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
            seqs.sort_unstable();
            seqs
        }

        let store = SqliteStore::open(opts(&["tenant"])).expect("open");
        let names = index_names(&store);
        assert!(
            names.contains(&"events_tenant_day".to_string()),
            "{names:?}"
        );
        for gone in [
            "events_actor_day",
            "events_subject_day",
            "events_correlation_day",
            "events_causation_day",
            "events_tenant_time",
        ] {
            assert!(!names.contains(&gone.to_string()), "{gone} in {names:?}");
        }
        assert!(names.contains(&"events_type_time".to_string()), "{names:?}");
        assert!(!names.contains(&"events_dkey".to_string()), "{names:?}");
        let events: Vec<_> = (0..300)
            .map(|i| {
                crate::contract::event(&format!(
                    r#"{{"id":"{i}","source":"/s","type":"a","actor":"user:{}"}}"#,
                    i % 10
                ))
            })
            .collect();
        store.append(events).await.expect("append");
        assert!(!actor_plan(&store).contains("events_actor_day"));
        let without = by_actor(&store).await;
        assert_eq!(without.len(), 30);
        store.close().await;

        let store = SqliteStore::open(opts(&["tenant", "actor"])).expect("reopen");
        assert!(index_names(&store).contains(&"events_actor_day".to_string()));
        assert!(
            actor_plan(&store).contains("events_actor_day"),
            "{}",
            actor_plan(&store)
        );
        assert_eq!(by_actor(&store).await, without);
        store.close().await;

        let err = SqliteStore::open(opts(&["tenant", "source"]))
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains("`source` cannot be indexed"),
            "{err}"
        );
    }

    /// Listings read day by day (attributes, paths, a tenant restriction) give the same
    /// events in the same order as one statement over the same rows: across days on both
    /// sides of the epoch (day 0 is twice as long), equal times, time bounds, and pages
    /// chained by cursors.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listings_read_day_by_day_match_one_statement() {
        use crate::sql::DAY_US;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(dir.path(), &["data.org"]);
        let days = [-3i64, -2, -1, 0, 1, 2, 20_000, 20_001, 20_003];
        let events: Vec<_> = (0..450i64)
            .map(|i| {
                let day = days[i as usize % days.len()];
                // Every fifth event shares its time with the one before it.
                let k = i - i64::from(i % 5 == 4);
                let t = day * DAY_US + (k * 3_600_000_007) % DAY_US;
                crate::contract::event(&format!(
                    r#"{{"id":"{i}","source":"/s","type":"t{}","time":"{}","actor":"user:{}","tenant":"org-{}","data":{{"org":"o{}"}}}}"#,
                    i % 3,
                    herald_core::timespec::format_rfc3339(t),
                    i % 5,
                    i % 4,
                    i % 6,
                ))
            })
            .collect();
        store.append(events).await.expect("append");
        // The direct reads below see only what is committed.
        store.visible().await.expect("committed");
        let restricted = Access {
            only_tenants: Some(vec!["org-1".into(), "org-2".into()]),
            ..Access::all()
        };
        let bounds = [
            (None, None),
            (Some(-DAY_US), Some(2 * DAY_US)),
            (Some(20_001 * DAY_US), None),
        ];
        let before = DAY_LISTINGS.load(Ordering::Relaxed);
        let mut checked = 0;
        for filter in [
            "actor:user:1",
            "tenant:org-2",
            "data.org:o3",
            "data.org:o3 type:t0",
            "actor:user:2,user:3 -tenant:org-0",
            "actor:user:1 o1",
            "type:t1",
        ] {
            for access in [Access::all(), restricted.clone()] {
                for (since, until) in bounds {
                    let f = herald_core::Filter::parse(filter, 0).unwrap();
                    let expected: Vec<u64> = {
                        let conn = store.readers.conns.lock().unwrap().pop().unwrap();
                        let w = compile(&f, &access, since, until, None, None);
                        let sql = format!(
                            "SELECT seq FROM events WHERE {} ORDER BY time DESC, seq DESC",
                            w.sql
                        );
                        let seqs = conn
                            .prepare(&sql)
                            .unwrap()
                            .query_map(rusqlite::params_from_iter(w.params.iter()), |r| {
                                r.get::<_, i64>(0)
                            })
                            .unwrap()
                            .map(|r| r.unwrap() as u64)
                            .collect();
                        store.readers.conns.lock().unwrap().push(conn);
                        seqs
                    };
                    let mut got = Vec::new();
                    let mut cursor = None;
                    loop {
                        let page = store
                            .query(EventQuery {
                                filter: f.clone(),
                                since_us: since,
                                until_us: until,
                                limit: 7,
                                cursor,
                                access: access.clone(),
                            })
                            .await
                            .unwrap();
                        got.extend(page.events.iter().map(|e| e.seq));
                        match page.next {
                            Some(c) => cursor = Some(c),
                            None => break,
                        }
                    }
                    assert_eq!(got, expected, "{filter} {since:?}..{until:?} {access:?}");
                    checked += usize::from(!expected.is_empty());
                }
            }
        }
        assert!(checked > 30, "too few non-empty listings: {checked}");
        assert!(
            DAY_LISTINGS.load(Ordering::Relaxed) - before > 100,
            "the listings were not read day by day"
        );
        store.close().await;
    }

    /// Events acknowledged but not committed in SQLite yet are listed from memory, merged
    /// in order with the committed ones: pages chained by cursors give what the same
    /// listings give once everything is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listings_include_events_not_indexed_yet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(dir.path(), &[]);
        let batch = |from: i64, n: i64| -> Vec<PreparedEvent> {
            (from..from + n)
                .map(|i| {
                    // Times interleave across the two batches; some are equal.
                    let t = 1_790_000_000_000_000 + (i % 40) * 1_000_000;
                    crate::contract::event(&format!(
                        r#"{{"id":"{i}","source":"/s","type":"t{}","time":"{}","tenant":"org-{}","actor":"user:{}","data":{{"msg":"word{}"}}}}"#,
                        i % 2,
                        herald_core::timespec::format_rfc3339(t),
                        i % 3,
                        i % 4,
                        i % 5,
                    ))
                })
                .collect()
        };
        store.append(batch(0, 100)).await.unwrap();
        store.visible().await.unwrap();
        store.append(batch(100, 100)).await.unwrap();
        let restricted = Access {
            only_tenants: Some(vec!["org-1".into()]),
            ..Access::all()
        };
        let filters = [
            "",
            "type:t1",
            "actor:user:2",
            "word3",
            "-word3 tenant:org-2",
        ];
        let page_all = |filter: &'static str, access: Access| {
            let store = &store;
            async move {
                let mut got = Vec::new();
                let mut cursor = None;
                loop {
                    let page = store
                        .query(EventQuery {
                            filter: herald_core::Filter::parse(filter, 0).unwrap(),
                            since_us: Some(1_790_000_000_000_000 + 3_000_000),
                            limit: 9,
                            cursor,
                            access: access.clone(),
                            ..EventQuery::default()
                        })
                        .await
                        .unwrap();
                    got.extend(page.events.iter().map(|e| (e.seq, e.body.clone())));
                    match page.next {
                        Some(c) => cursor = Some(c),
                        None => break got,
                    }
                }
            }
        };
        let mut before = Vec::new();
        assert!(
            !store.unindexed.lock().unwrap().is_empty(),
            "the second batch is not committed yet"
        );
        for f in filters {
            for access in [Access::all(), restricted.clone()] {
                before.push(page_all(f, access).await);
            }
        }
        assert!(
            before[0].iter().any(|(seq, _)| *seq > 100),
            "{:?}",
            before[0]
        );
        store.visible().await.unwrap();
        assert!(store.unindexed.lock().unwrap().is_empty());
        let mut after = Vec::new();
        for f in filters {
            for access in [Access::all(), restricted.clone()] {
                after.push(page_all(f, access).await);
            }
        }
        assert_eq!(before, after);
        assert_eq!(after[0].len(), 185);
        store.close().await;
    }

    /// The listing from memory passes over events older than its last hit without
    /// evaluating them; whatever the order of times across and within batches, it finds
    /// what evaluating every event finds.
    #[test]
    fn unindexed_matches_equal_a_full_evaluation() {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut seq = 0u64;
        let batches: Vec<MemBatch> = (0..6)
            .map(|b| {
                let events: Vec<LiveEvent> = (0..40)
                    .map(|_| {
                        seq += 1;
                        // Mostly rising with the batch, with stragglers and equal times.
                        let t = 1_790_000_000_000_000
                            + (b * 10 + next(25) as i64 - 8) * 1_000_000;
                        let ev = crate::contract::event(&format!(
                            r#"{{"id":"{seq}","source":"/s","type":"t{}","time":"{}","tenant":"org-{}","data":{{"msg":"word{}"}}}}"#,
                            next(2),
                            herald_core::timespec::format_rfc3339(t),
                            next(3),
                            next(5),
                        ));
                        LiveEvent::new(seq, ev)
                    })
                    .collect();
                MemBatch::new(events.into())
            })
            .collect();
        let restricted = Access {
            only_tenants: Some(vec!["org-1".into()]),
            ..Access::all()
        };
        let mut checked = 0;
        for filter in [
            "",
            "type:t1",
            "word3",
            "-word3 tenant:org-2",
            "data.msg:word4",
            "data.msg:word1,word2 -word2",
        ] {
            for access in [Access::all(), restricted.clone()] {
                for want in [1, 7, 50, 1000] {
                    for since in [None, Some(1_790_000_000_000_000 + 20_000_000)] {
                        let mut q = EventQuery {
                            filter: herald_core::Filter::parse(filter, 0).unwrap(),
                            since_us: since,
                            access: access.clone(),
                            ..EventQuery::default()
                        };
                        let matcher = herald_core::matcher::Matcher::new(q.filter.clone());
                        // Paged by cursor, each page against every event evaluated.
                        loop {
                            let mut all: Vec<(i64, u64)> = batches
                                .iter()
                                .flat_map(|b| b.iter())
                                .filter(|ev| {
                                    let t = ev.event.time_us;
                                    q.since_us.is_none_or(|s| t >= s)
                                        && q.cursor.is_none_or(|c| (t, ev.seq) < (c.time_us, c.seq))
                                        && q.access.can_read(&ev.event)
                                        && matcher.matches(&Unshared::new(ev.seq, &ev.event))
                                })
                                .map(|ev| (ev.event.time_us, ev.seq))
                                .collect();
                            all.sort_unstable_by(|a, b| b.cmp(a));
                            all.truncate(want);
                            let got: Vec<(i64, u64)> = unindexed_matches(&batches, &q, want)
                                .iter()
                                .map(|e| (e.time_us, e.seq))
                                .collect();
                            assert_eq!(got, all, "{filter:?} want {want} since {since:?}");
                            checked += got.len();
                            let Some(&(time_us, seq)) = got.last() else {
                                break;
                            };
                            if got.len() < want {
                                break;
                            }
                            q.cursor = Some(Cursor { time_us, seq });
                        }
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    /// Reads by seq and by id, catch-up scans and the stream's range answer acknowledged
    /// events from memory while SQLite does not hold them yet, without asking the indexer to
    /// commit, with the caller's access rule; and the same once it does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_by_seq_and_id_do_not_wait_for_the_indexer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(dir.path(), &[]);
        let events: Vec<PreparedEvent> = (0..50)
            .map(|i| {
                crate::contract::event(&format!(
                    r#"{{"id":"e{i}","source":"/s","type":"t","tenant":"org-{}","data":{{"n":{i}}}}}"#,
                    i % 2
                ))
            })
            .collect();
        let out = store.append(events).await.unwrap();
        let seqs: Vec<u64> = out
            .iter()
            .map(|o| match o {
                AppendOutcome::Stored(s) => *s,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            !store.unindexed.lock().unwrap().is_empty(),
            "the events are not committed yet"
        );
        let org1 = Access {
            only_tenants: Some(vec!["org-1".into()]),
            ..Access::all()
        };
        let read_all = |access: Access| {
            let store = &store;
            let seqs = &seqs;
            async move {
                let mut got = Vec::new();
                for (i, &seq) in seqs.iter().enumerate() {
                    let by_seq = store.get_by_seq(seq, &access).await.unwrap();
                    let by_id = store
                        .get_by_id("/s", &format!("e{i}"), &access)
                        .await
                        .unwrap();
                    assert_eq!(
                        by_seq.as_ref().map(|e| (e.seq, &e.body)),
                        by_id.as_ref().map(|e| (e.seq, &e.body))
                    );
                    got.push(by_seq.map(|e| (e.seq, e.time_us, e.body)));
                }
                assert!(store
                    .get_by_seq(seqs[seqs.len() - 1] + 1, &access)
                    .await
                    .unwrap()
                    .is_none());
                assert!(store
                    .get_by_id("/s", "absent", &access)
                    .await
                    .unwrap()
                    .is_none());
                got
            }
        };
        // Catch-up reads, paged, with a filter and a caller's rule.
        let scan_all = |filter: &'static str, access: Access| {
            let store = &store;
            async move {
                let mut got = Vec::new();
                let mut after = 0;
                loop {
                    let page = store
                        .scan(ScanQuery {
                            filter: herald_core::Filter::parse(filter, 0).unwrap(),
                            after_seq: after,
                            since_us: None,
                            limit: 7,
                            access: access.clone(),
                        })
                        .await
                        .unwrap();
                    assert!(page.scanned_to >= after);
                    got.extend(page.events.into_iter().map(|e| (e.seq, e.body)));
                    after = page.scanned_to;
                    if page.done {
                        break got;
                    }
                }
            }
        };
        let before = (read_all(Access::all()).await, read_all(org1.clone()).await);
        let scans_before = (
            scan_all("", Access::all()).await,
            scan_all("data.n:<20", org1.clone()).await,
        );
        assert_eq!(scans_before.0.len(), 50);
        assert_eq!(scans_before.1.len(), 10);
        let range = store.seq_range().await.unwrap();
        assert_eq!((range.oldest, range.last), (seqs[0], seqs[49]));
        assert!(
            !store.unindexed.lock().unwrap().is_empty(),
            "the reads did not make the indexer commit"
        );
        assert!(before.0.iter().all(Option::is_some));
        assert_eq!(before.1.iter().filter(|e| e.is_some()).count(), 25);
        store.visible().await.unwrap();
        assert!(store.unindexed.lock().unwrap().is_empty());
        let after = (read_all(Access::all()).await, read_all(org1.clone()).await);
        assert_eq!(before, after);
        let scans_after = (
            scan_all("", Access::all()).await,
            scan_all("data.n:<20", org1).await,
        );
        assert_eq!(scans_before, scans_after);
        store.close().await;
    }

    /// The attribute indexes hold the columns of a key's access rule (`visibility`,
    /// `tenant`) and `seq` after the time; a database whose indexes lack them (before
    /// migration 9) gets them built again at open, and a listing through a key still finds
    /// exactly the events it may read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attribute_indexes_hold_the_access_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = || SqliteOptions {
            data_dir: dir.path().to_owned(),
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(opts()).expect("open");
        let events: Vec<_> = (0..40)
            .map(|i| {
                crate::contract::event(&format!(
                    r#"{{"id":"{i}","source":"/s","type":"t","actor":"user:1","tenant":"{}","visibility":"{}"}}"#,
                    if i % 2 == 0 { "acme" } else { "other" },
                    if i % 5 == 0 { "public" } else { "internal" },
                ))
            })
            .collect();
        store.append(events).await.expect("append");
        store.close().await;
        {
            let conn = Connection::open(dir.path().join("herald.db")).unwrap();
            conn.execute_batch(
                "DROP INDEX events_actor_day;
                 CREATE INDEX events_actor_day ON events(time/86400000000, actor, time) WHERE actor IS NOT NULL;
                 PRAGMA user_version = 8;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(opts()).expect("reopen");
        let conn = store.readers.conns.lock().unwrap().pop().unwrap();
        let last = ["time", "seq", "visibility", "tenant"];
        for index in ["events_actor_day", "events_subject_day"] {
            let columns: Vec<String> = conn
                .prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                .unwrap()
                .query_map([index], |r| r.get::<_, Option<String>>(0))
                .unwrap()
                .map(|c| c.unwrap().unwrap_or_default())
                .collect();
            assert_eq!(columns[2..], last, "{index}: {columns:?}");
        }
        store.readers.conns.lock().unwrap().push(conn);
        let acme = Access {
            authenticated: true,
            principals: vec!["tenant:acme".into()],
            ..Access::default()
        };
        let page = store
            .query(EventQuery {
                filter: herald_core::Filter::parse("actor:user:1", 0).unwrap(),
                limit: 100,
                access: acme,
                ..EventQuery::default()
            })
            .await
            .unwrap();
        // acme's 20, and the public ones of the other tenant (i = 5, 15, 25, 35).
        assert_eq!(page.events.len(), 24);
        store.close().await;
    }

    /// A database of schema 6 (attribute indexes not bucketed by day, no `days` table) is
    /// migrated at open: `days` lists the days that hold events, the old indexes are
    /// replaced, and listings find the same events.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn indexes_not_bucketed_by_day_are_replaced() {
        use crate::sql::DAY_US;
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = || SqliteOptions {
            data_dir: dir.path().to_owned(),
            indexed_paths: vec!["data.org".into()],
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(opts()).expect("open");
        let events: Vec<_> = (0..60i64)
            .map(|i| {
                let t = 20_000 * DAY_US + i * (DAY_US / 7);
                crate::contract::event(&format!(
                    r#"{{"id":"{i}","source":"/s","type":"t","time":"{}","actor":"user:{}","data":{{"org":"o{}"}}}}"#,
                    herald_core::timespec::format_rfc3339(t),
                    i % 3,
                    i % 2,
                ))
            })
            .collect();
        store.append(events).await.expect("append");
        store.close().await;
        {
            let conn = Connection::open(dir.path().join("herald.db")).unwrap();
            conn.execute_batch(
                "DROP TABLE days; DROP INDEX events_actor_day; DROP INDEX events_tenant_day;
                 CREATE INDEX events_actor_time ON events(actor, time) WHERE actor IS NOT NULL;
                 CREATE INDEX events_tenant_time ON events(tenant, time) WHERE tenant IS NOT NULL;
                 PRAGMA user_version = 6;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(opts()).expect("reopen");
        let conn = store.readers.conns.lock().unwrap().pop().unwrap();
        let days: Vec<i64> = conn
            .prepare("SELECT day FROM days ORDER BY day")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        store.readers.conns.lock().unwrap().push(conn);
        assert_eq!(days, (20_000..20_009).collect::<Vec<_>>());
        assert!(names.iter().any(|n| n == "events_actor_day"), "{names:?}");
        assert!(names.iter().any(|n| n == "events_tenant_day"), "{names:?}");
        assert!(
            !names
                .iter()
                .any(|n| n == "events_actor_time" || n == "events_tenant_time"),
            "{names:?}"
        );
        let page = store
            .query(EventQuery {
                filter: herald_core::Filter::parse("actor:user:1 data.org:o1", 0).unwrap(),
                limit: 100,
                access: Access::all(),
                ..EventQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(page.events.len(), 10);
        store.close().await;

        // A server of the earlier version kept running after another process migrated the
        // database: it stored an event without listing its day. The next start lists it.
        {
            // Registers `herald_body`, which the path index evaluates.
            let conn = open_database(dir.path()).unwrap();
            let t = 20_050 * DAY_US;
            conn.execute(
                "INSERT INTO events (seq, time, recorded, type, source, id, severity, actor, visibility, dkey, chash, body)
                 VALUES (1000, ?1, ?1, 't', '/s', 'old', 1, 'user:1', 0, 1, 1, ?2)",
                params![
                    t,
                    format!(
                        r#"{{"seq":1000,"id":"old","source":"/s","type":"t","time":"{}","actor":"user:1","data":{{"org":"o1"}}}}"#,
                        herald_core::timespec::format_rfc3339(t)
                    )
                ],
            )
            .unwrap();
        }
        let store = SqliteStore::open(opts()).expect("reopen");
        let page = store
            .query(EventQuery {
                filter: herald_core::Filter::parse("actor:user:1 data.org:o1", 0).unwrap(),
                limit: 100,
                access: Access::all(),
                ..EventQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(page.events.len(), 11);
        assert_eq!(page.events[0].seq, 1000);
        store.close().await;
    }

    #[test]
    fn queries_use_the_indexes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(dir.path(), &["data.org"]);
        let conn = store.readers.conns.lock().unwrap().pop().unwrap();
        let plan = |filter: &str| {
            let f = herald_core::Filter::parse(filter, 0).unwrap();
            let w = compile(
                &f,
                &Access::all(),
                Some(0),
                None,
                None,
                Some(TextTail::Past(0)),
            );
            plan_of(&conn, &w)
        };
        // One day of a listing read day by day, with a cursor and the access rule of a
        // caller restricted to some tenants.
        let day_plan = |filter: &str, access: &Access| {
            let f = herald_core::Filter::parse(filter, 0).unwrap();
            assert!(crate::sql::day_indexed(&f, access), "{filter}");
            let cursor = Some(Cursor { time_us: 5, seq: 9 });
            let w = compile(&f, access, Some(0), None, cursor, Some(TextTail::Past(0)));
            day_plan_of(&conn, &w)
        };
        let all = Access::all();
        let tenants = Access {
            only_tenants: Some(vec!["a".into(), "b".into()]),
            ..Access::all()
        };
        for (filter, access, index) in [
            ("data.org:org-1", &all, "events_p4_"),
            ("data.org:org-1 type:a", &all, "events_p4_"),
            ("tenant:acme", &all, "events_tenant_day"),
            ("actor:user:1", &all, "events_actor_day"),
            ("actor:user:1 severity:>=error", &all, "events_actor_day"),
            ("subject:s-1", &all, "events_subject_day"),
            ("correlationid:c", &all, "events_correlation_day"),
            ("causationid:c", &all, "events_causation_day"),
            ("actor:user:1", &tenants, "events_"),
            ("type:a", &tenants, "events_"),
        ] {
            let p = day_plan(filter, access);
            assert!(p.contains(index), "{filter}: {p}");
            assert!(
                p.contains("USING INDEX") || p.contains("USING COVERING INDEX"),
                "{filter}: {p}"
            );
            assert!(!p.contains("SCAN events"), "{filter}: a full scan: {p}");
        }
        // With one value per attribute, no sort within the day either.
        for filter in ["tenant:acme", "actor:user:1", "data.org:org-1"] {
            let p = day_plan(filter, &all);
            assert!(!p.contains("TEMP B-TREE"), "{filter}: {p}");
        }
        assert!(
            plan("type:import.completed").contains("events_type_time"),
            "{}",
            plan("type:import.completed")
        );
        assert!(
            !plan("type:a").contains("TEMP B-TREE"),
            "no sort for an indexed type listing: {}",
            plan("type:a")
        );
    }
}
