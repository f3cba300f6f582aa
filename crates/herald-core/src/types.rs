//! Event types: the settings a type (or a type pattern such as `import.*`) carries, how a
//! type finds its settings, and deterministic sampling.
//!
//! It exists so that the registry's rules are pure and written once: the server's registry
//! keeps these settings in the database and a compiled snapshot in memory, ingest resolves
//! each event's type through [`TypeTable`], and sampling decisions come from [`sample_keeps`],
//! which depends only on the unit's value, so every event of a unit is kept or dropped
//! together, on every node and after every restart.

use herald_wire::Visibility;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What happens to an event that fails its type's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidationMode {
    /// No validation.
    #[default]
    Off,
    /// Store it, flagged with `schemaerrors` (the number of violations), and report them.
    Warn,
    /// Keep it in the quarantine instead of the event log.
    Enforce,
}

/// Keep a fraction of a type's events, decided per unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// Fraction kept, in (0, 1].
    pub rate: f64,
    /// What the decision is made on: `actor`, `subject`, `data.<path>` or `context.<path>`.
    /// Every event with the same value of it is kept or dropped together. Events without a
    /// value are decided on their own id. Default: the event id (no grouping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// The settings of an event type or type pattern (`PUT /v1/types/{type}`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TypeSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who to contact about this type (alerts go there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub validation: ValidationMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// `data.`/`context.` paths to index for filters and counts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub facets: Vec<String>,
    /// Visibility of events of this type that do not say (the stricter of this and the
    /// ingesting key's default applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
    /// How long events of this type are kept (used by retention).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// Whether events of this type need a human decision (used by actions).
    pub actionable: bool,
}

const MAX_TEXT: usize = 4096;

/// Checks a `data.`/`context.` path (and, where allowed, a top-level attribute).
pub fn check_path(path: &str, attributes: &[&str]) -> Result<(), String> {
    if attributes.contains(&path) {
        return Ok(());
    }
    let rest = path
        .strip_prefix("data.")
        .or_else(|| path.strip_prefix("context."))
        .ok_or_else(|| {
            let mut allowed = vec!["data.<path>", "context.<path>"];
            allowed.extend(attributes);
            format!("path `{path}` must be one of {}", allowed.join(", "))
        })?;
    for seg in rest.split('.') {
        if seg.is_empty()
            || seg.len() > 128
            || !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "path `{path}`: segments are letters, digits, `_` and `-`"
            ));
        }
    }
    Ok(())
}

impl TypeSettings {
    /// Checks the settings; the message names the member.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [("description", &self.description), ("owner", &self.owner)] {
            if v.as_ref().is_some_and(|s| s.len() > MAX_TEXT) {
                return Err(format!("{name} is longer than {MAX_TEXT} bytes"));
            }
        }
        if let Some(s) = &self.sampling {
            if !(s.rate > 0.0 && s.rate <= 1.0) {
                return Err(format!("sampling.rate must be in (0, 1], not {}", s.rate));
            }
            if let Some(u) = &s.unit {
                check_path(u, &["actor", "subject", "tenant"])
                    .map_err(|e| format!("sampling.unit: {e}"))?;
            }
        }
        if self.facets.len() > 32 {
            return Err("at most 32 facets per type".into());
        }
        for f in &self.facets {
            check_path(f, &[]).map_err(|e| format!("facets: {e}"))?;
        }
        if self.retention_days == Some(0) {
            return Err("retention_days must be at least 1".into());
        }
        Ok(())
    }
}

/// A type or a type pattern: `user.login` (exactly), `import.*` (every type that starts
/// with `import.`; not `import` itself, not `importer.x`), or `*` (every type).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TypePattern {
    Exact(String),
    /// The prefix including its final `.`.
    Prefix(String),
    Any,
}

impl TypePattern {
    pub fn parse(s: &str) -> Result<TypePattern, String> {
        if s == "*" {
            return Ok(TypePattern::Any);
        }
        let (base, prefix) = match s.strip_suffix(".*") {
            Some(b) => (b, true),
            None => (s, false),
        };
        if base.is_empty() || base.len() > 256 {
            return Err(format!("type pattern `{s}` is empty or too long"));
        }
        for seg in base.split('.') {
            if seg.is_empty()
                || !seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(format!(
                    "type pattern `{s}`: a type is dot-separated segments of letters, digits, `_` and `-`, optionally ending in `.*`"
                ));
            }
        }
        Ok(if prefix {
            TypePattern::Prefix(format!("{base}."))
        } else {
            TypePattern::Exact(base.to_owned())
        })
    }

    pub fn matches(&self, ty: &str) -> bool {
        match self {
            TypePattern::Exact(t) => t == ty,
            TypePattern::Prefix(p) => ty.starts_with(p.as_str()),
            TypePattern::Any => true,
        }
    }
}

impl std::fmt::Display for TypePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TypePattern::Exact(t) => f.write_str(t),
            TypePattern::Prefix(p) => write!(f, "{p}*"),
            TypePattern::Any => f.write_str("*"),
        }
    }
}

/// Finds the entry for a type: its exact entry, else the longest matching prefix pattern,
/// else `*`.
#[derive(Debug)]
pub struct TypeTable<T> {
    exact: HashMap<String, T>,
    /// Longest prefix first.
    prefixes: Vec<(String, T)>,
    any: Option<T>,
}

impl<T> Default for TypeTable<T> {
    fn default() -> Self {
        TypeTable {
            exact: HashMap::new(),
            prefixes: Vec::new(),
            any: None,
        }
    }
}

impl<T> TypeTable<T> {
    pub fn from_entries(entries: impl IntoIterator<Item = (TypePattern, T)>) -> TypeTable<T> {
        let mut t = TypeTable::default();
        for (p, v) in entries {
            match p {
                TypePattern::Exact(s) => {
                    t.exact.insert(s, v);
                }
                TypePattern::Prefix(s) => t.prefixes.push((s, v)),
                TypePattern::Any => t.any = Some(v),
            }
        }
        t.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        t
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty() && self.any.is_none()
    }

    pub fn get(&self, ty: &str) -> Option<&T> {
        if let Some(v) = self.exact.get(ty) {
            return Some(v);
        }
        self.prefixes
            .iter()
            .find(|(p, _)| ty.starts_with(p.as_str()))
            .map(|(_, v)| v)
            .or(self.any.as_ref())
    }
}

/// Whether an event whose sampling unit has the value `unit` is kept at `rate`. The same
/// unit value always gets the same answer (a keyed hash, fixed forever, so that decisions
/// survive restarts and agree across nodes), and a rate only keeps a superset of what a
/// lower rate keeps.
pub fn sample_keeps(unit: &[u8], rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    const SEED: u64 = 0x6865_7261_6c64_5f73; // "herald_s"
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(unit, SEED);
    // Compare in 53-bit precision so that the threshold is exact for every f64 rate.
    ((h >> 11) as f64) < rate * (1u64 << 53) as f64
}

/// The CloudEvents `sampledrate` of events kept at `rate`: how many events each stands for.
pub fn sampled_rate(rate: f64) -> u64 {
    (1.0 / rate).round().max(1.0) as u64
}

/// A type settings file (`herald types push DIR`, `pipeline.types_dir`): the settings'
/// members plus `type` (the type or pattern) and `schemas` (version → JSON Schema).
#[derive(Debug, Clone, PartialEq)]
pub struct TypeFile {
    pub pattern: String,
    pub settings: TypeSettings,
    /// Oldest version first.
    pub schemas: Vec<(semver::Version, serde_json::Value)>,
}

impl TypeFile {
    pub fn from_value(v: serde_json::Value) -> Result<TypeFile, String> {
        let serde_json::Value::Object(mut m) = v else {
            return Err("a type file is an object".into());
        };
        let pattern = match m.remove("type") {
            Some(serde_json::Value::String(s)) => s,
            _ => return Err("`type` (the type or pattern, e.g. \"import.*\") is required".into()),
        };
        TypePattern::parse(&pattern)?;
        let mut schemas = Vec::new();
        match m.remove("schemas") {
            None => {}
            Some(serde_json::Value::Object(s)) => {
                for (version, schema) in s {
                    let v = semver::Version::parse(&version)
                        .map_err(|e| format!("schemas: version `{version}`: {e}"))?;
                    schemas.push((v, schema));
                }
            }
            Some(_) => return Err("`schemas` maps versions to JSON Schemas".into()),
        }
        schemas.sort_by(|a, b| a.0.cmp(&b.0));
        let settings: TypeSettings = serde_json::from_value(serde_json::Value::Object(m))
            .map_err(|e| format!("settings: {e}"))?;
        settings.check()?;
        Ok(TypeFile {
            pattern,
            settings,
            schemas,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_anchored_and_most_specific_wins() {
        let t = TypeTable::from_entries([
            (TypePattern::parse("import.*").unwrap(), 1),
            (TypePattern::parse("import.csv.*").unwrap(), 2),
            (TypePattern::parse("import.csv.failed").unwrap(), 3),
            (TypePattern::parse("*").unwrap(), 0),
        ]);
        assert_eq!(t.get("import.csv.failed"), Some(&3));
        assert_eq!(t.get("import.csv.started"), Some(&2));
        assert_eq!(t.get("import.json"), Some(&1));
        assert_eq!(t.get("import"), Some(&0));
        assert_eq!(t.get("importer.done"), Some(&0));
        let t = TypeTable::from_entries([(TypePattern::parse("import.*").unwrap(), 1)]);
        assert_eq!(t.get("importer.done"), None);
        for bad in ["", "a..b", "a.*.b", "a b", ".*", "a.**"] {
            assert!(TypePattern::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(TypePattern::parse("a.b.*").unwrap().to_string(), "a.b.*");
    }

    #[test]
    fn sampling_is_deterministic_and_near_its_rate() {
        for rate in [0.01, 0.1, 0.5, 0.9] {
            let n = 100_000;
            let kept = (0..n)
                .filter(|i| sample_keeps(format!("unit-{i}").as_bytes(), rate))
                .count();
            let frac = kept as f64 / n as f64;
            assert!((frac - rate).abs() < 0.01, "rate {rate}: kept {frac}");
        }
        // Monotone in the rate: what 0.1 keeps, 0.2 keeps too.
        for i in 0..10_000 {
            let u = format!("u{i}");
            if sample_keeps(u.as_bytes(), 0.1) {
                assert!(sample_keeps(u.as_bytes(), 0.2));
            }
        }
        assert!(sample_keeps(b"anything", 1.0));
        assert_eq!(sampled_rate(0.1), 10);
        assert_eq!(sampled_rate(1.0), 1);
    }

    #[test]
    fn settings_are_checked() {
        let ok = TypeSettings {
            sampling: Some(Sampling {
                rate: 0.5,
                unit: Some("data.user_id".into()),
            }),
            facets: vec!["data.country".into()],
            ..TypeSettings::default()
        };
        assert!(ok.check().is_ok());
        let mut bad = ok.clone();
        bad.sampling.as_mut().unwrap().rate = 0.0;
        assert!(bad.check().unwrap_err().contains("sampling.rate"));
        let mut bad = ok.clone();
        bad.facets = vec!["type".into()];
        assert!(bad.check().unwrap_err().contains("facets"));
        let mut bad = ok;
        bad.sampling.as_mut().unwrap().unit = Some("data.a b".into());
        assert!(bad.check().is_err());
        let parsed: Result<TypeSettings, _> = serde_json::from_str(r#"{"validaton":"warn"}"#);
        assert!(parsed.is_err(), "unknown members are refused");
        let f = TypeFile::from_value(serde_json::json!({"type": "import.*", "owner": "o",
            "schemas": {"1.10.0": {}, "1.2.0": {"type": "object"}}}))
        .unwrap();
        assert_eq!(f.schemas[0].0.to_string(), "1.2.0");
        assert_eq!(f.settings.owner.as_deref(), Some("o"));
        assert!(TypeFile::from_value(serde_json::json!({"owner": "o"})).is_err());
        assert!(TypeFile::from_value(serde_json::json!({"type": "a", "bogus": 1})).is_err());
    }
}
