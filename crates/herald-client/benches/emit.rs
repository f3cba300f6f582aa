//! Emits per second into the tracker's queue on one thread, in the four scenarios of the
//! Python reference benchmark (`shared/bench/edx/bench_emit.py`), next to its figures.
//!
//! Run: `cargo bench -p herald-client --bench emit` (options after `--`: `--emits N`,
//! `--runs N`, `--python PATH` to run the Python reference in the same run).
//!
//! For each scenario it reports the median of the runs for two figures:
//! - **emit**: the caller's loop of `emit` calls (build the event, queue it), the cost an
//!   application pays; the queue is large enough that nothing is dropped.
//! - **pipeline**: from the first emit until the worker thread has run the processors and
//!   handed every event to the in-memory backend (emit and processing overlap on two
//!   threads).
//!
//! Each emit passes its own copy of the payload (a clone of a three-key object), as
//! application code building the payload per event would. A benchmark measures; it never
//! asserts a time.

use herald_client::processor::TypeFilter;
use herald_client::{MemoryBackend, Route, Tracker};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const EVENT: &str = "edx.course.enrollment.activated";
const DROPPED: &str = "edx.video.played";

struct Figures {
    emit: f64,
    pipeline: f64,
}

fn scenario(name: char, emits: usize, payload: &Value) -> Figures {
    let (backend, seen) = MemoryBackend::new();
    let builder = Tracker::builder("/bench").capacity(emits + 1);
    let tracker = match name {
        'a' | 'b' => builder.backend(backend),
        _ => builder.route(
            Route::new("filtered")
                .process(TypeFilter::allow([
                    "edx.course.enrollment.activated",
                    "edx.course.enrollment.deactivated",
                    "edx.grades.*",
                ]))
                .to(backend),
        ),
    }
    .build()
    .expect("tracker");
    let t = if name == 'a' {
        tracker.clone()
    } else {
        tracker
            .with_context(json!({"user_id": 42, "session": "2987lkjdyoioey", "org_id": "X", "host": "courses.example.org"}))
            .with_context(json!({"course_id": "course-v1:X+Y+Z", "path": "/courseware/week1/lesson2/"}))
    };
    let ty = if name == 'd' { DROPPED } else { EVENT };
    let start = Instant::now();
    for _ in 0..emits {
        t.emit(ty, payload.clone());
    }
    let emitted = start.elapsed();
    let left = tracker.flush(Duration::from_secs(120));
    let processed = start.elapsed();
    let c = tracker.counters();
    assert_eq!(left, 0);
    assert_eq!(c.dropped.queue_full, 0, "the queue must not overflow in the benchmark");
    let want = if name == 'd' { 0 } else { emits };
    assert_eq!(seen.len(), want);
    if name == 'b' || name == 'c' {
        let e = &seen.events()[0];
        assert_eq!(e.context.get("user_id"), Some(&json!(42)));
        assert_eq!(e.context.get("course_id"), Some(&json!("course-v1:X+Y+Z")));
    }
    drop(seen.take());
    tracker.shutdown(Duration::from_secs(10));
    Figures {
        emit: emits as f64 / emitted.as_secs_f64(),
        pipeline: emits as f64 / processed.as_secs_f64(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let emits: usize = arg("--emits").and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let runs: usize = arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(5);
    let payload = json!({
        "user_id": 42,
        "course_id": "course-v1:X+Y+Z",
        "url": "https://courses.example.org/courses/course-v1:X+Y+Z/courseware/week1/lesson2/",
    });
    // Figures of the Python reference measured on this machine (shared/bench/README.md).
    let readme = [
        ('a', "1 in-memory backend, no context", "79k-109k"),
        ('b', "1 in-memory backend, 2 nested contexts", "68k-91k"),
        ('c', "2 contexts + allowlist route (pass) -> backend", "52k-66k"),
        ('d', "2 contexts + allowlist route (drop)", "66k-74k"),
    ];
    let python = arg("--python").and_then(|py| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/bench/edx/bench_emit.py");
        let out = std::process::Command::new(py)
            .args([script, "--emits", "200000", "--runs", "5", "--json", "/dev/stdout"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let start = text.find("\n{")?;
        serde_json::from_str::<Value>(&text[start..]).ok()
    });
    println!("herald-client emit benchmark: {emits} emits x {runs} runs, median; one emitting thread");
    println!(
        "{:<4}{:<50}{:>14}{:>10}{:>16}{:>18}{:>9}",
        "scn", "description", "emit ev/s", "ns/emit", "pipeline ev/s", "python ev/s", "ratio"
    );
    for (name, desc, py_readme) in readme {
        // One short warm-up run, not counted.
        scenario(name, emits.min(100_000), &payload);
        let figs: Vec<Figures> = (0..runs).map(|_| scenario(name, emits, &payload)).collect();
        let emit = median(figs.iter().map(|f| f.emit).collect());
        let pipeline = median(figs.iter().map(|f| f.pipeline).collect());
        let py_now = python
            .as_ref()
            .and_then(|p| p["results"][name.to_string()]["median_events_per_sec"].as_f64());
        let (py_text, ratio) = match py_now {
            Some(p) => (format!("{:.0}k (now)", p / 1000.0), emit / p),
            None => {
                let lo: f64 = py_readme
                    .split('-')
                    .last()
                    .and_then(|s| s.trim_end_matches('k').parse().ok())
                    .unwrap_or(1.0);
                (format!("{py_readme} (doc)"), emit / (lo * 1000.0))
            }
        };
        println!(
            "{:<4}{:<50}{:>14.0}{:>10.0}{:>16.0}{:>18}{:>8.1}x",
            name,
            desc,
            emit,
            1e9 / emit,
            pipeline,
            py_text,
            ratio
        );
    }
    println!("ratio: emit ev/s over the Python figure (over the top of its documented range when not run now)");
}
