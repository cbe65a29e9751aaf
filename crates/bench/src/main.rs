//! `retcd-bench`: see the library docs for the workloads and flags.

use anyhow::Context as _;
use clap::Parser as _;
use retcd_bench::Cli;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.global.threads)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let report = runtime.block_on(retcd_bench::run(&cli))?;
    if cli.global.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
