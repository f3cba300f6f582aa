//! Hostile requests: a bounded, seeded stream of malformed and mutated requests against a
//! real server. Every answer must be a decision (2xx, or a 4xx problem document that says
//! why), never a server error, and every event the server said it stored must be there.

use crate::harness::TestServer;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;

/// A small deterministic generator (xorshift64*), so that a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const EVENTS: &[&str] = &[
    r#"{"specversion":"1.0","type":"order.placed","source":"/checkout","id":"o-1","time":"2026-11-01T09:00:00Z","severity":"info","data":{"total":12.5,"items":[{"sku":"a","n":2}]}}"#,
    r#"{"type":"user.login","source":"/auth","subject":"u-1","actor":"user:42","tenant":"acme","visibility":"private","readers":["user:42"],"data":"text data"}"#,
    r#"{"type":"job.failed","source":"/jobs","severity":"error","correlationid":"c-1","causationid":"e-9","context":{"host":"h1"},"data":{"error":"timeout \u00e9\u212A"}}"#,
    r#"{"type":"blob.saved","source":"/store","data_base64":"AAEC/w==","datacontenttype":"application/octet-stream"}"#,
];

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/json; charset=utf-8",
    "application/x-ndjson",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
    "APPLICATION/JSON",
    "application/json; charset=latin1",
    "application/json;;;",
    "text/plain",
    "application/octet-stream",
    "multipart/form-data; boundary=x",
    "",
    "application/\u{e9}",
];

/// Byte strings that break parsers: escapes, bad UTF-8, deep nesting, huge numbers.
const SPLICES: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"\xff\xfe",
    b"\xc3\x28",
    b"\x00",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"1e99999",
    b"-0",
    b"18446744073709551616",
    b"null",
    b"\"type\":\"x\"",
    b"\n",
    b"\r\n\r\n",
];

/// A request body: valid events, mutated (bytes flipped, cut, spliced, repeated), batched.
fn body(rng: &mut Rng) -> Vec<u8> {
    let n = 1 + rng.below(4);
    let events: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let mut e = rng.pick(EVENTS).as_bytes().to_vec();
            // Give each a fresh id most of the time, so that stored events are new.
            if rng.chance(70) {
                let id = format!("\"id\":\"h-{}\",", rng.next());
                e.splice(1..1, id.into_bytes());
            }
            let mutations = if rng.chance(50) { 0 } else { 1 + rng.below(3) };
            for _ in 0..mutations {
                if e.is_empty() {
                    break;
                }
                let at = rng.below(e.len());
                match rng.below(4) {
                    0 => e[at] = rng.next() as u8,
                    1 => e.truncate(at),
                    2 => {
                        let s = rng.pick(SPLICES);
                        e.splice(at..at, s.iter().copied());
                    }
                    _ => {
                        let end = (at + rng.below(16)).min(e.len());
                        e.drain(at..end);
                    }
                }
            }
            e
        })
        .collect();
    match rng.below(6) {
        0 => events.concat(),
        1 => events.join(&b'\n'),
        2 => {
            let mut b = b"[".to_vec();
            b.extend(events.join(&b','));
            b.push(b']');
            b
        }
        3 => {
            let depth = 1 + rng.below(300);
            let mut b = b"[".repeat(depth);
            b.extend(b"]".repeat(depth));
            b
        }
        4 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        _ => events.into_iter().next().unwrap_or_default(),
    }
}

/// Percent-encodes arbitrary bytes (invalid UTF-8 included) for a URL.
fn pct(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

fn value_bytes(rng: &mut Rng) -> Vec<u8> {
    match rng.below(5) {
        0 => rng.pick(SPLICES).to_vec(),
        1 => (0..rng.below(24)).map(|_| rng.next() as u8).collect(),
        2 => rng
            .pick(&[
                "type:order.* severity:>=error",
                "data.total:>10",
                "-source:/auth \"timeout\"",
                "time:>24h",
                "seq:>0",
                "actor:user:42,user:1",
                "24h",
                "2026-11-01",
                "now",
                "-5",
                "99999999999999999999",
                "AQAAAAAAAAAAAAAAAAAAAAAA",
            ])
            .as_bytes()
            .to_vec(),
        // Long, but the whole request head stays under the 64 KiB limit (431 is hyper's own).
        3 => b"\"".repeat(rng.below(1500)),
        _ => Vec::new(),
    }
}

/// The header value of a `ce-*` attribute in binary mode: plain, percent-encoded, or broken
/// percent-encoding.
fn header_value(rng: &mut Rng) -> Option<HeaderValue> {
    let raw: Vec<u8> = match rng.below(5) {
        0 => rng
            .pick(&[
                "1.0",
                "order.placed",
                "/checkout",
                "x-1",
                "2026-11-01T09:00:00Z",
            ])
            .as_bytes()
            .to_vec(),
        1 => pct(&value_bytes(rng)).into_bytes(),
        2 => rng
            .pick(&["%", "%G1", "%FF%FE", "%C3%28", "%00", "a%2"])
            .as_bytes()
            .to_vec(),
        3 => (0..rng.below(12))
            .map(|_| 0x80 | rng.next() as u8)
            .collect(),
        _ => value_bytes(rng),
    };
    HeaderValue::from_bytes(&raw).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_decisions_and_stored_events_stay() {
    let s = TestServer::start_with(|c| {
        c.limits.max_body_bytes = 64 * 1024;
        c.limits.max_depth = 16;
    })
    .await;
    let seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rng = Rng(seed);
    let mut stored: Vec<(u64, String)> = Vec::new();
    let mut answered = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..600 {
        let req = match rng.below(10) {
            0..=4 => s
                .client
                .post(format!("{}/v1/events", s.url))
                .header(
                    "content-type",
                    HeaderValue::from_bytes(rng.pick(CONTENT_TYPES).as_bytes()).unwrap(),
                )
                .body(body(&mut rng)),
            5 => {
                // Binary mode: attributes in ce-* headers, the body as data.
                let mut r = s.client.post(format!("{}/v1/events", s.url)).header(
                    "content-type",
                    *rng.pick(&[
                        "application/json",
                        "text/plain",
                        "image/png",
                        "application/json; charset=utf-8",
                    ]),
                );
                for name in [
                    "ce-specversion",
                    "ce-type",
                    "ce-source",
                    "ce-id",
                    "ce-time",
                    "ce-severity",
                    "ce-subject",
                    "ce-visibility",
                    "ce-readers",
                    "ce-x_bad",
                    "ce-",
                    "ce-data",
                ] {
                    if rng.chance(70) {
                        if let Some(v) = header_value(&mut rng) {
                            r = r.header(HeaderName::from_static(name), v);
                        }
                    }
                }
                r.body(body(&mut rng))
            }
            6..=7 => {
                let mut q = String::new();
                for _ in 0..rng.below(5) {
                    let key = *rng.pick(&[
                        "filter", "since", "until", "limit", "cursor", "filter", "x", "%FF",
                    ]);
                    q.push_str(&format!("{key}={}&", pct(&value_bytes(&mut rng))));
                }
                // A stream whose query is valid answers 200 and stays open: its head is
                // checked, its body dropped unread.
                let path = *rng.pick(&[
                    "/v1/events",
                    "/v1/events",
                    "/v1/public/events",
                    "/v1/stream",
                ]);
                s.client.get(format!("{}{path}?{q}", s.url))
            }
            8 => {
                let tail = match rng.below(4) {
                    0 => pct(&value_bytes(&mut rng)),
                    1 => rng
                        .pick(&[
                            "0",
                            "1",
                            "-1",
                            "18446744073709551616",
                            "1e3",
                            "%2F..%2F",
                            "..",
                            "a+b",
                            "%2Fcheckout+o-1",
                        ])
                        .to_string(),
                    2 => format!(
                        "{}+{}",
                        pct(&value_bytes(&mut rng)),
                        pct(&value_bytes(&mut rng))
                    ),
                    _ => (1 + rng.below(50)).to_string(),
                };
                s.client.get(format!("{}/v1/events/{tail}", s.url))
            }
            9 if rng.chance(50) => {
                // Routes with a JSON body or path parameters of their own.
                let seg = pct(&value_bytes(&mut rng));
                let (method, path) = match rng.below(7) {
                    0 => (reqwest::Method::POST, "/v1/keys".to_owned()),
                    1 => (reqwest::Method::POST, "/v1/viewer-tokens".to_owned()),
                    2 => (reqwest::Method::PUT, format!("/v1/types/{seg}")),
                    3 => (
                        reqwest::Method::PUT,
                        format!("/v1/types/order.placed/schemas/{seg}"),
                    ),
                    4 => (reqwest::Method::PUT, format!("/v1/optout/{seg}")),
                    5 => (
                        reqwest::Method::GET,
                        format!("/v1/quarantine?limit={seg}&cursor={seg}"),
                    ),
                    _ => (reqwest::Method::POST, "/v1/quarantine/replay".to_owned()),
                };
                s.client
                    .request(method, format!("{}{path}", s.url))
                    .header(
                        "content-type",
                        *rng.pick(&["application/json", "text/plain"]),
                    )
                    .body(body(&mut rng))
            }
            _ => {
                let method = rng
                    .pick(&[
                        reqwest::Method::PUT,
                        reqwest::Method::DELETE,
                        reqwest::Method::PATCH,
                        reqwest::Method::GET,
                    ])
                    .clone();
                let path = *rng.pick(&[
                    "/v1/events",
                    "/v1/events/1",
                    "/metrics",
                    "/v1",
                    "/openapi.json",
                    "/v1/events/%FF",
                ]);
                s.client
                    .request(method, format!("{}{path}", s.url))
                    .body(body(&mut rng))
            }
        };
        let req = req
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .expect("a request");
        let ingest = req.method() == reqwest::Method::POST && req.url().path() == "/v1/events";
        let res = s
            .client
            .execute(req)
            .await
            .unwrap_or_else(|e| panic!("request {i} (seed {seed:#x}): {}", e.without_url()));
        let status = res.status().as_u16();
        let ctype = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let allow = res.headers().get("allow").cloned();
        if ctype.starts_with("text/event-stream") {
            assert_eq!(status, 200);
            *answered.entry(status).or_default() += 1;
            continue;
        }
        let text = res.text().await.expect("body");
        *answered.entry(status).or_default() += 1;
        assert!(
            status < 500,
            "request {i} (seed {seed:#x}) got {status}: {text}"
        );
        if status == 405 {
            assert!(allow.is_some(), "request {i}: 405 without Allow");
        }
        if status >= 400 {
            assert_eq!(
                ctype, "application/problem+json",
                "request {i} answered {status} with {ctype}: {text}"
            );
            let p: Value = serde_json::from_str(&text).expect("a problem document is JSON");
            assert_eq!(p["status"], status, "{text}");
            assert!(p["title"].is_string() && p["detail"].is_string(), "{text}");
        }
        if ingest && (status == 201 || status == 207) {
            let v: Value = serde_json::from_str(&text).expect("ingest answers JSON");
            for r in v["results"].as_array().expect("results") {
                if r["status"] == "stored" {
                    stored.push((
                        r["seq"].as_u64().expect("a stored event has a seq"),
                        r["id"].as_str().expect("id").to_owned(),
                    ));
                }
            }
        }
    }
    eprintln!(
        "answers by status: {answered:?}, {} events stored",
        stored.len()
    );
    // The mix reached every kind of answer, including stored events.
    assert!(
        stored.len() >= 20,
        "only {} events stored: {answered:?}",
        stored.len()
    );
    for st in [200, 400, 404, 405, 415] {
        assert!(answered.contains_key(&st), "no {st} among {answered:?}");
    }
    for (seq, id) in &stored {
        let (st, ev) = s.get(&format!("/v1/events/{seq}")).await;
        assert_eq!(st, 200, "stored seq {seq} is gone: {ev}");
        assert_eq!(ev["id"].as_str(), Some(id.as_str()), "{ev}");
    }
    assert_eq!(s.get("/healthz").await.0, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_time_limit_gets_a_problem() {
    let s = TestServer::start_with(|c| c.query.request_timeout_secs = 1).await;
    // A body that stops arriving for longer than the limit.
    use futures_util::StreamExt;
    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(b"[".to_vec())])
        .chain(futures_util::stream::pending());
    let res = s
        .client
        .post(format!("{}/v1/events", s.url))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("the server answers before the body ends");
    assert_eq!(res.status().as_u16(), 408);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let p: Value = res.json().await.expect("problem");
    assert_eq!(p["status"], 408, "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("request_timeout_secs"),
        "{p}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_on_a_route_that_reads_it_whole_is_a_problem() {
    let s = TestServer::start().await;
    let res = s
        .client
        .put(format!("{}/v1/types/order.placed/schemas/1.0.0", s.url))
        .header("content-type", "application/json")
        .body(vec![b' '; 3 << 20])
        .send()
        .await;
    // The server may close the connection while the client still writes.
    if let Ok(res) = res {
        assert_eq!(res.status().as_u16(), 413);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
    s.stop().await;
}
