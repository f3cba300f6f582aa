//! The CLI against the real binary: serve, emit, query, import (with resume), export, tail.

use crate::harness::{cli, free_addr, herald_bin, BinServer};
use serde_json::json;
use std::io::Write;

#[test]
fn emit_query_import_export_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(&dir.path().join("data"));
    let url = server.url.clone();
    // The server runs without transparent huge pages (see `disable_transparent_huge_pages`).
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .expect("the server's /proc status");
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }

    let (ok, out, err) = cli(
        &[
            "emit",
            "backup.completed",
            "--data",
            r#"{"size":42}"#,
            "--severity",
            "notice",
            "--subject",
            "db1",
        ],
        &url,
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("stored seq="), "{out}");
    // What emit stored is what it was told.
    let (ok, out, err) = cli(&["query", "type:backup.completed", "--json"], &url);
    assert!(ok, "{err}");
    let stored: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(
        (
            &stored["severity"],
            &stored["subject"],
            &stored["data"]["size"]
        ),
        (&json!("notice"), &json!("db1"), &json!(42)),
        "{stored}"
    );
    let (ok, _, err) = cli(&["emit", "Bad", "--data", "{}"], &url);
    assert!(!ok);
    assert!(
        err.contains("422") && err.contains("dotted lowercase"),
        "{err}"
    );
    let (ok, _, err) = cli(&["emit", "x.y", "--data", "{not json"], &url);
    assert!(!ok && err.contains("--data"), "{err}");

    // Import: 2,500 lines with one invalid line and one blank line, in batches of 1000.
    let file = dir.path().join("events.ndjson");
    {
        let mut f = std::fs::File::create(&file).unwrap();
        for i in 0..2500 {
            if i == 1234 {
                writeln!(f, r#"{{"type":"INVALID","source":"/imp","id":"bad"}}"#).unwrap();
            } else {
                writeln!(
                    f,
                    r#"{{"type":"imp.row","source":"/imp","id":"r{i}","data":{{"i":{i}}}}}"#
                )
                .unwrap();
            }
            if i == 10 {
                writeln!(f).unwrap();
            }
        }
    }
    let path = file.to_str().unwrap();
    let (ok, out, err) = cli(&["import", path, "--quiet"], &url);
    assert!(ok, "{err}");
    assert!(
        out.contains("2499 stored, 0 duplicates, 0 conflicts, 1 rejected"),
        "{out}"
    );
    let rejects = std::fs::read_to_string(format!("{path}.rejected.ndjson")).unwrap();
    assert!(
        rejects.contains("\"line\":1236") && rejects.contains("/type"),
        "{rejects}"
    );
    assert!(
        !std::path::Path::new(&format!("{path}.herald-import")).exists(),
        "state removed when done"
    );

    // Resume: pretend an earlier run stopped after the first 1000 lines (11 with the blank).
    let offset: usize = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .take(1001)
        .map(|l| l.len() + 1)
        .sum();
    std::fs::write(
        format!("{path}.herald-import"),
        format!(r#"{{"offset":{offset},"line":1001,"stored":1000,"duplicates":0,"conflicts":0,"rejected":0}}"#),
    )
    .unwrap();
    let (ok, out, err) = cli(&["import", path, "--quiet"], &url);
    assert!(ok, "{err}");
    assert!(err.contains("resuming"), "{err}");
    assert!(out.contains("1000 stored, 1499 duplicates"), "{out}");

    let (ok, out, err) = cli(&["query", "type:imp.row data.i:>=2497"], &url);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 4, "header + 3 rows: {out}");
    let (ok, out, _) = cli(&["query", "type:imp.row", "--json", "-n", "1500"], &url);
    assert!(ok);
    assert_eq!(out.lines().count(), 1500);
    let (ok, _, err) = cli(&["query", "nofield:x"], &url);
    assert!(!ok && err.contains("unknown field"), "{err}");

    let export = dir.path().join("out.ndjson");
    let (ok, _, err) = cli(
        &["export", "source:/imp", "-o", export.to_str().unwrap()],
        &url,
    );
    assert!(ok, "{err}");
    assert!(err.contains("exported 2499 events"), "{err}");
    // The export imports again as duplicates only: seq and recordedtime are ignored on input.
    let (ok, out, err) = cli(&["import", export.to_str().unwrap(), "--quiet"], &url);
    assert!(ok, "{err}");
    assert!(out.contains("0 stored, 2499 duplicates"), "{out}");

    let (ok, out, _) = cli(&["config", "default"], &url);
    assert!(ok && out.contains("[store]") && out.contains("max_batch_len"));
    drop(server);
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = BinServer::start(dir.path());
    let (ok, _, err) = cli(&["emit", "x.y"], &server.url);
    assert!(ok, "{err}");
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    let server = BinServer::start(dir.path());
    let (ok, out, _) = cli(&["query", "type:x.y", "--json"], &server.url);
    assert!(ok);
    assert_eq!(out.lines().count(), 1);
}

#[test]
fn tail_follows_and_resumes_across_a_restart() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = free_addr();
    let mut server = BinServer::start_on(&data, &addr);
    let url = server.url.clone();
    for i in 0..3 {
        let (ok, _, err) = cli(
            &["emit", "job.done", "--data", &format!("{{\"i\":{i}}}")],
            &url,
        );
        assert!(ok, "{err}");
    }
    cli(&["emit", "other.thing"], &url);
    let mut tail = std::process::Command::new(herald_bin())
        .args(["tail", "type:job.*", "--after", "0", "-n", "6", "--json"])
        .env("HERALD_URL", &url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tail");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait = std::time::Duration::from_secs(20);
    let mut lines = Vec::new();
    for _ in 0..3 {
        lines.push(rx.recv_timeout(wait).expect("an event from storage"));
    }
    // The server goes away and comes back; tail reconnects and resumes.
    assert!(server.terminate().success());
    let server = BinServer::start_on(&data, &addr);
    for i in 3..6 {
        let (ok, _, err) = cli(
            &["emit", "job.done", "--data", &format!("{{\"i\":{i}}}")],
            &server.url,
        );
        assert!(ok, "{err}");
    }
    for _ in 0..3 {
        lines.push(rx.recv_timeout(wait).expect("an event after the restart"));
    }
    let status = tail.wait().expect("tail exits after -n events");
    assert!(status.success());
    let is: Vec<i64> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json line")["data"]["i"]
                .as_i64()
                .expect("i")
        })
        .collect();
    assert_eq!(is, [0, 1, 2, 3, 4, 5], "every event once, in order");

    let (ok, _, err) = cli(&["tail", "type:"], &server.url);
    assert!(
        !ok && err.contains("400"),
        "a bad filter fails at once: {err}"
    );
}

#[test]
fn keys_offline_bootstrap_and_auth_modes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    // Keys can be made before any server ran, as JSON for scripts.
    let (ok, out, err) = cli(
        &[
            "keys",
            "create",
            "--data",
            data_s,
            "--name",
            "reader",
            "--role",
            "read",
            "--principal",
            "tenant:acme",
            "--json",
        ],
        "http://127.0.0.1:9",
    );
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).expect("json");
    let secret = created["secret"].as_str().expect("secret").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    let (ok, out, _) = cli(&["keys", "list", "--data", data_s, "--json"], "");
    assert!(ok && out.contains(&id) && !out.contains(&secret), "{out}");
    let (ok, _, err) = cli(
        &[
            "keys", "create", "--data", data_s, "--name", "x", "--role", "boss",
        ],
        "",
    );
    assert!(!ok && err.contains("role"), "{err}");

    // Without authentication, only loopback.
    let refused = std::process::Command::new(herald_bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data", data_s])
        .env("HERALD_AUTH__MODE", "off")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("without authentication"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A server that requires keys, with a known admin key for automation.
    let admin = "hrl_bootstrap-secret-for-this-test";
    let server = BinServer::start_env(
        &data,
        None,
        &[
            ("HERALD_AUTH__MODE", "required"),
            ("HERALD_BOOTSTRAP_ADMIN_KEY", admin),
        ],
    );
    let with_key = |args: &[&str], key: &str| {
        let out = std::process::Command::new(herald_bin())
            .args(args)
            .env("HERALD_URL", &server.url)
            .env("HERALD_KEY", key)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = cli(&["emit", "x.y"], &server.url);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, _, err) = with_key(&["emit", "x.y", "--tenant", "acme"], admin);
    assert!(ok, "{err}");
    let (ok, out, err) = with_key(&["query", "--json"], &secret);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().count(),
        1,
        "the reader sees the acme event: {out}"
    );
    let (ok, _, err) = with_key(&["emit", "x.y"], &secret);
    assert!(!ok && err.contains("403"), "a read key cannot send: {err}");
    let (ok, out, err) = with_key(&["keys", "list"], admin);
    assert!(ok && out.contains("reader"), "{out}{err}");
    let (ok, _, err) = with_key(&["keys", "revoke", &id], admin);
    assert!(ok, "{err}");
    let (ok, _, err) = with_key(&["query"], &secret);
    assert!(!ok && err.contains("401"), "revoked: {err}");
}

/// `herald types push DIR` (JSON and TOML files), `herald types list`, a breaking change
/// refused with its reasons, and `pipeline.types_dir` loaded at start-up.
#[test]
fn types_push_list_and_types_dir() {
    let dir = tempfile::tempdir().unwrap();
    let types = dir.path().join("types");
    std::fs::create_dir(&types).unwrap();
    std::fs::write(
        types.join("import.toml"),
        r#"
type = "import.*"
owner = "data-team@example.org"
validation = "enforce"

[schemas."1.0.0"]
type = "object"
required = ["rows"]
properties = { rows = { type = "integer", minimum = 0 } }
"#,
    )
    .unwrap();
    std::fs::write(
        types.join("page.json"),
        r#"{"type": "page.viewed", "sampling": {"rate": 0.5, "unit": "actor"}}"#,
    )
    .unwrap();
    let server = BinServer::start(&dir.path().join("data"));
    let url = server.url.clone();
    let dir_arg = types.to_str().unwrap();
    let (ok, out, err) = cli(&["types", "push", dir_arg], &url);
    assert!(ok, "{err}");
    assert!(out.contains("import.*: schema 1.0.0 published"), "{out}");
    // Pushing again changes nothing and succeeds.
    let (ok, out, err) = cli(&["types", "push", dir_arg], &url);
    assert!(ok && out.contains("already published"), "{out}{err}");
    let (ok, _, err) = cli(&["emit", "import.done", "--data", r#"{"rows":-1}"#], &url);
    assert!(!ok && err.contains("422"), "enforced: {err}");
    // A breaking 1.1.0 (rows now required to be at most 10) is refused with its reason.
    std::fs::write(
        types.join("import.toml"),
        r#"
type = "import.*"
validation = "enforce"
[schemas."1.0.0"]
type = "object"
required = ["rows"]
properties = { rows = { type = "integer", minimum = 0 } }
[schemas."1.1.0"]
type = "object"
required = ["rows"]
properties = { rows = { type = "integer", minimum = 0, maximum = 10 } }
"#,
    )
    .unwrap();
    let (ok, _, err) = cli(&["types", "push", dir_arg], &url);
    assert!(!ok, "breaking change refused");
    assert!(
        err.contains("409") && err.contains("/properties/rows/maximum"),
        "{err}"
    );
    let (ok, _, err) = cli(&["types", "push", dir_arg, "--force", "ticket 7"], &url);
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&["types", "list"], &url);
    assert!(ok);
    assert!(
        out.contains("import.*") && out.contains("1.1.0") && out.contains("page.viewed"),
        "{out}"
    );
    drop(server);

    // A fresh server loads the same files at start-up; it refuses to start on a breaking
    // change (files carry no force), naming the file and the reason.
    let data2 = dir.path().join("data2");
    let out = std::process::Command::new(herald_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data2.to_str().unwrap(),
        ])
        .env("HERALD_PIPELINE__TYPES_DIR", dir_arg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("import.toml") && err.contains("/properties/rows/maximum"),
        "{err}"
    );
    std::fs::write(
        types.join("import.toml"),
        r#"
type = "import.*"
validation = "enforce"
[schemas."1.0.0"]
type = "object"
required = ["rows"]
properties = { rows = { type = "integer", minimum = 0 } }
"#,
    )
    .unwrap();
    std::fs::write(
        types.join("bad.json"),
        r#"{"type": "x.y", "validaton": "warn"}"#,
    )
    .unwrap();
    let (ok, _, err) = cli(&["types", "push", dir_arg], &url);
    assert!(!ok && err.contains("bad.json"), "the file is named: {err}");
    std::fs::remove_file(types.join("bad.json")).unwrap();
    let server = BinServer::start_env(&data2, None, &[("HERALD_PIPELINE__TYPES_DIR", dir_arg)]);
    let (ok, out, _) = cli(&["types", "list", "--json"], &server.url);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["import.*", "page.viewed"], "{v}");
}
