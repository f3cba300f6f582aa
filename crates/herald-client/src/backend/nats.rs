//! NATS JetStream backend (feature `nats`): publishes each event as JSON on
//! `<prefix>.<type>` with the event id as `Nats-Msg-Id`, so that JetStream's duplicate
//! window drops a resend. For services that already route through NATS, or to let Herald and
//! other consumers read the same stream.
//!
//! Like the HTTP backend it sends from its own thread and runtime, keeps events in a bounded
//! memory buffer while NATS is unreachable (more are counted as `dropped.buffer_full`), and
//! counts an event as sent only when JetStream acknowledged it.

use super::Backend;
use crate::event::Event;
use crate::stats::Stats;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// e.g. `nats://127.0.0.1:4222`
    pub url: String,
    /// Subject prefix; events go to `<prefix>.<type>` (default `herald.events`).
    pub subject_prefix: String,
    /// When set, the stream is created (if missing) over `<prefix>.>`.
    pub stream: Option<String>,
    /// Bytes held in memory at most (default 64 MiB).
    pub buffer_bytes: usize,
    /// Events published before waiting for their acknowledgements (default 512).
    pub batch: usize,
}

impl NatsConfig {
    pub fn new(url: impl Into<String>) -> NatsConfig {
        NatsConfig {
            url: url.into(),
            subject_prefix: "herald.events".into(),
            stream: None,
            buffer_bytes: 64 << 20,
            batch: 512,
        }
    }
}

struct Item {
    subject: String,
    id: String,
    payload: Vec<u8>,
}

struct State {
    items: VecDeque<Item>,
    bytes: usize,
    accepted: u64,
    done: u64,
    closing: Option<Instant>,
    stopped: bool,
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    wake: tokio::sync::Notify,
    stats: Arc<Stats>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Publishes events to NATS JetStream.
pub struct NatsBackend {
    cfg: NatsConfig,
    inner: Option<Arc<Inner>>,
    thread: Option<std::thread::JoinHandle<()>>,
    max_bytes: usize,
}

impl NatsBackend {
    pub fn new(cfg: NatsConfig) -> NatsBackend {
        NatsBackend {
            max_bytes: cfg.buffer_bytes,
            cfg,
            inner: None,
            thread: None,
        }
    }
}

impl Backend for NatsBackend {
    fn name(&self) -> &str {
        "nats"
    }

    fn start(&mut self, stats: Arc<Stats>) -> Result<(), crate::Error> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                accepted: 0,
                done: 0,
                closing: None,
                stopped: false,
            }),
            changed: Condvar::new(),
            wake: tokio::sync::Notify::new(),
            stats,
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| crate::Error::Io(format!("cannot start the NATS runtime: {e}")))?;
        let (i, cfg) = (inner.clone(), self.cfg.clone());
        let thread = std::thread::Builder::new()
            .name("herald-nats".into())
            .spawn(move || {
                rt.block_on(run(i.clone(), cfg));
                i.lock().stopped = true;
                i.changed.notify_all();
            })
            .map_err(|e| crate::Error::Io(format!("cannot start the NATS thread: {e}")))?;
        self.inner = Some(inner);
        self.thread = Some(thread);
        Ok(())
    }

    fn send(&mut self, events: &[Arc<Event>]) {
        let Some(inner) = &self.inner else { return };
        let mut st = inner.lock();
        for e in events {
            let mut payload = Vec::with_capacity(320);
            e.write_json(&mut payload);
            if st.bytes + payload.len() > self.max_bytes {
                Stats::add(&inner.stats.buffer_full, 1);
                continue;
            }
            st.bytes += payload.len();
            st.accepted += 1;
            st.items.push_back(Item {
                subject: format!("{}.{}", self.cfg.subject_prefix, e.ty),
                id: e.id.to_string(),
                payload,
            });
        }
        drop(st);
        inner.wake.notify_one();
    }

    fn flush(&mut self, deadline: Instant) -> u64 {
        let Some(inner) = &self.inner else { return 0 };
        let mut st = inner.lock();
        let target = st.accepted;
        inner.wake.notify_one();
        while st.done < target && !st.stopped && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            st = inner
                .changed
                .wait_timeout(st, left.min(Duration::from_millis(100)))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        target.saturating_sub(st.done)
    }

    fn close(&mut self, deadline: Instant) -> u64 {
        let left = self.flush(deadline);
        let Some(inner) = self.inner.take() else {
            return left;
        };
        inner.lock().closing = Some(deadline);
        inner.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let st = inner.lock();
        st.accepted.saturating_sub(st.done)
    }
}

impl Drop for NatsBackend {
    fn drop(&mut self) {
        if self.inner.is_some() {
            self.close(Instant::now() + Duration::from_secs(5));
        }
    }
}

async fn connect(cfg: &NatsConfig) -> Result<async_nats::jetstream::Context, String> {
    let client = async_nats::connect(&cfg.url)
        .await
        .map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    if let Some(name) = &cfg.stream {
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{}.>", cfg.subject_prefix)],
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    Ok(js)
}

async fn run(inner: Arc<Inner>, cfg: NatsConfig) {
    let mut js: Option<async_nats::jetstream::Context> = None;
    let mut delay = Duration::from_millis(100);
    loop {
        let (empty, closing) = {
            let st = inner.lock();
            (st.items.is_empty(), st.closing)
        };
        if empty {
            if closing.is_some() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), inner.wake.notified()).await;
            continue;
        }
        if closing.is_some_and(|d| Instant::now() >= d) {
            let mut st = inner.lock();
            let n = st.items.len() as u64;
            st.items.clear();
            st.bytes = 0;
            st.done += n;
            Stats::add(&inner.stats.shutdown, n);
            drop(st);
            inner.changed.notify_all();
            return;
        }
        let Some(ctx) = js.clone() else {
            match connect(&cfg).await {
                Ok(c) => {
                    js = Some(c);
                    delay = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!(error = %e, url = %cfg.url, "cannot reach NATS; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
            continue;
        };
        // Publish a batch, then wait for every acknowledgement; failures go back in front.
        let batch: Vec<Item> = {
            let mut st = inner.lock();
            let n = st.items.len().min(cfg.batch.max(1));
            let b: Vec<Item> = st.items.drain(..n).collect();
            st.bytes -= b.iter().map(|i| i.payload.len()).sum::<usize>();
            b
        };
        let mut acks = Vec::with_capacity(batch.len());
        for item in &batch {
            let msg = async_nats::jetstream::message::PublishMessage::build()
                .payload(item.payload.clone().into())
                .message_id(item.id.as_str());
            acks.push(ctx.send_publish(item.subject.clone(), msg).await);
        }
        let mut failed = Vec::new();
        let mut ok = 0u64;
        for (item, ack) in batch.into_iter().zip(acks) {
            let r = match ack {
                Ok(f) => f.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match r {
                Ok(()) => ok += 1,
                Err(e) => {
                    tracing::debug!(error = %e, "NATS publish failed; will retry");
                    failed.push(item);
                }
            }
        }
        inner.stats.add_sent(ok);
        let retry = !failed.is_empty();
        {
            let mut st = inner.lock();
            st.done += ok;
            if retry {
                Stats::add(&inner.stats.retried, failed.len() as u64);
                for item in failed.into_iter().rev() {
                    st.bytes += item.payload.len();
                    st.items.push_front(item);
                }
            }
        }
        inner.changed.notify_all();
        if retry {
            js = None;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}
