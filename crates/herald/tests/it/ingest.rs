//! Ingest over HTTP: every content mode, every status code, duplicates, conflicts, limits.

use crate::harness::TestServer;
use serde_json::{json, Value};

fn statuses(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().expect("status").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_content_mode_stores_events() {
    let s = TestServer::start().await;
    // Plain JSON: one object, then an array.
    let (st, b) = s
        .post_json(&json!({"type":"a.one","source":"/m","id":"1","data":{"k":1}}))
        .await;
    assert_eq!((st, statuses(&b)), (201, vec!["stored".to_owned()]), "{b}");
    let (st, b) = s
        .post_json(&json!([{"type":"a.two","source":"/m","id":"2"},{"type":"a.two","source":"/m","id":"3"}]))
        .await;
    assert_eq!((st, b["stored"].as_u64()), (201, Some(2)), "{b}");
    // NDJSON, with a blank line and CRLF.
    let nd = "{\"type\":\"a.nd\",\"source\":\"/m\",\"id\":\"4\"}\r\n\n{\"type\":\"a.nd\",\"source\":\"/m\",\"id\":\"5\"}\n";
    let (st, _, b) = s.post("application/x-ndjson", nd).await;
    assert_eq!((st, b["stored"].as_u64()), (201, Some(2)), "{b}");
    // CloudEvents structured and batched (specversion required there).
    let (st, _, b) = s
        .post(
            "application/cloudevents+json",
            json!({"specversion":"1.0","type":"a.ce","source":"/m","id":"6"}).to_string(),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let (st, _, b) = s
        .post(
            "application/cloudevents+json",
            json!({"type":"a.ce","source":"/m","id":"6b"}).to_string(),
        )
        .await;
    assert_eq!(
        (st, b["results"][0]["pointer"].as_str()),
        (422, Some("/specversion")),
        "{b}"
    );
    let (st, _, b) = s
        .post(
            "application/cloudevents-batch+json; charset=utf-8",
            json!([{"specversion":"1.0","type":"a.ce","source":"/m","id":"7"}]).to_string(),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    // Binary mode: attributes in headers (percent-encoded), body as data.
    let res = s
        .client
        .post(format!("{}/v1/events", s.url))
        .header("ce-specversion", "1.0")
        .header("ce-type", "a.bin")
        .header("ce-source", "/m")
        .header("ce-id", "8")
        .header("ce-subject", "caf%C3%A9")
        .header("ce-tenant", "acme")
        .header("content-type", "application/json")
        .body(r#"{"x": [1, 2]}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 201);
    let (st, ev) = s.get("/v1/events/8?source=/m").await;
    assert_eq!(st, 200);
    assert_eq!(ev["subject"], "café");
    assert_eq!(ev["tenant"], "acme");
    assert_eq!(ev["data"], json!({"x":[1,2]}));
    assert_eq!(ev["datacontenttype"], "application/json");
    assert_eq!(s.ids("source:/m").await.len(), 8);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_batches_duplicates_and_conflicts() {
    let s = TestServer::start().await;
    let ev = json!({"type":"d.x","source":"/d","id":"same","data":{"v":1}});
    let (st, b) = s
        .post_json(&json!([ev, {"type":"Bad Type","source":"/d"}, ev]))
        .await;
    assert_eq!(st, 207, "{b}");
    assert_eq!(statuses(&b), ["stored", "rejected", "duplicate"]);
    assert_eq!(b["results"][1]["pointer"], "/1/type");
    assert_eq!(b["results"][0]["seq"], b["results"][2]["seq"]);
    // The same event later: 201 duplicate, not stored twice.
    let (st, b) = s.post_json(&ev).await;
    assert_eq!((st, statuses(&b)), (201, vec!["duplicate".to_owned()]));
    // Different content under the same identity: 409 problem.
    let (st, h, b) = s
        .post(
            "application/json",
            json!({"type":"d.x","source":"/d","id":"same","data":{"v":2}}).to_string(),
        )
        .await;
    assert_eq!(st, 409, "{b}");
    assert_eq!(h["content-type"], "application/problem+json");
    assert_eq!(b["results"][0]["status"], "conflict");
    // Every event invalid: 422 with one result each.
    let (st, h, b) = s
        .post(
            "application/json",
            json!([{"source":"/d"}, {"type":"x","source":"/d","time":"nope"}]).to_string(),
        )
        .await;
    assert_eq!(st, 422, "{b}");
    assert_eq!(h["content-type"], "application/problem+json");
    assert_eq!(b["results"][0]["pointer"], "/0/type");
    assert_eq!(b["results"][1]["pointer"], "/1/time");
    assert_eq!(s.ids("source:/d").await, ["same"]);
    // A body large enough to be parsed off the async workers answers the same way.
    let pad = "p".repeat(300);
    let big: Vec<Value> = (0..300)
        .map(|i| match i {
            7 => json!({"type":"Bad Type","source":"/big","id":"b7"}),
            9 => ev.clone(),
            _ => json!({"type":"d.big","source":"/big","id":format!("b{i}"),"data":{"pad":pad}}),
        })
        .collect();
    assert!(serde_json::to_vec(&big).unwrap().len() > 64 * 1024);
    let (st, b) = s.post_json(&json!(big)).await;
    assert_eq!(st, 207, "{b}");
    let got = statuses(&b);
    assert_eq!(got.iter().filter(|x| *x == "stored").count(), 298);
    assert_eq!(
        (got[7].as_str(), got[9].as_str()),
        ("rejected", "duplicate")
    );
    assert_eq!(b["results"][7]["pointer"], "/7/type");
    assert_eq!(s.ids("source:/big").await.len(), 298);
    // Rejections are counted by attribute in /metrics.
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(r#"herald_events_rejected_total{reason="type"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_events_duplicate_total 3"),
        "{metrics}"
    );
    // Every counter and histogram the issue names has moved.
    for family in [
        "herald_events_received_total",
        "herald_events_stored_total",
        "herald_http_request_duration_seconds_count",
        "herald_store_commit_events_count",
    ] {
        let total: f64 = metrics
            .lines()
            .filter(|l| {
                l.strip_prefix(family)
                    .is_some_and(|r| r.starts_with([' ', '{']))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert!(total > 0.0, "{family} is 0 or missing in {metrics}");
    }
    // How far the indexers are behind, and the keys in memory: a number, whatever it is.
    for gauge in [
        "herald_store_index_backlog ",
        "herald_store_fulltext_backlog ",
        "herald_store_dedup_keys_in_memory ",
        "herald_ingest_queue_depth ",
    ] {
        let backlog = metrics
            .lines()
            .find_map(|l| l.strip_prefix(gauge))
            .unwrap_or_else(|| panic!("no {gauge}in {metrics}"));
        assert!(backlog.trim().parse::<u64>().is_ok(), "{backlog}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_problems() {
    let s = TestServer::start_with(|c| {
        c.limits.max_body_bytes = 10_000;
        c.limits.max_batch_len = 5;
        c.limits.max_event_bytes = 1_000;
        c.limits.max_depth = 3;
        c.limits.max_string_len = 16;
        c.limits.max_name_len = 8;
    })
    .await;
    let (st, h, b) = s.post("application/json", "{\"type\": ").await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(h["content-type"], "application/problem+json");
    assert!(
        b["detail"].as_str().unwrap().contains("not valid JSON"),
        "{b}"
    );
    let (st, _, b) = s.post("application/json", "42").await;
    assert_eq!(st, 400, "{b}");
    // A valid event followed by more JSON is not one JSON value: the request is refused,
    // not the event stored.
    let (st, _, b) = s
        .post("application/json", r#" {"type":"a.b","source":"/s"} {}"#)
        .await;
    assert_eq!(st, 400, "{b}");
    assert!(
        b["detail"].as_str().unwrap().contains("not valid JSON"),
        "{b}"
    );
    let (st, h, b) = s.post("text/csv", "a,b").await;
    assert_eq!(st, 415, "{b}");
    assert_eq!(h["content-type"], "application/problem+json");
    let (st, _, b) = s.post("application/json", "[]").await;
    assert_eq!(st, 400, "{b}");
    let big = format!("[{}]", vec![r#"{"type":"a","source":"/s"}"#; 600].join(","));
    let (st, h, b) = s.post("application/json", big).await;
    assert_eq!(st, 413, "{b}");
    assert_eq!(h["content-type"], "application/problem+json");
    let six = format!("[{}]", [r#"{"type":"a","source":"/s"}"#; 6].join(","));
    let (st, _, b) = s.post("application/json", six).await;
    assert_eq!(st, 413, "{b}");
    assert!(b["detail"].as_str().unwrap().contains("6 events"), "{b}");
    // Per-event limits reject that event only.
    let (st, b) = s
        .post_json(&json!([
            {"type":"a","source":"/s","data":"x".repeat(2000)},
            {"type":"a","source":"/s","data":[[[[1]]]]},
            {"type":"a","source":"/s","id":"ok"}
        ]))
        .await;
    assert_eq!(st, 207, "{b}");
    assert_eq!(statuses(&b), ["rejected", "rejected", "stored"]);
    assert!(b["results"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("more than the limit"));
    assert_eq!(b["results"][1]["pointer"], "/1/data");
    // String limits reject the member past them, by pointer; at the limit is stored.
    let (st, b) = s
        .post_json(&json!([
            {"type":"a","source":format!("/{}", "s".repeat(16))},
            {"type":"a","source":"/s","id":"123456789"},
            {"type":"a","source":"/s","subject":"x".repeat(17)},
            {"type":"a","source":format!("/{}", "s".repeat(15)),"id":"12345678"}
        ]))
        .await;
    assert_eq!(st, 207, "{b}");
    assert_eq!(statuses(&b), ["rejected", "rejected", "rejected", "stored"]);
    for (i, member) in [(0, "source"), (1, "id"), (2, "subject")] {
        assert_eq!(b["results"][i]["pointer"], format!("/{i}/{member}"), "{b}");
        assert!(
            b["results"][i]["reason"]
                .as_str()
                .unwrap()
                .contains("more than the limit"),
            "{b}"
        );
    }
    // A body without Content-Length that streams past the limit is cut off with 413.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b' '; 1000])).collect();
    let stream = futures_util::stream::iter(chunks);
    let res = s
        .client
        .post(format!("{}/v1/events", s.url))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    // The server answers 413 as soon as the limit is passed and closes the connection; a
    // client still writing may see the close (broken pipe) before it reads the answer.
    match res {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        Err(e) => assert!(e.is_request(), "unexpected error: {e}"),
    }
    assert_eq!(s.get("/healthz").await.0, 200, "the server survives");
    // Unknown routes and bad lookups are problems too.
    let (st, _) = s.get("/v2/nothing").await;
    assert_eq!(st, 404);
    s.stop().await;
}

/// A body refused before it is read ends its connection, and the answer says so: a
/// keep-alive client that pooled the connection would otherwise lose its next request on it
/// (CI once failed that way: the `GET /healthz` after the streamed 413 above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_refused_unread_closes_its_connection_and_says_so() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(|c| c.limits.max_body_bytes = 10_000).await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    // Sends `head` and `body` on a new connection and reads until the server closes it
    // (within 10 s) or the answer is complete; returns the answer's head, lowercased.
    let exchange = |head: String, body: Vec<u8>| {
        let addr = addr.clone();
        async move {
            let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            tcp.write_all(head.as_bytes()).await.unwrap();
            // The server may answer and close before all of it is written.
            let _ = tcp.write_all(&body).await;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let closed = loop {
                match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break true,
                    Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                    Err(_) => break false,
                }
            };
            let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
            let head = text.split("\r\n\r\n").next().unwrap_or("").to_owned();
            (head, closed)
        }
    };
    // Chunked past the limit (20 chunks of 1000 bytes).
    let mut chunks = Vec::new();
    for _ in 0..20 {
        chunks.extend_from_slice(b"3e8\r\n");
        chunks.extend_from_slice(&[b' '; 1000]);
        chunks.extend_from_slice(b"\r\n");
    }
    chunks.extend_from_slice(b"0\r\n\r\n");
    let refusals = [
        // Announced too large: refused from Content-Length, nothing read.
        (
            "content-type: application/json\r\ncontent-length: 20000",
            vec![b' '; 4000],
            "413",
        ),
        // Refused part way through.
        (
            "content-type: application/json\r\ntransfer-encoding: chunked",
            chunks,
            "413",
        ),
        // Refused for its content type, before the body is read.
        (
            "content-type: text/csv\r\ncontent-length: 5000",
            vec![b'a'; 5000],
            "415",
        ),
    ];
    for (headers, body, status) in refusals {
        let (head, closed) = exchange(
            format!("POST /v1/events HTTP/1.1\r\nhost: x\r\n{headers}\r\n\r\n"),
            body,
        )
        .await;
        assert!(head.starts_with(&format!("http/1.1 {status}")), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(closed, "the connection stayed open after {head}");
    }
    // A body that was read keeps the connection: the answer does not say close, and the
    // server waits for the next request (the read times out instead of seeing the end).
    let body = r#"{"type":"a.b","source":"/s","id":"kept"}"#;
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(
        format!(
            "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 201"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    let more = tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await;
    assert!(
        more.is_err(),
        "the server closed a connection it could keep"
    );
    // And the pooled client goes on after the refusals.
    assert_eq!(s.get("/healthz").await.0, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_with_retry_after_and_loses_nothing_acknowledged() {
    let s = TestServer::start_with(|c| c.store.queue_capacity = 1).await;
    let mut tasks = Vec::new();
    for t in 0..48 {
        let client = s.client.clone();
        let url = format!("{}/v1/events", s.url);
        tasks.push(tokio::spawn(async move {
            let batch: Vec<Value> = (0..500)
                .map(|i| json!({"type":"q.x","source":"/q","id":format!("{t}-{i}"),"data":{"pad":"y".repeat(200)}}))
                .collect();
            let res = client.post(url).json(&batch).send().await.unwrap();
            let status = res.status().as_u16();
            let retry = res.headers().get("retry-after").is_some();
            if status == 503 {
                assert_eq!(res.headers()["content-type"], "application/problem+json");
            }
            let body: Value = res.json().await.unwrap();
            (status, retry, body["stored"].as_u64().unwrap_or(0))
        }));
    }
    let mut stored = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, retry, n) = t.await.unwrap();
        match status {
            201 => stored += n,
            503 => {
                assert!(retry, "503 must carry Retry-After");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        refused > 0,
        "a queue of one request must overflow under 48 concurrent batches"
    );
    assert_eq!(s.ids("source:/q").await.len() as u64, stored);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_health_and_readiness() {
    let s = TestServer::start().await;
    let (st, doc) = s.get("/openapi.json").await;
    assert_eq!(st, 200);
    for path in [
        "/v1/events",
        "/v1/events/{key}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "OpenAPI lacks {path}");
    }
    assert!(doc["components"]["schemas"]["IngestResponse"].is_object());
    assert_eq!(s.get("/healthz").await.0, 200);
    assert_eq!(s.get("/readyz").await.0, 200);
    s.stop().await;
}
