//! Queries over HTTP: filters, bounds, errors, media types, and keyset paging while events
//! keep arriving.

use crate::harness::TestServer;
use serde_json::{json, Value};

async fn seed(s: &TestServer) {
    let evs = json!([
        {"type":"import.started","source":"/importer","id":"e1","time":"2026-10-31T10:00:00Z","tenant":"acme","data":{"country":"fr"}},
        {"type":"import.failed","source":"/importer","id":"e2","time":"2026-10-31T11:00:00Z","tenant":"acme","severity":"error","data":{"country":"be","reason":"upstream timeout"}},
        {"type":"import.failed","source":"/test","id":"e3","time":"2026-10-31T12:00:00Z","tenant":"beta","severity":"critical","data":{"country":"fr"}},
        {"type":"product.edited","source":"/web","id":"e4","time":"2026-10-31T13:00:00Z","tenant":"acme","readers":["user:1"],"context":{"path":"/p/1"},"data":{"country":"de"}}
    ]);
    let (st, b) = s.post_json(&evs).await;
    assert_eq!(st, 201, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_bounds_and_errors() {
    let s = TestServer::start().await;
    seed(&s).await;
    assert_eq!(
        s.ids(r#"type:import.* severity:>=error tenant:acme data.country:fr,be -source:/test "timeout""#).await,
        ["e2"]
    );
    assert_eq!(s.ids("type:import.failed").await, ["e3", "e2"]);
    assert_eq!(s.ids("context.path:/p/1").await, ["e4"]);
    let (st, b) = s
        .get("/v1/events?since=2026-10-31T11:30:00Z&until=2026-10-31T13:00:00Z")
        .await;
    assert_eq!(st, 200);
    assert_eq!(b["events"].as_array().unwrap().len(), 1);
    assert_eq!(b["events"][0]["id"], "e3");

    let (st, b) = s.get("/v1/events?filter=tenant:acme%20sevrity:error").await;
    assert_eq!(st, 400);
    assert_eq!(
        (b["offset"].as_u64(), b["term"].as_str()),
        (Some(12), Some("sevrity:error")),
        "{b}"
    );
    for bad in [
        "since=tomorrow",
        "limit=0",
        "limit=abc",
        "limit=100000",
        "cursor=zzz",
    ] {
        let (st, b) = s.get(&format!("/v1/events?{bad}")).await;
        assert_eq!(st, 400, "{bad}: {b}");
    }
    assert_eq!(s.get("/v1/events/999").await.0, 404);
    assert_eq!(s.get("/v1/events/e1").await.0, 400);
    assert_eq!(s.get("/v1/events/e1?source=/nope").await.0, 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_cloudevents_and_ndjson_forms() {
    let s = TestServer::start().await;
    seed(&s).await;
    let res = s
        .client
        .get(format!("{}/v1/events?filter=id:e4", s.url))
        .header("accept", "application/cloudevents-batch+json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["content-type"],
        "application/cloudevents-batch+json"
    );
    let arr: Vec<Value> = res.json().await.unwrap();
    assert_eq!(arr[0]["readers"], "user:1");
    assert_eq!(arr[0]["context"], r#"{"path":"/p/1"}"#);
    for (k, v) in arr[0].as_object().unwrap() {
        if !matches!(k.as_str(), "data") {
            assert!(
                !v.is_object() && !v.is_array(),
                "attribute {k} must be primitive in strict form"
            );
        }
    }
    let res = s
        .client
        .get(format!("{}/v1/events?limit=3", s.url))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    let cursor = res
        .headers()
        .get("herald-next-cursor")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = res.text().await.unwrap();
    assert_eq!(text.lines().count(), 3);
    let (_, next) = s
        .get(&format!(
            "/v1/events?limit=3&cursor={}",
            cursor.expect("more pages")
        ))
        .await;
    assert_eq!(next["events"][0]["id"], "e1");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_paging_is_stable_while_events_arrive() {
    let s = TestServer::start().await;
    let first: Vec<Value> = (0..300)
        .map(|i| json!({"type":"p.x","source":"/p","id":format!("old-{i:03}"),"time":format!("2026-10-01T00:{:02}:{:02}Z", i / 60, i % 60)}))
        .collect();
    assert_eq!(s.post_json(&json!(first)).await.0, 201);
    // A writer keeps adding newer events while a reader pages through.
    let client = s.client.clone();
    let url = format!("{}/v1/events", s.url);
    let writer = tokio::spawn(async move {
        for b in 0..40 {
            let batch: Vec<Value> = (0..10)
                .map(|i| json!({"type":"p.x","source":"/p","id":format!("new-{b}-{i}")}))
                .collect();
            client.post(&url).json(&batch).send().await.unwrap();
        }
    });
    // Between pages, ten more matching events land with times spread over the whole range:
    // those older than the cursor must show up on a later page, the others never, and no
    // event twice or out of order.
    fn secs(time: &str) -> f64 {
        let clock = time.split('T').nth(1).unwrap().trim_end_matches('Z');
        clock
            .split(':')
            .map(|p| p.parse::<f64>().unwrap())
            .fold(0.0, |acc, p| acc * 60.0 + p)
    }
    let mut expected: Vec<(f64, String)> = (0..300)
        .map(|i| (f64::from(i), format!("old-{i:03}")))
        .collect();
    let mut seen: Vec<(f64, String)> = Vec::new();
    let mut cursor: Option<String> = None;
    for b in 0.. {
        let path = match &cursor {
            None => "/v1/events?filter=id:old-*&limit=25".to_owned(),
            Some(c) => format!("/v1/events?filter=id:old-*&limit=25&cursor={c}"),
        };
        let (st, page) = s.get(&path).await;
        assert_eq!(st, 200, "{page}");
        seen.extend(page["events"].as_array().unwrap().iter().map(|e| {
            (
                secs(e["time"].as_str().unwrap()),
                e["id"].as_str().unwrap().to_owned(),
            )
        }));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
        let below = seen.last().unwrap().0;
        let batch: Vec<Value> = (0..10)
            .map(|i| {
                let x = ((b * 10 + i) * 37) % 300;
                let id = format!("old-late-{b}-{i}");
                if f64::from(x) + 0.5 < below {
                    expected.push((f64::from(x) + 0.5, id.clone()));
                }
                json!({"type":"p.x","source":"/p","id":id,"time":format!("2026-10-01T00:{:02}:{:02}.5Z", x / 60, x % 60)})
            })
            .collect();
        assert_eq!(s.post_json(&json!(batch)).await.0, 201);
    }
    expected.sort_by(|a, b| b.0.total_cmp(&a.0));
    assert!(
        expected.len() > 300,
        "some late events must fall below the cursor"
    );
    writer.await.unwrap();
    assert_eq!(seen, expected);
    assert_eq!(s.ids("id:new-*").await.len(), 400);
    s.stop().await;
}

/// A body the disk damaged after it was acknowledged: listings and streams pass over it
/// (every other event stays readable), a read of it names it, and `/metrics` counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_event_is_named_and_passed_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_at(dir.path(), |_| {}).await;
    seed(&s).await;
    let (st, b) = s
        .post_json(&json!({"type":"import.failed","source":"/importer","id":"hurt","time":"2026-10-31T12:30:00Z","data":{"note":"damage-me-here"}}))
        .await;
    assert_eq!(st, 201, "{b}");
    let hurt = b["results"][0]["seq"].as_u64().expect("seq");
    s.stop().await;

    // One byte of its record changes on disk.
    let mut hit = 0;
    for entry in std::fs::read_dir(dir.path().join("segments")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(14).position(|w| w == b"damage-me-here") {
            bytes[at] ^= 0x01;
            std::fs::write(&path, bytes).unwrap();
            hit += 1;
        }
    }
    assert_eq!(hit, 1, "the record is in one segment");

    let s = TestServer::start_at(dir.path(), |_| {}).await;
    assert_eq!(s.ids("").await, ["e4", "e3", "e2", "e1"]);
    assert_eq!(s.ids("type:import.failed").await, ["e3", "e2"]);
    // Pages of one step over it and still reach the end.
    let (st, b) = s
        .get("/v1/events?limit=1&since=2026-10-31T12:00:00Z&until=2026-10-31T13:00:00Z")
        .await;
    assert_eq!(st, 200, "{b}");
    assert!(b["events"].as_array().unwrap().is_empty(), "{b}");
    let cursor = b["next_cursor"].as_str().expect("a next page").to_owned();
    let (st, b) = s
        .get(&format!(
            "/v1/events?limit=1&since=2026-10-31T12:00:00Z&until=2026-10-31T13:00:00Z&cursor={cursor}"
        ))
        .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["events"][0]["id"], "e3", "{b}");

    let (st, b) = s.get(&format!("/v1/events/{hurt}")).await;
    assert_eq!(st, 500, "{b}");
    assert_eq!(b["type"], "https://herald.dev/problems/damaged", "{b}");
    assert!(
        b["detail"].as_str().unwrap().contains(&hurt.to_string()),
        "{b}"
    );
    let (st, _) = s.get("/v1/events/hurt?source=/importer").await;
    assert_eq!(st, 500);
    let metrics = s.metrics().await;
    let damaged: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("herald_store_damaged_reads_total "))
        .expect("the metric")
        .trim()
        .parse()
        .unwrap();
    assert!(damaged >= 3, "{damaged}");
    s.stop().await;
}
