//! The contract every [`Store`] implementation must satisfy, as async test functions.
//!
//! It exists so that the SQLite store and the PostgreSQL store to come are held to the same
//! behaviour by the same code: each implementation's tests call [`run_all`] on a fresh store.
//! Failures panic with a message naming the broken rule.

use crate::{AppendOutcome, EventQuery, LiveEvent, ScanQuery, Store};
use herald_core::event::{prepare_json, PrepareCtx};
use herald_core::filter::Filter;
use herald_core::matcher::Matcher;
use herald_core::{Access, Limits, PreparedEvent};

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
        default_visibility: None,
        type_visibility: None,
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
        access: Access::all(),
        ..EventQuery::default()
    };
    ids(&store.query(q).await.expect("query"))
}

/// Runs every contract check on an empty store.
pub async fn run_all(store: &dyn Store) {
    append_get_and_duplicates(store).await;
    filters(store).await;
    paging_is_stable_under_inserts(store).await;
    live_and_scan(store).await;
    memory_matcher_agrees_with_queries(store).await;
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
        .get_by_seq(sa, &Access::all())
        .await
        .expect("get")
        .expect("event a by seq");
    assert!(
        got.body.starts_with(&format!("{{\"seq\":{sa},")),
        "body starts with its seq: {}",
        got.body
    );
    let by_id = store
        .get_by_id("/c", "a", &Access::all())
        .await
        .expect("get")
        .expect("event a by id");
    assert_eq!(by_id, got);
    assert!(
        store
            .get_by_id("/other", "a", &Access::all())
            .await
            .expect("get")
            .is_none(),
        "ids are scoped by source"
    );
    assert!(store
        .get_by_seq(999_999, &Access::all())
        .await
        .expect("get")
        .is_none());

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
    let exported = store
        .get_by_seq(sd, &Access::all())
        .await
        .expect("get")
        .expect("d")
        .body;
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
    // Right after the append (a store may answer from events it has not indexed yet), then
    // once everything is committed.
    for when in ["just acknowledged", "committed"] {
        if when == "committed" {
            settle(store).await;
        }
        for (filter, want) in cases {
            let got = list(store, &format!("{filter} -source:/c")).await;
            assert_eq!(&got, want, "filter `{filter}` ({when})");
        }
    }
}

/// Waits until the store has indexed every acknowledged event, where reads may answer from
/// events not indexed yet.
async fn settle(store: &dyn Store) {
    store.settle().await.expect("settle");
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
                access: Access::all(),
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

async fn live_and_scan(store: &dyn Store) {
    let before = store.seq_range().await.expect("seq_range");
    let mut rx = store.subscribe();
    let evs: Vec<_> = (0..5)
        .map(|i| {
            event(&format!(
                r#"{{"id":"l{i}","source":"/live","type":"live.{}","time":"2026-10-20T00:00:0{i}Z"}}"#,
                if i % 2 == 0 { "even" } else { "odd" }
            ))
        })
        .collect();
    let out = store.append(evs).await.expect("append");
    let seqs: Vec<u64> = out
        .iter()
        .map(|o| match o {
            AppendOutcome::Stored(s) => *s,
            other => panic!("must be stored: {other:?}"),
        })
        .collect();
    let batch = rx.recv().await.expect("a live batch after an append");
    let live: Vec<u64> = batch.iter().map(|e| e.seq).collect();
    assert_eq!(
        live, seqs,
        "the live batch holds the stored events in seq order"
    );
    let mut body = String::new();
    batch[0].write_body(&mut body);
    let stored = store
        .get_by_seq(seqs[0], &Access::all())
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(
        body, stored.body,
        "live and stored bodies are the same bytes"
    );

    let after = store.seq_range().await.expect("seq_range");
    assert_eq!(
        after.last,
        before.last + 5,
        "last follows acknowledged appends"
    );
    assert!(after.oldest <= seqs[0]);

    // Catch-up reads: oldest first, filtered, paged, and `scanned_to` tells where to go on.
    let q = |filter: &str, after_seq: u64, limit: usize| ScanQuery {
        filter: Filter::parse(filter, NOW_US).expect("filter"),
        after_seq,
        since_us: None,
        limit,
        access: Access::all(),
    };
    let page = store
        .scan(q("type:live.even", before.last, 2))
        .await
        .expect("scan");
    let got: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
    assert_eq!(got, [seqs[0], seqs[2]]);
    assert!(!page.done, "a full page is not the end");
    assert_eq!(page.scanned_to, seqs[2]);
    let page = store
        .scan(q("type:live.even", page.scanned_to, 2))
        .await
        .expect("scan");
    let got: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
    assert_eq!(got, [seqs[4]]);
    assert!(page.done);
    assert_eq!(
        page.scanned_to, after.last,
        "a last page scans up to the newest event"
    );
    let page = store.scan(q("", after.last, 10)).await.expect("scan");
    assert!(page.events.is_empty() && page.done && page.scanned_to == after.last);
}

/// A tiny deterministic generator (xorshift), so the random cases are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const WORDS: &[&str] = &[
    "timeout", "disk", "Full", "café", "retry", "import", "x_y", "42",
];
const TYPES: &[&str] = &[
    "import.started",
    "import.failed",
    "importer.note",
    "page.viewed",
    "a.b.c",
];
const VALUES: &[&str] = &[
    "1",
    "2",
    "2.5",
    "-3",
    "\"fr\"",
    "\"be\"",
    "\"12\"",
    "\"\"",
    "true",
    "false",
    "null",
    "[1,2]",
    "{\"k\":\"fr\"}",
    "\"Fr\"",
    "\"disk timeout\"",
];

fn random_event(rng: &mut Rng, i: usize) -> String {
    let mut e = format!(
        r#"{{"id":"r{i}","source":"{}","type":"{}","time":"2026-10-{:02}T{:02}:00:00Z","severity":"{}""#,
        rng.pick(&["/importer", "/web", "/test", "https://x.org/a"]),
        rng.pick(TYPES),
        1 + rng.below(28),
        rng.below(24),
        rng.pick(&["debug", "info", "notice", "warning", "error", "critical"]),
    );
    for name in ["subject", "actor", "tenant", "correlationid", "causationid"] {
        if rng.below(3) > 0 {
            e.push_str(&format!(
                r#","{name}":"{}""#,
                rng.pick(&["p-1", "p-2", "user:1", "acme", "beta", "run-1"])
            ));
        }
    }
    if rng.below(2) == 0 {
        e.push_str(&format!(
            r#","visibility":"{}""#,
            rng.pick(&["public", "internal", "private"])
        ));
    }
    match rng.below(4) {
        0 => e.push_str(r#","readers":["user:1","group:ops"]"#),
        1 => e.push_str(r#","readers":["tenant:beta"]"#),
        _ => {}
    }
    let mut data = Vec::new();
    for key in ["country", "rows", "code", "flag", "nested"] {
        if rng.below(3) > 0 {
            data.push(format!(r#""{key}":{}"#, rng.pick(VALUES)));
        }
    }
    if rng.below(2) == 0 {
        data.push(format!(
            r#""note":"{} {}""#,
            rng.pick(WORDS),
            rng.pick(WORDS)
        ));
    }
    if rng.below(5) > 0 {
        e.push_str(&format!(r#","data":{{{}}}"#, data.join(",")));
    }
    if rng.below(3) == 0 {
        e.push_str(&format!(
            r#","context":{{"path":"/{}","n":{}}}"#,
            rng.pick(WORDS),
            rng.below(5)
        ));
    }
    e.push('}');
    e
}

fn random_term(rng: &mut Rng) -> String {
    let neg = if rng.below(4) == 0 { "-" } else { "" };
    let body = match rng.below(14) {
        0 => format!(
            "type:{}",
            rng.pick(&[
                "import.*",
                "import.failed",
                "imp*",
                "page.viewed,a.b.c",
                "a.*"
            ])
        ),
        1 => format!(
            "source:{}",
            rng.pick(&["/web", "/test,/importer", "https*", "/"])
        ),
        2 => format!(
            "severity:{}",
            rng.pick(&[">=error", "<info", "warning", ">notice", "debug,critical"])
        ),
        3 => format!(
            "{}:{}",
            rng.pick(&["subject", "actor", "tenant", "correlationid", "causationid"]),
            rng.pick(&["p-1", "user:1", "acme,beta", "*", "p-*", "run-1"])
        ),
        4 => format!("visibility:{}", rng.pick(&["public", "private,internal"])),
        5 => format!(
            "time:{}",
            rng.pick(&[">=2026-10-15", "<2026-10-10T12:00:00Z", ">2026-10-27"])
        ),
        6..=9 => format!(
            "data.{}:{}",
            rng.pick(&["country", "rows", "code", "flag", "nested", "nested.k", "missing"]),
            rng.pick(&[
                "fr",
                "fr,be",
                "1",
                "2.5",
                ">1",
                "<=2",
                ">=\"a\"",
                "<\"z\"",
                "\"12\"",
                "12",
                "true",
                "*",
                "f*",
                "\"\"",
                "\"[1,2]\"",
                "-3",
                ">-4"
            ]),
        ),
        10 => format!(
            "context.{}:{}",
            rng.pick(&["path", "n"]),
            rng.pick(&["/disk", "/c*", ">2", "*", "3"])
        ),
        11 => format!("seq:{}", rng.pick(&[">3", "<=10", "7"])),
        12 => format!("\"{} {}\"", rng.pick(WORDS), rng.pick(WORDS)),
        _ => rng.pick(WORDS).to_owned(),
    };
    format!("{neg}{body}")
}

/// A random caller: admin, anonymous, or a key with some principals, sometimes restricted
/// to some tenants.
fn random_access(rng: &mut Rng) -> Access {
    match rng.below(6) {
        0 => Access::all(),
        1 => Access::public_only(),
        _ => {
            let mut principals = Vec::new();
            for _ in 0..rng.below(4) {
                principals.push(
                    rng.pick(&[
                        "user:1",
                        "user:2",
                        "group:ops",
                        "tenant:acme",
                        "tenant:beta",
                        "tenant:p-1",
                    ])
                    .to_owned(),
                );
            }
            Access {
                admin: rng.below(8) == 0,
                authenticated: true,
                principals,
                only_tenants: (rng.below(4) == 0)
                    .then(|| vec![rng.pick(&["acme", "beta", "run-1"]).to_owned()]),
                only_subject: (rng.below(5) == 0)
                    .then(|| rng.pick(&["p-1", "p-2", "user:1"]).to_owned()),
            }
        }
    }
}

/// The live stream evaluates filters and access in memory; a listing evaluates them in SQL.
/// On random events, random filters and random callers both must select exactly the same
/// events.
async fn memory_matcher_agrees_with_queries(store: &dyn Store) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut prepared = Vec::new();
    for i in 0..300 {
        prepared.push(event(&random_event(&mut rng, i)));
    }
    let out = store.append(prepared.clone()).await.expect("append");
    let live: Vec<LiveEvent> = prepared
        .into_iter()
        .zip(out)
        .map(|(ev, o)| match o {
            AppendOutcome::Stored(seq) => LiveEvent::new(seq, ev),
            other => panic!("random event not stored: {other:?}"),
        })
        .collect();
    let mut checked_nonempty = 0;
    // Three times: right after the append (a store may answer from events it has not
    // indexed yet), once they are indexed (text terms scan events the full-text index does
    // not hold yet), and once the full-text index has caught up.
    for round in 0..3 {
        if round == 1 {
            settle(store).await;
        }
        if round == 2 {
            tokio::time::sleep(std::time::Duration::from_millis(700)).await;
            settle(store).await;
        }
        for _ in 0..400 {
            let n = 1 + rng.below(3);
            let text: Vec<String> = (0..n).map(|_| random_term(&mut rng)).collect();
            let text = text.join(" ");
            let filter = match Filter::parse(&text, NOW_US) {
                Ok(f) => f,
                Err(e) => panic!("generated filter `{text}` does not parse: {e}"),
            };
            let matcher = Matcher::new(filter.clone());
            let access = random_access(&mut rng);
            let mut want: Vec<u64> = live
                .iter()
                .filter(|e| matcher.matches(e) && access.can_read(&e.event))
                .map(|e| e.seq)
                .collect();
            want.sort_unstable();
            let first = live[0].seq;
            let last = live[live.len() - 1].seq;
            let page = store
                .query(EventQuery {
                    filter: Filter::parse(&format!("{text} seq:>={first} seq:<={last}"), NOW_US)
                        .expect("filter"),
                    limit: 1000,
                    access: access.clone(),
                    ..EventQuery::default()
                })
                .await
                .expect("query");
            let mut got: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
            got.sort_unstable();
            if !want.is_empty() && want.len() < live.len() {
                checked_nonempty += 1;
            }
            if got != want {
                let only_sql: Vec<&String> = got
                    .iter()
                    .filter(|s| !want.contains(s))
                    .filter_map(|s| live.iter().find(|e| e.seq == *s))
                    .map(|e| &e.event.body_tail)
                    .collect();
                let only_mem: Vec<&String> = want
                    .iter()
                    .filter(|s| !got.contains(s))
                    .filter_map(|s| live.iter().find(|e| e.seq == *s))
                    .map(|e| &e.event.body_tail)
                    .collect();
                panic!(
                    "filter `{text}` as {access:?} (round {round}): SQL and memory disagree\nonly SQL: {only_sql:#?}\nonly memory: {only_mem:#?}"
                );
            }
        }
    }
    assert!(
        checked_nonempty > 200,
        "the random filters must mostly select some but not all events ({checked_nonempty})"
    );
}
