//! `herald keys create|list|revoke`: API keys, either directly in a data directory
//! (`--data DIR`, with or without a running server: for scripts that bootstrap a
//! deployment) or through a running server's `/v1/keys` with an admin key.

use crate::Remote;
use anyhow::Context;
use herald_server::auth::{build_key, hash_secret, new_secret, KeyView, NewKey};
use herald_store::KeyStore;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its secret (shown this once).
    Create(CreateArgs),
    /// List keys (never their secrets).
    List(Target),
    /// Revoke a key.
    Revoke {
        /// The key's id (`key_…`).
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Args)]
pub struct Target {
    /// Work on this data directory directly instead of through a server.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// What the key is for.
    #[arg(long)]
    name: String,
    /// ingest, read or admin.
    #[arg(long)]
    role: String,
    /// A principal of the key (user:ID, group:NAME, tenant:NAME); repeat for more.
    #[arg(long = "principal")]
    principals: Vec<String>,
    /// Ingest keys: a type pattern it may send (`import.*`); repeat for more.
    #[arg(long = "type")]
    types: Vec<String>,
    /// Ingest keys: a source it may send as; repeat for more.
    #[arg(long = "source")]
    sources: Vec<String>,
    /// Read keys: a tenant whose events it may read; repeat for more.
    #[arg(long = "tenant")]
    tenants: Vec<String>,
    /// Ingest keys: visibility of events that do not say (public, internal, private).
    #[arg(long)]
    visibility: Option<String>,
    /// Expiry: a duration from now (30d) or an RFC 3339 time.
    #[arg(long)]
    expires: Option<String>,
    #[command(flatten)]
    target: Target,
}

use herald_server::query::now_micros as now_us;

fn print_keys(keys: &[KeyView], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(keys)?);
        return Ok(());
    }
    println!(
        "{:<16}  {:<6}  {:<24}  {:<28}  {:<20}  NAME",
        "ID", "ROLE", "PRINCIPALS", "LAST USED", "STATE"
    );
    for k in keys {
        let state = if k.revoked.is_some() {
            "revoked".to_owned()
        } else if let Some(e) = &k.expires {
            format!("expires {}", &e[..e.len().min(10)])
        } else {
            "active".to_owned()
        };
        println!(
            "{:<16}  {:<6}  {:<24}  {:<28}  {:<20}  {}",
            k.id,
            k.role,
            k.principals.join(","),
            k.last_used.as_deref().unwrap_or("never"),
            state,
            k.name
        );
    }
    Ok(())
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create(a) => {
            let req = NewKey {
                name: a.name,
                role: a.role,
                principals: a.principals,
                types: a.types,
                sources: a.sources,
                tenants: a.tenants,
                visibility: a.visibility,
                expires: a.expires,
            };
            let (view, secret) = match &a.target.data {
                Some(dir) => {
                    let store = KeyStore::open(dir)
                        .with_context(|| format!("cannot open {}", dir.display()))?;
                    let key =
                        build_key(req, now_us(), 256).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    let secret = new_secret().map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    let key = store.create(key, hash_secret(&secret)).await?;
                    (KeyView::from(&key), secret)
                }
                None => {
                    let body = serde_json::json!({
                        "name": req.name, "role": req.role, "principals": req.principals,
                        "types": req.types, "sources": req.sources, "tenants": req.tenants,
                        "visibility": req.visibility,
                        "expires": req.expires,
                    });
                    let res = crate::client::http(&a.target.remote)?
                        .post(format!("{}/v1/keys", a.target.remote.url))
                        .json(&body)
                        .send()
                        .await
                        .with_context(|| {
                            format!("cannot reach Herald at {}", a.target.remote.url)
                        })?;
                    if !res.status().is_success() {
                        return Err(crate::client::problem(res).await);
                    }
                    let v: serde_json::Value = res.json().await?;
                    let secret = v["secret"].as_str().unwrap_or_default().to_owned();
                    let view: KeyViewOwned = serde_json::from_value(v)?;
                    (view.into(), secret)
                }
            };
            if a.target.json {
                let mut v = serde_json::to_value(&view)?;
                v["secret"] = serde_json::Value::String(secret);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("created {} ({}, role {})", view.id, view.name, view.role);
                println!("secret (shown once, store it now): {secret}");
            }
            Ok(())
        }
        KeysCommand::List(t) => {
            let keys: Vec<KeyView> = match &t.data {
                Some(dir) => KeyStore::open(dir)?
                    .list()
                    .await?
                    .iter()
                    .map(KeyView::from)
                    .collect(),
                None => {
                    let res = crate::client::http(&t.remote)?
                        .get(format!("{}/v1/keys", t.remote.url))
                        .send()
                        .await
                        .with_context(|| format!("cannot reach Herald at {}", t.remote.url))?;
                    if !res.status().is_success() {
                        return Err(crate::client::problem(res).await);
                    }
                    let owned: Vec<KeyViewOwned> = res.json().await?;
                    owned.into_iter().map(Into::into).collect()
                }
            };
            print_keys(&keys, t.json)
        }
        KeysCommand::Revoke { id, target } => {
            match &target.data {
                Some(dir) => {
                    if !KeyStore::open(dir)?.revoke(id.clone(), now_us()).await? {
                        anyhow::bail!("no key `{id}`");
                    }
                }
                None => {
                    let res = crate::client::http(&target.remote)?
                        .delete(format!("{}/v1/keys/{id}", target.remote.url))
                        .send()
                        .await
                        .with_context(|| format!("cannot reach Herald at {}", target.remote.url))?;
                    if !res.status().is_success() {
                        return Err(crate::client::problem(res).await);
                    }
                }
            }
            println!("revoked {id}");
            Ok(())
        }
    }
}

/// A key as the API lists it (to read answers back into [`KeyView`]).
#[derive(serde::Deserialize)]
struct KeyViewOwned {
    id: String,
    name: String,
    role: String,
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    tenants: Vec<String>,
    visibility: Option<String>,
    created: String,
    expires: Option<String>,
    revoked: Option<String>,
    last_used: Option<String>,
}

impl From<KeyViewOwned> for KeyView {
    fn from(k: KeyViewOwned) -> KeyView {
        KeyView {
            id: k.id,
            name: k.name,
            role: k.role,
            principals: k.principals,
            types: k.types,
            sources: k.sources,
            tenants: k.tenants,
            visibility: k.visibility,
            created: k.created,
            expires: k.expires,
            revoked: k.revoked,
            last_used: k.last_used,
        }
    }
}
