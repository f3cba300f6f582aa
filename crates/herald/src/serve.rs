//! `herald serve`: opens the store, binds the listener, serves until SIGINT/SIGTERM, then
//! drains.

use crate::config;
use anyhow::Context;
use herald_server::metrics::Metrics;
use herald_server::AppState;
use herald_store::SqliteStore;
use std::path::PathBuf;
use std::sync::Arc;

pub fn run(
    config_file: Option<PathBuf>,
    listen: Option<String>,
    data: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut cfg = config::load(config_file.as_deref())?;
    if let Some(l) = listen {
        cfg.server.listen = l;
    }
    if let Some(d) = data {
        cfg.store.data_dir = d;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.server.log))
        .context("invalid log filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("herald")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let metrics = Metrics::new();
        let store = SqliteStore::open(cfg.sqlite_options(Some(metrics.commit_observer())))
            .with_context(|| {
                format!("cannot open the store in {}", cfg.store.data_dir.display())
            })?;
        let listener = tokio::net::TcpListener::bind(&cfg.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
        let addr = listener.local_addr()?;
        let state = AppState::new(Arc::new(store), &cfg, metrics);
        tracing::info!(%addr, data_dir = %cfg.store.data_dir.display(), "herald is listening");
        println!(
            "Herald listening on http://{addr} (data in {})",
            cfg.store.data_dir.display()
        );
        herald_server::serve(listener, state, shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
