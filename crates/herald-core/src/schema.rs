//! JSON Schemas of event types: compiling, validating `data`, and the compatibility check
//! that guards publishing a new version.
//!
//! It exists so that the rules that keep events trustworthy are written once, without IO:
//! the server's registry caches what [`compile`] returns, ingest and quarantine replay call
//! [`CompiledSchema::validate`], and publishing calls [`compatibility`]. Validation uses the
//! `jsonschema` crate (drafts 7 and 2020-12, chosen by the schema's `$schema`, 2020-12 when
//! absent), with `format` asserted and no remote references fetched: a schema must be
//! self-contained (materialized), which is what an event platform publishes.

use herald_wire::SchemaError;
use serde_json::{Map, Value};

/// A schema compiled once; cheap to share behind an `Arc`.
pub struct CompiledSchema {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompiledSchema")
    }
}

/// The JSON Schema drafts Herald accepts.
pub fn draft_of(schema: &Value) -> Result<jsonschema::Draft, String> {
    let Some(uri) = schema.get("$schema") else {
        return Ok(jsonschema::Draft::Draft202012);
    };
    let uri = uri.as_str().ok_or("`$schema` must be a string")?;
    let bare = uri
        .trim_end_matches('#')
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    match bare {
        "json-schema.org/draft-07/schema" => Ok(jsonschema::Draft::Draft7),
        "json-schema.org/draft/2020-12/schema" => Ok(jsonschema::Draft::Draft202012),
        other => Err(format!(
            "`$schema` {other} is not supported; use draft-07 (http://json-schema.org/draft-07/schema#) or 2020-12 (https://json-schema.org/draft/2020-12/schema)"
        )),
    }
}

/// Compiles a schema (checking it against its draft's meta-schema first).
pub fn compile(schema: &Value) -> Result<CompiledSchema, String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("a schema must be a JSON object".into());
    }
    let draft = draft_of(schema)?;
    let validator = jsonschema::options()
        .with_draft(draft)
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| format!("invalid schema: {e}"))?;
    Ok(CompiledSchema { validator })
}

impl CompiledSchema {
    /// Every violation of `data` (not just the first), in the validator's order.
    pub fn validate(&self, data: &Value) -> Vec<SchemaError> {
        if self.validator.is_valid(data) {
            return Vec::new();
        }
        self.validator
            .iter_errors(data)
            .map(|e| SchemaError {
                pointer: e.instance_path().to_string(),
                keyword: e.kind().keyword().to_owned(),
                message: e.to_string(),
            })
            .collect()
    }

    pub fn is_valid(&self, data: &Value) -> bool {
        self.validator.is_valid(data)
    }
}

/// Whether the schema declares the property at `path` (object properties, followed through
/// `properties` only): enrichment writes only into fields a schema declares.
pub fn declares(schema: &Value, path: &[&str]) -> bool {
    let mut node = schema;
    for seg in path {
        match node.get("properties").and_then(|p| p.get(*seg)) {
            Some(n) => node = n,
            None => return false,
        }
    }
    true
}

/// One reason why a new schema version is not backward compatible with an old one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Incompatibility {
    /// JSON pointer into the new schema (or the old one, for something removed).
    pub pointer: String,
    pub message: String,
}

/// Keywords that only annotate: changing them never changes which events are valid.
const ANNOTATIONS: &[&str] = &[
    "$id",
    "$schema",
    "$comment",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Herald's rule for a new version within the same major version: it must accept every
/// event the old version accepted. So these changes are compatible: a new optional property,
/// a required property becoming optional, wider limits (`maximum`, `maxLength`, ... raised;
/// `minimum`, `minLength`, ... lowered, or removed), more `enum` values, more `type`s,
/// `additionalProperties: false` lifted, a `pattern`/`format` removed, any annotation
/// changed. Anything else that differs (a property removed while additional properties are
/// forbidden, a new required property, a narrower limit, a new `pattern`, a changed
/// combinator) is reported, with where it is. The check is structural and conservative:
/// when it cannot prove a change harmless, it reports it.
pub fn compatibility(old: &Value, new: &Value) -> Vec<Incompatibility> {
    let mut out = Vec::new();
    let inert_definitions = !has_ref(old) && !has_ref(new);
    compare(old, new, String::new(), inert_definitions, &mut out);
    out
}

/// Whether a schema uses `$ref` anywhere: without one, `definitions`/`$defs` are inert.
fn has_ref(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("$ref") || m.values().any(has_ref),
        Value::Array(a) => a.iter().any(has_ref),
        _ => false,
    }
}

fn push(out: &mut Vec<Incompatibility>, pointer: &str, message: String) {
    out.push(Incompatibility {
        pointer: if pointer.is_empty() {
            "/".into()
        } else {
            pointer.to_owned()
        },
        message,
    });
}

fn esc(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn types_of(v: &Value) -> Option<Vec<&str>> {
    match v.get("type")? {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(a) => Some(a.iter().filter_map(|t| t.as_str()).collect()),
        _ => None,
    }
}

/// Compares two (sub)schemas at `at` (a pointer into the schema).
fn compare(old: &Value, new: &Value, at: String, inert: bool, out: &mut Vec<Incompatibility>) {
    let (o, n) = match (old, new) {
        (Value::Object(o), Value::Object(n)) => (o, n),
        (Value::Bool(_), Value::Bool(true)) => return,
        (Value::Bool(true), _) => {
            if new != &Value::Object(Map::new()) {
                push(
                    out,
                    &at,
                    "a schema that accepted anything now has constraints".into(),
                );
            }
            return;
        }
        (Value::Bool(false), _) => return,
        (Value::Object(o), Value::Bool(true)) => {
            let _ = o;
            return;
        }
        _ => {
            push(out, &at, "the schema now rejects everything".into());
            return;
        }
    };

    // type: the new set must contain every old type (integer is within number).
    match (types_of(old), types_of(new)) {
        (_, None) => {}
        (None, Some(nt)) => push(
            out,
            &format!("{at}/type"),
            format!("a type constraint was added ({})", nt.join(", ")),
        ),
        (Some(ot), Some(nt)) => {
            for t in ot {
                let kept = nt.contains(&t) || (t == "integer" && nt.contains(&"number"));
                if !kept {
                    push(
                        out,
                        &format!("{at}/type"),
                        format!("type `{t}` is no longer allowed"),
                    );
                }
            }
        }
    }

    // Upper limits may only rise (or go), lower limits only fall (or go).
    for (kw, upper) in [
        ("maximum", true),
        ("exclusiveMaximum", true),
        ("maxLength", true),
        ("maxItems", true),
        ("maxProperties", true),
        ("minimum", false),
        ("exclusiveMinimum", false),
        ("minLength", false),
        ("minItems", false),
        ("minProperties", false),
    ] {
        let (ov, nv) = (o.get(kw), n.get(kw));
        match (ov.and_then(Value::as_f64), nv.and_then(Value::as_f64)) {
            (_, None) if nv.is_none() => {}
            (None, Some(x)) => push(out, &format!("{at}/{kw}"), format!("`{kw}: {x}` was added")),
            (Some(a), Some(b)) => {
                let narrower = if upper { b < a } else { b > a };
                if narrower {
                    push(
                        out,
                        &format!("{at}/{kw}"),
                        format!("`{kw}` went from {a} to {b}, which is narrower"),
                    );
                }
            }
            _ => {
                if ov != nv {
                    push(out, &format!("{at}/{kw}"), format!("`{kw}` changed"));
                }
            }
        }
    }

    // required: the new set must be within the old one.
    let req = |m: &Map<String, Value>| -> Vec<String> {
        m.get("required")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let old_req = req(o);
    for r in req(n) {
        if !old_req.contains(&r) {
            push(
                out,
                &format!("{at}/required"),
                format!("property `{r}` is now required"),
            );
        }
    }

    // enum may only grow; const must stay.
    match (o.get("enum"), n.get("enum")) {
        (_, None) => {}
        (None, Some(_)) => push(out, &format!("{at}/enum"), "an `enum` was added".into()),
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for v in a {
                if !b.contains(v) {
                    push(
                        out,
                        &format!("{at}/enum"),
                        format!("enum value {v} was removed"),
                    );
                }
            }
        }
        _ => push(out, &format!("{at}/enum"), "`enum` changed".into()),
    }
    for kw in ["const", "pattern", "format", "multipleOf", "uniqueItems"] {
        match (o.get(kw), n.get(kw)) {
            (_, None) => {}
            (Some(a), Some(b)) if a == b => {}
            (Some(Value::Bool(true)), Some(Value::Bool(false))) if kw == "uniqueItems" => {}
            (None, Some(Value::Bool(false))) if kw == "uniqueItems" => {}
            (None, Some(_)) => push(out, &format!("{at}/{kw}"), format!("`{kw}` was added")),
            (Some(_), Some(_)) => push(out, &format!("{at}/{kw}"), format!("`{kw}` changed")),
        }
    }

    // Properties: each old one must still be accepted.
    let empty = Map::new();
    let op = o
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let np = n
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let new_additional = n.get("additionalProperties");
    for (name, os) in op {
        let here = format!("{at}/properties/{}", esc(name));
        match np.get(name) {
            Some(ns) => compare(os, ns, here, inert, out),
            None => match new_additional {
                Some(Value::Bool(false)) => push(
                    out,
                    &here,
                    format!(
                        "property `{name}` was removed while additional properties are forbidden"
                    ),
                ),
                Some(schema @ Value::Object(_)) => {
                    compare(os, schema, format!("{at}/additionalProperties"), inert, out)
                }
                _ => {}
            },
        }
    }
    // New properties: compatible when optional, unless old additional properties were
    // constrained by a schema the new property's schema does not cover (not checked: rare).
    match (o.get("additionalProperties"), new_additional) {
        (_, None) | (_, Some(Value::Bool(true))) => {}
        (Some(Value::Bool(false)), Some(Value::Bool(false))) => {}
        (Some(a @ Value::Object(_)), Some(b @ Value::Object(_))) => {
            compare(a, b, format!("{at}/additionalProperties"), inert, out)
        }
        (Some(Value::Bool(false)), Some(Value::Object(_))) => {}
        _ => push(
            out,
            &format!("{at}/additionalProperties"),
            "additional properties are now restricted".into(),
        ),
    }

    // items (a single schema) recurses; tuple forms must be equal.
    match (o.get("items"), n.get("items")) {
        (_, None) => {}
        (
            Some(a @ (Value::Object(_) | Value::Bool(_))),
            Some(b @ (Value::Object(_) | Value::Bool(_))),
        ) => compare(a, b, format!("{at}/items"), inert, out),
        (None, Some(_)) => push(out, &format!("{at}/items"), "`items` was added".into()),
        (Some(a), Some(b)) => {
            if a != b {
                push(out, &format!("{at}/items"), "`items` changed".into())
            }
        }
    }

    // Every other keyword (combinators, conditionals, references, ...) must be unchanged.
    let handled = [
        "type",
        "maximum",
        "exclusiveMaximum",
        "maxLength",
        "maxItems",
        "maxProperties",
        "minimum",
        "exclusiveMinimum",
        "minLength",
        "minItems",
        "minProperties",
        "required",
        "enum",
        "const",
        "pattern",
        "format",
        "multipleOf",
        "uniqueItems",
        "properties",
        "additionalProperties",
        "items",
    ];
    for (kw, nv) in n {
        if handled.contains(&kw.as_str()) || ANNOTATIONS.contains(&kw.as_str()) {
            continue;
        }
        if inert && (kw == "definitions" || kw == "$defs") {
            continue;
        }
        if o.get(kw) != Some(nv) {
            push(
                out,
                &format!("{at}/{}", esc(kw)),
                format!("`{kw}` was added or changed; Herald cannot prove that compatible"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation_reports_every_error_with_pointer_and_keyword() {
        let s = compile(&json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "required": ["a", "b"],
            "additionalProperties": false,
            "properties": {"a": {"type": "integer"}, "b": {"type": "string", "format": "date-time"}}
        }))
        .unwrap();
        assert!(s
            .validate(&json!({"a": 1, "b": "2026-11-01T00:00:00Z"}))
            .is_empty());
        let errs = s.validate(&json!({"a": "x", "c": 1}));
        let mut got: Vec<(String, String)> = errs
            .iter()
            .map(|e| (e.pointer.clone(), e.keyword.clone()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("".into(), "additionalProperties".into()),
                ("".into(), "required".into()),
                ("/a".into(), "type".into()),
            ]
        );
        let errs = s.validate(&json!({"a": 1, "b": "yesterday"}));
        assert_eq!(errs[0].pointer, "/b");
        assert_eq!(errs[0].keyword, "format");
    }

    #[test]
    fn drafts_and_bad_schemas() {
        assert!(compile(&json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "prefixItems": [{"type":"string"}]})).is_ok());
        assert!(compile(&json!({"$schema": "http://json-schema.org/draft-04/schema#"})).is_err());
        assert!(compile(&json!({"type": "nonsense"})).is_err());
        assert!(compile(&json!([1])).is_err());
        // No remote references are fetched.
        assert!(compile(&json!({"$ref": "https://example.com/s.json"})).is_err());
    }

    fn verdict(old: Value, new: Value) -> Vec<String> {
        compatibility(&old, &new)
            .into_iter()
            .map(|i| format!("{} {}", i.pointer, i.message))
            .collect()
    }

    #[test]
    fn compatible_changes() {
        let base = json!({"type":"object","required":["a","b"],"additionalProperties":false,
            "properties":{"a":{"type":"string","maxLength":8},"b":{"type":"integer","minimum":0,"enum":[1,2]}}});
        let wider = json!({"type":"object","required":["a"],"description":"new words",
            "properties":{"a":{"type":"string","maxLength":64},"b":{"type":["number","null"],"minimum":-1,"enum":[1,2,3]},
            "c":{"type":"string"}}});
        assert_eq!(verdict(base.clone(), wider.clone()), Vec::<String>::new());
        let narrower = verdict(wider, base);
        assert!(
            narrower.iter().any(|m| m.contains("`b` is now required")),
            "{narrower:?}"
        );
        assert!(
            narrower.iter().any(|m| m.contains("maxLength")),
            "{narrower:?}"
        );
        assert!(
            narrower.iter().any(|m| m.contains("additional properties")),
            "{narrower:?}"
        );
        assert!(
            narrower.iter().any(|m| m.contains("enum value 3")),
            "{narrower:?}"
        );
        assert!(
            narrower.iter().any(|m| m.contains("type `null`")),
            "{narrower:?}"
        );
    }

    #[test]
    fn removed_property_only_matters_when_extras_are_forbidden() {
        let old = json!({"properties":{"a":{"type":"string"},"b":{}}});
        assert!(verdict(old.clone(), json!({"properties":{"a":{"type":"string"}}})).is_empty());
        let v = verdict(
            json!({"additionalProperties":false,"properties":{"a":{},"b":{}}}),
            json!({"additionalProperties":false,"properties":{"a":{}}}),
        );
        assert_eq!(
            v,
            vec![
                "/properties/b property `b` was removed while additional properties are forbidden"
            ]
        );
        let v = verdict(
            json!({"properties":{"a":{}}}),
            json!({"properties":{"a":{"pattern":"^x"}}}),
        );
        assert_eq!(v, vec!["/properties/a/pattern `pattern` was added"]);
        let v = verdict(
            json!({"anyOf":[{"type":"string"}]}),
            json!({"anyOf":[{"type":"integer"}]}),
        );
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn declared_paths() {
        let s = json!({"properties":{"http":{"properties":{"client_ip":{"type":"string"}}}}});
        assert!(declares(&s, &["http", "client_ip"]));
        assert!(!declares(&s, &["http", "ua"]));
        assert!(!declares(&s, &["ip"]));
    }
}
