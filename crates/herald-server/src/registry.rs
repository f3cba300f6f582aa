//! The type registry at run time: settings and compiled schemas of every registered type
//! in an in-memory snapshot, the opt-out list, the catalog's counters, and the HTTP API
//! (`/v1/types`, `/v1/optout`).
//!
//! It exists so that ingest resolves an event's type settings and schema without touching
//! the database: the snapshot is rebuilt (schemas compiled once, reused when unchanged)
//! after every change and swapped in whole, and the per-type counters are gathered in memory
//! and flushed to the database every few seconds by a background task that survives
//! database failures (it keeps the counts, logs, counts the failure, and retries).

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Json;
use crate::extract::{Path, Query};
use crate::query::now_micros;
use crate::AppState;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::pipeline::{Processor, ProcessorConfig};
use herald_core::schema::{compatibility, compile, CompiledSchema, Incompatibility};
use herald_core::types::{TypePattern, TypeSettings, TypeTable};
use herald_store::registry::{self as reg, StatDelta, TypeStats};
use herald_store::{RegistryStore, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

/// One published schema version, compiled.
pub struct Published {
    pub version: semver::Version,
    pub schema: Arc<Value>,
    pub compiled: Arc<CompiledSchema>,
    pub published_us: i64,
    pub forced: Option<String>,
}

/// A registered type or pattern.
pub struct TypeEntry {
    pub pattern: String,
    pub settings: TypeSettings,
    pub updated_us: i64,
    /// Oldest version first.
    pub schemas: Vec<Published>,
}

impl TypeEntry {
    pub fn latest(&self) -> Option<&Published> {
        self.schemas.last()
    }

    /// The version an event names through `dataschema` (the last path segment of it, or of
    /// its fragment, when that is a semantic version), or the latest without one. `Err`
    /// when it names a version that is not published.
    pub fn version_for(&self, dataschema: Option<&str>) -> Result<Option<&Published>, String> {
        let Some(ds) = dataschema else {
            return Ok(self.latest());
        };
        let last = ds
            .trim_end_matches(['#', '/'])
            .rsplit(['/', '#'])
            .next()
            .unwrap_or("");
        let Ok(v) = semver::Version::parse(last) else {
            // A dataschema that names no version (an external URI): validate against the latest.
            return Ok(self.latest());
        };
        match self.schemas.iter().find(|p| p.version == v) {
            Some(p) => Ok(Some(p)),
            None => Err(format!(
                "dataschema names version {v} of `{}`, which is not published",
                self.pattern
            )),
        }
    }
}

/// What ingest reads: immutable, swapped whole.
#[derive(Default)]
pub struct Snapshot {
    pub table: TypeTable<Arc<TypeEntry>>,
    pub entries: Vec<Arc<TypeEntry>>,
    pub optout: HashSet<String>,
}

/// What happens to events of opted-out actors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptOutMode {
    /// Not stored (answered `dropped`).
    #[default]
    Drop,
    /// Stored without `actor` and without the `optout_paths`.
    Anonymize,
}

/// `[pipeline]`: server-side processing of incoming events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Processors in order (`[[pipeline.processors]]`), each for the types it names.
    pub processors: Vec<ProcessorConfig>,
    /// The key of the `hash` processor (any string; keep it secret and stable: changing it
    /// changes every hashed value).
    pub hash_key: String,
    /// What happens to events of actors on the opt-out list.
    pub optout: OptOutMode,
    /// With `optout = "anonymize"`: paths removed besides `actor`.
    pub optout_paths: Vec<String>,
    /// Most events kept in the quarantine (the oldest go first beyond it).
    pub quarantine_max_events: u64,
    /// Quarantined events larger than this are kept cut (and cannot be replayed).
    pub quarantine_max_event_bytes: usize,
    /// A directory of type settings files loaded at start-up (see `herald types push`);
    /// empty: none.
    pub types_dir: String,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            processors: Vec::new(),
            hash_key: String::new(),
            optout: OptOutMode::Drop,
            optout_paths: Vec::new(),
            quarantine_max_events: 1_000_000,
            quarantine_max_event_bytes: 1 << 20,
            types_dir: String::new(),
        }
    }
}

/// Most distinct types counted between two flushes; beyond it new types are not counted in
/// the catalog (their events are still processed), so a flood of made-up types cannot grow
/// memory.
const MAX_TYPES_PER_FLUSH: usize = 10_000;

pub struct Registry {
    pub store: RegistryStore,
    snap: RwLock<Arc<Snapshot>>,
    stats: Mutex<HashMap<String, StatDelta>>,
    pub processors: Vec<Processor>,
    pub config: PipelineConfig,
}

impl Registry {
    pub fn open(data_dir: &std::path::Path, config: PipelineConfig) -> Result<Registry, String> {
        let processors = config
            .processors
            .iter()
            .enumerate()
            .map(|(i, p)| Processor::new(p).map_err(|e| format!("pipeline.processors[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if processors.iter().any(|p| p.name == "hash") && config.hash_key.is_empty() {
            return Err("pipeline: a hash processor needs pipeline.hash_key".into());
        }
        for p in &config.optout_paths {
            herald_core::types::check_path(p, &["subject"])
                .map_err(|e| format!("pipeline.optout_paths: {e}"))?;
        }
        let store = RegistryStore::open(data_dir).map_err(|e| e.to_string())?;
        let r = Registry {
            store,
            snap: RwLock::new(Arc::new(Snapshot::default())),
            stats: Mutex::new(HashMap::new()),
            processors,
            config,
        };
        let snap = r
            .store
            .with_blocking(|c| build_snapshot(c, None))
            .map_err(|e| e.to_string())?;
        *r.snap.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
        Ok(r)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Rebuilds the snapshot from the database (after a change).
    pub async fn reload(&self) -> Result<(), ApiError> {
        let old = self.snapshot();
        let snap = self
            .store
            .with(move |c| build_snapshot(c, Some(&old)))
            .await?;
        *self.snap.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
        Ok(())
    }

    /// Adds a request's counters (one lock per request); its stored events count in the
    /// hour of `now_us`.
    pub fn add(&self, deltas: Vec<StatDelta>, now_us: i64) {
        if deltas.is_empty() {
            return;
        }
        let hour = now_us / 3_600_000_000;
        let mut g = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        for mut d in deltas {
            if d.stored > 0 && d.hours.is_empty() {
                d.hours.push((hour, d.stored));
            }
            add_locked(&mut g, d);
        }
    }

    /// Writes the gathered counters; on failure they are kept for the next flush.
    pub async fn flush(&self, metrics: &crate::metrics::Metrics) {
        let batch: Vec<StatDelta> = {
            let mut g = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            g.drain().map(|(_, v)| v).collect()
        };
        if batch.is_empty() {
            return;
        }
        let now = now_micros();
        let res = self
            .store
            .with({
                let batch = batch.clone();
                move |c| {
                    reg::record_stats(c, &batch)?;
                    reg::prune_volume(c, now)
                }
            })
            .await;
        if let Err(e) = res {
            metrics.registry_flush_failed.inc();
            tracing::warn!(error = %e, "cannot write the type catalog's counters; keeping them for the next try");
            let mut g = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            for d in batch {
                add_locked(&mut g, d);
            }
        }
    }

    /// Counters not yet flushed (so the catalog is exact right after events arrive).
    fn pending(&self) -> HashMap<String, StatDelta> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The counters of type `ty` among a request's, added if new (few types per request: a
/// linear search).
pub fn stat_index(stats: &mut Vec<StatDelta>, ty: &str, now_us: i64) -> usize {
    match stats.iter().position(|d| d.ty == ty) {
        Some(i) => i,
        None => {
            stats.push(StatDelta {
                ty: ty.to_owned(),
                first_us: now_us,
                last_us: now_us,
                ..StatDelta::default()
            });
            stats.len() - 1
        }
    }
}

/// Merges counters into the pending map (new types only below the cap).
fn add_locked(g: &mut HashMap<String, StatDelta>, d: StatDelta) {
    if let Some(cur) = g.get_mut(&d.ty) {
        merge(cur, &d);
    } else if g.len() < MAX_TYPES_PER_FLUSH {
        g.insert(d.ty.clone(), d);
    }
}

fn merge(into: &mut StatDelta, d: &StatDelta) {
    into.first_us = into.first_us.min(d.first_us);
    into.last_us = into.last_us.max(d.last_us);
    into.received += d.received;
    into.valid += d.valid;
    into.invalid += d.invalid;
    into.sampled_out += d.sampled_out;
    into.dropped += d.dropped;
    into.stored += d.stored;
    into.quarantined += d.quarantined;
    for (h, n) in &d.hours {
        match into.hours.iter_mut().find(|(x, _)| x == h) {
            Some((_, c)) => *c += n,
            None => into.hours.push((*h, *n)),
        }
    }
}

/// Flushes the catalog's counters every two seconds until shutdown, then once more.
pub fn start_flusher(state: &Arc<AppState>) {
    let st = state.clone();
    let mut stop = state.shutdown.subscribe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await.map(|_| ());
        };
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = tick.tick() => st.registry.flush(&st.metrics).await,
                _ = &mut stopped => break,
            }
        }
        st.registry.flush(&st.metrics).await;
    });
}

fn build_snapshot(
    c: &rusqlite::Connection,
    old: Option<&Snapshot>,
) -> Result<Snapshot, StoreError> {
    let records = reg::load_types(c)?;
    let optout: HashSet<String> = reg::optout_list(c)?.into_iter().collect();
    let mut entries = Vec::new();
    for r in records {
        let Ok(pattern) = TypePattern::parse(&r.pattern) else {
            tracing::warn!(pattern = %r.pattern, "ignoring a stored type with an invalid pattern");
            continue;
        };
        let mut schemas = Vec::new();
        for s in r.schemas {
            let Ok(version) = semver::Version::parse(&s.version) else {
                continue;
            };
            // Reuse what is compiled already when the schema is unchanged.
            let reused = old.and_then(|o| {
                o.entries
                    .iter()
                    .find(|e| e.pattern == r.pattern)
                    .and_then(|e| e.schemas.iter().find(|p| p.version == version))
                    .filter(|p| *p.schema == s.schema)
                    .map(|p| p.compiled.clone())
            });
            let compiled = match reused {
                Some(c) => c,
                None => match compile(&s.schema) {
                    Ok(c) => Arc::new(c),
                    Err(e) => {
                        tracing::warn!(pattern = %r.pattern, version = %s.version, error = %e, "a stored schema no longer compiles; ignoring it");
                        continue;
                    }
                },
            };
            schemas.push(Published {
                version,
                schema: Arc::new(s.schema),
                compiled,
                published_us: s.published_us,
                forced: s.forced,
            });
        }
        schemas.sort_by(|a, b| a.version.cmp(&b.version));
        entries.push((
            pattern,
            Arc::new(TypeEntry {
                pattern: r.pattern,
                settings: r.settings,
                updated_us: r.updated_us,
                schemas,
            }),
        ));
    }
    Ok(Snapshot {
        entries: entries.iter().map(|(_, e)| e.clone()).collect(),
        table: TypeTable::from_entries(entries),
        optout,
    })
}

/// Applies a type settings file (start-up loading of `pipeline.types_dir`): settings,
/// then each schema version not yet published, checked as `PUT .../schemas/{version}` does.
/// Returns what it did, one line per change.
pub async fn apply_type_file(
    st: &AppState,
    f: herald_core::types::TypeFile,
) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let now = now_micros();
    let current = st.registry.snapshot();
    let unchanged = current
        .entries
        .iter()
        .any(|e| e.pattern == f.pattern && e.settings == f.settings);
    if !unchanged {
        let (p, s) = (f.pattern.clone(), f.settings.clone());
        st.registry
            .store
            .with(move |c| reg::put_type(c, &p, &s, now))
            .await
            .map_err(|e| e.to_string())?;
        done.push(format!("{}: settings stored", f.pattern));
    }
    st.registry.reload().await.map_err(|e| format!("{e:?}"))?;
    for (version, schema) in f.schemas {
        let snap = st.registry.snapshot();
        let entry = snap.entries.iter().find(|e| e.pattern == f.pattern);
        if entry.is_some_and(|e| {
            e.schemas
                .iter()
                .any(|p| p.version == version && *p.schema == schema)
        }) {
            continue;
        }
        check_publish(entry.map(|e| &**e), &version, &schema, false)
            .map_err(|e| format!("{} {version}: {e}", f.pattern))?;
        let (p, v) = (f.pattern.clone(), version.clone());
        st.registry
            .store
            .with(move |c| reg::put_schema(c, &p, &v, &schema, None, now))
            .await
            .map_err(|e| format!("{} {version}: {e}", f.pattern))?;
        st.registry.reload().await.map_err(|e| format!("{e:?}"))?;
        done.push(format!("{}: schema {version} published", f.pattern));
    }
    Ok(done)
}

/// Every facet of every registered type (indexed by the event store at start).
pub fn facets(data_dir: &std::path::Path) -> Result<Vec<String>, StoreError> {
    let store = RegistryStore::open(data_dir)?;
    let types = store.with_blocking(reg::load_types)?;
    let mut out: Vec<String> = types.into_iter().flat_map(|t| t.settings.facets).collect();
    out.sort();
    out.dedup();
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// HTTP API

/// A published schema version as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SchemaInfo {
    pub version: String,
    pub published: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced: Option<String>,
}

/// A type in the catalog: registered, seen, or both.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CatalogEntry {
    /// The type, or the registered pattern (`import.*`).
    #[serde(rename = "type")]
    pub ty: String,
    pub registered: bool,
    /// For a seen type: the registered pattern whose settings apply to it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub governed_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The latest schema version that applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub settings: Option<TypeSettings>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<SchemaInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,
}

/// How many events of a type went where.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counts {
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

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Catalog {
    pub types: Vec<CatalogEntry>,
}

fn time_text(us: i64) -> String {
    herald_core::event::now_text(us)
}

fn schema_infos(e: &TypeEntry) -> Vec<SchemaInfo> {
    e.schemas
        .iter()
        .map(|p| SchemaInfo {
            version: p.version.to_string(),
            published: time_text(p.published_us),
            forced: p.forced.clone(),
        })
        .collect()
}

fn registered_entry(e: &TypeEntry) -> CatalogEntry {
    CatalogEntry {
        ty: e.pattern.clone(),
        registered: true,
        governed_by: None,
        owner: e.settings.owner.clone(),
        description: e.settings.description.clone(),
        schema_version: e.latest().map(|p| p.version.to_string()),
        settings: Some(e.settings.clone()),
        schemas: schema_infos(e),
        first_seen: None,
        last_seen: None,
        counts: None,
    }
}

fn with_stats(entry: &mut CatalogEntry, s: &TypeStats) {
    entry.first_seen = Some(time_text(s.first_seen_us));
    entry.last_seen = Some(time_text(s.last_seen_us));
    entry.counts = Some(Counts {
        received: s.received,
        valid: s.valid,
        invalid: s.invalid,
        sampled_out: s.sampled_out,
        dropped: s.dropped,
        stored: s.stored,
        quarantined: s.quarantined,
        stored_24h: s.stored_24h,
        stored_7d: s.stored_7d,
    });
}

/// The stored counters plus the ones not flushed yet.
async fn stats(st: &AppState) -> Result<HashMap<String, TypeStats>, ApiError> {
    let now = now_micros();
    let mut out: HashMap<String, TypeStats> = st
        .registry
        .store
        .with(move |c| reg::catalog(c, now))
        .await?
        .into_iter()
        .collect();
    let hour = now / 3_600_000_000;
    for (ty, d) in st.registry.pending() {
        let s = out.entry(ty).or_insert_with(|| TypeStats {
            first_seen_us: d.first_us,
            last_seen_us: d.last_us,
            ..TypeStats::default()
        });
        s.first_seen_us = s.first_seen_us.min(d.first_us);
        s.last_seen_us = s.last_seen_us.max(d.last_us);
        s.received += d.received;
        s.valid += d.valid;
        s.invalid += d.invalid;
        s.sampled_out += d.sampled_out;
        s.dropped += d.dropped;
        s.stored += d.stored;
        s.quarantined += d.quarantined;
        for (h, n) in &d.hours {
            if *h > hour - 24 {
                s.stored_24h += n;
            }
            if *h > hour - 7 * 24 {
                s.stored_7d += n;
            }
        }
    }
    Ok(out)
}

/// `GET /v1/types`: every registered type or pattern and every type ever seen.
#[utoipa::path(get, path = "/v1/types", tag = "types",
    responses((status = 200, description = "The catalog", body = Catalog)))]
pub async fn list_types(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Catalog>, ApiError> {
    caller.read()?;
    let snap = st.registry.snapshot();
    let stats = stats(&st).await?;
    let mut types: Vec<CatalogEntry> = Vec::new();
    for e in &snap.entries {
        let mut entry = registered_entry(e);
        if let Some(s) = stats.get(&e.pattern) {
            with_stats(&mut entry, s);
        }
        types.push(entry);
    }
    for (ty, s) in &stats {
        if snap.entries.iter().any(|e| &e.pattern == ty) {
            continue;
        }
        let governing = snap.table.get(ty);
        let mut entry = CatalogEntry {
            ty: ty.clone(),
            registered: false,
            governed_by: governing.map(|g| g.pattern.clone()),
            owner: governing.and_then(|g| g.settings.owner.clone()),
            description: None,
            schema_version: governing
                .and_then(|g| g.latest())
                .map(|p| p.version.to_string()),
            settings: None,
            schemas: Vec::new(),
            first_seen: None,
            last_seen: None,
            counts: None,
        };
        with_stats(&mut entry, s);
        types.push(entry);
    }
    types.sort_by(|a, b| a.ty.cmp(&b.ty));
    Ok(Json(Catalog { types }))
}

fn pattern_param(t: &str) -> Result<TypePattern, ApiError> {
    TypePattern::parse(t).map_err(ApiError::BadRequest)
}

/// `GET /v1/types/{type}`: a registered type or pattern, or what applies to a seen type.
#[utoipa::path(get, path = "/v1/types/{type}", tag = "types",
    params(("type" = String, Path, description = "A type or pattern (`import.*`)")),
    responses((status = 200, description = "The type", body = CatalogEntry), (status = 404, description = "Neither registered nor seen")))]
pub async fn get_type(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(ty): Path<String>,
) -> Result<Json<CatalogEntry>, ApiError> {
    caller.read()?;
    pattern_param(&ty)?;
    let snap = st.registry.snapshot();
    let stats = stats(&st).await?;
    let mut entry = match snap.entries.iter().find(|e| e.pattern == ty) {
        Some(e) => registered_entry(e),
        None => {
            if !stats.contains_key(&ty) {
                return Err(ApiError::NotFound(format!(
                    "type `{ty}` is neither registered nor seen"
                )));
            }
            let governing = snap.table.get(&ty);
            CatalogEntry {
                ty: ty.clone(),
                registered: false,
                governed_by: governing.map(|g| g.pattern.clone()),
                owner: governing.and_then(|g| g.settings.owner.clone()),
                description: governing.and_then(|g| g.settings.description.clone()),
                schema_version: governing
                    .and_then(|g| g.latest())
                    .map(|p| p.version.to_string()),
                settings: governing.map(|g| g.settings.clone()),
                schemas: governing.map(|g| schema_infos(g)).unwrap_or_default(),
                first_seen: None,
                last_seen: None,
                counts: None,
            }
        }
    };
    if let Some(s) = stats.get(&ty) {
        with_stats(&mut entry, s);
    }
    Ok(Json(entry))
}

/// `PUT /v1/types/{type}`: registers or replaces a type's settings.
#[utoipa::path(put, path = "/v1/types/{type}", tag = "types",
    params(("type" = String, Path, description = "A type or pattern (`import.*`)")),
    request_body(content = Object, description = "Type settings: description, owner, validation (off|warn|enforce), sampling {rate, unit}, facets, visibility, retention_days, actionable"),
    responses((status = 200, description = "Stored", body = CatalogEntry), (status = 400, description = "Invalid settings", body = herald_wire::Problem)))]
pub async fn put_type(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(ty): Path<String>,
    crate::extract::Body(body): crate::extract::Body,
) -> Result<Json<CatalogEntry>, ApiError> {
    caller.admin()?;
    pattern_param(&ty)?;
    let settings: TypeSettings = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid type settings: {e}")))?;
    settings.check().map_err(ApiError::BadRequest)?;
    let old_facets: HashSet<String> = st
        .registry
        .snapshot()
        .entries
        .iter()
        .flat_map(|e| e.settings.facets.clone())
        .collect();
    let now = now_micros();
    {
        let (ty, settings) = (ty.clone(), settings.clone());
        st.registry
            .store
            .with(move |c| reg::put_type(c, &ty, &settings, now))
            .await?;
    }
    st.registry.reload().await?;
    crate::audit::record(
        &st,
        "herald.audit.type.updated",
        &caller,
        serde_json::json!({ "type": ty, "settings": settings }),
    )
    .await;
    // New facets are indexed in the background (a large table takes a while).
    let new: Vec<String> = settings
        .facets
        .iter()
        .filter(|f| !old_facets.contains(*f))
        .cloned()
        .collect();
    if !new.is_empty() {
        let store = st.registry.store.clone();
        tokio::spawn(async move {
            for f in new {
                let path = f.clone();
                match store.with(move |c| reg::create_path_index(c, &path)).await {
                    Ok(()) => tracing::info!(facet = %f, "facet indexed"),
                    Err(e) => tracing::warn!(facet = %f, error = %e, "cannot index facet"),
                }
            }
        });
    }
    let snap = st.registry.snapshot();
    let e = snap
        .entries
        .iter()
        .find(|e| e.pattern == ty)
        .ok_or_else(|| ApiError::Internal("the stored type is not in the registry".into()))?;
    Ok(Json(registered_entry(e)))
}

/// `DELETE /v1/types/{type}`: forgets a type's settings and schemas (its events stay).
#[utoipa::path(delete, path = "/v1/types/{type}", tag = "types",
    params(("type" = String, Path, description = "A type or pattern")),
    responses((status = 204, description = "Removed"), (status = 404, description = "Not registered")))]
pub async fn delete_type(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(ty): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.admin()?;
    pattern_param(&ty)?;
    let t = ty.clone();
    let existed = st
        .registry
        .store
        .with(move |c| reg::delete_type(c, &t))
        .await?;
    if !existed {
        return Err(ApiError::NotFound(format!("type `{ty}` is not registered")));
    }
    st.registry.reload().await?;
    crate::audit::record(
        &st,
        "herald.audit.type.deleted",
        &caller,
        serde_json::json!({ "type": ty }),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PublishParams {
    /// Publish a breaking change within a major version anyway; the reason is recorded.
    pub force: Option<String>,
}

/// The answer to publishing a schema.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublishResult {
    #[serde(rename = "type")]
    pub ty: String,
    pub version: String,
    /// False when the same version was already published with the same content.
    pub created: bool,
    /// The version it was checked against (the highest lower one of the same major).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compared_with: Option<String>,
    /// Breaking changes published anyway with `force`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub incompatibilities: Vec<Incompatibility>,
}

/// Checks a schema for publishing: it compiles, its `examples` validate, and it is
/// compatible with the highest lower version of the same major. Returns the version it was
/// compared with and the incompatibilities (`Err` unless forced).
pub fn check_publish(
    entry: Option<&TypeEntry>,
    version: &semver::Version,
    schema: &Value,
    force: bool,
) -> Result<(Option<String>, Vec<Incompatibility>), PublishError> {
    let compiled = compile(schema).map_err(PublishError::Invalid)?;
    if let Some(examples) = schema.get("examples") {
        let Some(list) = examples.as_array() else {
            return Err(PublishError::Invalid("`examples` must be an array".into()));
        };
        for (i, ex) in list.iter().enumerate() {
            let errs = compiled.validate(ex);
            if !errs.is_empty() {
                return Err(PublishError::Examples(i, errs));
            }
        }
    }
    let prev = entry.and_then(|e| {
        e.schemas
            .iter()
            .rfind(|p| p.version.major == version.major && p.version < *version)
    });
    let Some(prev) = prev else {
        return Ok((None, Vec::new()));
    };
    if version.major == 0 {
        // 0.y.z: anything may change (semantic versioning's initial development).
        return Ok((Some(prev.version.to_string()), Vec::new()));
    }
    let incompat = compatibility(&prev.schema, schema);
    if !incompat.is_empty() && !force {
        return Err(PublishError::Incompatible(
            prev.version.to_string(),
            incompat,
        ));
    }
    Ok((Some(prev.version.to_string()), incompat))
}

#[derive(Debug)]
pub enum PublishError {
    Invalid(String),
    Examples(usize, Vec<herald_wire::SchemaError>),
    Incompatible(String, Vec<Incompatibility>),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Invalid(m) => write!(f, "invalid schema: {m}"),
            PublishError::Examples(i, errs) => {
                write!(f, "example {i} does not validate:")?;
                for e in errs {
                    write!(f, " {} ({}): {};", e.pointer, e.keyword, e.message)?;
                }
                Ok(())
            }
            PublishError::Incompatible(prev, list) => {
                write!(f, "not backward compatible with {prev} (publish a new major version, or with force):")?;
                for i in list {
                    write!(f, " {} {};", i.pointer, i.message)?;
                }
                Ok(())
            }
        }
    }
}

fn publish_problem(e: PublishError) -> Response {
    let (status, title, detail, extra) = match e {
        PublishError::Invalid(m) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid schema", m, Value::Null),
        PublishError::Examples(i, errs) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid example",
            format!("example {i} does not validate against the schema"),
            serde_json::json!({ "example": i, "errors": errs }),
        ),
        PublishError::Incompatible(prev, list) => (
            StatusCode::CONFLICT,
            "Incompatible schema",
            format!(
                "not backward compatible with {prev}: publish it as a new major version, or pass force=<reason>"
            ),
            serde_json::json!({ "compared_with": prev, "incompatibilities": list }),
        ),
    };
    let mut body = serde_json::json!({
        "type": "https://herald.dev/problems/schema",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    if let (Some(b), Value::Object(m)) = (body.as_object_mut(), extra) {
        b.extend(m);
    }
    let mut res = (status, body.to_string()).into_response();
    res.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/problem+json"),
    );
    res
}

/// `PUT /v1/types/{type}/schemas/{version}`: publishes a schema version.
#[utoipa::path(put, path = "/v1/types/{type}/schemas/{version}", tag = "types",
    params(("type" = String, Path, description = "A type or pattern"), ("version" = String, Path, description = "Semantic version, e.g. 1.2.0"), PublishParams),
    request_body(content = Object, description = "A JSON Schema (draft-07 or 2020-12) for the events' data"),
    responses(
        (status = 201, description = "Published", body = PublishResult),
        (status = 200, description = "Already published with the same content", body = PublishResult),
        (status = 409, description = "Not backward compatible (or the version exists with other content)"),
        (status = 422, description = "Invalid schema or example")))]
pub async fn put_schema(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((ty, version)): Path<(String, String)>,
    Query(params): Query<PublishParams>,
    crate::extract::Body(body): crate::extract::Body,
) -> Result<Response, ApiError> {
    caller.admin()?;
    pattern_param(&ty)?;
    let version = semver::Version::parse(&version)
        .map_err(|e| ApiError::BadRequest(format!("version `{version}`: {e}")))?;
    if !version.pre.is_empty() || !version.build.is_empty() {
        return Err(ApiError::BadRequest(
            "publish plain MAJOR.MINOR.PATCH versions".into(),
        ));
    }
    let schema: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the schema is not JSON: {e}")))?;
    let force = params.force.filter(|f| !f.trim().is_empty());
    let snap = st.registry.snapshot();
    let entry = snap.entries.iter().find(|e| e.pattern == ty);
    let (compared_with, incompat) =
        match check_publish(entry.map(|e| &**e), &version, &schema, force.is_some()) {
            Ok(x) => x,
            Err(e) => return Ok(publish_problem(e)),
        };
    let forced = if incompat.is_empty() { None } else { force };
    let now = now_micros();
    let created = {
        let (ty, version, schema, forced) = (ty.clone(), version.clone(), schema, forced.clone());
        st.registry
            .store
            .with(move |c| reg::put_schema(c, &ty, &version, &schema, forced.as_deref(), now))
            .await
            .map_err(|e| match e {
                StoreError::Conflict(m) => ApiError::BadRequest(m),
                other => other.into(),
            })?
    };
    st.registry.reload().await?;
    if created {
        crate::audit::record(&st, "herald.audit.schema.published", &caller,
            serde_json::json!({ "type": ty, "version": version.to_string(), "forced": forced, "incompatibilities": incompat }),
        )
        .await;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(PublishResult {
            ty,
            version: version.to_string(),
            created,
            compared_with,
            incompatibilities: incompat,
        }),
    )
        .into_response())
}

/// `GET /v1/types/{type}/schemas/{version}`: a published schema (`latest` for the newest).
#[utoipa::path(get, path = "/v1/types/{type}/schemas/{version}", tag = "types",
    params(("type" = String, Path, description = "A type or pattern"), ("version" = String, Path, description = "A version or `latest`")),
    responses((status = 200, description = "The schema"), (status = 404, description = "Not published")))]
pub async fn get_schema(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((ty, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.read()?;
    let snap = st.registry.snapshot();
    let entry = snap
        .entries
        .iter()
        .find(|e| e.pattern == ty)
        .ok_or_else(|| ApiError::NotFound(format!("type `{ty}` is not registered")))?;
    let p = if version == "latest" {
        entry.latest()
    } else {
        let v = semver::Version::parse(&version)
            .map_err(|e| ApiError::BadRequest(format!("version `{version}`: {e}")))?;
        entry.schemas.iter().find(|p| p.version == v)
    };
    let p = p.ok_or_else(|| {
        ApiError::NotFound(format!("version {version} of `{ty}` is not published"))
    })?;
    Ok(Json((*p.schema).clone()))
}

/// The opt-out list.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OptOutList {
    pub actors: Vec<String>,
}

fn check_actor(actor: &str) -> Result<(), ApiError> {
    if actor.is_empty() || actor.len() > 1024 {
        return Err(ApiError::BadRequest("an actor is 1 to 1024 bytes".into()));
    }
    Ok(())
}

/// `GET /v1/optout`
#[utoipa::path(get, path = "/v1/optout", tag = "types",
    responses((status = 200, description = "Actors who opted out", body = OptOutList)))]
pub async fn list_optout(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<OptOutList>, ApiError> {
    caller.admin()?;
    let actors = st.registry.store.with(reg::optout_list).await?;
    Ok(Json(OptOutList { actors }))
}

/// `PUT /v1/optout/{actor}`: from now on, this actor's events are dropped or anonymized.
#[utoipa::path(put, path = "/v1/optout/{actor}", tag = "types",
    params(("actor" = String, Path, description = "The actor, as events name it")),
    responses((status = 201, description = "Added"), (status = 200, description = "Already on the list")))]
pub async fn put_optout(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(actor): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.admin()?;
    check_actor(&actor)?;
    let now = now_micros();
    let a = actor.clone();
    let new = st
        .registry
        .store
        .with(move |c| reg::optout_put(c, &a, now))
        .await?;
    st.registry.reload().await?;
    if new {
        crate::audit::record(
            &st,
            "herald.audit.optout.added",
            &caller,
            serde_json::json!({ "actor": actor }),
        )
        .await;
    }
    Ok(if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    })
}

/// `DELETE /v1/optout/{actor}`
#[utoipa::path(delete, path = "/v1/optout/{actor}", tag = "types",
    params(("actor" = String, Path, description = "The actor")),
    responses((status = 204, description = "Removed"), (status = 404, description = "Not on the list")))]
pub async fn delete_optout(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(actor): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.admin()?;
    let a = actor.clone();
    let existed = st
        .registry
        .store
        .with(move |c| reg::optout_delete(c, &a))
        .await?;
    if !existed {
        return Err(ApiError::NotFound(format!(
            "`{actor}` is not on the opt-out list"
        )));
    }
    st.registry.reload().await?;
    crate::audit::record(
        &st,
        "herald.audit.optout.removed",
        &caller,
        serde_json::json!({ "actor": actor }),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
