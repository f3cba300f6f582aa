//! Single-event requests driven by `wrk`, a C load generator in its own process (as pgbench
//! drives PostgreSQL), so that the figure is not limited by the bench's own HTTP client,
//! which shares the machine's cores with the server. Used when `wrk` is on `PATH` (Debian
//! package `wrk`).
//!
//! Every request sends one generated event with a unique id and the current time: the events
//! are written as templates (`head` TAB `middle` TAB `tail`, the JSON cut where the id's and
//! the time's values go) that a Lua script completes with the bench's seed, the wrk thread's
//! number and a counter, and with the clock. The time is the clock's, as a live producer's
//! is, rather than the template's: 20,000 templates sent over and over would send the same
//! 20,000 times again and again, and every index keyed by time would take most events in the
//! middle of what it holds instead of at its end, as no live producer makes it do.

use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = r#"
-- Written by `herald bench ingest`: one event per request, each with a unique id.
local templates = {}
local prefix = "wrk-"
local counter = 0
local threads = 0
-- The time of the current second, and a counter of the events sent in it (microseconds
-- that increase within the second, so that times stay in order).
local second = -1
local stamp = ""
local in_second = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  prefix = args[2]
  for line in io.lines(args[1]) do
    local head, middle, tail = line:match("^(.-)\t(.-)\t(.*)$")
    templates[#templates + 1] = { head, middle, tail }
  end
end
local function now()
  local s = os.time()
  if s ~= second then
    second = s
    stamp = os.date("!%Y-%m-%dT%H:%M:%S", s)
    in_second = 0
  end
  in_second = math.min(in_second + 1, 999999)
  return stamp .. string.format(".%06dZ", in_second)
end
request = function()
  counter = counter + 1
  local t = templates[(counter % #templates) + 1]
  local body = t[1] .. prefix .. tid .. "-" .. counter .. t[2] .. now() .. t[3]
  return wrk.format("POST", "/v1/events", { ["Content-Type"] = "application/json" }, body)
end
"#;

/// Where the id goes in a template.
const MARK: &str = "@@herald-wrk-id@@";
/// Where the time goes in a template.
const TIME_MARK: &str = "@@herald-wrk-time@@";

/// What wrk measured.
pub struct WrkOutcome {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// Whether `wrk` can be run.
pub fn available() -> bool {
    Command::new("wrk")
        .arg("--version")
        .output()
        .map(|_| true)
        .unwrap_or(false)
}

/// What wrk is given: its script, and the arguments after `--` (the event templates and
/// the id prefix).
pub struct WrkFiles {
    pub script: PathBuf,
    pub templates: PathBuf,
    pub prefix: String,
}

/// Writes the Lua script and up to 20,000 of `events` as templates into `dir`. Also what
/// `herald bench wrk-files` writes for `scripts/callgrind-ingest.sh`.
pub fn write_files(events: &[super::GenEvent], dir: &Path, seed: u64) -> anyhow::Result<WrkFiles> {
    let templates = dir.join("wrk-events.tsv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&templates)?);
    for e in events.iter().take(20_000) {
        let mut v: serde_json::Value = serde_json::from_str(&e.json)?;
        v["id"] = serde_json::Value::String(MARK.into());
        v["time"] = serde_json::Value::String(TIME_MARK.into());
        let s = v.to_string();
        // `id` comes before `time` both in generated order and sorted by name.
        let (head, rest) = s
            .split_once(MARK)
            .context("the id marker is in the event")?;
        let (middle, tail) = rest
            .split_once(TIME_MARK)
            .context("the time marker follows the id marker")?;
        writeln!(f, "{head}\t{middle}\t{tail}")?;
    }
    f.flush()?;
    drop(f);
    let script = dir.join("wrk-single.lua");
    std::fs::write(&script, SCRIPT)?;
    Ok(WrkFiles {
        script,
        templates,
        // Ids differ between seeds, as the generated events' do.
        prefix: format!("wrk-{seed}-"),
    })
}

/// Sends single events to `url` from `connections` connections for `seconds`.
pub fn run(
    url: &str,
    events: &[super::GenEvent],
    connections: usize,
    seconds: u64,
    dir: &Path,
    seed: u64,
) -> anyhow::Result<WrkOutcome> {
    let files = write_files(events, dir, seed)?;
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(["--latency", "-s"])
        .arg(&files.script)
        .arg(url)
        .arg("--")
        .arg(&files.templates)
        .arg(&files.prefix)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&text)
}

/// Reads wrk's report (`--latency`).
fn parse(text: &str) -> anyhow::Result<WrkOutcome> {
    let ms = |v: &str| -> Option<f64> {
        let (n, unit) = v
            .find(|c: char| c.is_ascii_alphabetic())
            .map(|i| v.split_at(i))?;
        let n: f64 = n.parse().ok()?;
        Some(match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            "m" => n * 60_000.0,
            _ => return None,
        })
    };
    let mut o = WrkOutcome {
        requests: 0,
        rps: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        errors: 0,
    };
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["50%", v] => o.p50_ms = ms(v).unwrap_or(0.0),
            ["99%", v] => o.p99_ms = ms(v).unwrap_or(0.0),
            ["Requests/sec:", v] => o.rps = v.parse().unwrap_or(0.0),
            [n, "requests", "in", ..] => o.requests = n.parse().unwrap_or(0),
            ["Non-2xx", "or", "3xx", "responses:", n] => o.errors += n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                // connect A, read B, write C, timeout D
                o.errors += rest
                    .iter()
                    .filter_map(|x| x.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>()
            }
            _ => {}
        }
    }
    anyhow::ensure!(o.requests > 0, "wrk sent no request:\n{text}");
    Ok(o)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_wrk_report() {
        let o = super::parse(
            "Running 10s test @ http://127.0.0.1:1/\n  2 threads and 64 connections\n  Latency Distribution\n     50%    2.03ms\n     75%    2.90ms\n     90%    4.00ms\n     99%   12.50ms\n  269590 requests in 10.03s, 68.33MB read\n  Socket errors: connect 0, read 1, write 0, timeout 2\n  Non-2xx or 3xx responses: 3\nRequests/sec:  26885.49\n",
        )
        .unwrap();
        assert_eq!(o.requests, 269590);
        assert_eq!((o.p50_ms, o.p99_ms, o.errors), (2.03, 12.5, 6));
        assert!((o.rps - 26885.49).abs() < 1e-6);
    }

    /// A template completed as the script completes it is the generated event with the id
    /// and the time put in.
    #[test]
    fn templates_take_an_id_and_a_time() {
        let mut g = super::super::gen::Generator::new(3, 10, 0, 1_000_000_000);
        let events: Vec<_> = (0..10).map(|_| g.next_event()).collect();
        let dir = tempfile::tempdir().unwrap();
        let files = super::write_files(&events, dir.path(), 3).unwrap();
        let text = std::fs::read_to_string(&files.templates).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10);
        for (line, e) in lines.iter().zip(&events) {
            let parts: Vec<&str> = line.split('\t').collect();
            assert_eq!(parts.len(), 3, "{line}");
            let json = format!(
                "{}wrk-3-1-7{}2026-12-07T10:00:00.000001Z{}",
                parts[0], parts[1], parts[2]
            );
            let sent: serde_json::Value = serde_json::from_str(&json).unwrap();
            let mut want: serde_json::Value = serde_json::from_str(&e.json).unwrap();
            want["id"] = "wrk-3-1-7".into();
            want["time"] = "2026-12-07T10:00:00.000001Z".into();
            assert_eq!(sent, want);
        }
        assert!(std::fs::read_to_string(&files.script)
            .unwrap()
            .contains("now()"));
    }
}
