//! `retcdctl`: see the crate docs (`lib.rs`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "retcdctl",
    about = "A simple command line client for retcd (and etcd)."
)]
struct Cli {
    /// Output format: simple, json, fields (table and protobuf: not yet).
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        default_value = "simple"
    )]
    write_out: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manages snapshots.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Gets backend snapshot status of a given file.
    Status { file: PathBuf },
    /// Restores a snapshot (etcd's or retcd's) into a new retcd data directory.
    Restore {
        file: PathBuf,
        /// Path to the data directory (default: <name>.etcd).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Path to the WAL directory (default: <data-dir>/member/wal).
        #[arg(long)]
        wal_dir: Option<PathBuf>,
        /// Initial cluster configuration for restore bootstrap.
        #[arg(long, default_value = "default=http://localhost:2380")]
        initial_cluster: String,
        /// Initial cluster token for the cluster during restore bootstrap.
        #[arg(long, default_value = "etcd-cluster")]
        initial_cluster_token: String,
        /// List of this member's peer URLs to advertise to the rest of the cluster.
        #[arg(long, default_value = "http://localhost:2380")]
        initial_advertise_peer_urls: String,
        /// Human-readable name for this member.
        #[arg(long, default_value = "default")]
        name: String,
        /// Ignore snapshot integrity hash value (required if copied from data directory).
        #[arg(long)]
        skip_hash_check: bool,
        /// How much to increase the latest revision after restore (needs --mark-compacted).
        #[arg(long, default_value_t = 0)]
        bump_revision: u64,
        /// Mark the latest revision after restore as the point of scheduled compaction.
        #[arg(long)]
        mark_compacted: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Snapshot {
            command: SnapshotCommand::Status { file },
        } => {
            let status = std::fs::File::open(&file)
                .map_err(|e| e.to_string())
                .and_then(retcd_ctl::status::status);
            match status
                .map_err(|e| (e, 1))
                .and_then(|s| retcd_ctl::status::render(&s, &cli.write_out))
            {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err((e, code)) => fail(&e, code as u8),
            }
        }
        Command::Snapshot {
            command:
                SnapshotCommand::Restore {
                    file,
                    data_dir,
                    wal_dir,
                    initial_cluster,
                    initial_cluster_token,
                    initial_advertise_peer_urls,
                    name,
                    skip_hash_check,
                    bump_revision,
                    mark_compacted,
                },
        } => {
            let opts = retcd_server::restore::RestoreOptions {
                snapshot: file.clone(),
                data_dir,
                wal_dir,
                name,
                initial_cluster,
                initial_cluster_token,
                initial_advertise_peer_urls: initial_advertise_peer_urls
                    .split(',')
                    .map(str::to_string)
                    .collect(),
                skip_hash_check,
                bump_revision,
                mark_compacted,
            };
            match retcd_server::restore::restore(&opts) {
                Ok(r) => {
                    eprintln!(
                        "restored snapshot {} into {}: member {:x}, cluster {:x}, revision {}, {} records, {} leases",
                        file.display(),
                        r.data_dir.display(),
                        r.member_id.0,
                        r.cluster_id.0,
                        r.revision,
                        r.records,
                        r.leases
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e, 1),
            }
        }
    }
}

/// etcdctl's way out: `Error: ` and the message on stderr, and its exit code.
fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("Error: {message}");
    ExitCode::from(code)
}
