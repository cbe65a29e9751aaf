//! retcd's Raft consensus core (work in progress; see issue 2).

pub mod types;
pub use types::*;
