//! The `herald` binary: the CLI definition plus the glue that loads configuration, starts
//! the server, and drives a server over HTTP for the client commands.
//!
//! It exists as a thin layer on purpose (logic lives in the library crates); it is the only
//! place that reads config files and environment variables, installs the TLS crypto provider,
//! and maps outcomes to exit codes: 0 success, 1 failure, 2 usage error (clap).

mod bench;
mod client;
mod config;
mod keys;
mod serve;
mod tail;
mod types;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc's allocator: ingest allocates and frees small buffers on every
/// request across threads (request bodies, parsed events, answers), where glibc's arenas
/// spent ~9% of the server's CPU (`malloc_consolidate`, `unlink_chunk`) under single-event
/// load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks for them on the memory
/// it takes from the system (Linux's default `madvise` mode grants them), and the kernel then
/// zeroes 2 MiB at the first touch of each: ingest allocates fresh memory all the time (each
/// batch's events until the full-text index holds them), and that zeroing was ~40% of the
/// writer's CPU and a third of the HTTP threads'. Without it, batches of 1000 took
/// 28.5–33 µs of CPU per event instead of 35–44 (five alternating runs each of `herald
/// bench ingest --no-baseline`). The same as `MIMALLOC_ALLOW_THP=0`, which mimalloc reads
/// before `main` runs.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process (read by the kernel at
    // page-fault time); it touches no memory of ours and its arguments are plain integers.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Self-hosted event tracking: store, query, watch and act on events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub struct Remote {
    /// Base URL of the Herald server.
    #[arg(
        long,
        env = "HERALD_URL",
        default_value = "http://127.0.0.1:8470",
        global = true
    )]
    url: String,
    /// API key (`Authorization: Bearer`); not needed when the server runs without
    /// authentication (loopback).
    #[arg(long, env = "HERALD_KEY", global = true, hide_env_values = true)]
    key: Option<String>,
}

impl Remote {
    /// The headers every request to the server carries.
    pub fn auth_headers(&self) -> anyhow::Result<reqwest::header::HeaderMap> {
        let mut h = reqwest::header::HeaderMap::new();
        if let Some(k) = &self.key {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {k}"))
                .map_err(|_| anyhow::anyhow!("the key contains characters a header cannot"))?;
            v.set_sensitive(true);
            h.insert(reqwest::header::AUTHORIZATION, v);
        }
        Ok(h)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the server on the embedded database.
    Serve {
        /// Address to listen on (default from config: 127.0.0.1:8470).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (default from config: ./herald-data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Configuration file (default: ./herald.toml if it exists).
        #[arg(long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Send one event (for cron jobs and shell scripts).
    Emit(client::EmitArgs),
    /// List events matching a filter, newest first.
    Query(client::QueryArgs),
    /// Follow events matching a filter as they arrive (resumes after disconnects).
    Tail(tail::TailArgs),
    /// Import events from an NDJSON file (batched, resumable, with progress).
    Import(client::ImportArgs),
    /// Export events matching a filter as NDJSON.
    Export(client::ExportArgs),
    /// Manage API keys (against the data directory with --data, or a server with --url).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Event types: push settings and schemas from files, list the catalog.
    Types {
        #[command(subcommand)]
        command: types::TypesCommand,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Benchmarks against this machine's baseline.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the commented default configuration.
    Default,
    /// Print the effective configuration (defaults, file, environment) as JSON.
    Show {
        #[arg(long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    // Before any connection opens (see `herald_store::memory`).
    if !herald_store::memory::configure() {
        eprintln!("warning: SQLite was in use before its memory could be configured");
    }
    let cli = Cli::parse();
    // One crypto provider for every TLS client in the process (reqwest uses rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Serve {
            listen,
            data,
            config,
        } => serve::run(config, listen, data),
        Command::Emit(a) => client::runtime().and_then(|rt| rt.block_on(client::emit(a))),
        Command::Query(a) => client::runtime().and_then(|rt| rt.block_on(client::query(a))),
        Command::Tail(a) => client::runtime().and_then(|rt| rt.block_on(tail::tail(a))),
        Command::Import(a) => client::runtime().and_then(|rt| rt.block_on(client::import(a))),
        Command::Export(a) => client::runtime().and_then(|rt| rt.block_on(client::export(a))),
        Command::Keys { command } => {
            client::runtime().and_then(|rt| rt.block_on(keys::run(command)))
        }
        Command::Types { command } => {
            client::runtime().and_then(|rt| rt.block_on(types::run(command)))
        }
        Command::Config { command } => match command {
            ConfigCommand::Default => {
                print!("{}", herald_server::config::DEFAULT_TOML);
                Ok(())
            }
            ConfigCommand::Show { config } => config::load(config.as_deref()).and_then(|c| {
                println!("{}", serde_json::to_string_pretty(&c)?);
                Ok(())
            }),
        },
        Command::Bench { command } => bench::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
