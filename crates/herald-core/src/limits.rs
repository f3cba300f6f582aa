//! Size limits applied to incoming events and requests.
//!
//! They live in the core because validation enforces them; the server fills them from its
//! configuration. Every limit is a plain number so that the config file can document it.

use serde::{Deserialize, Serialize};

/// Configurable input limits. See `config.default.toml` for what each one means to a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest single event, in bytes of JSON (the event is rejected beyond).
    pub max_event_bytes: usize,
    /// Most events in one request (413 beyond).
    pub max_batch_len: usize,
    /// Deepest nesting of `data` and `context`.
    pub max_depth: usize,
    /// Longest `subject`, `dataschema`, `source` and extension value (as JSON), in bytes.
    pub max_string_len: usize,
    /// Longest `id`, `actor`, `tenant`, `causationid`, `correlationid`, `datacontenttype`
    /// and principal, in bytes.
    pub max_name_len: usize,
    /// Most extension attributes on one event.
    pub max_extensions: usize,
    /// Most principals in `readers`.
    pub max_readers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 * 1024 * 1024,
            max_event_bytes: 256 * 1024,
            max_batch_len: 10_000,
            max_depth: 32,
            max_string_len: 2048,
            max_name_len: 256,
            max_extensions: 32,
            max_readers: 64,
        }
    }
}
