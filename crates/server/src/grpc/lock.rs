//! The Lock service (`v3lockpb`). Not implemented yet (it needs leases).

use retcd_api::v3lockpb::{
    LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_server::Lock,
};

use super::unimplemented_service;

pub struct LockService;

unimplemented_service! {
    LockService, Lock;
    []
    lock(LockRequest) -> LockResponse;
    unlock(UnlockRequest) -> UnlockResponse;
}
