//! The do-it-yourself baseline: a PostgreSQL table with a JSONB column, the schema and
//! indexes of `../shared/bench/pg_bench.py`, loaded and queried the way an application would.

use super::gen::GenEvent;
use super::{new_hist, Outcome, QueryStat};
use anyhow::Context;
use futures_util::SinkExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

const TABLE: &str = "herald_bench_event";

pub struct Baseline {
    conninfo: String,
    admin: Client,
}

async fn connect(conninfo: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL ({conninfo})"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

impl Baseline {
    pub async fn connect(conninfo: &str) -> anyhow::Result<Baseline> {
        Ok(Baseline {
            conninfo: conninfo.to_owned(),
            admin: connect(conninfo).await?,
        })
    }

    /// Recreates the table with the baseline's indexes.
    pub async fn reset(&self) -> anyhow::Result<()> {
        self.admin
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {TABLE};
                 CREATE TABLE {TABLE} (id uuid PRIMARY KEY, ts timestamptz NOT NULL, type text NOT NULL, user_id text, data jsonb);
                 CREATE INDEX ON {TABLE} (ts);
                 CREATE INDEX ON {TABLE} (type, ts);
                 CREATE INDEX ON {TABLE} USING gin (data jsonb_path_ops);"
            ))
            .await?;
        Ok(())
    }

    pub async fn drop_table(&self) -> anyhow::Result<()> {
        self.admin
            .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}"))
            .await?;
        Ok(())
    }

    /// Durable multi-row INSERTs of `per` rows (one transaction each) from `connections`
    /// concurrent clients.
    pub async fn insert_load(
        &self,
        evs: &[GenEvent],
        per: usize,
        connections: usize,
        deadline: Option<Duration>,
    ) -> anyhow::Result<Outcome> {
        let rows: Arc<Vec<[String; 5]>> = Arc::new(
            evs.iter()
                .map(|e| {
                    [
                        uuid_of(&e.id),
                        herald_core::timespec::format_rfc3339(e.time_us),
                        e.ty.to_owned(),
                        e.user.clone(),
                        e.baseline_data.clone(),
                    ]
                })
                .collect(),
        );
        let chunks = rows.len().div_ceil(per);
        let next = Arc::new(AtomicUsize::new(0));
        let hist = Arc::new(Mutex::new(new_hist()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let client = connect(&self.conninfo).await?;
            let (rows, next, hist) = (rows.clone(), next.clone(), hist.clone());
            tasks.push(tokio::spawn(async move {
                let mut local = new_hist();
                let mut stmts = std::collections::HashMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= chunks || deadline.is_some_and(|d| started.elapsed() > d) {
                        break;
                    }
                    let chunk = &rows[i * per..((i + 1) * per).min(rows.len())];
                    let n = chunk.len();
                    let stmt = if let Some(st) = stmts.get(&n) {
                        tokio_postgres::Statement::clone(st)
                    } else {
                        let mut sql = format!("INSERT INTO {TABLE} (id, ts, type, user_id, data) VALUES ");
                        for r in 0..n {
                            if r > 0 {
                                sql.push(',');
                            }
                            let b = r * 5;
                            sql.push_str(&format!(
                                "(${}::text::uuid, ${}::text::timestamptz, ${}, ${}, ${}::text::jsonb)",
                                b + 1, b + 2, b + 3, b + 4, b + 5
                            ));
                        }
                        let st = client.prepare(&sql).await?;
                        stmts.insert(n, st.clone());
                        st
                    };
                    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                        chunk.iter().flat_map(|r| r.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))).collect();
                    let t = Instant::now();
                    client.execute(&stmt, &params).await?;
                    let _ = local.record(t.elapsed().as_micros() as u64);
                }
                if let Ok(mut h) = hist.lock() {
                    let _ = h.add(&local);
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let elapsed = started.elapsed();
        let hist = Arc::try_unwrap(hist)
            .ok()
            .and_then(|m| m.into_inner().ok())
            .unwrap_or_else(new_hist);
        let requests = hist.len() as usize;
        Ok(Outcome {
            events: (requests * per).min(rows.len()),
            requests,
            elapsed,
            latency_us: hist,
            errors: 0,
            settle: Duration::ZERO,
        })
    }
}

/// The generator's ids are 32 hex digits: a UUID without dashes.
fn uuid_of(hex: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Loads the events with COPY, then times the same queries as Herald's.
pub async fn query_baseline(
    conninfo: &str,
    evs: &[GenEvent],
    now_us: i64,
    runs: usize,
    q6_page: usize,
) -> anyhow::Result<Vec<QueryStat>> {
    let b = Baseline::connect(conninfo).await?;
    b.reset().await?;
    eprintln!("loading PostgreSQL with COPY...");
    let t = Instant::now();
    let sink = b
        .admin
        .copy_in::<_, bytes::Bytes>(&format!(
            "COPY {TABLE} (id, ts, type, user_id, data) FROM STDIN"
        ))
        .await?;
    futures_util::pin_mut!(sink);
    let mut buf = String::with_capacity(1 << 20);
    for e in evs {
        buf.push_str(&uuid_of(&e.id));
        buf.push('\t');
        buf.push_str(&herald_core::timespec::format_rfc3339(e.time_us));
        buf.push('\t');
        buf.push_str(e.ty);
        buf.push('\t');
        buf.push_str(&e.user);
        buf.push('\t');
        buf.push_str(&e.baseline_data.replace('\\', "\\\\"));
        buf.push('\n');
        if buf.len() > 1 << 20 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut buf)))
                .await?;
        }
    }
    sink.send(bytes::Bytes::from(buf)).await?;
    sink.as_mut().finish().await?;
    b.admin
        .batch_execute(&format!("VACUUM ANALYZE {TABLE}"))
        .await?;
    eprintln!("  {} rows in {:.1}s", evs.len(), t.elapsed().as_secs_f64());

    let day = 86_400_000_000i64;
    let ts = |us: i64| herald_core::timespec::format_rfc3339(us);
    let c = &b.admin;
    let cols = "id::text, ts, type, user_id, data::text";
    let cases: Vec<(&'static str, String, Vec<String>)> = vec![
        ("Q1 last 50 of a type, 1d", format!("SELECT {cols} FROM {TABLE} WHERE type = $1 AND ts >= $2::text::timestamptz ORDER BY ts DESC LIMIT 50"), vec!["import.completed".into(), ts(now_us - day)]),
        ("Q2 data.org (indexed), 7d", format!("SELECT {cols} FROM {TABLE} WHERE data @> $1::text::jsonb AND ts >= $2::text::timestamptz ORDER BY ts DESC LIMIT 50"), vec![r#"{"org_id":"org-0150"}"#.into(), ts(now_us - 7 * day)]),
        ("Q2b largest org, 7d", format!("SELECT {cols} FROM {TABLE} WHERE data @> $1::text::jsonb AND ts >= $2::text::timestamptz ORDER BY ts DESC LIMIT 50"), vec![r#"{"org_id":"org-0001"}"#.into(), ts(now_us - 7 * day)]),
    ];
    let mut out = Vec::new();
    for (name, sql, params) in cases {
        let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let mut hist = new_hist();
        let mut rows = 0;
        for i in 0..runs + 5 {
            let t = Instant::now();
            let r = c.query(sql.as_str(), &p).await?;
            if i >= 5 {
                hist.record(t.elapsed().as_micros() as u64)?;
            }
            rows = r.len();
        }
        out.push(QueryStat {
            name: name.to_owned(),
            hist,
            rows,
        });
    }
    // Keyset page `q6_page` (as Herald timed it): the cursor is the last row of the page
    // before.
    let q6_page = q6_page.max(1);
    let mut cursor = None;
    if q6_page > 1 {
        let row = c
            .query_one(
                &format!("SELECT ts, id::text FROM {TABLE} WHERE type = 'product.edited' ORDER BY ts DESC, id DESC OFFSET {} LIMIT 1", (q6_page - 1) * 50 - 1),
                &[],
            )
            .await?;
        let cur_ts: std::time::SystemTime = row.get(0);
        let cur_id: String = row.get(1);
        cursor = Some((cur_ts, cur_id));
    }
    let paged = format!("SELECT {cols} FROM {TABLE} WHERE type = 'product.edited' AND (ts, id) < ($1, $2::text::uuid) ORDER BY ts DESC, id DESC LIMIT 50");
    let first = format!("SELECT {cols} FROM {TABLE} WHERE type = 'product.edited' ORDER BY ts DESC, id DESC LIMIT 50");
    let mut hist = new_hist();
    let mut rows = 0;
    for i in 0..runs + 5 {
        let t = Instant::now();
        let r = match &cursor {
            Some((cur_ts, cur_id)) => c.query(paged.as_str(), &[cur_ts, cur_id]).await?,
            None => c.query(first.as_str(), &[]).await?,
        };
        if i >= 5 {
            hist.record(t.elapsed().as_micros() as u64)?;
        }
        rows = r.len();
    }
    out.push(QueryStat {
        name: format!("Q6 keyset page {q6_page}"),
        hist,
        rows,
    });
    b.drop_table().await?;
    Ok(out)
}
