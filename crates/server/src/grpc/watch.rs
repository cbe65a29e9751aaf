//! The Watch service. Not implemented yet (watchers arrive with the watchable store).

use retcd_api::etcdserverpb::{WatchRequest, WatchResponse, watch_server::Watch};
use tonic::codegen::BoxStream;

use super::unimplemented_service;

pub struct WatchService;

unimplemented_service! {
    WatchService, Watch;
    [
    type WatchStream = BoxStream<WatchResponse>;
    ]
    watch(tonic::Streaming<WatchRequest>) -> Self::WatchStream;
}
