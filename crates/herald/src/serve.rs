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
    let loopback = herald_server::config::is_loopback(&cfg.server.listen);
    if cfg.auth.mode == herald_server::config::AuthMode::Off && !loopback {
        anyhow::bail!(
            "refusing to listen on {} without authentication: set auth.mode to \"auto\" or \"required\" (or listen on 127.0.0.1)",
            cfg.server.listen
        );
    }
    rt.block_on(async move {
        let mut cfg = cfg;
        let metrics = Metrics::new();
        let keys = herald_store::KeyStore::open(&cfg.store.data_dir)
            .with_context(|| format!("cannot open the keys in {}", cfg.store.data_dir.display()))?;
        if let Ok(secret) = std::env::var("HERALD_BOOTSTRAP_ADMIN_KEY") {
            herald_server::auth::ensure_bootstrap_key(&keys, &secret)
                .await
                .map_err(|e| anyhow::anyhow!("HERALD_BOOTSTRAP_ADMIN_KEY: {e:?}"))?;
        }
        let first_key = herald_server::auth::first_admin_key(&keys)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the first admin key: {e:?}"))?;
        // Facets of registered types are indexed like the configured paths.
        let facets = herald_server::registry::facets(&cfg.store.data_dir).with_context(|| {
            format!(
                "cannot read the type registry in {}",
                cfg.store.data_dir.display()
            )
        })?;
        for f in facets {
            if !cfg.store.indexed_paths.contains(&f) {
                cfg.store.indexed_paths.push(f);
            }
        }
        let store = SqliteStore::open(cfg.sqlite_options(Some(metrics.commit_observer())))
            .with_context(|| {
                format!("cannot open the store in {}", cfg.store.data_dir.display())
            })?;
        let listener = tokio::net::TcpListener::bind(&cfg.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
        let addr = listener.local_addr()?;
        let state = AppState::new(Arc::new(store), keys, &cfg, metrics)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if !cfg.pipeline.types_dir.is_empty() {
            let dir = PathBuf::from(&cfg.pipeline.types_dir);
            for (path, f) in crate::types::read_dir(&dir)? {
                let done = herald_server::registry::apply_type_file(&state, f)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                for line in done {
                    tracing::info!(file = %path.display(), "{line}");
                }
            }
        }
        tracing::info!(%addr, data_dir = %cfg.store.data_dir.display(), "herald is listening");
        let tls = match (cfg.server.tls_cert.as_str(), cfg.server.tls_key.as_str()) {
            ("", "") => None,
            ("", _) | (_, "") => {
                anyhow::bail!("TLS needs both server.tls_cert and server.tls_key")
            }
            (cert, key) => Some(
                herald_server::listen::tls_acceptor(cert, key)
                    .context("cannot load the TLS certificate")?,
            ),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        // Whoever started us may have stopped reading stdout: never fail on it.
        let say = |line: String| {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        };
        say(format!(
            "Herald listening on {scheme}://{addr} (data in {})",
            cfg.store.data_dir.display()
        ));
        if state.auth_required {
            say(format!(
                "API keys are required (auth.mode = {:?})",
                cfg.auth.mode
            ));
        } else {
            say(format!(
                "No API key needed on this loopback address (auth.mode = {:?})",
                cfg.auth.mode
            ));
        }
        if let Some(secret) = first_key {
            say(format!(
                "First admin key (shown once, store it now): {secret}"
            ));
        }
        herald_server::serve_with(
            listener,
            state,
            tls,
            std::time::Duration::from_secs(cfg.server.header_timeout_secs.max(1)),
            shutdown_signal(),
        )
        .await?;
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
