//! Server-side processors: allow/deny, redact, hash and enrich, applied in order to the
//! events of the types they select.
//!
//! It exists to keep the transformations pure and testable apart from the server: they work
//! on an event as a JSON object and return what to do next. A processor that cannot do its
//! job returns an error, and the caller must then not store the event as it is (the server
//! quarantines it), so a failed redaction never lets an unredacted event through.

use crate::types::{check_path, TypePattern};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One processor as configured (`[[pipeline]]` in the server config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    pub processor: ProcessorName,
    /// Type patterns the processor applies to (`import.*`, `user.login`, `*`). For `allow`,
    /// the types that pass; for `deny`, the types refused. Default: every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// `redact` and `hash`: `data.<path>`, `context.<path>`, `actor`, `subject`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// `enrich`: where the client's IP address goes (a `data.<path>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// `enrich`: where the client's user agent goes (a `data.<path>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessorName {
    Allow,
    Deny,
    Redact,
    Hash,
    Enrich,
}

/// What a checked processor does.
#[derive(Debug, Clone, PartialEq)]
enum ProcessorKind {
    /// Refuse every event whose type matches none of `types`.
    Allow,
    /// Refuse every event whose type matches `types`.
    Deny,
    /// Remove paths.
    Redact { paths: Vec<String> },
    /// Replace the value at each path by the hex HMAC-SHA256 of it under the configured key
    /// (strings as their text, other values as their JSON), so equal values stay equal.
    Hash { paths: Vec<String> },
    /// Write the client's IP address and user agent into these paths, but only where the
    /// type's schema declares them.
    Enrich {
        client_ip: Option<String>,
        user_agent: Option<String>,
    },
}

/// A checked processor, ready to run.
#[derive(Debug, Clone)]
pub struct Processor {
    pub name: &'static str,
    types: Vec<TypePattern>,
    kind: ProcessorKind,
}

/// What the request tells processors about the producer.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo<'a> {
    /// The producer's address, written out only when an enrich processor asks for it.
    pub client_ip: Option<std::net::IpAddr>,
    pub user_agent: Option<&'a str>,
    /// The HMAC key of `hash` (from the config).
    pub hash_key: &'a [u8],
}

/// The outcome of one processor.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Go on (the event may have changed).
    Continue { changed: bool },
    /// The event is refused (allow/deny): reported as rejected, not stored.
    Refuse(String),
}

const ATTRIBUTES: &[&str] = &["actor", "subject"];

impl Processor {
    pub fn new(cfg: &ProcessorConfig) -> Result<Processor, String> {
        let types = cfg
            .types
            .iter()
            .map(|t| TypePattern::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        let (name, kind) = match cfg.processor {
            ProcessorName::Allow => ("allow", ProcessorKind::Allow),
            ProcessorName::Deny => ("deny", ProcessorKind::Deny),
            ProcessorName::Redact => (
                "redact",
                ProcessorKind::Redact {
                    paths: cfg.paths.clone(),
                },
            ),
            ProcessorName::Hash => (
                "hash",
                ProcessorKind::Hash {
                    paths: cfg.paths.clone(),
                },
            ),
            ProcessorName::Enrich => (
                "enrich",
                ProcessorKind::Enrich {
                    client_ip: cfg.client_ip.clone(),
                    user_agent: cfg.user_agent.clone(),
                },
            ),
        };
        let stray = match cfg.processor {
            ProcessorName::Redact | ProcessorName::Hash => {
                cfg.client_ip.is_some() || cfg.user_agent.is_some()
            }
            ProcessorName::Enrich => !cfg.paths.is_empty(),
            ProcessorName::Allow | ProcessorName::Deny => {
                !cfg.paths.is_empty() || cfg.client_ip.is_some() || cfg.user_agent.is_some()
            }
        };
        if stray {
            return Err(format!(
                "{name}: takes {}",
                match cfg.processor {
                    ProcessorName::Redact | ProcessorName::Hash => "`types` and `paths`",
                    ProcessorName::Enrich => "`types`, `client_ip` and `user_agent`",
                    _ => "`types` only",
                }
            ));
        }
        match &kind {
            ProcessorKind::Allow | ProcessorKind::Deny if types.is_empty() => {
                return Err(format!("{name}: `types` lists the type patterns"))
            }
            ProcessorKind::Redact { paths } | ProcessorKind::Hash { paths } => {
                if paths.is_empty() {
                    return Err(format!("{name}: `paths` is empty"));
                }
                for p in paths {
                    check_path(p, ATTRIBUTES).map_err(|e| format!("{name}: {e}"))?;
                }
            }
            ProcessorKind::Enrich {
                client_ip,
                user_agent,
            } => {
                for p in [client_ip, user_agent].into_iter().flatten() {
                    if !p.starts_with("data.") {
                        return Err(format!("enrich: `{p}` must be a data.<path>"));
                    }
                    check_path(p, &[]).map_err(|e| format!("enrich: {e}"))?;
                }
            }
            _ => {}
        }
        Ok(Processor { name, types, kind })
    }

    /// Whether the processor concerns events of this type at all.
    pub fn applies_to(&self, ty: &str) -> bool {
        match self.kind {
            ProcessorKind::Allow => true,
            _ => self.types.is_empty() || self.types.iter().any(|p| p.matches(ty)),
        }
    }

    /// Whether it needs the event as a JSON object (allow/deny decide on the type alone).
    pub fn edits(&self) -> bool {
        !matches!(self.kind, ProcessorKind::Allow | ProcessorKind::Deny)
    }

    /// Decides on the type alone (allow/deny); `None` for processors that edit.
    pub fn decide(&self, ty: &str) -> Option<Step> {
        match self.kind {
            ProcessorKind::Allow => Some(if self.types.iter().any(|p| p.matches(ty)) {
                Step::Continue { changed: false }
            } else {
                Step::Refuse(format!("type `{ty}` is not in the pipeline's allow list"))
            }),
            ProcessorKind::Deny => Some(if self.types.iter().any(|p| p.matches(ty)) {
                Step::Refuse(format!("type `{ty}` is denied by the pipeline"))
            } else {
                Step::Continue { changed: false }
            }),
            _ => None,
        }
    }

    /// Runs the processor on an event. `declares` says whether the type's schema declares a
    /// `data.` path (for enrich). An error means the event must not be stored as it is.
    pub fn run(
        &self,
        ev: &mut Map<String, Value>,
        req: &RequestInfo,
        declares: &dyn Fn(&[&str]) -> bool,
    ) -> Result<Step, String> {
        if let Some(step) = self.decide(ev.get("type").and_then(Value::as_str).unwrap_or("")) {
            return Ok(step);
        }
        let mut changed = false;
        match &self.kind {
            ProcessorKind::Redact { paths } => {
                for p in paths {
                    changed |= remove_path(ev, p)?;
                }
            }
            ProcessorKind::Hash { paths } => {
                if req.hash_key.is_empty() {
                    return Err("hash: no key is configured (pipeline_hash_key)".into());
                }
                for p in paths {
                    if let Some(v) = get_path_mut(ev, p)? {
                        let digest = match &*v {
                            Value::String(s) => hmac_hex(req.hash_key, s.as_bytes()),
                            other => hmac_hex(req.hash_key, other.to_string().as_bytes()),
                        };
                        *v = Value::String(digest);
                        changed = true;
                    }
                }
            }
            ProcessorKind::Enrich {
                client_ip,
                user_agent,
            } => {
                let ip = client_ip
                    .as_ref()
                    .and(req.client_ip)
                    .map(|ip| ip.to_string());
                for (path, value) in [(client_ip, ip.as_deref()), (user_agent, req.user_agent)] {
                    let (Some(path), Some(value)) = (path, value) else {
                        continue;
                    };
                    let segs: Vec<&str> = path["data.".len()..].split('.').collect();
                    if !declares(&segs) {
                        continue;
                    }
                    set_data_path(ev, &segs, Value::String(value.to_owned()))?;
                    changed = true;
                }
            }
            ProcessorKind::Allow | ProcessorKind::Deny => unreachable!("decided above"),
        }
        Ok(Step::Continue { changed })
    }
}

/// The hex HMAC-SHA256 of `value` under `key`.
pub fn hmac_hex(key: &[u8], value: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(value);
    let out = mac.finalize().into_bytes();
    let mut s = String::with_capacity(64);
    for b in out {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn split(path: &str) -> (&str, Vec<&str>) {
    match path.split_once('.') {
        Some((root, rest)) => (root, rest.split('.').collect()),
        None => (path, Vec::new()),
    }
}

/// Removes a path; `Ok(false)` when it was absent. Walking through something that is not an
/// object is an error: the value might hold what should be removed.
pub fn remove_path(ev: &mut Map<String, Value>, path: &str) -> Result<bool, String> {
    let (root, segs) = split(path);
    let Some((last, parents)) = segs.split_last() else {
        return Ok(ev.remove(root).is_some());
    };
    let mut node = match ev.get_mut(root) {
        Some(n) => n,
        None => return Ok(false),
    };
    for s in parents {
        node = match node {
            Value::Object(m) => match m.get_mut(*s) {
                Some(n) => n,
                None => return Ok(false),
            },
            Value::Null => return Ok(false),
            _ => return Err(format!("cannot reach {path}: a parent is not an object")),
        };
    }
    match node {
        Value::Object(m) => Ok(m.remove(*last).is_some()),
        Value::Null => Ok(false),
        _ => Err(format!("cannot reach {path}: a parent is not an object")),
    }
}

fn get_path_mut<'a>(
    ev: &'a mut Map<String, Value>,
    path: &str,
) -> Result<Option<&'a mut Value>, String> {
    let (root, segs) = split(path);
    let mut node = match ev.get_mut(root) {
        Some(n) => n,
        None => return Ok(None),
    };
    for s in segs {
        node = match node {
            Value::Object(m) => match m.get_mut(s) {
                Some(n) => n,
                None => return Ok(None),
            },
            Value::Null => return Ok(None),
            _ => return Err(format!("cannot reach {path}: a parent is not an object")),
        };
    }
    if node.is_null() {
        return Ok(None);
    }
    Ok(Some(node))
}

fn set_data_path(ev: &mut Map<String, Value>, segs: &[&str], v: Value) -> Result<(), String> {
    let mut node = ev
        .entry("data")
        .or_insert_with(|| Value::Object(Map::new()));
    for (i, s) in segs.iter().enumerate() {
        let m = match node {
            Value::Object(m) => m,
            _ => {
                return Err(format!(
                    "cannot write data.{}: a parent is not an object",
                    segs.join(".")
                ))
            }
        };
        if i + 1 == segs.len() {
            m.insert((*s).to_owned(), v);
            return Ok(());
        }
        node = m
            .entry((*s).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

/// Reads a sampling unit (`actor`, `subject`, `tenant`, `data.<path>`, `context.<path>`)
/// from an event's JSON: strings as their text, other values as their JSON.
pub fn unit_value(ev: &Map<String, Value>, path: &str) -> Option<String> {
    let (root, segs) = split(path);
    let mut node = ev.get(root)?;
    for s in segs {
        node = node.as_object()?.get(s)?;
    }
    match node {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn proc(v: Value) -> Processor {
        Processor::new(&serde_json::from_value(v).unwrap()).unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    const REQ: RequestInfo = RequestInfo {
        client_ip: Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7))),
        user_agent: Some("curl/8"),
        hash_key: b"k",
    };

    #[test]
    fn allow_and_deny_are_anchored() {
        let allow = proc(json!({"processor": "allow", "types": ["import.*", "user.login"]}));
        let mut ev = obj(json!({"type": "import.csv"}));
        assert_eq!(
            allow.run(&mut ev, &REQ, &|_| false).unwrap(),
            Step::Continue { changed: false }
        );
        for t in ["importer.x", "user.login.failed", "import"] {
            let mut ev = obj(json!({ "type": t }));
            assert!(matches!(
                allow.run(&mut ev, &REQ, &|_| false).unwrap(),
                Step::Refuse(_)
            ));
        }
        let deny = proc(json!({"processor": "deny", "types": ["debug.*"]}));
        assert!(matches!(deny.decide("debug.x"), Some(Step::Refuse(_))));
        assert_eq!(
            deny.decide("debugger.x"),
            Some(Step::Continue { changed: false })
        );
    }

    #[test]
    fn redact_hash_enrich() {
        let mut ev = obj(json!({"type": "t", "actor": "u1",
            "data": {"email": "a@b", "n": 5, "deep": {"ip": "1.2.3.4"}}, "context": {"s": 1}}));
        let r = proc(
            json!({"processor": "redact", "paths": ["data.deep.ip", "context.s", "data.absent.x"]}),
        );
        assert_eq!(
            r.run(&mut ev, &REQ, &|_| false).unwrap(),
            Step::Continue { changed: true }
        );
        assert_eq!(ev["data"]["deep"], json!({}));
        assert_eq!(ev["context"], json!({}));
        let h = proc(json!({"processor": "hash", "paths": ["actor", "data.email", "data.n"]}));
        h.run(&mut ev, &REQ, &|_| false).unwrap();
        assert_eq!(ev["actor"], json!(hmac_hex(b"k", b"u1")));
        assert_eq!(ev["data"]["n"], json!(hmac_hex(b"k", b"5")));
        assert_eq!(ev["actor"].as_str().unwrap().len(), 64);
        // Without a key, hashing fails rather than passing the value through.
        let nokey = RequestInfo {
            hash_key: b"",
            ..REQ
        };
        assert!(h
            .run(&mut obj(json!({"type":"t","actor":"u"})), &nokey, &|_| {
                false
            })
            .is_err());
        // Through a non-object: an error, not a silent pass.
        let mut odd = obj(json!({"type": "t", "data": {"deep": "text"}}));
        assert!(r.run(&mut odd, &REQ, &|_| false).is_err());

        let e = proc(
            json!({"processor": "enrich", "client_ip": "data.http.ip", "user_agent": "data.ua"}),
        );
        let mut ev = obj(json!({"type": "t", "data": {"x": 1}}));
        e.run(&mut ev, &REQ, &|p| p == ["http", "ip"]).unwrap();
        assert_eq!(ev["data"], json!({"x": 1, "http": {"ip": "192.0.2.7"}}));
        let mut s = obj(json!({"type": "t", "data": "text"}));
        assert!(e.run(&mut s, &REQ, &|_| true).is_err());
    }

    #[test]
    fn bad_configs_are_refused() {
        for bad in [
            json!({"processor": "allow"}),
            json!({"processor": "redact", "paths": []}),
            json!({"processor": "redact", "paths": ["type"]}),
            json!({"processor": "enrich", "client_ip": "context.ip"}),
            json!({"processor": "hash", "paths": ["data.a"], "types": ["a..b"]}),
        ] {
            let cfg: ProcessorConfig = serde_json::from_value(bad.clone()).unwrap();
            assert!(Processor::new(&cfg).is_err(), "{bad}");
        }
        assert!(
            serde_json::from_value::<ProcessorConfig>(json!({"processor": "explode"})).is_err()
        );
    }

    #[test]
    fn units() {
        let ev = obj(json!({"actor": "u", "data": {"a": {"b": 7}}}));
        assert_eq!(unit_value(&ev, "actor").as_deref(), Some("u"));
        assert_eq!(unit_value(&ev, "data.a.b").as_deref(), Some("7"));
        assert_eq!(unit_value(&ev, "data.a.c"), None);
    }
}
