//! An axum web service that emits events per request with contexts: a middleware puts each
//! request's id, method and path in a task scope, so every event a handler emits carries
//! them (and no other request's), and emits `http.request.completed` with the status and
//! duration; a handler runs an operation (`enroll.started`/`completed`/`failed`).
//!
//! Run against a Herald server:
//!   `HERALD_URL=http://127.0.0.1:8470 cargo run -p herald-client --example axum_service`
//! (without `HERALD_URL` events go to standard output as NDJSON), then
//!   `curl localhost:3000/courses/rust-101`, `curl -X POST localhost:3000/enroll/rust-101`.
//! `--self-test` serves on a random port, sends three requests, prints the events and exits.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use herald_client::processor::Redact;
use herald_client::{HttpBackend, HttpConfig, MemoryBackend, StdoutBackend, Tracker};
use serde_json::json;
use std::time::{Duration, Instant};

/// The application, built in a function so that tests can serve it anywhere.
fn app(tracker: Tracker) -> Router {
    Router::new()
        .route("/courses/{id}", get(course))
        .route("/enroll/{id}", post(enroll))
        .layer(middleware::from_fn_with_state(tracker.clone(), track))
        .with_state(tracker)
}

/// Runs the request inside a context scope and records its outcome.
async fn track(State(tracker): State<Tracker>, req: Request, next: Next) -> Response {
    let ctx = json!({
        "request_id": herald_client::event::new_id().to_string(),
        "method": req.method().as_str(),
        "path": req.uri().path(),
    });
    let t = tracker.clone();
    tracker
        .scope(ctx, async move {
            let start = Instant::now();
            let res = next.run(req).await;
            t.emit(
                "http.request.completed",
                json!({
                    "status": res.status().as_u16(),
                    "duration_ms": start.elapsed().as_secs_f64() * 1000.0,
                }),
            );
            res
        })
        .await
}

async fn course(State(t): State<Tracker>, Path(id): Path<String>) -> String {
    t.emit("course.viewed", json!({ "course": id }));
    format!("course {id}\n")
}

async fn enroll(State(t): State<Tracker>, Path(id): Path<String>) -> (StatusCode, String) {
    let r: Result<(), String> = t
        .run(
            "enroll",
            json!({ "course": id, "email": "learner@example.org" }),
            async {
                if id == "full" {
                    return Err("the course is full".into());
                }
                t.emit("course.seat.taken", json!({ "course": id }));
                Ok(())
            },
        )
        .await;
    match r {
        Ok(()) => (StatusCode::CREATED, "enrolled\n".into()),
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let self_test = std::env::args().any(|a| a == "--self-test");
    let builder = Tracker::builder("/examples/axum")
        .context(json!({"service": "catalog", "version": env!("CARGO_PKG_VERSION")}))
        // Nothing personal leaves the process: redaction fails closed.
        .processor(Redact::mask(["data.email"]));
    let (builder, memory) = if self_test {
        let (b, seen) = MemoryBackend::new();
        (builder.backend(b), Some(seen))
    } else if let Ok(url) = std::env::var("HERALD_URL") {
        let mut cfg = HttpConfig::new(url);
        cfg.api_key = std::env::var("HERALD_KEY").ok();
        (builder.backend(HttpBackend::new(cfg)), None)
    } else {
        (builder.backend(StdoutBackend::new()), None)
    };
    let tracker = builder.build()?;
    let listen = if self_test {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:3000"
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let service = axum::serve(listener, app(tracker.clone()));
    let server = tokio::spawn(async move { service.await });
    if let Some(seen) = memory {
        for (method, path) in [
            ("GET", "/courses/rust-101"),
            ("POST", "/enroll/rust-101"),
            ("POST", "/enroll/full"),
        ] {
            request(&addr.to_string(), method, path).await?;
        }
        tracker.flush_async(Duration::from_secs(5)).await;
        for e in seen.events() {
            println!("{}", e.to_json());
        }
        server.abort();
    } else {
        eprintln!("listening on http://{addr}");
        tokio::signal::ctrl_c().await?;
        server.abort();
    }
    let left = tracker.shutdown_async(Duration::from_secs(10)).await;
    eprintln!(
        "shut down; {left} events not delivered; {:?}",
        tracker.counters()
    );
    Ok(())
}

/// A minimal HTTP/1.1 request (the example needs no HTTP client).
async fn request(addr: &str, method: &str, path: &str) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    Ok(())
}
