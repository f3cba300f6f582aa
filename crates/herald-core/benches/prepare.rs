//! How long the core takes to validate and canonicalize one event of about 800 bytes (the
//! ingest bench's shape) and to cut its full-text tokens: the per-event CPU of the HTTP
//! threads and of the full-text thread that is Herald's own code; and how long the matcher
//! takes per event to rule out a rare value or word (what a listing spends on each event not
//! indexed yet, which the token signature of each event mostly answers). Run: `cargo bench
//! -p herald-core --bench prepare`. It prints the best of five rounds.

use herald_core::event::{prepare_json, PrepareCtx};
use herald_core::limits::Limits;
use herald_core::matcher::{Matcher, TokenSig, Unshared};
use std::hint::black_box;
use std::time::Instant;

fn event(i: usize) -> String {
    format!(
        r#"{{"id":"{i:016x}","source":"https://shop.example.com/checkout","type":"order.placed","time":"2026-11-30T10:00:00.{:06}Z","subject":"p-{:06}","actor":"user:{}","tenant":"org-{:04}","severity":"info","data":{{"category":"commerce","country":"DE","org":"org-{:04}","product":"p-{:06}","request":{{"id":"req-{i:012x}","session":"s-{i:010x}","ip":"10.1.2.3","ua":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"}},"metrics":{{"duration_ms":{},"bytes":{},"items":{}}},"tags":["a","b"],"note":"the order was placed and paid; shipping follows within two days, by the carrier the customer chose at checkout, with tracking sent by email and text message"}}}}"#,
        i % 1_000_000,
        i % 500_000,
        i % 100_000,
        i % 2000,
        i % 2000,
        i % 500_000,
        i % 5000,
        i * 7 % 100_000,
        i % 9,
    )
}

fn main() {
    const N: usize = 100_000;
    let events: Vec<String> = (0..N).map(event).collect();
    let bytes: usize = events.iter().map(|e| e.len()).sum();
    let limits = Limits::default();
    let mut new_id = || "generated".to_owned();
    let mut ctx = PrepareCtx {
        limits: &limits,
        now_us: 1_790_000_000_000_000,
        now_text: "2026-11-30T10:00:00.000000Z",
        require_specversion: false,
        default_visibility: None,
        type_visibility: None,
        new_id: &mut new_id,
    };
    let mut best_prepare = f64::MAX;
    let mut best_tokens = f64::MAX;
    let mut best_sig = f64::MAX;
    let mut best_fts = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let prepared: Vec<_> = events
            .iter()
            .map(|e| prepare_json(e, "", &mut ctx).expect("valid"))
            .collect();
        best_prepare = best_prepare.min(t.elapsed().as_secs_f64() * 1e9 / N as f64);
        let t = Instant::now();
        for p in &prepared {
            black_box(p.token_text());
        }
        best_tokens = best_tokens.min(t.elapsed().as_secs_f64() * 1e9 / N as f64);
        let t = Instant::now();
        let mut text = String::new();
        for p in &prepared {
            text.clear();
            p.push_fts_text(&mut text);
            black_box(&text);
        }
        best_fts = best_fts.min(t.elapsed().as_secs_f64() * 1e9 / N as f64);
        let t = Instant::now();
        for p in &prepared {
            black_box(TokenSig::of_parts(p.search_parts()));
        }
        best_sig = best_sig.min(t.elapsed().as_secs_f64() * 1e9 / N as f64);
    }
    println!(
        "{N} events of {} bytes on average: prepare_json {best_prepare:.0} ns/event (of which the token signature {best_sig:.0}), token_text {best_tokens:.0} ns/event, push_fts_text {best_fts:.0} ns/event",
        bytes / N
    );
    let prepared: Vec<_> = events
        .iter()
        .map(|e| prepare_json(e, "", &mut ctx).expect("valid"))
        .collect();
    for filter in [
        "data.org:org-0150",
        "req-000000000777",
        "s-00000003e7",
        "type:order.placed",
    ] {
        let m = Matcher::new(herald_core::Filter::parse(filter, 0).expect("filter"));
        let mut best = f64::MAX;
        let mut hits = 0;
        for _ in 0..5 {
            let t = Instant::now();
            hits = prepared
                .iter()
                .enumerate()
                .filter(|(i, p)| m.matches(&Unshared::new(*i as u64, p)))
                .count();
            best = best.min(t.elapsed().as_secs_f64() * 1e9 / N as f64);
        }
        println!("matcher `{filter}`: {best:.0} ns/event ({hits} of {N} match)");
    }
}
