//! The NATS backend against a real NATS server with JetStream (`HERALD_TEST_NATS_URL`,
//! default `nats://127.0.0.1:4222`). Without one the test says so and passes, except under
//! `CI=true`, where a missing server is a failure (a skipped test must not pass as green).

use herald_client::backend::nats::{NatsBackend, NatsConfig};
use herald_client::Tracker;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_to_jetstream_deduplicated_by_id() {
    let url =
        std::env::var("HERALD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = match async_nats::connect(&url).await {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "NATS is required under CI: {e}"
            );
            eprintln!("SKIPPED: no NATS at {url}: {e}");
            return;
        }
    };
    let js = async_nats::jetstream::new(client);
    let suffix = herald_client::event::new_id().replace('-', "");
    let stream = format!("HERALD_TEST_{}", &suffix[..12]);
    let prefix = format!("heraldtest.{}", &suffix[..12]);
    let mut cfg = NatsConfig::new(&url);
    cfg.subject_prefix = prefix.clone();
    cfg.stream = Some(stream.clone());
    let tracker = Tracker::builder("/nats-test")
        .backend(NatsBackend::new(cfg))
        .build()
        .unwrap();
    for i in 0..100 {
        tracker.emit("nats.test", json!({ "i": i }));
    }
    // The same event twice: JetStream keeps one (Nats-Msg-Id is the event id).
    let mut twice = herald_client::Event::new("nats.twice", "/nats-test".into());
    twice.data = Some(json!({}));
    tracker.emit_event(twice.clone());
    tracker.emit_event(twice);
    assert_eq!(tracker.flush_async(Duration::from_secs(20)).await, 0);
    let c = tracker.counters();
    assert_eq!(c.sent, 102, "{c:?}");
    let mut s = js.get_stream(&stream).await.unwrap();
    let info = s.info().await.unwrap();
    assert_eq!(info.state.messages, 101);
    let msg = s
        .get_last_raw_message_by_subject(&format!("{prefix}.nats.test"))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(v["data"]["i"], 99);
    tracker.shutdown(Duration::from_secs(5));
    js.delete_stream(&stream).await.unwrap();
}
