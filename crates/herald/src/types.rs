//! `herald types push DIR` and `herald types list`: type settings and schemas kept as files
//! in a producer's repository, pushed to a server; and the catalog as a table.
//!
//! It exists so that the file format (one JSON or TOML file per type: the settings, `type`,
//! and `schemas` mapping versions to JSON Schemas) is read in one place, by the CLI and by
//! `herald serve` loading `pipeline.types_dir` at start-up.

use crate::client::{http, problem};
use crate::Remote;
use anyhow::Context;
use figment::providers::{Format, Toml};
use herald_core::types::TypeFile;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum TypesCommand {
    /// Register the types described by the *.json / *.toml files of a directory (settings
    /// first, then each schema version not yet published, oldest first).
    Push {
        dir: PathBuf,
        /// Publish breaking schema changes within a major version anyway, recording this
        /// reason.
        #[arg(long)]
        force: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// The catalog: every registered type and every type seen, with counts.
    List {
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Reads every type file of a directory (sorted by name); the error names the file.
pub fn read_dir(dir: &Path) -> anyhow::Result<Vec<(PathBuf, TypeFile)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("json" | "toml")
            )
        })
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let value: serde_json::Value = if p.extension().and_then(|e| e.to_str()) == Some("toml") {
            figment::Figment::from(Toml::file(&p))
                .extract()
                .with_context(|| format!("{}: invalid TOML", p.display()))?
        } else {
            serde_json::from_slice(
                &std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?,
            )
            .with_context(|| format!("{}: invalid JSON", p.display()))?
        };
        let f = TypeFile::from_value(value).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        out.push((p, f));
    }
    Ok(out)
}

pub async fn run(cmd: TypesCommand) -> anyhow::Result<()> {
    match cmd {
        TypesCommand::Push { dir, force, remote } => push(&dir, force, &remote).await,
        TypesCommand::List { json, remote } => list(json, &remote).await,
    }
}

fn segment(s: &str) -> String {
    // Types and versions are URL-safe by their syntax; `*` stays as it is.
    s.to_owned()
}

async fn push(dir: &Path, force: Option<String>, remote: &Remote) -> anyhow::Result<()> {
    let files = read_dir(dir)?;
    anyhow::ensure!(
        !files.is_empty(),
        "no *.json or *.toml files in {}",
        dir.display()
    );
    let client = http(remote)?;
    for (path, f) in files {
        let base = format!("{}/v1/types/{}", remote.url, segment(&f.pattern));
        let res = client
            .put(&base)
            .json(&f.settings)
            .send()
            .await
            .with_context(|| format!("cannot reach Herald at {}", remote.url))?;
        if !res.status().is_success() {
            return Err(problem(res).await.context(format!("{}", path.display())));
        }
        println!("{}: settings stored", f.pattern);
        for (version, schema) in &f.schemas {
            let mut req = client.put(format!("{base}/schemas/{version}")).json(schema);
            if let Some(reason) = &force {
                req = req.query(&[("force", reason)]);
            }
            let res = req.send().await?;
            let status = res.status();
            let text = res.text().await.unwrap_or_default();
            match status.as_u16() {
                201 => println!("{}: schema {version} published", f.pattern),
                200 => println!("{}: schema {version} already published", f.pattern),
                _ => {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    let mut msg = format!(
                        "{}: schema {version}: {} {}",
                        path.display(),
                        status.as_u16(),
                        v["detail"].as_str().unwrap_or(&text)
                    );
                    for i in v["incompatibilities"].as_array().into_iter().flatten() {
                        msg.push_str(&format!(
                            "\n  {} {}",
                            i["pointer"].as_str().unwrap_or(""),
                            i["message"].as_str().unwrap_or("")
                        ));
                    }
                    for e in v["errors"].as_array().into_iter().flatten() {
                        msg.push_str(&format!(
                            "\n  {} {}",
                            e["pointer"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        ));
                    }
                    anyhow::bail!(msg);
                }
            }
        }
    }
    Ok(())
}

async fn list(json: bool, remote: &Remote) -> anyhow::Result<()> {
    let res = http(remote)?
        .get(format!("{}/v1/types", remote.url))
        .send()
        .await
        .with_context(|| format!("cannot reach Herald at {}", remote.url))?;
    if !res.status().is_success() {
        return Err(problem(res).await);
    }
    let v: serde_json::Value = res.json().await?;
    if json {
        println!("{v}");
        return Ok(());
    }
    println!(
        "{:<40} {:>10} {:>10} {:>9} {:>8} {:<8} OWNER",
        "TYPE", "STORED", "LAST 24H", "INVALID", "SAMPLED", "SCHEMA"
    );
    for t in v["types"].as_array().into_iter().flatten() {
        let c = &t["counts"];
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        println!(
            "{:<40} {:>10} {:>10} {:>9} {:>8} {:<8} {}",
            t["type"].as_str().unwrap_or(""),
            n("stored"),
            n("stored_24h"),
            n("invalid"),
            n("sampled_out"),
            t["schema_version"].as_str().unwrap_or("-"),
            t["owner"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
