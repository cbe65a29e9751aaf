//! `retcd`: an etcd-compatible server. Flags and `ETCD_*` variables as etcd's; with none,
//! a single member on 127.0.0.1:2379 with its data in `./default.etcd`.

use std::process::ExitCode;

use retcd_server::config::{Config, ConfigError};

fn main() -> ExitCode {
    let config = match Config::parse_from_args(std::env::args_os()) {
        Ok(c) => c,
        // --help and --version exit 0 from here; argument errors exit 2, as clap's.
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("retcd: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = config.log_filter().unwrap_or("info");
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("retcd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(retcd_server::run(config, retcd_server::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "retcd stopped on an error");
            ExitCode::FAILURE
        }
    }
}
