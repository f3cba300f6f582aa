//! Access control against the running server: for every kind of caller and every read
//! endpoint, exactly the events the caller may read, compared with a brute-force reading of
//! the rule written here independently of the server's code; keys, roles, revocation,
//! expiry and ingest restrictions.

use crate::harness::{http_client, SseStream, TestServer};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const ADMIN: &str = "hrl_test-bootstrap-admin-key-0123456789";

/// One test event's access-relevant attributes.
#[derive(Clone, Debug)]
struct Spec {
    id: String,
    visibility: &'static str,
    tenant: Option<&'static str>,
    readers: Vec<&'static str>,
}

/// One caller: its principals, tenant restriction, and whether it is an admin/anonymous.
#[derive(Clone, Debug)]
struct Who {
    name: &'static str,
    admin: bool,
    anonymous: bool,
    principals: Vec<&'static str>,
    only_tenants: Vec<&'static str>,
}

/// The rule, as docs/access.md states it.
fn allowed(e: &Spec, w: &Who) -> bool {
    if !w.only_tenants.is_empty() && !e.tenant.is_some_and(|t| w.only_tenants.contains(&t)) {
        return false;
    }
    if w.admin {
        return true;
    }
    match e.visibility {
        "public" => true,
        "internal" => {
            !w.anonymous
                && match e.tenant {
                    None => true,
                    Some(t) => w.principals.contains(&format!("tenant:{t}").as_str()),
                }
        }
        _ => e.readers.iter().any(|r| w.principals.contains(r)),
    }
}

fn specs(round: &str) -> Vec<Spec> {
    let mut out = Vec::new();
    for visibility in ["public", "internal", "private"] {
        for tenant in [Some("acme"), Some("beta"), None] {
            for readers in [
                vec![],
                vec!["user:1"],
                vec!["group:ops", "user:9"],
                vec!["tenant:beta"],
            ] {
                out.push(Spec {
                    id: format!("{round}-{}", out.len()),
                    visibility,
                    tenant,
                    readers,
                });
            }
        }
    }
    out
}

fn event_json(s: &Spec) -> Value {
    let mut e =
        json!({"id": s.id, "source": "/acl", "type": "acl.test", "visibility": s.visibility});
    if let Some(t) = s.tenant {
        e["tenant"] = json!(t);
    }
    if !s.readers.is_empty() {
        e["readers"] = json!(s.readers);
    }
    e
}

/// A server that requires keys, with the bootstrap admin key [`ADMIN`]; keep the directory
/// alive as long as the server.
async fn secured(
    adjust: impl FnOnce(&mut herald_server::Config),
) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let keys = herald_store::KeyStore::open(dir.path()).expect("keys");
        herald_server::auth::ensure_bootstrap_key(&keys, ADMIN)
            .await
            .expect("bootstrap");
    }
    let srv = TestServer::start_at(dir.path(), |c| {
        c.auth.mode = herald_server::config::AuthMode::Required;
        adjust(c);
    })
    .await;
    (dir, srv)
}

async fn create_key(srv: &TestServer, body: Value) -> (String, String) {
    let res = http_client()
        .post(format!("{}/v1/keys", srv.url))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .expect("create key");
    assert_eq!(res.status().as_u16(), 201, "{body}");
    let v: Value = res.json().await.expect("json");
    (
        v["id"].as_str().expect("id").to_owned(),
        v["secret"].as_str().expect("secret").to_owned(),
    )
}

fn req(method: reqwest::Method, url: String, key: Option<&str>) -> reqwest::RequestBuilder {
    let r = http_client().request(method, url);
    match key {
        Some(k) => r.bearer_auth(k),
        None => r,
    }
}

async fn listed(srv: &TestServer, path: &str, key: Option<&str>) -> (u16, BTreeSet<String>) {
    let res = req(
        reqwest::Method::GET,
        format!("{}{path}?filter=source:/acl&limit=1000", srv.url),
        key,
    )
    .send()
    .await
    .expect("list");
    let status = res.status().as_u16();
    let v: Value = res.json().await.unwrap_or(Value::Null);
    let ids = v["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    (status, ids)
}

/// What a stream delivers: catch-up from the start, then live events of `live`.
async fn streamed(
    srv: &TestServer,
    path: &str,
    key: Option<&str>,
    want_at_least: usize,
) -> BTreeSet<String> {
    let mut r = req(
        reqwest::Method::GET,
        format!("{}{path}?filter=source:/acl&after=0", srv.url),
        key,
    );
    r = r.timeout(Duration::from_secs(30));
    let res = r.send().await.expect("stream");
    assert_eq!(res.status().as_u16(), 200, "{path} as {key:?}");
    let mut s = SseStream::from_response(res);
    let mut got = BTreeSet::new();
    while got.len() < want_at_least {
        match s.next_event(Duration::from_secs(3)).await {
            Some(f) => {
                let v: Value = serde_json::from_str(&f.data).expect("event json");
                got.insert(v["id"].as_str().unwrap_or_default().to_owned());
            }
            None => break,
        }
    }
    // Nothing more may come (an event it should not see would arrive now).
    while let Some(f) = s.next_event(Duration::from_millis(300)).await {
        let v: Value = serde_json::from_str(&f.data).expect("event json");
        got.insert(v["id"].as_str().unwrap_or_default().to_owned());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_path_shows_exactly_what_the_caller_may_read() {
    let (_dir, srv) = secured(|c| {
        c.auth.public_feed = true;
    })
    .await;

    let (_, acme) = create_key(
        &srv,
        json!({"name":"acme reader","role":"read","principals":["tenant:acme"]}),
    )
    .await;
    let (_, user1) = create_key(
        &srv,
        json!({"name":"user 1","role":"read","principals":["user:1","tenant:beta"]}),
    )
    .await;
    let (_, ops) = create_key(
        &srv,
        json!({"name":"ops","role":"read","principals":["group:ops"]}),
    )
    .await;
    let (_, only_acme) = create_key(
        &srv,
        json!({"name":"acme only","role":"read","principals":["user:1"],"tenants":["acme"]}),
    )
    .await;
    let (_, admin_beta) = create_key(
        &srv,
        json!({"name":"beta admin","role":"admin","tenants":["beta"]}),
    )
    .await;
    let (_, ingest) = create_key(
        &srv,
        json!({"name":"ingest","role":"ingest","types":["acl.*"]}),
    )
    .await;

    let who = |name, admin, anonymous, principals: &[&'static str], only: &[&'static str]| Who {
        name,
        admin,
        anonymous,
        principals: principals.to_vec(),
        only_tenants: only.to_vec(),
    };
    let callers: Vec<(Who, Option<&str>)> = vec![
        (who("admin", true, false, &[], &[]), Some(ADMIN)),
        (
            who("acme", false, false, &["tenant:acme"], &[]),
            Some(&acme),
        ),
        (
            who("user1", false, false, &["user:1", "tenant:beta"], &[]),
            Some(&user1),
        ),
        (who("ops", false, false, &["group:ops"], &[]), Some(&ops)),
        (
            who("only_acme", false, false, &["user:1"], &["acme"]),
            Some(&only_acme),
        ),
        (
            who("admin_beta", true, false, &[], &["beta"]),
            Some(&admin_beta),
        ),
    ];
    let anonymous = who("anonymous", false, true, &[], &[]);

    // The ingest key sends the first round; it may not read.
    let first = specs("a");
    let body: Vec<Value> = first.iter().map(event_json).collect();
    let res = req(
        reqwest::Method::POST,
        format!("{}/v1/events", srv.url),
        Some(&ingest),
    )
    .json(&body)
    .send()
    .await
    .expect("ingest");
    assert_eq!(res.status().as_u16(), 201);
    let seqs: Value = res.json().await.expect("json");
    let seq_of: Vec<u64> = seqs["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();

    for (w, key) in &callers {
        let want: BTreeSet<String> = first
            .iter()
            .filter(|e| allowed(e, w))
            .map(|e| e.id.clone())
            .collect();
        let (status, got) = listed(&srv, "/v1/events", *key).await;
        assert_eq!(status, 200, "{}", w.name);
        assert_eq!(got, want, "list as {}", w.name);
        // Single events: readable ones by seq and by id, the others are "not found".
        for (e, seq) in first.iter().zip(&seq_of) {
            let by_seq = req(
                reqwest::Method::GET,
                format!("{}/v1/events/{seq}", srv.url),
                *key,
            )
            .send()
            .await
            .expect("get");
            let by_id = req(
                reqwest::Method::GET,
                format!("{}/v1/events/{}?source=/acl", srv.url, e.id),
                *key,
            )
            .send()
            .await
            .expect("get");
            let expected = if allowed(e, w) { 200 } else { 404 };
            assert_eq!(
                by_seq.status().as_u16(),
                expected,
                "get {} as {}",
                e.id,
                w.name
            );
            assert_eq!(
                by_id.status().as_u16(),
                expected,
                "get by id {} as {}",
                e.id,
                w.name
            );
        }
        // Export (NDJSON listing).
        let res = req(
            reqwest::Method::GET,
            format!("{}/v1/events?filter=source:/acl&limit=1000", srv.url),
            *key,
        )
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("export");
        let text = res.text().await.expect("text");
        let exported: BTreeSet<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).expect("line")["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(exported, want, "export as {}", w.name);
        // Stream, catch-up part.
        let got = streamed(&srv, "/v1/stream", *key, want.len()).await;
        assert_eq!(got, want, "stream catch-up as {}", w.name);
    }

    // The public feed: anonymous, public events only.
    let want_public: BTreeSet<String> = first
        .iter()
        .filter(|e| allowed(e, &anonymous))
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(
        listed(&srv, "/v1/public/events", None).await,
        (200, want_public.clone())
    );
    assert_eq!(
        streamed(&srv, "/v1/public/stream", None, want_public.len()).await,
        want_public
    );

    // Live: subscribers connected now get exactly their share of a second round.
    let second = specs("b");
    let mut subs = Vec::new();
    for (w, key) in &callers {
        let mut r = req(
            reqwest::Method::GET,
            format!("{}/v1/stream?filter=source:/acl", srv.url),
            *key,
        );
        r = r.timeout(Duration::from_secs(30));
        let res = r.send().await.expect("stream");
        let mut s = SseStream::from_response(res);
        s.next(Duration::from_secs(5)).await.expect("retry frame");
        s.next(Duration::from_secs(5))
            .await
            .expect("position frame");
        subs.push((w.clone(), s));
    }
    let body: Vec<Value> = second.iter().map(event_json).collect();
    let res = req(
        reqwest::Method::POST,
        format!("{}/v1/events", srv.url),
        Some(ADMIN),
    )
    .json(&body)
    .send()
    .await
    .expect("ingest");
    assert_eq!(res.status().as_u16(), 201);
    for (w, mut s) in subs {
        let want: BTreeSet<String> = second
            .iter()
            .filter(|e| allowed(e, &w))
            .map(|e| e.id.clone())
            .collect();
        let mut got = BTreeSet::new();
        while let Some(f) = s
            .next_event(Duration::from_millis(if got.len() < want.len() {
                5000
            } else {
                300
            }))
            .await
        {
            let v: Value = serde_json::from_str(&f.data).expect("json");
            got.insert(v["id"].as_str().unwrap_or_default().to_owned());
        }
        assert_eq!(got, want, "live stream as {}", w.name);
    }
    srv.stop().await;
}

#[tokio::test]
async fn roles_revocation_expiry_and_restrictions() {
    let (_dir, srv) = secured(|_| {}).await;
    let url = &srv.url;
    let status = |r: reqwest::Response| r.status().as_u16();
    let ev = json!({"type":"acl.x","source":"/s"});

    // Anonymous: nothing but the health endpoints; the public feed is off.
    assert_eq!(
        status(
            req(reqwest::Method::GET, format!("{url}/v1/events"), None)
                .send()
                .await
                .unwrap()
        ),
        401
    );
    assert_eq!(
        status(
            req(reqwest::Method::POST, format!("{url}/v1/events"), None)
                .json(&ev)
                .send()
                .await
                .unwrap()
        ),
        401
    );
    assert_eq!(
        status(
            req(reqwest::Method::GET, format!("{url}/v1/stream"), None)
                .send()
                .await
                .unwrap()
        ),
        401
    );
    assert_eq!(
        status(
            req(
                reqwest::Method::GET,
                format!("{url}/v1/public/events"),
                None
            )
            .send()
            .await
            .unwrap()
        ),
        404
    );
    assert_eq!(
        status(
            req(reqwest::Method::GET, format!("{url}/healthz"), None)
                .send()
                .await
                .unwrap()
        ),
        200
    );
    let res = req(
        reqwest::Method::GET,
        format!("{url}/v1/events"),
        Some("hrl_not-a-key"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert!(res.headers().contains_key("www-authenticate"));

    let (read_id, read) = create_key(&srv, json!({"name":"r","role":"read"})).await;
    let (_, ingest) = create_key(
        &srv,
        json!({"name":"i","role":"ingest","types":["acl.*"],"sources":["/s"]}),
    )
    .await;
    // Roles.
    assert_eq!(
        status(
            req(
                reqwest::Method::POST,
                format!("{url}/v1/events"),
                Some(&read)
            )
            .json(&ev)
            .send()
            .await
            .unwrap()
        ),
        403
    );
    assert_eq!(
        status(
            req(
                reqwest::Method::GET,
                format!("{url}/v1/events"),
                Some(&ingest)
            )
            .send()
            .await
            .unwrap()
        ),
        403
    );
    assert_eq!(
        status(
            req(reqwest::Method::GET, format!("{url}/v1/keys"), Some(&read))
                .send()
                .await
                .unwrap()
        ),
        403
    );
    assert_eq!(
        status(
            req(
                reqwest::Method::POST,
                format!("{url}/v1/events"),
                Some(&ingest)
            )
            .json(&ev)
            .send()
            .await
            .unwrap()
        ),
        201
    );
    // Restrictions: other types and sources are rejected, each in its result.
    let res = req(reqwest::Method::POST, format!("{url}/v1/events"), Some(&ingest))
        .json(&json!([{"type":"acl.y","source":"/s"},{"type":"other.y","source":"/s"},{"type":"acl.z","source":"/t"},{"type":"acl","source":"/s"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 207);
    let v: Value = res.json().await.unwrap();
    let statuses: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["stored", "rejected", "rejected", "rejected"]);
    assert_eq!(v["results"][1]["pointer"], "/1/type");
    // Listing keys never shows secrets; last use is recorded.
    let keys: Value = req(reqwest::Method::GET, format!("{url}/v1/keys"), Some(ADMIN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 3);
    assert!(
        !keys.to_string().contains(&read),
        "a secret leaked into the listing"
    );
    // Revocation takes effect at once.
    assert_eq!(
        status(
            req(
                reqwest::Method::GET,
                format!("{url}/v1/events"),
                Some(&read)
            )
            .send()
            .await
            .unwrap()
        ),
        200
    );
    assert_eq!(
        status(
            req(
                reqwest::Method::DELETE,
                format!("{url}/v1/keys/{read_id}"),
                Some(ADMIN)
            )
            .send()
            .await
            .unwrap()
        ),
        204
    );
    assert_eq!(
        status(
            req(
                reqwest::Method::GET,
                format!("{url}/v1/events"),
                Some(&read)
            )
            .send()
            .await
            .unwrap()
        ),
        401
    );
    assert_eq!(
        status(
            req(
                reqwest::Method::DELETE,
                format!("{url}/v1/keys/key_nope"),
                Some(ADMIN)
            )
            .send()
            .await
            .unwrap()
        ),
        404
    );
    // An ingest key's default visibility applies to events that do not say.
    let (_, public_ingest) = create_key(
        &srv,
        json!({"name":"p","role":"ingest","visibility":"public"}),
    )
    .await;
    let res = req(reqwest::Method::POST, format!("{url}/v1/events"), Some(&public_ingest))
        .json(&json!([{"type":"vis.default","source":"/v"},{"type":"vis.explicit","source":"/v","visibility":"private"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let v: Value = req(
        reqwest::Method::GET,
        format!("{url}/v1/events?filter=source:/v"),
        Some(ADMIN),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let vis: Vec<(&str, &str)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["visibility"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        vis.contains(&("vis.default", "public")) && vis.contains(&("vis.explicit", "private")),
        "{vis:?}"
    );
    // An admin key limited to a tenant cannot make itself an unlimited one.
    let (_, beta_admin) =
        create_key(&srv, json!({"name":"ba","role":"admin","tenants":["beta"]})).await;
    let res = req(
        reqwest::Method::POST,
        format!("{url}/v1/keys"),
        Some(&beta_admin),
    )
    .json(&json!({"name":"x","role":"admin"}))
    .send()
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    // Expiry.
    let (_, expired) = create_key(
        &srv,
        json!({"name":"old","role":"read","expires":"2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        status(
            req(
                reqwest::Method::GET,
                format!("{url}/v1/events"),
                Some(&expired)
            )
            .send()
            .await
            .unwrap()
        ),
        401
    );
    // Bad key requests.
    let res = req(reqwest::Method::POST, format!("{url}/v1/keys"), Some(ADMIN))
        .json(&json!({"name":"x","role":"root"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let res = req(reqwest::Method::POST, format!("{url}/v1/keys"), Some(ADMIN))
        .json(&json!({"name":"x","role":"read","principals":["admin"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_tokens_show_one_users_events_and_are_audited() {
    let (_dir, srv) = secured(|_| {}).await;
    let url = srv.url.clone();
    let mut events = specs("v");
    // Some events about a subject, to check subject-limited tokens.
    for (i, e) in events.iter_mut().enumerate() {
        if i % 3 == 0 {
            e.id = format!("{}-subj", e.id);
        }
    }
    let body: Vec<Value> = events
        .iter()
        .map(|e| {
            let mut j = event_json(e);
            if e.id.ends_with("-subj") {
                j["subject"] = json!("order-7");
            }
            j
        })
        .collect();
    let res = req(
        reqwest::Method::POST,
        format!("{url}/v1/events"),
        Some(ADMIN),
    )
    .json(&body)
    .send()
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 201);

    let (_, acme_reader) = create_key(
        &srv,
        json!({"name":"host app","role":"read","principals":["tenant:acme"]}),
    )
    .await;
    let issue = |key: String, body: Value| {
        let url = url.clone();
        async move {
            let res = req(
                reqwest::Method::POST,
                format!("{url}/v1/viewer-tokens"),
                Some(&key),
            )
            .json(&body)
            .send()
            .await
            .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // A read key issues tokens for its own tenant only.
    let (status, tok) = issue(
        acme_reader.clone(),
        json!({"principal":"user:1","tenant":"acme"}),
    )
    .await;
    assert_eq!(status, 201, "{tok}");
    let token = tok["token"].as_str().unwrap().to_owned();
    let token_id = tok["id"].as_str().unwrap().to_owned();
    assert_eq!(
        issue(
            acme_reader.clone(),
            json!({"principal":"user:1","tenant":"beta"})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        issue(
            acme_reader.clone(),
            json!({"principal":"nobody","tenant":"acme"})
        )
        .await
        .0,
        400
    );

    // The token reads what user:1 may read in tenant acme, on every read path.
    let viewer = Who {
        name: "viewer",
        admin: false,
        anonymous: false,
        principals: vec!["user:1", "tenant:acme"],
        only_tenants: vec!["acme"],
    };
    let want: BTreeSet<String> = events
        .iter()
        .filter(|e| allowed(e, &viewer))
        .map(|e| e.id.clone())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(
        listed(&srv, "/v1/events", Some(&token)).await,
        (200, want.clone())
    );
    assert_eq!(
        streamed(&srv, "/v1/stream", Some(&token), want.len()).await,
        want
    );
    // A subject-limited token sees only that subject's share.
    let (_, subj) = issue(
        ADMIN.to_owned(),
        json!({"principal":"user:1","tenant":"acme","subject":"order-7","ttl":"1h"}),
    )
    .await;
    let subj_token = subj["token"].as_str().unwrap().to_owned();
    let want_subj: BTreeSet<String> = want
        .iter()
        .filter(|id| id.ends_with("-subj"))
        .cloned()
        .collect();
    assert_eq!(
        listed(&srv, "/v1/events", Some(&subj_token)).await,
        (200, want_subj)
    );

    // A token does nothing but read.
    assert_eq!(
        req(reqwest::Method::GET, format!("{url}/v1/keys"), Some(&token))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        issue(token.clone(), json!({"principal":"user:2","tenant":"acme"}))
            .await
            .0,
        403
    );
    assert_eq!(
        req(
            reqwest::Method::POST,
            format!("{url}/v1/events"),
            Some(&token)
        )
        .json(&json!({"type":"a.b","source":"/s"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16(),
        403
    );

    // Tampered, expired and revoked tokens are refused everywhere.
    let (payload, sig) = token.split_once('.').unwrap();
    let mut forged_sig = sig.to_owned();
    forged_sig.replace_range(0..1, if sig.starts_with('A') { "B" } else { "A" });
    let tampered = format!("{payload}.{forged_sig}");
    let (_, short) = issue(
        ADMIN.to_owned(),
        json!({"principal":"user:1","tenant":"acme","ttl":"1s"}),
    )
    .await;
    let short = short["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        req(
            reqwest::Method::DELETE,
            format!("{url}/v1/viewer-tokens/{token_id}"),
            Some(ADMIN)
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16(),
        204
    );
    for bad in [&tampered, &short, &token] {
        for path in ["/v1/events", "/v1/events/1", "/v1/stream"] {
            let status = req(reqwest::Method::GET, format!("{url}{path}"), Some(bad))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            assert_eq!(status, 401, "{path} with a refused token");
        }
    }

    // The audit trail: key creation, token issue and revocation, and the viewer's reads;
    // admins read it, other keys do not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let audit = |key: String| {
        let url = url.clone();
        async move {
            let v: Value = req(
                reqwest::Method::GET,
                format!("{url}/v1/events?filter=type:herald.audit.*&limit=1000"),
                Some(&key),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["type"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let types = audit(ADMIN.to_owned()).await;
    for t in [
        "herald.audit.key.created",
        "herald.audit.viewer_token.issued",
        "herald.audit.viewer_token.revoked",
        "herald.audit.viewer.read",
    ] {
        assert!(types.iter().any(|x| x == t), "no {t} in {types:?}");
    }
    assert!(
        audit(acme_reader.clone()).await.is_empty(),
        "audit events are for admins"
    );
    srv.stop().await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let srv = TestServer::start_with(|c| {
        c.auth.rate_limit = 5;
        c.auth.rate_burst = 5;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let res = http_client()
            .get(format!("{}/v1/events?limit=1", srv.url))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
        if res.status().as_u16() == 429 {
            assert!(res.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert!(statuses[5..].contains(&429), "{statuses:?}");
    // The bucket refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = http_client()
        .get(format!("{}/v1/events?limit=1", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    srv.stop().await;
}

#[tokio::test]
async fn a_client_that_sends_its_headers_too_slowly_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = TestServer::start_with(|c| c.server.header_timeout_secs = 2).await;
    let addr = srv.url.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // ... and never finishes the headers: the server closes the connection.
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept a half-sent request open");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed too early"
    );
    srv.stop().await;
}

#[test]
fn tls_when_a_certificate_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = crate::harness::BinServer::start_env(
        &dir.path().join("data"),
        None,
        &[
            ("HERALD_SERVER__TLS_CERT", cert_path.to_str().unwrap()),
            ("HERALD_SERVER__TLS_KEY", key_path.to_str().unwrap()),
        ],
    );
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _ = http_client();
        let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([root])
            .build()
            .unwrap();
        let res = client
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .expect("https request");
        assert_eq!(res.status().as_u16(), 200);
        // Plain HTTP on the TLS port gets nowhere.
        let plain = http_client()
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    });
}

/// Random events and random keys through the API: every listing and every stream equals the
/// brute-force set of events the key may read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_keys_see_exactly_the_brute_force_set() {
    let (_dir, srv) = secured(|_| {}).await;
    // xorshift: the same cases every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    const TENANTS: [Option<&str>; 4] = [Some("t1"), Some("t2"), Some("t3"), None];
    const PRINCIPALS: [&str; 7] = [
        "user:1",
        "user:2",
        "group:a",
        "group:b",
        "tenant:t1",
        "tenant:t2",
        "tenant:t3",
    ];
    let mut events = Vec::new();
    for i in 0..200 {
        let readers: Vec<&'static str> = (0..next(3))
            .map(|_| PRINCIPALS[next(PRINCIPALS.len())])
            .collect();
        events.push(Spec {
            id: format!("rnd-{i}"),
            visibility: ["public", "internal", "private"][next(3)],
            tenant: TENANTS[next(TENANTS.len())],
            readers,
        });
    }
    let body: Vec<Value> = events
        .iter()
        .map(|e| {
            let mut j = event_json(e);
            j["source"] = json!("/acl");
            j
        })
        .collect();
    let res = req(
        reqwest::Method::POST,
        format!("{}/v1/events", srv.url),
        Some(ADMIN),
    )
    .json(&body)
    .send()
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    for k in 0..25 {
        let principals: Vec<&'static str> = (0..next(4))
            .map(|_| PRINCIPALS[next(PRINCIPALS.len())])
            .collect();
        let only: Vec<&'static str> = if next(4) == 0 {
            vec![["t1", "t2", "t3"][next(3)]]
        } else {
            vec![]
        };
        let admin = next(6) == 0;
        let (_, secret) = create_key(
            &srv,
            json!({
                "name": format!("random {k}"), "role": if admin { "admin" } else { "read" },
                "principals": principals, "tenants": only,
            }),
        )
        .await;
        let w = Who {
            name: "random",
            admin,
            anonymous: false,
            principals,
            only_tenants: only,
        };
        let want: BTreeSet<String> = events
            .iter()
            .filter(|e| allowed(e, &w))
            .map(|e| e.id.clone())
            .collect();
        let (status, got) = listed(&srv, "/v1/events", Some(&secret)).await;
        assert_eq!(status, 200);
        assert_eq!(got, want, "list as {w:?}");
        if k % 5 == 0 {
            assert_eq!(
                streamed(&srv, "/v1/stream", Some(&secret), want.len()).await,
                want,
                "stream as {w:?}"
            );
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn streams_end_when_their_key_or_token_ends() {
    let (_dir, srv) = secured(|c| {
        c.stream.heartbeat_secs = 1;
    })
    .await;
    let url = srv.url.clone();
    let reason_of = |mut s: SseStream| async move {
        while let Some(f) = s.next(Duration::from_secs(10)).await {
            if f.event.as_deref() == Some("disconnect") {
                let v: Value = serde_json::from_str(&f.data).expect("json");
                return v["reason"].as_str().unwrap_or_default().to_owned();
            }
        }
        String::new()
    };
    let open = |key: String| {
        let url = url.clone();
        async move {
            let res = req(reqwest::Method::GET, format!("{url}/v1/stream"), Some(&key))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), 200);
            SseStream::from_response(res)
        }
    };
    // A viewer token that expires.
    let res = req(
        reqwest::Method::POST,
        format!("{url}/v1/viewer-tokens"),
        Some(ADMIN),
    )
    .json(&json!({"principal":"user:1","tenant":"acme","ttl":"2s"}))
    .send()
    .await
    .unwrap();
    let token = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(reason_of(open(token).await).await, "credentials_ended");
    // A key that is revoked while its stream is open.
    let (id, key) = create_key(&srv, json!({"name":"r","role":"read"})).await;
    let s = open(key).await;
    let res = req(
        reqwest::Method::DELETE,
        format!("{url}/v1/keys/{id}"),
        Some(ADMIN),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    assert_eq!(reason_of(s).await, "credentials_ended");
    srv.stop().await;
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let srv = TestServer::start().await;
    let res = http_client()
        .get(format!("{}/v1/events", srv.url))
        .header("x-padding", "a".repeat(100_000))
        .send()
        .await;
    match res {
        Ok(r) => assert_eq!(r.status().as_u16(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
    }
    // The server is fine afterwards.
    let (status, _) = srv.get("/healthz").await;
    assert_eq!(status, 200);
    srv.stop().await;
}
