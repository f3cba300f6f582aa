//! The `herald-client` library against real servers: gzip batches with per-event results
//! (rejected events reported, not retried), flush on shutdown, a server restarted in the
//! middle of a stream (the spool keeps events; all arrive once), and the spool across a
//! process killed with SIGKILL (nothing spooled is lost, nothing is stored twice).

use crate::harness::{free_addr, BinServer, TestServer};
use herald_client::spool::{Fsync, SpoolConfig};
use herald_client::{DeliveryStatus, HttpBackend, HttpConfig, Retry, Tracker};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every id of the events matching a filter, with how often each is stored.
async fn stored_ids(url: &str, filter: &str) -> HashMap<String, usize> {
    let client = crate::harness::http_client();
    let mut out = HashMap::new();
    let mut cursor = String::new();
    loop {
        let mut u = reqwest::Url::parse(&format!("{url}/v1/events")).unwrap();
        u.query_pairs_mut()
            .append_pair("filter", filter)
            .append_pair("limit", "1000");
        if !cursor.is_empty() {
            u.query_pairs_mut().append_pair("cursor", &cursor);
        }
        let v: Value = client.get(u).send().await.unwrap().json().await.unwrap();
        for e in v["events"].as_array().unwrap() {
            *out.entry(e["id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => return out,
        }
    }
}

fn quick_retry() -> Retry {
    Retry {
        base: Duration::from_millis(20),
        max: Duration::from_millis(300),
        max_attempts: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_batches_with_rejected_events_reported_not_retried() {
    let server = TestServer::start().await;
    let rejected: Arc<Mutex<Vec<(u16, String, String)>>> = Arc::default();
    let r = rejected.clone();
    let mut cfg = HttpConfig::new(&server.url);
    cfg.batch_events = 250;
    cfg.retry = quick_retry();
    assert!(cfg.gzip, "compression is on by default");
    let backend = HttpBackend::new(cfg).on_result(move |d| {
        if d.status != DeliveryStatus::Stored {
            r.lock().unwrap().push((
                d.http_status,
                d.reason.unwrap_or_default().to_owned(),
                String::from_utf8_lossy(d.event).into_owned(),
            ));
        }
    });
    let tracker = Tracker::builder("/client-test")
        .backend(backend)
        .build()
        .unwrap();
    let t = tracker.with_context(json!({"suite": "client"}));
    for i in 0..1000 {
        t.emit("client.batch", json!({ "i": i }));
        if i % 400 == 7 {
            // Invalid: a type must be dotted lowercase.
            t.emit("Client.BAD", json!({ "i": i }));
        }
    }
    // A batch of only invalid events is answered 422 with results: reported too.
    assert_eq!(tracker.flush_async(Duration::from_secs(30)).await, 0);
    t.emit("ALSO.BAD", json!({}));
    assert_eq!(tracker.flush_async(Duration::from_secs(30)).await, 0);
    let c = tracker.counters();
    assert_eq!(c.sent, 1000, "{c:?}");
    assert_eq!(c.dropped.rejected, 4, "{c:?}");
    assert_eq!(c.retried, 0, "rejected events are not retried: {c:?}");
    let rejected = rejected.lock().unwrap().clone();
    assert_eq!(rejected.len(), 4);
    for (status, reason, event) in &rejected {
        assert!(*status == 207 || *status == 422, "{status}");
        assert!(reason.contains("dotted lowercase"), "{reason}");
        assert!(event.contains(".BAD"), "{event}");
    }
    let ids = stored_ids(&server.url, "type:client.batch").await;
    assert_eq!(ids.len(), 1000);
    assert!(ids.values().all(|&n| n == 1));
    // The context travelled with every event.
    let (_, page) = server
        .get("/v1/events?filter=type:client.batch&limit=1")
        .await;
    assert_eq!(page["events"][0]["context"]["suite"], "client");
    assert_eq!(tracker.shutdown(Duration::from_secs(10)), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_a_lingering_batch_before_its_deadline() {
    let server = TestServer::start().await;
    let mut cfg = HttpConfig::new(&server.url);
    // A batch would wait a minute to fill; shutdown must not.
    cfg.linger = Duration::from_secs(60);
    let tracker = Tracker::builder("/client-test")
        .backend(HttpBackend::new(cfg))
        .build()
        .unwrap();
    for i in 0..10 {
        tracker.emit("client.flush", json!({ "i": i }));
    }
    let start = Instant::now();
    assert_eq!(tracker.shutdown_async(Duration::from_secs(20)).await, 0);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(stored_ids(&server.url, "type:client.flush").await.len(), 10);
    // Without a server, shutdown returns at its deadline and says what is left.
    let mut cfg = HttpConfig::new(format!("http://{}", free_addr()));
    cfg.retry = quick_retry();
    let tracker = Tracker::builder("/client-test")
        .backend(HttpBackend::new(cfg))
        .build()
        .unwrap();
    tracker.emit("client.lost", json!({}));
    let start = Instant::now();
    assert_eq!(tracker.shutdown_async(Duration::from_secs(1)).await, 1);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(tracker.counters().dropped.shutdown, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restarted_mid_stream_loses_nothing_and_stores_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = free_addr();
    let mut server = BinServer::start_on(&data, &addr);
    let url = server.url.clone();
    let mut cfg = HttpConfig::new(&url);
    cfg.batch_events = 100;
    cfg.linger = Duration::from_millis(5);
    cfg.retry = quick_retry();
    cfg.spool = Some(SpoolConfig::new(dir.path().join("spool")));
    let tracker = Tracker::builder("/client-restart")
        .backend(HttpBackend::new(cfg))
        .build()
        .unwrap();
    let producer = {
        let t = tracker.clone();
        std::thread::spawn(move || {
            for i in 0..6000 {
                t.emit("client.restart", json!({ "i": i }));
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    // Let some arrive, then kill the server in the middle of the stream.
    let start = Instant::now();
    while tracker.counters().sent < 1000 && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let during = tracker.counters();
    let server = BinServer::start_on(&data, &addr);
    producer.join().unwrap();
    assert_eq!(tracker.flush_async(Duration::from_secs(60)).await, 0);
    let c = tracker.counters();
    assert!(
        during.sent < 6000,
        "the outage happened mid-stream: {during:?}"
    );
    assert!(c.retried > 0, "{c:?}");
    assert_eq!(c.spooled, 6000);
    assert_eq!(c.dropped.total(), 0, "{c:?}");
    let ids = stored_ids(&server.url, "type:client.restart").await;
    assert_eq!(ids.len(), 6000);
    assert!(ids.values().all(|&n| n == 1), "every event stored once");
    tracker.shutdown(Duration::from_secs(5));
}

/// The child side of the spool crash test: runs only when the parent test sets
/// `HERALD_SPOOL_CHILD` (`emit` or `drain`), in a process of its own.
#[test]
fn spool_child() {
    let Ok(mode) = std::env::var("HERALD_SPOOL_CHILD") else {
        return;
    };
    let url = std::env::var("HERALD_SPOOL_URL").unwrap();
    let dir = std::env::var("HERALD_SPOOL_DIR").unwrap();
    let n: usize = std::env::var("HERALD_SPOOL_N").unwrap().parse().unwrap();
    let mut cfg = HttpConfig::new(&url);
    cfg.batch_events = 50;
    cfg.linger = Duration::ZERO;
    cfg.retry = quick_retry();
    cfg.spool = Some(SpoolConfig {
        fsync: Fsync::Never,
        ..SpoolConfig::new(&dir)
    });
    let tracker = Tracker::builder("/client-crash")
        .capacity(1 << 20)
        .backend(HttpBackend::new(cfg))
        .build()
        .unwrap();
    let mut out = std::io::stdout();
    if mode == "emit" {
        for i in 0..n {
            tracker
                .event("client.crash")
                .id(format!("crash-{i}"))
                .data(json!({ "i": i }))
                .emit();
        }
        while tracker.counters().spooled < n as u64 {
            std::thread::sleep(Duration::from_millis(1));
        }
        writeln!(out, "SPOOLED {}", tracker.counters().sent).unwrap();
        out.flush().unwrap();
        // Keep sending until killed.
        std::thread::sleep(Duration::from_secs(60));
    } else {
        let left = tracker.flush(Duration::from_secs(60));
        let c = tracker.counters();
        writeln!(
            out,
            "DRAINED left={left} sent={} rejected={}",
            c.sent, c.dropped.rejected
        )
        .unwrap();
        tracker.shutdown(Duration::from_secs(5));
    }
}

fn child(mode: &str, url: &str, dir: &Path, n: usize) -> std::process::Child {
    let log = std::fs::File::create(dir.with_extension(format!("{mode}.log"))).unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "client_lib::spool_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HERALD_SPOOL_CHILD", mode)
        .env("HERALD_SPOOL_URL", url)
        .env("HERALD_SPOOL_DIR", dir)
        .env("HERALD_SPOOL_N", n.to_string())
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn read_until(child: &mut std::process::Child, prefix: &str, log: &Path) -> String {
    let out = child.stdout.as_mut().unwrap();
    let mut r = BufReader::new(out);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("child ended before {prefix}: {log}");
        }
        // The test harness may print the test's name on the same line.
        if let Some(at) = line.find(prefix) {
            return line[at..].trim().to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_survives_a_killed_process_and_delivers_each_event_once() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let n = 20_000;
    let mut first = child("emit", &server.url, &spool, n);
    let line = read_until(&mut first, "SPOOLED", &spool.with_extension("emit.log"));
    // Killed in the middle of sending: some batches stored, the rest only in the spool.
    first.kill().unwrap();
    first.wait().unwrap();
    let before = stored_ids(&server.url, "type:client.crash").await.len();
    eprintln!("{line}; stored before the kill: {before} of {n}");
    assert!(before < n, "the kill happened before everything was sent");
    // A write cut by the crash: a torn record at the end of the last segment.
    let mut segs: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(segs.last().unwrap())
        .unwrap();
    f.write_all(&[200, 0, 0, 0, 9, 9, 9, 9, b'{', b'"', b'i'])
        .unwrap();
    drop(f);

    let mut second = child("drain", &server.url, &spool, n);
    let line = read_until(&mut second, "DRAINED", &spool.with_extension("drain.log"));
    assert!(second.wait().unwrap().success());
    assert!(
        line.contains("left=0") && line.contains("rejected=0"),
        "{line}"
    );
    let ids = stored_ids(&server.url, "type:client.crash").await;
    assert_eq!(ids.len(), n, "every spooled event arrived");
    assert!(ids.values().all(|&c| c == 1), "and none twice");
    for i in [0, n / 2, n - 1] {
        assert!(ids.contains_key(&format!("crash-{i}")));
    }
    server.stop().await;
}
