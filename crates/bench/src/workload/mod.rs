//! The workloads, one module per etcd service they drive: [`kv`] (put,
//! range, txn-put), [`watch`], [`lease`] (lease, lease-keepalive), [`auth`]
//! (authenticate) and [`maintenance`] (snapshot).
//!
//! Each workload connects, sets up what it needs unmeasured (leases to keep
//! alive, watchers), runs the measured phase and returns a [`Report`].

pub mod auth;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;
pub mod watch_wire;

use std::sync::Arc;

use crate::conn::Conn;
use bytes::Bytes;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::conn;
use crate::error::BenchError;
use crate::keys::{self, KeyGen};
use crate::stats::{Report, Series};

/// What every workload starts from.
pub struct Ctx {
    pub global: GlobalArgs,
    pub command: &'static str,
    /// `--conns` connections.
    pub channels: Vec<Conn>,
    pub keys: Arc<KeyGen>,
    pub value: Bytes,
}

impl Ctx {
    /// The connection client `client` uses.
    pub fn channel(&self, client: usize) -> Conn {
        self.channels[client % self.channels.len()].clone()
    }

    /// A report whose elapsed time is the headline series'.
    pub fn report(&self, series: Vec<Series>, counters: Vec<(&str, u64)>) -> Report {
        Report {
            command: self.command.to_owned(),
            endpoints: self.global.endpoints.clone(),
            conns: self.global.conns,
            clients: self.global.clients,
            total: self.global.total,
            elapsed: series.first().map(|s| s.elapsed).unwrap_or_default(),
            series,
            counters: counters
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v))
                .collect(),
        }
    }
}

/// Validates the flags, connects, and runs the chosen workload.
pub async fn run(cli: &Cli) -> Result<Report, BenchError> {
    cli.validate()?;
    let g = &cli.global;
    let keys = match &cli.command {
        // Range reads what it is told to; watch writes one key per put.
        Command::Range(_) | Command::Watch(_) => KeyGen::per_request(b"", g.key_size, 1),
        _ => KeyGen::new(
            g.key_prefix.as_bytes(),
            g.key_size,
            g.key_space_size,
            g.sequential_keys,
            g.seed,
        )?,
    };
    let ctx = Ctx {
        global: g.clone(),
        command: cli.command.name(),
        channels: {
            let channels = conn::connect(
                &g.endpoints,
                g.conns,
                g.dial_timeout,
                conn::Tls::from_args(g)?.as_ref(),
            )
            .await?;
            let token = match &g.user {
                Some(user) => conn::login(&channels[0], user, g.request_timeout).await?,
                None => conn::AuthToken::default(),
            };
            conn::with_token(channels, &token)
        },
        keys: Arc::new(keys),
        value: keys::value(g.val_size, g.seed),
    };
    match &cli.command {
        Command::Put => Ok(kv::put(&ctx).await),
        Command::Range(args) => Ok(kv::range(&ctx, args).await),
        Command::TxnPut(args) => Ok(kv::txn_put(&ctx, args).await),
        Command::Watch(args) => watch::watch(&ctx, args).await,
        Command::Lease(args) => Ok(lease::lease(&ctx, args).await),
        Command::LeaseKeepalive(args) => lease::keepalive(&ctx, args).await,
        Command::Authenticate => auth::run(&ctx).await,
        Command::Snapshot => Ok(maintenance::snapshot(&ctx).await),
    }
}
