//! Herald's integration tests: one test binary driving real servers over HTTP.
//!
//! `harness` starts the application in-process on `127.0.0.1:0` (fast, many per run) or the
//! real `herald` binary (for the CLI and for crash tests that kill the process).

mod access;
mod browser;
mod cli;
mod client_lib;
mod crash;
mod harness;
mod hostile;
mod ingest;
mod query;
mod sdk;
mod stream;
mod types;
