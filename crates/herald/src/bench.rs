//! `herald bench`: load generators that measure Herald next to the do-it-yourself baseline.
#[derive(clap::Subcommand)]
pub enum BenchCommand {}
pub fn run(c: BenchCommand) -> anyhow::Result<()> {
    match c {}
}
