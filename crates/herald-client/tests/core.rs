//! The tracker without a server: contexts under concurrency, processors and their failure
//! policies, routing trees, overflow policies, operations and counters.

use herald_client::processor::{
    from_fn, DropReason, Enrich, Hash, OnFailure, ProcessorError, Redact, Sample, TypeFilter,
};
use herald_client::{Backend, Event, MemoryBackend, Overflow, Route, Tracker, Verdict};
use serde_json::json;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_never_leak_between_1000_interleaved_tasks() {
    let (backend, seen) = MemoryBackend::new();
    let tracker = Tracker::builder("/test")
        .capacity(1 << 20)
        .backend(backend)
        .build()
        .unwrap();
    let base = tracker.with_context(json!({"service": "lms"}));
    let mut tasks = Vec::new();
    for i in 0..1000u64 {
        let t = base.clone();
        tasks.push(tokio::spawn(async move {
            let t2 = t.clone();
            t.scope(json!({"request": i, "user": format!("u{i}")}), async move {
                for step in 0..5u64 {
                    // Interleave: every task yields between its emits.
                    tokio::task::yield_now().await;
                    if step == 2 {
                        // A nested scope adds a key and shadows one, only inside.
                        t2.scope(json!({"phase": "inner", "user": "shadow"}), async {
                            tokio::task::yield_now().await;
                            t2.emit("req.inner", json!({"request": i, "step": step}));
                        })
                        .await;
                    }
                    t2.emit("req.step", json!({"request": i, "step": step}));
                }
            })
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(tracker.flush_async(WAIT).await, 0);
    let events = seen.events();
    assert_eq!(events.len(), 6000);
    for e in &events {
        let data = e.data.as_ref().unwrap();
        let i = data["request"].as_u64().unwrap();
        assert_eq!(e.context.get("request"), Some(&json!(i)), "{}", e.to_json());
        assert_eq!(e.context.get("service"), Some(&json!("lms")));
        if e.ty == "req.inner" {
            assert_eq!(e.context.get("phase"), Some(&json!("inner")));
            assert_eq!(e.context.get("user"), Some(&json!("shadow")));
        } else {
            assert_eq!(e.context.get("phase"), None, "{}", e.to_json());
            assert_eq!(e.context.get("user"), Some(&json!(format!("u{i}"))));
        }
    }
    // Outside any scope, nothing of the tasks remains.
    base.emit("after", json!({}));
    tracker.flush_async(WAIT).await;
    let last = seen.events().pop().unwrap();
    assert_eq!(
        serde_json::to_value(&last.context).unwrap(),
        json!({"service": "lms"})
    );
}

#[test]
fn contexts_are_isolated_between_threads_too() {
    let (backend, seen) = MemoryBackend::new();
    let tracker = Tracker::builder("/test").backend(backend).build().unwrap();
    std::thread::scope(|s| {
        for i in 0..8 {
            let t = tracker.clone();
            s.spawn(move || {
                t.scope_sync(json!({"thread": i}), || {
                    for _ in 0..100 {
                        t.emit("th.x", json!({"thread": i}));
                    }
                })
            });
        }
    });
    tracker.flush(WAIT);
    let events = seen.events();
    assert_eq!(events.len(), 800);
    for e in events {
        assert_eq!(
            e.context.get("thread"),
            Some(&e.data.as_ref().unwrap()["thread"])
        );
    }
}

fn tracker_with(route: Route) -> Tracker {
    Tracker::builder("/test").root(route).build().unwrap()
}

#[test]
fn processors_keep_replace_and_drop() {
    let (backend, seen) = MemoryBackend::new();
    let root = Route::new("root")
        .process(TypeFilter::deny(["debug.*"]))
        .process(from_fn("upper", OnFailure::Drop, |e| {
            if e.ty == "rename.me" {
                let mut e = e.clone();
                e.ty = "renamed.event".into();
                Ok(Verdict::Replace(e))
            } else if e.ty == "drop.me" {
                Ok(Verdict::Drop(DropReason::Filtered))
            } else {
                Ok(Verdict::Keep)
            }
        }))
        .to(backend);
    let t = tracker_with(root);
    for ty in [
        "keep.me",
        "rename.me",
        "drop.me",
        "debug.noise",
        "debugx.kept",
    ] {
        t.emit(ty, json!({}));
    }
    t.flush(WAIT);
    let types: Vec<String> = seen.events().iter().map(|e| e.ty.to_string()).collect();
    assert_eq!(types, ["keep.me", "renamed.event", "debugx.kept"]);
    let c = t.counters();
    assert_eq!(c.dropped.filtered, 2);
    assert_eq!(c.emitted, 5);
    assert_eq!(c.sent, 3);
}

#[test]
fn a_failing_redaction_drops_the_event_and_a_failing_enrichment_passes_it() {
    let (backend, seen) = MemoryBackend::new();
    let root = Route::new("root")
        // A redaction that fails (error) and one that panics: both drop by default.
        .process(from_fn("redact-err", OnFailure::Drop, |e| {
            if e.ty == "fail.error" {
                Err(ProcessorError("cannot parse".into()))
            } else {
                Ok(Verdict::Keep)
            }
        }))
        .process(Redact::remove(["data.secret"]))
        .process(from_fn("redact-panic", OnFailure::Drop, |e| {
            if e.ty == "fail.panic" {
                panic!("boom");
            }
            Ok(Verdict::Keep)
        }))
        .process(from_fn("enrich-fail", OnFailure::Pass, |e| {
            if e.ty == "fail.enrich" {
                return Err("lookup failed".into());
            }
            Ok(Verdict::Keep)
        }))
        .to(backend);
    let t = tracker_with(root);
    t.emit("fail.error", json!({"secret": "s1"}));
    t.emit("fail.panic", json!({"secret": "s2"}));
    t.emit("fail.enrich", json!({"secret": "s3", "x": 1}));
    t.emit("ok.event", json!({"secret": "s4", "x": 2}));
    t.flush(WAIT);
    let events = seen.events();
    assert_eq!(events.len(), 2);
    for e in &events {
        let json = e.to_json();
        for secret in ["s1", "s2", "s3", "s4"] {
            assert!(
                !json.contains(&format!("\"{secret}\"")),
                "no secret leaves: {json}"
            );
        }
        assert!(e.data.as_ref().unwrap().get("secret").is_none());
    }
    let c = t.counters();
    assert_eq!(c.dropped.processor_failed, 2);
    assert_eq!(c.processor_errors, 1);
}

#[test]
fn builtin_processors() {
    let (backend, seen) = MemoryBackend::new();
    let root = Route::new("root")
        .process(TypeFilter::allow(["course.*", "user.*"]))
        .process(Sample::new(0.5).by("actor"))
        .process(Redact::mask(["data.email", "context.ip"]))
        .process(Hash::new(b"k", ["data.user"]))
        .process(Enrich::context(json!({"region": "eu", "ip": "kept"})))
        .to(backend);
    let t = tracker_with(root).with_context(json!({"ip": "10.0.0.1"}));
    for i in 0..200 {
        t.event("course.viewed")
            .actor(format!("a{}", i % 20))
            .data(json!({"email": "x@y", "user": "alice", "i": i}))
            .emit();
    }
    t.emit("mycourse.viewed", json!({}));
    t.flush(WAIT);
    let events = seen.events();
    let c = t.counters();
    assert_eq!(c.dropped.filtered, 1, "allowlist is anchored");
    assert_eq!(events.len() as u64 + c.dropped.sampled, 200);
    // Deterministic by actor: an actor is either always in or always out.
    let kept: std::collections::BTreeSet<_> =
        events.iter().map(|e| e.actor.clone().unwrap()).collect();
    assert!(
        kept.len() > 3 && kept.len() < 17,
        "about half: {}",
        kept.len()
    );
    assert_eq!(events.len(), kept.len() * 10);
    let e = &events[0];
    let d = e.data.as_ref().unwrap();
    assert_eq!(d["email"], "[redacted]");
    assert_eq!(d["user"].as_str().unwrap().len(), 32);
    assert_ne!(d["user"], "alice");
    assert_eq!(e.context.get("ip"), Some(&json!("[redacted]")));
    assert_eq!(e.context.get("region"), Some(&json!("eu")));
    // The same value hashes the same way in every event.
    assert!(events
        .iter()
        .all(|x| x.data.as_ref().unwrap()["user"] == d["user"]));
}

#[test]
fn routing_tree_shares_unchanged_events_and_copies_changed_ones() {
    let (all, all_seen) = MemoryBackend::new();
    let (audit, audit_seen) = MemoryBackend::new();
    let (redacted, redacted_seen) = MemoryBackend::new();
    let (errors, errors_seen) = MemoryBackend::new();
    let root = Route::new("root")
        .to(all)
        .route(
            Route::new("audit")
                .process(TypeFilter::allow(["audit.*"]))
                .to(audit)
                .route(
                    Route::new("audit-redacted")
                        .process(Redact::remove(["data.who"]))
                        .to(redacted),
                ),
        )
        .route(
            Route::new("errors")
                .process(from_fn("sev", OnFailure::Drop, |e| {
                    Ok(match e.severity {
                        Some(herald_wire::Severity::Error) => Verdict::Keep,
                        _ => Verdict::Drop(DropReason::Filtered),
                    })
                }))
                .to(errors),
        );
    let t = tracker_with(root);
    t.emit("audit.login", json!({"who": "alice"}));
    t.event("job.failed")
        .severity(herald_wire::Severity::Error)
        .emit();
    t.emit("page.viewed", json!({}));
    t.flush(WAIT);
    let all = all_seen.events();
    let audit = audit_seen.events();
    let red = redacted_seen.events();
    assert_eq!(all.len(), 3);
    assert_eq!(audit.len(), 1);
    assert_eq!(errors_seen.len(), 1);
    assert!(
        Arc::ptr_eq(&all[0], &audit[0]),
        "no copy for a branch that keeps it"
    );
    assert!(!Arc::ptr_eq(&audit[0], &red[0]), "a copy where it changed");
    assert_eq!(red[0].data, Some(json!({})));
    assert_eq!(
        all[0].data,
        Some(json!({"who": "alice"})),
        "others unchanged"
    );
    assert_eq!(red[0].id, all[0].id, "the copy keeps the id");
}

/// A backend that holds the worker until released, to fill the queue.
struct Gate {
    open: Arc<(Mutex<bool>, Condvar)>,
    inner: MemoryBackend,
}

impl Backend for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    fn start(&mut self, s: Arc<herald_client::Stats>) -> Result<(), herald_client::Error> {
        self.inner.start(s)
    }
    fn send(&mut self, events: &[Arc<Event>]) {
        let (m, c) = &*self.open;
        let mut g = m.lock().unwrap();
        while !*g {
            g = c.wait(g).unwrap();
        }
        self.inner.send(events);
    }
}

fn gated(
    overflow: Overflow,
) -> (
    Tracker,
    Arc<(Mutex<bool>, Condvar)>,
    herald_client::MemoryEvents,
) {
    let open = Arc::new((Mutex::new(false), Condvar::new()));
    let (inner, seen) = MemoryBackend::new();
    let t = Tracker::builder("/test")
        .capacity(10)
        .overflow(overflow)
        .backend(Gate {
            open: open.clone(),
            inner,
        })
        .build()
        .unwrap();
    (t, open, seen)
}

fn release(open: &(Mutex<bool>, Condvar)) {
    *open.0.lock().unwrap() = true;
    open.1.notify_all();
}

fn fill(t: &Tracker) {
    // The first event is taken by the worker, which then waits at the gate.
    t.emit("q.first", json!({"i": -1}));
    let start = Instant::now();
    while t.counters().processed < 1 && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(1));
    }
    for i in 0..30 {
        t.emit("q.x", json!({ "i": i }));
    }
}

fn indexes(seen: &herald_client::MemoryEvents) -> Vec<i64> {
    seen.events()
        .iter()
        .map(|e| e.data.as_ref().unwrap()["i"].as_i64().unwrap())
        .collect()
}

#[test]
fn overflow_drop_newest() {
    let (t, open, seen) = gated(Overflow::DropNewest);
    fill(&t);
    let c = t.counters();
    assert_eq!(c.dropped.queue_full, 20);
    assert_eq!(c.queued, 10);
    release(&open);
    t.flush(WAIT);
    assert_eq!(indexes(&seen), [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(t.counters().emitted, 31);
}

#[test]
fn overflow_drop_oldest() {
    let (t, open, seen) = gated(Overflow::DropOldest);
    fill(&t);
    assert_eq!(t.counters().dropped.queue_full, 20);
    release(&open);
    t.flush(WAIT);
    assert_eq!(indexes(&seen), [-1, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29]);
    assert_eq!(t.counters().emitted, 31);
}

#[test]
fn overflow_block_with_timeout() {
    let (t, open, seen) = gated(Overflow::Block(Duration::from_millis(20)));
    let start = Instant::now();
    fill(&t);
    // 20 emits found no room and each waited its timeout before giving up (counted).
    assert!(start.elapsed() >= Duration::from_millis(20 * 20));
    assert_eq!(t.counters().dropped.queue_full, 20);
    release(&open);
    t.flush(WAIT);
    assert_eq!(seen.len(), 11);

    // With room made before the timeout, a blocked emit gets in.
    let (t, open, seen) = gated(Overflow::Block(Duration::from_secs(5)));
    t.emit("q.first", json!({"i": -1}));
    while t.counters().processed < 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    for i in 0..10 {
        t.emit("q.x", json!({ "i": i }));
    }
    let o = open.clone();
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        release(&o);
    });
    let start = Instant::now();
    t.emit("q.late", json!({"i": 10}));
    assert!(start.elapsed() >= Duration::from_millis(90));
    h.join().unwrap();
    t.flush(WAIT);
    assert_eq!(indexes(&seen), (-1..=10).collect::<Vec<_>>());
    assert_eq!(t.counters().dropped.queue_full, 0);
}

#[test]
fn operations_link_started_completed_failed() {
    let (backend, seen) = MemoryBackend::new();
    let t = Tracker::builder("/test").backend(backend).build().unwrap();
    let op = t.operation("import", json!({"file": "a.csv"}));
    op.tracker().emit("import.row", json!({"n": 1}));
    let child = op.child("import.batch", json!({}));
    child.complete(json!({"rows": 10}));
    {
        let _abandoned = op.child("import.cleanup", json!({}));
    }
    op.fail("disk full");
    t.flush(WAIT);
    let ev = seen.events();
    let types: Vec<&str> = ev.iter().map(|e| &*e.ty).collect();
    assert_eq!(
        types,
        [
            "import.started",
            "import.row",
            "import.batch.started",
            "import.batch.completed",
            "import.cleanup.started",
            "import.cleanup.failed",
            "import.failed"
        ]
    );
    let root = ev[0].id.clone();
    assert!(ev
        .iter()
        .all(|e| e.correlationid.as_deref() == Some(&*root)));
    assert_eq!(ev[0].causationid, None);
    assert_eq!(ev[1].causationid.as_deref(), Some(&*root));
    assert_eq!(ev[2].causationid.as_deref(), Some(&*root));
    assert_eq!(ev[3].causationid.as_deref(), Some(&*ev[2].id));
    assert_eq!(ev[5].data.as_ref().unwrap()["error"], "abandoned");
    let failed = ev[6].data.as_ref().unwrap();
    assert_eq!(failed["error"], "disk full");
    assert!(failed["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(ev[6].severity, Some(herald_wire::Severity::Error));
    assert!(ev[3].data.as_ref().unwrap()["rows"] == 10);
}

#[tokio::test]
async fn run_links_events_emitted_inside_and_nested_runs() {
    let (backend, seen) = MemoryBackend::new();
    let t = Tracker::builder("/test").backend(backend).build().unwrap();
    let r: Result<(), String> = t
        .run("outer", json!({}), async {
            t.emit("outer.step", json!({}));
            let inner: Result<u8, String> = t
                .run("inner", json!({}), async {
                    t.emit("inner.step", json!({}));
                    Ok(1)
                })
                .await;
            inner.map(|_| ())
        })
        .await;
    assert!(r.is_ok());
    t.flush_async(WAIT).await;
    let ev = seen.events();
    let by = |ty: &str| ev.iter().find(|e| e.ty == ty).unwrap().clone();
    let outer = by("outer.started");
    let inner = by("inner.started");
    assert_eq!(inner.causationid.as_deref(), Some(&*outer.id));
    assert_eq!(by("inner.step").causationid.as_deref(), Some(&*inner.id));
    assert_eq!(by("outer.step").causationid.as_deref(), Some(&*outer.id));
    assert_eq!(
        by("outer.completed").causationid.as_deref(),
        Some(&*outer.id)
    );
    assert!(ev
        .iter()
        .all(|e| e.correlationid.as_deref() == Some(&*outer.id)));
}

#[test]
fn emit_after_shutdown_is_counted_not_lost_silently() {
    let (backend, seen) = MemoryBackend::new();
    let t = Tracker::builder("/test").backend(backend).build().unwrap();
    t.emit("a.b", json!({}));
    assert_eq!(t.shutdown(WAIT), 0);
    t.emit("a.c", json!({}));
    let c = t.counters();
    assert_eq!(seen.len(), 1);
    assert_eq!(c.emitted, 2);
    assert_eq!(c.dropped.queue_full, 1);
}

#[test]
fn events_serialize_as_herald_json() {
    let (backend, seen) = MemoryBackend::new();
    let t = Tracker::builder("/svc")
        .context(json!({"app": "lms"}))
        .backend(backend)
        .build()
        .unwrap();
    t.event("user.signed_up")
        .id("fixed-1")
        .subject("user/1")
        .tenant("acme")
        .visibility(herald_wire::Visibility::Private)
        .readers(["user/1"])
        .context("ip", "1.2.3.4")
        .data(json!({"plan": "free"}))
        .emit();
    t.flush(WAIT);
    let e = &seen.events()[0];
    let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["id"], "fixed-1");
    assert_eq!(v["source"], "/svc");
    assert_eq!(v["type"], "user.signed_up");
    assert_eq!(v["context"], json!({"app": "lms", "ip": "1.2.3.4"}));
    assert_eq!(v["readers"], json!(["user/1"]));
    assert_eq!(v["visibility"], "private");
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    let wire = e.to_wire();
    assert_eq!(serde_json::to_value(&wire).unwrap(), v);
}
