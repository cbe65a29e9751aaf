//! Raft snapshots: taken every `--snapshot-count` entries to compact the log (metadata
//! and the membership: the backend is the state), sent to a member too far behind for
//! the log (a backend image written on the loop), and installed when received.

use std::os::unix::fs::OpenOptionsExt as _;
use std::time::Instant;

use bytes::Bytes;
use retcd_backend::{Backend, ReadTx as _};
use retcd_raft::{Message, Snapshot, SnapshotStatus, Storage as _};
use retcd_wal::SnapshotMarker;

use super::NodeError;
use super::event_loop::RaftLoop;
use super::recover::{install_image, snapshot_image_path};
use crate::clock;
use crate::ids::MemberId;

impl RaftLoop {
    /// After `--snapshot-count` applied entries (or when forced): a Raft snapshot, the WAL
    /// marker, log compaction, and purging of old files.
    pub(super) fn maybe_snapshot(&mut self) -> Result<(), NodeError> {
        if self.applied_index < self.snapshot_index + self.limits.snapshot_count
            && !self.force_snapshot
        {
            return Ok(());
        }
        self.force_snapshot = false;
        if self.applied_index == self.snapshot_index {
            return Ok(());
        }
        // Invariant: a snapshot never claims more than the durable backend holds.
        self.durable_commit()?;
        let index = self.applied_index;
        // The data is the membership as of the snapshot: a restart replays the
        // configuration changes after it against it (see `apply`).
        let data = Bytes::from(self.applier.membership().get().encode());
        let snap: Snapshot =
            self.storage
                .create_snapshot(index, Some(self.conf_state.clone()), data)?;
        self.snapshotter.save(&snap)?;
        self.wal.save_snapshot_marker(&SnapshotMarker {
            index,
            term: snap.metadata.term,
            conf_state: self.conf_state.clone(),
        })?;
        let compact_to = index.saturating_sub(self.limits.snapshot_catchup_entries);
        if compact_to >= self.storage.first_index().unwrap_or(1) {
            self.storage.compact(compact_to)?;
        }
        self.snapshot_index = index;
        let purged = self.purge_files();
        tracing::info!(
            snapshot_index = index,
            term = snap.metadata.term,
            compacted_to = compact_to,
            purged_wal_segments = purged,
            "saved raft snapshot"
        );
        Ok(())
    }

    /// Deletes what the snapshot just taken released, as etcd's `--max-wals` and
    /// `--max-snapshots` ask: WAL segments wholly below min(snapshot, durable consistent
    /// index) beyond the newest `max_wals` segments, and snapshot files beyond the newest
    /// `max_snapshots` (either 0: that kind is never deleted). Returns how many segments
    /// went. A failure leaves files behind for the next snapshot to retry.
    fn purge_files(&mut self) -> usize {
        let mut purged = 0;
        if self.limits.max_wals > 0 {
            // Invariant: replay needs every entry after the snapshot it starts from and
            // after the durable consistent index (see the module docs).
            let purge_below = self.snapshot_index.min(self.durable_index);
            let keep = usize::try_from(self.limits.max_wals).unwrap_or(usize::MAX);
            match self.wal.purge_to(purge_below, keep) {
                Ok(files) => purged = files.len(),
                Err(e) => {
                    tracing::warn!(error = %e, "could not purge old WAL segments; will retry");
                }
            }
        }
        // With no limit, only leftover temporary files go.
        let keep = match self.limits.max_snapshots {
            0 => usize::MAX,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        if let Err(e) = self.snapshotter.purge(keep) {
            tracing::warn!(error = %e, "could not purge old snapshot files; will retry");
        }
        purged
    }

    /// Sends a follower that is too far behind the whole backend. The image is written
    /// here, on the loop, so it is exactly the applied state; the message's snapshot
    /// metadata is rewritten to that applied index (with its term and configuration),
    /// which is at or after the snapshot Raft picked, so the follower never installs an
    /// image older than the log the leader will send after it.
    pub(super) fn send_snapshot(&mut self, mut m: Message) -> Result<(), NodeError> {
        let index = self.applied_index;
        let term = match self.storage.term(index) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, index, "cannot send a snapshot at the applied index");
                self.raw.report_snapshot(m.to, SnapshotStatus::Failure);
                return Ok(());
            }
        };
        let path = self
            .status
            .snap_dir()
            .join(format!("outgoing-{:016x}-{index:016x}.img", m.to));
        let start = Instant::now();
        let info = {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(retcd_wal::PRIVATE_FILE_MODE)
                .open(&path)?;
            let mut out = std::io::BufWriter::new(file);
            let tx = self.kv.backend().begin_read()?;
            let info = tx.write_snapshot(&mut out)?;
            std::io::Write::flush(&mut out)?;
            info
        };
        if let Some(snap) = m.snapshot.as_mut() {
            snap.metadata.index = index;
            snap.metadata.term = term;
            snap.metadata.conf_state = self.conf_state.clone();
            snap.data = Bytes::from(self.applier.membership().get().encode());
        }
        tracing::info!(
            to = %MemberId(m.to),
            index,
            bytes = info.bytes,
            took_ms = start.elapsed().as_millis() as u64,
            "sending a snapshot to a member that is behind"
        );
        self.network.send_snapshot(m, path);
        Ok(())
    }

    /// Installs a snapshot received from the leader: the WAL marker and snapshot file
    /// first (so a restart knows of it), then the backend image the transport saved,
    /// then everything loaded from the backend (lessor, alarms, membership), then the
    /// core's storage.
    pub(super) fn install_snapshot(
        &mut self,
        snap: Snapshot,
        hard_state: Option<retcd_raft::HardState>,
    ) -> Result<(), NodeError> {
        let index = snap.metadata.index;
        let image = snapshot_image_path(self.status.snap_dir(), index);
        if !image.exists() {
            return Err(NodeError::Invalid(format!(
                "raft accepted a snapshot at {index} but its image {} is missing",
                image.display()
            )));
        }
        // Nothing applied may stay non-durable under the new image.
        self.durable_commit()?;
        // The marker before the hard state: a hard state whose commit index is past the
        // log's end without the marker would not restart.
        self.snapshotter.save(&snap)?;
        self.wal.save_snapshot_marker(&SnapshotMarker {
            index,
            term: snap.metadata.term,
            conf_state: snap.metadata.conf_state.clone(),
        })?;
        if let Some(hs) = hard_state {
            self.wal.save(&hs, &[])?;
        }
        install_image(&self.kv, &image)?;
        self.watch.restored();
        self.applier.reload(clock::lease_time(self.now))?;
        self.note_db_size()?;
        let ci = self.kv.consistent_index();
        self.storage.apply_snapshot(snap.clone())?;
        self.conf_state = snap.metadata.conf_state.clone();
        self.snapshot_index = index;
        self.update_peers();
        // The image may be ahead of the snapshot's index (the leader's applied state).
        let applied = self.applied_index.max(ci.index).max(index);
        self.set_applied(applied);
        self.durable_index = self.applied_index;
        tracing::info!(
            index,
            term = snap.metadata.term,
            consistent_index = ci.index,
            "installed a snapshot from the leader"
        );
        Ok(())
    }
}
