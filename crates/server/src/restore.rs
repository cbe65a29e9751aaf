//! Restoring a snapshot (etcd's or retcd's: both are etcd's backend file) into a new
//! retcd data dir, as `etcdctl snapshot restore` makes an etcd one: the data of the
//! snapshot, the members of `--initial-cluster`, new member and cluster ids by etcd's
//! rules. This is the way from etcd to retcd (and, with `Maintenance.Snapshot`, back).
//!
//! What it writes: the backend with every key-value record, lease, alarm, the auth store
//! and the compaction revisions of the snapshot (the membership, the consistent index
//! and the term are not carried over: the cluster is a new one), and a WAL that starts a
//! new cluster of the `--initial-cluster` members (the same bootstrap as a member's first
//! start). Each member of the new cluster is restored from the same file with its own
//! `--name` and `--initial-advertise-peer-urls`; then each starts with its data dir.
//!
//! etcd 3.6's `--bump-revision N --mark-compacted` (Kubernetes restores with them so that
//! revisions never go backwards under its watch caches) schedule a compaction at the
//! snapshot's last revision + N: the store finishes it when it opens, and its revision
//! starts there, so the first write after the restore is above every revision the old
//! cluster could have handed out, and a watch from an older revision is told it was
//! compacted.

use std::ops::ControlFlow;
use std::path::PathBuf;

use retcd_backend::{Backend as _, Bucket, RedbBackend, RedbConfig, WriteTx};
use retcd_bbolt::{Db, Visit};

use crate::config::Config;
use crate::ids::{self, ClusterId, MemberId};
use crate::membership::Member;
use crate::node::DataLayout;

/// `etcdctl snapshot restore`'s flags (3.4's, and 3.6's revision bump).
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub snapshot: PathBuf,
    /// Default: `<name>.etcd`.
    pub data_dir: Option<PathBuf>,
    pub wal_dir: Option<PathBuf>,
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub skip_hash_check: bool,
    pub bump_revision: u64,
    pub mark_compacted: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            snapshot: PathBuf::new(),
            data_dir: None,
            wal_dir: None,
            name: "default".into(),
            initial_cluster: "default=http://localhost:2380".into(),
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            skip_hash_check: false,
            bump_revision: 0,
            mark_compacted: false,
        }
    }
}

/// What a restore wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub member_id: MemberId,
    pub cluster_id: ClusterId,
    /// The store's revision after the restore (bumped, if asked).
    pub revision: i64,
    pub records: u64,
    pub leases: u64,
}

/// Bytes of key-value data per backend commit while importing: the import of a large
/// snapshot never holds more than this in one write transaction.
const COMMIT_EVERY: usize = 64 * 1024 * 1024;

/// Restores `opts.snapshot` into a new data dir. On failure nothing is left behind.
pub fn restore(opts: &RestoreOptions) -> Result<Restored, String> {
    if opts.bump_revision > 0 && !opts.mark_compacted {
        return Err("--mark-compacted required if --bump-revision > 0".into());
    }
    let config = Config {
        name: opts.name.clone(),
        initial_cluster: opts.initial_cluster.clone(),
        initial_cluster_token: opts.initial_cluster_token.clone(),
        initial_advertise_peer_urls: opts.initial_advertise_peer_urls.clone(),
        data_dir: opts.data_dir.clone(),
        wal_dir: opts.wal_dir.clone(),
        ..Config::default()
    };
    config.check_initial_cluster()?;
    let members = crate::server::initial_members(&config).map_err(|e| e.to_string())?;
    let member_id = ids::member_id(
        &opts.initial_advertise_peer_urls,
        &opts.initial_cluster_token,
    );
    let cluster_id = ids::cluster_id(&members.iter().map(|m| m.id).collect::<Vec<_>>());
    let data_dir = config.data_dir();
    if data_dir.exists() {
        return Err(format!(
            "data-dir {:?} exists",
            data_dir.display().to_string()
        ));
    }
    if let Some(wal) = &opts.wal_dir
        && wal.exists()
    {
        return Err(format!("wal-dir {:?} exists", wal.display().to_string()));
    }
    let file = std::fs::File::open(&opts.snapshot)
        .map_err(|e| format!("open {}: {e}", opts.snapshot.display()))?;
    check_hash(&file, opts.skip_hash_check)?;
    let db = Db::open(file).map_err(|e| format!("snapshot file: {e}"))?;
    let problems = db.check(20);
    if !problems.is_empty() {
        return Err(format!(
            "snapshot file integrity check failed. {} errors found.\n{}",
            problems.len(),
            problems.join("\n")
        ));
    }
    let outcome = write_data_dir(&db, &config, member_id, cluster_id, &members, opts);
    if outcome.is_err() {
        let _ = std::fs::remove_dir_all(&data_dir);
        if let Some(wal) = &opts.wal_dir {
            let _ = std::fs::remove_dir_all(wal);
        }
    }
    outcome
}

/// etcd's rule: a file whose size is 32 past a multiple of 512 ends with the SHA-256 of
/// the rest, which must match unless the check is skipped; a file without one needs the
/// check skipped (a copy of a data dir's `db` has none).
fn check_hash(file: &std::fs::File, skip: bool) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let has_hash = len % 512 == 32;
    if !has_hash {
        return if skip {
            Ok(())
        } else {
            Err("snapshot missing hash but --skip-hash-check=false".into())
        };
    }
    if skip {
        return Ok(());
    }
    let mut f = file;
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut left = len - 32;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n]).map_err(|e| e.to_string())?;
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    let mut want = [0u8; 32];
    f.read_exact(&mut want).map_err(|e| e.to_string())?;
    let got = sha.finish();
    if got.as_ref() != want {
        // Go's %v of a byte slice: [1 2 3].
        let go = |b: &[u8]| {
            let items: Vec<String> = b.iter().map(u8::to_string).collect();
            format!("[{}]", items.join(" "))
        };
        return Err(format!(
            "expected sha256 {}, got {}",
            go(&want),
            go(got.as_ref())
        ));
    }
    Ok(())
}

fn io_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn write_data_dir(
    db: &Db<std::fs::File>,
    config: &Config,
    member_id: MemberId,
    cluster_id: ClusterId,
    members: &[Member],
    opts: &RestoreOptions,
) -> Result<Restored, String> {
    let layout = DataLayout::new(&config.data_dir(), config.wal_dir.as_deref());
    layout.prepare().map_err(io_err)?;
    let backend = RedbBackend::open(&layout.db_path, &RedbConfig::default()).map_err(io_err)?;
    let mut import = Import::new(&backend)?;
    let mut bucket: Option<Vec<u8>> = None;
    let mut depth = 0usize;
    let mut failed: Option<String> = None;
    db.walk(&mut |v| {
        let step = match v {
            Visit::Enter(name) => {
                depth += 1;
                if depth == 1 {
                    bucket = Some(name.to_vec());
                }
                Ok(())
            }
            Visit::Leave => {
                depth -= 1;
                Ok(())
            }
            Visit::Pair(k, v) if depth == 1 => match bucket.as_deref() {
                Some(name) => import.pair(name, k, v),
                None => Ok(()),
            },
            Visit::Pair(..) => Ok(()),
        };
        match step {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        }
    })
    .map_err(|e| format!("snapshot file: {e}"))?;
    if let Some(e) = failed {
        return Err(e);
    }
    let (records, leases, last) = (import.records, import.leases, import.last_revision);
    if opts.bump_revision > 0 {
        let bumped = last
            .checked_add(i64::try_from(opts.bump_revision).map_err(io_err)?)
            .ok_or("--bump-revision is too large")?;
        import.put(
            Bucket::Meta,
            retcd_backend::meta::SCHEDULED_COMPACT_KEY,
            &retcd_mvcc::Revision::new(bumped, 0).to_bytes(),
        )?;
    }
    import.finish()?;
    // Opening the store checks every record and finishes a scheduled compaction (the
    // revision bump), so the first start serves at once.
    let kv = retcd_mvcc::KvStore::open(backend).map_err(|e| format!("restored store: {e}"))?;
    let revision = kv.current_revision();
    drop(kv);
    crate::node::create_bootstrap_wal(&layout, member_id, cluster_id, members).map_err(io_err)?;
    Ok(Restored {
        data_dir: layout.data_dir.clone(),
        member_id,
        cluster_id,
        revision,
        records,
        leases,
    })
}

/// Pairs of etcd's buckets written into retcd's, committed in bounded transactions.
struct Import<'b> {
    backend: &'b RedbBackend,
    tx: Option<<RedbBackend as retcd_backend::Backend>::WriteTx<'b>>,
    pending: usize,
    records: u64,
    leases: u64,
    last_revision: i64,
    now_ms: i64,
}

impl<'b> Import<'b> {
    fn new(backend: &'b RedbBackend) -> Result<Import<'b>, String> {
        Ok(Import {
            backend,
            tx: None,
            pending: 0,
            records: 0,
            leases: 0,
            last_revision: 1,
            now_ms: crate::clock::wall_clock_ms(),
        })
    }

    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), String> {
        if self.tx.is_none() {
            let mut tx = self.backend.begin_write().map_err(io_err)?;
            // Durable once, at the end: a restore that fails is removed whole.
            tx.set_durable(false).map_err(io_err)?;
            self.tx = Some(tx);
        }
        let tx = self.tx.as_mut().expect("opened above");
        tx.put(bucket, key, value).map_err(io_err)?;
        self.pending += key.len() + value.len();
        if self.pending >= COMMIT_EVERY {
            self.tx.take().expect("open").commit().map_err(io_err)?;
            self.pending = 0;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), String> {
        let mut tx = match self.tx.take() {
            Some(tx) => tx,
            None => self.backend.begin_write().map_err(io_err)?,
        };
        tx.set_durable(true).map_err(io_err)?;
        tx.commit().map_err(io_err)
    }

    /// One pair of etcd's bucket `bucket`, translated into retcd's.
    fn pair(&mut self, bucket: &[u8], key: &[u8], value: &[u8]) -> Result<(), String> {
        let bad = |what: &str| {
            format!(
                "snapshot bucket {}: {what}",
                String::from_utf8_lossy(bucket)
            )
        };
        match bucket {
            b"key" => {
                let record =
                    retcd_mvcc::record_from_etcd(key, value).map_err(|e| bad(&e.to_string()))?;
                let rk =
                    retcd_mvcc::RevisionKey::from_bytes(key).map_err(|e| bad(&e.to_string()))?;
                self.last_revision = self.last_revision.max(rk.rev.main);
                self.records += 1;
                self.put(Bucket::Key, key, &record)
            }
            b"lease" => {
                let (id, ttl) = crate::etcd_db::lease_from_etcd(key, value)
                    .ok_or_else(|| bad("a lease does not decode"))?;
                let record = retcd_lease::record::Record {
                    id: retcd_lease::LeaseId(id),
                    ttl,
                    wall_ms: self.now_ms,
                    renewed_index: 0,
                };
                self.leases += 1;
                self.put(
                    Bucket::Lease,
                    &retcd_lease::record::key(record.id),
                    &retcd_lease::record::encode(&record),
                )
            }
            b"alarm" => {
                let (member, alarm) = crate::etcd_db::alarm_from_etcd(key)
                    .ok_or_else(|| bad("an alarm key does not decode"))?;
                let mut k = member.to_be_bytes().to_vec();
                k.extend(alarm.to_be_bytes());
                self.put(Bucket::Alarm, &k, &[])
            }
            b"meta" => match key {
                b"scheduledCompactRev" | b"finishedCompactRev" => {
                    retcd_mvcc::Revision::from_bytes(value).map_err(|e| bad(&e.to_string()))?;
                    self.put(Bucket::Meta, key, value)
                }
                // The consistent index and term are the old cluster's.
                _ => Ok(()),
            },
            b"auth" => self.put(Bucket::Auth, key, value),
            b"authUsers" => self.put(Bucket::AuthUsers, key, value),
            b"authRoles" => self.put(Bucket::AuthRoles, key, value),
            // The new cluster's members come from --initial-cluster; the cluster version
            // is not kept by retcd.
            _ => Ok(()),
        }
    }
}
