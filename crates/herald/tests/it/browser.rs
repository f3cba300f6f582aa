//! A real browser's `EventSource` against the stream: headless Chromium, driven through
//! chromedriver's W3C WebDriver API, opens `/v1/stream` from a page on another origin (so
//! CORS is exercised too), receives events, and resumes by itself with `Last-Event-ID`
//! after the server restarts. Under `CI=true` a missing Chromium fails the test (`.ci/run`
//! installs Debian's `chromium` and `chromium-driver`).

use crate::harness::{free_addr, http_client, TestServer};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver, killed on drop.
struct Driver {
    child: Child,
    url: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        let addr = free_addr();
        let port = addr.rsplit(':').next().expect("port").to_owned();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://{addr}");
        let profile = tempfile::tempdir().expect("profile dir");
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.get(format!("{url}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                     format!("--user-data-dir={}", profile.path().display())]
        }}}});
        let res: Value = client
            .post(format!("{url}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let session = res["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {res}"))
            .to_owned();
        Driver {
            child,
            url,
            session,
            _profile: profile,
        }
    }

    async fn cmd(&self, path: &str, body: Value) -> Value {
        let res: Value = http_client()
            .post(format!("{}/session/{}/{path}", self.url, self.session))
            .json(&body)
            .send()
            .await
            .expect("webdriver command")
            .json()
            .await
            .expect("webdriver json");
        res["value"].clone()
    }

    async fn script(&self, js: &str) -> Value {
        self.cmd("execute/sync", json!({"script": js, "args": []}))
            .await
    }

    /// Polls `js` until `done` holds for its value.
    async fn wait_for(&self, js: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.script(js).await;
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: last value {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves one HTML page on a loopback port (the page's origin differs from Herald's).
fn serve_page(html: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind page server");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                html.len()
            );
        }
    });
    format!("http://{addr}")
}

async fn post(url: &str, from: usize, n: usize) {
    let events: Vec<Value> = (from..from + n)
        .map(|i| json!({"id": format!("b{i}"), "source": "/browser", "type": "browser.tick", "data": {"i": i}}))
        .collect();
    let res = http_client()
        .post(format!("{url}/v1/events"))
        .json(&events)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_event_source_receives_and_resumes() {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Chromium and chromedriver are required under CI=true (apt-get install chromium chromium-driver)"
        );
        eprintln!("SKIPPED: chromium and chromium-driver are not installed");
        return;
    }
    let herald_addr = free_addr();
    let herald_url = format!("http://{herald_addr}");
    let page = serve_page(format!(
        r#"<!doctype html><title>tail</title><script>
window.got = []; window.opens = 0; window.errors = 0;
const es = new EventSource("{herald_url}/v1/stream?filter=type:browser.*");
es.onopen = () => {{ window.opens++; }};
es.onerror = () => {{ window.errors++; }};
es.addEventListener("browser.tick", e => {{
  window.got.push([Number(e.lastEventId), JSON.parse(e.data).data.i]);
}});
</script>"#
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let configure = |c: &mut herald_server::Config| {
        c.server.listen = herald_addr.clone();
        c.server.cors_origins = vec![page.clone()];
        c.stream.retry_ms = 300;
    };
    let srv = TestServer::start_at(dir.path(), configure).await;
    let driver = Driver::start().await;
    driver.cmd("url", json!({"url": page})).await;
    driver
        .wait_for("return window.opens", "the EventSource opens", |v| {
            v.as_u64() >= Some(1)
        })
        .await;
    post(&srv.url, 0, 3).await;
    driver
        .wait_for("return window.got.length", "three live events", |v| {
            v.as_u64() == Some(3)
        })
        .await;

    // The server restarts; events arrive while the browser is reconnecting; it resumes
    // from its Last-Event-ID by itself.
    srv.stop().await;
    driver
        .wait_for(
            "return window.errors",
            "the browser notices the drop",
            |v| v.as_u64() >= Some(1),
        )
        .await;
    let srv = TestServer::start_at(dir.path(), configure).await;
    post(&srv.url, 3, 3).await;
    let got = driver
        .wait_for("return window.got", "all six events", |v| {
            v.as_array().map(|a| a.len()) >= Some(6)
        })
        .await;
    let got: Vec<(u64, u64)> = serde_json::from_value(got).expect("pairs");
    let is: Vec<u64> = got.iter().map(|p| p.1).collect();
    assert_eq!(
        is,
        [0, 1, 2, 3, 4, 5],
        "every event once, in order: {got:?}"
    );
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "ids increase: {got:?}"
    );
    let opens = driver.script("return window.opens").await;
    assert!(
        opens.as_u64() >= Some(2),
        "the browser reconnected: {opens}"
    );
    let _ = http_client()
        .delete(format!("{}/session/{}", driver.url, driver.session))
        .send()
        .await;
    srv.stop().await;
}
