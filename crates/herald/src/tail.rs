//! `herald tail FILTER`: follows `GET /v1/stream`, printing each matching event as it
//! arrives, and resumes after disconnects (network drops, server restarts) from the last
//! position it saw, so the output has no gap and no duplicate.

use crate::Remote;
use anyhow::Context;
use herald_wire::sse::{Frame, Parser};
use std::io::Write;
use std::time::Duration;

#[derive(clap::Args)]
pub struct TailArgs {
    /// Filter, e.g. `type:import.* severity:>=error`.
    #[arg(default_value = "")]
    filter: String,
    /// Start with events since this time (10m, 2026-11-01, RFC 3339), then follow.
    #[arg(long, conflicts_with = "after")]
    since: Option<String>,
    /// Start after this seq (resume where an earlier tail stopped), then follow.
    #[arg(long)]
    after: Option<u64>,
    /// Print each event's JSON on one line instead of a compact line.
    #[arg(long)]
    json: bool,
    /// Exit after this many events.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    #[command(flatten)]
    remote: Remote,
}

/// What one connection ended with.
enum Ended {
    /// The requested number of events was printed.
    Done,
    /// The connection dropped or the server closed the stream: reconnect.
    Dropped(String),
}

pub async fn tail(a: TailArgs) -> anyhow::Result<()> {
    // No overall timeout (the stream is endless); a read timeout well above the server's
    // heartbeat interval detects a dead connection.
    let client = reqwest::Client::builder()
        .user_agent(concat!("herald-cli/", env!("CARGO_PKG_VERSION")))
        .default_headers(a.remote.auth_headers()?)
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .context("cannot build the HTTP client")?;
    let mut st = State {
        last: a.after,
        printed: 0,
        retry: Duration::from_secs(2),
    };
    let mut failures = 0u32;
    loop {
        match connect(&client, &a, &mut st).await {
            Ok(Ended::Done) => return Ok(()),
            Ok(Ended::Dropped(why)) => {
                failures = 0;
                eprintln!("herald tail: {why}; reconnecting");
            }
            Err(e) if is_client_error(&e) => return Err(e),
            Err(e) => {
                failures += 1;
                eprintln!("herald tail: {e:#}; retrying");
            }
        }
        // Back off on repeated failures, up to 30 s, starting from the server's hint.
        let wait = st.retry * 2u32.saturating_pow(failures.min(4));
        tokio::time::sleep(wait.min(Duration::from_secs(30))).await;
    }
}

struct State {
    /// The position to resume after (`None`: start live).
    last: Option<u64>,
    printed: u64,
    retry: Duration,
}

#[derive(Debug)]
struct ClientError(String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClientError {}

fn is_client_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ClientError>().is_some()
}

async fn connect(client: &reqwest::Client, a: &TailArgs, st: &mut State) -> anyhow::Result<Ended> {
    let mut q: Vec<(&str, String)> = vec![("filter", a.filter.clone())];
    let mut req = client.get(format!("{}/v1/stream", a.remote.url));
    match st.last {
        Some(seq) => req = req.header("last-event-id", seq.to_string()),
        None => {
            if let Some(s) = &a.since {
                q.push(("since", s.clone()));
            }
        }
    }
    let mut res = req
        .query(&q)
        .send()
        .await
        .with_context(|| format!("cannot reach Herald at {}", a.remote.url))?;
    let status = res.status();
    if status.is_client_error() {
        // A bad filter or position will not get better by retrying.
        let err = crate::client::problem(res).await;
        return Err(ClientError(format!("{err:#}")).into());
    }
    if !status.is_success() {
        return Err(crate::client::problem(res).await);
    }
    let stdout = std::io::stdout();
    let mut parser = Parser::new();
    loop {
        let chunk = match res.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(Ended::Dropped("the server closed the stream".into())),
            Err(e) => return Ok(Ended::Dropped(format!("connection lost ({e})"))),
        };
        let mut out = stdout.lock();
        for f in parser.feed(&chunk) {
            if let Some(ms) = f.retry {
                st.retry = Duration::from_millis(ms.clamp(100, 60_000));
            }
            if let Some(id) = f.id.as_deref().and_then(|i| i.parse().ok()) {
                st.last = Some(id);
            }
            match f.event.as_deref() {
                Some("reset") => {
                    eprintln!("herald tail: the requested position is gone: {}", f.data);
                    continue;
                }
                Some("disconnect") => {
                    return Ok(Ended::Dropped(format!(
                        "the server ended the stream: {}",
                        f.data
                    )));
                }
                _ => {}
            }
            if f.data.is_empty() {
                continue;
            }
            print_event(&mut out, &f, a.json)?;
            st.printed += 1;
            if a.count.is_some_and(|n| st.printed >= n) {
                out.flush()?;
                return Ok(Ended::Done);
            }
        }
        out.flush()?;
    }
}

fn print_event(out: &mut impl Write, f: &Frame, json: bool) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", f.data)?;
        Ok(())
    } else {
        crate::client::print_row(out, &f.data)
    }
}
