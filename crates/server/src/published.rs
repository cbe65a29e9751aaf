//! A value the raft loop publishes after each committed batch (the membership, the alarms,
//! the auth store) for readers elsewhere: the services and the transport read a copy as of
//! the last committed batch. Its own module so that what apply publishes can be read by
//! modules apply itself uses (`auth`) without an import cycle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A value apply publishes after each committed batch, for readers elsewhere (the
/// services, the transport): they read a copy as of the last committed batch.
#[derive(Debug, Default)]
pub struct Published<T>(Arc<RwLock<T>>);

impl<T> Clone for Published<T> {
    fn clone(&self) -> Self {
        Published(self.0.clone())
    }
}

impl<T: Clone> Published<T> {
    pub fn new(value: T) -> Self {
        Published(Arc::new(RwLock::new(value)))
    }

    /// A copy of the value.
    pub fn get(&self) -> T {
        self.read(T::clone)
    }

    /// Reads the value in place.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the value. Only apply publishes (the raft loop owns the applier).
    pub(crate) fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = value;
    }
}

/// The applied index as the raft loop publishes it, with a way to wait for it (a
/// simple token names the entry that made it; a member that has not applied it yet
/// waits). Waking waiters costs nothing when nobody waits.
#[derive(Debug, Default)]
pub struct AppliedIndex {
    index: AtomicU64,
    stopped: AtomicBool,
    moved: tokio::sync::Notify,
}

impl AppliedIndex {
    pub fn new(index: u64) -> AppliedIndex {
        AppliedIndex {
            index: AtomicU64::new(index),
            ..AppliedIndex::default()
        }
    }

    pub fn get(&self) -> u64 {
        self.index.load(Ordering::Acquire)
    }

    /// Only the raft loop sets it.
    pub(crate) fn set(&self, index: u64) {
        self.index.store(index, Ordering::Release);
        self.moved.notify_waiters();
    }

    /// The loop stopped: nothing will be applied any more.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.moved.notify_waiters();
    }

    /// Waits until the index reaches `index`, the loop stops, or `timeout` passes,
    /// whichever comes first.
    pub async fn wait_for(&self, index: u64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let moved = self.moved.notified();
            let mut moved = std::pin::pin!(moved);
            moved.as_mut().enable();
            if self.get() >= index || self.stopped.load(Ordering::Acquire) {
                return;
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                return;
            }
        }
    }
}
