//! Durability: `kill -9` in the middle of a concurrent load loses no acknowledged event and
//! leaves a database that opens cleanly; SIGTERM drains what was accepted.

use crate::harness::BinServer;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `/crash` events with these ids, each with `pad` bytes of data.
fn events(ids: &[impl AsRef<str>], pad: usize) -> Vec<Value> {
    ids.iter()
        .map(|id| json!({"type":"crash.test","source":"/crash","id":id.as_ref(),"data":{"pad":"z".repeat(pad)}}))
        .collect()
}

/// Fails naming a few of the `acked` ids missing from `stored`, if any.
fn assert_none_lost(acked: &HashSet<String>, stored: &HashSet<String>) {
    let lost: Vec<&String> = acked.difference(stored).take(5).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {lost:?}",
        acked.difference(stored).count()
    );
}

async fn load(url: String, worker: usize, acked: Arc<Mutex<Vec<String>>>) {
    let _ = crate::harness::http_client();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for n in 0.. {
        // Batch sizes vary so that commits group different numbers of requests.
        let size = 1 + (n * 37 + worker * 11) % 150;
        let ids: Vec<String> = (0..size).map(|i| format!("w{worker}-b{n}-{i}")).collect();
        let batch = events(&ids, 300);
        match client
            .post(format!("{url}/v1/events"))
            .json(&batch)
            .send()
            .await
        {
            Ok(res) if res.status().as_u16() == 201 => acked.lock().unwrap().extend(ids),
            Ok(res) if res.status().as_u16() == 503 => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            _ => return, // the server is gone
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let mut total_acked = HashSet::new();
    for round in 0..3 {
        // From the second round on, event segments are 1 MiB, so that the writer moves to a
        // new one every ~1,200 events and a kill also lands around those moves, and the
        // duplicate keys are written out every 500 events (and merged), so that a kill also
        // lands while a run of them is written or merged.
        let (segment, keys) = if round == 0 {
            ("256", "1048576")
        } else {
            ("1", "500")
        };
        let mut server = BinServer::start_env(
            &data,
            Some(&log),
            &[
                ("HERALD_STORE__SEGMENT_MIB", segment),
                ("HERALD_STORE__DEDUP_MEMORY_KEYS", keys),
            ],
        );
        let acked = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..8)
            .map(|w| tokio::spawn(load(server.url.clone(), w + round * 100, acked.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(700 + 300 * round as u64)).await;
        server.kill9();
        for t in tasks {
            let _ = t.await;
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "round {round}: the load acknowledged nothing before the kill"
        );
        total_acked.extend(acked);
    }
    // The database opens cleanly and holds every acknowledged event.
    let server = BinServer::start_logging(&data, Some(&log));
    let client = crate::harness::http_client();
    let stored = stored_ids(&server.url).await;
    assert_none_lost(&total_acked, &stored);
    // Every acknowledged event is known as a duplicate: its key survived the kills, in memory
    // and read back from SQLite, or in a run of keys on disk.
    let mut ids: Vec<&String> = total_acked.iter().collect();
    ids.sort();
    for chunk in ids.chunks(1000) {
        let batch = events(chunk, 300);
        let res = client
            .post(format!("{}/v1/events", server.url))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201);
        let body: Value = res.json().await.unwrap();
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), chunk.len());
        for (id, r) in chunk.iter().zip(results) {
            assert_eq!(r["status"], "duplicate", "{id} sent again: {r}");
        }
    }
    assert!(
        std::fs::read_dir(data.join("dedup")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".dk")),
        "no run of duplicate keys was written, so the test did not exercise them"
    );
    // Events acknowledged from their segment but not yet in SQLite's indexes when the
    // process died were indexed from the segments at the next start.
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("indexed acknowledged events from the event segments"),
        "no restart indexed events from the segments, so the test did not exercise recovery:\n{log}"
    );
    eprintln!(
        "kill -9 test: {} acknowledged, {} stored (unacknowledged may or may not be there)",
        total_acked.len(),
        stored.len()
    );
}

/// The ids of every stored `/crash` event, read page by page.
async fn stored_ids(base: &str) -> HashSet<String> {
    let client = crate::harness::http_client();
    let mut stored = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = reqwest::Url::parse(&format!("{base}/v1/events")).unwrap();
        url.query_pairs_mut()
            .append_pair("filter", "source:/crash")
            .append_pair("limit", "1000");
        if let Some(c) = &cursor {
            url.query_pairs_mut().append_pair("cursor", c);
        }
        let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        for e in page["events"].as_array().unwrap() {
            stored.insert(e["id"].as_str().unwrap().to_owned());
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            return stored;
        }
    }
}

/// SIGTERM in the middle of a concurrent load: the server exits 0, and after a restart every
/// acknowledged event is there (that a request being read is answered is the next test's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_keeps_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = BinServer::start(&data);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..8)
        .map(|w| tokio::spawn(load(server.url.clone(), 1000 + w, acked.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = tokio::task::block_in_place(|| server.terminate());
    assert!(status.success(), "exit status {status:?}");
    for t in tasks {
        let _ = t.await;
    }
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(!acked.is_empty(), "the load acknowledged nothing");
    let server = BinServer::start(&data);
    let stored = stored_ids(&server.url).await;
    assert_none_lost(&acked, &stored);
}

/// A request the server was reading when SIGTERM came is read to its end, stored and answered
/// before the server exits: half of its body is sent before the signal, the rest after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_the_request_it_is_reading() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = BinServer::start(&data);
    let ids: Vec<String> = (0..2000).map(|i| format!("slow-{i}")).collect();
    let body = serde_json::to_vec(&events(&ids, 100)).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    let half = body.len() / 2;
    tx.send(Ok(body[..half].to_vec())).await.unwrap();
    let request = tokio::spawn(
        crate::harness::http_client()
            .post(format!("{}/v1/events", server.url))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) },
            )))
            .send(),
    );
    // Time for the connection to be accepted and the first half read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !server.exited(),
        "the server exited with a request half read"
    );
    tx.send(Ok(body[half..].to_vec())).await.unwrap();
    drop(tx);
    let res = request
        .await
        .unwrap()
        .expect("an answer, not a closed connection");
    assert_eq!(res.status().as_u16(), 201);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["stored"], 2000, "{answer}");
    let status = tokio::task::block_in_place(|| server.wait());
    assert!(status.success(), "exit status {status:?}");
    let server = BinServer::start(&data);
    let stored = stored_ids(&server.url).await;
    assert!(ids.iter().all(|id| stored.contains(id)));
}
