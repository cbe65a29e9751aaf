//! `retcd`: an etcd-compatible server. Flags, `ETCD_*` variables and `--config-file` as
//! etcd's; with none, a single member on 127.0.0.1:2379 with its data in `./default.etcd`.

use std::ffi::OsString;
use std::process::ExitCode;

use retcd_server::config::{self, Command, Level};
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};

/// The allocator (see the workspace's Cargo.toml for why not glibc's).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let parsed = match config::load(&args, &env) {
        Ok(Command::Run(parsed)) => *parsed,
        Ok(Command::Help(text) | Command::Version(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        // etcd's exit codes: 2 for what Go's flag package refuses, 1 for the rest.
        Err(e) => {
            match e {
                config::ConfigError::Unsupported { .. } => eprintln!("{e}"),
                _ => eprintln!("retcd: {e}"),
            }
            if e.exit_code() == 2 {
                eprintln!("Run 'retcd --help' for etcd's flags and what retcd does with each.");
            }
            return ExitCode::from(e.exit_code());
        }
    };
    let filter = parsed.config.log_filter().unwrap_or("info");
    let (writer, ansi) = match log_writer(&parsed.config.log_outputs) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("retcd: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .init();
    for notice in &parsed.notices {
        match notice.level {
            Level::Info => tracing::info!(target: "retcd::config", "{}", notice.message),
            Level::Warn => tracing::warn!(target: "retcd::config", "{}", notice.message),
        }
    }
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
    match runtime.block_on(retcd_server::run(
        parsed.config,
        retcd_server::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "retcd stopped on an error");
            ExitCode::FAILURE
        }
    }
}

/// `--log-outputs` as etcd reads it: `default` and `stderr` write to stderr, `stdout` to
/// stdout, `systemd/journal` to stderr (which systemd hands to the journal; retcd does
/// not speak journald's native protocol), anything else is a file path, appended to and
/// created 0600. Colour only when the one output is a terminal.
fn log_writer(outputs: &[String]) -> Result<(BoxMakeWriter, bool), String> {
    use std::io::IsTerminal;
    let mut writer: Option<BoxMakeWriter> = None;
    let mut ansi = outputs.len() == 1;
    for output in outputs {
        let next = match output.as_str() {
            "default" | "stderr" | "systemd/journal" => {
                ansi &= std::io::stderr().is_terminal();
                BoxMakeWriter::new(std::io::stderr)
            }
            "stdout" => {
                ansi &= std::io::stdout().is_terminal();
                BoxMakeWriter::new(std::io::stdout)
            }
            path => {
                ansi = false;
                let mut options = std::fs::OpenOptions::new();
                options.create(true).append(true);
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let file = options
                    .open(path)
                    .map_err(|e| format!("cannot open log output {path:?}: {e}"))?;
                BoxMakeWriter::new(std::sync::Arc::new(file))
            }
        };
        writer = Some(match writer {
            None => next,
            Some(w) => BoxMakeWriter::new(w.and(next)),
        });
    }
    Ok((
        writer.unwrap_or_else(|| BoxMakeWriter::new(std::io::stderr)),
        ansi,
    ))
}
