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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Log filter (tracing `EnvFilter` syntax).
    pub log: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8470".into(),
            log: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub fulltext: bool,
    pub indexed_paths: Vec<String>,
    pub queue_capacity: usize,
    pub max_commit_events: usize,
    pub read_connections: usize,
    pub cache_mib: usize,
    pub fsync: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("herald-data"),
            fulltext: true,
            indexed_paths: Vec::new(),
            queue_capacity: 4096,
            max_commit_events: 50_000,
            read_connections: 4,
            cache_mib: 256,
            fsync: true,
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
