//! `herald bench`: load generators that measure Herald and, in the same run, the
//! do-it-yourself baseline (a PostgreSQL table with a JSONB column and the indexes of
//! `../shared/bench/`), so that figures are reported as ratios on the same machine and day.
//!
//! Herald runs in-process on its own runtime and a temporary data directory, with its default
//! (durable) configuration; the load comes over loopback HTTP with keep-alive connections.
//! A benchmark measures and prints; it never asserts a time.

mod cpu;
mod gen;
mod pg;
mod stream;
mod wrk;

use anyhow::Context;
use bytes::Bytes;
use gen::{GenEvent, Generator};
use hdrhistogram::Histogram;
use herald_server::metrics::Metrics;
use herald_server::{AppState, Config, StoreConfig};
use herald_store::SqliteStore;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Ingest throughput and latency for batches of 1000, 100 and 1 event.
    Ingest(IngestArgs),
    /// Query latency over a loaded data set (last 50 of a type, indexed data path, page 100).
    Query(QueryArgs),
    /// Live stream: latency from ingest acknowledgement to receipt with many subscribers,
    /// and what they cost ingest throughput.
    Stream(stream::StreamArgs),
    /// CPU cost per event of schema validation (the `--schema` schema) next to the cost of
    /// validating and canonicalizing the envelope, on one core, in process.
    Validate(ValidateArgs),
    /// Writes the single-event scenario's wrk script and event templates into a directory,
    /// and prints the wrk arguments that use them (for `scripts/callgrind-ingest.sh`).
    #[command(hide = true)]
    WrkFiles(WrkFilesArgs),
}

#[derive(clap::Args)]
pub struct WrkFilesArgs {
    /// Where to write the files.
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Seed of the generated events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many events to write as templates.
    #[arg(long, default_value_t = 2000)]
    events: usize,
}

#[derive(clap::Args)]
pub struct ValidateArgs {
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

#[derive(clap::Args, Clone)]
pub struct Common {
    /// PostgreSQL connection for the baseline (libpq key=value form).
    #[arg(
        long,
        default_value = "host=127.0.0.1 port=5432 user=postgres dbname=test",
        env = "HERALD_BENCH_PG"
    )]
    pg: String,
    /// Skip the PostgreSQL baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Keep Herald's data in this directory instead of a temporary one.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Disable the full-text index (to measure its cost).
    #[arg(long)]
    no_fulltext: bool,
    /// Envelope attributes to index, comma-separated (`none` for none); default: all of
    /// `store.attribute_indexes` (to measure what each costs).
    #[arg(long, value_delimiter = ',')]
    attribute_indexes: Option<Vec<String>>,
    /// Acknowledged events the indexer may fall behind by before the writer waits
    /// (`store.max_index_backlog`; to measure what a larger one buys and costs).
    #[arg(long)]
    max_index_backlog: Option<usize>,
    /// SQLite page cache of each connection, in MiB (`store.cache_mib`; to measure what a
    /// larger one buys once the indexes outgrow it).
    #[arg(long)]
    cache_mib: Option<usize>,
    /// Write event segments through the page cache instead of with direct I/O
    /// (`store.direct_writes = false`; to measure what direct writes save and cost).
    #[arg(long)]
    buffered_writes: bool,
}

impl Common {
    /// The `[store]` settings the bench runs with: the defaults, with this command's options.
    fn store(&self) -> StoreConfig {
        let d = Config::default().store;
        StoreConfig {
            fulltext: !self.no_fulltext,
            attribute_indexes: match &self.attribute_indexes {
                None => d.attribute_indexes.clone(),
                Some(v) => v.iter().filter(|a| a.as_str() != "none").cloned().collect(),
            },
            max_index_backlog: self.max_index_backlog.unwrap_or(d.max_index_backlog),
            cache_mib: self.cache_mib.unwrap_or(d.cache_mib),
            fsync: true,
            direct_writes: !self.buffered_writes,
            ..d
        }
    }
}

#[derive(clap::Args)]
pub struct IngestArgs {
    /// Events per batched scenario.
    #[arg(long, default_value_t = 300_000)]
    events: usize,
    /// Concurrent connections for the batch scenarios.
    #[arg(long, default_value_t = 4)]
    batch_connections: usize,
    /// Concurrent keep-alive connections for single-event requests.
    #[arg(long, default_value_t = 64)]
    single_connections: usize,
    /// How long the single-event scenario runs.
    #[arg(long, default_value_t = 10)]
    single_seconds: u64,
    /// Enforce a JSON Schema (draft-07, 20 properties, nested objects, patterns) on every
    /// event, to measure what validation costs.
    #[arg(long)]
    schema: bool,
    /// Only the single-event scenarios, on a fresh server (without the batch scenarios'
    /// events and the background indexing they leave behind).
    #[arg(long)]
    single_only: bool,
    /// Only the single-event scenario from wrk, on a fresh server: what a load generator in
    /// its own process gets without the in-process client's events and the indexing they
    /// leave behind (needs wrk; the PostgreSQL baseline still runs the in-process client).
    #[arg(long, conflicts_with = "single_only")]
    wrk_only: bool,
    /// Seed of the generated events (the three scenarios take it and the next two): another
    /// seed sends new events to a kept data directory (`--data`) that holds an earlier run's,
    /// which would otherwise all be duplicates.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    common: Common,
}

/// The schema `--schema` enforces: it describes the generated events' `data` exactly.
fn bench_schema() -> serde_json::Value {
    serde_json::json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "additionalProperties": false,
        "required": ["category", "country", "org", "product", "request", "metrics", "tags", "note"],
        "properties": {
            "category": {"type": "string", "enum": ["activity", "audit", "system", "integration", "commerce", "billing", "security", "error"]},
            "country": {"type": "string", "pattern": "^[a-z]{2}$"},
            "org": {"type": "string", "pattern": "^org-[0-9]{4}$"},
            "product": {"type": "string", "maxLength": 16},
            "request": {
                "type": "object",
                "additionalProperties": false,
                "required": ["id", "session", "ip", "ua"],
                "properties": {
                    "id": {"type": "string"},
                    "session": {"type": "string"},
                    "ip": {"type": "string", "format": "ipv4"},
                    "ua": {"type": "string", "maxLength": 512}
                }
            },
            "metrics": {
                "type": "object",
                "required": ["duration_ms", "bytes", "items"],
                "properties": {
                    "duration_ms": {"type": "integer", "minimum": 0},
                    "bytes": {"type": "integer", "minimum": 0},
                    "items": {"type": "integer", "minimum": 0, "maximum": 1000}
                }
            },
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 16},
            "note": {"type": "string", "maxLength": 2000}
        }
    })
}

#[derive(clap::Args)]
pub struct QueryArgs {
    /// Events to load before querying.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Timed runs per query.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    #[command(flatten)]
    common: Common,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    // The server's warnings (a stalled disk, a lagging stream) explain outliers.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERALD_BENCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match cmd {
        BenchCommand::Ingest(a) => ingest(a),
        BenchCommand::Query(a) => query(a),
        BenchCommand::Stream(a) => stream::stream(a),
        BenchCommand::Validate(a) => validate(a),
        BenchCommand::WrkFiles(a) => wrk_files(a),
    }
}

/// `herald bench wrk-files`: the single-event scenario's events, for wrk outside the bench.
/// Prints the arguments of `wrk -s SCRIPT URL -- TEMPLATES PREFIX`, one per line.
fn wrk_files(a: WrkFilesArgs) -> anyhow::Result<()> {
    let now = now_us();
    let events = gen_events(
        a.seed,
        a.events.max(1),
        now - 30 * 86_400_000_000,
        now,
        "single",
    )?;
    std::fs::create_dir_all(&a.dir)?;
    let files = wrk::write_files(&events, &a.dir, a.seed)?;
    println!("{}", files.script.display());
    println!("{}", files.templates.display());
    println!("{}", files.prefix);
    Ok(())
}

use herald_server::query::now_micros as now_us;

/// A Herald server on its own runtime, so that the load generator does not share one.
struct Server {
    url: String,
    store: Arc<dyn herald_store::Store>,
    metrics: Arc<Metrics>,
    keys: herald_store::KeyStore,
    rt: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    fn start(common: &Common, indexed_paths: Vec<String>) -> anyhow::Result<Server> {
        let (dir, path) = match &common.data {
            Some(p) => (None, p.clone()),
            None => {
                let d = tempfile::Builder::new().prefix("herald-bench").tempdir()?;
                let p = d.path().to_owned();
                (Some(d), p)
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("herald-server")
            .enable_all()
            .build()?;
        // The registry and keys live in the same data directory as the events.
        let cfg = Config {
            store: StoreConfig {
                data_dir: path.clone(),
                indexed_paths,
                ..common.store()
            },
            ..Config::default()
        };
        let metrics = Metrics::new();
        let store = SqliteStore::open(cfg.sqlite_options(Some(metrics.commit_observer())))?;
        let keys = herald_store::KeyStore::open(&path)?;
        let store: Arc<dyn herald_store::Store> = Arc::new(store);
        let state = AppState::new(store.clone(), keys.clone(), &cfg, metrics.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = rt.spawn(async move {
            let _ = herald_server::serve(listener, state, async {
                let _ = rx.await;
            })
            .await;
        });
        Ok(Server {
            url,
            store,
            metrics,
            keys,
            rt: Some(rt),
            stop: Some(tx),
            done: Some(done),
            _dir: dir,
        })
    }
}

impl Server {
    /// Creates a read key with these principals; returns its secret.
    async fn read_key(&self, principals: Vec<String>) -> anyhow::Result<String> {
        let req = herald_server::auth::NewKey {
            name: "bench reader".into(),
            role: "read".into(),
            principals,
            types: Vec::new(),
            sources: Vec::new(),
            tenants: Vec::new(),
            visibility: None,
            expires: None,
        };
        let key = herald_server::auth::build_key(req, now_us(), 256)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let secret = herald_server::auth::new_secret().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        self.keys
            .create(key, herald_server::auth::hash_secret(&secret))
            .await?;
        Ok(secret)
    }

    /// (commits, events, seconds spent in commits) so far, from the store's metrics.
    fn commit_totals(&self) -> (f64, f64, f64) {
        let text = self.metrics.render();
        let get = |name: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(name)
                        .and_then(|v| v.trim().parse::<f64>().ok())
                })
                .unwrap_or(0.0)
        };
        (
            get("herald_store_commit_events_count "),
            get("herald_store_commit_events_sum "),
            get("herald_store_commit_duration_seconds_sum "),
        )
    }

    /// Waits until the server has indexed every acknowledged event (`Store::settle`).
    fn settle(&self) -> anyhow::Result<()> {
        if let Some(rt) = &self.rt {
            rt.block_on(self.store.settle())?;
        }
        Ok(())
    }

    /// Runs a load, then waits until everything acknowledged is indexed (`Store::settle`:
    /// reads do not wait, they also look at the events still in memory), so that the figures
    /// are sustained rates, not bursts into the indexer's backlog; prints how the writer
    /// grouped it.
    fn measured(
        &self,
        name: &str,
        f: impl FnOnce() -> anyhow::Result<Outcome>,
    ) -> anyhow::Result<Outcome> {
        let (c0, e0, s0) = self.commit_totals();
        let cpu0 = cpu::snapshot();
        let t = Instant::now();
        let mut out = f()?;
        let wall = t.elapsed().as_secs_f64();
        let settle = Instant::now();
        self.settle()?;
        out.settle = settle.elapsed();
        let (c1, e1, s1) = self.commit_totals();
        let commits = (c1 - c0).max(1.0);
        eprintln!(
            "  {name}: {:.0} commits, {:.0} events/commit, {:.2} ms/commit, writer busy {:.0}% of the time",
            commits,
            (e1 - e0) / commits,
            (s1 - s0) * 1000.0 / commits,
            100.0 * (s1 - s0) / wall
        );
        // `settle` waited for the full-text index to hold the events; wait for its thread to
        // go idle too (a merge may follow), so that its work counts with the load that caused it.
        cpu::wait_for_fulltext_idle(Duration::from_secs(120));
        if let Some(line) = cpu::per_event_line(&cpu0, &cpu::snapshot(), out.events) {
            eprintln!("  {name}: {line}");
        }
        Ok(out)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let (Some(rt), Some(done)) = (self.rt.take(), self.done.take()) {
            let _ = rt.block_on(done);
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Latency and throughput of one scenario.
pub struct Outcome {
    pub events: usize,
    pub requests: usize,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
    pub errors: usize,
    /// After the last answer, until every acknowledged event was in every index (SQLite's
    /// and the full-text one).
    pub settle: Duration,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
    /// Events per second until all were queryable.
    fn sustained(&self) -> f64 {
        self.events as f64 / (self.elapsed + self.settle).as_secs_f64()
    }
    fn pct_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// Sends `bodies` (each holding `per_body` events) over `connections` concurrent keep-alive
/// connections, until all are sent or `deadline` passes.
async fn http_load(
    url: &str,
    bodies: Arc<Vec<Bytes>>,
    per_body: usize,
    connections: usize,
    deadline: Option<Duration>,
) -> anyhow::Result<Outcome> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(120))
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let hist = Arc::new(Mutex::new(new_hist()));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let content_type = if per_body == 1 {
        "application/json"
    } else {
        "application/x-ndjson"
    };
    for _ in 0..connections {
        let (client, bodies, next, hist, errors) = (
            client.clone(),
            bodies.clone(),
            next.clone(),
            hist.clone(),
            errors.clone(),
        );
        let url = format!("{url}/v1/events");
        tasks.push(tokio::spawn(async move {
            let mut local = new_hist();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= bodies.len() || deadline.is_some_and(|d| started.elapsed() > d) {
                    break;
                }
                let t = Instant::now();
                let res = client
                    .post(&url)
                    .header("content-type", content_type)
                    .body(bodies[i].clone())
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        if errors.load(Ordering::Relaxed) < 3 {
                            eprintln!(
                                "  unexpected answer {status}: {}",
                                &text[..text.len().min(300)]
                            );
                        }
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("  request failed: {e}");
                        }
                    }
                }
                let _ = local.record(t.elapsed().as_micros() as u64);
            }
            if let Ok(mut h) = hist.lock() {
                let _ = h.add(&local);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed();
    let sent = next.load(Ordering::Relaxed).min(bodies.len());
    let hist = Arc::try_unwrap(hist)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_else(new_hist);
    let requests = hist.len() as usize;
    Ok(Outcome {
        events: requests.min(sent) * per_body,
        requests,
        elapsed,
        latency_us: hist,
        errors: errors.load(Ordering::Relaxed),
        settle: Duration::ZERO,
    })
}

/// Memory one generated event takes, with its request body, its share of what the server
/// holds meanwhile, and some margin. Measured with `/usr/bin/time -v herald bench ingest
/// --no-baseline --single-seconds 1 --events N`: peak RSS 2.4 GB for N = 300,000 (700,000
/// events generated) and 6.3 GB for N = 1,000,000 (2.1 million), so 2.8 KB per event over a
/// base of 0.5 GB. (Before generated strings were shrunk to fit it was 4.4 KB, and a run
/// that this check let through was killed for lack of memory.)
const GEN_EVENT_BYTES: u64 = 3_000;

/// `MemAvailable` of `/proc/meminfo`, in bytes (Linux).
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// Refuses to generate more events than the free memory holds (keeping 2 GiB for the server
/// and its caches), rather than being killed by the kernel halfway through a run.
fn check_memory(n: usize, label: &str, available: Option<u64>) -> anyhow::Result<()> {
    let Some(avail) = available else {
        return Ok(());
    };
    let need = (n as u64).saturating_mul(GEN_EVENT_BYTES);
    let keep = 2u64 << 30;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    anyhow::ensure!(
        need.saturating_add(keep) <= avail,
        "{n} {label} events need about {:.1} GiB of memory, and {:.1} GiB is available (2 GiB kept for the server); ask for fewer events",
        gib(need),
        gib(avail)
    );
    Ok(())
}

fn gen_events(
    seed: u64,
    n: usize,
    start_us: i64,
    end_us: i64,
    label: &str,
) -> anyhow::Result<Vec<GenEvent>> {
    check_memory(n, label, mem_available())?;
    let t = Instant::now();
    let mut g = Generator::new(seed, n, start_us, end_us);
    let evs: Vec<GenEvent> = (0..n).map(|_| g.next_event()).collect();
    let bytes: usize = evs.iter().map(|e| e.json.len()).sum();
    eprintln!(
        "generated {n} {label} events, {} bytes/event on average, in {:.1}s",
        bytes / n.max(1),
        t.elapsed().as_secs_f64()
    );
    Ok(evs)
}

fn bodies(evs: &[GenEvent], per: usize) -> Vec<Bytes> {
    evs.chunks(per)
        .map(|c| {
            let mut b = String::with_capacity(c.iter().map(|e| e.json.len() + 1).sum());
            for e in c {
                b.push_str(&e.json);
                b.push('\n');
            }
            Bytes::from(b)
        })
        .collect()
}

fn print_row(name: &str, h: &Outcome, pg: Option<&Outcome>) {
    let herald = format!(
        "{:>8.0} ev/s ({:>6.0} queryable)  p50 {:>7.2} ms  p99 {:>7.2} ms{}",
        h.rate(),
        h.sustained(),
        h.pct_ms(0.5),
        h.pct_ms(0.99),
        if h.errors > 0 {
            format!("  ({} errors)", h.errors)
        } else {
            String::new()
        }
    );
    match pg {
        Some(p) => println!(
            "{name:<26} herald {herald}   postgres {:>9.0} ev/s  p50 {:>7.2} ms  p99 {:>7.2} ms   ratio {:>5.1}x",
            p.rate(),
            p.pct_ms(0.5),
            p.pct_ms(0.99),
            h.sustained() / p.rate()
        ),
        None => println!("{name:<26} herald {herald}"),
    }
}

fn ingest(a: IngestArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.wrk_only || wrk::available(),
        "--wrk-only needs wrk (Debian package wrk)"
    );
    let now = now_us();
    let day = 86_400_000_000;
    let n = a.events.max(1000);
    // Enough single events for 100,000 requests/s, never more than the other scenarios.
    let single_n = (a.single_seconds.max(1) as usize * 100_000).min(a.single_connections * 40_000);
    // Distinct events per scenario, so nothing is a duplicate.
    // All three scenarios' events are held at once (the baseline replays them): check the
    // whole before generating any.
    check_memory(2 * n + single_n.min(n), "generated", mem_available())?;
    let ev1000 = gen_events(a.seed, n, now - 30 * day, now, "batch-1000")?;
    let ev100 = gen_events(a.seed + 1, n, now - 30 * day, now, "batch-100")?;
    let ev1 = gen_events(a.seed + 2, single_n.min(n), now - 30 * day, now, "single")?;
    let b1000 = Arc::new(bodies(&ev1000, 1000));
    let b100 = Arc::new(bodies(&ev100, 100));
    let b1: Arc<Vec<Bytes>> = Arc::new(ev1.iter().map(|e| Bytes::from(e.json.clone())).collect());
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let server = Server::start(&a.common, vec!["data.org".into()])?;
    if a.schema {
        client_rt.block_on(async {
            let http = reqwest::Client::new();
            let base = format!("{}/v1/types/*", server.url);
            let r = http
                .put(&base)
                .json(&serde_json::json!({"validation": "enforce"}))
                .send()
                .await?;
            anyhow::ensure!(
                r.status().is_success(),
                "cannot register the type: {}",
                r.status()
            );
            let r = http
                .put(format!("{base}/schemas/1.0.0"))
                .json(&bench_schema())
                .send()
                .await?;
            anyhow::ensure!(
                r.status().is_success(),
                "cannot publish the schema: {}",
                r.text().await?
            );
            anyhow::Ok(())
        })?;
    }
    let store = a.common.store();
    println!(
        "Herald: event segments ({} writes, fsync per group commit) indexed in SQLite, full-text {}, indexed attributes type, time{}, indexed path data.org, schema validation {}, index backlog up to {} events, SQLite cache {} MiB per connection; loopback HTTP/1.1",
        if store.direct_writes { "direct" } else { "buffered" },
        if store.fulltext { "on" } else { "off" },
        store
            .attribute_indexes
            .iter()
            .fold(String::new(), |acc, x| acc + ", " + x),
        if a.schema { "enforced on every event" } else { "off" },
        store.max_index_backlog,
        store.cache_mib,
    );
    let url = server.url.clone();
    let deadline = Some(Duration::from_secs(a.single_seconds));
    let batches = !a.single_only && !a.wrk_only;
    let h1000 = batches
        .then(|| {
            server.measured("batch 1000", || {
                client_rt.block_on(http_load(
                    &url,
                    b1000.clone(),
                    1000,
                    a.batch_connections,
                    None,
                ))
            })
        })
        .transpose()?;
    let h100 = batches
        .then(|| {
            server.measured("batch 100", || {
                client_rt.block_on(http_load(
                    &url,
                    b100.clone(),
                    100,
                    a.batch_connections * 4,
                    None,
                ))
            })
        })
        .transpose()?;
    let h1 = (!a.wrk_only)
        .then(|| {
            server.measured("single", || {
                client_rt.block_on(http_load(
                    &url,
                    b1.clone(),
                    1,
                    a.single_connections,
                    deadline,
                ))
            })
        })
        .transpose()?;
    // The same from wrk, a load generator in its own process, when it is installed.
    let wrk_out = if wrk::available() {
        let dir = tempfile::tempdir()?;
        let mut out = None;
        server.measured("single (wrk)", || {
            let t = Instant::now();
            let w = wrk::run(
                &url,
                &ev1,
                a.single_connections,
                a.single_seconds,
                dir.path(),
                a.seed,
            )?;
            let o = Outcome {
                events: w.requests as usize,
                requests: w.requests as usize,
                elapsed: t.elapsed(),
                latency_us: new_hist(),
                errors: w.errors as usize,
                settle: Duration::ZERO,
            };
            out = Some(w);
            Ok(o)
        })?;
        out
    } else {
        eprintln!("wrk is not installed (Debian package wrk): no single-event run from a separate load generator");
        None
    };
    drop(server);

    let (p1000, p100, p1) = if a.common.no_baseline {
        (None, None, None)
    } else {
        let r = client_rt.block_on(async {
            let pg = pg::Baseline::connect(&a.common.pg).await?;
            let (mut p1000, mut p100) = (None, None);
            if batches {
                pg.reset().await?;
                p1000 = Some(
                    pg.insert_load(&ev1000, 1000, a.batch_connections, None)
                        .await?,
                );
                pg.reset().await?;
                p100 = Some(
                    pg.insert_load(&ev100, 100, a.batch_connections * 4, None)
                        .await?,
                );
            }
            pg.reset().await?;
            let p1 = pg
                .insert_load(&ev1, 1, a.single_connections, deadline)
                .await?;
            pg.drop_table().await?;
            anyhow::Ok((p1000, p100, p1))
        });
        match r {
            Ok((x, y, z)) => (x, y, Some(z)),
            Err(e) => {
                eprintln!("PostgreSQL baseline skipped: {e:#}");
                (None, None, None)
            }
        }
    };
    println!("\ndurable ingest, {} events per batched scenario:", n);
    if let Some(h) = &h1000 {
        print_row(
            &format!("batch 1000 x{} conns", a.batch_connections),
            h,
            p1000.as_ref(),
        );
    }
    if let Some(h) = &h100 {
        print_row(
            &format!("batch 100 x{} conns", a.batch_connections * 4),
            h,
            p100.as_ref(),
        );
    }
    if let Some(h1) = &h1 {
        print_row(
            &format!("single x{} conns", a.single_connections),
            h1,
            p1.as_ref(),
        );
    }
    println!(
        "single-event requests/s: herald {}{}",
        h1.as_ref()
            .map_or("(in-process client not run)".into(), |h| format!(
                "{:.0}",
                h.requests as f64 / h.elapsed.as_secs_f64()
            )),
        p1.as_ref()
            .map(|p| format!(
                ", postgres {:.0}",
                p.requests as f64 / p.elapsed.as_secs_f64()
            ))
            .unwrap_or_default()
    );
    if let Some(w) = wrk_out {
        println!(
            "single x{} conns, from wrk:  herald {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} requests, {} errors)",
            a.single_connections, w.rps, w.p50_ms, w.p99_ms, w.requests, w.errors
        );
    }
    Ok(())
}

/// Per-event CPU time of each ingest step, single-threaded.
fn validate(a: ValidateArgs) -> anyhow::Result<()> {
    let now = now_us();
    let evs = gen_events(7, a.events.max(1000), now - 86_400_000_000, now, "validate")?;
    let limits = herald_core::Limits::default();
    let compiled =
        herald_core::schema::compile(&bench_schema()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let now_text = herald_core::event::now_text(now);
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (mut prep_ns, mut val_ns, mut parse_ns) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.runs.max(1) {
        let mut no_id = String::new;
        let mut ctx = herald_core::event::PrepareCtx {
            limits: &limits,
            now_us: now,
            now_text: &now_text,
            require_specversion: false,
            default_visibility: None,
            type_visibility: None,
            new_id: &mut no_id,
        };
        let t = Instant::now();
        let prepared: Vec<_> = evs
            .iter()
            .map(|e| herald_core::event::prepare_json(&e.json, "", &mut ctx))
            .collect::<Result<_, _>>()
            .map_err(|r| anyhow::anyhow!("{}", r.reason))?;
        prep_ns.push(t.elapsed().as_nanos() as f64 / evs.len() as f64);
        // What the pipeline does per event under `validation = "enforce"`: parse `data`
        // out of the canonical body, validate it.
        let data_of = |p: &herald_core::PreparedEvent| -> anyhow::Result<serde_json::Value> {
            let range = p.data_range.clone().unwrap_or(0..0);
            Ok(serde_json::from_str(&p.body_tail[range])?)
        };
        let t = Instant::now();
        for p in &prepared {
            std::hint::black_box(data_of(p)?);
        }
        parse_ns.push(t.elapsed().as_nanos() as f64 / evs.len() as f64);
        let t = Instant::now();
        let mut invalid = 0usize;
        for p in &prepared {
            invalid += usize::from(!compiled.validate(&data_of(p)?).is_empty());
        }
        val_ns.push(t.elapsed().as_nanos() as f64 / evs.len() as f64);
        anyhow::ensure!(
            invalid == 0,
            "{invalid} generated events fail the bench schema"
        );
    }
    let (p, v, pa) = (median(prep_ns), median(val_ns), median(parse_ns));
    println!(
        "{} events x {} runs (median), one core:\n  envelope validation + canonical form: {p:.0} ns/event\n  schema validation: {v:.0} ns/event ({:.0}% of the envelope step), of which parsing data {pa:.0} ns",
        evs.len(),
        a.runs.max(1),
        v / p * 100.0
    );
    Ok(())
}

struct QueryStat {
    name: String,
    hist: Histogram<u64>,
    rows: usize,
}

async fn time_http(
    client: &reqwest::Client,
    url: &str,
    runs: usize,
) -> anyhow::Result<(Histogram<u64>, usize)> {
    let mut hist = new_hist();
    let mut rows = 0;
    for i in 0..runs + 5 {
        let t = Instant::now();
        let res = client.get(url).send().await?;
        anyhow::ensure!(res.status().is_success(), "{url}: {}", res.status());
        let body = res.bytes().await?;
        let el = t.elapsed();
        if i >= 5 {
            hist.record(el.as_micros() as u64)?;
        } else if i == 0 {
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            rows = v["events"].as_array().map(Vec::len).unwrap_or(0);
        }
    }
    Ok((hist, rows))
}

fn query(a: QueryArgs) -> anyhow::Result<()> {
    let now = now_us();
    let day = 86_400_000_000;
    let evs = gen_events(42, a.events, now - 30 * day, now, "30-day")?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let server = Server::start(&a.common, vec!["data.org".into()])?;
    let url = server.url.clone();
    eprintln!("loading Herald over HTTP (batches of 1000, 4 connections)...");
    let load = client_rt.block_on(http_load(&url, Arc::new(bodies(&evs, 1000)), 1000, 4, None))?;
    eprintln!(
        "  {} events in {:.1}s = {:.0} ev/s",
        load.events,
        load.elapsed.as_secs_f64(),
        load.rate()
    );
    // Measure an idle server: once the indexer has committed every acknowledged event
    // (reads would meanwhile also look at those still in memory).
    let t = Instant::now();
    server.settle()?;
    eprintln!("  indexed {:.1}s later", t.elapsed().as_secs_f64());
    // Before any other query: pages whose bodies nobody has read yet.
    let first_reads = client_rt.block_on(first_reads(&url))?;

    // The same listings as a read key with 10 principals sees them: the access rule joins
    // every query (only internal events of its tenants and private events naming it).
    let principals: Vec<String> = (1..=8)
        .map(|i| format!("tenant:org-{i:04}"))
        .chain(["user:42".to_owned(), "group:analysts".to_owned()])
        .collect();
    let read_key = client_rt.block_on(server.read_key(principals))?;
    // A token that occurs in one event only: the request id of one in the middle.
    let needle = serde_json::from_str::<serde_json::Value>(&evs[evs.len() / 2].json)?["data"]
        ["request"]["id"]
        .as_str()
        .context("generated events have a request id")?
        .to_owned();
    // An actor and a subject (a product) of that event: a few events each.
    let mid: serde_json::Value = serde_json::from_str(&evs[evs.len() / 2].json)?;
    let (actor, subject) = (
        mid["actor"]
            .as_str()
            .context("generated events have an actor")?,
        mid["subject"]
            .as_str()
            .context("generated events have a subject")?,
    );
    let who = Who {
        needle: &needle,
        actor,
        subject,
    };
    let herald = client_rt.block_on(run_queries(&url, a.runs, None, &who))?;
    let with_key = client_rt.block_on(run_queries(&url, a.runs, Some(&read_key), &who))?;
    let extra = gen_events(43, (a.events / 4).max(1000), now - day, now, "concurrent")?;
    let (load, under_load) = client_rt.block_on(queries_under_load(
        &url,
        Arc::new(bodies(&extra, 1000)),
        &who,
    ))?;
    drop(server);

    let baseline: Option<Vec<QueryStat>> = if a.common.no_baseline {
        None
    } else {
        let q6_page = herald
            .iter()
            .find_map(|q| q.name.strip_prefix("Q6 keyset page ")?.parse().ok())
            .unwrap_or(Q6_PAGE);
        match client_rt.block_on(pg::query_baseline(&a.common.pg, &evs, now, a.runs, q6_page)) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("PostgreSQL baseline skipped: {e:#}");
                None
            }
        }
    };
    println!("\nquery latency over {} events (Herald through HTTP incl. JSON; PostgreSQL through its protocol), {} runs:", a.events, a.runs);
    for (i, h) in herald.iter().enumerate() {
        let mut line = format!(
            "{:<28} herald p50 {:>6.2} ms  p99 {:>6.2} ms  ({} rows)",
            h.name,
            ms(&h.hist, 0.5),
            ms(&h.hist, 0.99),
            h.rows
        );
        if let Some(p) = baseline.as_ref().and_then(|b| b.get(i)) {
            line.push_str(&format!(
                "   postgres p50 {:>6.2} ms  p99 {:>6.2} ms  ({} rows)   p50 ratio {:>5.1}x",
                ms(&p.hist, 0.5),
                ms(&p.hist, 0.99),
                p.rows,
                ms(&p.hist, 0.5) / ms(&h.hist, 0.5)
            ));
        }
        println!("{line}");
    }
    println!("\nfirst reads: listings paged through once, 100 events a page, then again (segments written with {} writes):", if a.common.store().direct_writes { "direct" } else { "buffered" });
    for (name, first, again) in &first_reads {
        println!(
            "{name:<28} first p50 {:>6.2} ms  p99 {:>6.2} ms   again p50 {:>6.2} ms  p99 {:>6.2} ms  ({} pages)",
            ms(first, 0.5),
            ms(first, 0.99),
            ms(again, 0.5),
            ms(again, 0.99),
            first.len()
        );
    }
    println!("\nthe same through a read key with 10 principals (8 tenants, a user, a group):");
    for (h, k) in herald.iter().zip(&with_key) {
        println!(
            "{:<28} key  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} rows)   p50 vs no key {:>+5.0}%",
            k.name,
            ms(&k.hist, 0.5),
            ms(&k.hist, 0.99),
            k.rows,
            100.0 * (ms(&k.hist, 0.5) / ms(&h.hist, 0.5) - 1.0)
        );
    }
    println!(
        "\nwhile {} more events are ingested in batches of 1000 (4 connections, {:.0} ev/s meanwhile):",
        load.events,
        load.rate()
    );
    for q in &under_load {
        let mut line = format!(
            "{:<28} load p50 {:>6.2} ms  p99 {:>6.2} ms  ({} runs)",
            q.name,
            ms(&q.hist, 0.5),
            ms(&q.hist, 0.99),
            q.hist.len(),
        );
        if let Some(h) = herald.iter().find(|h| h.name == q.name) {
            line.push_str(&format!(
                "   p50 vs idle {:>+5.0}%",
                100.0 * (ms(&q.hist, 0.5) / ms(&h.hist, 0.5) - 1.0)
            ));
        }
        println!("{line}");
    }
    Ok(())
}

/// Pages through two listings that nothing has read yet (the newest 20,000 events, and 10,000
/// events of a type that is about one in 50), 100 events a page, then through the same pages
/// again: what reading bodies costs before and after the page cache holds them (with direct
/// segment writes it does not hold what was just written; see `store.direct_writes`).
/// Returns (name, first pass, second pass) per listing.
async fn first_reads(
    url: &str,
) -> anyhow::Result<Vec<(&'static str, Histogram<u64>, Histogram<u64>)>> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for (name, filter, pages) in [
        ("newest events", "", 200),
        ("a type, 1 in 50", "type:import.completed", 100),
    ] {
        let first_url = format!(
            "{url}/v1/events?limit=100{}",
            if filter.is_empty() {
                String::new()
            } else {
                format!("&{}", filter_param(filter))
            }
        );
        let mut passes = Vec::new();
        for _ in 0..2 {
            let mut hist = new_hist();
            let mut next = Some(first_url.clone());
            while let Some(u) = next.take().filter(|_| hist.len() < pages) {
                let t = Instant::now();
                let res = client.get(&u).send().await?;
                anyhow::ensure!(res.status().is_success(), "{u}: {}", res.status());
                let body: serde_json::Value = res.json().await?;
                hist.record(t.elapsed().as_micros() as u64)?;
                if let Some(c) = body["next_cursor"].as_str() {
                    let mut u = reqwest::Url::parse(&first_url)?;
                    u.query_pairs_mut().append_pair("cursor", c);
                    next = Some(u.into());
                }
            }
            passes.push(hist);
        }
        let again = passes.pop().context("two passes")?;
        let first = passes.pop().context("two passes")?;
        out.push((name, first, again));
    }
    Ok(out)
}

/// A quantile of a histogram of microseconds, in milliseconds.
fn ms(hist: &Histogram<u64>, q: f64) -> f64 {
    hist.value_at_quantile(q) as f64 / 1000.0
}

/// Q1, Q2, Q7 and Q9 in turn, for as long as `bodies` take to ingest (batches of 1000, 4
/// connections): each listing then also evaluates its filter on the events the indexer has
/// not committed yet (up to its backlog), and the full-text index runs behind the events,
/// which text terms test in memory, all while ingest keeps both cores busy. What
/// someone watching a busy server sees.
async fn queries_under_load(
    url: &str,
    bodies: Arc<Vec<Bytes>>,
    who: &Who<'_>,
) -> anyhow::Result<(Outcome, Vec<QueryStat>)> {
    let cases: Vec<(&'static str, String)> = listings(url, who)
        .into_iter()
        .filter(|(name, _)| {
            ["Q1 ", "Q2 ", "Q7 ", "Q9 "]
                .iter()
                .any(|q| name.starts_with(q))
        })
        .collect();
    let target = url.to_owned();
    let load = tokio::spawn(async move { http_load(&target, bodies, 1000, 4, None).await });
    let client = reqwest::Client::new();
    let mut hists: Vec<Histogram<u64>> = cases.iter().map(|_| new_hist()).collect();
    while !load.is_finished() {
        for ((_, u), hist) in cases.iter().zip(&mut hists) {
            let t = Instant::now();
            let res = client.get(u).send().await?;
            anyhow::ensure!(res.status().is_success(), "{u}: {}", res.status());
            res.bytes().await?;
            hist.record(t.elapsed().as_micros() as u64)?;
        }
    }
    let outcome = load.await??;
    let stats = cases
        .into_iter()
        .zip(hists)
        .map(|((name, _), hist)| QueryStat {
            name: name.to_owned(),
            hist,
            rows: 0,
        })
        .collect();
    Ok((outcome, stats))
}

/// `filter=…`, encoded for a query string.
fn filter_param(filter: &str) -> String {
    let mut u = reqwest::Url::parse("http://x/").expect("static URL");
    u.query_pairs_mut().append_pair("filter", filter);
    u.query().unwrap_or_default().to_owned()
}

/// The keyset page Q6 times (fewer when the listing has fewer).
const Q6_PAGE: usize = 100;

/// The timed listings other than the keyset page (Q6), by name, in the order they are
/// printed: Q1, Q2, Q2b, then the Herald-only Q7 to Q11.
fn listings(url: &str, who: &Who<'_>) -> Vec<(&'static str, String)> {
    let listing = |filter: &str, since: &str| {
        format!("{url}/v1/events?{}{since}&limit=50", filter_param(filter))
    };
    vec![
        (
            "Q1 last 50 of a type, 1d",
            listing("type:import.completed", "&since=24h"),
        ),
        (
            "Q2 data.org (indexed), 7d",
            listing("data.org:org-0150", "&since=7d"),
        ),
        (
            "Q2b largest org, 7d",
            listing("data.org:org-0001", "&since=7d"),
        ),
        (
            "Q7 text, one event, all",
            listing(&format!("\"{}\"", who.needle), ""),
        ),
        (
            "Q8 type + word, 7d",
            listing("type:import.completed quartz", "&since=7d"),
        ),
        (
            "Q9 an actor, all",
            listing(&format!("actor:\"{}\"", who.actor), ""),
        ),
        (
            "Q10 a subject, all",
            listing(&format!("subject:\"{}\"", who.subject), ""),
        ),
        (
            "Q11 largest tenant, 7d",
            listing("tenant:org-0001", "&since=7d"),
        ),
    ]
}

/// What the Herald-only queries look for.
struct Who<'a> {
    /// A token that one event holds.
    needle: &'a str,
    actor: &'a str,
    subject: &'a str,
}

/// Q1, Q2, Q2b and Q6 through HTTP, optionally with a key; then Herald only: text queries,
/// Q7 a token held by one event, over everything, and Q8 a common word within a type, 7 days;
/// attribute indexes, Q9 an actor and Q10 a subject over everything, Q11 the largest
/// tenant over 7 days.
async fn run_queries(
    url: &str,
    runs: usize,
    key: Option<&str>,
    who: &Who<'_>,
) -> anyhow::Result<Vec<QueryStat>> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(k) = key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {k}"))?,
        );
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let mut out = Vec::new();
    let mut cases = listings(url, who).into_iter();
    for (name, u) in cases.by_ref().take(3) {
        let (hist, rows) = time_http(&client, &u, runs).await?;
        out.push(QueryStat {
            name: name.to_owned(),
            hist,
            rows,
        });
    }
    // Keyset page 100 (50 per page) of a filtered listing; a smaller data set (or a key
    // that sees less) has fewer pages: its last page is timed, and named so.
    let base = format!(
        "{url}/v1/events?{}&limit=50",
        filter_param("type:product.edited")
    );
    let mut cursor = String::new();
    let mut page = 1;
    while page < Q6_PAGE {
        let u = if cursor.is_empty() {
            base.clone()
        } else {
            format!("{base}&cursor={cursor}")
        };
        let v: serde_json::Value = client.get(&u).send().await?.json().await?;
        match v["next_cursor"].as_str() {
            Some(c) => {
                cursor = c.to_owned();
                page += 1;
            }
            None => break,
        }
    }
    let u = if cursor.is_empty() {
        base
    } else {
        format!("{base}&cursor={cursor}")
    };
    let (hist, rows) = time_http(&client, &u, runs).await?;
    out.push(QueryStat {
        name: format!("Q6 keyset page {page}"),
        hist,
        rows,
    });
    for (name, u) in cases {
        let (hist, rows) = time_http(&client, &u, runs).await?;
        out.push(QueryStat {
            name: name.to_owned(),
            hist,
            rows,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_refused_beyond_the_available_memory() {
        let gib = 1u64 << 30;
        assert!(check_memory(1_000_000, "x", Some(8 * gib)).is_ok());
        let err = check_memory(6_000_000, "batch-1000", Some(16 * gib)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("6000000 batch-1000 events need about 16.8 GiB"),
            "{msg}"
        );
        assert!(msg.contains("16.0 GiB is available"), "{msg}");
        // Without /proc/meminfo nothing is checked.
        assert!(check_memory(usize::MAX / 4096, "x", None).is_ok());
        assert!(mem_available().is_none_or(|b| b > 0));
    }
}
