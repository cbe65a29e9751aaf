//! Reading a bbolt file, trusting nothing in it.
//!
//! Every page id is checked against the meta's page count and the file's length before
//! it is read, every element's key and value against its page, every walk remembers the
//! pages it has been through (a page reached twice is an error, so cycles end), and tree
//! and bucket nesting are bounded. Nothing is allocated beyond the pages read, which are
//! inside the file: a hostile file gets an [`Error`], never a panic, a hang or an
//! allocation larger than itself.

use std::io;
use std::ops::ControlFlow;

use crate::format::*;

/// Bound on a B+tree's height (bbolt's trees are a handful of levels).
pub const MAX_TREE_DEPTH: usize = 64;
/// Bound on bucket nesting.
pub const MAX_BUCKET_DEPTH: usize = 64;

/// Why a file cannot be read.
#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    /// The file is not a bbolt database, or is damaged; the message says where.
    Invalid(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Invalid(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// Where the bytes come from: a file, or memory.
pub trait Source {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Source for std::fs::File {
    fn len(&self) -> u64 {
        self.metadata().map_or(0, |m| m.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl Source for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= <[u8]>::len(self))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }
}

impl Source for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

/// What [`Db::for_each`] calls with each key and value.
pub type PairFn<'f> = dyn FnMut(&[u8], &[u8]) -> ControlFlow<()> + 'f;

/// One step of a walk over the file's buckets, in key order.
#[derive(Debug, PartialEq, Eq)]
pub enum Visit<'a> {
    /// A bucket named `name` starts (its pairs and buckets follow, then [`Visit::Leave`]).
    Enter(&'a [u8]),
    /// The bucket entered last ends.
    Leave,
    /// A key and its value in the current bucket.
    Pair(&'a [u8], &'a [u8]),
}

/// A page as read: its header and all its bytes (overflow pages included).
struct Page {
    header: PageHeader,
    data: Vec<u8>,
}

/// A leaf element.
struct LeafElement<'a> {
    flags: u32,
    key: &'a [u8],
    value: &'a [u8],
}

/// Pages already walked through, one bit per page id.
struct PageSet {
    bits: Vec<u64>,
}

impl PageSet {
    fn new(pages: u64) -> PageSet {
        PageSet {
            bits: vec![0; pages.div_ceil(64) as usize],
        }
    }

    /// Marks `id`; false when it was marked already, or is beyond the set.
    fn insert(&mut self, id: u64) -> bool {
        let (word, bit) = ((id / 64) as usize, id % 64);
        let Some(w) = self.bits.get_mut(word) else {
            return false;
        };
        let was = *w & (1 << bit) != 0;
        *w |= 1 << bit;
        !was
    }

    /// Whether `id` is marked (an id beyond the set is not).
    fn contains(&self, id: u64) -> bool {
        self.bits
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
}

/// An open bbolt file.
pub struct Db<S: Source> {
    src: S,
    len: u64,
    meta: Meta,
}

/// Whether a meta struct is usable: magic, version, checksum and page size.
fn meta_problem(raw: &[u8]) -> Option<String> {
    let m = Meta::decode(raw);
    if m.magic != MAGIC {
        return Some("invalid database (bad magic)".into());
    }
    if m.version != VERSION {
        return Some(format!("version mismatch: {} (want {VERSION})", m.version));
    }
    if m.checksum != Meta::sum(raw) {
        return Some("checksum error".into());
    }
    if !m.page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&m.page_size) {
        return Some(format!("page size {} is not supported", m.page_size));
    }
    None
}

impl<S: Source> Db<S> {
    /// Opens `src`: picks the newest valid meta page and checks that what it names is in
    /// the file.
    pub fn open(src: S) -> Result<Db<S>, Error> {
        let len = src.len();
        let read_meta = |offset: u64| -> Result<Option<(Meta, Option<String>)>, Error> {
            if offset + (PAGE_HEADER + META) as u64 > len {
                return Ok(None);
            }
            let mut raw = [0u8; PAGE_HEADER + META];
            src.read_exact_at(&mut raw, offset)?;
            let body = &raw[PAGE_HEADER..];
            Ok(Some((Meta::decode(body), meta_problem(body))))
        };
        let first = read_meta(0)?.ok_or_else(|| {
            invalid(format!(
                "file size too small ({len} bytes): not a bbolt database"
            ))
        })?;
        // Meta page 1 is one page in; without a valid page 0 the page size is unknown,
        // so every supported size is tried, as bbolt does.
        let mut second = None;
        let sizes: Vec<u32> = match first.1 {
            None => vec![first.0.page_size],
            Some(_) => (9..=16).map(|s| 1u32 << s).collect(),
        };
        for size in sizes {
            if let Some((m, None)) = read_meta(u64::from(size))?
                && m.page_size == size
            {
                second = Some(m);
                break;
            }
        }
        let first = match first {
            (m, None) => Some(m),
            (_, Some(problem)) if second.is_none() => {
                return Err(invalid(format!(
                    "meta page 0: {problem}; meta page 1: not valid"
                )));
            }
            _ => None,
        };
        // The newer one first (a tie goes to page 0); the other if the newer one names
        // pages the file does not have.
        let mut candidates: Vec<Meta> = first.into_iter().chain(second).collect();
        if candidates.len() == 2 && candidates[1].txid > candidates[0].txid {
            candidates.swap(0, 1);
        }
        let mut problems = Vec::new();
        for meta in candidates {
            match Self::meta_fits(&meta, len) {
                Ok(()) => return Ok(Db { src, len, meta }),
                Err(p) => problems.push(format!("meta (txid {}): {p}", meta.txid)),
            }
        }
        Err(invalid(problems.join("; ")))
    }

    fn meta_fits(m: &Meta, len: u64) -> Result<(), String> {
        let ps = u64::from(m.page_size);
        if m.pgid < 3 {
            return Err(format!("page count {} is too small", m.pgid));
        }
        match m.pgid.checked_mul(ps) {
            Some(size) if size <= len => {}
            _ => {
                return Err(format!(
                    "the file is truncated: {} pages of {ps} bytes do not fit in {len} bytes",
                    m.pgid
                ));
            }
        }
        if !(2..m.pgid).contains(&m.root.root) {
            return Err(format!("root page {} is out of bounds", m.root.root));
        }
        if m.freelist != NO_FREELIST && !(2..m.pgid).contains(&m.freelist) {
            return Err(format!("freelist page {} is out of bounds", m.freelist));
        }
        Ok(())
    }

    /// The meta page in use.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn page_size(&self) -> u32 {
        self.meta.page_size
    }

    /// The size of the database: pages in use times the page size (bytes past it, such
    /// as the SHA-256 etcd appends to a snapshot, are not part of it).
    pub fn size(&self) -> u64 {
        self.meta.pgid * u64::from(self.meta.page_size)
    }

    /// The length of the source.
    pub fn source_len(&self) -> u64 {
        self.len
    }

    fn page(&self, id: u64) -> Result<Page, Error> {
        let header = self.page_header(id)?;
        self.page_body(id, header)
    }

    /// Page `id`'s header, checked: in bounds, naming itself, overflow inside the file.
    fn page_header(&self, id: u64) -> Result<PageHeader, Error> {
        let ps = u64::from(self.meta.page_size);
        if id < 2 || id >= self.meta.pgid {
            return Err(invalid(format!(
                "page {id}: out of bounds (the file has pages 2..{})",
                self.meta.pgid
            )));
        }
        let mut raw = [0u8; PAGE_HEADER];
        self.src.read_exact_at(&mut raw, id * ps)?;
        let header = PageHeader::decode(&raw);
        if header.id != id {
            return Err(invalid(format!(
                "page {id}: its header says page {}",
                header.id
            )));
        }
        if id + u64::from(header.overflow) + 1 > self.meta.pgid {
            return Err(invalid(format!(
                "page {id}: {} overflow pages run past the last page",
                header.overflow
            )));
        }
        Ok(header)
    }

    /// All the bytes of page `id` (its overflow pages included), whose header was checked.
    fn page_body(&self, id: u64, header: PageHeader) -> Result<Page, Error> {
        let ps = u64::from(self.meta.page_size);
        // In the file: id + pages <= pgid and pgid * ps <= len.
        let pages = u64::from(header.overflow) + 1;
        let mut data = vec![0u8; (pages * ps) as usize];
        self.src.read_exact_at(&mut data, id * ps)?;
        Ok(Page { header, data })
    }

    /// Walks every bucket, nested ones included, in key order, calling `f` for each step
    /// until it breaks. Keys are checked to be in order and inside their branch's range,
    /// and each page to be reached once.
    pub fn walk(&self, f: &mut dyn FnMut(Visit<'_>) -> ControlFlow<()>) -> Result<(), Error> {
        let mut seen = PageSet::new(self.meta.pgid);
        let mut walker = Walker {
            db: self,
            seen: &mut seen,
            f,
        };
        walker.bucket_tree(self.meta.root.root, 0).map(drop)
    }

    /// The pairs of the top-level bucket `name`, in key order (nested buckets are not
    /// descended into); `Ok(false)` when there is no such bucket.
    pub fn for_each(&self, name: &[u8], f: &mut PairFn<'_>) -> Result<bool, Error> {
        let mut depth = 0usize;
        let mut found = false;
        self.walk(&mut |v| {
            match v {
                Visit::Enter(n) => {
                    depth += 1;
                    if depth == 1 && n == name {
                        found = true;
                    }
                }
                Visit::Leave => {
                    if depth == 1 && found {
                        return ControlFlow::Break(());
                    }
                    depth -= 1;
                }
                Visit::Pair(k, v) => {
                    if depth == 1 && found {
                        return f(k, v);
                    }
                }
            }
            ControlFlow::Continue(())
        })?;
        Ok(found)
    }

    /// What bbolt's consistency check reports, and more: every page reachable once,
    /// inside the file and of a tree type, keys in order, and the freelist (when the
    /// file has one) naming exactly the pages no tree uses. Empty when the file is sound.
    /// At most `limit` problems are listed.
    pub fn check(&self, limit: usize) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = PageSet::new(self.meta.pgid);
        seen.insert(0);
        seen.insert(1);
        let mut walker = Walker {
            db: self,
            seen: &mut seen,
            f: &mut |_| ControlFlow::Continue(()),
        };
        if let Err(e) = walker.bucket_tree(self.meta.root.root, 0) {
            problems.push(e.to_string());
            return problems;
        }
        if self.meta.freelist == NO_FREELIST {
            return problems;
        }
        let (free, overflow) = match self.freelist() {
            Ok(free) => free,
            Err(e) => {
                problems.push(e.to_string());
                return problems;
            }
        };
        for p in self.meta.freelist..=self.meta.freelist + u64::from(overflow) {
            if !seen.insert(p) {
                problems.push(format!("page {p}: multiple references"));
            }
        }
        let mut freed = PageSet::new(self.meta.pgid);
        for &id in &free {
            if id < 2 || id >= self.meta.pgid {
                problems.push(format!("page {id}: freelist names a page out of bounds"));
            } else if !freed.insert(id) {
                problems.push(format!("page {id}: already freed"));
            } else if seen.contains(id) {
                problems.push(format!("page {id}: reachable freed"));
            }
            if problems.len() >= limit {
                return problems;
            }
        }
        for id in 0..self.meta.pgid {
            if !seen.contains(id) && !freed.contains(id) {
                problems.push(format!("page {id}: unreachable unfreed"));
                if problems.len() >= limit {
                    break;
                }
            }
        }
        problems
    }

    /// The page ids the freelist page lists, and its overflow (a file without one lists
    /// none).
    fn freelist(&self) -> Result<(Vec<u64>, u32), Error> {
        if self.meta.freelist == NO_FREELIST {
            return Ok((Vec::new(), 0));
        }
        let page = self.page(self.meta.freelist)?;
        let id = self.meta.freelist;
        if page.header.flags != FREELIST_PAGE {
            return Err(invalid(format!(
                "page {id}: the freelist page has type {:#x}",
                page.header.flags
            )));
        }
        let body = &page.data[PAGE_HEADER..];
        let (count, start) = if page.header.count == COUNT_ESCAPE {
            if body.len() < 8 {
                return Err(invalid(format!("page {id}: freelist count is missing")));
            }
            (u64_at(body, 0), 8usize)
        } else {
            (u64::from(page.header.count), 0)
        };
        let room = ((body.len() - start) / 8) as u64;
        if count > room {
            return Err(invalid(format!(
                "page {id}: the freelist claims {count} ids but has room for {room}"
            )));
        }
        let ids = (0..count as usize)
            .map(|i| u64_at(body, start + 8 * i))
            .collect();
        Ok((ids, page.header.overflow))
    }
}

struct Walker<'w, S: Source> {
    db: &'w Db<S>,
    seen: &'w mut PageSet,
    f: &'w mut dyn FnMut(Visit<'_>) -> ControlFlow<()>,
}

/// The key range a page's keys must fall in: at or after `lo`, before `hi`.
#[derive(Clone, Copy)]
struct Range<'r> {
    lo: &'r [u8],
    hi: Option<&'r [u8]>,
}

impl Range<'_> {
    fn holds(&self, key: &[u8]) -> bool {
        key >= self.lo && self.hi.is_none_or(|hi| key < hi)
    }
}

impl<S: Source> Walker<'_, S> {
    /// The tree of a bucket whose root is page `root`.
    fn bucket_tree(&mut self, root: u64, nesting: usize) -> Result<ControlFlow<()>, Error> {
        let range = Range { lo: &[], hi: None };
        let mut last = None;
        self.tree_page(root, range, 0, nesting, &mut last)
    }

    fn tree_page(
        &mut self,
        id: u64,
        range: Range<'_>,
        depth: usize,
        nesting: usize,
        last: &mut Option<Vec<u8>>,
    ) -> Result<ControlFlow<()>, Error> {
        if depth > MAX_TREE_DEPTH {
            return Err(invalid(format!(
                "page {id}: the tree is deeper than {MAX_TREE_DEPTH}"
            )));
        }
        // Marked before its body is read, so no byte is read twice in a walk.
        if self.seen.contains(id) {
            return Err(invalid(format!("page {id}: multiple references")));
        }
        let header = self.db.page_header(id)?;
        for p in id..=id + u64::from(header.overflow) {
            if !self.seen.insert(p) {
                return Err(invalid(format!("page {p}: multiple references")));
            }
        }
        let page = self.db.page_body(id, header)?;
        match page.header.flags {
            LEAF_PAGE => {
                let elements = leaf_elements(&page.data, page.header.count, id)?;
                self.leaf(&elements, range, nesting, last, &format!("page {id}"))
            }
            BRANCH_PAGE => {
                let children = branch_elements(&page.data, page.header.count, id)?;
                if children.is_empty() {
                    return Err(invalid(format!(
                        "page {id}: a branch page with no elements"
                    )));
                }
                for (i, (key, child)) in children.iter().enumerate() {
                    let hi = children.get(i + 1).map(|(k, _)| *k).or(range.hi);
                    if !range.holds(key) || hi.is_some_and(|hi| *key >= hi) {
                        return Err(invalid(format!(
                            "page {id}: branch key {} out of order",
                            show(key)
                        )));
                    }
                    let child_range = Range { lo: key, hi };
                    if self
                        .tree_page(*child, child_range, depth + 1, nesting, last)?
                        .is_break()
                    {
                        return Ok(ControlFlow::Break(()));
                    }
                }
                Ok(ControlFlow::Continue(()))
            }
            other => Err(invalid(format!("page {id}: invalid type {other:#x}"))),
        }
    }

    fn leaf(
        &mut self,
        elements: &[LeafElement<'_>],
        range: Range<'_>,
        nesting: usize,
        last: &mut Option<Vec<u8>>,
        at: &str,
    ) -> Result<ControlFlow<()>, Error> {
        for e in elements {
            if !range.holds(e.key) || last.as_deref().is_some_and(|l| e.key <= l) {
                return Err(invalid(format!("{at}: key {} out of order", show(e.key))));
            }
            *last = Some(e.key.to_vec());
            let flow = if e.flags & BUCKET_LEAF != 0 {
                self.nested(e.key, e.value, nesting + 1, at)?
            } else {
                (self.f)(Visit::Pair(e.key, e.value))
            };
            if flow.is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// A bucket stored in a leaf element: a header, and the page itself when inline.
    fn nested(
        &mut self,
        name: &[u8],
        value: &[u8],
        nesting: usize,
        at: &str,
    ) -> Result<ControlFlow<()>, Error> {
        if nesting > MAX_BUCKET_DEPTH {
            return Err(invalid(format!(
                "{at}: buckets nested deeper than {MAX_BUCKET_DEPTH}"
            )));
        }
        if value.len() < BUCKET_HEADER {
            return Err(invalid(format!(
                "{at}: bucket {} has a {}-byte header",
                show(name),
                value.len()
            )));
        }
        if (self.f)(Visit::Enter(name)).is_break() {
            return Ok(ControlFlow::Break(()));
        }
        let header = BucketHeader::decode(value);
        let flow = if header.root == 0 {
            let inline = &value[BUCKET_HEADER..];
            if inline.len() < PAGE_HEADER {
                return Err(invalid(format!(
                    "{at}: inline bucket {} is too short",
                    show(name)
                )));
            }
            let h = PageHeader::decode(inline);
            if h.flags != LEAF_PAGE {
                return Err(invalid(format!(
                    "{at}: inline bucket {} is not a leaf ({:#x})",
                    show(name),
                    h.flags
                )));
            }
            let at = format!("{at}, inline bucket {}", show(name));
            let elements =
                leaf_elements(inline, h.count, 0).map_err(|e| invalid(format!("{at}: {e}")))?;
            let mut last = None;
            self.leaf(
                &elements,
                Range { lo: &[], hi: None },
                nesting,
                &mut last,
                &at,
            )?
        } else {
            self.bucket_tree(header.root, nesting)?
        };
        if flow.is_break() || (self.f)(Visit::Leave).is_break() {
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// A key for messages: printable ASCII as is, anything else in hex.
fn show(key: &[u8]) -> String {
    if key.iter().all(|b| b.is_ascii_graphic()) {
        format!("{:?}", String::from_utf8_lossy(key))
    } else {
        key.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The elements of a leaf page held in `data` (header first), each checked to lie
/// inside it.
fn leaf_elements(data: &[u8], count: u16, id: u64) -> Result<Vec<LeafElement<'_>>, Error> {
    elements(
        data,
        count,
        id,
        |at| {
            (
                u32_at(data, at + 4),
                u32_at(data, at + 8),
                u32_at(data, at + 12),
            )
        },
        |at, key, value| LeafElement {
            flags: u32_at(data, at),
            key,
            value,
        },
    )
}

/// The elements of a branch page: each child's first key and page id.
fn branch_elements(data: &[u8], count: u16, id: u64) -> Result<Vec<(&[u8], u64)>, Error> {
    elements(
        data,
        count,
        id,
        |at| (u32_at(data, at), u32_at(data, at + 4), 0),
        |at, key, _| (key, u64_at(data, at + 8)),
    )
}

/// The `count` elements of page `id` (its bytes in `data`, header first), checked: they
/// fit after the header, each one's key (and value) lies inside `data`, no key is empty.
/// `layout(at)` reads the element at offset `at`: where its key starts relative to it,
/// the key's size and the value's (0 in a branch); `make(at, key, value)` builds it.
fn elements<'d, T>(
    data: &'d [u8],
    count: u16,
    id: u64,
    layout: impl Fn(usize) -> (u32, u32, u32),
    mut make: impl FnMut(usize, &'d [u8], &'d [u8]) -> T,
) -> Result<Vec<T>, Error> {
    let count = usize::from(count);
    if PAGE_HEADER + count * ELEMENT > data.len() {
        return Err(invalid(format!(
            "page {id}: {count} elements do not fit in {} bytes",
            data.len()
        )));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = PAGE_HEADER + i * ELEMENT;
        let (pos, ksize, vsize) = layout(at);
        let start = at as u64 + u64::from(pos);
        if start + u64::from(ksize) + u64::from(vsize) > data.len() as u64 {
            return Err(invalid(format!(
                "page {id}: element {i} points outside its page"
            )));
        }
        if ksize == 0 {
            return Err(invalid(format!("page {id}: element {i} has an empty key")));
        }
        let (s, k, v) = (start as usize, ksize as usize, vsize as usize);
        out.push(make(at, &data[s..s + k], &data[s + k..s + k + v]));
    }
    Ok(out)
}
