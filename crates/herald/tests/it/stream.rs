//! The live stream: delivery, resume without gaps or duplicates (during heavy ingest and
//! across restarts), reset when history is gone, slow consumers, limits.

use crate::harness::{BinServer, SseStream, TestServer};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn batch(tag: &str, from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| {
                json!({"id": format!("{tag}-{i}"), "source": "/stream-test", "type": format!("{tag}.{}", if i % 2 == 0 { "even" } else { "odd" }),
                       "data": {"n": i}})
            })
            .collect(),
    )
}

async fn post_batch(url: &str, body: &Value) -> Vec<u64> {
    let res = crate::harness::http_client()
        .post(format!("{url}/v1/events"))
        .json(body)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 201);
    let v: Value = res.json().await.expect("json");
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect()
}

fn seq_of(f: &herald_wire::sse::Frame) -> u64 {
    f.id.as_deref().expect("id").parse().expect("numeric id")
}

#[tokio::test]
async fn live_events_then_resume_from_storage() {
    let srv = TestServer::start().await;
    let mut s = SseStream::open(&srv.url, "filter=type:live.*", None).await;
    // The first frames give the retry hint and the current position.
    let first = s.next(WAIT).await.expect("retry frame");
    assert_eq!(first.retry, Some(2000));
    let pos = s.next(WAIT).await.expect("position frame");
    assert_eq!(pos.id.as_deref(), Some("0"));
    assert!(pos.data.is_empty());

    let seqs = post_batch(&srv.url, &batch("live", 0, 3)).await;
    post_batch(&srv.url, &batch("other", 0, 2)).await;
    for want in &seqs {
        let f = s.next_event(WAIT).await.expect("live event");
        assert_eq!(seq_of(&f), *want);
        let ev: Value = serde_json::from_str(&f.data).expect("data is the event JSON");
        assert_eq!(ev["seq"], *want);
        assert_eq!(f.event.as_deref(), ev["type"].as_str());
    }
    drop(s);

    // Reconnect after the first event: the other two come from storage, then live.
    let mut s = SseStream::open(&srv.url, "filter=type:live.*", Some(seqs[0])).await;
    for want in &seqs[1..] {
        assert_eq!(seq_of(&s.next_event(WAIT).await.expect("replayed")), *want);
    }
    let more = post_batch(&srv.url, &batch("live", 3, 1)).await;
    assert_eq!(
        seq_of(&s.next_event(WAIT).await.expect("live after replay")),
        more[0]
    );
    // `?after=` does the same for clients that cannot set headers; `since` starts from a time.
    let mut s = SseStream::open(
        &srv.url,
        &format!("filter=type:live.*&after={}", seqs[2]),
        None,
    )
    .await;
    assert_eq!(seq_of(&s.next_event(WAIT).await.expect("after")), more[0]);
    let mut s = SseStream::open(&srv.url, "filter=type:live.odd&since=1h", None).await;
    assert_eq!(seq_of(&s.next_event(WAIT).await.expect("since")), seqs[1]);
    assert_eq!(seq_of(&s.next_event(WAIT).await.expect("since")), more[0]);
    srv.stop().await;
}

#[tokio::test]
async fn bad_requests_and_the_subscriber_limit() {
    let srv = TestServer::start_with(|c| c.stream.max_subscribers = 2).await;
    let (status, body) = srv.get("/v1/stream?filter=type:").await;
    assert_eq!(status, 400);
    assert_eq!(body["term"], "type:");
    let (status, body) = srv.get("/v1/stream?after=abc").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = srv.get("/v1/stream?since=yesterday-ish").await;
    assert_eq!(status, 400);

    let a = SseStream::open(&srv.url, "", None).await;
    let b = SseStream::open(&srv.url, "", None).await;
    let res = srv
        .client
        .get(format!("{}/v1/stream", srv.url))
        .send()
        .await
        .expect("third");
    assert_eq!(res.status().as_u16(), 503);
    assert!(res.headers().contains_key("retry-after"));
    drop((a, b));
    // Slots come back when clients leave.
    let deadline = Instant::now() + WAIT;
    loop {
        let res = srv
            .client
            .get(format!("{}/v1/stream", srv.url))
            .send()
            .await
            .expect("again");
        if res.status().as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "a slot must be freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await;
}

/// Reads a stream until `want` events arrived, reconnecting with `Last-Event-ID` every
/// `reconnect_every` events. Returns the seqs received, in order.
async fn follow(url: &str, query: &str, want: usize, reconnect_every: usize) -> Vec<u64> {
    let mut got: Vec<u64> = Vec::new();
    let mut last: Option<u64> = Some(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} events arrived",
            got.len()
        );
        let mut s = SseStream::open(url, query, last).await;
        let mut this_round = 0;
        while let Some(f) = s.next(WAIT).await {
            if let Some(id) = &f.id {
                last = Some(id.parse().expect("id"));
            }
            if f.data.is_empty() {
                continue;
            }
            got.push(seq_of(&f));
            this_round += 1;
            if got.len() >= want || this_round >= reconnect_every {
                break;
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_during_heavy_ingest_has_no_gap_and_no_duplicate() {
    let srv = TestServer::start().await;
    let url = srv.url.clone();
    const N: usize = 50_000;
    let everything = tokio::spawn({
        let url = url.clone();
        async move { follow(&url, "filter=type:load.*", N, 7_001).await }
    });
    let odd = tokio::spawn({
        let url = url.clone();
        async move {
            follow(
                &url,
                "filter=type:load.odd%20data.n:>=10000",
                (N - 10_000) / 2,
                3_001,
            )
            .await
        }
    });
    // Let the subscribers connect, then ingest at full speed from two producers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut producers = Vec::new();
    for p in 0..2 {
        let url = url.clone();
        producers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for b in 0..(N / 2 / 500) {
                seqs.extend(post_batch(&url, &batch("load", p * N / 2 + b * 500, 500)).await);
            }
            seqs
        }));
    }
    let mut stored = BTreeSet::new();
    for p in producers {
        stored.extend(p.await.expect("producer"));
    }
    post_batch(&url, &batch("noise", 0, 10)).await;
    let got = everything.await.expect("subscriber");
    assert_eq!(got.len(), N);
    let as_set: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(as_set.len(), N, "no duplicates");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in seq order");
    assert_eq!(as_set, stored, "exactly the stored events, no gap");

    let got_odd = odd.await.expect("filtered subscriber");
    let want_odd = srv.seqs("type:load.odd data.n:>=10000").await;
    assert_eq!(
        got_odd, want_odd,
        "the filtered stream saw exactly its events"
    );
    srv.stop().await;
}

#[test]
fn resume_across_a_server_restart() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut srv = BinServer::start(dir.path());
    rt.block_on(async {
        let first = post_batch(&srv.url, &batch("restart", 0, 5)).await;
        let mut s = SseStream::open(&srv.url, "filter=type:restart.*", Some(0)).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(seq_of(&s.next_event(WAIT).await.expect("event")));
        }
        // A graceful stop ends the stream with a reason, and does not hang on it.
        let started = Instant::now();
        let status = srv.terminate();
        assert!(status.success());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "shutdown waited for the stream"
        );
        let mut reasons = Vec::new();
        while let Some(f) = s.next(WAIT).await {
            if f.event.as_deref() == Some("disconnect") {
                reasons.push(f.data.clone());
            } else if !f.data.is_empty() {
                got.push(seq_of(&f));
            }
        }
        assert!(
            reasons.iter().any(|r| r.contains("shutdown")) || got.len() == 5,
            "the stream ends with a reason: {reasons:?}"
        );
        let last = *got.last().expect("some events");

        srv = BinServer::start(dir.path());
        let second = post_batch(&srv.url, &batch("restart", 5, 3)).await;
        let mut s = SseStream::open(&srv.url, "filter=type:restart.*", Some(last)).await;
        while got.len() < 8 {
            got.push(seq_of(&s.next_event(WAIT).await.expect("after restart")));
        }
        let want: Vec<u64> = first.iter().chain(&second).copied().collect();
        assert_eq!(got, want);
    });
}

#[tokio::test]
async fn reset_when_the_position_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = TestServer::start_at(dir.path(), |_| {}).await;
    let seqs = post_batch(&srv.url, &batch("old", 0, 10)).await;
    srv.stop().await;
    // Retention (to come) deletes old events; here the oldest five go by hand.
    {
        let db = herald_store::sqlite::open_database(dir.path()).expect("open db");
        db.execute("DELETE FROM events WHERE seq <= ?1", [seqs[4] as i64])
            .expect("delete");
    }
    let srv = TestServer::start_at(dir.path(), |_| {}).await;
    let mut s = SseStream::open(&srv.url, "", Some(seqs[1])).await;
    let mut reset = None;
    while let Some(f) = s.next(WAIT).await {
        if f.event.as_deref() == Some("reset") {
            reset = Some(f);
            break;
        }
    }
    let reset = reset.expect("a reset event");
    let info: Value = serde_json::from_str(&reset.data).expect("reset data");
    assert_eq!(info["reason"], "expired");
    assert_eq!(info["requested_after"], seqs[1]);
    assert_eq!(info["resume_after"], seqs[4]);
    assert_eq!(reset.id.as_deref(), Some(seqs[4].to_string().as_str()));
    for want in &seqs[5..] {
        assert_eq!(seq_of(&s.next_event(WAIT).await.expect("the rest")), *want);
    }
    // A position this server never had.
    let mut s = SseStream::open(&srv.url, "", Some(1_000_000)).await;
    let mut reason = None;
    while let Some(f) = s.next(Duration::from_secs(2)).await {
        if f.event.as_deref() == Some("reset") {
            reason = Some(serde_json::from_str::<Value>(&f.data).expect("json")["reason"].clone());
            break;
        }
    }
    assert_eq!(reason, Some(json!("unknown_position")));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_neither_slows_ingest_nor_loses_events() {
    // Tiny buffers, so that a subscriber that does not read overflows quickly.
    let srv = TestServer::start_with(|c| {
        c.stream.live_buffer = 4;
        c.stream.client_buffer = 2;
        c.stream.catchup_page = 100;
    })
    .await;
    let mut slow = SseStream::open(&srv.url, "filter=type:slow.*", Some(0)).await;
    let fast_url = srv.url.clone();
    let fast =
        tokio::spawn(
            async move { follow(&fast_url, "filter=type:slow.*", 20_000, usize::MAX).await },
        );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut stored = Vec::new();
    for b in 0..200 {
        stored.extend(post_batch(&srv.url, &batch("slow", b * 100, 100)).await);
    }
    let ingest_time = started.elapsed();
    let fast_got = fast.await.expect("fast subscriber");
    assert_eq!(
        fast_got, stored,
        "the fast subscriber got everything in order"
    );
    // Only now does the slow one read: it fell behind the live buffer and catches up from
    // storage, still in order and complete.
    let mut got = Vec::new();
    while got.len() < stored.len() {
        let f = slow.next_event(WAIT).await.expect("slow consumer's events");
        got.push(seq_of(&f));
    }
    assert_eq!(got, stored);
    let metrics = srv.metrics().await;
    let lagged = metrics
        .lines()
        .find(|l| l.starts_with("herald_stream_lagged_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("lagged metric");
    assert!(
        lagged >= 1.0,
        "the slow subscriber must have lagged: {metrics}"
    );
    eprintln!("ingest of 20,000 events with a stalled subscriber took {ingest_time:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_with_a_reason() {
    let srv = TestServer::start_with(|c| {
        c.stream.client_buffer = 1;
        c.stream.slow_client_timeout_secs = 1;
    })
    .await;
    let mut stalled = SseStream::open(&srv.url, "filter=type:big.*", Some(0)).await;
    // Large events fill the socket buffers quickly.
    let pad = "x".repeat(100_000);
    for b in 0..20 {
        let events: Vec<Value> = (0..10)
            .map(|i| json!({"id": format!("big-{b}-{i}"), "source": "/s", "type": "big.one", "data": {"pad": pad}}))
            .collect();
        post_batch(&srv.url, &Value::Array(events)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut reason = None;
    let mut n = 0;
    while let Some(f) = stalled.next(WAIT).await {
        if f.event.as_deref() == Some("disconnect") {
            reason = Some(serde_json::from_str::<Value>(&f.data).expect("json")["reason"].clone());
            break;
        }
        if !f.data.is_empty() {
            n += 1;
        }
    }
    assert_eq!(reason, Some(json!("slow_client")), "after {n} events");
    assert!(n < 200, "the stalled client was cut off before the end");
    srv.stop().await;
}

#[tokio::test]
async fn heartbeats_keep_the_connection_and_move_the_resume_position() {
    let srv = TestServer::start_with(|c| c.stream.heartbeat_secs = 1).await;
    let mut s = SseStream::open(&srv.url, "filter=type:never.seen", None).await;
    let seqs = post_batch(&srv.url, &batch("other", 0, 5)).await;
    // Nothing matches, yet within a heartbeat or two the client learns that everything up to
    // the newest event was examined, so a reconnection would not scan it again.
    let deadline = Instant::now() + WAIT;
    loop {
        let f = s.next(WAIT).await.expect("heartbeat frames");
        assert!(f.data.is_empty(), "nothing matches: {f:?}");
        if f.id.as_deref() == Some(seqs[4].to_string().as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "the position never advanced");
    }
    srv.stop().await;
}
