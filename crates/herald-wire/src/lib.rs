//! Herald's wire types: what crosses the HTTP API, shared by the server, the CLI and the
//! client library.
//!
//! This crate exists so that a producer (the `herald-client` library, a script using the
//! CLI) can speak Herald's API without pulling in the server. It holds plain serde types and
//! nothing else: no validation, no IO, no clock. Validation of incoming events lives in
//! `herald-core`, which treats these shapes as untrusted input.

pub mod sse;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How serious an event is. The order of the variants is the order of comparisons in
/// filters (`severity:>=warning`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Debug,
    #[default]
    Info,
    Notice,
    Warning,
    Error,
    Critical,
}

impl Severity {
    /// All severities, lowest first.
    pub const ALL: [Severity; 6] = [
        Severity::Debug,
        Severity::Info,
        Severity::Notice,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ];

    /// The rank used for storage and comparisons (debug = 0 ... critical = 5).
    pub fn rank(self) -> u8 {
        self as u8
    }

    pub fn from_rank(rank: u8) -> Option<Severity> {
        Self::ALL.get(rank as usize).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Debug => "debug",
            Severity::Info => "info",
            Severity::Notice => "notice",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or(UnknownName)
    }
}

/// Who may read an event (see `docs/access.md` once access control lands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Public,
    #[default]
    Internal,
    Private,
}

impl Visibility {
    pub const ALL: [Visibility; 3] = [
        Visibility::Public,
        Visibility::Internal,
        Visibility::Private,
    ];

    pub fn rank(self) -> u8 {
        self as u8
    }

    pub fn from_rank(rank: u8) -> Option<Visibility> {
        Self::ALL.get(rank as usize).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Internal => "internal",
            Visibility::Private => "private",
        }
    }
}

impl fmt::Display for Visibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Visibility {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or(UnknownName)
    }
}

/// The error of parsing a [`Severity`] or [`Visibility`] from an unknown name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownName;

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown name")
    }
}

impl std::error::Error for UnknownName {}

/// An event as a producer writes it and as the API returns it (JSON format of CloudEvents 1.0
/// plus Herald's attributes). Server-assigned members (`seq`, `recordedtime`) are ignored on
/// input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Server-assigned, monotonic sequence number (the paging cursor and SSE id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default = "spec_version")]
    pub specversion: String,
    /// Producer's id; with `source` it identifies the event. Generated (UUIDv7) when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recordedtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// Other CloudEvents extension attributes (lowercase alphanumeric names, primitive values).
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

fn spec_version() -> String {
    "1.0".to_owned()
}

/// What happened to one event of an ingest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum IngestStatus {
    /// Committed to disk under a new `seq`.
    Stored,
    /// The same `source` + `id` with the same content was already stored; nothing was written.
    Duplicate,
    /// The same `source` + `id` was already stored with different content; nothing was written.
    Conflict,
    /// The event is invalid; `reason` and `pointer` say why and where.
    Rejected,
    /// The event failed its type's schema (enforced) or a pipeline processor: it is kept in
    /// the quarantine, not in the event log; `reason` and `errors` say why. Do not resend it:
    /// it can be replayed from the quarantine once the cause is fixed.
    Quarantined,
    /// The event was dropped on purpose (sampled out, or its actor opted out); `reason` says
    /// which. Do not resend it.
    Dropped,
}

/// One JSON Schema violation, reported as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchemaError {
    /// JSON pointer (RFC 6901) into the event's `data`.
    pub pointer: String,
    /// The schema keyword that failed (`required`, `type`, `additionalProperties`, ...).
    pub keyword: String,
    pub message: String,
}

/// The result for one event, in the order of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestResult {
    pub index: usize,
    pub status: IngestStatus,
    /// The stored event's `seq` (for `duplicate` and `conflict`, the one already stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// JSON pointer (RFC 6901) into the request body of the offending member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// Schema violations: why a `quarantined` event failed, or, for an event `stored` under
    /// validation mode `warn`, what is wrong with it (it is stored with `schemaerrors` set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<SchemaError>,
}

/// The answer to `POST /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestResponse {
    pub stored: usize,
    pub duplicates: usize,
    pub conflicts: usize,
    pub rejected: usize,
    #[serde(default)]
    pub quarantined: usize,
    #[serde(default)]
    pub dropped: usize,
    pub results: Vec<IngestResult>,
}

/// One page of an event listing, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventPage {
    pub events: Vec<serde_json::Value>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// An RFC 9457 problem details body (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    #[serde(rename = "type")]
    pub ty: String,
    pub title: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For filter errors: the byte offset of the offending term in the filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
    /// For filter errors: the offending term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    /// For ingest errors: one result per event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<IngestResult>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_order_and_names() {
        assert!(Severity::Error > Severity::Warning);
        for s in Severity::ALL {
            assert_eq!(s.as_str().parse::<Severity>(), Ok(s));
            assert_eq!(Severity::from_rank(s.rank()), Some(s));
        }
        assert!("fatal".parse::<Severity>().is_err());
    }

    #[test]
    fn event_roundtrip_keeps_extensions() {
        let json = r#"{"specversion":"1.0","id":"1","source":"/a","type":"x.y","myext":"v","data":{"k":1}}"#;
        let ev: Event = serde_json::from_str(json).unwrap();
        assert_eq!(
            ev.extensions.get("myext").and_then(|v| v.as_str()),
            Some("v")
        );
        let back: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );
    }
}
