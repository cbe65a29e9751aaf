//! A linearizability checker for key-value histories against a sequential model of etcd.
//!
//! # The model
//!
//! The store is a revision and a map from key to value ([`State`]). A fresh etcd or retcd
//! store is at revision 1 with no keys, so the first write creates revision 2. Every
//! operation is atomic and names one key:
//!
//! - `Put`: the revision goes up by one, the key takes the value, the answer is the new
//!   revision.
//! - `Get`: the answer is the key's value (or none) and the current revision.
//! - `Delete`: if the key exists it is removed, the revision goes up by one and the answer is
//!   `deleted=1` with the new revision; otherwise nothing changes and the answer is
//!   `deleted=0` with the current revision.
//! - `Cas`: if the key holds the expected value (for no expected value: if the key does not
//!   exist), as `Put` with `succeeded=true`; otherwise nothing changes and the answer is
//!   `succeeded=false` with the current revision.
//!
//! Because every answer carries etcd's header revision, the model pins each answered write
//! to one revision, and with it to one place in the order of all writes. That is what lets
//! the checker see lost writes, duplicated or skipped revisions and revisions going
//! backwards, not only stale values.
//!
//! # What is checked
//!
//! A history is linearizable if every answered operation can be given one point in time
//! between its call and its return, such that applying the operations to the model in that
//! order gives exactly the recorded answers. An operation that returned before another was
//! called comes first. A call and a return at the same nanosecond count as concurrent. A
//! write with unknown outcome (no answer) may take effect at any point after its call, even
//! after its client gave up, or never; whatever it would have answered is accepted. A read
//! with no answer is ignored. The checker may start from any [`State`], for a history
//! recorded after a preload.
//!
//! # The search
//!
//! The search is Wing and Gong's, with Lowe's memoization. The calls and returns of the
//! answered operations are put in one list sorted by time. Any operation whose call comes
//! before the first return still in the list may be next; the search tries them in list
//! order, and when the model accepts one, removes its call and return from the list and
//! starts over from the head. When it reaches a return instead, the operation returning
//! there cannot be placed, so (after trying the operations with unknown outcome called by
//! then, see 3) the last choice is undone and the next candidate at that level tried.
//! Success is a list with no answered operation left in it. Every (set of placed
//! operations, model state) pair
//! reached is remembered, and a choice that leads to a remembered pair is not explored again:
//! the same operations remain with the same state, so the outcome is the same. The cache
//! identifies a state by its revision and a 128-bit fingerprint of the map (sums of mixed
//! `(key, value)` pairs) rather than a copy, so an entry costs about the placed-set bitmap;
//! two different maps pass for the same with a probability near 2^-128 per comparison.
//!
//! These reductions keep the search narrow; each leaves the verdict unchanged:
//!
//! 1. An answered operation that does not change the state (a read, a failed `Cas`, a
//!    `Delete` of a missing key) is placed as soon as it fits, and if the search fails after
//!    it, the level it was placed at fails too, without trying the other candidates there.
//!    Reason: it may be next only if every operation that returned before its call is
//!    already placed, so in any complete order it can be moved to the current point without
//!    breaking real time, and moving it changes no other answer.
//! 2. An operation with unknown outcome is placed only where it changes the store. Placed
//!    where it would not, it is indistinguishable from never happening, which is always
//!    allowed.
//! 3. An operation with unknown outcome may only create a revision that no answered write
//!    created and that is no higher than the highest revision in any answer (a "free"
//!    revision). Otherwise the answered write of that revision, or the answer showing the
//!    highest revision, could never be placed, since revisions only grow. So operations
//!    with unknown outcome are kept out of the list and tried only at free revisions, the
//!    most recently called first (a write that timed out most likely took effect soon after
//!    its call).
//! 4. Values that no answer shows and no `Cas` compares against are one value to the model:
//!    the model's answers depend on a value only through those comparisons.
//! 5. Of operations with unknown outcome that are the same request (after 4), only the
//!    earliest called one not yet placed may be placed: any order using a later one can use
//!    the earlier one instead, which was called before it.
//! 6. Look-ahead for an operation with unknown outcome creating revision `g`, read off the
//!    answers before the search, pruning choices whose failure would otherwise surface
//!    only much later. Until the next answered write to its key, every answer that shows
//!    the key (a read's value, a `Cas`'s comparison, a `Delete`'s count) must agree with
//!    what it wrote, unless a free revision comes first and some other operation with
//!    unknown outcome writes something that agrees. If it is the only writer of a value
//!    some answer shows at revision `r`, `g` must lie between the last answered write to
//!    the key at or before `r`, and `r`. And until the next free revision, answers showing
//!    other keys (before answered writes to them) must agree with the state as it is. Those
//!    agreeing everywhere are tried before those relying on a later write to agree.
//!
//! # Two passes
//!
//! Answered writes fix their revisions, so only the free revisions leave a real choice:
//! which operation with unknown outcome created each. To refute a history, the exact search
//! must try every combination of such choices, and with tens of free revisions that is
//! beyond any budget. So when a history has writes with unknown outcome, a first pass
//! searches an abstraction in which each key holds a set of possible values, and at a free
//! revision one step stands for "some write with unknown outcome called by now took effect":
//! every key such a write could change gains the value it would write (while keeping its
//! old one), and those writes stay available afterwards. Answers narrow the sets again (a
//! read of `v` leaves `{v}`). That step is deterministic, so the first pass is about as
//! fast as a history without unknown outcomes. Every order of the exact problem is also one
//! of the abstraction (the sets always contain the exact values, and every rule accepts at
//! least what the exact one does), so if the abstraction has none, the history is not
//! linearizable. If it has one, the exact search runs, and on a legal history finds an
//! order quickly. Only a violation the abstraction explains away (by one step changing
//! several keys, or one write taking effect twice) is left to the exact search alone,
//! which may run out of budget on it.
//!
//! The tests check the whole search, both passes and every reduction, against trying every
//! order of small random histories, legal and not.
//!
//! A [`Budget`] (steps, cache memory, optional wall-clock limit, shared by both passes)
//! bounds pathological histories, which end in [`Verdict::Unknown`]. Unknown is never a
//! pass.
//!
//! # What is not checked
//!
//! - Serializable reads: they are served from a member's local state and may be stale by
//!   design. Recording them as `Get` would report violations etcd does not promise against.
//! - Ranges, multi-key transactions, leases, watches and compaction: not in the model.
//! - Keys' create/mod revisions and versions: not recorded.
//! - Writes by anyone outside the history. The revision is global, so every write made while
//!   recording must be in the history; writes made before go into the initial [`State`].
//! - Clocks: call and return times must come from one monotonic clock (one
//!   [`Recorder`](crate::history::Recorder)); times from several processes are not
//!   comparable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use crate::history::{History, Input, MaybeQuoted, Outcome, Output, Quoted, Seconds};

/// The sequential model's state: the store's revision and its live keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// The revision of the last write; 1 for a fresh store.
    pub revision: i64,
    pub kv: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Default for State {
    /// A fresh store: revision 1, no keys.
    fn default() -> Self {
        State::new()
    }
}

impl State {
    /// A fresh store: revision 1, no keys.
    pub fn new() -> State {
        State {
            revision: 1,
            kv: BTreeMap::new(),
        }
    }

    /// Applies `input` as etcd does and returns etcd's answer. This is the model in its
    /// plain form; the search runs the same rules on interned keys and values.
    pub fn step(&mut self, input: &Input) -> Output {
        match input {
            Input::Put { key, value } => {
                self.revision += 1;
                self.kv.insert(key.clone(), value.clone());
                Output::Put {
                    revision: self.revision,
                }
            }
            Input::Get { key } => Output::Get {
                value: self.kv.get(key).cloned(),
                revision: self.revision,
            },
            Input::Delete { key } => {
                let deleted = self.kv.remove(key).is_some();
                if deleted {
                    self.revision += 1;
                }
                Output::Delete {
                    deleted: i64::from(deleted),
                    revision: self.revision,
                }
            }
            Input::Cas {
                key,
                expected,
                new_value,
            } => {
                let succeeded = self.kv.get(key) == expected.as_ref();
                if succeeded {
                    self.revision += 1;
                    self.kv.insert(key.clone(), new_value.clone());
                }
                Output::Cas {
                    succeeded,
                    revision: self.revision,
                }
            }
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN_KEYS: usize = 16;
        write!(f, "revision {}, {} keys", self.revision, self.kv.len())?;
        for (key, value) in self.kv.iter().take(SHOWN_KEYS) {
            write!(f, " {}={}", Quoted(key), Quoted(value))?;
        }
        if self.kv.len() > SHOWN_KEYS {
            write!(f, " ...")?;
        }
        Ok(())
    }
}

/// Limits on one check, shared by its passes. When one is reached the verdict is
/// [`Verdict::Unknown`].
#[derive(Clone, Debug)]
pub struct Budget {
    /// Search steps (one candidate tried, or one choice undone). Legal histories from 16
    /// clients took 10 to 50 steps per operation, and up to about 1,000 with a tenth of
    /// the writes without an answer.
    pub max_steps: u64,
    /// Approximate bytes the memo cache may hold (one entry per state reached; an entry is
    /// a bitmap of the operations, n/8 bytes, plus about 64 bytes).
    pub max_cache_bytes: usize,
    /// Wall-clock limit. `None` (the default) keeps verdicts deterministic.
    pub time_limit: Option<Duration>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_steps: 50_000_000,
            max_cache_bytes: 1 << 30,
            time_limit: None,
        }
    }
}

/// The result of a check.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// An order exists that explains every answer.
    Linearizable,
    /// No order explains the answers.
    Violation(Box<Violation>),
    /// The check did not finish (budget), or the history is malformed. Never a pass. When
    /// the search ran, `reason` ends with where it got furthest.
    Unknown { reason: String },
}

impl Verdict {
    /// True only for [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    pub fn is_violation(&self) -> bool {
        matches!(self, Verdict::Violation(_))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => f.write_str("linearizable"),
            Verdict::Violation(violation) => f.write_str(&violation.explanation),
            Verdict::Unknown { reason } => write!(f, "unknown (not a pass): {reason}"),
        }
    }
}

/// Why a history is not linearizable, as far as the search got.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The longest order of operations (indexes into the history) consistent with real time
    /// and the model that the search found, counted in answered operations. From the first
    /// pass, it lists answered operations only (its steps for unknown outcome stand for no
    /// particular operation).
    pub longest_prefix: Vec<usize>,
    /// The model's revision after `longest_prefix`.
    pub revision: i64,
    /// The operations that could come next after the prefix, none of which leads anywhere.
    pub next: Vec<Candidate>,
    /// A report for humans: the end of the prefix, the state after it, each candidate with
    /// the model's answer, and hints (duplicate revisions, values nobody wrote).
    pub explanation: String,
}

/// An operation that could have come next after the longest prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Index into the history.
    pub op: usize,
    /// Whether the recorded answer is possible there (always, for unknown outcome): then it
    /// fits, but nothing after it does.
    pub fits: bool,
    /// What the model would answer there, e.g. `"2" rev=3`; alternatives are joined with
    /// ` or ` (only the first pass has them).
    pub model_answers: String,
}

/// Counters from one check, over both passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub steps: u64,
    pub cache_entries: usize,
    /// Whether the abstract first pass ran (the history has writes with unknown outcome).
    pub abstract_pass: bool,
}

/// Checks `history`, starting from `initial`, within `budget`.
pub fn check(history: &History, initial: &State, budget: &Budget) -> Verdict {
    check_with_stats(history, initial, budget).0
}

/// [`check`], also returning how much searching it took.
pub fn check_with_stats(history: &History, initial: &State, budget: &Budget) -> (Verdict, Stats) {
    let mut stats = Stats::default();
    let compiled = match Compiled::new(history, initial) {
        Ok(compiled) => compiled,
        Err(reason) => return (Verdict::Unknown { reason }, stats),
    };
    let limits = Limits {
        max_steps: budget.max_steps,
        max_cache_bytes: budget.max_cache_bytes,
        deadline: budget
            .time_limit
            .map(|limit| (Instant::now() + limit, limit)),
    };
    let mut passes = vec![Pass::Exact];
    if compiled.ops.iter().any(|op| op.answer.is_none()) {
        passes.insert(0, Pass::Abstract);
        stats.abstract_pass = true;
    }
    for pass in passes {
        let mut search = Search::new(&compiled, pass, stats.steps);
        let result = search.run(&limits);
        stats.steps = search.steps;
        stats.cache_entries += search.cache.len();
        let verdict = match result {
            Ok(true) => continue,
            Ok(false) => Verdict::Violation(Box::new(explain(history, initial, &search, true))),
            Err(reason) => {
                let furthest = explain(history, initial, &search, false).explanation;
                Verdict::Unknown {
                    reason: format!("{reason} in the {pass:?} pass. Furthest it got:\n{furthest}"),
                }
            }
        };
        return (verdict, stats);
    }
    (Verdict::Linearizable, stats)
}

/// An operation in the model's terms: keys and values as interned ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Step {
    Put {
        key: u32,
        value: u32,
    },
    Get {
        key: u32,
    },
    Delete {
        key: u32,
    },
    Cas {
        key: u32,
        expected: Option<u32>,
        new_value: u32,
    },
}

impl Step {
    fn key(self) -> u32 {
        match self {
            Step::Put { key, .. }
            | Step::Get { key }
            | Step::Delete { key }
            | Step::Cas { key, .. } => key,
        }
    }
}

/// An answer in the model's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Put { revision: i64 },
    Get { value: Option<u32>, revision: i64 },
    Delete { deleted: i64, revision: i64 },
    Cas { succeeded: bool, revision: i64 },
}

/// An operation the search considers: every answered one, and writes with unknown outcome.
#[derive(Clone, Debug)]
struct Op {
    /// Index into the history.
    index: usize,
    call_ns: u64,
    /// `None`: unknown outcome, treated as returning after everything.
    ret_ns: Option<u64>,
    step: Step,
    /// `None` exactly when `ret_ns` is.
    answer: Option<Answer>,
    /// For unknown outcome: the previous operation (by call) with unknown outcome and the
    /// same step (reduction 5).
    same_before: Option<u32>,
    /// For unknown outcome writing a value only it writes and answers show: the revisions
    /// it may create, `(lo, hi]` (reduction 6).
    window: Option<(i64, i64)>,
}

/// Whether a write with unknown outcome may take effect at a revision (reduction 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Viability {
    No,
    /// Every answer up to the next answered write to its key agrees with it.
    Agrees,
    /// Some answer disagrees, but a later write with unknown outcome could fix that.
    Relies,
}

/// What an answer shows about a key's value at one revision (reduction 6).
#[derive(Clone, Copy, Debug)]
enum Seen {
    Is(Option<u32>),
    Present,
    IsNot(Option<u32>),
}

impl Seen {
    fn allows(self, value: Option<u32>) -> bool {
        match self {
            Seen::Is(seen) => seen == value,
            Seen::Present => value.is_some(),
            Seen::IsNot(other) => other != value,
        }
    }
}

/// A history prepared for the search.
struct Compiled {
    ops: Vec<Op>,
    /// Bytes of each key id and value id, for reports.
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
    initial: Model,
    /// Revisions created by answered writes (reduction 3).
    claimed: HashSet<i64>,
    /// The highest revision in any answer (reduction 3).
    max_revision: i64,
    /// Claimed revisions in order, and for each the first free revision after the run of
    /// claimed ones it is in.
    claimed_sorted: Vec<i64>,
    free_after_run: Vec<i64>,
    /// Per key id: what answers show of its value, by revision (reduction 6).
    seen: Vec<Vec<(i64, Seen)>>,
    /// Per key id: revisions of answered writes to it, in order (reduction 6).
    writes: Vec<Vec<i64>>,
    /// Every `seen` entry as (revision, key, what), by revision (reduction 6).
    seen_by_revision: Vec<(i64, u32, Seen)>,
    /// How many operations with unknown outcome write each (key, value), and how many
    /// write each key at all (reduction 6).
    unknown_writers: HashMap<(u32, Option<u32>), usize>,
    unknown_writers_of_key: Vec<usize>,
    answered: usize,
}

/// The value id every value no answer shows and no `Cas` compares against maps to
/// (reduction 4).
const UNOBSERVED: u32 = 0;

struct Interner {
    ids: HashMap<Vec<u8>, u32>,
    bytes: Vec<Vec<u8>>,
}

impl Interner {
    /// `reserved` ids come first, with the given bytes (for reports).
    fn new(reserved: &[&[u8]]) -> Interner {
        Interner {
            ids: HashMap::new(),
            bytes: reserved.iter().map(|b| b.to_vec()).collect(),
        }
    }

    fn id(&mut self, bytes: &[u8]) -> u32 {
        if let Some(&id) = self.ids.get(bytes) {
            return id;
        }
        let id = u32::try_from(self.bytes.len()).expect("fewer than 2^32 distinct byte strings");
        self.ids.insert(bytes.to_vec(), id);
        self.bytes.push(bytes.to_vec());
        id
    }
}

/// Interns values, mapping the unobserved ones to [`UNOBSERVED`].
struct Values<'a> {
    observed: HashSet<&'a [u8]>,
    interner: Interner,
}

impl Values<'_> {
    fn id(&mut self, value: &[u8]) -> u32 {
        if self.observed.contains(value) {
            self.interner.id(value)
        } else {
            UNOBSERVED
        }
    }
}

impl Compiled {
    fn new(history: &History, initial: &State) -> Result<Compiled, String> {
        // The list holds two nodes per operation plus its head, indexed by u32, and
        // `FILLER` must not be an operation.
        const MAX_OPS: usize = (u32::MAX as usize - 2) / 2;
        if history.len() > MAX_OPS {
            return Err(format!(
                "{} operations, more than the checker's limit of {MAX_OPS}",
                history.len()
            ));
        }
        if initial.revision < 1 {
            return Err(format!(
                "initial revision {} is below 1, the revision of a fresh store",
                initial.revision
            ));
        }
        let mut observed = HashSet::new();
        for op in &history.operations {
            if let Some(Output::Get {
                value: Some(value), ..
            }) = op.output()
            {
                observed.insert(value.as_slice());
            }
            if let Input::Cas {
                expected: Some(expected),
                ..
            } = &op.input
            {
                observed.insert(expected.as_slice());
            }
        }
        let mut values = Values {
            observed,
            interner: Interner::new(&[b"(a value nobody read)"]),
        };
        let mut keys = Interner::new(&[]);
        let mut initial_values: Vec<(u32, u32)> = Vec::new();
        for (key, value) in &initial.kv {
            initial_values.push((keys.id(key), values.id(value)));
        }
        let mut ops = Vec::new();
        let mut claimed = HashSet::new();
        let mut max_revision = initial.revision;
        let mut answered = 0;
        for (index, op) in history.operations.iter().enumerate() {
            let step = match &op.input {
                Input::Put { key, value } => Step::Put {
                    key: keys.id(key),
                    value: values.id(value),
                },
                Input::Get { key } => Step::Get { key: keys.id(key) },
                Input::Delete { key } => Step::Delete { key: keys.id(key) },
                Input::Cas {
                    key,
                    expected,
                    new_value,
                } => Step::Cas {
                    key: keys.id(key),
                    expected: expected.as_deref().map(|v| values.id(v)),
                    new_value: values.id(new_value),
                },
            };
            let (ret_ns, answer) = match &op.outcome {
                Outcome::Unknown { .. } if !op.input.is_write() => continue,
                Outcome::Unknown { .. } => (None, None),
                Outcome::Ok { ret_ns, output } => {
                    if !output.answers(&op.input) {
                        return Err(format!(
                            "malformed history: operation #{index} ({}) has an answer of \
                             another kind",
                            op.input
                        ));
                    }
                    if *ret_ns < op.call_ns {
                        return Err(format!(
                            "malformed history: operation #{index} returns at {} before its \
                             call at {}",
                            Seconds(*ret_ns),
                            Seconds(op.call_ns)
                        ));
                    }
                    let answer = match output {
                        Output::Put { revision } => Answer::Put {
                            revision: *revision,
                        },
                        Output::Get { value, revision } => Answer::Get {
                            value: value.as_deref().map(|v| values.id(v)),
                            revision: *revision,
                        },
                        Output::Delete { deleted, revision } => Answer::Delete {
                            deleted: *deleted,
                            revision: *revision,
                        },
                        Output::Cas {
                            succeeded,
                            revision,
                        } => Answer::Cas {
                            succeeded: *succeeded,
                            revision: *revision,
                        },
                    };
                    if output.is_effective_write() {
                        claimed.insert(output.revision());
                    }
                    max_revision = max_revision.max(output.revision());
                    answered += 1;
                    (Some(*ret_ns), Some(answer))
                }
            };
            ops.push(Op {
                index,
                call_ns: op.call_ns,
                ret_ns,
                step,
                answer,
                same_before: None,
                window: None,
            });
        }
        // The model's revision only grows one at a time and never past `max_revision` for
        // unknown outcome, so refusing starts this close to the limit rules out overflow.
        if initial.revision > i64::MAX - ops.len() as i64 - 1 {
            return Err(format!(
                "initial revision {} is too close to i64::MAX",
                initial.revision
            ));
        }
        // Reduction 5: chain each unknown-outcome operation to the previous identical one,
        // in the order the search scans them (call time, then position).
        let mut by_call: Vec<u32> = (0..ops.len())
            .filter(|&i| ops[i].answer.is_none())
            .map(|i| u32::try_from(i).expect("op count checked against u32"))
            .collect();
        by_call.sort_by_key(|&i| (ops[i as usize].call_ns, i));
        let mut last_of_step: HashMap<Step, u32> = HashMap::new();
        for i in by_call {
            ops[i as usize].same_before = last_of_step.insert(ops[i as usize].step, i);
        }
        let key_count = u32::try_from(keys.bytes.len()).expect("key ids are u32");
        // Reduction 6: what answers show of each key, and where answered writes are.
        let mut seen: Vec<Vec<(i64, Seen)>> = vec![Vec::new(); key_count as usize];
        let mut writes: Vec<Vec<i64>> = vec![Vec::new(); key_count as usize];
        let mut writers_of_value: HashMap<u32, usize> = HashMap::new();
        for op in &ops {
            let key = op.step.key() as usize;
            match op.step {
                Step::Put { value, .. }
                | Step::Cas {
                    new_value: value, ..
                } => *writers_of_value.entry(value).or_default() += 1,
                Step::Get { .. } | Step::Delete { .. } => {}
            }
            let (step, Some(answer)) = (op.step, op.answer) else {
                continue;
            };
            match (step, answer) {
                (_, Answer::Put { revision }) => writes[key].push(revision),
                (_, Answer::Get { value, revision }) => seen[key].push((revision, Seen::Is(value))),
                (_, Answer::Delete { deleted, revision }) => match deleted {
                    1 => {
                        writes[key].push(revision);
                        seen[key].push((revision - 1, Seen::Present));
                    }
                    0 => seen[key].push((revision, Seen::Is(None))),
                    _ => {}
                },
                (
                    Step::Cas { expected, .. },
                    Answer::Cas {
                        succeeded,
                        revision,
                    },
                ) => {
                    if succeeded {
                        writes[key].push(revision);
                        seen[key].push((revision - 1, Seen::Is(expected)));
                    } else {
                        seen[key].push((revision, Seen::IsNot(expected)));
                    }
                }
                (_, Answer::Cas { .. }) => unreachable!("answers match their steps"),
            }
        }
        for list in &mut seen {
            list.sort_by_key(|&(revision, _)| revision);
        }
        let mut seen_by_revision: Vec<(i64, u32, Seen)> = seen
            .iter()
            .enumerate()
            .flat_map(|(key, list)| {
                let key = u32::try_from(key).expect("key ids are u32");
                list.iter()
                    .map(move |&(revision, what)| (revision, key, what))
            })
            .collect();
        seen_by_revision.sort_by_key(|&(revision, key, _)| (revision, key));
        for list in &mut writes {
            list.sort_unstable();
        }
        let initially: HashSet<u32> = initial_values.iter().map(|&(_, v)| v).collect();
        for op in ops.iter_mut().filter(|op| op.answer.is_none()) {
            let value = match op.step {
                Step::Put { value, .. }
                | Step::Cas {
                    new_value: value, ..
                } => value,
                Step::Get { .. } | Step::Delete { .. } => continue,
            };
            if value == UNOBSERVED || writers_of_value[&value] != 1 || initially.contains(&value) {
                continue;
            }
            // Each answer showing the value at revision r needs this write at a revision
            // in (the last answered write to the key at or before r, r].
            let key = op.step.key() as usize;
            for &(revision, what) in &seen[key] {
                if let Seen::Is(Some(v)) = what
                    && v == value
                {
                    let before = writes[key].partition_point(|&w| w <= revision);
                    let lo = if before == 0 {
                        i64::MIN
                    } else {
                        writes[key][before - 1]
                    };
                    let (old_lo, old_hi) = op.window.unwrap_or((i64::MIN, i64::MAX));
                    op.window = Some((old_lo.max(lo), old_hi.min(revision)));
                }
            }
        }
        let mut unknown_writers: HashMap<(u32, Option<u32>), usize> = HashMap::new();
        let mut unknown_writers_of_key = vec![0; key_count as usize];
        for op in ops.iter().filter(|op| op.answer.is_none()) {
            let written = match op.step {
                Step::Put { value, .. }
                | Step::Cas {
                    new_value: value, ..
                } => Some(value),
                Step::Delete { .. } => None,
                Step::Get { .. } => unreachable!("reads with unknown outcome are dropped"),
            };
            *unknown_writers.entry((op.step.key(), written)).or_default() += 1;
            unknown_writers_of_key[op.step.key() as usize] += 1;
        }
        let mut claimed_sorted: Vec<i64> = claimed.iter().copied().collect();
        claimed_sorted.sort_unstable();
        let mut free_after_run = vec![0; claimed_sorted.len()];
        for i in (0..claimed_sorted.len()).rev() {
            free_after_run[i] = match claimed_sorted.get(i + 1) {
                Some(&next) if next == claimed_sorted[i] + 1 => free_after_run[i + 1],
                _ => claimed_sorted[i] + 1,
            };
        }
        let mut model = Model {
            revision: initial.revision,
            cells: vec![Cell::One(None); key_count as usize],
            fingerprint: [0; 2],
        };
        for key in 0..key_count {
            model.add_to_fingerprint(key, &Cell::One(None), true);
        }
        for (key, value) in initial_values {
            model.set_cell(key, Cell::One(Some(value)));
        }
        Ok(Compiled {
            ops,
            keys: keys.bytes,
            values: values.interner.bytes,
            initial: model,
            claimed,
            max_revision,
            claimed_sorted,
            free_after_run,
            seen,
            writes,
            seen_by_revision,
            unknown_writers,
            unknown_writers_of_key,
            answered,
        })
    }

    /// The first revision above `revision` that an operation with unknown outcome may
    /// create, or `i64::MAX` if none.
    fn first_free_after(&self, revision: i64) -> i64 {
        let next = revision + 1;
        let free = match self.claimed_sorted.binary_search(&next) {
            Ok(i) => self.free_after_run[i],
            Err(_) => next,
        };
        if free > self.max_revision {
            i64::MAX
        } else {
            free
        }
    }

    /// Reduction 6: whether `op` (unknown outcome) may create `revision` by writing
    /// `written` to its key. Until the next answered write to the key, every answer showing
    /// the key must agree with `written`, unless another operation with unknown outcome
    /// could have written something that agrees, at a free revision in between. And if `op`
    /// is the only writer of a value some answer shows at revision `r`, `revision` must lie
    /// between the last answered write to the key at or before `r` and `r`.
    fn viable(&self, op: &Op, revision: i64, written: Option<u32>) -> Viability {
        if let Some((lo, hi)) = op.window
            && !(lo < revision && revision <= hi)
        {
            return Viability::No;
        }
        let key = op.step.key();
        let writes = &self.writes[key as usize];
        let next_write = writes
            .get(writes.partition_point(|&w| w <= revision))
            .copied()
            .unwrap_or(i64::MAX);
        let next_free = self.first_free_after(revision);
        let others = self.unknown_writers_of_key[key as usize] - 1;
        let other_could_write = |value: Option<u32>| {
            let same = self
                .unknown_writers
                .get(&(key, value))
                .copied()
                .unwrap_or(0);
            same - usize::from(value == written) > 0
        };
        let seen = &self.seen[key as usize];
        let mut viability = Viability::Agrees;
        for &(r, what) in seen[seen.partition_point(|&(r, _)| r < revision)..]
            .iter()
            .take_while(|&&(r, _)| r < next_write)
        {
            if what.allows(written) {
                continue;
            }
            let fixable = next_free <= r
                && match what {
                    Seen::Is(value) => other_could_write(value),
                    Seen::Present | Seen::IsNot(_) => others > 0,
                };
            if !fixable {
                return Viability::No;
            }
            viability = Viability::Relies;
        }
        viability
    }

    /// Reduction 6 for the other keys: once `op` creates `revision`, nothing but answered
    /// writes changes any other key before the next free revision, so the answers showing
    /// other keys until then (and before an answered write to them) must agree with the
    /// model now. Looks at most `MAX_SEEN` answers ahead; checking fewer only prunes less.
    fn others_agree(&self, op: &Op, revision: i64, model: &Model) -> bool {
        const MAX_SEEN: usize = 256;
        let until = self.first_free_after(revision);
        let from = self
            .seen_by_revision
            .partition_point(|&(r, _, _)| r < revision);
        self.seen_by_revision[from..]
            .iter()
            .take(MAX_SEEN)
            .take_while(|&&(r, _, _)| r < until)
            .filter(|&&(_, key, _)| key != op.step.key())
            .all(|&(r, key, what)| {
                let writes = &self.writes[key as usize];
                let written_between = writes
                    .get(writes.partition_point(|&w| w <= revision))
                    .is_some_and(|&w| w <= r);
                written_between
                    || model.cells[key as usize]
                        .elements()
                        .iter()
                        .any(|&v| what.allows(v))
            })
    }

    fn show_value(&self, value: Option<u32>) -> String {
        match value {
            None => "none".to_string(),
            Some(UNOBSERVED) => self.values[UNOBSERVED as usize].escape_ascii().to_string(),
            Some(id) => Quoted(&self.values[id as usize]).to_string(),
        }
    }

    fn show_answer(&self, answer: Answer) -> String {
        match answer {
            Answer::Put { revision } => format!("rev={revision}"),
            Answer::Get { value, revision } => {
                format!("{} rev={revision}", self.show_value(value))
            }
            Answer::Delete { deleted, revision } => format!("deleted={deleted} rev={revision}"),
            Answer::Cas {
                succeeded,
                revision,
            } => format!("succeeded={succeeded} rev={revision}"),
        }
    }

    fn show_model(&self, model: &Model) -> String {
        const SHOWN_KEYS: usize = 16;
        let live: Vec<(usize, &Cell)> = model
            .cells
            .iter()
            .enumerate()
            .filter(|(_, cell)| **cell != Cell::One(None))
            .collect();
        let mut text = format!("revision {}, {} keys", model.revision, live.len());
        for (key, cell) in live.iter().take(SHOWN_KEYS) {
            let shown: Vec<String> = cell
                .elements()
                .iter()
                .map(|&v| self.show_value(v))
                .collect();
            let _ = match cell {
                Cell::One(_) => write!(text, " {}={}", Quoted(&self.keys[*key]), shown[0]),
                Cell::Many(_) => write!(
                    text,
                    " {}={{{}}}",
                    Quoted(&self.keys[*key]),
                    shown.join(" | ")
                ),
            };
        }
        if live.len() > SHOWN_KEYS {
            text.push_str(" ...");
        }
        text
    }
}

/// The values a key may hold: exactly one in the exact pass, possibly several in the
/// abstract one. `None` is "no such key".
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cell {
    One(Option<u32>),
    /// Sorted, without duplicates, at least two.
    Many(Vec<Option<u32>>),
}

impl Cell {
    fn from_sorted(values: Vec<Option<u32>>) -> Cell {
        match values.as_slice() {
            [] => unreachable!("a key always has a possible value"),
            [one] => Cell::One(*one),
            _ => Cell::Many(values),
        }
    }

    fn elements(&self) -> &[Option<u32>] {
        match self {
            Cell::One(value) => std::slice::from_ref(value),
            Cell::Many(values) => values,
        }
    }

    fn contains(&self, value: Option<u32>) -> bool {
        self.elements().contains(&value)
    }

    fn any_present(&self) -> bool {
        self.elements().iter().any(Option::is_some)
    }

    fn any_other_than(&self, value: Option<u32>) -> bool {
        self.elements().iter().any(|&v| v != value)
    }

    fn without(&self, value: Option<u32>) -> Cell {
        Cell::from_sorted(
            self.elements()
                .iter()
                .copied()
                .filter(|&v| v != value)
                .collect(),
        )
    }

    fn with(&self, added: &[Option<u32>]) -> Cell {
        let mut values: Vec<Option<u32>> = self.elements().to_vec();
        values.extend_from_slice(added);
        values.sort_unstable();
        values.dedup();
        Cell::from_sorted(values)
    }
}

/// The model on interned ids, changed in place and restored with [`Undo`].
#[derive(Clone, Debug)]
struct Model {
    revision: i64,
    /// By key id.
    cells: Vec<Cell>,
    /// Sum over keys and their possible values of two independent mixes of
    /// `(key, value)`: the cache compares models by this.
    fingerprint: [u64; 2],
}

/// What placing an operation does to the model.
struct Change {
    new_revision: bool,
    cells: Vec<(u32, Cell)>,
}

impl Change {
    fn none() -> Change {
        Change {
            new_revision: false,
            cells: Vec::new(),
        }
    }

    fn write(key: u32, cell: Cell) -> Change {
        Change {
            new_revision: true,
            cells: vec![(key, cell)],
        }
    }

    fn narrow(key: u32, from: &Cell, to: Cell) -> Change {
        if *from == to {
            Change::none()
        } else {
            Change {
                new_revision: false,
                cells: vec![(key, to)],
            }
        }
    }

    fn is_none(&self) -> bool {
        !self.new_revision && self.cells.is_empty()
    }
}

#[derive(Debug)]
struct Undo {
    revision: i64,
    fingerprint: [u64; 2],
    cells: Vec<(u32, Cell)>,
}

impl Model {
    /// The change placing an answered operation makes, if its answer is possible here.
    fn answered(&self, step: Step, answer: Answer) -> Option<Change> {
        let cell = &self.cells[step.key() as usize];
        let (current, next) = (self.revision, self.revision + 1);
        match (step, answer) {
            (Step::Put { key, value }, Answer::Put { revision }) if revision == next => {
                Some(Change::write(key, Cell::One(Some(value))))
            }
            (Step::Get { key }, Answer::Get { value, revision })
                if revision == current && cell.contains(value) =>
            {
                Some(Change::narrow(key, cell, Cell::One(value)))
            }
            (Step::Delete { key }, Answer::Delete { deleted, revision }) => match deleted {
                1 if revision == next && cell.any_present() => {
                    Some(Change::write(key, Cell::One(None)))
                }
                0 if revision == current && cell.contains(None) => {
                    Some(Change::narrow(key, cell, Cell::One(None)))
                }
                _ => None,
            },
            (
                Step::Cas {
                    key,
                    expected,
                    new_value,
                },
                Answer::Cas {
                    succeeded,
                    revision,
                },
            ) => {
                if succeeded && revision == next && cell.contains(expected) {
                    Some(Change::write(key, Cell::One(Some(new_value))))
                } else if !succeeded && revision == current && cell.any_other_than(expected) {
                    Some(Change::narrow(key, cell, cell.without(expected)))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// The answers the model allows for `step` here (one in the exact pass).
    fn answers(&self, step: Step) -> Vec<Answer> {
        let cell = &self.cells[step.key() as usize];
        let (current, next) = (self.revision, self.revision + 1);
        let mut answers = Vec::new();
        match step {
            Step::Put { .. } => answers.push(Answer::Put { revision: next }),
            Step::Get { .. } => {
                for &value in cell.elements() {
                    answers.push(Answer::Get {
                        value,
                        revision: current,
                    });
                }
            }
            Step::Delete { .. } => {
                if cell.any_present() {
                    answers.push(Answer::Delete {
                        deleted: 1,
                        revision: next,
                    });
                }
                if cell.contains(None) {
                    answers.push(Answer::Delete {
                        deleted: 0,
                        revision: current,
                    });
                }
            }
            Step::Cas { expected, .. } => {
                if cell.contains(expected) {
                    answers.push(Answer::Cas {
                        succeeded: true,
                        revision: next,
                    });
                }
                if cell.any_other_than(expected) {
                    answers.push(Answer::Cas {
                        succeeded: false,
                        revision: current,
                    });
                }
            }
        }
        answers
    }

    /// What `step` writes to its key if it takes effect here (in any possible state), or
    /// `None` if it would change nothing (reduction 2).
    fn written(&self, step: Step) -> Option<Option<u32>> {
        let cell = &self.cells[step.key() as usize];
        match step {
            Step::Put { value, .. } => Some(Some(value)),
            Step::Get { .. } => None,
            Step::Delete { .. } => cell.any_present().then_some(None),
            Step::Cas {
                expected,
                new_value,
                ..
            } => cell.contains(expected).then_some(Some(new_value)),
        }
    }

    /// Abstract pass: one of `writes` (key, value written) takes effect here. Each key
    /// gains what any of them would write to it and keeps what it had.
    fn filler(&self, writes: impl Iterator<Item = (u32, Option<u32>)>) -> Option<Change> {
        let mut added: BTreeMap<u32, Vec<Option<u32>>> = BTreeMap::new();
        for (key, written) in writes {
            added.entry(key).or_default().push(written);
        }
        if added.is_empty() {
            return None;
        }
        let cells = added
            .into_iter()
            .map(|(key, values)| (key, self.cells[key as usize].with(&values)))
            .collect();
        Some(Change {
            new_revision: true,
            cells,
        })
    }

    fn apply(&mut self, change: Change) -> Undo {
        let mut undo = Undo {
            revision: self.revision,
            fingerprint: self.fingerprint,
            cells: Vec::with_capacity(change.cells.len()),
        };
        for (key, cell) in change.cells {
            undo.cells.push((key, self.set_cell(key, cell)));
        }
        if change.new_revision {
            self.revision += 1;
        }
        undo
    }

    fn undo(&mut self, undo: Undo) {
        for (key, cell) in undo.cells.into_iter().rev() {
            self.cells[key as usize] = cell;
        }
        self.revision = undo.revision;
        self.fingerprint = undo.fingerprint;
    }

    fn set_cell(&mut self, key: u32, cell: Cell) -> Cell {
        let old = std::mem::replace(&mut self.cells[key as usize], cell);
        self.add_to_fingerprint(key, &old, false);
        let new = self.cells[key as usize].clone();
        self.add_to_fingerprint(key, &new, true);
        old
    }

    fn add_to_fingerprint(&mut self, key: u32, cell: &Cell, add: bool) {
        for &value in cell.elements() {
            let value = value.unwrap_or(u32::MAX);
            for (lane, sum) in self.fingerprint.iter_mut().enumerate() {
                let mix = pair_mix(key, value, lane);
                *sum = if add {
                    sum.wrapping_add(mix)
                } else {
                    sum.wrapping_sub(mix)
                };
            }
        }
    }
}

/// splitmix64's finalizer: a bijective mix of 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pair_mix(key: u32, value: u32, lane: usize) -> u64 {
    const LANES: [u64; 2] = [0x9e37_79b9_7f4a_7c15, 0xd1b5_4a32_d192_ed03];
    mix64(((u64::from(key) << 32) | u64::from(value)) ^ LANES[lane])
}

fn op_mix(op: u32) -> u64 {
    mix64(u64::from(op) ^ 0x2545_f491_4f6c_dd1d)
}

/// A state the search has reached: which operations are placed, and the model.
#[derive(PartialEq, Eq)]
struct CacheKey {
    /// Sum of `op_mix` over the placed operations; with the next two fields, the hash.
    placed_hash: u64,
    revision: i64,
    fingerprint: [u64; 2],
    placed: Box<[u64]>,
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Equal keys have equal sums, so hashing the sums alone is consistent with `Eq`
        // and avoids hashing the whole bitmap.
        self.placed_hash.hash(state);
        self.revision.hash(state);
        self.fingerprint.hash(state);
    }
}

/// The list of calls and returns of answered operations, as arrays of links. Node 0 is the
/// head; operation `i` has its call at `2i + 1` and its return at `2i + 2`. Removing nodes
/// and restoring them in reverse order is exact (dancing links).
struct Links {
    next: Vec<u32>,
    prev: Vec<u32>,
}

const HEAD: u32 = 0;
const NIL: u32 = u32::MAX;

fn call_node(op: u32) -> u32 {
    2 * op + 1
}

fn return_node(op: u32) -> u32 {
    2 * op + 2
}

impl Links {
    fn new(ops: &[Op]) -> Links {
        // Sorted by time; at equal times calls first, so that a call and a return at the
        // same nanosecond are concurrent (the permissive reading).
        let mut events: Vec<(u64, u8, u32)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            let i = u32::try_from(i).expect("op count checked against u32");
            if let Some(ret_ns) = op.ret_ns {
                events.push((op.call_ns, 0, call_node(i)));
                events.push((ret_ns, 1, return_node(i)));
            }
        }
        events.sort_unstable();
        let nodes = 2 * ops.len() + 1;
        let mut links = Links {
            next: vec![NIL; nodes],
            prev: vec![NIL; nodes],
        };
        let mut last = HEAD;
        for &(_, _, node) in &events {
            links.next[last as usize] = node;
            links.prev[node as usize] = last;
            last = node;
        }
        links
    }

    fn next(&self, node: u32) -> u32 {
        self.next[node as usize]
    }

    fn remove(&mut self, node: u32) {
        let (prev, next) = (self.prev[node as usize], self.next[node as usize]);
        self.next[prev as usize] = next;
        if next != NIL {
            self.prev[next as usize] = prev;
        }
    }

    fn restore(&mut self, node: u32) {
        let (prev, next) = (self.prev[node as usize], self.next[node as usize]);
        self.next[prev as usize] = node;
        if next != NIL {
            self.prev[next as usize] = node;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// Keys hold sets of values; one step stands for any write with unknown outcome.
    Abstract,
    Exact,
}

/// [`Budget`] as the search uses it.
struct Limits {
    max_steps: u64,
    max_cache_bytes: usize,
    deadline: Option<(Instant, Duration)>,
}

/// Where the scan of candidates at the current level is.
#[derive(Clone, Copy, Debug)]
enum Cursor {
    /// At a node of the list of answered operations.
    List(u32),
    /// At `unknown[at]` (in the abstract pass, 0 is the one filler step and 1 the end);
    /// those called after `bound_ns`, the first return still in the list, cannot be next.
    Unknown { at: usize, bound_ns: u64 },
}

/// The `op` of a frame for the abstract pass's filler step.
const FILLER: u32 = u32::MAX;

/// A choice on the search path.
struct Frame {
    /// An operation, or [`FILLER`].
    op: u32,
    /// `None` if placing it left the model unchanged (reduction 1).
    undo: Option<Undo>,
    /// For unknown outcome and the filler: where the scan resumes at the level it was
    /// placed at. (An answered operation resumes after its call.)
    resume: Option<Cursor>,
}

enum Attempt {
    Placed,
    Rejected,
    /// A state-preserving operation fit, but its successor state is known to fail, so the
    /// current level fails too (reduction 1).
    LevelFails,
}

struct Search<'a> {
    compiled: &'a Compiled,
    pass: Pass,
    /// Calls and returns of answered operations. Operations with unknown outcome have no
    /// return to wait for; they are kept in `unknown` and tried only at free revisions
    /// (reduction 3), instead of being scanned past at every level.
    links: Links,
    /// Operations with unknown outcome, by call time (then position, as reduction 5).
    unknown: Vec<u32>,
    model: Model,
    /// Bitmap of placed operations (the filler is none of them).
    placed: Vec<u64>,
    placed_hash: u64,
    cache: HashSet<CacheKey>,
    cache_bytes: usize,
    stack: Vec<Frame>,
    // Invariant: answered_placed == number of answered operations in `stack`.
    answered_placed: usize,
    /// The stack and model at the deepest dead end seen, by answered operations placed.
    best: Vec<u32>,
    best_model: Model,
    best_answered: usize,
    /// Steps so far, counting earlier passes.
    steps: u64,
}

impl<'a> Search<'a> {
    fn new(compiled: &'a Compiled, pass: Pass, steps: u64) -> Search<'a> {
        let mut unknown: Vec<u32> = (0..compiled.ops.len())
            .filter(|&i| compiled.ops[i].answer.is_none())
            .map(|i| u32::try_from(i).expect("op count checked against u32"))
            .collect();
        unknown.sort_by_key(|&i| (compiled.ops[i as usize].call_ns, i));
        Search {
            compiled,
            pass,
            links: Links::new(&compiled.ops),
            unknown,
            model: compiled.initial.clone(),
            placed: vec![0; compiled.ops.len().div_ceil(64)],
            placed_hash: 0,
            cache: HashSet::new(),
            cache_bytes: 0,
            stack: Vec::new(),
            answered_placed: 0,
            best: Vec::new(),
            best_model: compiled.initial.clone(),
            best_answered: 0,
            steps,
        }
    }

    /// `Ok(true)`: an order exists; `Ok(false)`: none, with `best` set; `Err`: out of
    /// budget, with `best` as far as it got.
    fn run(&mut self, limits: &Limits) -> Result<bool, String> {
        const TIME_CHECK_INTERVAL_STEPS: u64 = 4096;
        let mut cursor = Cursor::List(self.links.next(HEAD));
        let mut first_dead_end = true;
        loop {
            if self.answered_placed == self.compiled.answered {
                return Ok(true);
            }
            self.steps += 1;
            let out_of_budget = if self.steps > limits.max_steps {
                Some(format!(
                    "gave up after {} search steps (Budget::max_steps)",
                    limits.max_steps
                ))
            } else if self.cache_bytes > limits.max_cache_bytes {
                Some(format!(
                    "gave up with {} states cached in about {} bytes \
                     (Budget::max_cache_bytes)",
                    self.cache.len(),
                    self.cache_bytes
                ))
            } else {
                match limits.deadline {
                    Some((deadline, limit))
                        if self.steps.is_multiple_of(TIME_CHECK_INTERVAL_STEPS)
                            && Instant::now() > deadline =>
                    {
                        Some(format!(
                            "gave up after {limit:?} and {} steps (Budget::time_limit)",
                            self.steps
                        ))
                    }
                    _ => None,
                }
            };
            if let Some(reason) = out_of_budget {
                self.note_dead_end(first_dead_end);
                return Err(reason);
            }
            let dead_end = match cursor {
                Cursor::List(node) => {
                    // Answered operations remain, so a return node lies ahead of any call.
                    assert_ne!(node, NIL, "search ran off the list with answered ops left");
                    if node % 2 == 1 {
                        match self.attempt((node - 1) / 2, None) {
                            Attempt::Placed => {
                                cursor = Cursor::List(self.links.next(HEAD));
                                false
                            }
                            Attempt::Rejected => {
                                cursor = Cursor::List(self.links.next(node));
                                false
                            }
                            Attempt::LevelFails => true,
                        }
                    } else if self.revision_is_free() {
                        // No answered operation fits before this return; one with unknown
                        // outcome called by then still may.
                        let op = &self.compiled.ops[(node as usize - 2) / 2];
                        cursor = Cursor::Unknown {
                            at: 0,
                            bound_ns: op.ret_ns.expect("return nodes belong to answered ops"),
                        };
                        false
                    } else {
                        // The operation returning here is not placed, and nothing called
                        // later may precede it.
                        true
                    }
                }
                Cursor::Unknown { at, bound_ns } => {
                    let resume = Cursor::Unknown {
                        at: at + 1,
                        bound_ns,
                    };
                    let attempt = match (self.pass, self.nth_unknown_candidate(at, bound_ns)) {
                        (Pass::Exact, Some((op, round))) => {
                            Some(self.attempt(op, Some((resume, round))))
                        }
                        (Pass::Abstract, _) if at == 0 => {
                            Some(self.attempt_filler(bound_ns, resume))
                        }
                        _ => None,
                    };
                    match attempt {
                        Some(Attempt::Placed) => {
                            cursor = Cursor::List(self.links.next(HEAD));
                            false
                        }
                        Some(Attempt::Rejected) => {
                            cursor = resume;
                            false
                        }
                        Some(Attempt::LevelFails) => {
                            unreachable!("unknown outcome is placed only where it writes")
                        }
                        None => true,
                    }
                }
            };
            if dead_end {
                self.note_dead_end(first_dead_end);
                first_dead_end = false;
                match self.backtrack() {
                    Some(next) => cursor = next,
                    None => return Ok(false),
                }
            }
        }
    }

    /// The `at`-th operation with unknown outcome to try at a level whose first return is
    /// at `bound_ns`, and in which round. Candidates are those called by then, in two
    /// rounds: first the ones that agree with every answer up to the next answered write to
    /// their key, then the ones relying on a later write with unknown outcome to agree
    /// (reduction 6); each round the most recently called first, since a write that timed
    /// out most likely took effect soon after its call. The order only matters for how soon
    /// a legal history's order is found.
    fn nth_unknown_candidate(&self, at: usize, bound_ns: u64) -> Option<(u32, Viability)> {
        let called = self
            .unknown
            .partition_point(|&op| self.compiled.ops[op as usize].call_ns <= bound_ns);
        if at < called {
            Some((self.unknown[called - 1 - at], Viability::Agrees))
        } else if at < 2 * called {
            Some((self.unknown[2 * called - 1 - at], Viability::Relies))
        } else {
            None
        }
    }

    /// Whether the next revision may be created by an operation with unknown outcome
    /// (reduction 3).
    fn revision_is_free(&self) -> bool {
        let next = self.model.revision + 1;
        !self.unknown.is_empty()
            && next <= self.compiled.max_revision
            && !self.compiled.claimed.contains(&next)
    }

    fn note_dead_end(&mut self, first: bool) {
        if first || self.answered_placed > self.best_answered {
            self.best_answered = self.answered_placed;
            self.best = self.stack.iter().map(|frame| frame.op).collect();
            self.best_model = self.model.clone();
        }
    }

    /// Tries to place `op` next. For unknown outcome, `unknown` is where the scan continues
    /// at this level if it is placed and later undone, and the round it is tried in.
    fn attempt(&mut self, op: u32, unknown: Option<(Cursor, Viability)>) -> Attempt {
        let compiled = self.compiled;
        let o = &compiled.ops[op as usize];
        let change = match o.answer {
            Some(answer) => self.model.answered(o.step, answer),
            // Reductions 2, 3 (checked before the cursor got here), 5 and 6.
            None if self.is_placed(op)
                || o.same_before.is_some_and(|before| !self.is_placed(before)) =>
            {
                None
            }
            None => self.model.written(o.step).and_then(|written| {
                let round = unknown.map(|(_, round)| round);
                let revision = self.model.revision + 1;
                (Some(compiled.viable(o, revision, written)) == round
                    && compiled.others_agree(o, revision, &self.model))
                .then(|| Change::write(o.step.key(), Cell::One(written)))
            }),
        };
        match change {
            Some(change) => self.commit(Some(op), change, unknown.map(|(resume, _)| resume)),
            None => Attempt::Rejected,
        }
    }

    /// Abstract pass: the one step standing for any write with unknown outcome called by
    /// `bound_ns` taking effect.
    fn attempt_filler(&mut self, bound_ns: u64, resume: Cursor) -> Attempt {
        let compiled = self.compiled;
        let model = &self.model;
        let revision = model.revision + 1;
        let writes = self
            .unknown
            .iter()
            .map(|&op| &compiled.ops[op as usize])
            .take_while(|op| op.call_ns <= bound_ns)
            .filter_map(|op| {
                let written = model.written(op.step)?;
                (compiled.viable(op, revision, written) != Viability::No)
                    .then_some((op.step.key(), written))
            });
        match self.model.filler(writes) {
            Some(change) => self.commit(None, change, Some(resume)),
            None => Attempt::Rejected,
        }
    }

    fn commit(&mut self, op: Option<u32>, change: Change, resume: Option<Cursor>) -> Attempt {
        let undo = (!change.is_none()).then(|| self.model.apply(change));
        if let Some(op) = op {
            self.flip(op);
        }
        let key = CacheKey {
            placed_hash: self.placed_hash,
            revision: self.model.revision,
            fingerprint: self.model.fingerprint,
            placed: self.placed.clone().into_boxed_slice(),
        };
        if !self.cache.insert(key) {
            if let Some(op) = op {
                self.flip(op);
            }
            return match undo {
                Some(undo) => {
                    self.model.undo(undo);
                    Attempt::Rejected
                }
                None => Attempt::LevelFails,
            };
        }
        self.cache_bytes += self.placed.len() * 8 + std::mem::size_of::<CacheKey>() + 16;
        if let Some(op) = op
            && self.compiled.ops[op as usize].answer.is_some()
        {
            self.links.remove(call_node(op));
            self.links.remove(return_node(op));
            self.answered_placed += 1;
        }
        self.stack.push(Frame {
            op: op.unwrap_or(FILLER),
            undo,
            resume,
        });
        Attempt::Placed
    }

    /// Undoes choices until one leaves other candidates to try; returns where the scan
    /// goes on, or `None` when the search is exhausted.
    fn backtrack(&mut self) -> Option<Cursor> {
        loop {
            let frame = self.stack.pop()?;
            if frame.op != FILLER {
                if self.compiled.ops[frame.op as usize].answer.is_some() {
                    self.links.restore(return_node(frame.op));
                    self.links.restore(call_node(frame.op));
                    self.answered_placed -= 1;
                }
                self.flip(frame.op);
            }
            match frame.undo {
                Some(undo) => {
                    self.model.undo(undo);
                    return Some(
                        frame
                            .resume
                            .unwrap_or_else(|| Cursor::List(self.links.next(call_node(frame.op)))),
                    );
                }
                // Reduction 1: the level this state-preserving operation was placed at
                // fails as well, so undo the choice that led to that level too.
                None => continue,
            }
        }
    }

    fn is_placed(&self, op: u32) -> bool {
        self.placed[op as usize / 64] & (1u64 << (op % 64)) != 0
    }

    fn flip(&mut self, op: u32) {
        if self.is_placed(op) {
            self.placed_hash = self.placed_hash.wrapping_sub(op_mix(op));
        } else {
            self.placed_hash = self.placed_hash.wrapping_add(op_mix(op));
        }
        self.placed[op as usize / 64] ^= 1u64 << (op % 64);
    }
}

/// Builds the report from the deepest dead end of `search`: for a finished search that
/// found no order (`refuted`), or one that ran out of budget.
fn explain(history: &History, initial: &State, search: &Search<'_>, refuted: bool) -> Violation {
    const SHOWN_PREFIX_OPS: usize = 10;
    const SHOWN_CANDIDATES: usize = 20;
    const SHOWN_UNKNOWN: usize = 5;
    let compiled = search.compiled;
    let model = &search.best_model;
    let line = |index: usize| format!("#{index} {}", history.operations[index]);
    let prefix: Vec<Option<&Op>> = search
        .best
        .iter()
        .map(|&op| (op != FILLER).then(|| &compiled.ops[op as usize]))
        .collect();

    // In the abstract pass, operations with unknown outcome are never marked placed.
    let mut is_placed = vec![false; compiled.ops.len()];
    for &op in search.best.iter().filter(|&&op| op != FILLER) {
        is_placed[op as usize] = true;
    }
    let unplaced = || {
        compiled
            .ops
            .iter()
            .enumerate()
            .filter(|(i, _)| !is_placed[*i])
            .map(|(_, op)| op)
    };
    // The answered operation that returns first among those not placed: everything called
    // after its return must follow it.
    let blocking = unplaced()
        .filter_map(|op| op.ret_ns.map(|ret_ns| (ret_ns, op.index)))
        .min()
        .expect("a failed search leaves an answered operation unplaced");
    let mut next_ops: Vec<&Op> = unplaced().filter(|op| op.call_ns <= blocking.0).collect();
    next_ops.sort_by_key(|op| (op.call_ns, op.index));
    let writer_of_revision: HashMap<i64, usize> = compiled
        .ops
        .iter()
        .filter_map(|op| {
            let output = history.operations[op.index].output()?;
            output
                .is_effective_write()
                .then(|| (output.revision(), op.index))
        })
        .collect();

    // In the exact pass the prefix is a sequence of operations, so the plain model can
    // replay it and show the real values (the search's model merges the unread ones).
    let plain = (search.pass == Pass::Exact).then(|| {
        let mut state = initial.clone();
        for op in prefix.iter().flatten() {
            state.step(&history.operations[op.index].input);
        }
        state
    });
    let mut text = String::new();
    let fillers = prefix.iter().filter(|op| op.is_none()).count();
    let unknown_in_prefix = prefix
        .iter()
        .flatten()
        .filter(|op| op.answer.is_none())
        .count();
    if refuted {
        let _ = writeln!(
            text,
            "not linearizable: no order of the operations agrees with real time and etcd's \
             model."
        );
    }
    let _ = writeln!(
        text,
        "The longest order found places {} of {} answered operations, and {} writes with \
         unknown outcome.",
        search.best_answered,
        compiled.answered,
        unknown_in_prefix + fillers
    );
    if search.pass == Pass::Abstract {
        let _ = writeln!(
            text,
            "(In the first pass, where a key may hold any value a write with unknown outcome \
             could have left{}.)",
            if refuted {
                ": the exact problem has no order either"
            } else {
                ""
            }
        );
    }
    if prefix.is_empty() {
        let _ = writeln!(text, "No operation can be first.");
    } else {
        let shown = prefix.len().min(SHOWN_PREFIX_OPS);
        let _ = writeln!(text, "Its last {shown} steps, in order:");
        for op in &prefix[prefix.len() - shown..] {
            let _ = match op {
                Some(op) => writeln!(text, "  {}", line(op.index)),
                None => writeln!(text, "  (some write with unknown outcome takes effect)"),
            };
        }
    }
    let state = match &plain {
        Some(state) => state.to_string(),
        None => compiled.show_model(model),
    };
    let _ = writeln!(text, "State after it: {state}");
    let _ = writeln!(
        text,
        "#{} returned at {} and precedes everything called later, but none of the \
         operations that may come next fits:",
        blocking.1,
        Seconds(blocking.0)
    );
    let mut next = Vec::new();
    let new_revision = model.revision + 1;
    let (mut shown_answered, mut shown_unknown, mut unshown, mut unchanging) = (0, 0, 0, 0);
    // Answered candidates first: they are what the clients saw.
    next_ops.sort_by_key(|op| op.answer.is_none());
    for op in &next_ops {
        let model_answers = match &plain {
            Some(state) => state
                .clone()
                .step(&history.operations[op.index].input)
                .to_string(),
            None => {
                let answers: Vec<String> = model
                    .answers(op.step)
                    .into_iter()
                    .map(|answer| compiled.show_answer(answer))
                    .collect();
                answers.join(" or ")
            }
        };
        let fits = op
            .answer
            .is_none_or(|answer| model.answered(op.step, answer).is_some());
        next.push(Candidate {
            op: op.index,
            fits,
            model_answers: model_answers.clone(),
        });
        let why = match op.answer {
            Some(_) if shown_answered == SHOWN_CANDIDATES => None,
            Some(_) if !fits => Some(format!("the model answers: {model_answers}")),
            Some(_) => Some("fits here, but nothing fits after it".to_string()),
            None if model.written(op.step).is_none() => {
                unchanging += 1;
                continue;
            }
            None if shown_unknown == SHOWN_UNKNOWN => None,
            None if writer_of_revision.contains_key(&new_revision) => Some(format!(
                "unknown outcome; it would create revision {new_revision}, which #{} returned",
                writer_of_revision[&new_revision]
            )),
            None if new_revision > compiled.max_revision => Some(format!(
                "unknown outcome; it would create revision {new_revision}, above every \
                 answer ({})",
                compiled.max_revision
            )),
            None => Some(
                "unknown outcome; taking effect here contradicts later answers, or leads nowhere"
                    .to_string(),
            ),
        };
        let Some(why) = why else {
            unshown += 1;
            continue;
        };
        if op.answer.is_some() {
            shown_answered += 1;
        } else {
            shown_unknown += 1;
        }
        let _ = writeln!(text, "  {}\n      {why}", line(op.index));
    }
    if unshown > 0 {
        let _ = writeln!(text, "  ... and {unshown} more");
    }
    if unchanging > 0 {
        let _ = writeln!(
            text,
            "  ({unchanging} writes with unknown outcome called by then would not change the \
             store here.)"
        );
    }
    let hints = hints(history, compiled);
    if !hints.is_empty() {
        let _ = writeln!(text, "Hints:");
        for hint in hints {
            let _ = writeln!(text, "  {hint}");
        }
    }
    Violation {
        longest_prefix: prefix.iter().flatten().map(|op| op.index).collect(),
        revision: model.revision,
        next,
        explanation: text,
    }
}

/// Definite problems visible without a search, to point a reader at the likely cause.
fn hints(history: &History, compiled: &Compiled) -> Vec<String> {
    const MAX_HINTS: usize = 10;
    let mut hints = Vec::new();
    let mut writers: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    let initial_revision = compiled.initial.revision;
    let mut written: HashSet<&[u8]> = HashSet::new();
    for op in &history.operations {
        match &op.input {
            Input::Put { value, .. } => written.insert(value.as_slice()),
            Input::Cas { new_value, .. } => written.insert(new_value.as_slice()),
            Input::Get { .. } | Input::Delete { .. } => false,
        };
    }
    let initially: HashSet<u32> = compiled
        .initial
        .cells
        .iter()
        .flat_map(|cell| cell.elements().iter().flatten().copied())
        .collect();
    for (index, op) in history.operations.iter().enumerate() {
        let Some(output) = op.output() else { continue };
        if output.is_effective_write() {
            writers.entry(output.revision()).or_default().push(index);
        }
        if output.revision() < initial_revision {
            hints.push(format!(
                "#{index} answered revision {}, below the initial revision {initial_revision}",
                output.revision(),
            ));
        }
        if let Output::Get {
            value: Some(value), ..
        } = output
            && !written.contains(value.as_slice())
            && !initially
                .iter()
                .any(|&id| compiled.values[id as usize] == *value)
        {
            hints.push(format!(
                "#{index} read {}, a value no operation wrote",
                MaybeQuoted(Some(value))
            ));
        }
    }
    for (revision, indexes) in writers {
        if indexes.len() > 1 {
            let list: Vec<String> = indexes.iter().map(|i| format!("#{i}")).collect();
            hints.push(format!(
                "revision {revision} was created by {} writes: {}",
                indexes.len(),
                list.join(", ")
            ));
        }
    }
    hints.truncate(MAX_HINTS);
    hints
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Operation;
    use retcd_prng::SplitMix64;

    fn check_text(text: &str) -> Verdict {
        let history = History::parse(text).expect("test history parses");
        check(&history, &State::new(), &Budget::default())
    }

    /// Histories no correct store can produce, each with why.
    const ILLEGAL: &[(&str, &str)] = &[
        // A read that starts after a put returned must see the put.
        (
            "stale_read_after_completed_write",
            r#"
            c0 0 1 put "x" "1" -> rev=2
            c1 2 3 get "x" -> none rev=1
            "#,
        ),
        // Nobody wrote "ghost".
        (
            "read_of_value_never_written",
            r#"
            c0 0 1 put "x" "1" -> rev=2
            c1 0 3 get "x" -> "ghost" rev=2
            "#,
        ),
        // The put was acknowledged and nothing overwrote it, yet later reads at its
        // revision and after do not see it.
        (
            "lost_write",
            r#"
            c0 0 1 put "x" "1" -> rev=2
            c1 2 3 get "x" -> none rev=2
            c2 4 5 put "y" "2" -> rev=3
            c1 6 7 get "x" -> none rev=3
            "#,
        ),
        // After the delete returned, the deleted value comes back.
        (
            "write_reappears_after_completed_delete",
            r#"
            c0 0 1 put "x" "1" -> rev=2
            c0 2 3 delete "x" -> deleted=1 rev=3
            c1 4 5 get "x" -> "1" rev=3
            "#,
        ),
        // Two writes cannot create the same revision, concurrent or not.
        (
            "two_puts_same_revision",
            r#"
            c0 0 2 put "x" "1" -> rev=2
            c1 1 3 put "y" "2" -> rev=2
            "#,
        ),
        // Two reads one after the other: the second shows an older revision.
        (
            "revision_goes_backwards_between_reads",
            r#"
            c0 0 1 put "x" "1" -> rev=2
            c0 2 10 put "y" "2" -> rev=3
            c1 4 5 get "z" -> none rev=3
            c2 6 7 get "z" -> none rev=2
            "#,
        ),
        // Revision 3 follows revision 2; nothing created revision 3.
        (
            "put_revision_skips_one",
            r#"
            c0 0 1 put "x" "1" -> rev=2
            c0 2 3 put "x" "2" -> rev=4
            "#,
        ),
        // The store held "1", not "2", so the compare must fail.
        (
            "cas_succeeded_though_value_did_not_match",
            r#"
            c0 0 1 put "x" "1" -> rev=2
            c1 2 3 cas "x" "2" "3" -> succeeded=true rev=3
            "#,
        ),
        // Client 0's put created revision 3, after c1's put at revision 2; its next read
        // shows c1's value at revision 3, as if its own write were lost.
        (
            "read_your_writes_violated",
            r#"
            c1 0 10 put "x" "b" -> rev=2
            c0 1 2 put "x" "a" -> rev=3
            c0 3 4 get "x" -> "b" rev=3
            "#,
        ),
        // Both puts completed before either read began, at revisions 2 and 3, yet each
        // client reads at revision 3 and misses the other's write.
        (
            "split_brain",
            r#"
            c0 0 1 put "x" "a" -> rev=2
            c1 0 1 put "y" "b" -> rev=3
            c0 2 3 get "x" -> "a" rev=3
            c0 4 5 get "y" -> none rev=3
            c1 2 3 get "y" -> "b" rev=3
            c1 4 5 get "x" -> none rev=3
            "#,
        ),
        // Two leaders each accept a write at revision 2 and serve their own side.
        (
            "split_brain_same_revision",
            r#"
            c0 0 1 put "x" "a" -> rev=2
            c1 0 1 put "y" "b" -> rev=2
            c0 2 3 get "x" -> "a" rev=2
            c0 4 5 get "y" -> none rev=2
            c1 2 3 get "y" -> "b" rev=2
            c1 4 5 get "x" -> none rev=2
            "#,
        ),
        // Deleting a key that was never written deletes nothing and creates no revision.
        (
            "delete_of_missing_key_reports_deleted",
            r#"
            c0 0 1 delete "x" -> deleted=1 rev=2
            "#,
        ),
        // Only one create-if-absent of a key can succeed.
        (
            "two_creates_both_succeed",
            r#"
            c0 0 2 cas "x" none "a" -> succeeded=true rev=2
            c1 1 3 cas "x" none "b" -> succeeded=true rev=3
            "#,
        ),
        // Nothing was written, so no read can show revision 5.
        (
            "read_revision_ahead_of_all_writes",
            r#"
            c0 0 1 get "x" -> none rev=5
            "#,
        ),
        // One write with unknown outcome can fill one missing revision, not two.
        (
            "unknown_write_cannot_fill_two_revisions",
            r#"
            c0 0 ? put "x" "a" -> error: timeout
            c1 1 2 put "y" "b" -> rev=4
            "#,
        ),
        // A write cannot be seen before it is called, even one with unknown outcome.
        (
            "read_sees_write_before_its_call",
            r#"
            c0 0 1 get "x" -> "a" rev=2
            c1 2 ? put "x" "a" -> error: timeout
            "#,
        ),
        // A failed compare writes nothing, so it cannot create a revision.
        (
            "failed_cas_creates_revision",
            r#"
            c0 0 1 cas "x" "z" "n" -> succeeded=false rev=2
            "#,
        ),
        // Two reads one after the other: new value, then the old one.
        (
            "new_then_old_value",
            r#"
            c0 0 1 put "x" "a" -> rev=2
            c1 2 10 put "x" "b" -> rev=3
            c2 3 4 get "x" -> "b" rev=3
            c3 5 6 get "x" -> "a" rev=2
            "#,
        ),
        // "b" was written at revision 3; the read pairs it with revision 2.
        (
            "read_value_and_revision_disagree",
            r#"
            c0 0 1 put "x" "a" -> rev=2
            c0 2 3 put "x" "b" -> rev=3
            c1 4 5 get "x" -> "b" rev=2
            "#,
        ),
        // A write that returned cannot take effect after a read that started later.
        (
            "acknowledged_write_applied_late",
            r#"
            c0 0 1 put "x" "a" -> rev=2
            c1 2 3 get "y" -> none rev=1
            "#,
        ),
    ];

    /// Histories a correct store can produce, each with why.
    const LEGAL: &[(&str, &str)] = &[
        ("empty", ""),
        // Two overlapping puts; reads overlapping both may see the state between them.
        (
            "concurrent_puts_reads_see_either_order",
            r#"
            c0 0 10 put "x" "a" -> rev=3
            c1 0 10 put "x" "b" -> rev=2
            c2 1 9 get "x" -> "b" rev=2
            c3 1 9 get "x" -> "a" rev=3
            c4 11 12 get "x" -> "a" rev=3
            "#,
        ),
        // Reads overlapping a put may see it or not, as long as time does not go back.
        (
            "reads_overlapping_a_put",
            r#"
            c0 0 10 put "x" "a" -> rev=2
            c1 1 2 get "x" -> none rev=1
            c2 3 4 get "x" -> "a" rev=2
            c1 5 6 get "x" -> "a" rev=2
            "#,
        ),
        // Two overlapping reads may see new then old: the older one took effect first.
        (
            "overlapping_reads_see_new_then_old",
            r#"
            c0 0 10 put "x" "a" -> rev=2
            c1 1 5 get "x" -> none rev=1
            c2 2 3 get "x" -> "a" rev=2
            "#,
        ),
        // The write timed out but happened.
        (
            "unknown_write_that_happened",
            r#"
            c0 0 ? put "x" "a" -> error: timeout
            c1 5 6 get "x" -> "a" rev=2
            "#,
        ),
        // The write timed out and never happened.
        (
            "unknown_write_that_did_not_happen",
            r#"
            c0 0 ? put "x" "a" -> error: timeout
            c1 5 6 get "x" -> none rev=1
            c1 7 8 put "y" "b" -> rev=2
            "#,
        ),
        // The write took effect after its client saw the error.
        (
            "unknown_write_lands_after_the_error",
            r#"
            c0 0 ? put "x" "a" -> error@1: deadline exceeded
            c1 2 3 get "x" -> none rev=1
            c1 4 5 get "x" -> "a" rev=2
            "#,
        ),
        // Revision 2 was created by the write with unknown outcome.
        (
            "unknown_write_fills_a_revision_gap",
            r#"
            c0 0 ? put "x" "a" -> error: timeout
            c1 1 2 put "y" "b" -> rev=3
            c1 3 4 get "x" -> "a" rev=3
            "#,
        ),
        // Of two unknown writes, one happened and one did not.
        (
            "two_unknown_writes_one_happened",
            r#"
            c0 0 ? put "x" "a" -> error: timeout
            c1 0 ? put "x" "b" -> error: timeout
            c2 5 6 get "x" -> "b" rev=2
            c2 7 8 get "x" -> "b" rev=2
            "#,
        ),
        // A compare-and-set with unknown outcome that succeeded.
        (
            "unknown_cas_that_succeeded",
            r#"
            c0 0 1 put "x" "a" -> rev=2
            c1 2 ? cas "x" "a" "b" -> error: timeout
            c0 5 6 get "x" -> "b" rev=3
            "#,
        ),
        // Two creates race: one wins.
        (
            "cas_race_create",
            r#"
            c0 0 10 cas "x" none "a" -> succeeded=false rev=2
            c1 0 10 cas "x" none "b" -> succeeded=true rev=2
            c2 11 12 get "x" -> "b" rev=2
            "#,
        ),
        // Compare-and-sets from three clients: 0->1 then 1->3, and 0->2 fails last.
        (
            "cas_race_chain",
            r#"
            c0 0 1 put "x" "0" -> rev=2
            c1 2 10 cas "x" "0" "1" -> succeeded=true rev=3
            c2 2 10 cas "x" "0" "2" -> succeeded=false rev=4
            c3 2 10 cas "x" "1" "3" -> succeeded=true rev=4
            c0 11 12 get "x" -> "3" rev=4
            "#,
        ),
        // Concurrent deletes: one deletes, the other finds nothing.
        (
            "delete_race",
            r#"
            c0 0 1 put "x" "a" -> rev=2
            c1 2 10 delete "x" -> deleted=0 rev=3
            c2 2 10 delete "x" -> deleted=1 rev=3
            c3 11 12 get "x" -> none rev=3
            "#,
        ),
        // Failed reads tell nothing.
        (
            "failed_reads_are_ignored",
            r#"
            c0 0 1 put "x" "a" -> rev=2
            c1 2 ? get "x" -> error: unavailable
            c1 3 4 get "x" -> "a" rev=2
            "#,
        ),
        // A call and a return at the same instant count as concurrent.
        (
            "same_instant_is_concurrent",
            r#"
            c0 0 1 put "x" "a" -> rev=2
            c1 1 2 get "x" -> none rev=1
            "#,
        ),
        // A value may be written twice; reads cannot tell which write they see.
        (
            "same_value_written_twice",
            r#"
            c0 0 1 put "x" "a" -> rev=2
            c1 0 5 put "x" "a" -> rev=3
            c2 2 3 get "x" -> "a" rev=2
            c2 6 7 get "x" -> "a" rev=3
            "#,
        ),
    ];

    #[test]
    fn rejects_every_illegal_history() {
        assert!(ILLEGAL.len() >= 12);
        for (name, text) in ILLEGAL {
            match check_text(text) {
                Verdict::Violation(_) => {}
                other => panic!("{name}: want a violation, got {other}\n{text}"),
            }
        }
    }

    #[test]
    fn accepts_every_legal_history() {
        for (name, text) in LEGAL {
            let verdict = check_text(text);
            assert!(verdict.is_linearizable(), "{name}: {verdict}\n{text}");
        }
    }

    #[test]
    fn a_violation_names_the_prefix_the_stuck_operation_and_the_model_answer() {
        let verdict = check_text(
            r#"
            c0 0 1 put "x" "1" -> rev=2
            c0 2 3 put "x" "2" -> rev=3
            c1 4 5 get "x" -> "1" rev=3
            "#,
        );
        let Verdict::Violation(violation) = verdict else {
            panic!("want a violation, got {verdict}");
        };
        eprintln!("{}", violation.explanation);
        assert_eq!(violation.longest_prefix, vec![0, 1]);
        assert_eq!(violation.revision, 3);
        assert_eq!(
            violation.next,
            vec![Candidate {
                op: 2,
                fits: false,
                model_answers: r#""2" rev=3"#.to_string(),
            }]
        );
        let text = &violation.explanation;
        assert!(text.contains("places 2 of 3 answered operations"), "{text}");
        assert!(
            text.contains(r#"#2 c1 4.000000000 5.000000000 get "x""#),
            "{text}"
        );
        assert!(text.contains(r#"the model answers: "2" rev=3"#), "{text}");
        assert!(
            text.contains(r#"State after it: revision 3, 1 keys "x"="2""#),
            "{text}"
        );
    }

    #[test]
    fn a_violation_found_by_the_first_pass_says_so() {
        // Revisions 2 and 3 are free, and one write with unknown outcome can fill one.
        let verdict = check_text(
            r#"
            c0 0 ? put "x" "a" -> error: timeout
            c1 1 2 get "x" -> "a" rev=2
            c1 3 4 put "y" "b" -> rev=4
            "#,
        );
        let text = verdict.to_string();
        eprintln!("{text}");
        assert!(verdict.is_violation(), "{text}");
        assert!(text.contains("In the first pass"), "{text}");
        assert!(
            text.contains(r#"State after it: revision 2, 1 keys "x"="a""#),
            "{text}"
        );
    }

    #[test]
    fn a_violation_hints_at_duplicate_revisions_and_unwritten_values() {
        let verdict = check_text(
            r#"
            c0 0 1 put "x" "1" -> rev=2
            c1 0 1 put "y" "2" -> rev=2
            c2 2 3 get "z" -> "ghost" rev=2
            "#,
        );
        let text = verdict.to_string();
        assert!(verdict.is_violation(), "{text}");
        assert!(
            text.contains("revision 2 was created by 2 writes: #0, #1"),
            "{text}"
        );
        assert!(
            text.contains(r#"#2 read "ghost", a value no operation wrote"#),
            "{text}"
        );
    }

    #[test]
    fn starts_from_a_given_state() {
        let mut initial = State::new();
        for i in 0..9 {
            initial.step(&Input::Put {
                key: format!("k{i}").into_bytes(),
                value: b"p".to_vec(),
            });
        }
        assert_eq!(initial.revision, 10);
        let legal = History::parse(
            r#"
            c0 0 1 get "k3" -> "p" rev=10
            c0 2 3 put "k3" "q" -> rev=11
            c1 4 5 delete "k4" -> deleted=1 rev=12
            c1 6 7 cas "k5" "p" "r" -> succeeded=true rev=13
            "#,
        )
        .unwrap();
        let verdict = check(&legal, &initial, &Budget::default());
        assert!(verdict.is_linearizable(), "{verdict}");
        // The same history from a fresh store is wrong from its first read.
        let verdict = check(&legal, &State::new(), &Budget::default());
        assert!(verdict.is_violation(), "{verdict}");
        // A preloaded key cannot be missing.
        let illegal = History::parse(r#"c0 0 1 get "k1" -> none rev=10"#).unwrap();
        assert!(check(&illegal, &initial, &Budget::default()).is_violation());
    }

    #[test]
    fn malformed_histories_are_unknown_never_a_pass() {
        let cases = [
            (
                "answer of another kind",
                History::new(vec![Operation {
                    client: 0,
                    call_ns: 0,
                    input: Input::Put {
                        key: b"x".to_vec(),
                        value: b"1".to_vec(),
                    },
                    outcome: Outcome::Ok {
                        ret_ns: 1,
                        output: Output::Get {
                            value: None,
                            revision: 1,
                        },
                    },
                }]),
                State::new(),
            ),
            (
                "returns at",
                History::parse(r#"c0 2 1 get "x" -> none rev=1"#).unwrap(),
                State::new(),
            ),
            (
                "below 1",
                History::default(),
                State {
                    revision: 0,
                    kv: BTreeMap::new(),
                },
            ),
        ];
        for (want, history, initial) in cases {
            match check(&history, &initial, &Budget::default()) {
                Verdict::Unknown { reason } => assert!(reason.contains(want), "{reason}"),
                other => panic!("{want}: want unknown, got {other}"),
            }
        }
    }

    #[test]
    fn an_exhausted_budget_is_unknown_never_a_pass() {
        let history = generate(1, Shape::SMALL);
        let budget = Budget {
            max_steps: 5,
            ..Budget::default()
        };
        let verdict = check(&history, &State::new(), &budget);
        assert!(
            matches!(&verdict, Verdict::Unknown { reason } if reason.contains("max_steps")
                && reason.contains("Furthest it got")
                && !reason.contains("not linearizable")),
            "{verdict}"
        );
        assert!(!verdict.is_linearizable());

        let budget = Budget {
            max_cache_bytes: 1000,
            ..Budget::default()
        };
        let verdict = check(&history, &State::new(), &budget);
        assert!(
            matches!(&verdict, Verdict::Unknown { reason } if reason.contains("max_cache_bytes")),
            "{verdict}"
        );

        // The clock is read every 4096 steps, and this history needs more.
        let history = generate(2, Shape::LARGE);
        let budget = Budget {
            time_limit: Some(Duration::ZERO),
            ..Budget::default()
        };
        let verdict = check(&history, &State::new(), &budget);
        assert!(
            matches!(&verdict, Verdict::Unknown { reason } if reason.contains("time_limit")),
            "{verdict}"
        );
    }

    /// The shape of a generated history.
    #[derive(Clone, Copy, Debug)]
    struct Shape {
        clients: u64,
        operations: usize,
        keys: u64,
        /// Chance per operation of no answer: for a write, it happened, happened after the
        /// error, or never; a read is just failed.
        unknown_per_mille: u64,
    }

    impl Shape {
        const SMALL: Shape = Shape {
            clients: 8,
            operations: 200,
            keys: 4,
            unknown_per_mille: 50,
        };
        const LARGE: Shape = Shape {
            clients: 16,
            operations: 5_000,
            keys: 8,
            unknown_per_mille: 50,
        };
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Fate {
        Answered,
        /// No answer; took effect within the call.
        Applied,
        /// No answer; takes effect some time after the error came back.
        AppliedLate,
        /// No answer; never takes effect (or, for a read, just failed).
        Lost,
    }

    enum Phase {
        Idle,
        Called {
            op: usize,
            fate: Fate,
        },
        Done {
            op: usize,
            fate: Fate,
            output: Option<Output>,
        },
    }

    /// A legal history: clients call, take effect on a sequential store, and return, at
    /// increasing random times, so every operation takes effect within its interval.
    fn generate(seed: u64, shape: Shape) -> History {
        let mut rng = SplitMix64::new(seed);
        let mut store = State::new();
        let mut ops: Vec<Operation> = Vec::new();
        let mut phases: Vec<Phase> = (0..shape.clients).map(|_| Phase::Idle).collect();
        let mut late: Vec<Input> = Vec::new();
        let mut now_ns = 0u64;
        let mut next_value = 0u64;
        loop {
            let busy = phases.iter().any(|p| !matches!(p, Phase::Idle));
            if ops.len() == shape.operations && !busy && late.is_empty() {
                break;
            }
            now_ns += 1 + rng.below(1_000);
            if !late.is_empty() && rng.chance(1, 8) {
                let input = late.swap_remove(rng.below(late.len() as u64) as usize);
                store.step(&input);
                continue;
            }
            let client = rng.below(shape.clients) as usize;
            match std::mem::replace(&mut phases[client], Phase::Idle) {
                Phase::Idle if ops.len() < shape.operations => {
                    let input = random_input(&mut rng, &store, shape.keys, &mut next_value);
                    let fate = if rng.chance(shape.unknown_per_mille, 1000) {
                        match (input.is_write(), rng.below(3)) {
                            (false, _) | (true, 0) => Fate::Lost,
                            (true, 1) => Fate::Applied,
                            (true, _) => Fate::AppliedLate,
                        }
                    } else {
                        Fate::Answered
                    };
                    ops.push(Operation {
                        client,
                        call_ns: now_ns,
                        input,
                        outcome: Outcome::Unknown {
                            error: "in flight".to_string(),
                            error_ns: None,
                        },
                    });
                    phases[client] = Phase::Called {
                        op: ops.len() - 1,
                        fate,
                    };
                }
                Phase::Idle => {}
                Phase::Called { op, fate } => {
                    let output = match fate {
                        Fate::Answered | Fate::Applied => Some(store.step(&ops[op].input)),
                        Fate::AppliedLate | Fate::Lost => None,
                    };
                    phases[client] = Phase::Done { op, fate, output };
                }
                Phase::Done { op, fate, output } => {
                    ops[op].outcome = match (fate, output) {
                        (Fate::Answered, Some(output)) => Outcome::Ok {
                            ret_ns: now_ns,
                            output,
                        },
                        _ => Outcome::Unknown {
                            error: format!("injected: {fate:?}"),
                            error_ns: Some(now_ns),
                        },
                    };
                    if fate == Fate::AppliedLate {
                        late.push(ops[op].input.clone());
                    }
                }
            }
        }
        History::new(ops)
    }

    fn random_input(rng: &mut SplitMix64, store: &State, keys: u64, next_value: &mut u64) -> Input {
        fn fresh(next_value: &mut u64) -> Vec<u8> {
            *next_value += 1;
            format!("v{next_value}").into_bytes()
        }
        let key = format!("k{}", rng.below(keys)).into_bytes();
        match rng.below(10) {
            0..=3 => Input::Get { key },
            4..=6 => Input::Put {
                key,
                value: fresh(next_value),
            },
            7 => Input::Delete { key },
            _ => {
                let expected = match rng.below(4) {
                    0 | 1 => store.kv.get(&key).cloned(),
                    2 => None,
                    _ => Some(format!("v{}", rng.below(*next_value + 1)).into_bytes()),
                };
                Input::Cas {
                    key,
                    expected,
                    new_value: fresh(next_value),
                }
            }
        }
    }

    /// Changes that make any history illegal. Each returns `None` when the history has
    /// nothing to change.
    /// Changes a history in place, or returns `None` if it has nothing to change.
    type Mutation = fn(&mut History, &mut SplitMix64) -> Option<()>;

    const MUTATIONS: &[(&str, Mutation)] = &[
        // Two writes cannot create one revision.
        (
            "put_takes_another_writes_revision",
            put_takes_another_writes_revision,
        ),
        // Nobody wrote the value.
        ("read_of_unwritten_value", read_of_unwritten_value),
        // Of two puts in sequence, the first ends up with the higher revision.
        (
            "sequential_puts_swap_revisions",
            sequential_puts_swap_revisions,
        ),
        // A read shows the value of an older put that a newer put it saw replaced.
        ("stale_read", stale_read),
    ];

    fn answered(history: &History, pick: impl Fn(&Output) -> bool) -> Vec<usize> {
        (0..history.len())
            .filter(|&i| history.operations[i].output().is_some_and(&pick))
            .collect()
    }

    fn output_mut(history: &mut History, index: usize) -> &mut Output {
        match &mut history.operations[index].outcome {
            Outcome::Ok { output, .. } => output,
            Outcome::Unknown { .. } => unreachable!("picked among answered operations"),
        }
    }

    fn set_revision(output: &mut Output, new: i64) {
        match output {
            Output::Put { revision }
            | Output::Get { revision, .. }
            | Output::Delete { revision, .. }
            | Output::Cas { revision, .. } => *revision = new,
        }
    }

    fn choose(rng: &mut SplitMix64, from: &[usize]) -> Option<usize> {
        (!from.is_empty()).then(|| from[rng.below(from.len() as u64) as usize])
    }

    fn put_takes_another_writes_revision(h: &mut History, rng: &mut SplitMix64) -> Option<()> {
        let puts = answered(h, |o| matches!(o, Output::Put { .. }));
        let writes = answered(h, Output::is_effective_write);
        let a = choose(rng, &puts)?;
        let revision_a = h.operations[a].output()?.revision();
        let others: Vec<usize> = writes
            .into_iter()
            .filter(|&b| h.operations[b].output().map(Output::revision) != Some(revision_a))
            .collect();
        let b = choose(rng, &others)?;
        let revision_b = h.operations[b].output()?.revision();
        set_revision(output_mut(h, a), revision_b);
        Some(())
    }

    fn read_of_unwritten_value(h: &mut History, rng: &mut SplitMix64) -> Option<()> {
        let reads = answered(h, |o| matches!(o, Output::Get { .. }));
        let r = choose(rng, &reads)?;
        if let Output::Get { value, .. } = output_mut(h, r) {
            *value = Some(b"never-written".to_vec());
        }
        Some(())
    }

    fn sequential_puts_swap_revisions(h: &mut History, rng: &mut SplitMix64) -> Option<()> {
        let puts = answered(h, |o| matches!(o, Output::Put { .. }));
        let a = choose(rng, &puts)?;
        let ret_a = h.operations[a].ret_ns()?;
        let later: Vec<usize> = puts
            .into_iter()
            .filter(|&b| h.operations[b].call_ns > ret_a)
            .collect();
        let b = choose(rng, &later)?;
        let (revision_a, revision_b) = (
            h.operations[a].output()?.revision(),
            h.operations[b].output()?.revision(),
        );
        set_revision(output_mut(h, a), revision_b);
        set_revision(output_mut(h, b), revision_a);
        Some(())
    }

    /// Picks a read whose value only one answered put `w` wrote, and gives it the value of
    /// an older answered put `p` to the same key (also its value's only writer). Illegal:
    /// the read's revision is at least `w`'s, which replaced `p`'s value after `p`, and
    /// nobody writes `p`'s value again.
    fn stale_read(h: &mut History, rng: &mut SplitMix64) -> Option<()> {
        let mut writers: HashMap<&[u8], Vec<usize>> = HashMap::new();
        for (i, op) in h.operations.iter().enumerate() {
            match &op.input {
                Input::Put { value, .. }
                | Input::Cas {
                    new_value: value, ..
                } => writers.entry(value).or_default().push(i),
                Input::Get { .. } | Input::Delete { .. } => {}
            }
        }
        let only_writer = |value: &[u8]| match writers.get(value).map(Vec::as_slice) {
            Some(&[w]) => Some(w),
            _ => None,
        };
        let put_revision = |i: usize| match (&h.operations[i].input, h.operations[i].output()) {
            (Input::Put { .. }, Some(Output::Put { revision })) => Some(*revision),
            _ => None,
        };
        let mut choices: Vec<(usize, usize)> = Vec::new();
        for (g, op) in h.operations.iter().enumerate() {
            let Some(Output::Get {
                value: Some(value), ..
            }) = op.output()
            else {
                continue;
            };
            let Some(newer) = only_writer(value).and_then(put_revision) else {
                continue;
            };
            for (p, older) in h.operations.iter().enumerate() {
                if let Input::Put { key, value } = &older.input
                    && key == op.input.key()
                    && only_writer(value) == Some(p)
                    && put_revision(p).is_some_and(|r| r < newer)
                {
                    choices.push((g, p));
                }
            }
        }
        let (g, p) = *choices.get(rng.below(choices.len().max(1) as u64) as usize)?;
        let old_value = match &h.operations[p].input {
            Input::Put { value, .. } => value.clone(),
            _ => unreachable!("chosen among puts"),
        };
        if let Output::Get { value, .. } = output_mut(h, g) {
            *value = Some(old_value);
        }
        Some(())
    }

    fn env_u64(name: &str) -> Option<u64> {
        std::env::var(name).ok().map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
    }

    /// 500 seeds of 200 operations from 8 clients: every generated history is accepted, and
    /// each mutation of it rejected. `LIN_CHECK_FIRST_SEED` and `LIN_CHECK_SEEDS` move or
    /// widen the range; a failure prints the seed and the command that replays it.
    #[test]
    fn random_legal_histories_pass_and_their_mutations_fail() {
        let first = env_u64("LIN_CHECK_FIRST_SEED").unwrap_or(0);
        let count = env_u64("LIN_CHECK_SEEDS").unwrap_or(500);
        let mut mutated = vec![0usize; MUTATIONS.len()];
        let mut unknown_writes = 0;
        for seed in first..first + count {
            let replay = format!(
                "replay: LIN_CHECK_FIRST_SEED={seed} LIN_CHECK_SEEDS=1 cargo test -p \
                 retcd-testkit --release --lib random_legal_histories"
            );
            let history = generate(seed, Shape::SMALL);
            unknown_writes += history
                .operations
                .iter()
                .filter(|op| op.input.is_write() && op.output().is_none())
                .count();
            let verdict = check(&history, &State::new(), &Budget::default());
            assert!(
                verdict.is_linearizable(),
                "seed {seed}: a legal history was not accepted: {verdict}\n{replay}\n{history}"
            );
            for (m, (name, mutate)) in MUTATIONS.iter().enumerate() {
                let mut rng = SplitMix64::new(seed ^ 0x6d75_7461_7465);
                let mut bad = history.clone();
                if mutate(&mut bad, &mut rng).is_none() {
                    continue;
                }
                mutated[m] += 1;
                let verdict = check(&bad, &State::new(), &Budget::default());
                assert!(
                    verdict.is_violation(),
                    "seed {seed}: mutation {name} was not rejected: {verdict}\n{replay}\n{bad}"
                );
            }
        }
        eprintln!(
            "{count} seeds, {unknown_writes} writes with unknown outcome; mutations applied: {:?}",
            MUTATIONS
                .iter()
                .zip(&mutated)
                .map(|((name, _), n)| format!("{name}={n}"))
                .collect::<Vec<_>>()
        );
        for ((name, _), n) in MUTATIONS.iter().zip(&mutated) {
            assert!(
                *n as u64 >= count * 9 / 10,
                "{name} applied to only {n} seeds"
            );
        }
    }

    /// 5,000 operations from 16 clients, 5% of them without an answer, each accepted within
    /// a budget of 400 steps per operation; and the same with one read changed, rejected.
    /// Then one history with 10% unknown outcomes (the hardest of the seeds tried), within
    /// 2,000 steps per operation.
    #[test]
    fn checks_five_thousand_operations_from_sixteen_clients() {
        let heavy = Shape {
            unknown_per_mille: 100,
            ..Shape::LARGE
        };
        let cases = [
            (0, Shape::LARGE, 2_000_000),
            (1, Shape::LARGE, 2_000_000),
            (2, Shape::LARGE, 2_000_000),
            (1, heavy, 10_000_000),
        ];
        for (seed, shape, max_steps) in cases {
            let budget = Budget {
                max_steps,
                ..Budget::default()
            };
            let history = generate(seed, shape);
            let started = Instant::now();
            let (verdict, stats) = check_with_stats(&history, &State::new(), &budget);
            eprintln!(
                "seed {seed}: {}: {verdict} in {:?}, {stats:?}",
                history.summary(),
                started.elapsed()
            );
            assert!(verdict.is_linearizable(), "seed {seed}: {verdict}");

            // A value nobody wrote, in the last read, is found at this size too.
            let mut bad = history.clone();
            let reads = answered(&bad, |o| matches!(o, Output::Get { .. }));
            let last_read = *reads.last().expect("the history has reads");
            if let Output::Get { value, .. } = output_mut(&mut bad, last_read) {
                *value = Some(b"never-written".to_vec());
            }
            let started = Instant::now();
            let (verdict, stats) = check_with_stats(&bad, &State::new(), &budget);
            eprintln!(
                "seed {seed}, changed read #{last_read}: violation={} in {:?}, {stats:?}",
                verdict.is_violation(),
                started.elapsed()
            );
            assert!(verdict.is_violation(), "seed {seed}: {verdict}");
        }
    }

    /// Whether some order of `history` fits `initial` and the plain model, by trying every
    /// order (with every subset of the unknown outcomes): the reference for small histories.
    fn brute_force(history: &History, initial: &State) -> bool {
        fn search(ops: &[&Operation], placed: u32, state: &State) -> bool {
            let answered_left = ops
                .iter()
                .enumerate()
                .any(|(i, op)| placed & (1 << i) == 0 && op.output().is_some());
            if !answered_left {
                return true;
            }
            (0..ops.len()).any(|i| {
                let op = ops[i];
                let ready = placed & (1 << i) == 0
                    && ops.iter().enumerate().all(|(j, before)| {
                        placed & (1 << j) != 0
                            || before.ret_ns().is_none_or(|ret_ns| ret_ns >= op.call_ns)
                    });
                if !ready {
                    return false;
                }
                let mut next = state.clone();
                let output = next.step(&op.input);
                op.output().is_none_or(|recorded| *recorded == output)
                    && search(ops, placed | (1 << i), &next)
            })
        }
        let ops: Vec<&Operation> = history
            .operations
            .iter()
            .filter(|op| op.output().is_some() || op.input.is_write())
            .collect();
        assert!(ops.len() <= 16, "too many for brute force");
        search(&ops, 0, initial)
    }

    /// A small random history, mostly illegal: random requests, intervals and answers over
    /// two keys and three values.
    fn random_small(rng: &mut SplitMix64) -> History {
        let key =
            |rng: &mut SplitMix64| [b"a".to_vec(), b"b".to_vec()][rng.below(2) as usize].clone();
        let value = |rng: &mut SplitMix64| format!("{}", rng.below(3)).into_bytes();
        let maybe_value = |rng: &mut SplitMix64| rng.chance(2, 3).then(|| value(rng));
        let count = 1 + rng.below(7) as usize;
        let ops = (0..count)
            .map(|i| {
                let input = match rng.below(4) {
                    0 => Input::Put {
                        key: key(rng),
                        value: value(rng),
                    },
                    1 => Input::Get { key: key(rng) },
                    2 => Input::Delete { key: key(rng) },
                    _ => Input::Cas {
                        key: key(rng),
                        expected: maybe_value(rng),
                        new_value: value(rng),
                    },
                };
                let revision = 1 + rng.below(5) as i64;
                let output = match &input {
                    Input::Put { .. } => Output::Put { revision },
                    Input::Get { .. } => Output::Get {
                        value: maybe_value(rng),
                        revision,
                    },
                    Input::Delete { .. } => Output::Delete {
                        deleted: rng.below(2) as i64,
                        revision,
                    },
                    Input::Cas { .. } => Output::Cas {
                        succeeded: rng.chance(1, 2),
                        revision,
                    },
                };
                let call_ns = rng.below(20);
                let outcome = if rng.chance(1, 5) {
                    Outcome::Unknown {
                        error: "random".to_string(),
                        error_ns: None,
                    }
                } else {
                    Outcome::Ok {
                        ret_ns: call_ns + rng.below(10),
                        output,
                    }
                };
                Operation {
                    client: i,
                    call_ns,
                    input,
                    outcome,
                }
            })
            .collect();
        History::new(ops)
    }

    /// The search with all its reductions and both passes agrees with trying every order,
    /// on random small histories (most illegal) and on small legal ones with one answer
    /// changed at random.
    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let first = env_u64("LIN_CHECK_FIRST_SEED").unwrap_or(0);
        let count = env_u64("LIN_CHECK_SEEDS").unwrap_or(500) * 40;
        let small = Shape {
            clients: 3,
            operations: 7,
            keys: 2,
            unknown_per_mille: 250,
        };
        let (mut legal, mut illegal) = (0, 0);
        for seed in first..first + count {
            let mut rng = SplitMix64::new(seed);
            let mut initial = State::new();
            if rng.chance(1, 4) {
                initial.step(&Input::Put {
                    key: b"a".to_vec(),
                    value: b"1".to_vec(),
                });
            }
            let history = if rng.chance(1, 2) {
                random_small(&mut rng)
            } else {
                let mut history = generate(seed, small);
                let answered = answered(&history, |_| true);
                if let Some(i) = choose(&mut rng, &answered)
                    && rng.chance(1, 2)
                {
                    let output = output_mut(&mut history, i);
                    match output {
                        Output::Get { value, .. } => {
                            *value = rng.chance(1, 2).then(|| b"v1".to_vec())
                        }
                        Output::Delete { deleted, .. } => *deleted = 1 - *deleted,
                        Output::Cas { succeeded, .. } => *succeeded = !*succeeded,
                        Output::Put { .. } => {}
                    }
                    let revision = output.revision() + rng.below(3) as i64 - 1;
                    set_revision(output, revision);
                }
                history
            };
            let want = brute_force(&history, &initial);
            let verdict = check(&history, &initial, &Budget::default());
            if want {
                legal += 1;
            } else {
                illegal += 1;
            }
            assert!(
                if want {
                    verdict.is_linearizable()
                } else {
                    verdict.is_violation()
                },
                "seed {seed}: brute force says linearizable={want}, the checker: {verdict}\n\
                 initial: {initial}\n{history}"
            );
        }
        eprintln!("{count} small histories: {legal} legal, {illegal} illegal");
        assert!(legal > count / 10 && illegal > count / 10);
    }
}
