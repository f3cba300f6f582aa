//! `herald bench stream`: many concurrent SSE subscribers with different filters while
//! events are ingested at a steady rate; reports the latency from the ingest
//! acknowledgement to receipt by a subscriber, and what the subscribers cost ingest.
//!
//! Everything runs on this machine: the server on its own runtime, the producers and the
//! subscribers on another, so the figures include the subscribers' own CPU cost.

use super::{gen_events, new_hist, now_us, Common, Server};
use anyhow::Context;
use bytes::Bytes;
use herald_wire::sse::Parser;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct StreamArgs {
    /// Concurrent subscribers.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Ingest rate during the latency run, events per second.
    #[arg(long, default_value_t = 10_000)]
    rate: usize,
    /// Events per ingest request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Length of the latency run, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events for the throughput comparison (as fast as possible, with and without
    /// subscribers).
    #[arg(long, default_value_t = 200_000)]
    throughput_events: usize,
    #[command(flatten)]
    common: Common,
}

/// The filters subscribers use, all distinct, shaped like real dashboards and feeds: an
/// organization's activity, one type within an organization, a type at warning or worse, a
/// user's own events, imports from one country.
fn filters(n: usize) -> Vec<String> {
    use super::gen::TYPES;
    (0..n)
        .map(|i| {
            let k = i / 10;
            match i % 10 {
                0..=3 => format!("tenant:org-{:04}", 1 + i / 10 * 4 + i % 10),
                4 | 5 => format!(
                    "tenant:org-{:04} type:{}",
                    1 + k,
                    TYPES[(i % 10 - 4 + 2 * k) % TYPES.len()].0
                ),
                6 | 7 => format!(
                    "type:{} severity:>=warning -source:/test-{k}",
                    TYPES[(i % 10 - 6 + 2 * k) % TYPES.len()].0
                ),
                8 => format!("actor:user:{}", k * 37),
                _ => format!(
                    "type:import.* data.country:{} -actor:user:{k}",
                    super::gen::COUNTRIES[k % super::gen::COUNTRIES.len()]
                ),
            }
        })
        .collect()
}

/// Receipt times of live events, by seq, from every subscriber.
struct Receipts {
    /// (seq, when received).
    seen: Mutex<Vec<(u64, Instant)>>,
    delivered: AtomicU64,
}

async fn subscribe(
    client: reqwest::Client,
    url: String,
    filter: String,
    receipts: Arc<Receipts>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut res = client
        .get(format!("{url}/v1/stream"))
        .query(&[("filter", filter.as_str())])
        .send()
        .await?;
    anyhow::ensure!(res.status().is_success(), "stream: {}", res.status());
    // The first frames (retry hint, position) are read with the full parser; after that only
    // the `id:` of each event frame is picked out of the bytes, so that the subscribers'
    // own CPU cost, which shares the machine with the server, stays small.
    let mut parser = Parser::new();
    let mut started = false;
    while !started {
        let chunk = res
            .chunk()
            .await?
            .context("stream ended before its first frame")?;
        started = parser.feed(&chunk).iter().any(|f| f.id.is_some());
    }
    ready.fetch_add(1, Ordering::Relaxed);
    let mut local = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let chunk = match tokio::time::timeout(Duration::from_millis(500), res.chunk()).await {
            Ok(Ok(Some(c))) => c,
            Ok(_) => break,
            Err(_) => continue,
        };
        let now = Instant::now();
        tail.extend_from_slice(&chunk);
        // Frames end with a blank line; keep an incomplete last frame for the next chunk.
        let Some(end) = tail.windows(2).rposition(|w| w == b"\n\n") else {
            continue;
        };
        for frame in tail[..end]
            .split(|b| *b == b'\n')
            .collect::<Vec<_>>()
            .windows(2)
        {
            if let (Some(id), true) = (
                frame[0].strip_prefix(b"id: "),
                frame[1].starts_with(b"event: "),
            ) {
                if let Some(seq) = std::str::from_utf8(id).ok().and_then(|t| t.parse().ok()) {
                    local.push((seq, now));
                }
            }
        }
        tail.drain(..end + 2);
    }
    receipts
        .delivered
        .fetch_add(local.len() as u64, Ordering::Relaxed);
    if let Ok(mut s) = receipts.seen.lock() {
        s.extend(local);
    }
    Ok(())
}

/// Sends `bodies` at `per_sec` requests per second; records each event's ack time by seq.
async fn paced_ingest(
    url: &str,
    bodies: &[Bytes],
    per_sec: f64,
    acks: &Mutex<Vec<(u64, Instant)>>,
) -> anyhow::Result<(usize, hdrhistogram::Histogram<u64>, Duration)> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut hist = new_hist();
    let mut tasks = tokio::task::JoinSet::new();
    let mut events = 0;
    // One answered request: its latency, and each event's acknowledgement time by seq.
    let mut record = |(seqs, acked, lat): (Vec<u64>, Instant, Duration)| {
        let _ = hist.record(lat.as_micros() as u64);
        let n = seqs.len();
        acks.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .extend(seqs.into_iter().map(|s| (s, acked)));
        anyhow::Ok(n)
    };
    for (i, body) in bodies.iter().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / per_sec);
        tokio::time::sleep_until(due.into()).await;
        let (client, body, url) = (client.clone(), body.clone(), format!("{url}/v1/events"));
        tasks.spawn(async move {
            let t = Instant::now();
            let res = client
                .post(url)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await?;
            anyhow::ensure!(res.status().as_u16() == 201, "ingest: {}", res.status());
            let v: serde_json::Value = res.json().await?;
            let acked = Instant::now();
            let seqs: Vec<u64> = v["results"]
                .as_array()
                .map(|a| a.iter().filter_map(|r| r["seq"].as_u64()).collect())
                .unwrap_or_default();
            anyhow::Ok((seqs, acked, acked - t))
        });
        while let Some(r) = tasks.try_join_next() {
            events += record(r??)?;
        }
    }
    while let Some(r) = tasks.join_next().await {
        events += record(r??)?;
    }
    Ok((events, hist, started.elapsed()))
}

pub fn stream(a: StreamArgs) -> anyhow::Result<()> {
    let now = now_us();
    let day = 86_400_000_000;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let paced_n = a.rate * a.seconds as usize;
    let evs = gen_events(11, paced_n, now - day, now, "paced")?;
    let bodies = super::bodies(&evs, a.batch.max(1));
    let per_sec = a.rate as f64 / a.batch.max(1) as f64;
    let tp_a = super::bodies(
        &gen_events(12, a.throughput_events, now - day, now, "throughput-a")?,
        1000,
    );
    let tp_b = super::bodies(
        &gen_events(13, a.throughput_events, now - day, now, "throughput-b")?,
        1000,
    );
    let tp_c = super::bodies(
        &gen_events(14, a.throughput_events, now - day, now, "throughput-c")?,
        1000,
    );
    // The database slows as it grows; loaded first, it grows by a smaller share during the
    // three throughput runs, so they compare like with like.
    let preload = super::bodies(
        &gen_events(15, a.throughput_events * 2, now - day, now, "preload")?,
        1000,
    );

    let mut common = Common { ..a.common };
    common.no_baseline = true;
    let server = Server::start(&common, vec!["data.org".into()])?;
    let url = server.url.clone();
    println!(
        "Herald: {} subscribers with {} distinct filters; ingest {} ev/s in batches of {} for {} s",
        a.subscribers,
        filters(a.subscribers)
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        a.rate,
        a.batch,
        a.seconds
    );

    server.measured("preload (not compared)", || {
        client_rt.block_on(super::http_load(&url, Arc::new(preload), 1000, 4, None))
    })?;
    // Throughput without subscribers.
    let t0 = server.measured("without subscribers", || {
        client_rt.block_on(super::http_load(&url, Arc::new(tp_a), 1000, 4, None))
    })?;

    // Subscribers connect.
    let receipts = Arc::new(Receipts {
        seen: Mutex::new(Vec::new()),
        delivered: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    let sub_client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.subscribers)
        .build()?;
    let mut subs = Vec::new();
    for f in filters(a.subscribers) {
        subs.push(client_rt.spawn(subscribe(
            sub_client.clone(),
            url.clone(),
            f,
            receipts.clone(),
            stop.clone(),
            ready.clone(),
        )));
    }
    let t = Instant::now();
    while ready.load(Ordering::Relaxed) < a.subscribers as u64 {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "only {} of {} subscribers connected",
            ready.load(Ordering::Relaxed),
            a.subscribers
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{} subscribers connected in {:.1}s",
        a.subscribers,
        t.elapsed().as_secs_f64()
    );

    // Paced ingest with everyone listening: latency from acknowledgement to receipt.
    let acks = Mutex::new(Vec::new());
    let (paced_events, ingest_lat, paced_time) =
        client_rt.block_on(paced_ingest(&url, &bodies, per_sec, &acks))?;
    std::thread::sleep(Duration::from_secs(1));

    // Throughput with subscribers (their filters match part of these events too).
    let t1 = server.measured("with subscribers", || {
        client_rt.block_on(super::http_load(&url, Arc::new(tp_b), 1000, 4, None))
    })?;
    stop.store(true, Ordering::Relaxed);
    for s in subs {
        client_rt.block_on(s).context("subscriber task")??;
    }
    // Without subscribers again, on the database as large as it was for the run with them:
    // the database grows from run to run and gets slower, so the reference is the mean of
    // the runs before and after.
    std::thread::sleep(Duration::from_secs(1));
    let t2 = server.measured("without subscribers, again", || {
        client_rt.block_on(super::http_load(&url, Arc::new(tp_c), 1000, 4, None))
    })?;

    let acks: std::collections::HashMap<u64, Instant> = acks
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .into_iter()
        .collect();
    let seen = std::mem::take(
        &mut *receipts
            .seen
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?,
    );
    let mut lat = new_hist();
    let mut early = 0u64;
    for (seq, at) in &seen {
        if let Some(ack) = acks.get(seq) {
            match at.checked_duration_since(*ack) {
                Some(d) => {
                    let _ = lat.record(d.as_micros().max(1) as u64);
                }
                None => {
                    // Received before the producer read its acknowledgement.
                    early += 1;
                    let _ = lat.record(1);
                }
            }
        }
    }
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!("\npaced ingest: {paced_events} events in {:.1}s = {:.0} ev/s; ingest request p50 {:.2} ms p99 {:.2} ms",
        paced_time.as_secs_f64(), paced_events as f64 / paced_time.as_secs_f64(), ms(&ingest_lat, 0.5), ms(&ingest_lat, 0.99));
    println!(
        "delivery: {} live deliveries measured ({} arrived before the producer read its ack, counted as 0)",
        lat.len(),
        early
    );
    println!(
        "latency ack -> subscriber receipt: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(&lat, 0.5),
        ms(&lat, 0.99),
        lat.max() as f64 / 1000.0
    );
    let without = (t0.sustained() + t2.sustained()) / 2.0;
    println!(
        "max ingest until queryable (batches of 1000, 4 connections): without subscribers {:.0} and {:.0} ev/s (before and after), with {} subscribers {:.0} ev/s, ratio {:.2}",
        t0.sustained(),
        t2.sustained(),
        a.subscribers,
        t1.sustained(),
        t1.sustained() / without
    );
    println!(
        "acknowledged only: without {:.0} and {:.0} ev/s, with {:.0} ev/s",
        t0.rate(),
        t2.rate(),
        t1.rate()
    );
    println!(
        "events delivered to subscribers in all: {}",
        receipts.delivered.load(Ordering::Relaxed)
    );
    drop(server);
    Ok(())
}
