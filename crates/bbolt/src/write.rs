//! Writing a bbolt file front to back, for streaming it (a snapshot sent as it is made).
//!
//! bbolt's meta pages come first and name the root page, which depends on everything
//! after it, so writing takes two passes over the same data: [`Plan::new`] lays the
//! pages out (which pairs go in which leaf, the branch pages above them, every page id)
//! keeping only each page's first key, and [`Plan::write`] writes the pages in id
//! order, one page in memory at a time. The data must not change between the passes
//! (read it from one read transaction); if it does, the write fails.
//!
//! Layout: meta pages 0 and 1 (txid 1 and 0, the same tree), then each bucket's leaf
//! pages followed by its branch pages level by level, then the root bucket's pages
//! (one element per bucket), then an empty freelist page; every page is reachable, so
//! the freelist is empty. Leaves are filled up to the page size; an element larger than
//! a page gets a page of its own with overflow pages, as bbolt does. Only top-level
//! buckets are written (etcd has no others), each as a tree of its own (never inline).

use std::io::{self, Write};

use crate::format::*;

/// What [`Pairs::scan`] calls with each bucket name, key and value.
pub type PairSink<'f> = dyn FnMut(&[u8], &[u8], &[u8]) -> io::Result<()> + 'f;

/// The data to write: `scan` calls `f(bucket, key, value)` for every pair, buckets in
/// the order given to [`Plan::new`], keys ascending within each bucket.
pub trait Pairs {
    fn scan(&mut self, f: &mut PairSink<'_>) -> io::Result<()>;
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A leaf page's place and contents.
#[derive(Debug)]
struct LeafPlan {
    pgid: u64,
    count: u16,
    /// Bytes used (header, elements, keys and values).
    size: u64,
    first_key: Vec<u8>,
}

impl LeafPlan {
    fn pages(&self, ps: u64) -> u64 {
        self.size.div_ceil(ps).max(1)
    }
}

/// A branch page: its children's first keys and page ids.
#[derive(Debug)]
struct BranchPlan {
    pgid: u64,
    children: Vec<(Vec<u8>, u64)>,
}

impl BranchPlan {
    fn size(&self) -> u64 {
        (PAGE_HEADER
            + self
                .children
                .iter()
                .map(|(k, _)| ELEMENT + k.len())
                .sum::<usize>()) as u64
    }
}

/// One tree: leaves in key order, then branch levels bottom-up.
#[derive(Debug, Default)]
struct TreePlan {
    leaves: Vec<LeafPlan>,
    levels: Vec<Vec<BranchPlan>>,
    root: u64,
}

/// Whether an element of `elem` bytes starts a new page after `count` elements filling
/// `size` bytes.
fn starts_page(count: u16, size: u64, elem: u64, ps: u64) -> bool {
    count > 0 && (size + elem > ps || count == COUNT_ESCAPE - 1)
}

/// Assigns ids to the branch levels above `tree.leaves`, from `next`; returns the next
/// free id.
fn plan_branches(tree: &mut TreePlan, mut next: u64, ps: u64) -> u64 {
    let mut level: Vec<(Vec<u8>, u64)> = tree
        .leaves
        .iter()
        .map(|l| (l.first_key.clone(), l.pgid))
        .collect();
    while level.len() > 1 {
        let mut pages: Vec<BranchPlan> = Vec::new();
        let mut size = PAGE_HEADER as u64;
        let mut current: Vec<(Vec<u8>, u64)> = Vec::new();
        for (key, child) in level {
            let elem = (ELEMENT + key.len()) as u64;
            if starts_page(current.len() as u16, size, elem, ps) {
                pages.push(BranchPlan {
                    pgid: 0,
                    children: std::mem::take(&mut current),
                });
                size = PAGE_HEADER as u64;
            }
            size += elem;
            current.push((key, child));
        }
        pages.push(BranchPlan {
            pgid: 0,
            children: current,
        });
        for p in &mut pages {
            p.pgid = next;
            next += p.size().div_ceil(ps).max(1);
        }
        level = pages
            .iter()
            .map(|p| (p.children[0].0.clone(), p.pgid))
            .collect();
        tree.levels.push(pages);
    }
    tree.root = level.first().map_or(0, |(_, id)| *id);
    next
}

/// Groups a stream of leaf elements into leaf pages.
struct LeafPacker {
    ps: u64,
    tree: TreePlan,
    open: Option<LeafPlan>,
}

impl LeafPacker {
    fn new(ps: u64) -> LeafPacker {
        LeafPacker {
            ps,
            tree: TreePlan::default(),
            open: None,
        }
    }

    fn add(&mut self, key: &[u8], value_len: usize, next: &mut u64) {
        let elem = (ELEMENT + key.len() + value_len) as u64;
        if let Some(open) = &self.open
            && starts_page(open.count, open.size, elem, self.ps)
        {
            self.close(next);
        }
        let open = self.open.get_or_insert_with(|| LeafPlan {
            pgid: 0,
            count: 0,
            size: PAGE_HEADER as u64,
            first_key: key.to_vec(),
        });
        open.count += 1;
        open.size += elem;
    }

    fn close(&mut self, next: &mut u64) {
        if let Some(mut leaf) = self.open.take() {
            leaf.pgid = *next;
            *next += leaf.pages(self.ps);
            self.tree.leaves.push(leaf);
        }
    }

    /// The tree, with an empty leaf if nothing was added, and its branch pages.
    fn finish(mut self, next: &mut u64) -> TreePlan {
        self.close(next);
        if self.tree.leaves.is_empty() {
            self.tree.leaves.push(LeafPlan {
                pgid: *next,
                count: 0,
                size: PAGE_HEADER as u64,
                first_key: Vec::new(),
            });
            *next += 1;
        }
        *next = plan_branches(&mut self.tree, *next, self.ps);
        self.tree
    }
}

/// Where every page of the file goes; made by a first pass over the data.
#[derive(Debug)]
pub struct Plan {
    page_size: u32,
    names: Vec<Vec<u8>>,
    buckets: Vec<TreePlan>,
    root: TreePlan,
    freelist: u64,
    pgid: u64,
}

impl Plan {
    /// Lays out a file of `page_size` pages holding the top-level buckets `names`
    /// (strictly ascending) and the pairs `pairs` scans.
    pub fn new(page_size: u32, names: Vec<Vec<u8>>, pairs: &mut dyn Pairs) -> io::Result<Plan> {
        if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(bad(format!("page size {page_size} is not supported")));
        }
        if names.iter().any(|n| n.is_empty() || n.len() > MAX_KEY_SIZE)
            || names.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(bad("bucket names must be non-empty and strictly ascending"));
        }
        let ps = u64::from(page_size);
        let mut next = 2u64;
        let mut buckets = Vec::with_capacity(names.len());
        let mut packer = LeafPacker::new(ps);
        let mut last: Option<Vec<u8>> = None;
        pairs.scan(&mut |bucket, key, value| {
            let at = names
                .iter()
                .position(|n| n.as_slice() == bucket)
                .ok_or_else(|| bad(format!("pair for an unknown bucket {bucket:?}")))?;
            if at < buckets.len() {
                return Err(bad("pairs must come bucket by bucket, in the given order"));
            }
            while buckets.len() < at {
                let done = std::mem::replace(&mut packer, LeafPacker::new(ps));
                buckets.push(done.finish(&mut next));
                last = None;
            }
            if key.is_empty() || key.len() > MAX_KEY_SIZE {
                return Err(bad(format!(
                    "a key of {} bytes cannot be stored",
                    key.len()
                )));
            }
            if value.len() > (u32::MAX as usize) - 2 * ps as usize - key.len() {
                return Err(bad(format!(
                    "a value of {} bytes cannot be stored",
                    value.len()
                )));
            }
            if last.as_deref().is_some_and(|l| key <= l) {
                return Err(bad("keys must be strictly ascending within a bucket"));
            }
            last = Some(key.to_vec());
            packer.add(key, value.len(), &mut next);
            Ok(())
        })?;
        while buckets.len() < names.len() {
            let done = std::mem::replace(&mut packer, LeafPacker::new(ps));
            buckets.push(done.finish(&mut next));
        }
        let mut root = LeafPacker::new(ps);
        for name in &names {
            root.add(name, BUCKET_HEADER, &mut next);
        }
        let root = root.finish(&mut next);
        let freelist = next;
        Ok(Plan {
            page_size,
            names,
            buckets,
            root,
            freelist,
            pgid: freelist + 1,
        })
    }

    /// The file's length in bytes.
    pub fn size(&self) -> u64 {
        self.pgid * u64::from(self.page_size)
    }

    /// The number of pages.
    pub fn pages(&self) -> u64 {
        self.pgid
    }

    /// Writes the file to `out`, scanning `pairs` again (the same data as the plan's).
    /// Returns the bytes written ([`Plan::size`]).
    pub fn write(&self, pairs: &mut dyn Pairs, out: &mut dyn Write) -> io::Result<u64> {
        let ps = u64::from(self.page_size);
        let mut w = PageWriter {
            out,
            ps,
            written: 0,
            buf: Vec::new(),
        };
        for (id, txid) in [(0u64, 1u64), (1, 0)] {
            let meta = Meta {
                magic: MAGIC,
                version: VERSION,
                page_size: self.page_size,
                flags: 0,
                root: BucketHeader {
                    root: self.root.root,
                    sequence: 0,
                },
                freelist: self.freelist,
                pgid: self.pgid,
                txid,
                checksum: 0,
            };
            let buf = w.start(id, META_PAGE, 0, 1);
            buf.extend_from_slice(&meta.encode());
            w.finish(id)?;
        }
        let changed = || bad("the data changed between planning and writing the file");
        // (bucket, leaf within it) of the next leaf, and the one being filled.
        let mut bucket = 0usize;
        let mut leaf = 0usize;
        let mut filling: Option<LeafFill> = None;
        pairs.scan(&mut |name, key, value| {
            let at = self
                .names
                .iter()
                .position(|n| n.as_slice() == name)
                .ok_or_else(changed)?;
            while bucket < at {
                if filling.is_some()
                    || leaf < self.buckets[bucket].leaves.len()
                        && self.buckets[bucket].leaves[leaf].count > 0
                {
                    return Err(changed());
                }
                // An empty bucket: its one empty leaf.
                self.write_empty_leaves(&mut w, bucket, &mut leaf)?;
                self.write_branches(&mut w, &self.buckets[bucket])?;
                bucket += 1;
                leaf = 0;
            }
            if at != bucket {
                return Err(changed());
            }
            let tree = &self.buckets[bucket];
            let fill = match filling.as_mut() {
                Some(f) => f,
                None => {
                    let plan = tree.leaves.get(leaf).ok_or_else(changed)?;
                    if plan.first_key != key {
                        return Err(changed());
                    }
                    filling.insert(LeafFill::start(&mut w, plan, ps))
                }
            };
            fill.add(&mut w, 0, key, value)?;
            let plan = &tree.leaves[leaf];
            if fill.added == plan.count {
                let fill = filling.take().ok_or_else(changed)?;
                fill.finish(&mut w, plan)?;
                leaf += 1;
                if leaf == tree.leaves.len() {
                    self.write_branches(&mut w, tree)?;
                    bucket += 1;
                    leaf = 0;
                }
            }
            Ok(())
        })?;
        if filling.is_some() {
            return Err(changed());
        }
        while bucket < self.buckets.len() {
            if leaf > 0 || self.buckets[bucket].leaves[0].count > 0 {
                return Err(changed());
            }
            self.write_empty_leaves(&mut w, bucket, &mut leaf)?;
            self.write_branches(&mut w, &self.buckets[bucket])?;
            bucket += 1;
            leaf = 0;
        }
        // The root bucket: one element per bucket, its header naming the bucket's root.
        let mut names = self.names.iter().zip(&self.buckets);
        for plan in &self.root.leaves {
            let mut fill = LeafFill::start(&mut w, plan, ps);
            for _ in 0..plan.count {
                let (name, tree) = names.next().ok_or_else(changed)?;
                let header = BucketHeader {
                    root: tree.root,
                    sequence: 0,
                };
                fill.add(&mut w, BUCKET_LEAF, name, &header.encode())?;
            }
            fill.finish(&mut w, plan)?;
        }
        self.write_branches(&mut w, &self.root)?;
        let buf = w.start(self.freelist, FREELIST_PAGE, 0, 1);
        let _ = buf;
        w.finish(self.freelist)?;
        if w.written != self.size() {
            return Err(bad(format!(
                "wrote {} bytes where the plan says {}",
                w.written,
                self.size()
            )));
        }
        Ok(w.written)
    }

    /// Writes the empty leaf of an empty bucket (its only page).
    fn write_empty_leaves(
        &self,
        w: &mut PageWriter<'_>,
        bucket: usize,
        leaf: &mut usize,
    ) -> io::Result<()> {
        let plan = &self.buckets[bucket].leaves[0];
        let fill = LeafFill::start(w, plan, u64::from(self.page_size));
        fill.finish(w, plan)?;
        *leaf = 1;
        Ok(())
    }

    fn write_branches(&self, w: &mut PageWriter<'_>, tree: &TreePlan) -> io::Result<()> {
        for level in &tree.levels {
            for page in level {
                let pages = page.size().div_ceil(w.ps).max(1);
                let n = page.children.len();
                let buf = w.start(page.pgid, BRANCH_PAGE, n as u16, pages);
                let mut data = PAGE_HEADER + n * ELEMENT;
                buf.resize(data, 0);
                for (i, (key, child)) in page.children.iter().enumerate() {
                    let at = PAGE_HEADER + i * ELEMENT;
                    buf[at..at + 4].copy_from_slice(&((data - at) as u32).to_le_bytes());
                    buf[at + 4..at + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
                    buf[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
                    data += key.len();
                }
                for (key, _) in &page.children {
                    buf.extend_from_slice(key);
                }
                w.finish(page.pgid)?;
            }
        }
        Ok(())
    }
}

/// Writes whole pages in id order.
struct PageWriter<'o> {
    out: &'o mut dyn Write,
    ps: u64,
    written: u64,
    buf: Vec<u8>,
}

impl PageWriter<'_> {
    /// Starts page `id` with its header; the caller appends the body.
    fn start(&mut self, id: u64, flags: u16, count: u16, pages: u64) -> &mut Vec<u8> {
        self.buf.clear();
        PageHeader {
            id,
            flags,
            count,
            overflow: (pages - 1) as u32,
        }
        .encode(&mut self.buf);
        &mut self.buf
    }

    /// Pads the page to its pages and writes it; `id` must be the next page.
    fn finish(&mut self, id: u64) -> io::Result<()> {
        if self.written != id * self.ps {
            return Err(bad(format!("page {id} is out of order")));
        }
        let pages = u64::from(PageHeader::decode(&self.buf).overflow) + 1;
        let len = (pages * self.ps) as usize;
        if self.buf.len() > len {
            return Err(bad(format!("page {id} overflows its {pages} pages")));
        }
        self.buf.resize(len, 0);
        self.out.write_all(&self.buf)?;
        self.written += len as u64;
        Ok(())
    }
}

/// A leaf page being filled: elements first, keys and values after them, in order.
struct LeafFill {
    count: u16,
    added: u16,
    /// Where the next key goes.
    data: usize,
}

impl LeafFill {
    fn start(w: &mut PageWriter<'_>, plan: &LeafPlan, ps: u64) -> LeafFill {
        let buf = w.start(plan.pgid, LEAF_PAGE, plan.count, plan.pages(ps));
        let data = PAGE_HEADER + usize::from(plan.count) * ELEMENT;
        buf.resize(data, 0);
        LeafFill {
            count: plan.count,
            added: 0,
            data,
        }
    }

    fn add(
        &mut self,
        w: &mut PageWriter<'_>,
        flags: u32,
        key: &[u8],
        value: &[u8],
    ) -> io::Result<()> {
        if self.added == self.count {
            return Err(bad(
                "the data changed between planning and writing the file",
            ));
        }
        let buf = &mut w.buf;
        let at = PAGE_HEADER + usize::from(self.added) * ELEMENT;
        buf[at..at + 4].copy_from_slice(&flags.to_le_bytes());
        buf[at + 4..at + 8].copy_from_slice(&((self.data - at) as u32).to_le_bytes());
        buf[at + 8..at + 12].copy_from_slice(&(key.len() as u32).to_le_bytes());
        buf[at + 12..at + 16].copy_from_slice(&(value.len() as u32).to_le_bytes());
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        self.data += key.len() + value.len();
        self.added += 1;
        Ok(())
    }

    fn finish(self, w: &mut PageWriter<'_>, plan: &LeafPlan) -> io::Result<()> {
        if self.added != plan.count || self.data as u64 != plan.size {
            return Err(bad(
                "the data changed between planning and writing the file",
            ));
        }
        w.finish(plan.pgid)
    }
}
