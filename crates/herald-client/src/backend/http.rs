//! The HTTP backend: delivers events to Herald's `POST /v1/events` in batches (by count,
//! bytes and time), gzip-compressed, retrying timeouts, 429 and 5xx with exponential
//! backoff and jitter, and reading the per-event results of every answer, so that rejected
//! events are reported (and counted) instead of retried or lost.
//!
//! It exists to make a failing destination an outage rather than a loss: with a spool
//! ([`HttpConfig::spool`]) events wait on disk while Herald is unreachable and go out in
//! order when it is back, across restarts of this process; without one they wait in a
//! bounded memory buffer. Sending happens on the backend's own thread (a current-thread
//! tokio runtime), so it needs no runtime from the application and never slows `emit`.
//!
//! [`BatchSender`] is the part that sends one batch and interprets the answer; the CLI's
//! `herald import` uses it directly.

use super::spool::{Pos, Spool, SpoolConfig};
use super::Backend;
use crate::event::Event;
use crate::stats::Stats;
use herald_wire::{IngestResponse, IngestResult, IngestStatus, Problem};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Retry schedule: `base * 2^attempt`, capped at `max`, with jitter (each wait is between
/// half and all of the computed delay). A `Retry-After` from the server is honoured (capped
/// at `max`).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub base: Duration,
    pub max: Duration,
    /// Attempts per batch before giving up; `None` retries until the shutdown deadline. With
    /// a spool, events are never given up: after this many attempts the sender waits `max`
    /// and starts again.
    pub max_attempts: Option<u32>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            base: Duration::from_millis(100),
            max: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

impl Retry {
    fn delay(&self, attempt: u32) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let half = d / 2;
        let jitter = crate::event::random_u64() % (half.as_micros() as u64 + 1);
        half + Duration::from_micros(jitter)
    }
}

/// How to reach Herald and how to batch.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Base URL, e.g. `http://127.0.0.1:8470`.
    pub url: String,
    /// Sent as `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Most events per request (default 1,000).
    pub batch_events: usize,
    /// Most uncompressed bytes per request, about (default 1 MiB).
    pub batch_bytes: usize,
    /// How long a partial batch waits for more events (default 50 ms).
    pub linger: Duration,
    /// Compress request bodies (default on). A server that answers 415 gets plain bodies
    /// from then on.
    pub gzip: bool,
    /// Per-request timeout (default 30 s).
    pub timeout: Duration,
    pub retry: Retry,
    /// Without a spool: bytes of events held in memory at most (default 64 MiB); more are
    /// dropped (`dropped.buffer_full`).
    pub buffer_bytes: usize,
    pub spool: Option<SpoolConfig>,
}

impl HttpConfig {
    pub fn new(url: impl Into<String>) -> HttpConfig {
        HttpConfig {
            url: url.into().trim_end_matches('/').to_owned(),
            api_key: None,
            batch_events: 1000,
            batch_bytes: 1 << 20,
            linger: Duration::from_millis(50),
            gzip: true,
            timeout: Duration::from_secs(30),
            retry: Retry::default(),
            buffer_bytes: 64 << 20,
            spool: None,
        }
    }
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Stored,
    Duplicate,
    Conflict,
    Rejected,
    /// Herald kept it in its quarantine (failed its type's schema or a server processor);
    /// it can be replayed there once fixed.
    Quarantined,
    /// Herald dropped it on purpose (sampled out, or its actor opted out).
    Dropped,
    /// Not delivered: retries ran out, or the shutdown deadline passed (without spool).
    Failed,
}

/// The result for one event, given to [`HttpBackend::on_result`].
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    pub status: DeliveryStatus,
    /// The HTTP status of the answer (0 when there was none).
    pub http_status: u16,
    pub seq: Option<u64>,
    pub id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub pointer: Option<&'a str>,
    /// The event as sent (JSON).
    pub event: &'a [u8],
}

type OnResult = Arc<dyn Fn(&Delivery<'_>) + Send + Sync>;

/// The outcome of sending one batch.
#[derive(Debug, Clone)]
pub enum BatchOutcome {
    /// The server answered for every event (201, 207, 409 or 422).
    Results {
        status: u16,
        results: Vec<IngestResult>,
    },
    /// The server refused the request as a whole and retrying cannot help (400, 401, 403,
    /// 404, ...): every event of the batch gets this reason.
    Refused { status: u16, reason: String },
    /// 413: the request is too large; split it.
    TooLarge { reason: String },
    /// Retries ran out or the deadline passed; the last error.
    Unavailable { reason: String },
}

/// Sends batches of events (NDJSON lines) to `POST /v1/events` and interprets the answers.
pub struct BatchSender {
    client: reqwest::Client,
    endpoint: String,
    gzip: AtomicBool,
    retry: Retry,
    stats: Option<Arc<Stats>>,
}

/// Installs rustls' ring provider when the process has none, so that building the client
/// cannot panic (the `herald` binary installs the same provider itself).
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl BatchSender {
    pub fn new(cfg: &HttpConfig) -> Result<BatchSender, crate::Error> {
        ensure_crypto_provider();
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(k) = &cfg.api_key {
            let mut v =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                    crate::Error::Config("the key contains characters a header cannot".into())
                })?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("herald-client/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| crate::Error::Http(e.to_string()))?;
        Ok(BatchSender {
            client,
            endpoint: format!("{}/v1/events", cfg.url.trim_end_matches('/')),
            gzip: AtomicBool::new(cfg.gzip),
            retry: cfg.retry,
            stats: None,
        })
    }

    /// Counts retries in these counters.
    pub fn with_stats(mut self, stats: Arc<Stats>) -> BatchSender {
        self.stats = Some(stats);
        self
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn body(&self, lines: &[impl AsRef<[u8]>]) -> (Vec<u8>, bool) {
        let mut raw = Vec::with_capacity(lines.iter().map(|l| l.as_ref().len() + 1).sum());
        for l in lines {
            raw.extend_from_slice(l.as_ref());
            raw.push(b'\n');
        }
        if !self.gzip.load(Ordering::Relaxed) {
            return (raw, false);
        }
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(raw.len() / 4),
            flate2::Compression::fast(),
        );
        match enc.write_all(&raw).and_then(|_| enc.finish()) {
            Ok(z) => (z, true),
            Err(_) => (raw, false),
        }
    }

    /// Sends one batch, retrying timeouts, connection errors, 408, 429 and 5xx until the
    /// answer, the retry limit, or `deadline`.
    pub async fn send(
        &self,
        lines: &[impl AsRef<[u8]>],
        deadline: Option<Instant>,
    ) -> BatchOutcome {
        self.send_with(lines, &|| deadline, self.retry.max_attempts)
            .await
    }

    /// Sends with a deadline read before every attempt (a shutdown can start meanwhile).
    async fn send_with(
        &self,
        lines: &[impl AsRef<[u8]>],
        deadline_of: &(dyn Fn() -> Option<Instant> + Sync),
        max_attempts: Option<u32>,
    ) -> BatchOutcome {
        let (mut body, mut gz) = self.body(lines);
        let mut attempt = 0u32;
        loop {
            let deadline = deadline_of();
            let mut req = self
                .client
                .post(&self.endpoint)
                .header("content-type", "application/x-ndjson");
            if gz {
                req = req.header("content-encoding", "gzip");
            }
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return BatchOutcome::Unavailable {
                        reason: "the shutdown deadline passed".into(),
                    };
                }
                req = req.timeout(left);
            }
            let wait: Option<Duration>;
            let last_error: String;
            match req.body(body.clone()).send().await {
                Ok(res) => {
                    let status = res.status().as_u16();
                    let retry_after = res
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let text = res.text().await.unwrap_or_default();
                    match status {
                        200..=299 => {
                            return match serde_json::from_str::<IngestResponse>(&text) {
                                Ok(r) => BatchOutcome::Results {
                                    status,
                                    results: r.results,
                                },
                                Err(e) => BatchOutcome::Refused {
                                    status,
                                    reason: format!("unexpected answer: {e}"),
                                },
                            }
                        }
                        409 | 422 => {
                            if let Ok(Problem {
                                results: Some(results),
                                ..
                            }) = serde_json::from_str::<Problem>(&text)
                            {
                                return BatchOutcome::Results { status, results };
                            }
                            return BatchOutcome::Refused {
                                status,
                                reason: problem_text(status, &text),
                            };
                        }
                        413 => {
                            return BatchOutcome::TooLarge {
                                reason: problem_text(status, &text),
                            }
                        }
                        415 if gz => {
                            // An older server without request decompression.
                            self.gzip.store(false, Ordering::Relaxed);
                            (body, gz) = self.body(lines);
                            continue;
                        }
                        408 | 429 | 500..=599 => {
                            wait = retry_after;
                            last_error = problem_text(status, &text);
                        }
                        _ => {
                            return BatchOutcome::Refused {
                                status,
                                reason: problem_text(status, &text),
                            }
                        }
                    }
                }
                Err(e) => {
                    wait = None;
                    last_error = format!(
                        "cannot reach Herald at {}: {}",
                        self.endpoint,
                        error_chain(&e)
                    );
                }
            }
            attempt += 1;
            if max_attempts.is_some_and(|m| attempt >= m) {
                return BatchOutcome::Unavailable { reason: last_error };
            }
            let mut pause = self.retry.delay(attempt - 1);
            if let Some(w) = wait {
                pause = w.min(self.retry.max).max(pause);
            }
            if let Some(d) = deadline {
                if Instant::now() + pause >= d {
                    return BatchOutcome::Unavailable { reason: last_error };
                }
            }
            tracing::debug!(attempt, error = %last_error, ?pause, "retrying a batch");
            if let Some(s) = &self.stats {
                Stats::add(&s.retried, lines.len() as u64);
            }
            // Sleep in slices, so that a shutdown that starts meanwhile is noticed.
            let until = Instant::now() + pause;
            loop {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                if deadline_of().is_some_and(|d| until >= d) {
                    return BatchOutcome::Unavailable { reason: last_error };
                }
                tokio::time::sleep((until - now).min(Duration::from_millis(100))).await;
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// `"422 Unprocessable: detail"` from a problem+json body, or the status and text.
fn problem_text(status: u16, text: &str) -> String {
    match serde_json::from_str::<Problem>(text) {
        Ok(p) => {
            let mut msg = format!("{status} {}", p.title);
            if let Some(d) = p.detail {
                msg.push_str(": ");
                msg.push_str(&d);
            }
            msg
        }
        Err(_) => format!("{status}: {}", text.chars().take(200).collect::<String>()),
    }
}

/// Events waiting to be sent: on disk, or in memory.
enum Buffer {
    Memory {
        lines: VecDeque<Vec<u8>>,
        bytes: usize,
        max: usize,
    },
    Spool(Spool),
}

/// A batch taken from the buffer; `end` is where the spool's cursor moves once answered.
struct Batch {
    lines: Vec<Vec<u8>>,
    end: Option<Pos>,
}

struct Progress {
    /// Events accepted into the buffer (including those found in the spool at start).
    accepted: u64,
    /// Events answered or given up.
    done: u64,
    /// Skip the linger: someone waits.
    urgent: bool,
    /// Stop after delivering what is there, by this deadline.
    closing: Option<Instant>,
    stopped: bool,
    /// Events given up because a shutdown deadline passed (without spool).
    abandoned: u64,
}

struct Inner {
    buffer: Mutex<Buffer>,
    progress: Mutex<Progress>,
    changed: Condvar,
    wake: tokio::sync::Notify,
    stats: Arc<Stats>,
    on_result: Option<OnResult>,
}

impl Inner {
    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Delivers events to Herald over HTTP.
///
/// ```no_run
/// use herald_client::{HttpBackend, HttpConfig, Tracker, spool::SpoolConfig};
/// let mut cfg = HttpConfig::new("http://127.0.0.1:8470");
/// cfg.spool = Some(SpoolConfig::new("/var/spool/myapp-herald"));
/// let tracker = Tracker::builder("/myapp").backend(HttpBackend::new(cfg)).build()?;
/// tracker.emit("app.started", serde_json::json!({}));
/// tracker.shutdown(std::time::Duration::from_secs(10));
/// # Ok::<(), herald_client::Error>(())
/// ```
pub struct HttpBackend {
    cfg: HttpConfig,
    on_result: Option<OnResult>,
    inner: Option<Arc<Inner>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpBackend {
    pub fn new(cfg: HttpConfig) -> HttpBackend {
        HttpBackend {
            cfg,
            on_result: None,
            inner: None,
            thread: None,
        }
    }

    /// Calls `f` with the result of every event (on the sender thread; keep it short).
    pub fn on_result(mut self, f: impl Fn(&Delivery<'_>) + Send + Sync + 'static) -> HttpBackend {
        self.on_result = Some(Arc::new(f));
        self
    }
}

impl Backend for HttpBackend {
    fn name(&self) -> &str {
        "http"
    }

    fn start(&mut self, stats: Arc<Stats>) -> Result<(), crate::Error> {
        let sender = BatchSender::new(&self.cfg)?.with_stats(stats.clone());
        let (buffer, pending) = match &self.cfg.spool {
            Some(sc) => {
                let s = Spool::open(sc.clone())
                    .map_err(|e| crate::Error::Io(format!("spool {}: {e}", sc.dir.display())))?;
                let n = s.len();
                (Buffer::Spool(s), n)
            }
            None => (
                Buffer::Memory {
                    lines: VecDeque::new(),
                    bytes: 0,
                    max: self.cfg.buffer_bytes,
                },
                0,
            ),
        };
        let inner = Arc::new(Inner {
            buffer: Mutex::new(buffer),
            progress: Mutex::new(Progress {
                accepted: pending,
                done: 0,
                urgent: false,
                closing: None,
                stopped: false,
                abandoned: 0,
            }),
            changed: Condvar::new(),
            wake: tokio::sync::Notify::new(),
            stats,
            on_result: self.on_result.clone(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| crate::Error::Io(format!("cannot start the sender runtime: {e}")))?;
        let (i, cfg) = (inner.clone(), self.cfg.clone());
        let thread = std::thread::Builder::new()
            .name("herald-http".into())
            .spawn(move || {
                rt.block_on(sender_loop(i.clone(), sender, cfg));
                let mut p = i.progress();
                p.stopped = true;
                drop(p);
                i.changed.notify_all();
            })
            .map_err(|e| crate::Error::Io(format!("cannot start the sender thread: {e}")))?;
        self.inner = Some(inner);
        self.thread = Some(thread);
        Ok(())
    }

    fn send(&mut self, events: &[Arc<Event>]) {
        let Some(inner) = &self.inner else { return };
        let lines: Vec<Vec<u8>> = events
            .iter()
            .map(|e| {
                let mut v = Vec::with_capacity(320);
                e.write_json(&mut v);
                v
            })
            .collect();
        let accepted = match &mut *inner.buffer() {
            Buffer::Memory {
                lines: q,
                bytes,
                max,
            } => {
                let mut n = 0u64;
                for l in lines {
                    if *bytes + l.len() > *max {
                        Stats::add(&inner.stats.buffer_full, 1);
                        continue;
                    }
                    *bytes += l.len();
                    q.push_back(l);
                    n += 1;
                }
                n
            }
            Buffer::Spool(s) => match s.append(&lines) {
                Ok(a) => {
                    Stats::add(&inner.stats.spooled, a.written);
                    Stats::add(&inner.stats.spool_full, a.refused);
                    a.written
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot write to the spool; events dropped");
                    inner.stats.add_backend_error(lines.len() as u64);
                    0
                }
            },
        };
        inner.progress().accepted += accepted;
        inner.wake.notify_one();
    }

    fn flush(&mut self, deadline: Instant) -> u64 {
        let Some(inner) = &self.inner else { return 0 };
        let mut p = inner.progress();
        let target = p.accepted;
        p.urgent = true;
        inner.wake.notify_one();
        while p.done < target && !p.stopped {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            p = inner
                .changed
                .wait_timeout(p, (deadline - now).min(Duration::from_millis(100)))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
            inner.wake.notify_one();
        }
        p.urgent = false;
        let left = target.saturating_sub(p.done);
        drop(p);
        if let Buffer::Spool(s) = &mut *inner.buffer() {
            let _ = s.sync();
        }
        left
    }

    fn close(&mut self, deadline: Instant) -> u64 {
        let Some(inner) = self.inner.take() else {
            return 0;
        };
        {
            let mut p = inner.progress();
            p.closing = Some(deadline);
        }
        inner.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let p = inner.progress();
        let left = p.accepted.saturating_sub(p.done) + p.abandoned;
        drop(p);
        if let Buffer::Spool(s) = &mut *inner.buffer() {
            let _ = s.sync();
        }
        left
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        if self.inner.is_some() {
            self.close(Instant::now() + Duration::from_secs(5));
        }
    }
}

fn take_batch(inner: &Inner, cfg: &HttpConfig, max_n: usize) -> Result<Batch, std::io::Error> {
    match &mut *inner.buffer() {
        Buffer::Memory { lines, bytes, .. } => {
            let mut out = Vec::new();
            let mut size = 0usize;
            while out.len() < max_n && (size < cfg.batch_bytes || out.is_empty()) {
                let Some(l) = lines.pop_front() else { break };
                *bytes -= l.len();
                size += l.len();
                out.push(l);
            }
            Ok(Batch {
                lines: out,
                end: None,
            })
        }
        Buffer::Spool(s) => {
            let _ = s.sync_if_due();
            let (lines, end) = s.peek(max_n, cfg.batch_bytes)?;
            Ok(Batch {
                lines,
                end: Some(end),
            })
        }
    }
}

fn buffered(inner: &Inner) -> (usize, usize) {
    match &*inner.buffer() {
        Buffer::Memory { lines, bytes, .. } => (lines.len(), *bytes),
        Buffer::Spool(s) => (s.len() as usize, s.bytes() as usize),
    }
}

async fn sender_loop(inner: Arc<Inner>, sender: BatchSender, cfg: HttpConfig) {
    let spooled = cfg.spool.is_some();
    let mut max_n = cfg.batch_events.max(1);
    loop {
        let (n, bytes) = buffered(&inner);
        let closing = inner.progress().closing;
        if n == 0 {
            if closing.is_some() {
                return;
            }
            // Wake for new events, or now and then for the spool's fsync interval.
            let _ = tokio::time::timeout(Duration::from_millis(500), inner.wake.notified()).await;
            if let Buffer::Spool(s) = &mut *inner.buffer() {
                let _ = s.sync_if_due();
            }
            continue;
        }
        if n < max_n && bytes < cfg.batch_bytes && closing.is_none() && !inner.progress().urgent {
            let _ = tokio::time::timeout(cfg.linger, async {
                loop {
                    inner.wake.notified().await;
                    let (n, b) = buffered(&inner);
                    let p = inner.progress();
                    if n >= max_n || b >= cfg.batch_bytes || p.urgent || p.closing.is_some() {
                        break;
                    }
                }
            })
            .await;
        }
        let batch = match take_batch(&inner, &cfg, max_n) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the spool; retrying in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.lines.is_empty() {
            continue;
        }
        // With a spool, events are never given up (they wait on disk); without, the retry
        // limit applies.
        let attempts = if spooled {
            None
        } else {
            cfg.retry.max_attempts
        };
        let closing_at = || inner.progress().closing;
        let outcome = loop {
            let o = sender.send_with(&batch.lines, &closing_at, attempts).await;
            if let BatchOutcome::Unavailable { reason } = &o {
                if spooled && inner.progress().closing.is_none() {
                    tracing::warn!(error = %reason, "Herald unavailable; events wait in the spool");
                    tokio::time::sleep(cfg.retry.max).await;
                    continue;
                }
            }
            break o;
        };
        match outcome {
            BatchOutcome::TooLarge { reason } if batch.lines.len() > 1 => {
                // Retake a smaller batch from the same place next time (the memory buffer
                // gets the lines back at its front).
                max_n = (batch.lines.len() / 2).max(1);
                if let Buffer::Memory { lines, bytes, .. } = &mut *inner.buffer() {
                    for l in batch.lines.into_iter().rev() {
                        *bytes += l.len();
                        lines.push_front(l);
                    }
                }
                tracing::debug!(%reason, max_n, "batch too large; splitting");
                continue;
            }
            BatchOutcome::Unavailable { reason } if spooled => {
                // Closing: the events stay in the spool for the next start.
                tracing::info!(error = %reason, left = buffered(&inner).0, "closing with events left in the spool");
                return;
            }
            outcome => {
                let n = batch.lines.len() as u64;
                let abandoned = matches!(outcome, BatchOutcome::Unavailable { .. })
                    && inner.progress().closing.is_some();
                settle(&inner, &batch.lines, outcome, abandoned);
                if let (Some(end), Buffer::Spool(s)) = (batch.end, &mut *inner.buffer()) {
                    if let Err(e) = s.ack(end, n) {
                        tracing::error!(error = %e, "cannot move the spool cursor");
                    }
                }
                max_n = cfg.batch_events.max(1);
                let mut p = inner.progress();
                p.done += n;
                if abandoned {
                    p.abandoned += n;
                }
                drop(p);
                inner.changed.notify_all();
            }
        }
        // Closing without spool and out of time: count what is left as lost.
        if !spooled {
            if let Some(d) = inner.progress().closing {
                if Instant::now() >= d {
                    let mut left = 0u64;
                    if let Buffer::Memory { lines, bytes, .. } = &mut *inner.buffer() {
                        left = lines.len() as u64;
                        lines.clear();
                        *bytes = 0;
                    }
                    Stats::add(&inner.stats.shutdown, left);
                    let mut p = inner.progress();
                    p.done += left;
                    p.abandoned += left;
                    drop(p);
                    inner.changed.notify_all();
                    return;
                }
            }
        }
    }
}

/// Counts and reports the result of every event of a batch.
fn settle(inner: &Inner, lines: &[Vec<u8>], outcome: BatchOutcome, shutdown: bool) {
    let st = &inner.stats;
    let report = |d: Delivery<'_>| {
        if let Some(f) = &inner.on_result {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&d)));
        }
    };
    match outcome {
        BatchOutcome::Results { status, results } => {
            let mut seen = vec![false; lines.len()];
            for r in &results {
                let Some(line) = lines.get(r.index) else {
                    continue;
                };
                seen[r.index] = true;
                let s = match r.status {
                    IngestStatus::Stored => {
                        st.add_sent(1);
                        DeliveryStatus::Stored
                    }
                    IngestStatus::Duplicate => {
                        st.add_sent(1);
                        DeliveryStatus::Duplicate
                    }
                    IngestStatus::Conflict => {
                        Stats::add(&st.conflict, 1);
                        tracing::warn!(id = ?r.id, "Herald holds a different event with this id");
                        DeliveryStatus::Conflict
                    }
                    IngestStatus::Rejected => {
                        Stats::add(&st.rejected, 1);
                        tracing::warn!(reason = ?r.reason, pointer = ?r.pointer, "Herald rejected an event");
                        DeliveryStatus::Rejected
                    }
                    IngestStatus::Quarantined => {
                        Stats::add(&st.rejected, 1);
                        tracing::warn!(reason = ?r.reason, "Herald quarantined an event");
                        DeliveryStatus::Quarantined
                    }
                    IngestStatus::Dropped => {
                        Stats::add(&st.sampled, 1);
                        DeliveryStatus::Dropped
                    }
                };
                report(Delivery {
                    status: s,
                    http_status: status,
                    seq: r.seq,
                    id: r.id.as_deref(),
                    reason: r.reason.as_deref(),
                    pointer: r.pointer.as_deref(),
                    event: line,
                });
            }
            for (_, line) in lines.iter().enumerate().filter(|(i, _)| !seen[*i]) {
                Stats::add(&st.rejected, 1);
                report(Delivery {
                    status: DeliveryStatus::Rejected,
                    http_status: status,
                    seq: None,
                    id: None,
                    reason: Some("the answer had no result for this event"),
                    pointer: None,
                    event: line,
                });
            }
        }
        BatchOutcome::Refused { status, reason } => refuse_all(st, lines, status, &reason, &report),
        BatchOutcome::TooLarge { reason } => refuse_all(st, lines, 413, &reason, &report),
        BatchOutcome::Unavailable { reason } => {
            Stats::add(
                if shutdown { &st.shutdown } else { &st.gave_up },
                lines.len() as u64,
            );
            tracing::warn!(error = %reason, events = lines.len(), "Herald unavailable; events dropped");
            for line in lines {
                report(Delivery {
                    status: DeliveryStatus::Failed,
                    http_status: 0,
                    seq: None,
                    id: None,
                    reason: Some(&reason),
                    pointer: None,
                    event: line,
                });
            }
        }
    }
}

fn refuse_all(
    st: &Stats,
    lines: &[Vec<u8>],
    status: u16,
    reason: &str,
    report: &dyn Fn(Delivery<'_>),
) {
    Stats::add(&st.rejected, lines.len() as u64);
    tracing::warn!(%reason, events = lines.len(), "Herald refused a batch");
    for line in lines {
        report(Delivery {
            status: DeliveryStatus::Rejected,
            http_status: status,
            seq: None,
            id: None,
            reason: Some(reason),
            pointer: None,
            event: line,
        });
    }
}
