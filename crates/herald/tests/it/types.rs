//! Event types over HTTP: settings and schema publishing with compatibility checks,
//! validation modes, quarantine and replay, sampling, each pipeline processor, opt-out, the
//! catalog, and per-type default visibility.

use crate::harness::TestServer;
use serde_json::{json, Value};

impl TestServer {
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let res = self
            .client
            .put(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .expect("put");
        let status = res.status().as_u16();
        let text = res.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post_to(&self, path: &str, body: &Value) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .expect("post");
        let status = res.status().as_u16();
        let text = res.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn delete(&self, path: &str) -> u16 {
        self.client
            .delete(format!("{}{path}", self.url))
            .send()
            .await
            .expect("delete")
            .status()
            .as_u16()
    }
}

fn order_schema() -> Value {
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "required": ["order_id", "amount"],
        "additionalProperties": false,
        "properties": {
            "order_id": {"type": "string"},
            "amount": {"type": "number", "minimum": 0},
            "client_ip": {"type": "string"},
            "note": {"type": "string", "maxLength": 20}
        },
        "examples": [{"order_id": "o1", "amount": 3}]
    })
}

#[tokio::test]
async fn schemas_publish_with_compatibility_checks() {
    let s = TestServer::start().await;
    let (st, b) = s
        .put("/v1/types/order.placed/schemas/1.0.0", &order_schema())
        .await;
    assert_eq!(st, 201, "{b}");
    // Same content again: nothing new.
    let (st, b) = s
        .put("/v1/types/order.placed/schemas/1.0.0", &order_schema())
        .await;
    assert_eq!((st, &b["created"]), (200, &json!(false)), "{b}");
    // Other content under the same version: refused.
    let mut other = order_schema();
    other["properties"]["note"]["maxLength"] = json!(5);
    let (st, _) = s.put("/v1/types/order.placed/schemas/1.0.0", &other).await;
    assert_eq!(st, 400);
    // Compatible minor: a new optional field, a wider limit, required made optional.
    let mut minor = order_schema();
    minor["properties"]["coupon"] = json!({"type": "string"});
    minor["properties"]["note"]["maxLength"] = json!(200);
    minor["required"] = json!(["order_id"]);
    let (st, b) = s.put("/v1/types/order.placed/schemas/1.1.0", &minor).await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["compared_with"], "1.0.0");
    // Breaking minor: narrower limit and a new required field; every reason is reported.
    let mut breaking = minor.clone();
    breaking["properties"]["note"]["maxLength"] = json!(10);
    breaking["required"] = json!(["order_id", "coupon"]);
    breaking["examples"] = json!([{"order_id": "o1", "coupon": "c"}]);
    let (st, b) = s
        .put("/v1/types/order.placed/schemas/1.2.0", &breaking)
        .await;
    assert_eq!(st, 409, "{b}");
    let reasons: Vec<&str> = b["incompatibilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pointer"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"/properties/note/maxLength"), "{b}");
    assert!(reasons.contains(&"/required"), "{b}");
    // ... fine as a new major, or with force (recorded).
    let (st, _) = s
        .put("/v1/types/order.placed/schemas/2.0.0", &breaking)
        .await;
    assert_eq!(st, 201);
    let (st, b) = s
        .put(
            "/v1/types/order.placed/schemas/1.2.0?force=migration%20ticket%2042",
            &breaking,
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let (_, t) = s.get("/v1/types/order.placed").await;
    let forced: Vec<&Value> = t["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v.get("forced").is_some())
        .collect();
    assert_eq!(forced.len(), 1, "{t}");
    assert_eq!(forced[0]["forced"], "migration ticket 42");
    // Examples are validated on publish; invalid schemas are refused.
    let mut bad_example = order_schema();
    bad_example["examples"] = json!([{"order_id": 1}]);
    let (st, b) = s
        .put("/v1/types/order.other/schemas/1.0.0", &bad_example)
        .await;
    assert_eq!(st, 422, "{b}");
    assert_eq!(b["example"], 0);
    let (st, _) = s
        .put(
            "/v1/types/order.other/schemas/1.0.0",
            &json!({"type": "bogus"}),
        )
        .await;
    assert_eq!(st, 422);
    let (st, _) = s.put("/v1/types/order.other/schemas/one", &json!({})).await;
    assert_eq!(st, 400);
    let (st, latest) = s.get("/v1/types/order.placed/schemas/latest").await;
    assert_eq!(st, 200);
    assert_eq!(latest["required"], json!(["order_id", "coupon"]));
}

fn order(id: &str, data: Value) -> Value {
    json!({"type": "order.placed", "source": "/shop", "id": id, "data": data})
}

#[tokio::test]
async fn enforce_quarantines_and_replay_moves_fixed_events() {
    let s = TestServer::start().await;
    s.put(
        "/v1/types/order.*",
        &json!({"validation": "enforce", "owner": "shop-team"}),
    )
    .await;
    let (st, _) = s
        .put("/v1/types/order.*/schemas/1.0.0", &order_schema())
        .await;
    assert_eq!(st, 201);
    let (st, b) = s
        .post_json(&json!([
            order("ok", json!({"order_id": "o1", "amount": 5})),
            order("bad", json!({"order_id": 7, "amount": -1, "extra": true})),
        ]))
        .await;
    assert_eq!(st, 207, "{b}");
    assert_eq!(b["results"][0]["status"], "stored");
    let r = &b["results"][1];
    assert_eq!(r["status"], "quarantined", "{b}");
    let mut got: Vec<(String, String)> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["pointer"].as_str().unwrap().to_owned(),
                e["keyword"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("".into(), "additionalProperties".into()),
            ("/amount".into(), "minimum".into()),
            ("/order_id".into(), "type".into()),
        ],
        "all errors are reported, as data"
    );
    assert_eq!(s.ids("type:order.placed").await, vec!["ok"]);
    // All quarantined: 422, and the result still says quarantined.
    let (st, b) = s.post_json(&order("bad2", json!({"amount": 1}))).await;
    assert_eq!(st, 422, "{b}");
    assert_eq!(b["results"][0]["status"], "quarantined");
    // A version that is not published: quarantined too.
    let mut v9 = order("v9", json!({"order_id": "o", "amount": 1}));
    v9["dataschema"] = json!("/order.placed/9.0.0");
    let (_, b) = s.post_json(&v9).await;
    assert_eq!(b["results"][0]["status"], "quarantined");

    let (st, q) = s.get("/v1/quarantine").await;
    assert_eq!(st, 200);
    assert_eq!(q["total"], 3, "{q}");
    let (_, q) = s.get("/v1/quarantine?filter=id:bad&reason=schema").await;
    assert_eq!(q["events"].as_array().unwrap().len(), 1, "{q}");
    assert_eq!(q["events"][0]["event"]["data"]["extra"], true);
    assert_eq!(q["events"][0]["producer"], "anonymous");
    assert_eq!(q["events"][0]["errors"].as_array().unwrap().len(), 3);

    // Replay with nothing fixed: still quarantined, nothing stored.
    let (st, r) = s.post_to("/v1/quarantine/replay", &json!({})).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["replayed"].as_u64(), r["stored"].as_u64()),
        (Some(3), Some(0))
    );
    // The fix: a compatible 1.1.0 relaxing `amount` and allowing `extra`... is not
    // compatible for additionalProperties? Lifting it is. Publish it, then replay.
    let mut relaxed = order_schema();
    relaxed["additionalProperties"] = json!(true);
    relaxed["properties"]["amount"] = json!({"type": "number"});
    relaxed["properties"]["order_id"] = json!({"type": ["string", "integer"]});
    relaxed["required"] = json!([]);
    let (st, b) = s.put("/v1/types/order.*/schemas/1.1.0", &relaxed).await;
    assert_eq!(st, 201, "{b}");
    let (_, r) = s
        .post_to("/v1/quarantine/replay", &json!({"filter": "id:bad,bad2"}))
        .await;
    assert_eq!(r["stored"], 2, "{r}");
    // Idempotent: the ids are the producer's, so a second replay (or a resend) is a duplicate.
    let mut ids = s.ids("type:order.placed").await;
    ids.sort();
    assert_eq!(ids, vec!["bad", "bad2", "ok"]);
    let (_, q) = s.get("/v1/quarantine").await;
    assert_eq!(q["total"], 1, "only the unknown version is left: {q}");
    let (_, b) = s
        .post_json(&order(
            "bad",
            json!({"order_id": 7, "amount": -1, "extra": true}),
        ))
        .await;
    assert_eq!(b["results"][0]["status"], "duplicate", "{b}");

    // The catalog counts it all.
    let (_, t) = s.get("/v1/types/order.placed").await;
    let c = &t["counts"];
    assert_eq!(t["governed_by"], "order.*");
    assert_eq!(t["owner"], "shop-team");
    assert_eq!(c["stored"], 3, "{t}");
    assert_eq!(c["quarantined"], 3, "{t}");
    assert_eq!(c["valid"], 2, "{t}");
    assert_eq!(c["stored_24h"], 3, "{t}");
}

#[tokio::test]
async fn warn_stores_and_flags() {
    let s = TestServer::start().await;
    s.put("/v1/types/order.placed", &json!({"validation": "warn"}))
        .await;
    s.put("/v1/types/order.placed/schemas/1.0.0", &order_schema())
        .await;
    let (st, b) = s.post_json(&order("w", json!({"amount": "lots"}))).await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["results"][0]["status"], "stored");
    assert_eq!(
        b["results"][0]["errors"].as_array().unwrap().len(),
        2,
        "{b}"
    );
    let (_, e) = s.get("/v1/events/w?source=%2Fshop").await;
    assert_eq!(e["schemaerrors"], 2, "{e}");
    // Off: nothing checked.
    s.put("/v1/types/order.placed", &json!({"validation": "off"}))
        .await;
    let (_, b) = s.post_json(&order("w2", json!({"amount": "lots"}))).await;
    assert!(b["results"][0].get("errors").is_none(), "{b}");
}

#[tokio::test]
async fn sampling_keeps_whole_units_near_the_rate() {
    let s = TestServer::start().await;
    let (st, _) = s
        .put(
            "/v1/types/page.viewed",
            &json!({"sampling": {"rate": 0.25, "unit": "actor"}}),
        )
        .await;
    assert_eq!(st, 200);
    // 400 actors x 5 events each.
    let mut body = String::new();
    for i in 0..2000 {
        let ev = json!({"type": "page.viewed", "source": "/web", "id": format!("e{i}"), "actor": format!("u{}", i % 400)});
        body.push_str(&ev.to_string());
        body.push('\n');
    }
    let (st, _, b) = s.post("application/x-ndjson", body).await;
    assert_eq!(st, 201, "sampled-out events are a success: {b}");
    let mut kept_actors = std::collections::HashMap::<String, usize>::new();
    let results = b["results"].as_array().unwrap();
    for (i, r) in results.iter().enumerate() {
        match r["status"].as_str().unwrap() {
            "stored" => *kept_actors.entry(format!("u{}", i % 400)).or_default() += 1,
            "dropped" => assert!(r["reason"].as_str().unwrap().contains("sampled")),
            other => panic!("{other}"),
        }
    }
    // All or nothing per actor.
    assert!(kept_actors.values().all(|n| *n == 5), "{kept_actors:?}");
    let frac = kept_actors.len() as f64 / 400.0;
    assert!((frac - 0.25).abs() < 0.08, "kept {frac} of actors");
    let (_, page) = s.get("/v1/events?filter=type:page.viewed&limit=1").await;
    assert_eq!(page["events"][0]["sampledrate"], 4);
    let (_, t) = s.get("/v1/types/page.viewed").await;
    assert_eq!(
        t["counts"]["sampled_out"].as_u64().unwrap() + t["counts"]["stored"].as_u64().unwrap(),
        2000
    );
}

#[tokio::test]
async fn processors_allow_deny_redact_hash_enrich() {
    let s = TestServer::start_with(|c| {
        let p = |v: Value| serde_json::from_value(v).unwrap();
        c.pipeline.hash_key = "secret".into();
        c.pipeline.processors = vec![
            p(json!({"processor": "deny", "types": ["debug.*"]})),
            p(json!({"processor": "redact", "types": ["user.*"], "paths": ["data.password", "context.ip"]})),
            p(json!({"processor": "hash", "types": ["user.*"], "paths": ["data.email"]})),
            p(json!({"processor": "enrich", "types": ["order.*"], "client_ip": "data.client_ip", "user_agent": "data.user_agent"})),
            p(json!({"processor": "redact", "types": ["fragile.*"], "paths": ["data.a.b"]})),
        ];
    })
    .await;
    s.put("/v1/types/order.placed/schemas/1.0.0", &order_schema())
        .await;
    let (st, b) = s
        .post_json(&json!([
            {"type": "debug.trace", "source": "/x", "id": "d1"},
            {"type": "debugger.attached", "source": "/x", "id": "d2"},
            {"type": "user.signup", "source": "/x", "id": "u1", "context": {"ip": "1.2.3.4", "k": 1},
             "data": {"password": "hunter2", "email": "a@example.com", "name": "A"}},
            {"type": "order.placed", "source": "/x", "id": "o1", "data": {"order_id": "o", "amount": 1}},
            {"type": "fragile.thing", "source": "/x", "id": "f1", "data": {"a": "not an object"}},
        ]))
        .await;
    assert_eq!(st, 207, "{b}");
    let status: Vec<&str> = b["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        status,
        ["rejected", "stored", "stored", "stored", "quarantined"],
        "{b}"
    );
    assert_eq!(b["results"][0]["pointer"], "/0/type");
    let (_, u) = s.get("/v1/events/u1?source=%2Fx").await;
    assert!(u["data"].get("password").is_none(), "{u}");
    assert_eq!(u["context"], json!({"k": 1}));
    assert_eq!(
        u["data"]["email"],
        herald_core::pipeline::hmac_hex(b"secret", b"a@example.com")
    );
    assert_eq!(u["data"]["name"], "A");
    // Enrich writes only what the schema declares: client_ip yes, user_agent no.
    let (_, o) = s.get("/v1/events/o1?source=%2Fx").await;
    assert_eq!(o["data"]["client_ip"], "127.0.0.1", "{o}");
    assert!(o["data"].get("user_agent").is_none());
    // A processor that cannot do its job quarantines the event instead of passing it.
    let (_, q) = s.get("/v1/quarantine?reason=processor").await;
    assert_eq!(q["events"][0]["id"], "f1", "{q}");
    assert!(q["events"][0]["message"]
        .as_str()
        .unwrap()
        .contains("redact"));
    // A retry of the processed event is still a duplicate (the producer's content counts).
    let (_, b) = s
        .post_json(&json!({"type": "user.signup", "source": "/x", "id": "u1", "context": {"ip": "1.2.3.4", "k": 1},
             "data": {"password": "hunter2", "email": "a@example.com", "name": "A"}}))
        .await;
    assert_eq!(b["results"][0]["status"], "duplicate", "{b}");
}

#[tokio::test]
async fn opt_out_drops_or_anonymizes() {
    let s = TestServer::start().await;
    assert_eq!(s.put("/v1/optout/u-9", &json!(null)).await.0, 201);
    assert_eq!(s.put("/v1/optout/u-9", &json!(null)).await.0, 200);
    let (_, l) = s.get("/v1/optout").await;
    assert_eq!(l["actors"], json!(["u-9"]));
    let (st, b) = s
        .post_json(&json!([
            {"type": "page.viewed", "source": "/w", "id": "1", "actor": "u-9"},
            {"type": "page.viewed", "source": "/w", "id": "2", "actor": "u-1"},
        ]))
        .await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["results"][0]["status"], "dropped");
    assert_eq!(b["dropped"], 1);
    assert_eq!(s.ids("type:page.viewed").await, vec!["2"]);
    assert_eq!(s.delete("/v1/optout/u-9").await, 204);
    assert_eq!(s.delete("/v1/optout/u-9").await, 404);
    let (_, b) = s
        .post_json(&json!({"type": "page.viewed", "source": "/w", "id": "3", "actor": "u-9"}))
        .await;
    assert_eq!(b["results"][0]["status"], "stored");

    let a = TestServer::start_with(|c| {
        c.pipeline.optout = herald_server::registry::OptOutMode::Anonymize;
        c.pipeline.optout_paths = vec!["data.email".into()];
    })
    .await;
    a.put("/v1/optout/u-9", &json!(null)).await;
    let (_, b) = a
        .post_json(&json!({"type": "page.viewed", "source": "/w", "id": "1", "actor": "u-9", "data": {"email": "x@y", "path": "/"}}))
        .await;
    assert_eq!(b["results"][0]["status"], "stored", "{b}");
    let (_, e) = a.get("/v1/events/1?source=%2Fw").await;
    assert!(e.get("actor").is_none(), "{e}");
    assert_eq!(e["data"], json!({"path": "/"}));
}

#[tokio::test]
async fn catalog_lists_registered_and_seen_types_with_visibility_defaults() {
    let s = TestServer::start().await;
    let (st, b) = s
        .put(
            "/v1/types/billing.*",
            &json!({"description": "Invoices", "owner": "billing@x", "visibility": "private",
                    "retention_days": 400, "actionable": true, "facets": ["data.invoice"]}),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = s
        .put("/v1/types/billing.*", &json!({"sampling": {"rate": 2}}))
        .await;
    assert_eq!(st, 400, "{b}");
    let (st, _) = s.put("/v1/types/bad..pattern", &json!({})).await;
    assert_eq!(st, 400);
    s.post_json(&json!([
        {"type": "billing.invoice.sent", "source": "/b", "id": "1", "data": {"invoice": "i1"}},
        {"type": "billing.invoice.sent", "source": "/b", "id": "2", "visibility": "public"},
        {"type": "misc.thing", "source": "/m", "id": "3"},
    ]))
    .await;
    let (_, e) = s.get("/v1/events/1?source=%2Fb").await;
    assert_eq!(e["visibility"], "private", "the type's default applies");
    let (_, e) = s.get("/v1/events/2?source=%2Fb").await;
    assert_eq!(e["visibility"], "public", "an explicit visibility wins");
    let (st, c) = s.get("/v1/types").await;
    assert_eq!(st, 200);
    let types: Vec<&str> = c["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["billing.*", "billing.invoice.sent", "misc.thing"],
        "{c}"
    );
    let sent = &c["types"][1];
    assert_eq!(sent["registered"], false);
    assert_eq!(sent["governed_by"], "billing.*");
    assert_eq!(sent["owner"], "billing@x");
    assert_eq!(sent["counts"]["stored_7d"], 2);
    assert!(sent["first_seen"].is_string());
    assert_eq!(c["types"][0]["settings"]["retention_days"], 400);
    // The facet is indexed (in the background).
    let (_, q) = s.get("/v1/events?filter=data.invoice:i1").await;
    assert_eq!(q["events"].as_array().unwrap().len(), 1);
    assert_eq!(s.delete("/v1/types/billing.*").await, 204);
    assert_eq!(s.delete("/v1/types/billing.*").await, 404);
}

#[tokio::test]
async fn registry_needs_admin_keys() {
    let s =
        TestServer::start_with(|c| c.auth.mode = herald_server::config::AuthMode::Required).await;
    let (st, _) = s.put("/v1/types/a.b", &json!({})).await;
    assert_eq!(st, 401);
    let (st, _) = s.get("/v1/quarantine").await;
    assert_eq!(st, 401);
    let (st, _) = s.put("/v1/optout/x", &json!(null)).await;
    assert_eq!(st, 401);
}
