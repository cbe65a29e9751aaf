//! Changes produced by write transactions, for the watch layer.

use crate::KeyValue;

/// Kind of change (`mvccpb.Event.EventType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A key was created or updated; `kv.version == 1` means created.
    Put,
    /// A key was deleted; `kv` carries only the key and the deletion's `mod_revision`.
    Delete,
}

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key's new state (for a delete, [`KeyValue::tombstone`]).
    pub kv: KeyValue,
    /// The key's state at `kv.mod_revision - 1`, i.e. before the transaction, when it
    /// existed then and that revision is not compacted.
    pub prev_kv: Option<KeyValue>,
}
