//! A member's data directory: its layout, and what a member starts from. An existing
//! directory is recovered (the newest snapshot the WAL vouches for, the log after it, a
//! received snapshot image left uninstalled); an empty one is bootstrapped for a new
//! cluster (one configuration change per initial member) or for joining a running one.
//! The checks that the backend and the WAL belong together are here.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message as _;
use retcd_backend::{Backend, RedbBackend, WriteTx};
use retcd_mvcc::KvStore;
use retcd_raft::{ConfChange, ConfChangeType, ConfState, EntryType, MemStorage};
use retcd_wal::{SnapshotMarker, Snapshotter, StdVfs, Wal, WalOptions};

use super::{Bootstrap, NodeConfig, NodeError};
use crate::ids::{ClusterId, MemberId};
use crate::membership::Member;

/// Where a member keeps what: `<data-dir>/member/wal` (or `--wal-dir`),
/// `<data-dir>/member/snap` and `<data-dir>/member/snap/db`, as etcd's.
pub struct DataLayout {
    pub data_dir: PathBuf,
    pub member_dir: PathBuf,
    pub wal_dir: PathBuf,
    pub snap_dir: PathBuf,
    pub db_path: PathBuf,
}

/// Mode of the directories a member creates (etcd's `PrivateDirMode`); its files are
/// `0600` (`retcd_wal::PRIVATE_FILE_MODE`).
const PRIVATE_DIR_MODE: u32 = retcd_wal::PRIVATE_DIR_MODE;

impl DataLayout {
    /// The layout under `data_dir`; with `wal_dir` (etcd's `--wal-dir`, a dedicated WAL
    /// directory) the WAL lives there and everything else stays under `data_dir`.
    pub fn new(data_dir: &Path, wal_dir: Option<&Path>) -> Self {
        let member = data_dir.join("member");
        DataLayout {
            data_dir: data_dir.to_path_buf(),
            wal_dir: wal_dir.map_or_else(|| member.join("wal"), Path::to_path_buf),
            snap_dir: member.join("snap"),
            db_path: member.join("snap").join("db"),
            member_dir: member,
        }
    }

    /// Creates the data, member and snapshot directories that are missing (mode `0700`,
    /// missing parents too), and warns about each existing one, the WAL directory
    /// included, whose mode is not `0700`, as etcd does; it is used anyway. The WAL
    /// directory itself is created with the WAL (its existence says the member has
    /// started before).
    pub fn prepare(&self) -> std::io::Result<()> {
        for dir in [&self.data_dir, &self.member_dir, &self.snap_dir] {
            touch_dir(dir)?;
        }
        if self.wal_dir.is_dir() {
            warn_unless_private(&self.wal_dir)?;
        }
        Ok(())
    }
}

/// etcd's `TouchDirAll`: creates `dir` (and its missing parents) private to the owner,
/// or warns if it exists with another mode.
fn touch_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.exists() {
        return warn_unless_private(dir);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Logs etcd's warning (same words, so operators' searches find it) when an existing
/// directory's permission bits are not `0700`.
fn warn_unless_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o777 != PRIVATE_DIR_MODE {
        tracing::warn!(
            error = %format!(
                "directory {:?} exist, but the permission is {:?}. The recommended permission is {:?} to prevent possible unprivileged access to the data",
                dir.display().to_string(),
                go_file_mode(mode, true),
                go_file_mode(PRIVATE_DIR_MODE, false),
            ),
            "check file permission"
        );
    }
    Ok(())
}

/// A Unix mode as Go's `os.FileMode.String` writes it (`drwxr-xr-x`, `-rwx------`),
/// which etcd's warning quotes.
fn go_file_mode(mode: u32, is_dir: bool) -> String {
    let mut out = String::new();
    if is_dir {
        out.push('d');
    }
    for (bit, c) in [(0o4000, 'u'), (0o2000, 'g'), (0o1000, 't')] {
        if mode & bit != 0 {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push('-');
    }
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    out
}

/// The WAL's metadata record: member id and cluster id, 8 bytes each, big-endian.
fn encode_wal_metadata(member: MemberId, cluster: ClusterId) -> Vec<u8> {
    let mut m = member.0.to_be_bytes().to_vec();
    m.extend_from_slice(&cluster.0.to_be_bytes());
    m
}

fn decode_wal_metadata(m: &[u8]) -> Result<(MemberId, ClusterId), NodeError> {
    let bad = || NodeError::Invalid(format!("WAL metadata has {} bytes, want 16", m.len()));
    if m.len() != 16 {
        return Err(bad());
    }
    let word = |i: usize| u64::from_be_bytes(m[i..i + 8].try_into().expect("8 bytes"));
    Ok((MemberId(word(0)), ClusterId(word(8))))
}

/// Meta key of the peers a member joining an existing cluster learned at its start,
/// which it can reach before its log tells it the membership.
pub(crate) const JOIN_PEERS_KEY: &[u8] = b"retcd_join_peers";

/// The first entries of a new cluster's log, the same on every member: one
/// configuration change adding each initial member (sorted by id), at term 1, committed.
/// A member that joins later replays them like any other entry, so every member derives
/// the configuration from the log alone (etcd bootstraps the same way).
fn bootstrap_entries(members: &[Member]) -> Vec<retcd_raft::Entry> {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by_key(|m| m.id);
    sorted
        .iter()
        .zip(1u64..)
        .map(|(m, index)| retcd_raft::Entry {
            term: 1,
            index,
            entry_type: EntryType::ConfChange,
            data: ConfChange {
                id: 0,
                change_type: ConfChangeType::AddNode,
                node_id: m.id.0,
                context: Bytes::from(m.encode()),
            }
            .encode(),
        })
        .collect()
}

/// Creates the WAL of a new cluster's member, as its first start does: the member and
/// cluster ids as metadata, the bootstrap entries, committed. For a data dir made
/// offline (a snapshot restore); the member's start then recovers from it.
pub(crate) fn create_bootstrap_wal(
    layout: &DataLayout,
    member_id: MemberId,
    cluster_id: ClusterId,
    members: &[Member],
) -> Result<(), NodeError> {
    let mut wal = Wal::create_with(
        &layout.wal_dir,
        &encode_wal_metadata(member_id, cluster_id),
        WalOptions::default(),
    )?;
    let entries = bootstrap_entries(members);
    let hs = retcd_raft::HardState {
        term: 1,
        vote: 0,
        commit: entries.len() as u64,
    };
    wal.save(&hs, &entries)?;
    Ok(())
}

/// `--force-new-cluster`, as etcd's `restartAsStandaloneNode`: the log's uncommitted tail
/// is dropped, and configuration changes are appended right after the commit index and
/// committed at once: this member added if the configuration lacks it, then every other
/// member removed, in ascending id order. Applied like any other entries, they leave
/// this member the only voter, with everything it had applied. Returns the new hard
/// state and the entries to append (`entries` is cut to the committed ones).
fn force_new_cluster(
    cfg: &NodeConfig,
    member_id: MemberId,
    conf_state: &ConfState,
    hs: retcd_raft::HardState,
    entries: &mut Vec<retcd_raft::Entry>,
) -> Result<(retcd_raft::HardState, Vec<retcd_raft::Entry>), NodeError> {
    entries.retain(|e| e.index <= hs.commit);
    // The voters as of the commit index: the snapshot's, then the committed changes.
    let mut ids: std::collections::BTreeSet<u64> = conf_state.voters.iter().copied().collect();
    for e in entries.iter() {
        let Some(cc) = crate::apply::DecodedConfChange::of(e) else {
            continue;
        };
        for change in &cc.change.changes {
            match change.change_type {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    ids.insert(change.node_id);
                }
                ConfChangeType::RemoveNode => {
                    ids.remove(&change.node_id);
                }
                ConfChangeType::UpdateNode => {}
            }
        }
    }
    let mut changes = Vec::new();
    if !ids.contains(&member_id.0) {
        let me = match &cfg.bootstrap {
            Bootstrap::New { members } => members.iter().find(|m| m.id == member_id).cloned(),
            Bootstrap::Existing { .. } => None,
        }
        .ok_or_else(|| {
            NodeError::Invalid(format!(
                "--force-new-cluster: member {member_id} is not in its own configuration and its flags do not name it"
            ))
        })?;
        changes.push((
            ConfChangeType::AddNode,
            member_id.0,
            Bytes::from(me.encode()),
        ));
    }
    for id in ids.iter().filter(|&&id| id != member_id.0) {
        changes.push((ConfChangeType::RemoveNode, *id, Bytes::new()));
    }
    let forced: Vec<retcd_raft::Entry> = changes
        .into_iter()
        .zip(hs.commit + 1..)
        .map(
            |((change_type, node_id, context), index)| retcd_raft::Entry {
                term: hs.term,
                index,
                entry_type: EntryType::ConfChange,
                data: ConfChange {
                    id: 0,
                    change_type,
                    node_id,
                    context,
                }
                .encode(),
            },
        )
        .collect();
    let commit = forced.last().map_or(hs.commit, |e| e.index);
    tracing::warn!(
        member_id = %member_id,
        removed = ?ids.iter().filter(|&&id| id != member_id.0).map(|id| format!("{id:x}")).collect::<Vec<_>>(),
        commit,
        "--force-new-cluster: starting as a one-member cluster"
    );
    Ok((
        retcd_raft::HardState {
            term: hs.term,
            vote: hs.vote,
            commit,
        },
        forced,
    ))
}

/// Where a received snapshot image waits until it is installed.
pub fn snapshot_image_path(snap_dir: &Path, index: u64) -> PathBuf {
    snap_dir.join(format!("{index:016x}.snap.db"))
}

/// The WAL and the Raft log a member starts from.
pub(super) struct Recovered {
    pub wal: Wal,
    pub storage: MemStorage,
    pub member_id: MemberId,
    pub cluster_id: ClusterId,
    pub snapshot_index: u64,
    /// The Raft snapshot's data: the membership as of it (empty for no snapshot, and for
    /// snapshots written before the membership was recorded in them).
    pub snapshot_data: Bytes,
    /// The Raft configuration as of the snapshot (or the bootstrap).
    pub conf_state: ConfState,
}

/// Restarts from the newest snapshot the WAL has a marker for and the log after it, or
/// creates a new WAL for a new member. Checks that the backend and the WAL belong
/// together. A snapshot image received from the leader but not yet installed when the
/// member stopped is installed now.
pub(super) fn recover_or_bootstrap(
    cfg: &NodeConfig,
    layout: &DataLayout,
    snapshotter: &Snapshotter,
    kv: &KvStore<RedbBackend>,
) -> Result<Recovered, NodeError> {
    let wal_opts = WalOptions {
        segment_size_bytes: cfg.wal_segment_size_bytes,
        ..WalOptions::default()
    };
    let ci = kv.consistent_index();
    if Wal::exists(&layout.wal_dir, &StdVfs)? {
        let markers = retcd_wal::valid_snapshot_markers(&layout.wal_dir, &wal_opts)?;
        let load = snapshotter.load_matching(&markers)?;
        let snapshot = load.snapshot;
        let from = snapshot.as_ref().map_or(SnapshotMarker::new(0, 0), |s| {
            SnapshotMarker::new(s.metadata.index, s.metadata.term)
        });
        let (wal, recovered) = Wal::open_with(&layout.wal_dir, &from, wal_opts)?;
        let (member_id, cluster_id) = decode_wal_metadata(&recovered.metadata)?;
        if member_id != cfg.member_id || cluster_id != cfg.cluster_id {
            tracing::warn!(
                wal_member_id = %member_id,
                flags_member_id = %cfg.member_id,
                "the data directory belongs to another member id than the flags give; using the data directory's"
            );
        }
        let snapshot_index = snapshot.as_ref().map_or(0, |s| s.metadata.index);
        let snapshot_data = snapshot.as_ref().map_or(Bytes::new(), |s| s.data.clone());
        // Without a snapshot the configuration is rebuilt from the log's entries.
        let conf_state = snapshot
            .as_ref()
            .map_or(ConfState::default(), |s| s.metadata.conf_state.clone());
        let storage = MemStorage::new();
        if let Some(s) = snapshot {
            storage.apply_snapshot(s)?;
        }
        let mut hs = recovered.hard_state;
        let mut entries = recovered.entries;
        let mut wal = wal;
        if cfg.force_new_cluster {
            let forced = force_new_cluster(cfg, member_id, &conf_state, hs, &mut entries)?;
            wal.save(&forced.0, &forced.1)?;
            hs = forced.0;
            entries.extend(forced.1);
        }
        storage.set_hard_state(hs);
        storage.append(&entries)?;
        let mut ci = ci;
        if ci.index < snapshot_index {
            // The member stopped between saving a received snapshot and installing it.
            let image = snapshot_image_path(&layout.snap_dir, snapshot_index);
            if image.exists() {
                install_image(kv, &image)?;
                ci = kv.consistent_index();
                tracing::info!(
                    index = snapshot_index,
                    "installed a received snapshot image left from before the restart"
                );
            }
        }
        // Invariant: a durable backend commit never covers more than the WAL's
        // durable commit index (see the module docs); anything else means the
        // backend and the WAL do not belong together. A snapshot from the leader may
        // carry a backend ahead of its own index (etcd's rule too), which the WAL's
        // snapshot marker vouches for.
        if ci.index > hs.commit && ci.index > snapshot_index {
            return Err(NodeError::Invalid(format!(
                "backend consistent index {} ({}) is beyond the WAL's commit index {} ({}): the WAL lost records it had fsynced, or the two do not belong together",
                ci.index,
                layout.db_path.display(),
                hs.commit,
                layout.wal_dir.display()
            )));
        }
        if ci.index < snapshot_index {
            return Err(NodeError::Invalid(format!(
                "backend consistent index {} is behind the raft snapshot at {}: entries between them are gone",
                ci.index, snapshot_index
            )));
        }
        tracing::info!(
            member_id = %member_id,
            cluster_id = %cluster_id,
            term = hs.term,
            commit = hs.commit,
            consistent_index = ci.index,
            snapshot_index,
            entries = entries.len(),
            "restarting member from its data directory"
        );
        return Ok(Recovered {
            wal,
            storage,
            member_id,
            cluster_id,
            snapshot_index,
            snapshot_data,
            conf_state,
        });
    }
    if ci.index != 0 {
        return Err(NodeError::Invalid(format!(
            "{} holds applied data (consistent index {}) but {} holds no WAL",
            layout.db_path.display(),
            ci.index,
            layout.wal_dir.display()
        )));
    }
    // A joining member records whom it can reach first; should it stop before the WAL
    // exists, the next start bootstraps again and writes the same record.
    if let Bootstrap::Existing { membership } = &cfg.bootstrap {
        let peers = retcd_api::peerpb::MembersResponse {
            cluster_id: cfg.cluster_id.0,
            member_id: cfg.member_id.0,
            members: membership.members.values().map(Member::to_proto).collect(),
            removed: membership.removed.iter().map(|id| id.0).collect(),
        };
        let mut tx = kv.backend().begin_write()?;
        tx.put(
            retcd_backend::Bucket::Meta,
            JOIN_PEERS_KEY,
            &peers.encode_to_vec(),
        )?;
        tx.commit()?;
    }
    let mut wal = Wal::create_with(
        &layout.wal_dir,
        &encode_wal_metadata(cfg.member_id, cfg.cluster_id),
        wal_opts,
    )?;
    let storage = MemStorage::new();
    let joining = match &cfg.bootstrap {
        Bootstrap::New { members } => {
            let entries = bootstrap_entries(members);
            let hs = retcd_raft::HardState {
                term: 1,
                vote: 0,
                commit: entries.len() as u64,
            };
            wal.save(&hs, &entries)?;
            storage.append(&entries)?;
            storage.set_hard_state(hs);
            false
        }
        Bootstrap::Existing { .. } => true,
    };
    tracing::info!(
        member_id = %cfg.member_id,
        cluster_id = %cfg.cluster_id,
        joining,
        data_dir = %cfg.data_dir.display(),
        wal_dir = %layout.wal_dir.display(),
        "starting a new member"
    );
    Ok(Recovered {
        wal,
        storage,
        member_id: cfg.member_id,
        cluster_id: cfg.cluster_id,
        snapshot_index: 0,
        snapshot_data: Bytes::new(),
        conf_state: ConfState::default(),
    })
}

/// The peers a joining member learned at its start (empty for everyone else).
pub(super) fn join_peers(
    kv: &KvStore<RedbBackend>,
) -> Result<Vec<(MemberId, Vec<String>)>, NodeError> {
    use retcd_backend::ReadTx as _;
    let Some(bytes) = kv
        .backend()
        .begin_read()?
        .get(retcd_backend::Bucket::Meta, JOIN_PEERS_KEY)?
    else {
        return Ok(Vec::new());
    };
    let resp = retcd_api::peerpb::MembersResponse::decode(bytes.as_slice())
        .map_err(|e| NodeError::Invalid(format!("join peers record: {e}")))?;
    Ok(resp
        .members
        .into_iter()
        .map(Member::from_proto)
        .map(|m| (m.id, m.peer_urls))
        .collect())
}

/// Replaces the store with a snapshot image file, then deletes the file.
pub(super) fn install_image(kv: &KvStore<RedbBackend>, image: &Path) -> Result<(), NodeError> {
    let file = std::fs::File::open(image)?;
    let mut reader = std::io::BufReader::new(file);
    kv.restore_snapshot(&mut reader)?;
    if let Err(e) = std::fs::remove_file(image) {
        tracing::warn!(path = %image.display(), error = %e, "cannot remove an installed snapshot image");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: etcd's permission warning quotes modes as Go prints them.
    #[test]
    fn modes_read_as_gos_file_mode() {
        assert_eq!(go_file_mode(0o755, true), "drwxr-xr-x");
        assert_eq!(go_file_mode(0o700, false), "-rwx------");
        assert_eq!(go_file_mode(0o2770, true), "dgrwxrwx---");
        assert_eq!(go_file_mode(0o1777, true), "dtrwxrwxrwx");
    }

    // Goal: --wal-dir moves the WAL only; everything else stays under the data directory.
    #[test]
    fn a_dedicated_wal_dir_moves_only_the_wal() {
        let default = DataLayout::new(Path::new("/d"), None);
        assert_eq!(default.wal_dir, Path::new("/d/member/wal"));
        let dedicated = DataLayout::new(Path::new("/d"), Some(Path::new("/w")));
        assert_eq!(dedicated.wal_dir, Path::new("/w"));
        assert_eq!(dedicated.snap_dir, Path::new("/d/member/snap"));
        assert_eq!(dedicated.db_path, Path::new("/d/member/snap/db"));
        assert_eq!(dedicated.member_dir, Path::new("/d/member"));
    }
}
