//! Test servers and helpers.

use herald_server::metrics::Metrics;
use herald_server::{AppState, Config};
use herald_store::SqliteStore;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

/// An HTTP client for tests (installs the process's TLS crypto provider once).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The application served in-process on a random loopback port with its own data directory.
pub struct TestServer {
    pub url: String,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Self::start_at(dir.path(), adjust).await;
        s._dir = Some(dir);
        s
    }

    /// A server on a data directory the caller owns (to stop and start it again).
    pub async fn start_at(data: &Path, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut cfg = Config::default();
        cfg.server.listen = "127.0.0.1:0".into();
        cfg.store.data_dir = data.to_owned();
        cfg.store.indexed_paths = vec!["data.country".into()];
        cfg.store.cache_mib = 16;
        adjust(&mut cfg);
        let metrics = Metrics::new();
        let store = SqliteStore::open(cfg.sqlite_options(Some(metrics.commit_observer())))
            .expect("open store");
        let keys = herald_store::KeyStore::open(&cfg.store.data_dir).expect("open keys");
        let state = AppState::new(Arc::new(store), keys, &cfg, metrics).expect("state");
        let listener = tokio::net::TcpListener::bind(&cfg.server.listen)
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let header_timeout = cfg.server.header_timeout_secs.max(1);
        let task = tokio::spawn(async move {
            herald_server::serve_with(
                listener,
                state,
                None,
                std::time::Duration::from_secs(header_timeout),
                async {
                    let _ = rx.await;
                },
            )
            .await
            .expect("serve");
        });
        TestServer {
            url,
            client: http_client(),
            stop: Some(tx),
            task: Some(task),
            _dir: None,
        }
    }

    /// POSTs a body with a content type; returns status, headers and JSON body.
    pub async fn post(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let res = self
            .client
            .post(format!("{}/v1/events", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("post");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post_json(&self, v: &Value) -> (u16, Value) {
        let (s, _, b) = self.post("application/json", v.to_string()).await;
        (s, b)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let (st, text) = self.get("/metrics").await;
        assert_eq!(st, 200, "{text}");
        text.as_str().expect("metrics are text").to_owned()
    }

    /// GETs a path; returns status and JSON body.
    pub async fn get(&self, path_and_query: &str) -> (u16, Value) {
        let res = self
            .client
            .get(format!("{}{path_and_query}", self.url))
            .send()
            .await
            .expect("get");
        let status = res.status().as_u16();
        let text = res.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Lists ids matching a filter (all pages).
    pub async fn ids(&self, filter: &str) -> Vec<String> {
        self.field(filter, "id")
            .await
            .into_iter()
            .map(|v| v.as_str().expect("id").to_owned())
            .collect()
    }

    /// Lists the seqs of events matching a filter (all pages), ascending.
    pub async fn seqs(&self, filter: &str) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .field(filter, "seq")
            .await
            .into_iter()
            .map(|v| v.as_u64().expect("seq"))
            .collect();
        v.sort_unstable();
        v
    }

    /// One member of every event matching a filter (all pages, newest first).
    async fn field(&self, filter: &str, name: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let mut url = reqwest::Url::parse(&format!("{}/v1/events", self.url)).expect("url");
            url.query_pairs_mut()
                .append_pair("filter", filter)
                .append_pair("limit", "1000");
            if !cursor.is_empty() {
                url.query_pairs_mut().append_pair("cursor", &cursor);
            }
            let res = self.client.get(url).send().await.expect("list");
            assert_eq!(res.status().as_u16(), 200);
            let v: Value = res.json().await.expect("json");
            for e in v["events"].as_array().expect("events") {
                out.push(e[name].clone());
            }
            match v["next_cursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => break,
            }
        }
        out
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// The real `herald` binary serving a data directory.
pub struct BinServer {
    pub url: String,
    pub child: Child,
}

pub fn herald_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herald"))
}

impl BinServer {
    /// Starts `herald serve` on a random port and waits until it prints where it listens.
    pub fn start(data: &Path) -> BinServer {
        Self::start_logging(data, None)
    }

    /// Starts the server with its log (level info) appended to `log` when given.
    pub fn start_logging(data: &Path, log: Option<&Path>) -> BinServer {
        Self::start_full(data, log, "127.0.0.1:0", &[])
    }

    /// Starts the server with extra environment (configuration overrides).
    pub fn start_env(data: &Path, log: Option<&Path>, env: &[(&str, &str)]) -> BinServer {
        Self::start_full(data, log, "127.0.0.1:0", env)
    }

    /// Starts the server on a given address (to restart it where clients expect it).
    pub fn start_on(data: &Path, listen: &str) -> BinServer {
        Self::start_full(data, None, listen, &[])
    }

    fn start_full(
        data: &Path,
        log: Option<&Path>,
        listen: &str,
        env: &[(&str, &str)],
    ) -> BinServer {
        let stderr = match log {
            Some(p) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .expect("log file"),
            ),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(herald_bin())
            .args(["serve", "--listen", listen, "--data"])
            .arg(data)
            .env(
                "HERALD_SERVER__LOG",
                if log.is_some() { "info" } else { "warn" },
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn herald");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read banner");
        // Keep reading what the server prints (key notices), so that it never writes into
        // a closed pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        let Some(url) = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .map(str::to_owned)
        else {
            let _ = child.kill();
            panic!("no URL in banner: {line:?}");
        };
        BinServer { url, child }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.sigterm();
        self.wait()
    }

    /// SIGTERM without waiting: the server starts shutting down.
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    }

    /// Waits for the server to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the herald CLI with arguments; returns (success, stdout, stderr).
pub fn cli(args: &[&str], url: &str) -> (bool, String, String) {
    let out = Command::new(herald_bin())
        .args(args)
        .env("HERALD_URL", url)
        .output()
        .expect("run herald");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `GET /v1/stream` connection read frame by frame.
pub struct SseStream {
    res: reqwest::Response,
    parser: herald_wire::sse::Parser,
    pending: std::collections::VecDeque<herald_wire::sse::Frame>,
}

impl SseStream {
    /// Opens a stream; `query` is the query string (`filter=...&after=...`), `last_id` the
    /// `Last-Event-ID` header to send.
    pub async fn open(base: &str, query: &str, last_id: Option<u64>) -> SseStream {
        let mut req = http_client().get(format!("{base}/v1/stream?{query}"));
        if let Some(id) = last_id {
            req = req.header("last-event-id", id.to_string());
        }
        let res = req.send().await.expect("open stream");
        assert_eq!(
            res.status().as_u16(),
            200,
            "stream answered {}",
            res.status()
        );
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        SseStream {
            res,
            parser: herald_wire::sse::Parser::new(),
            pending: Default::default(),
        }
    }

    /// Reads an already opened stream response.
    pub fn from_response(res: reqwest::Response) -> SseStream {
        SseStream {
            res,
            parser: herald_wire::sse::Parser::new(),
            pending: Default::default(),
        }
    }

    /// The next frame, or `None` when the stream ended or nothing came within `wait`.
    pub async fn next(&mut self, wait: std::time::Duration) -> Option<herald_wire::sse::Frame> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Some(f);
            }
            let chunk = tokio::time::timeout(wait, self.res.chunk()).await.ok()?;
            match chunk {
                Ok(Some(bytes)) => self.pending.extend(self.parser.feed(&bytes)),
                _ => return None,
            }
        }
    }

    /// The next frame that carries an event (skipping id-only and retry frames).
    pub async fn next_event(
        &mut self,
        wait: std::time::Duration,
    ) -> Option<herald_wire::sse::Frame> {
        loop {
            let f = self.next(wait).await?;
            if !f.data.is_empty() {
                return Some(f);
            }
        }
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}
