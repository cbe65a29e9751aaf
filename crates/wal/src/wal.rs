//! The writer ([`Wal`]) and the readers ([`Wal::read_all`], [`valid_snapshot_markers`]).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use retcd_prng::SplitMix64;
use retcd_raft::{Entry, HardState};

use crate::error::{Result, WalError, io_err};
use crate::record::{FrameWriter, HEADER_SALT, Record, SnapshotMarker};
use crate::segment::{SegmentId, TMP_SUFFIX, Torn, list_segments, list_tmp, read_segments};
use crate::vfs::{FileLock, StdVfs, Vfs, VfsFile};

/// etcd's segment size: a segment is cut once it holds this many bytes.
pub const DEFAULT_SEGMENT_SIZE_BYTES: u64 = 64 * 1024 * 1024;
/// etcd's limit on one WAL record (`maxWALEntrySizeLimit`), well above `--max-request-bytes`.
pub const DEFAULT_MAX_RECORD_BYTES: u32 = 10 * 1024 * 1024;
/// The file a writer holds an exclusive lock on for as long as it lives.
pub const LOCK_FILE: &str = "LOCK";

/// How a WAL is written and read.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A segment is cut (sealed, and a new one started) once it holds at least this many
    /// bytes. New segments are preallocated to this size, so appends do not grow the file.
    /// etcd: 64 MiB.
    pub segment_size_bytes: u64,
    /// The largest record payload written or read. A length field above it is corruption,
    /// rejected before anything is allocated. Readers must use the writer's value or more.
    /// etcd: 10 MiB.
    pub max_record_bytes: u32,
    /// The file system; [`crate::sim::SimVfs`] in crash tests.
    pub vfs: Arc<dyn Vfs>,
    /// Seeds the per-segment CRC salts. `None` draws them at random, which is what
    /// production wants; tests set it to be byte-for-byte reproducible.
    pub salt_seed: Option<u64>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size_bytes: DEFAULT_SEGMENT_SIZE_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            vfs: Arc::new(StdVfs),
            salt_seed: None,
        }
    }
}

/// What [`Wal::open`] and [`Wal::read_all`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The metadata given to [`Wal::create`].
    pub metadata: Bytes,
    /// The last hard state saved (empty if none was).
    pub hard_state: HardState,
    /// The log after the snapshot marker it was opened from: indexes `from.index + 1`
    /// onwards, contiguous, with later writes at an index replacing earlier ones there and
    /// everything after them (Raft's log truncation).
    pub entries: Vec<Entry>,
    /// The last snapshot marker in the segments read.
    pub last_snapshot: Option<SnapshotMarker>,
    /// A torn tail found at the end of the log: zeroed by [`Wal::open`], only reported by
    /// [`Wal::read_all`].
    pub torn_tail: Option<TornTail>,
}

/// Unacknowledged bytes at the end of the last segment that did not form valid records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    pub offset: u64,
    pub reason: String,
}

/// Where the writer stands in its last segment (for diagnostics and crash tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailPosition {
    pub file: PathBuf,
    /// Bytes of records written to the segment.
    pub written_bytes: u64,
    /// Of those, the bytes an fsync has made durable.
    pub durable_bytes: u64,
}

/// The Raft write-ahead log of one member: an append-only sequence of segment files.
///
/// One writer per directory, enforced with a lock file. A `Wal` that saw a write or fsync
/// fail is poisoned and refuses further use; the process must restart and recover.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    metadata: Bytes,
    _lock: FileLock,
    /// Live segments by sequence number; the last one is the tail being appended to.
    segments: Vec<SegmentId>,
    tail: Box<dyn VfsFile>,
    tail_salt: u32,
    // Invariant: durable_offset <= tail_offset, and both are record boundaries.
    tail_offset: u64,
    durable_offset: u64,
    /// Index of the last entry written (or of the last snapshot marker, if later).
    last_index: u64,
    /// The last hard state written.
    hard_state: HardState,
    buf: Vec<u8>,
    poisoned: Option<String>,
    salt_state: SplitMix64,
}

fn lock_dir(vfs: &dyn Vfs, dir: &Path) -> Result<FileLock> {
    let path = dir.join(LOCK_FILE);
    vfs.try_lock(&path)
        .map_err(io_err("lock", &path))?
        .ok_or_else(|| WalError::Locked {
            dir: dir.to_path_buf(),
        })
}

impl Wal {
    /// Creates a new WAL in `dir` (made if missing), holding `metadata` (for etcd: node id
    /// and cluster id) and an initial snapshot marker at index 0, term 0. Fails with
    /// `AlreadyExists` if `dir` already holds segments.
    pub fn create(dir: impl AsRef<Path>, metadata: &[u8]) -> Result<Wal> {
        Wal::create_with(dir, metadata, WalOptions::default())
    }

    pub fn create_with(dir: impl AsRef<Path>, metadata: &[u8], opts: WalOptions) -> Result<Wal> {
        let dir = dir.as_ref().to_path_buf();
        assert!(
            opts.segment_size_bytes > 0,
            "segment_size_bytes must be positive"
        );
        let vfs = Arc::clone(&opts.vfs);
        vfs.create_dir_all(&dir)
            .map_err(io_err("create dir", &dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            vfs.sync_dir(parent).map_err(io_err("fsync dir", parent))?;
        }
        let lock = lock_dir(vfs.as_ref(), &dir)?;
        if !list_segments(vfs.as_ref(), &dir)?.is_empty() {
            return Err(WalError::AlreadyExists { dir });
        }
        remove_tmp_segments(vfs.as_ref(), &dir)?;
        let mut salt_state = SplitMix64::new(
            opts.salt_seed
                .unwrap_or_else(|| RandomState::new().hash_one(&dir)),
        );
        let first = SegmentId {
            seq: 0,
            first_index: 0,
        };
        let salt = salt_state.next_u64() as u32;
        let metadata = Bytes::copy_from_slice(metadata);
        let (tail, tail_offset) = create_segment(
            vfs.as_ref(),
            &dir,
            &opts,
            first,
            salt,
            &metadata,
            &HardState::default(),
            true,
        )?;
        Ok(Wal {
            dir,
            opts,
            metadata,
            _lock: lock,
            segments: vec![first],
            tail,
            tail_salt: salt,
            tail_offset,
            durable_offset: tail_offset,
            last_index: 0,
            hard_state: HardState::default(),
            buf: Vec::new(),
            poisoned: None,
            salt_state,
        })
    }

    /// Whether `dir` holds a WAL (any segment).
    pub fn exists(dir: impl AsRef<Path>, vfs: &dyn Vfs) -> Result<bool> {
        match list_segments(vfs, dir.as_ref()) {
            Ok(segments) => Ok(!segments.is_empty()),
            Err(WalError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Opens the WAL for writing and replays it from the snapshot marker `from` (the
    /// snapshot the server restored; index 0 term 0 if none). The marker must be in the
    /// WAL. A torn tail is zeroed and made durable before this returns, as is everything
    /// recovered: the caller may act on all of it (for instance acknowledge it to a leader).
    pub fn open(dir: impl AsRef<Path>, from: &SnapshotMarker) -> Result<(Wal, Recovered)> {
        Wal::open_with(dir, from, WalOptions::default())
    }

    pub fn open_with(
        dir: impl AsRef<Path>,
        from: &SnapshotMarker,
        opts: WalOptions,
    ) -> Result<(Wal, Recovered)> {
        let dir = dir.as_ref().to_path_buf();
        assert!(
            opts.segment_size_bytes > 0,
            "segment_size_bytes must be positive"
        );
        let vfs = Arc::clone(&opts.vfs);
        if !Wal::exists(&dir, vfs.as_ref())? {
            return Err(WalError::NotFound { dir });
        }
        let lock = lock_dir(vfs.as_ref(), &dir)?;
        let replay = replay(vfs.as_ref(), &dir, from, &opts)?;
        remove_tmp_segments(vfs.as_ref(), &dir)?;
        let last = *replay
            .segments
            .last()
            .expect("replay reads at least one segment");
        let tail_path = dir.join(last.file_name());
        let mut tail = vfs
            .open_file(&tail_path)
            .map_err(io_err("open", &tail_path))?;
        let tail_offset = replay.end.end_offset;
        if let Some(torn) = &replay.end.torn {
            tracing::warn!(
                file = %tail_path.display(),
                offset = torn.offset,
                reason = %torn.reason,
                "wal: zeroing a torn tail that was never fsynced"
            );
            // Zero everything after the last good record, so that no stale bytes can ever
            // be read as a continuation of what we append next. Overwrite rather than
            // truncate: segment files never shrink below their preallocated size.
            let zeros = vec![0u8; (torn.dirty_end - torn.offset) as usize];
            tail.write_all_at(torn.offset, &zeros)
                .map_err(io_err("write", &tail_path))?;
        }
        // The previous process may have died before fsyncing what we just read; make it
        // durable before the caller acts on it. Likewise for names it created.
        tail.sync_all().map_err(io_err("fsync", &tail_path))?;
        vfs.sync_dir(&dir).map_err(io_err("fsync dir", &dir))?;
        let salt_state = SplitMix64::new(
            opts.salt_seed
                .map_or_else(|| RandomState::new().hash_one(&dir), |s| s ^ last.seq),
        );
        let recovered = replay.recovered(&tail_path);
        let wal = Wal {
            dir,
            opts,
            metadata: recovered.metadata.clone(),
            _lock: lock,
            segments: replay.all.clone(),
            tail,
            tail_salt: replay.end.salt,
            tail_offset,
            durable_offset: tail_offset,
            last_index: replay.last_index.max(from.index),
            hard_state: recovered.hard_state,
            buf: Vec::new(),
            poisoned: None,
            salt_state,
        };
        Ok((wal, recovered))
    }

    /// Reads the WAL from the snapshot marker `from` without writing anything and without
    /// taking the lock: a torn tail is reported, not cut. For tools and verification.
    pub fn read_all(
        dir: impl AsRef<Path>,
        from: &SnapshotMarker,
        opts: &WalOptions,
    ) -> Result<Recovered> {
        let dir = dir.as_ref();
        let replay = replay(opts.vfs.as_ref(), dir, from, opts)?;
        let last = replay
            .segments
            .last()
            .expect("replay reads at least one segment");
        Ok(replay.recovered(&dir.join(last.file_name())))
    }

    /// Appends `entries` and, if it differs from the last one saved and is not empty,
    /// `hard_state`, then fsyncs. Returns once they are durable; writes and fsyncs nothing
    /// when there is nothing new. Entries must be contiguous, and the first may overwrite
    /// (start at or before) the end of the log but not leave a gap.
    pub fn save(&mut self, hard_state: &HardState, entries: &[Entry]) -> Result<()> {
        self.save_no_sync(hard_state, entries)?;
        self.sync()
    }

    /// [`Wal::save`] without the fsync, to batch several saves under one [`Wal::sync`].
    /// Nothing saved this way may be acknowledged before `sync` returns.
    pub fn save_no_sync(&mut self, hard_state: &HardState, entries: &[Entry]) -> Result<()> {
        self.check_usable()?;
        if let Some(first) = entries.first() {
            assert!(
                first.index >= 1 && first.index <= self.last_index + 1,
                "wal: first entry index {} would leave a gap after last index {}",
                first.index,
                self.last_index
            );
        }
        for pair in entries.windows(2) {
            assert_eq!(
                pair[1].index,
                pair[0].index + 1,
                "wal: entries must be contiguous"
            );
        }
        let write_hard_state = !hard_state.is_empty() && *hard_state != self.hard_state;
        if entries.is_empty() && !write_hard_state {
            return Ok(());
        }
        self.buf.clear();
        let mut w = self.frame_writer();
        for e in entries {
            w.entry(e)?;
        }
        if write_hard_state {
            w.hard_state(hard_state)?;
        }
        self.append_buf()?;
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        if write_hard_state {
            self.hard_state = *hard_state;
        }
        self.cut_if_full()
    }

    /// Makes everything written so far durable. A no-op if it already is.
    pub fn sync(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.durable_offset == self.tail_offset {
            return Ok(());
        }
        let path = self.tail_path();
        self.tail
            .sync_data()
            .map_err(io_err("fsync", &path))
            .map_err(|e| self.poison(e))?;
        self.durable_offset = self.tail_offset;
        Ok(())
    }

    /// Records that a snapshot exists at `marker` and fsyncs. Call it after the snapshot
    /// file is durable ([`crate::Snapshotter::save`]) and before [`Wal::purge_to`]. Entries
    /// after a received snapshot may then start at `marker.index + 1`.
    pub fn save_snapshot_marker(&mut self, marker: &SnapshotMarker) -> Result<()> {
        self.check_usable()?;
        self.buf.clear();
        self.frame_writer().snapshot(marker)?;
        self.append_buf()?;
        self.last_index = self.last_index.max(marker.index);
        self.sync()?;
        self.cut_if_full()
    }

    /// Deletes the oldest segments that lie wholly before `index` while more than `keep`
    /// segments (the tail included) remain; `keep` 0 deletes every such segment. A segment
    /// lies wholly before `index` if a later one starts at or before it: the newest segment
    /// whose first index is <= `index` is never deleted, so [`Wal::open`] from a snapshot at
    /// `index` still finds where to start. `index` must be the index of a snapshot whose
    /// file and WAL marker are durable. Returns the deleted files, oldest first. A failure
    /// only leaves old segments behind (a later purge retries); it does not poison.
    ///
    /// etcd's `--max-wals` is `keep`: it deletes WAL files beyond that count, and only
    /// those its snapshot released.
    pub fn purge_to(&mut self, index: u64, keep: usize) -> Result<Vec<PathBuf>> {
        self.check_usable()?;
        let before = match self.segments.iter().rposition(|s| s.first_index <= index) {
            Some(k) => k,
            None => return Ok(Vec::new()),
        };
        let purge = before.min(self.segments.len().saturating_sub(keep));
        let mut removed = Vec::new();
        // Oldest first: a crash or failure part way leaves a contiguous run of segments.
        let mut failed = None;
        for seg in &self.segments[..purge] {
            let path = self.dir.join(seg.file_name());
            match self.opts.vfs.remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(e) => {
                    failed = Some(io_err("remove", &path)(e));
                    break;
                }
            }
        }
        // The writer forgets only what is gone, so a later purge retries the rest.
        self.segments.drain(..removed.len());
        if let Some(e) = failed {
            return Err(e);
        }
        if !removed.is_empty() {
            self.opts
                .vfs
                .sync_dir(&self.dir)
                .map_err(io_err("fsync dir", &self.dir))?;
            tracing::info!(dir = %self.dir.display(), count = removed.len(), index, keep, "wal: purged segments");
        }
        Ok(removed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn metadata(&self) -> &Bytes {
        &self.metadata
    }

    /// Index of the last entry written (or of a later snapshot marker).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The last hard state written.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Paths of the live segments, oldest first.
    pub fn segment_files(&self) -> Vec<PathBuf> {
        self.segments
            .iter()
            .map(|s| self.dir.join(s.file_name()))
            .collect()
    }

    pub fn tail_position(&self) -> TailPosition {
        TailPosition {
            file: self.tail_path(),
            written_bytes: self.tail_offset,
            durable_bytes: self.durable_offset,
        }
    }

    fn tail_path(&self) -> PathBuf {
        self.dir.join(
            self.segments
                .last()
                .expect("a wal always has a tail segment")
                .file_name(),
        )
    }

    fn frame_writer(&mut self) -> FrameWriter<'_> {
        FrameWriter {
            buf: &mut self.buf,
            salt: self.tail_salt,
            durable_offset: self.durable_offset,
            max_record_bytes: self.opts.max_record_bytes,
        }
    }

    fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(cause) => Err(WalError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison(&mut self, e: WalError) -> WalError {
        tracing::error!(dir = %self.dir.display(), error = %e, "wal: I/O failed; refusing further writes");
        self.poisoned = Some(e.to_string());
        e
    }

    fn append_buf(&mut self) -> Result<()> {
        let path = self.tail_path();
        self.tail
            .write_all_at(self.tail_offset, &self.buf)
            .map_err(io_err("write", &path))
            .map_err(|e| self.poison(e))?;
        self.tail_offset += self.buf.len() as u64;
        Ok(())
    }

    fn cut_if_full(&mut self) -> Result<()> {
        if self.tail_offset < self.opts.segment_size_bytes {
            return Ok(());
        }
        self.cut().map_err(|e| self.poison(e))
    }

    /// Seals the tail and starts the next segment. The order matters for recovery: the old
    /// segment is fsynced before the new one can exist, and the new one is complete and
    /// fsynced before it gets its name.
    fn cut(&mut self) -> Result<()> {
        let old = self.tail_path();
        self.tail.sync_data().map_err(io_err("fsync", &old))?;
        self.durable_offset = self.tail_offset;
        let last = *self
            .segments
            .last()
            .expect("a wal always has a tail segment");
        let next = SegmentId {
            seq: last.seq + 1,
            first_index: self.last_index + 1,
        };
        let salt = self.salt_state.next_u64() as u32;
        let (tail, offset) = create_segment(
            self.opts.vfs.as_ref(),
            &self.dir,
            &self.opts,
            next,
            salt,
            &self.metadata,
            &self.hard_state,
            false,
        )?;
        self.segments.push(next);
        self.tail = tail;
        self.tail_salt = salt;
        self.tail_offset = offset;
        self.durable_offset = offset;
        tracing::debug!(file = %self.tail_path().display(), "wal: cut a new segment");
        Ok(())
    }
}

/// Writes a segment under a temporary name, preallocated, with its prologue (header,
/// metadata, the current hard state, and for the first segment the empty snapshot marker),
/// fsyncs it, then renames it into place and fsyncs the directory.
#[allow(clippy::too_many_arguments)]
fn create_segment(
    vfs: &dyn Vfs,
    dir: &Path,
    opts: &WalOptions,
    id: SegmentId,
    salt: u32,
    metadata: &[u8],
    hard_state: &HardState,
    first: bool,
) -> Result<(Box<dyn VfsFile>, u64)> {
    let mut buf = Vec::new();
    let mut w = FrameWriter {
        buf: &mut buf,
        salt: HEADER_SALT,
        durable_offset: 0,
        max_record_bytes: opts.max_record_bytes,
    };
    w.segment_header(id.seq, id.first_index, salt, opts.segment_size_bytes)?;
    w.salt = salt;
    w.metadata(metadata)?;
    if !hard_state.is_empty() {
        w.hard_state(hard_state)?;
    }
    if first {
        w.snapshot(&SnapshotMarker::default())?;
    }
    let path = dir.join(id.file_name());
    let tmp = dir.join(format!(
        "{}{}",
        id.file_name().trim_end_matches(".wal"),
        TMP_SUFFIX
    ));
    let mut file = vfs.create_file(&tmp).map_err(io_err("create", &tmp))?;
    file.set_len(opts.segment_size_bytes)
        .map_err(io_err("preallocate", &tmp))?;
    file.write_all_at(0, &buf).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("fsync", &tmp))?;
    vfs.rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    vfs.sync_dir(dir).map_err(io_err("fsync dir", dir))?;
    Ok((file, buf.len() as u64))
}

fn remove_tmp_segments(vfs: &dyn Vfs, dir: &Path) -> Result<()> {
    let tmps = list_tmp(vfs, dir)?;
    for tmp in &tmps {
        vfs.remove_file(tmp).map_err(io_err("remove", tmp))?;
    }
    if !tmps.is_empty() {
        vfs.sync_dir(dir).map_err(io_err("fsync dir", dir))?;
    }
    Ok(())
}

/// The state built while reading segments from a snapshot marker.
struct Replay {
    from: SnapshotMarker,
    /// Every segment in the directory, including those older than where reading started.
    all: Vec<SegmentId>,
    /// The segments read.
    segments: Vec<SegmentId>,
    metadata: Option<Bytes>,
    hard_state: HardState,
    entries: Vec<Entry>,
    last_index: u64,
    last_snapshot: Option<SnapshotMarker>,
    end: crate::segment::ScanEnd,
}

impl Replay {
    fn recovered(&self, tail_path: &Path) -> Recovered {
        Recovered {
            metadata: self.metadata.clone().unwrap_or_default(),
            hard_state: self.hard_state,
            entries: self.entries.clone(),
            last_snapshot: self.last_snapshot.clone(),
            torn_tail: self
                .end
                .torn
                .as_ref()
                .map(|Torn { offset, reason, .. }| TornTail {
                    file: tail_path.to_path_buf(),
                    offset: *offset,
                    reason: reason.clone(),
                }),
        }
    }

    fn apply(
        &mut self,
        path: &Path,
        offset: u64,
        record: Record,
        found_from: &mut bool,
    ) -> Result<()> {
        match record {
            Record::SegmentHeader { .. } => {}
            Record::Metadata(m) => match &self.metadata {
                Some(existing) if *existing != m => {
                    return Err(WalError::MetadataConflict {
                        file: path.to_path_buf(),
                    });
                }
                Some(_) => {}
                None => self.metadata = Some(m),
            },
            Record::Entry(e) => {
                self.last_index = e.index;
                if e.index <= self.from.index {
                    // Covered by the snapshot, but it still ends the log there: whatever
                    // followed it was overwritten.
                    self.entries.clear();
                    return Ok(());
                }
                let pos = (e.index - self.from.index - 1) as usize;
                if pos > self.entries.len() {
                    return Err(WalError::Corrupt {
                        file: path.to_path_buf(),
                        offset,
                        reason: format!(
                            "entry {} leaves a gap after index {}",
                            e.index,
                            self.from.index + self.entries.len() as u64
                        ),
                    });
                }
                self.entries.truncate(pos);
                self.entries.push(e);
            }
            Record::HardState(hs) => self.hard_state = hs,
            Record::Snapshot(m) => {
                if m.index == self.from.index {
                    if m.term != self.from.term {
                        return Err(WalError::SnapshotMismatch {
                            index: m.index,
                            expected_term: self.from.term,
                            found_term: m.term,
                        });
                    }
                    *found_from = true;
                }
                self.last_index = self.last_index.max(m.index);
                self.last_snapshot = Some(m);
            }
        }
        Ok(())
    }
}

/// Reads the segments that can hold the log after `from`, building the recovered state.
fn replay(vfs: &dyn Vfs, dir: &Path, from: &SnapshotMarker, opts: &WalOptions) -> Result<Replay> {
    let all = list_segments(vfs, dir)?;
    if all.is_empty() {
        return Err(WalError::NotFound {
            dir: dir.to_path_buf(),
        });
    }
    let not_found = || WalError::SnapshotNotFound {
        dir: dir.to_path_buf(),
        index: from.index,
        term: from.term,
    };
    let start = all
        .iter()
        .rposition(|s| s.first_index <= from.index)
        .ok_or_else(not_found)?;
    let segments = all[start..].to_vec();
    let mut replay = Replay {
        from: from.clone(),
        all: all.clone(),
        segments: segments.clone(),
        metadata: None,
        hard_state: HardState::default(),
        entries: Vec::new(),
        // What the writer's last index was when the first segment read was started.
        last_index: segments[0].first_index.saturating_sub(1),
        last_snapshot: None,
        end: crate::segment::ScanEnd {
            end_offset: 0,
            salt: 0,
            torn: None,
        },
    };
    let mut found_from = false;
    let mut visit = |path: &Path, offset: u64, record: Record| {
        replay.apply(path, offset, record, &mut found_from)
    };
    let end = read_segments(vfs, dir, &segments, opts.max_record_bytes, &mut visit)?;
    replay.end = end;
    if !found_from {
        return Err(not_found());
    }
    Ok(replay)
}

/// The snapshot markers in the whole WAL (read-only) that a snapshot file may be loaded
/// for: those at or below the last saved commit index. A marker above it can exist when
/// the process died between saving a received snapshot's marker and its hard state; that
/// snapshot's entries were never known to be committed here. For
/// [`crate::Snapshotter::load_matching`].
pub fn valid_snapshot_markers(
    dir: impl AsRef<Path>,
    opts: &WalOptions,
) -> Result<Vec<SnapshotMarker>> {
    let dir = dir.as_ref();
    let vfs = opts.vfs.as_ref();
    let segments = list_segments(vfs, dir)?;
    if segments.is_empty() {
        return Err(WalError::NotFound {
            dir: dir.to_path_buf(),
        });
    }
    let mut markers = Vec::new();
    let mut hard_state = HardState::default();
    let mut visit = |_: &Path, _: u64, record: Record| {
        match record {
            Record::Snapshot(m) => markers.push(m),
            Record::HardState(hs) => hard_state = hs,
            _ => {}
        }
        Ok(())
    };
    read_segments(vfs, dir, &segments, opts.max_record_bytes, &mut visit)?;
    markers.retain(|m| m.index <= hard_state.commit);
    Ok(markers)
}
