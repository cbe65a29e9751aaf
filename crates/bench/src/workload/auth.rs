//! `authenticate`: one Authenticate per request with `--user`'s credentials.

use retcd_api::etcdserverpb::AuthenticateRequest;
use retcd_api::etcdserverpb::auth_client::AuthClient;
use tonic::Status;

use super::Ctx;
use crate::conn::{self, Conn};
use crate::error::BenchError;
use crate::runner::{Op, run_with_warmup};
use crate::stats::{Report, Series};

/// Authenticate request i logs in again.
pub struct LoginOp {
    auth: AuthClient<Conn>,
    request: AuthenticateRequest,
}

impl Op for LoginOp {
    async fn call(&mut self, _index: u64) -> Result<u64, Status> {
        self.auth.authenticate(self.request.clone()).await?;
        Ok(1)
    }
}

/// `authenticate`: measures login latency and throughput.
pub async fn run(ctx: &Ctx) -> Result<Report, BenchError> {
    let user = ctx.global.user.as_deref().ok_or_else(|| {
        BenchError::InvalidArgument("authenticate needs --user NAME:PASSWORD".into())
    })?;
    let (name, password) = conn::credentials(user)?;
    let ops = (0..ctx.global.clients)
        .map(|c| LoginOp {
            auth: AuthClient::new(ctx.channel(c)),
            request: AuthenticateRequest {
                name: name.clone(),
                password: password.clone(),
            },
        })
        .collect();
    let g = &ctx.global;
    let out = run_with_warmup(ops, g.warmup, g.total, g.request_timeout).await;
    Ok(ctx.report(
        vec![Series::new("authenticate", &out.recorder, out.elapsed)],
        vec![],
    ))
}
