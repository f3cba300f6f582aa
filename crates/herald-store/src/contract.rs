//! The contract every [`Store`] implementation must satisfy, as async test functions.
//!
//! It exists so that the SQLite store and the PostgreSQL store to come are held to the same
//! behaviour by the same code: each implementation's tests call [`run_all`] on a fresh store.
//! Failures panic with a message naming the broken rule.

use crate::{AppendOutcome, EventQuery, Store};
use herald_core::event::{prepare_json, PrepareCtx};
use herald_core::filter::Filter;
use herald_core::{Limits, PreparedEvent};

/// "Now" for the contract's events: 2026-11-01T00:00:00Z.
pub const NOW_US: i64 = 1_793_491_200_000_000;

/// Prepares an event from JSON as the server would, or panics.
pub fn event(json: &str) -> PreparedEvent {
    let limits = Limits::default();
    let mut counter = 0u64;
    let mut new_id = || {
        counter += 1;
        format!("generated-{counter}")
    };
    let mut ctx = PrepareCtx {
        limits: &limits,
        now_us: NOW_US,
        now_text: "2026-11-01T00:00:00.000000Z",
        require_specversion: false,
        new_id: &mut new_id,
    };
    prepare_json(json, "", &mut ctx).unwrap_or_else(|r| panic!("test event {json} rejected: {r:?}"))
}

fn ids(page: &crate::Page) -> Vec<String> {
    page.events
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.body).expect("stored body is JSON");
            v["id"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

async fn list(store: &dyn Store, filter: &str) -> Vec<String> {
    let q = EventQuery {
        filter: Filter::parse(filter, NOW_US).unwrap_or_else(|e| panic!("{filter}: {e}")),
        limit: 1000,
        ..EventQuery::default()
    };
    ids(&store.query(q).await.expect("query"))
}

/// Runs every contract check on an empty store.
pub async fn run_all(store: &dyn Store) {
    append_get_and_duplicates(store).await;
    filters(store).await;
    paging_is_stable_under_inserts(store).await;
}

async fn append_get_and_duplicates(store: &dyn Store) {
    let a = event(
        r#"{"id":"a","source":"/c","type":"t.one","time":"2026-10-01T00:00:00Z","data":{"x":1}}"#,
    );
    let b = event(r#"{"id":"b","source":"/c","type":"t.two","time":"2026-10-01T00:00:01Z"}"#);
    let out = store.append(vec![a.clone(), b]).await.expect("append");
    let (AppendOutcome::Stored(sa), AppendOutcome::Stored(sb)) = (out[0], out[1]) else {
        panic!("new events must be stored, got {out:?}");
    };
    assert!(sb > sa, "seq must increase within a batch");

    let got = store
        .get_by_seq(sa)
        .await
        .expect("get")
        .expect("event a by seq");
    assert!(
        got.body.starts_with(&format!("{{\"seq\":{sa},")),
        "body starts with its seq: {}",
        got.body
    );
    let by_id = store
        .get_by_id("/c", "a")
        .await
        .expect("get")
        .expect("event a by id");
    assert_eq!(by_id, got);
    assert!(
        store.get_by_id("/other", "a").await.expect("get").is_none(),
        "ids are scoped by source"
    );
    assert!(store.get_by_seq(999_999).await.expect("get").is_none());

    // The same event again (even reformatted) is a duplicate; other content is a conflict;
    // a repeat inside one batch is a duplicate of the first.
    let again = event(
        r#"{"source":"/c","id":"a","type":"t.one","time":"2026-10-01T00:00:00Z","data":{ "x" : 1 }}"#,
    );
    let changed = event(
        r#"{"id":"a","source":"/c","type":"t.one","time":"2026-10-01T00:00:00Z","data":{"x":2}}"#,
    );
    let other_time = event(
        r#"{"id":"a","source":"/c","type":"t.one","time":"2026-10-01T00:00:09Z","data":{"x":1}}"#,
    );
    let no_time = event(r#"{"id":"a","source":"/c","type":"t.one","data":{"x":1}}"#);
    let c = event(r#"{"id":"c","source":"/c","type":"t.one","time":"2026-10-01T00:00:02Z"}"#);
    let out = store
        .append(vec![again, changed, other_time, no_time, c.clone(), c])
        .await
        .expect("append");
    assert_eq!(
        out[0],
        AppendOutcome::Duplicate(sa),
        "same content, reformatted"
    );
    assert_eq!(out[1], AppendOutcome::Conflict(sa), "other data");
    assert_eq!(out[2], AppendOutcome::Conflict(sa), "other time");
    assert_eq!(out[3], AppendOutcome::Duplicate(sa), "a retry without time");
    let AppendOutcome::Stored(sc) = out[4] else {
        panic!("c must be stored: {out:?}")
    };
    assert_eq!(
        out[5],
        AppendOutcome::Duplicate(sc),
        "a repeat within one batch"
    );

    // An event stored without a time, exported and imported again, is a duplicate.
    let d = event(r#"{"id":"d","source":"/c","type":"t.one"}"#);
    let AppendOutcome::Stored(sd) = store.append(vec![d]).await.expect("append")[0] else {
        panic!("d must be stored")
    };
    let exported = store.get_by_seq(sd).await.expect("get").expect("d").body;
    let out = store.append(vec![event(&exported)]).await.expect("append");
    assert_eq!(
        out[0],
        AppendOutcome::Duplicate(sd),
        "re-import of an export"
    );
}

async fn filters(store: &dyn Store) {
    let evs = [
        r#"{"id":"f1","source":"/importer","type":"import.started","time":"2026-10-31T10:00:00Z","tenant":"acme","actor":"user:1","severity":"info","correlationid":"run-1","data":{"country":"fr","rows":10}}"#,
        r#"{"id":"f2","source":"/importer","type":"import.failed","time":"2026-10-31T11:00:00Z","tenant":"acme","actor":"user:1","severity":"error","correlationid":"run-1","causationid":"f1","subject":"p-1","data":{"country":"be","rows":200,"reason":"disk timeout"}}"#,
        r#"{"id":"f3","source":"/test","type":"import.failed","time":"2026-10-31T12:00:00Z","tenant":"beta","severity":"critical","data":{"country":"fr"},"context":{"path":"/x"}}"#,
        r#"{"id":"f4","source":"/web","type":"product.edited","time":"2026-10-31T13:00:00Z","tenant":"acme","severity":"warning","visibility":"public","subject":"p-2","data":{"country":"de","rows":50}}"#,
        r#"{"id":"f5","source":"/web","type":"importer.note","time":"2026-10-20T13:00:00Z","severity":"debug"}"#,
    ];
    store
        .append(evs.iter().map(|e| event(e)).collect())
        .await
        .expect("append");
    let cases: &[(&str, &[&str])] = &[
        ("type:import.*", &["f3", "f2", "f1"]),
        ("type:import.failed", &["f3", "f2"]),
        ("type:import.failed,product.edited", &["f4", "f3", "f2"]),
        ("type:import*", &["f3", "f2", "f1", "f5"]),
        ("severity:>=error", &["f3", "f2"]),
        ("severity:<info", &["f5"]),
        ("tenant:acme -source:/test type:import.*", &["f2", "f1"]),
        ("-tenant:acme type:import*", &["f3", "f5"]),
        ("data.country:fr,be", &["f3", "f2", "f1"]),
        ("data.rows:>=50", &["f4", "f2"]),
        ("data.rows:>=50 -data.country:de", &["f2"]),
        ("context.path:/x", &["f3"]),
        ("data.reason:* tenant:acme", &["f2"]),
        ("-data.rows:* source:/test,/web", &["f3", "f5"]),
        ("subject:p-*", &["f4", "f2"]),
        ("actor:user:1 correlationid:run-1", &["f2", "f1"]),
        ("causationid:f1", &["f2"]),
        ("visibility:public", &["f4"]),
        ("timeout", &["f2"]),
        ("\"disk timeout\" severity:error", &["f2"]),
        ("-timeout type:import.failed", &["f3"]),
        (
            "time:>=2026-10-31T11:00:00Z time:<2026-10-31T13:00:00Z",
            &["f3", "f2"],
        ),
        ("id:f4,f5", &["f4", "f5"]),
    ];
    for (filter, want) in cases {
        let got = list(store, &format!("{filter} -source:/c")).await;
        assert_eq!(&got, want, "filter `{filter}`");
    }
}

async fn paging_is_stable_under_inserts(store: &dyn Store) {
    let mk = |i: usize, minute: usize| {
        event(&format!(
            r#"{{"id":"p{i}","source":"/pager","type":"page.test","time":"2026-10-15T00:{minute:02}:00Z"}}"#
        ))
    };
    // Several events share a time: ties are broken by seq.
    store
        .append((0..25).map(|i| mk(i, i / 3)).collect())
        .await
        .expect("append");
    let filter = Filter::parse("source:/pager", NOW_US).expect("filter");
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut round = 0;
    loop {
        let page = store
            .query(EventQuery {
                filter: filter.clone(),
                limit: 7,
                cursor,
                ..EventQuery::default()
            })
            .await
            .expect("query");
        seen.extend(ids(&page));
        // Newer events arrive between pages; they sort before the cursor and must not show up.
        store
            .append(vec![mk(100 + round, 59)])
            .await
            .expect("append");
        round += 1;
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).rev().map(|i| format!("p{i}")).collect();
    assert_eq!(
        seen, expected,
        "keyset paging must visit every event once, newest first"
    );
}
