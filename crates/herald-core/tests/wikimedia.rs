//! Conformance against real event schemas: the Wikimedia Event Platform corpus in
//! `tests/corpus/wikimedia-schemas` (45 event schemas at their latest version, fragments,
//! older versions, 115 examples; see its README for provenance and licence).
//!
//! Checks that every example validates against its materialized schema; that systematically
//! mutated examples are rejected with the right keyword and pointer; and Herald's
//! compatibility checker's verdict on each minor/patch upgrade of the corpus's history,
//! next to the corpus's own rule, with the reasoning for each disagreement.

use herald_core::schema::{compatibility, compile};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/wikimedia-schemas")
}

fn load(rel: &str) -> Value {
    let p = corpus().join(rel);
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

struct Entry {
    repo: String,
    title: String,
    version: semver::Version,
    file: String,
    role: String,
    examples_file: Option<String>,
}

fn index() -> Vec<Entry> {
    let idx = load("index.json");
    idx["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Entry {
            repo: s["repository"].as_str().unwrap().to_owned(),
            title: s["title"].as_str().unwrap().to_owned(),
            version: semver::Version::parse(s["version"].as_str().unwrap()).unwrap(),
            file: s["file"].as_str().unwrap().to_owned(),
            role: s["role"].as_str().unwrap().to_owned(),
            examples_file: s["examples_file"].as_str().map(str::to_owned),
        })
        .collect()
}

#[test]
fn every_example_validates_against_its_schema() {
    let mut schemas = 0;
    let mut examples = 0;
    for e in index() {
        let schema = load(&e.file);
        let compiled = compile(&schema).unwrap_or_else(|err| panic!("{}: {err}", e.file));
        schemas += 1;
        let Some(ex) = &e.examples_file else { continue };
        for (i, example) in load(ex).as_array().unwrap().iter().enumerate() {
            let errs = compiled.validate(example);
            assert!(errs.is_empty(), "{} example {i}: {errs:?}", e.file);
            examples += 1;
        }
    }
    assert_eq!(schemas, 108, "materialized schema files");
    assert_eq!(examples, 115, "examples");
}

/// A value of another JSON type than `ty`.
fn wrong_value(ty: &str) -> Value {
    match ty {
        "string" => json!(12345),
        _ => json!("not-a-number-or-object"),
    }
}

#[test]
fn mutated_examples_are_rejected_with_the_right_pointer() {
    let mut removed = 0;
    let mut retyped = 0;
    let mut extra = 0;
    for e in index() {
        let Some(ex) = &e.examples_file else { continue };
        let schema = load(&e.file);
        let compiled = compile(&schema).unwrap();
        let props = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for example in load(ex).as_array().unwrap() {
            let obj = example.as_object().unwrap();
            // 1. Each required member removed: `required` at the object ("").
            for r in schema["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap();
                if !obj.contains_key(r) {
                    continue;
                }
                let mut m = obj.clone();
                m.remove(r);
                let errs = compiled.validate(&Value::Object(m));
                assert!(
                    errs.iter()
                        .any(|x| x.keyword == "required" && x.pointer.is_empty()),
                    "{} without {r}: {errs:?}",
                    e.file
                );
                removed += 1;
            }
            // 2. Each member with one declared type given another: `type` at `/member`.
            for (name, p) in &props {
                let Some(ty) = p["type"].as_str() else {
                    continue;
                };
                if !obj.contains_key(name) || ty == "null" {
                    continue;
                }
                let mut m = obj.clone();
                m.insert(name.clone(), wrong_value(ty));
                let errs = compiled.validate(&Value::Object(m));
                let want = format!("/{}", name.replace('~', "~0").replace('/', "~1"));
                assert!(
                    errs.iter()
                        .any(|x| x.keyword == "type" && x.pointer == want),
                    "{} with {name} retyped: {errs:?}",
                    e.file
                );
                retyped += 1;
            }
            // 3. An extra member where additional properties are forbidden, at the top and
            // in each nested object that forbids them.
            if schema["additionalProperties"] == json!(false) {
                let mut m = obj.clone();
                m.insert("herald_unexpected".into(), json!(1));
                let errs = compiled.validate(&Value::Object(m));
                assert!(
                    errs.iter()
                        .any(|x| x.keyword == "additionalProperties" && x.pointer.is_empty()),
                    "{}: {errs:?}",
                    e.file
                );
                extra += 1;
            }
            for (name, p) in &props {
                if p["additionalProperties"] != json!(false) {
                    continue;
                }
                let Some(inner) = obj.get(name).and_then(Value::as_object) else {
                    continue;
                };
                let mut m = obj.clone();
                let mut inner = inner.clone();
                inner.insert("herald_unexpected".into(), json!(1));
                m.insert(name.clone(), Value::Object(inner));
                let errs = compiled.validate(&Value::Object(m));
                assert!(
                    errs.iter()
                        .any(|x| x.keyword == "additionalProperties"
                            && x.pointer == format!("/{name}")),
                    "{} nested {name}: {errs:?}",
                    e.file
                );
                extra += 1;
            }
        }
    }
    eprintln!("mutations: {removed} required removed, {retyped} retyped, {extra} extra members");
    assert!(
        removed > 200 && retyped > 200 && extra > 50,
        "{removed} {retyped} {extra}"
    );
}

/// Every minor/patch upgrade in the corpus's history (consecutive versions, same major).
fn upgrades() -> Vec<(String, String, String, Vec<String>)> {
    let mut by: BTreeMap<(String, String), Vec<Entry>> = BTreeMap::new();
    for e in index() {
        if e.role == "history" || e.role == "selected" || e.role == "fragment" {
            by.entry((e.repo.clone(), e.title.clone()))
                .or_default()
                .push(e);
        }
    }
    let mut out = Vec::new();
    for ((_, title), mut versions) in by {
        versions.sort_by(|a, b| a.version.cmp(&b.version));
        for w in versions.windows(2) {
            if w[0].version.major != w[1].version.major || w[0].version.major == 0 {
                continue;
            }
            let reasons = compatibility(&load(&w[0].file), &load(&w[1].file))
                .into_iter()
                .map(|i| format!("{} {}", i.pointer, i.message))
                .collect();
            out.push((
                title.clone(),
                w[0].version.to_string(),
                w[1].version.to_string(),
                reasons,
            ));
        }
    }
    out
}

/// Herald's verdict on every minor/patch upgrade of the corpus, next to the corpus's own
/// rule (jsonschema-tools: within a major version every old keyword must stay with an equal
/// value, `required` must stay identical, `enum` may only grow; its skip-lists name the
/// upgrades that broke it). Herald's rule is "the new version accepts every event the old
/// one accepted", so they differ where the two rules differ; each difference says why.
#[test]
fn compatibility_verdicts_on_the_corpus_history() {
    // (title, from, to, Herald compatible?, corpus compatible?, reasoning for a difference)
    let expected: &[(&str, &str, &str, bool, bool, &str)] = &[
        ("error", "2.0.0", "2.1.0", true, true, ""),
        ("fragment/common", "1.0.0", "1.1.0", false, true,
         "1.1.0 adds `additionalProperties: false`: events with extra members, valid under 1.0.0, \
          fail 1.1.0. The corpus's rule only compares keywords the old version had, so a new \
          restricting keyword passes it."),
        ("mediawiki/page/change", "1.0.0", "1.1.0", true, true, ""),
        ("mediawiki/page/change", "1.1.0", "1.2.0", true, false,
         "a required field became optional: every old event stays valid, which the issue lists \
          as compatible; the corpus requires identical `required` sets."),
        ("mediawiki/revision/create", "1.0.0", "1.1.0", true, true, ""),
        ("mediawiki/revision/create", "1.1.0", "1.2.0", true, true, ""),
        ("analytics/legacy/editattemptstep", "1.0.0", "1.1.0", true, true, ""),
        ("analytics/legacy/editattemptstep", "1.1.0", "1.2.0", true, true, ""),
        ("analytics/legacy/editattemptstep", "1.2.0", "1.3.0", true, true, ""),
        ("analytics/legacy/editattemptstep", "1.3.0", "1.3.1", true, true, ""),
        ("analytics/legacy/editattemptstep", "1.3.1", "1.3.2", true, true, ""),
        ("analytics/legacy/editattemptstep", "1.3.2", "1.4.0", true, true, ""),
        ("analytics/legacy/editattemptstep", "1.4.0", "1.4.1", true, true, ""),
        ("analytics/legacy/editattemptstep", "1.4.1", "1.5.0", false, false, ""),
        ("analytics/legacy/editattemptstep", "2.0.0", "2.0.1", true, true, ""),
        ("analytics/legacy/editattemptstep", "2.0.1", "2.0.2", true, true, ""),
        ("analytics/legacy/editattemptstep", "2.0.2", "2.0.3", true, true, ""),
        ("analytics/legacy/editattemptstep", "2.0.3", "2.1.0", true, true, ""),
        ("analytics/product_metrics/web/base", "1.0.0", "1.1.0", true, true, ""),
        ("analytics/product_metrics/web/base", "1.1.0", "1.2.0", true, true, ""),
        ("analytics/product_metrics/web/base", "1.2.0", "1.3.0", false, false,
         "same verdict, different reason: the corpus flags `action_context` maxLength 64 -> \
          8192, a widening Herald accepts; Herald flags `element_id`, where 1.3.0 fixes the \
          typo `mexLength: 64` (ignored by validators) into a real `maxLength: 64`, so long \
          ids valid under 1.2.0 now fail."),
        ("analytics/test", "1.0.0", "1.1.0", true, false,
         "`http.client_ip` was removed where additional properties are allowed, so events \
          carrying it stay valid; the corpus requires every old keyword to remain."),
        ("fragment/analytics/common", "1.0.0", "1.1.0", true, false,
         "same removal of `http.client_ip` as analytics/test 1.1.0."),
        ("fragment/analytics/legacy/eventcapsule", "1.1.0", "1.3.0", true, true, ""),
    ];
    let got = upgrades();
    assert_eq!(got.len(), expected.len(), "upgrades: {got:#?}");
    for ((t, a, b, reasons), (et, ea, eb, herald_ok, corpus_ok, why)) in got.iter().zip(expected) {
        assert_eq!((t.as_str(), a.as_str(), b.as_str()), (*et, *ea, *eb));
        assert_eq!(
            reasons.is_empty(),
            *herald_ok,
            "{t} {a} -> {b}: Herald's reasons: {reasons:?}"
        );
        // Every difference from the corpus's rule, or a difference in reason, is explained.
        if herald_ok != corpus_ok || !herald_ok {
            assert!(
                herald_ok == corpus_ok || !why.is_empty(),
                "{t} {a} -> {b} differs from the corpus without a reason"
            );
        }
    }
    let editattempt = &got.iter().find(|u| u.2 == "1.5.0").unwrap().3;
    assert!(
        editattempt
            .iter()
            .any(|r| r.contains("`is_anon` was removed")),
        "{editattempt:?}"
    );
    let web = &got
        .iter()
        .find(|u| u.0 == "analytics/product_metrics/web/base" && u.2 == "1.3.0")
        .unwrap()
        .3;
    assert_eq!(
        web,
        &vec!["/properties/element_id/maxLength `maxLength: 64` was added".to_string()]
    );
}
