//! The typed configuration tree of the server.
//!
//! It exists so that the whole configuration is validated once at start-up (unknown keys are
//! errors) and each component receives only its own part. Loading (embedded defaults, file,
//! `HERALD_*` environment) happens in the `herald` binary; the commented defaults are in
//! `config.default.toml`, embedded here so that `herald config default` prints them.

use herald_core::Limits;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The commented default configuration.
pub const DEFAULT_TOML: &str = include_str!("../config.default.toml");

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub limits: Limits,
    pub query: QueryConfig,
    pub stream: StreamConfig,
    pub auth: AuthConfig,
    pub pipeline: crate::registry::PipelineConfig,
}

impl Config {
    /// The options of the embedded store, from the `[store]` and `[stream]` sections.
    pub fn sqlite_options(
        &self,
        on_commit: Option<herald_store::CommitObserver>,
    ) -> herald_store::SqliteOptions {
        let s = &self.store;
        herald_store::SqliteOptions {
            data_dir: s.data_dir.clone(),
            fulltext: s.fulltext,
            indexed_paths: s.indexed_paths.clone(),
            attribute_indexes: s.attribute_indexes.clone(),
            queue_capacity: s.queue_capacity,
            max_commit_events: s.max_commit_events,
            max_index_backlog: s.max_index_backlog,
            read_connections: s.read_connections,
            cache_mib: s.cache_mib,
            fsync: s.fsync,
            direct_writes: s.direct_writes,
            live_capacity: self.stream.live_buffer,
            segment_bytes: s.segment_mib.max(1) << 20,
            dedup_memory_keys: s.dedup_memory_keys,
            on_commit,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Log filter (tracing `EnvFilter` syntax).
    pub log: String,
    /// Browser origins allowed to call the API (CORS): pages that embed a public feed or a
    /// user's events with a viewer token. "*" allows any origin.
    pub cors_origins: Vec<String>,
    /// A client must send a request's headers within this many seconds (slow clients that
    /// hold connections open are cut off).
    pub header_timeout_secs: u64,
    /// PEM files of a TLS certificate chain and its private key; both empty: plain HTTP
    /// (put a reverse proxy in front).
    pub tls_cert: String,
    pub tls_key: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8470".into(),
            log: "info".into(),
            cors_origins: Vec::new(),
            header_timeout_secs: 10,
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub fulltext: bool,
    pub indexed_paths: Vec<String>,
    /// Envelope attributes with an index (see `herald_store::ATTRIBUTE_INDEXES`).
    pub attribute_indexes: Vec<String>,
    pub queue_capacity: usize,
    pub max_commit_events: usize,
    /// Acknowledged events the indexer may be behind before the writer waits.
    pub max_index_backlog: usize,
    pub read_connections: usize,
    pub cache_mib: usize,
    pub fsync: bool,
    /// Write event segments with direct I/O where the file system has it.
    pub direct_writes: bool,
    /// Size of an event segment, in MiB.
    pub segment_mib: u64,
    /// Duplicate keys of recent events held in memory before they are written out.
    pub dedup_memory_keys: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("herald-data"),
            fulltext: true,
            indexed_paths: Vec::new(),
            attribute_indexes: herald_store::SqliteOptions::default().attribute_indexes,
            queue_capacity: 4096,
            max_commit_events: 50_000,
            max_index_backlog: herald_store::SqliteOptions::default().max_index_backlog,
            read_connections: 4,
            cache_mib: 256,
            fsync: true,
            direct_writes: true,
            segment_mib: 256,
            dedup_memory_keys: herald_store::SqliteOptions::default().dedup_memory_keys,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Page size when a listing does not say.
    pub default_limit: usize,
    /// Largest page size.
    pub max_limit: usize,
    /// Requests taking longer are answered 408.
    pub request_timeout_secs: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            default_limit: 50,
            max_limit: 1000,
            request_timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Keys are required unless the server listens on loopback only.
    Auto,
    /// Keys are always required.
    Required,
    /// No key needed (loopback only: the server refuses other addresses).
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Serve `/v1/public/events` and `/v1/public/stream` (public events) to anyone.
    pub public_feed: bool,
    /// Requests per second per key, viewer token, or (without either) client address;
    /// 0: unlimited. Beyond it: 429 with Retry-After.
    pub rate_limit: u32,
    /// Requests a caller may make at once above the rate.
    pub rate_burst: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Auto,
            public_feed: false,
            rate_limit: 0,
            rate_burst: 100,
        }
    }
}

/// Whether an address only accepts connections from this machine.
pub fn is_loopback(listen: &str) -> bool {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => listen.starts_with("localhost:"),
    }
}

impl AuthConfig {
    /// Whether requests need a key on a server listening on `listen`.
    pub fn required(&self, listen: &str) -> bool {
        match self.mode {
            AuthMode::Required => true,
            AuthMode::Off => false,
            AuthMode::Auto => !is_loopback(listen),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Most concurrent `/v1/stream` subscribers (503 beyond).
    pub max_subscribers: usize,
    /// Seconds between heartbeat comments on an idle stream.
    pub heartbeat_secs: u64,
    /// Reconnection delay suggested to clients (`retry:`), in milliseconds.
    pub retry_ms: u64,
    /// Group commits kept for subscribers that fall behind before they catch up from the
    /// database instead.
    pub live_buffer: usize,
    /// Chunks of events queued for one client's connection.
    pub client_buffer: usize,
    /// Events per catch-up read from the database.
    pub catchup_page: usize,
    /// A client that accepts nothing for this long is disconnected.
    pub slow_client_timeout_secs: u64,
    /// A subscriber catching up after falling behind the live buffer is disconnected when
    /// it is still this many events behind (0: never). A client resuming from an old
    /// position is not limited by it; only one that cannot keep up is.
    pub max_lag_events: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            max_subscribers: 10_000,
            heartbeat_secs: 15,
            retry_ms: 2000,
            live_buffer: 1024,
            client_buffer: 64,
            catchup_page: 1000,
            slow_client_timeout_secs: 30,
            max_lag_events: 1_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_match_the_code() {
        let parsed: Config = toml_like(DEFAULT_TOML);
        let code = Config::default();
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            serde_json::to_value(&code).unwrap(),
            "config.default.toml and the Default impls disagree"
        );
    }

    // The server crate does not depend on a TOML parser; the binary tests the real loading.
    // Here the commented defaults are checked line by line for `key = value` pairs.
    fn toml_like(text: &str) -> Config {
        let mut v = serde_json::Map::new();
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section = s.to_owned();
                v.insert(
                    section.clone(),
                    serde_json::Value::Object(Default::default()),
                );
                continue;
            }
            let (k, val) = line.split_once('=').expect("key = value");
            let val: serde_json::Value =
                serde_json::from_str(val.trim()).expect("JSON-compatible TOML value");
            v[&section][k.trim()] = val;
        }
        serde_json::from_value(serde_json::Value::Object(v)).expect("defaults deserialize")
    }
}
