//! bbolt's file format, the backend of etcd: read any bbolt file etcd writes, and write
//! files etcd's tools and etcd itself accept.
//!
//! retcd keeps its own data in redb; this crate is for crossing over: snapshots that
//! `etcdctl snapshot status` and `snapshot restore` read (`Maintenance.Snapshot`), and
//! restoring etcd's snapshots into retcd. No maintained Rust crate reads or writes the
//! format, so it is here, small and with no dependencies.
//!
//! - [`format`]: page headers, meta pages, elements, bucket headers, FNV-1a.
//! - [`read`]: [`Db`] opens a file (or bytes) and walks its buckets in key order,
//!   checking as it goes; [`Db::check`] is bbolt's consistency check. Hostile input
//!   gets an error: never a panic, a hang, or an allocation beyond the input's size.
//! - [`write`]: [`Plan`] lays a file out in a first pass over the data and writes it
//!   front to back in a second, one page in memory at a time.
//!
//! The format, as bbolt 1.3 (etcd 3.4) writes it: fixed-size pages (the OS page size,
//! 4096 on Linux); pages 0 and 1 are meta pages (magic, version 2, page size, the root
//! bucket's header, the freelist page or none, the page count, the transaction id, an
//! FNV-1a checksum), the newer valid one in use; every bucket is a B+tree of branch and
//! leaf pages (16-byte elements pointing at their keys and values, which follow) whose
//! keys are sorted bytewise; a bucket is a leaf element flagged as such whose value is
//! its root page id, or, for a small bucket, the whole leaf page inline; a page too
//! small for its contents continues on "overflow" pages; integers are little-endian.

pub mod format;
pub mod read;
pub mod write;

pub use read::{Db, Error, PairFn, Source, Visit};
pub use write::{PairSink, Pairs, Plan};
