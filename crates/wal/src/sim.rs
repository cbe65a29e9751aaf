//! A simulated disk for crash tests: an in-memory [`Vfs`] that remembers which bytes and
//! names are durable and, on [`SimVfs::crash`], throws away what was not, tearing the
//! unsynced writes the way a power cut does.
//!
//! The model, per file (inode): `durable` holds what an fsync made durable; `pending` lists
//! the writes and truncations since. Readers see `durable` plus every pending operation, as
//! the page cache would show them. A crash keeps, at random (from the seed), either a prefix
//! of the pending operations with the last one cut short and possibly garbled, or an
//! arbitrary subset of the 512-byte sectors they touched (writeback reorders pages). Names
//! work the same way: create, rename and remove are pending until `sync_dir`, and a crash
//! keeps a random prefix of them. An fsync that fails loses its pending bytes for good while
//! readers keep seeing them, as Linux does after a writeback error.
//!
//! It is deterministic: the same seed and the same calls give the same disk.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use retcd_prng::SplitMix64;

use crate::vfs::{FileLock, Vfs, VfsFile};

/// The sector size of the simulated disk: the unit in which reordered writeback persists.
pub const SECTOR_BYTES: u64 = 512;

/// A failure to inject. Counts are of mutating calls (create, write, set_len, sync, rename,
/// remove, sync_dir) made after [`SimVfs::set_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The process "dies" at the `n`th mutating call from now (0 = the next one): that call
    /// and all later ones fail. A write that dies leaves a random prefix of its bytes in the
    /// page cache. Call [`SimVfs::crash`] next to lose what was not durable.
    CrashAt(u64),
    /// The `n`th fsync (of a file or a directory) from now fails with EIO; a failing file
    /// fsync loses that file's pending bytes for good. Later calls succeed.
    SyncFails(u64),
    /// The `n`th write from now fails (as with ENOSPC) without writing anything; later calls
    /// succeed.
    WriteFails(u64),
}

/// The simulated disk. Clones share the same disk.
#[derive(Clone, Debug)]
pub struct SimVfs {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
enum FileOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<FileOp>,
}

#[derive(Debug)]
enum DirOp {
    Link { path: PathBuf, inode: u64 },
    Unlink { path: PathBuf },
    Rename { from: PathBuf, to: PathBuf },
}

impl DirOp {
    fn touches(&self, dir: &Path) -> bool {
        match self {
            DirOp::Link { path, .. } | DirOp::Unlink { path } => path.parent() == Some(dir),
            DirOp::Rename { from, to } => from.parent() == Some(dir) || to.parent() == Some(dir),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            DirOp::Link { path, inode } => {
                names.insert(path.clone(), *inode);
            }
            DirOp::Unlink { path } => {
                names.remove(path);
            }
            DirOp::Rename { from, to } => {
                if let Some(inode) = names.remove(from) {
                    names.insert(to.clone(), inode);
                }
            }
        }
    }
}

#[derive(Debug)]
struct State {
    rng: SplitMix64,
    /// Bumped by every crash; handles from an earlier epoch are dead.
    epoch: u64,
    dirs: BTreeSet<PathBuf>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    pending_dir_ops: Vec<DirOp>,
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    locks: BTreeSet<PathBuf>,
    fault: Option<Fault>,
    crashed: bool,
    mutations: u64,
}

impl State {
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.rng.below(n) }
    }

    /// Counts a mutating call and decides whether an injected fault hits it.
    fn mutation(&mut self, kind: CallKind) -> Result<(), io::Error> {
        if self.crashed {
            return Err(io::Error::other("simulated crash: the process is dead"));
        }
        self.mutations += 1;
        let fault = match self.fault {
            Some(f) => f,
            None => return Ok(()),
        };
        let (remaining, applies) = match fault {
            Fault::CrashAt(n) => (n, true),
            Fault::SyncFails(n) => (n, kind == CallKind::Sync),
            Fault::WriteFails(n) => (n, kind == CallKind::Write),
        };
        if !applies {
            return Ok(());
        }
        if remaining > 0 {
            self.fault = Some(match fault {
                Fault::CrashAt(_) => Fault::CrashAt(remaining - 1),
                Fault::SyncFails(_) => Fault::SyncFails(remaining - 1),
                Fault::WriteFails(_) => Fault::WriteFails(remaining - 1),
            });
            return Ok(());
        }
        self.fault = None;
        match fault {
            Fault::CrashAt(_) => {
                self.crashed = true;
                Err(io::Error::other("simulated crash: the process died here"))
            }
            Fault::SyncFails(_) => Err(io::Error::other("simulated EIO on fsync")),
            Fault::WriteFails(_) => Err(io::Error::other("simulated ENOSPC on write")),
        }
    }

    fn check_epoch(&self, epoch: u64) -> io::Result<()> {
        if epoch != self.epoch {
            return Err(io::Error::other(
                "stale handle from before a simulated crash",
            ));
        }
        Ok(())
    }

    fn require_dir(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(parent) if self.dirs.contains(parent) => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory for {}", path.display()),
            )),
        }
    }

    fn inode_of(&self, path: &Path) -> io::Result<u64> {
        self.names.get(path).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found", path.display()),
            )
        })
    }

    fn push_file_op(&mut self, inode: u64, op: FileOp) {
        let node = self.inodes.get_mut(&inode).expect("a named inode exists");
        apply_file_op(&mut node.current, &op);
        node.pending.push(op);
    }

    /// What survives of one file's pending operations when the power goes.
    fn torn(&mut self, durable: &[u8], pending: &[FileOp]) -> Vec<u8> {
        let mut content = durable.to_vec();
        if pending.is_empty() {
            return content;
        }
        if self.below(3) == 0 {
            // Writeback in any order: each sector of each write independently made it or not.
            for op in pending {
                match op {
                    FileOp::SetLen(_) => apply_file_op(&mut content, op),
                    FileOp::Write { offset, data } => {
                        let end = offset + data.len() as u64;
                        let mut start = *offset;
                        while start < end {
                            let sector_end = ((start / SECTOR_BYTES) + 1) * SECTOR_BYTES;
                            let chunk_end = sector_end.min(end);
                            if self.below(2) == 0 {
                                let from = (start - offset) as usize;
                                let to = (chunk_end - offset) as usize;
                                let part = FileOp::Write {
                                    offset: start,
                                    data: data[from..to].to_vec(),
                                };
                                apply_file_op(&mut content, &part);
                            }
                            start = chunk_end;
                        }
                    }
                }
            }
            return content;
        }
        // A prefix of the operations, the last one cut short and perhaps garbled.
        let kept = self.below(pending.len() as u64 + 1) as usize;
        for op in &pending[..kept] {
            apply_file_op(&mut content, op);
        }
        if let Some(FileOp::Write { offset, data }) = pending.get(kept) {
            let cut = self.below(data.len() as u64 + 1) as usize;
            let mut part = data[..cut].to_vec();
            if cut > 0 && self.below(2) == 0 {
                let garbled = 1 + self.below(cut.min(16) as u64) as usize;
                for b in &mut part[cut - garbled..cut] {
                    *b = self.below(256) as u8;
                }
            }
            apply_file_op(
                &mut content,
                &FileOp::Write {
                    offset: *offset,
                    data: part,
                },
            );
        }
        content
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallKind {
    Write,
    Sync,
    Other,
}

fn apply_file_op(content: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[start..end].copy_from_slice(data);
        }
        FileOp::SetLen(len) => content.resize(*len as usize, 0),
    }
}

impl SimVfs {
    /// An empty disk whose crashes are drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        let state = State {
            rng: SplitMix64::new(seed),
            epoch: 0,
            dirs: BTreeSet::from([PathBuf::from("/")]),
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            pending_dir_ops: Vec::new(),
            inodes: BTreeMap::new(),
            next_inode: 1,
            locks: BTreeSet::new(),
            fault: None,
            crashed: false,
            mutations: 0,
        };
        SimVfs {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the model as consistent as it was at the
        // panic; tests that catch panics may keep using it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Power loss: everything not durable is dropped or torn, locks are released, injected
    /// faults are cleared and open handles stop working.
    pub fn crash(&self) {
        let mut st = self.lock_state();
        let mut names = st.durable_names.clone();
        let pending_dir_ops = std::mem::take(&mut st.pending_dir_ops);
        let kept = st.below(pending_dir_ops.len() as u64 + 1) as usize;
        for op in &pending_dir_ops[..kept] {
            op.apply(&mut names);
        }
        let live: BTreeSet<u64> = names.values().copied().collect();
        let inodes = std::mem::take(&mut st.inodes);
        let mut survivors = BTreeMap::new();
        for (id, node) in inodes {
            if !live.contains(&id) {
                continue;
            }
            let content = st.torn(&node.durable, &node.pending);
            survivors.insert(
                id,
                Inode {
                    durable: content.clone(),
                    current: content,
                    pending: Vec::new(),
                },
            );
        }
        st.inodes = survivors;
        st.names = names.clone();
        st.durable_names = names;
        st.locks.clear();
        st.fault = None;
        st.crashed = false;
        st.epoch += 1;
    }

    pub fn set_fault(&self, fault: Fault) {
        self.lock_state().fault = Some(fault);
    }

    pub fn clear_fault(&self) {
        self.lock_state().fault = None;
    }

    /// Mutating calls made so far: lets a test pick a crash point inside an operation.
    pub fn mutations(&self) -> u64 {
        self.lock_state().mutations
    }

    /// Changes a file's bytes behind the writer's back (bit rot, a bad sector, a torn
    /// write crafted by a test): `edit` sees what readers see now, and the result becomes
    /// the file's durable contents. Returns false if the file does not exist.
    pub fn corrupt(&self, path: &Path, edit: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut st = self.lock_state();
        let Some(&id) = st.names.get(path) else {
            return false;
        };
        let node = st.inodes.get_mut(&id).expect("a named inode exists");
        edit(&mut node.current);
        node.durable = node.current.clone();
        node.pending.clear();
        true
    }
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    inode: u64,
    epoch: u64,
}

struct SimLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    epoch: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if st.epoch == self.epoch {
            st.locks.remove(&self.path);
        }
    }
}

impl Vfs for SimVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock_state();
        st.mutation(CallKind::Other)?;
        // Directories are durable at once: the WAL creates them only at bootstrap, before
        // anything it must not lose.
        for ancestor in dir.ancestors() {
            st.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock_state();
        if !st.dirs.contains(dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found", dir.display()),
            ));
        }
        let names = st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned));
        let dirs = st
            .dirs
            .iter()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned));
        Ok(names.chain(dirs).collect())
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.lock_state();
        let id = st.inode_of(path)?;
        Ok(st.inodes[&id].current.clone())
    }

    fn create_file(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let mut st = self.lock_state();
        st.mutation(CallKind::Other)?;
        st.require_dir(path)?;
        let id = match st.names.get(path) {
            Some(&id) => {
                st.push_file_op(id, FileOp::SetLen(0));
                id
            }
            None => {
                let id = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(id, Inode::default());
                st.names.insert(path.to_path_buf(), id);
                st.pending_dir_ops.push(DirOp::Link {
                    path: path.to_path_buf(),
                    inode: id,
                });
                id
            }
        };
        Ok(Box::new(SimFile {
            state: Arc::clone(&self.state),
            inode: id,
            epoch: st.epoch,
        }))
    }

    fn open_file(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let st = self.lock_state();
        let id = st.inode_of(path)?;
        Ok(Box::new(SimFile {
            state: Arc::clone(&self.state),
            inode: id,
            epoch: st.epoch,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock_state();
        st.mutation(CallKind::Other)?;
        let id = st.inode_of(from)?;
        st.require_dir(to)?;
        st.names.remove(from);
        st.names.insert(to.to_path_buf(), id);
        st.pending_dir_ops.push(DirOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock_state();
        st.mutation(CallKind::Other)?;
        st.inode_of(path)?;
        st.names.remove(path);
        st.pending_dir_ops.push(DirOp::Unlink {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock_state();
        st.mutation(CallKind::Sync)?;
        if !st.dirs.contains(dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found", dir.display()),
            ));
        }
        let ops = std::mem::take(&mut st.pending_dir_ops);
        let (now, later): (Vec<DirOp>, Vec<DirOp>) =
            ops.into_iter().partition(|op| op.touches(dir));
        for op in &now {
            op.apply(&mut st.durable_names);
        }
        st.pending_dir_ops = later;
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<FileLock>> {
        let mut st = self.lock_state();
        if st.crashed {
            return Err(io::Error::other("simulated crash: the process is dead"));
        }
        if !st.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        let guard = SimLock {
            state: Arc::clone(&self.state),
            path: path.to_path_buf(),
            epoch: st.epoch,
        };
        Ok(Some(FileLock::new(Box::new(guard))))
    }
}

impl SimFile {
    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> io::Result<T>) -> io::Result<T> {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        st.check_epoch(self.epoch)?;
        f(&mut st)
    }

    fn sync(&mut self) -> io::Result<()> {
        let inode = self.inode;
        self.with_state(|st| {
            let result = st.mutation(CallKind::Sync);
            if st.crashed {
                // The process died before the fsync: the bytes stay pending, to be torn.
                return result;
            }
            let node = st
                .inodes
                .get_mut(&inode)
                .expect("an open inode exists until a crash");
            let pending = std::mem::take(&mut node.pending);
            if result.is_ok() {
                for op in &pending {
                    apply_file_op(&mut node.durable, op);
                }
            }
            // On failure the pending operations are gone for good: the kernel marked the
            // pages clean, so no later fsync will write them, yet readers still see them.
            result
        })
    }
}

impl VfsFile for SimFile {
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let inode = self.inode;
        self.with_state(|st| {
            if let Err(e) = st.mutation(CallKind::Write) {
                if st.crashed {
                    // The process died inside write(2): part of the data reached the cache.
                    let cut = st.below(data.len() as u64 + 1) as usize;
                    st.push_file_op(
                        inode,
                        FileOp::Write {
                            offset,
                            data: data[..cut].to_vec(),
                        },
                    );
                }
                return Err(e);
            }
            st.push_file_op(
                inode,
                FileOp::Write {
                    offset,
                    data: data.to_vec(),
                },
            );
            Ok(())
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let inode = self.inode;
        self.with_state(|st| {
            st.mutation(CallKind::Other)?;
            st.push_file_op(inode, FileOp::SetLen(len));
            Ok(())
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(vfs: &SimVfs, path: &Path, data: &[u8], sync: bool) {
        let mut f = vfs.create_file(path).unwrap();
        f.write_all_at(0, data).unwrap();
        if sync {
            f.sync_all().unwrap();
        }
    }

    #[test]
    fn synced_file_with_synced_name_survives_any_crash() {
        for seed in 0..50 {
            let vfs = SimVfs::new(seed);
            vfs.create_dir_all(Path::new("/d")).unwrap();
            write_file(&vfs, Path::new("/d/a"), b"hello", true);
            vfs.sync_dir(Path::new("/d")).unwrap();
            vfs.crash();
            assert_eq!(
                vfs.read_file(Path::new("/d/a")).unwrap(),
                b"hello",
                "seed {seed}"
            );
        }
    }

    #[test]
    fn unsynced_bytes_are_sometimes_lost_and_never_invented() {
        let (mut lost, mut kept) = (0, 0);
        for seed in 0..200 {
            let vfs = SimVfs::new(seed);
            vfs.create_dir_all(Path::new("/d")).unwrap();
            let path = Path::new("/d/a");
            let mut f = vfs.create_file(path).unwrap();
            f.write_all_at(0, &[7u8; 2048]).unwrap();
            f.sync_all().unwrap();
            vfs.sync_dir(Path::new("/d")).unwrap();
            f.write_all_at(2048, &[9u8; 2048]).unwrap();
            vfs.crash();
            let data = vfs.read_file(path).unwrap();
            assert!(data.len() <= 4096, "seed {seed}");
            assert_eq!(
                &data[..2048],
                &[7u8; 2048][..],
                "seed {seed}: durable bytes changed"
            );
            if data.len() == 4096 && data[2048..].iter().all(|b| *b == 9) {
                kept += 1;
            } else {
                lost += 1;
            }
        }
        assert!(lost > 20 && kept > 5, "lost {lost} kept {kept}");
    }

    #[test]
    fn unsynced_name_may_vanish() {
        let mut vanished = 0;
        for seed in 0..100 {
            let vfs = SimVfs::new(seed);
            vfs.create_dir_all(Path::new("/d")).unwrap();
            write_file(&vfs, Path::new("/d/a"), b"x", true);
            vfs.crash();
            if vfs.read_file(Path::new("/d/a")).is_err() {
                vanished += 1;
            }
        }
        assert!(vanished > 10 && vanished < 90, "vanished {vanished}");
    }

    #[test]
    fn failed_fsync_loses_bytes_even_if_a_later_fsync_succeeds() {
        let vfs = SimVfs::new(1);
        vfs.create_dir_all(Path::new("/d")).unwrap();
        let path = Path::new("/d/a");
        let mut f = vfs.create_file(path).unwrap();
        f.sync_all().unwrap();
        vfs.sync_dir(Path::new("/d")).unwrap();
        f.write_all_at(0, b"lost").unwrap();
        vfs.set_fault(Fault::SyncFails(0));
        assert!(f.sync_data().is_err());
        assert!(f.sync_data().is_ok());
        assert_eq!(
            vfs.read_file(path).unwrap(),
            b"lost",
            "readers still see the page cache"
        );
        vfs.crash();
        assert_eq!(vfs.read_file(path).unwrap(), b"");
    }

    #[test]
    fn crash_fault_stops_every_later_mutation_and_kills_handles() {
        let vfs = SimVfs::new(3);
        vfs.create_dir_all(Path::new("/d")).unwrap();
        let mut f = vfs.create_file(Path::new("/d/a")).unwrap();
        vfs.set_fault(Fault::CrashAt(1));
        f.write_all_at(0, b"ok").unwrap();
        assert!(f.write_all_at(2, b"dies").is_err());
        assert!(f.sync_all().is_err());
        assert!(vfs.create_file(Path::new("/d/b")).is_err());
        vfs.crash();
        assert!(
            f.write_all_at(0, b"stale").is_err(),
            "handles die with the process"
        );
        assert!(
            vfs.create_file(Path::new("/d/b")).is_ok(),
            "a restarted process may write"
        );
    }
}
