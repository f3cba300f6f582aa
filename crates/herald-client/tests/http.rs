//! The HTTP backend against a scripted server: which answers are retried (timeouts, 429,
//! 5xx, with `Retry-After`), which are not (4xx), 413 splits the batch, gzip bodies, the
//! bearer key, and the 415 fallback to plain bodies. The tests against a real Herald server
//! are in `crates/herald/tests/it/client_lib.rs`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use herald_client::{DeliveryStatus, HttpBackend, HttpConfig, Retry, Tracker};
use serde_json::{json, Value};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake server answers to the n-th request (0-based), given its lines.
type Script = Box<dyn Fn(usize, &[Value]) -> (u16, Option<&'static str>) + Send + Sync>;

#[derive(Default)]
struct Seen {
    requests: Vec<Vec<Value>>,
    gzip: Vec<bool>,
    auth: Vec<Option<String>>,
}

struct Fake {
    seen: Mutex<Seen>,
    script: Script,
}

async fn ingest(State(f): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let gz = headers.get("content-encoding").is_some_and(|v| v == "gzip");
    let text = if gz {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut s)
            .unwrap();
        s
    } else {
        String::from_utf8(body.to_vec()).unwrap()
    };
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let n = {
        let mut s = f.seen.lock().unwrap();
        s.requests.push(lines.clone());
        s.gzip.push(gz);
        s.auth.push(
            headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned()),
        );
        s.requests.len() - 1
    };
    let (status, retry_after) = (f.script)(n, &lines);
    let code = StatusCode::from_u16(status).unwrap();
    let mut res = if status == 201 || status == 207 || status == 422 {
        let results: Vec<Value> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if l["type"].as_str().unwrap().starts_with("bad.") {
                    json!({"index": i, "status": "rejected", "reason": "not allowed here", "pointer": format!("/{i}/type")})
                } else {
                    json!({"index": i, "status": "stored", "seq": i + 1, "id": l["id"]})
                }
            })
            .collect();
        if status == 422 {
            (code, axum::Json(json!({"type": "about:blank", "title": "Unprocessable", "status": 422, "results": results}))).into_response()
        } else {
            (code, axum::Json(json!({"stored": 0, "duplicates": 0, "conflicts": 0, "rejected": 0, "results": results}))).into_response()
        }
    } else {
        (code, axum::Json(json!({"type": "about:blank", "title": "Nope", "status": status, "detail": "scripted"}))).into_response()
    };
    if let Some(ra) = retry_after {
        res.headers_mut().insert("retry-after", ra.parse().unwrap());
    }
    res
}

async fn fake(script: Script) -> (String, Arc<Fake>) {
    let f = Arc::new(Fake {
        seen: Mutex::new(Seen::default()),
        script,
    });
    let app = Router::new()
        .route("/v1/events", post(ingest))
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, f)
}

fn config(url: &str) -> HttpConfig {
    let mut cfg = HttpConfig::new(url);
    cfg.linger = Duration::from_millis(5);
    cfg.retry = Retry {
        base: Duration::from_millis(10),
        max: Duration::from_millis(100),
        max_attempts: None,
    };
    cfg
}

/// The result of every event: status and HTTP status.
type Results = Arc<Mutex<Vec<(DeliveryStatus, u16)>>>;

fn tracker(cfg: HttpConfig) -> (Tracker, Results) {
    let results: Results = Arc::default();
    let r = results.clone();
    let t = Tracker::builder("/http-test")
        .backend(
            HttpBackend::new(cfg)
                .on_result(move |d| r.lock().unwrap().push((d.status, d.http_status))),
        )
        .build()
        .unwrap();
    (t, results)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_429_and_5xx_with_retry_after_then_delivers_once() {
    let (url, f) = fake(Box::new(|n, _| match n {
        0 => (503, Some("0")),
        1 => (429, Some("0")),
        2 => (500, None),
        _ => (201, None),
    }))
    .await;
    let mut cfg = config(&url);
    cfg.api_key = Some("hk_secret".into());
    let (t, results) = tracker(cfg);
    for i in 0..5 {
        t.emit("retry.me", json!({ "i": i }));
    }
    assert_eq!(t.flush_async(Duration::from_secs(10)).await, 0);
    let c = t.counters();
    assert_eq!(c.sent, 5);
    assert_eq!(c.retried, 15, "5 events, 3 retries: {c:?}");
    let seen = f.seen.lock().unwrap();
    assert_eq!(seen.requests.len(), 4);
    assert!(seen.requests.iter().all(|r| r.len() == 5));
    // The same ids every time: a retry can never store a second copy.
    let ids = |r: &Vec<Value>| r.iter().map(|e| e["id"].clone()).collect::<Vec<_>>();
    assert!(seen
        .requests
        .iter()
        .all(|r| ids(r) == ids(&seen.requests[0])));
    assert!(seen.gzip.iter().all(|g| *g), "gzip by default");
    assert!(seen
        .auth
        .iter()
        .all(|a| a.as_deref() == Some("Bearer hk_secret")));
    assert_eq!(results.lock().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_events_and_4xx_are_reported_not_retried() {
    let (url, f) = fake(Box::new(|n, lines| {
        if n == 1 {
            return (403, None);
        }
        let bad = lines
            .iter()
            .filter(|l| l["type"].as_str().unwrap().starts_with("bad."))
            .count();
        match bad {
            0 => (201, None),
            b if b == lines.len() => (422, None),
            _ => (207, None),
        }
    }))
    .await;
    let (t, results) = tracker(config(&url));
    t.emit("good.one", json!({}));
    t.emit("bad.one", json!({}));
    t.flush_async(Duration::from_secs(10)).await;
    // The second request is refused as a whole (403): its events are reported, not retried.
    t.emit("good.two", json!({}));
    t.flush_async(Duration::from_secs(10)).await;
    t.emit("bad.two", json!({}));
    t.flush_async(Duration::from_secs(10)).await;
    let c = t.counters();
    assert_eq!(c.retried, 0);
    assert_eq!(c.sent, 1);
    assert_eq!(c.dropped.rejected, 3);
    assert_eq!(f.seen.lock().unwrap().requests.len(), 3);
    let r = results.lock().unwrap().clone();
    assert_eq!(
        r,
        [
            (DeliveryStatus::Stored, 207),
            (DeliveryStatus::Rejected, 207),
            (DeliveryStatus::Rejected, 403),
            (DeliveryStatus::Rejected, 422),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_batch_and_415_turns_gzip_off() {
    let (url, f) = fake(Box::new(|n, lines| {
        if n == 0 {
            return (415, None);
        }
        if lines.len() > 4 {
            (413, None)
        } else {
            (201, None)
        }
    }))
    .await;
    let mut cfg = config(&url);
    cfg.linger = Duration::from_millis(200);
    let (t, _) = tracker(cfg);
    for i in 0..16 {
        t.emit("split.me", json!({ "i": i }));
    }
    assert_eq!(t.flush_async(Duration::from_secs(10)).await, 0);
    assert_eq!(t.counters().sent, 16);
    let seen = f.seen.lock().unwrap();
    assert!(seen.gzip[0] && !seen.gzip[1..].iter().any(|g| *g));
    // Every event stored once, in order.
    let stored: Vec<i64> = seen
        .requests
        .iter()
        .filter(|r| r.len() <= 4)
        .flatten()
        .map(|e| e["data"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(stored, (0..16).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_spool_events_are_given_up_after_the_retry_limit_and_counted() {
    let (url, _f) = fake(Box::new(|_, _| (503, None))).await;
    let mut cfg = config(&url);
    cfg.retry.max_attempts = Some(3);
    let (t, results) = tracker(cfg);
    t.emit("never.stored", json!({}));
    t.flush_async(Duration::from_secs(10)).await;
    let c = t.counters();
    assert_eq!(c.dropped.gave_up, 1);
    assert_eq!(c.retried, 2);
    assert_eq!(results.lock().unwrap()[0].0, DeliveryStatus::Failed);
}
