//! The emit benchmark, shared by `benches/emit.rs` (the system allocator) and
//! `benches/emit_mimalloc.rs` (mimalloc, as a service that cares about allocation speed
//! would link): emits per second into the tracker's queue on one thread, in the four
//! scenarios of the Python reference benchmark (`shared/bench/edx/bench_emit.py`), next to
//! its figures.
//!
//! Options after `--`: `--emits N`, `--runs N`, `--python PATH` (a Python with
//! `event-tracking` 4.0.2, to measure the reference in the same run).
//!
//! For each scenario it reports the median of the runs of:
//! - **emit/s (cpu)**: emits per second of CPU time of the emitting thread (from
//!   `/proc/thread-self/schedstat`): the "one core" figure, which other load on the machine
//!   does not distort;
//! - **emit/s (wall)**: the same loop by the wall clock;
//! - **pipeline/s**: from the first emit until the worker has run the processors and handed
//!   every event to the backend (emit and processing overlap on two threads).
//!
//! The backend counts the events and drops them (after checking the first one's context), so
//! memory is recycled as in a running service. Each emit passes its own copy of the payload
//! (a three-key object), as code building the payload per event would. A benchmark measures;
//! it never asserts a time.

use herald_client::processor::TypeFilter;
use herald_client::{Backend, Event, Route, Stats, Tracker};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts events (through the counters) and drops them; checks the first one's context.
struct Sink {
    stats: Option<Arc<Stats>>,
    checked: Arc<AtomicBool>,
    contexts: bool,
}

impl Backend for Sink {
    fn name(&self) -> &str {
        "sink"
    }
    fn start(&mut self, stats: Arc<Stats>) -> Result<(), herald_client::Error> {
        self.stats = Some(stats);
        Ok(())
    }
    fn send(&mut self, events: &[Arc<Event>]) {
        if !self.checked.swap(true, Ordering::Relaxed) && self.contexts {
            let e = &events[0];
            assert_eq!(e.context.get("user_id"), Some(&json!(42)));
            assert_eq!(e.context.get("course_id"), Some(&json!("course-v1:X+Y+Z")));
        }
        if let Some(s) = &self.stats {
            s.add_sent(events.len() as u64);
        }
    }
}

/// CPU time of the calling thread, in nanoseconds (0 where unknown).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

const EVENT: &str = "edx.course.enrollment.activated";
const DROPPED: &str = "edx.video.played";

struct Figures {
    cpu: f64,
    emit: f64,
    pipeline: f64,
}

fn scenario(name: char, emits: usize, payload: &Value) -> Figures {
    let checked = Arc::new(AtomicBool::new(false));
    let backend = Sink {
        stats: None,
        checked: checked.clone(),
        contexts: name != 'a',
    };
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
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    for _ in 0..emits {
        t.emit(ty, payload.clone());
    }
    let emitted = start.elapsed();
    let cpu = thread_cpu_ns().saturating_sub(cpu0).max(1);
    let left = tracker.flush(Duration::from_secs(120));
    let processed = start.elapsed();
    let c = tracker.counters();
    assert_eq!(left, 0);
    assert_eq!(
        c.dropped.queue_full, 0,
        "the queue must not overflow in the benchmark"
    );
    let want = if name == 'd' { 0 } else { emits as u64 };
    assert_eq!(c.sent, want);
    assert_eq!(checked.load(Ordering::Relaxed), want > 0);
    tracker.shutdown(Duration::from_secs(10));
    Figures {
        cpu: emits as f64 / (cpu as f64 / 1e9),
        emit: emits as f64 / emitted.as_secs_f64(),
        pipeline: emits as f64 / processed.as_secs_f64(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

pub fn main(allocator: &str) {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let emits: usize = arg("--emits")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runs: usize = arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(5);
    let payload = json!({
        "user_id": 42,
        "course_id": "course-v1:X+Y+Z",
        "url": "https://courses.example.org/courses/course-v1:X+Y+Z/courseware/week1/lesson2/",
    });
    // Figures of the Python reference measured on this machine (shared/bench/README.md).
    let readme = [
        ('a', "1 backend, no context", "79k-109k"),
        ('b', "1 backend, 2 nested contexts", "68k-91k"),
        (
            'c',
            "2 contexts + allowlist route (pass) -> backend",
            "52k-66k",
        ),
        ('d', "2 contexts + allowlist route (drop)", "66k-74k"),
    ];
    let python = arg("--python").and_then(|py| {
        let script = std::env::var("HERALD_EDX_BENCH").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/bench/edx/bench_emit.py"
            )
            .into()
        });
        let out = std::process::Command::new(py)
            .arg(&script)
            .args(["--emits", "200000", "--runs", "5", "--json", "/dev/stdout"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let start = text.find("\n{")?;
        serde_json::from_str::<Value>(&text[start..]).ok()
    });
    println!("herald-client emit benchmark ({allocator}): {emits} emits x {runs} runs, median; one emitting thread");
    println!(
        "{:<4}{:<48}{:>15}{:>10}{:>15}{:>15}{:>18}{:>8}",
        "scn",
        "description",
        "emit/s (cpu)",
        "ns/emit",
        "emit/s (wall)",
        "pipeline/s",
        "python ev/s",
        "ratio"
    );
    for (name, desc, py_readme) in readme {
        // One short warm-up run, not counted.
        scenario(name, emits.min(100_000), &payload);
        let figs: Vec<Figures> = (0..runs).map(|_| scenario(name, emits, &payload)).collect();
        let cpu = median(figs.iter().map(|f| f.cpu).collect());
        let emit = median(figs.iter().map(|f| f.emit).collect());
        let pipeline = median(figs.iter().map(|f| f.pipeline).collect());
        let py_now = python
            .as_ref()
            .and_then(|p| p["results"][name.to_string()]["median_events_per_sec"].as_f64());
        let (py_text, ratio) = match py_now {
            Some(p) => (format!("{:.0}k (now)", p / 1000.0), cpu / p),
            None => {
                let top: f64 = py_readme
                    .split('-')
                    .next_back()
                    .and_then(|s| s.trim_end_matches('k').parse().ok())
                    .unwrap_or(1.0);
                (format!("{py_readme} (doc)"), cpu / (top * 1000.0))
            }
        };
        println!(
            "{:<4}{:<48}{:>15.0}{:>10.0}{:>15.0}{:>15.0}{:>18}{:>7.1}x",
            name,
            desc,
            cpu,
            1e9 / cpu,
            emit,
            pipeline,
            py_text,
            ratio
        );
    }
    // Where the time of an emit goes: the caller's copy of the payload is part of it.
    let start = Instant::now();
    for _ in 0..emits {
        std::hint::black_box(payload.clone());
    }
    let clone_ns = start.elapsed().as_nanos() as f64 / emits as f64;
    println!("ratio: emit/s (cpu) over the Python figure (over the top of its documented range when not run now)");
    println!("of each emit, {clone_ns:.0} ns are the payload's copy (a three-key JSON object) made by the caller");
}
