//! End-to-end throughput: events per second from `emit` to "stored" answers of a running
//! Herald server, through the HTTP backend (batches, gzip, one request in flight).
//!
//! Start a server (`cargo run --release -p herald -- serve --data /tmp/herald-bench`), then
//! `cargo run --release -p herald-client --example e2e_bench -- --url http://127.0.0.1:8470`
//! with optional `--events N` (default 300,000), `--batch N` (1000), `--no-gzip`, `--spool DIR`.
//! It prints the emit rate, the delivery rate and where the time went (serializing and
//! compressing on the client, waiting for answers).

use herald_client::spool::SpoolConfig;
use herald_client::{HttpBackend, HttpConfig, Tracker};
use serde_json::json;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let url = arg("--url").unwrap_or_else(|| "http://127.0.0.1:8470".into());
    let n: usize = arg("--events")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let batch: usize = arg("--batch").and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mut cfg = HttpConfig::new(&url);
    cfg.api_key = std::env::var("HERALD_KEY").ok();
    cfg.batch_events = batch;
    cfg.batch_bytes = 4 << 20;
    cfg.gzip = !args.iter().any(|a| a == "--no-gzip");
    if let Some(dir) = arg("--spool") {
        cfg.spool = Some(SpoolConfig::new(dir));
    }
    let gzip = cfg.gzip;
    let tracker = Tracker::builder(format!("/bench/e2e/{}", std::process::id()))
        .capacity(n + 1)
        .backend(HttpBackend::new(cfg))
        .build()?;
    let t = tracker
        .with_context(json!({"user_id": 42, "session": "2987lkjdyoioey", "org_id": "X"}))
        .with_context(json!({"course_id": "course-v1:X+Y+Z", "path": "/courseware/week1/"}));
    let payload = json!({
        "user_id": 42,
        "course_id": "course-v1:X+Y+Z",
        "url": "https://courses.example.org/courses/course-v1:X+Y+Z/courseware/week1/lesson2/",
    });
    // The size of one event as sent.
    let mut probe = herald_client::Event::new("edx.course.enrollment.activated", "/bench".into());
    probe.data = Some(payload.clone());
    let size = probe.to_json().len();

    let start = Instant::now();
    for _ in 0..n {
        t.emit("edx.course.enrollment.activated", payload.clone());
    }
    let emitted = start.elapsed();
    let left = tracker.flush(Duration::from_secs(600));
    let delivered = start.elapsed();
    let c = tracker.counters();
    tracker.shutdown(Duration::from_secs(10));
    println!(
        "e2e to {url}: {n} events of ~{size} bytes, batches of {batch}, gzip {}",
        if gzip { "on" } else { "off" }
    );
    println!(
        "emit:     {:>10.0} ev/s ({:.2} s)",
        n as f64 / emitted.as_secs_f64(),
        emitted.as_secs_f64()
    );
    println!(
        "delivered:{:>10.0} ev/s ({:.2} s until every event was answered)",
        c.sent as f64 / delivered.as_secs_f64(),
        delivered.as_secs_f64()
    );
    println!("left {left}; counters {c:?}");
    Ok(())
}
