//! A checker for etcd's watch guarantees over recorded watch streams.
//!
//! # Input
//!
//! - The *truth*: every change of the cluster's history, in order (by revision, then in the
//!   order of the changes within a revision), from etcd's first write (revision 2) on. It
//!   typically comes from a full-history watch on a healthy member at the end of a test.
//!   [`check_truth`] validates it on its own. The state of a key just before a change (what
//!   `prev_kv` must show) is computed from the truth; the truth's own `prev_kv` may be absent.
//! - [`Watcher`]s: a logical watcher is one key range (with its options) watched by
//!   consecutive [`Session`]s, one per gRPC watch create request, each holding the
//!   [`Response`]s it received in arrival order. When a session breaks, the client resumes
//!   with a new session (see *resumable* below).
//!
//! A session with start revision `S` must deliver the *matching* events: the truth's events
//! whose key is in the watched range, minus the filtered-out kinds (`NOPUT`, `NODELETE`),
//! with revision `>= S`.
//!
//! # Guarantees and how each is checked
//!
//! Responses are first joined into *logical responses*: a run of [`Response::Events`] with
//! `fragment = true` belongs to the next part, up to and including the first part with
//! `fragment = false` (etcd splits a large response into such fragments, and a client joins
//! them before handing the events on). Anything else arriving inside such a run is a
//! [`ViolationKind::BadFragment`]. A run still open when the session ends is an *unfinished*
//! response: its events are checked like any others, but the client never handed them on, so
//! they are not required to hold whole revisions and do not move the resume point. An
//! `Events` response with no events (and no open run) is a progress notification, as in
//! etcd.
//!
//! Every delivered event is then classified, in this order:
//!
//! 1. **unique**: the second delivery of the same (revision, key) in a session is a
//!    [`ViolationKind::Duplicate`] and is otherwise ignored.
//! 2. An event that is not one of the matching events (no such change in the truth, a key
//!    outside the range, a filtered kind, a revision before the start) is a
//!    [`ViolationKind::WrongEvent`] and is otherwise ignored.
//! 3. Otherwise the event takes the place of its (revision, key) among the matching events,
//!    and its contents are compared with the truth's:
//!    - **created events**: a `PUT` must have version 1 and `create_revision ==
//!      mod_revision` exactly when its key did not exist just before (per the truth), else
//!      [`ViolationKind::BadCreate`]. Any other difference (type, value, lease, version,
//!      create revision) is a [`ViolationKind::WrongEvent`].
//!    - **prev_kv**: with `prev_kv` requested, the event's `prev_kv` must equal the key's
//!      state just before its revision, which is none for a created key; without it,
//!      `prev_kv` must be absent. Else [`ViolationKind::BadPrevKv`].
//!
//! From the places of the events so classified:
//!
//! - **ordered**: the places must strictly increase in arrival order (which makes
//!   revisions non-decreasing and the order within a revision the truth's). An event
//!   arriving after one with a later place is [`ViolationKind::Unordered`].
//! - **reliable**: the delivered places must be a prefix of the matching events. Every run of
//!   matching events missing before the last delivered one is a [`ViolationKind::Gap`]. A
//!   session may stop early: a missing tail is fine.
//! - **atomic**: all delivered events of one revision must come in one logical response,
//!   and that response must hold all the matching events of the revision; else
//!   [`ViolationKind::SplitRevision`]. (A missing event before the last delivered one is
//!   already a gap; so the second half applies to the session's last delivered revision:
//!   half a revision followed by nothing.) Together these make revisions strictly increase
//!   from one logical response to the next.
//! - **bookmarkable**: at a [`Response::Progress`] with revision `P`, every matching event
//!   with revision `<= P` must already have been delivered, else
//!   [`ViolationKind::ProgressAhead`]; events missing for good before a later delivered
//!   one are left to the gap report. That also covers "no later event has a revision
//!   `<= P`": such an event, if it is a matching one, was missing at the notification.
//!   `P` below the last delivered event is a [`ViolationKind::HeaderBehind`] (etcd sends a
//!   synced watcher's current revision).
//! - **header revisions**: an `Events` part whose header revision is below the revision of
//!   one of its events is a [`ViolationKind::HeaderBehind`].
//! - **created / canceled responses**: a [`Response::Created`] anywhere but first, and any
//!   response after a [`Response::Canceled`], is a [`ViolationKind::WrongEvent`]. A cancel
//!   with a compact revision `C > 0` ends the session legitimately only if the session
//!   still needed a revision below `C` (etcd cancels a watcher when `next revision <
//!   compact revision`); else [`ViolationKind::BadCompaction`].
//! - **resumable**, per watcher: session `k + 1` must start at session `k`'s resume point,
//!   else [`ViolationKind::BadResume`] (a later start loses events, an earlier one repeats
//!   them). The resume point is the revision of the last event delivered in a finished
//!   logical response plus one; or, if a progress notification came after that event (or
//!   there was no event), its revision plus one; or, if the session saw neither, its own
//!   start revision. After a compaction cancel the next start is not checked: the events
//!   up to the compact revision are gone, and where to go on is the client's choice.
//!
//! A session with start revision 0 ("from now") starts right after the revision in its
//! [`Response::Created`]; since an event may land between the watcher's registration and
//! that header, the checker takes the lower of that and the first delivered event's
//! revision. Without a `Created` response, the first delivered event's revision is taken.
//!
//! [`check`] also runs [`check_truth`] and reports the truth's own problems as
//! [`ViolationKind::BadTruth`] under the watcher name [`TRUTH`]; with a broken truth, other
//! reports may be spurious.
//!
//! # Limits
//!
//! - Not checked: the header revision of `Created` responses, watch ids, cancel reasons,
//!   and whether revision `C` was really compacted when a compaction cancel came.
//! - Events of revisions the truth does not have (after its end) are reported as wrong, so
//!   the truth must be recorded after every watch session ended.
//! - One fault may show as several violations (an event moved into another response may
//!   be both unordered and split off its revision); each check reports what it sees, and
//!   the classification above keeps the usual single faults to one kind.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

/// The type of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Put,
    Delete,
}

/// A key-value pair as etcd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// One change. For a delete, `kv` holds the key and `mod_revision` only (the rest 0/empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: Kv,
    pub prev_kv: Option<Kv>,
}

impl Event {
    /// The revision of the change (`kv.mod_revision`).
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// One response received on a watch, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Created {
        header_revision: i64,
    },
    /// `fragment = true`: more parts of this response follow.
    Events {
        header_revision: i64,
        events: Vec<Event>,
        fragment: bool,
    },
    /// A response with no events that is not created/canceled.
    Progress {
        header_revision: i64,
    },
    Canceled {
        compact_revision: i64,
        reason: String,
    },
}

/// One gRPC watch (one create request) until it ended (stream error, cancel, or end of
/// test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub start_revision: i64,
    pub responses: Vec<Response>,
}

/// A logical watcher: the same key range watched by consecutive sessions. When a session
/// breaks, the client resumes with `start_revision` = last delivered event revision + 1 (or,
/// if it saw a progress notification later than its last event, progress revision + 1; or
/// the previous session's start revision if it delivered nothing).
///
/// Range as in etcd: `range_end` empty = the single `key`; `range_end == [0]` = every key
/// `>= key` (with an empty `key`: all keys); otherwise the keys in `[key, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    pub name: String,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
    /// etcd's `NOPUT` filter: no `PUT` events.
    pub filter_put: bool,
    /// etcd's `NODELETE` filter: no `DELETE` events.
    pub filter_delete: bool,
    pub sessions: Vec<Session>,
}

impl Watcher {
    /// Whether `key` is in the watched range.
    pub fn covers(&self, key: &[u8]) -> bool {
        let start = self.key.as_slice();
        if self.range_end.is_empty() {
            key == start
        } else if self.range_end == [0] {
            key >= start
        } else {
            key >= start && key < self.range_end.as_slice()
        }
    }

    /// Whether the watcher should see `event` (given a suitable start revision): its key is
    /// in range and its kind not filtered out.
    pub fn matches(&self, event: &Event) -> bool {
        self.covers(&event.kv.key) && !self.filters(event.kind)
    }

    fn filters(&self, kind: EventKind) -> bool {
        match kind {
            EventKind::Put => self.filter_put,
            EventKind::Delete => self.filter_delete,
        }
    }
}

/// What went wrong; see the module documentation for when each is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    /// An event arrived after one that comes later in the history.
    Unordered,
    /// The same (revision, key) was delivered twice in a session.
    Duplicate,
    /// Matching events are missing before a delivered one.
    Gap,
    /// A revision's events were not delivered in one logical response.
    SplitRevision,
    /// A session did not start where the previous one left off.
    BadResume,
    /// A progress notification claims a revision whose events were not all delivered.
    ProgressAhead,
    /// `prev_kv` differs from the key's state before the change, or is unrequested.
    BadPrevKv,
    /// A `PUT` claims to create its key (version 1) when it did not, or the reverse.
    BadCreate,
    /// An event the watcher should not see, or differing from the history; or a response
    /// where none may be (a misplaced `Created`, anything after a cancel).
    WrongEvent,
    /// A header revision below the revision of delivered events.
    HeaderBehind,
    /// A fragmented response interrupted by another response.
    BadFragment,
    /// A compaction cancel although the session needed no compacted revision.
    BadCompaction,
    /// The truth itself is inconsistent (reported by [`check_truth`]).
    BadTruth,
}

/// One violated guarantee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The watcher's name, or [`TRUTH`] for problems of the truth itself.
    pub watcher: String,
    /// The index of the session in the watcher's `sessions` (0 for the truth).
    pub session: usize,
    pub kind: ViolationKind,
    pub detail: String,
}

/// The watcher name under which problems of the truth are reported.
pub const TRUTH: &str = "truth";

/// The outcome of [`check`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// Sessions checked.
    pub sessions: usize,
    /// Events received (responses after a cancel are not checked, nor counted).
    pub events: usize,
    /// Progress notifications received (likewise).
    pub progress: usize,
}

impl Report {
    /// True if no guarantee was violated.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many violations of `kind` were found.
    pub fn count(&self, kind: ViolationKind) -> usize {
        self.violations.iter().filter(|v| v.kind == kind).count()
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} session {}: {:?}: {}",
            self.watcher, self.session, self.kind, self.detail
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} violation(s) in {} sessions, {} events, {} progress notifications",
            self.violations.len(),
            self.sessions,
            self.events,
            self.progress
        )?;
        for violation in &self.violations {
            write!(f, "\n  {violation}")?;
        }
        Ok(())
    }
}

/// Validates the truth: revisions start at 2 and every revision up to the last has at least
/// one event, in ascending order; a key changes at most once per revision; a `PUT` of a new
/// key has version 1 and `create_revision == mod_revision`, a later one the previous
/// version + 1 and the same create revision; a `DELETE` removes an existing key and carries
/// only the key and revision; a `prev_kv`, where present, is the key's previous state.
pub fn check_truth(truth: &[Event]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut sink = Sink {
        watcher: TRUTH,
        session: 0,
        out: &mut violations,
    };
    let states = Truth::new(truth);
    let mut previous_revision = 1;
    let mut keys_in_revision: HashSet<&[u8]> = HashSet::new();
    for (i, event) in truth.iter().enumerate() {
        let revision = event.revision();
        let key = event.kv.key.as_slice();
        let what = format!("event {i} ({})", describe(event));
        if i == 0 && revision != 2 {
            sink.report(
                ViolationKind::BadTruth,
                format!("{what}: the history starts at revision {revision}, not 2"),
            );
        } else if i > 0 && revision < previous_revision {
            sink.report(
                ViolationKind::BadTruth,
                format!("{what}: revision goes back from {previous_revision}"),
            );
        } else if i > 0 && revision > previous_revision + 1 {
            sink.report(
                ViolationKind::BadTruth,
                format!(
                    "{what}: revisions {}..={} have no events",
                    previous_revision + 1,
                    revision - 1
                ),
            );
        }
        if revision != previous_revision {
            keys_in_revision.clear();
        }
        previous_revision = revision;
        if !keys_in_revision.insert(key) {
            sink.report(
                ViolationKind::BadTruth,
                format!("{what}: the key already changed in this revision"),
            );
        }
        let before = states.prev[i];
        match (event.kind, before) {
            (EventKind::Put, None) => {
                if event.kv.version != 1 || event.kv.create_revision != revision {
                    sink.report(
                        ViolationKind::BadTruth,
                        format!(
                            "{what}: creates the key, so must have version 1 and \
                             create_revision {revision}"
                        ),
                    );
                }
            }
            (EventKind::Put, Some(before)) => {
                if event.kv.version != before.version + 1
                    || event.kv.create_revision != before.create_revision
                {
                    sink.report(
                        ViolationKind::BadTruth,
                        format!(
                            "{what}: the key was at version {} created at {}, so must have \
                             version {} and create_revision {}",
                            before.version,
                            before.create_revision,
                            before.version + 1,
                            before.create_revision
                        ),
                    );
                }
            }
            (EventKind::Delete, None) => sink.report(
                ViolationKind::BadTruth,
                format!("{what}: deletes a key that does not exist"),
            ),
            (EventKind::Delete, Some(_)) => {
                let bare = Kv {
                    key: event.kv.key.clone(),
                    mod_revision: revision,
                    ..Kv::default()
                };
                if event.kv != bare {
                    sink.report(
                        ViolationKind::BadTruth,
                        format!("{what}: a delete must carry only its key and revision"),
                    );
                }
            }
        }
        if let Some(prev_kv) = &event.prev_kv
            && Some(prev_kv) != before
        {
            sink.report(
                ViolationKind::BadTruth,
                format!(
                    "{what}: prev_kv {} but the key was {}",
                    describe_kv(Some(prev_kv)),
                    describe_kv(before)
                ),
            );
        }
    }
    violations
}

/// Checks every watcher's sessions against the truth (see the module documentation). The
/// truth is validated too ([`check_truth`]).
pub fn check(truth: &[Event], watchers: &[Watcher]) -> Report {
    let mut report = Report {
        violations: check_truth(truth),
        ..Report::default()
    };
    let states = Truth::new(truth);
    for watcher in watchers {
        check_watcher(&states, watcher, &mut report);
    }
    report
}

/// The truth with what the checks need computed once.
struct Truth<'a> {
    events: &'a [Event],
    /// `prev[i]`: the state of event `i`'s key just before it (`None`: it did not exist).
    prev: Vec<Option<&'a Kv>>,
    /// The index in `events` of the change of each (revision, key).
    index: HashMap<(i64, &'a [u8]), usize>,
}

impl<'a> Truth<'a> {
    fn new(events: &'a [Event]) -> Self {
        let mut state: HashMap<&[u8], &Kv> = HashMap::new();
        let mut prev = Vec::with_capacity(events.len());
        let mut index = HashMap::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let key = event.kv.key.as_slice();
            prev.push(state.get(key).copied());
            match event.kind {
                EventKind::Put => {
                    state.insert(key, &event.kv);
                }
                EventKind::Delete => {
                    state.remove(key);
                }
            }
            index.entry((event.revision(), key)).or_insert(i);
        }
        Truth {
            events,
            prev,
            index,
        }
    }

    fn revision(&self, i: usize) -> i64 {
        self.events[i].revision()
    }
}

/// Where violations go, labelled with the watcher and session.
struct Sink<'a> {
    watcher: &'a str,
    session: usize,
    out: &'a mut Vec<Violation>,
}

impl Sink<'_> {
    fn report(&mut self, kind: ViolationKind, detail: String) {
        self.out.push(Violation {
            watcher: self.watcher.to_owned(),
            session: self.session,
            kind,
            detail,
        });
    }
}

fn check_watcher(truth: &Truth<'_>, watcher: &Watcher, report: &mut Report) {
    // Indices into the truth of every event the watcher should see, from any start.
    let matching: Vec<usize> = (0..truth.events.len())
        .filter(|&i| watcher.matches(&truth.events[i]))
        .collect();
    let mut resume: Option<Resume> = None;
    for (number, session) in watcher.sessions.iter().enumerate() {
        let mut sink = Sink {
            watcher: &watcher.name,
            session: number,
            out: &mut report.violations,
        };
        if let Some(expected) = &resume
            && session.start_revision != expected.revision
        {
            sink.report(
                ViolationKind::BadResume,
                format!(
                    "starts at revision {}, but the previous session's resume point is {} \
                     ({}); a later start loses events, an earlier one repeats them",
                    session.start_revision, expected.revision, expected.why
                ),
            );
        }
        let outcome = check_session(truth, watcher, &matching, session, &mut sink);
        report.sessions += 1;
        report.events += outcome.events;
        report.progress += outcome.progress;
        resume = outcome.resume;
    }
}

/// Where the next session must start, and why.
struct Resume {
    revision: i64,
    why: String,
}

/// What one session tells about the next, and its counts.
struct Outcome {
    /// `None` after a compaction cancel.
    resume: Option<Resume>,
    events: usize,
    progress: usize,
}

/// One part of a logical response.
struct Part<'a> {
    /// Index of the response in the session.
    index: usize,
    header_revision: i64,
    events: &'a [Event],
}

/// A logical response: fragments joined, `Created` taken out.
enum Item<'a> {
    Events {
        parts: Vec<Part<'a>>,
        /// False for fragments still waiting for their last part when the session ended.
        finished: bool,
    },
    Progress {
        index: usize,
        header_revision: i64,
    },
    Canceled {
        index: usize,
        compact_revision: i64,
    },
}

/// Joins fragments into logical responses and checks where `Created`, `Canceled` and
/// fragments may be. Returns the `Created` header revision (if first) and the items.
fn logical_responses<'a>(
    session: &'a Session,
    sink: &mut Sink<'_>,
) -> (Option<i64>, Vec<Item<'a>>) {
    let mut created = None;
    let mut items = Vec::new();
    let mut open: Option<Vec<Part<'a>>> = None;
    let mut canceled_at: Option<usize> = None;
    let mut after_cancel = 0;
    for (index, response) in session.responses.iter().enumerate() {
        if canceled_at.is_some() {
            after_cancel += 1;
            continue;
        }
        if let Response::Events {
            header_revision,
            events,
            fragment,
        } = response
        {
            let parts = open.get_or_insert_with(Vec::new);
            parts.push(Part {
                index,
                header_revision: *header_revision,
                events,
            });
            if !fragment {
                let parts = open.take().unwrap_or_default();
                if parts.iter().all(|part| part.events.is_empty()) {
                    // No events at all: etcd's progress notification.
                    let last = parts.last().map_or(0, |part| part.header_revision);
                    items.push(Item::Progress {
                        index,
                        header_revision: last,
                    });
                } else {
                    items.push(Item::Events {
                        parts,
                        finished: true,
                    });
                }
            }
            continue;
        }
        if let Some(parts) = open.take() {
            sink.report(
                ViolationKind::BadFragment,
                format!(
                    "response {index} ({}) interrupts the fragmented response that started at \
                     response {}",
                    response_name(response),
                    parts[0].index
                ),
            );
            items.push(Item::Events {
                parts,
                finished: true,
            });
        }
        match response {
            Response::Created { header_revision } => {
                if index == 0 {
                    created = Some(*header_revision);
                } else {
                    sink.report(
                        ViolationKind::WrongEvent,
                        format!("a created response at position {index}, not first"),
                    );
                }
            }
            Response::Progress { header_revision } => items.push(Item::Progress {
                index,
                header_revision: *header_revision,
            }),
            Response::Canceled {
                compact_revision, ..
            } => {
                canceled_at = Some(index);
                items.push(Item::Canceled {
                    index,
                    compact_revision: *compact_revision,
                });
            }
            Response::Events { .. } => unreachable!("handled above"),
        }
    }
    if let Some(parts) = open.take() {
        items.push(Item::Events {
            parts,
            finished: false,
        });
    }
    if let Some(at) = canceled_at
        && after_cancel > 0
    {
        sink.report(
            ViolationKind::WrongEvent,
            format!("{after_cancel} response(s) after the cancel at response {at}"),
        );
    }
    (created, items)
}

fn response_name(response: &Response) -> &'static str {
    match response {
        Response::Created { .. } => "created",
        Response::Events { .. } => "events",
        Response::Progress { .. } => "progress",
        Response::Canceled { .. } => "canceled",
    }
}

/// The revision the session starts at: its start revision, or for 0 ("from now") the
/// revision after its `Created` header, lowered to the first delivered event's revision.
/// `None` if that cannot be known (start 0, no `Created`, no events).
fn effective_start(start_revision: i64, created: Option<i64>, items: &[Item<'_>]) -> Option<i64> {
    if start_revision > 0 {
        return Some(start_revision);
    }
    let first_event = items.iter().find_map(|item| match item {
        Item::Events { parts, .. } => parts
            .iter()
            .find_map(|part| part.events.first())
            .map(Event::revision),
        _ => None,
    });
    match (created.map(|header| header + 1), first_event) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Per-session bookkeeping while the events are classified.
struct Delivery<'t, 'a> {
    truth: &'t Truth<'t>,
    watcher: &'a Watcher,
    /// Every matching event of the watcher, from any start (indices into the truth).
    all_matching: &'a [usize],
    /// Where this session's matching events start in `all_matching`.
    offset: usize,
    start: Option<i64>,
    /// (revision, key) of every event delivered so far.
    seen: HashSet<(i64, &'a [u8])>,
    /// For each of this session's matching events, the logical response that delivered it.
    delivered: Vec<Option<usize>>,
    /// The highest place delivered so far.
    highest: Option<usize>,
    /// The first place not delivered yet.
    first_missing: usize,
}

impl<'a> Delivery<'_, 'a> {
    fn matching(&self) -> &'a [usize] {
        &self.all_matching[self.offset..]
    }

    /// The session's matching event at `place`, described.
    fn describe_place(&self, place: usize) -> String {
        describe(&self.truth.events[self.matching()[place]])
    }

    /// Classifies one delivered event (see the module documentation) and returns its place
    /// among the session's matching events, if it has one.
    fn classify(&mut self, event: &'a Event, sink: &mut Sink<'_>) -> Option<usize> {
        let revision = event.revision();
        let key = event.kv.key.as_slice();
        let shown = describe(event);
        if !self.seen.insert((revision, key)) {
            sink.report(ViolationKind::Duplicate, format!("{shown} delivered again"));
            return None;
        }
        let wrong = |sink: &mut Sink<'_>, why: String| {
            sink.report(ViolationKind::WrongEvent, format!("{shown}: {why}"));
            None
        };
        if !self.watcher.covers(key) {
            return wrong(sink, "the key is outside the watched range".into());
        }
        if self.watcher.filters(event.kind) {
            return wrong(sink, format!("{:?} events are filtered out", event.kind));
        }
        let Some(&t) = self.truth.index.get(&(revision, key)) else {
            return wrong(
                sink,
                "the history has no change of this key at this revision".into(),
            );
        };
        let expected = &self.truth.events[t];
        if !self.watcher.matches(expected) {
            return wrong(
                sink,
                format!(
                    "the history has {} here, which is filtered out",
                    describe(expected)
                ),
            );
        }
        let place = match (self.start, self.all_matching.binary_search(&t)) {
            (Some(start), Ok(p)) if revision >= start && p >= self.offset => p - self.offset,
            _ => {
                let start = self.start.map_or("unknown".into(), |s| s.to_string());
                return wrong(sink, format!("before the session's start revision {start}"));
            }
        };

        let before = self.truth.prev[t];
        let mut differences = Vec::new();
        if event.kind != expected.kind {
            differences.push("type");
        }
        if event.kv.value != expected.kv.value {
            differences.push("value");
        }
        if event.kv.lease != expected.kv.lease {
            differences.push("lease");
        }
        let mut bad_create = false;
        if event.kind == EventKind::Put && expected.kind == EventKind::Put {
            let is_create = event.kv.version == 1 && event.kv.create_revision == revision;
            let claims_create = event.kv.version == 1 || event.kv.create_revision == revision;
            if before.is_none() && !is_create {
                bad_create = true;
                sink.report(
                    ViolationKind::BadCreate,
                    format!(
                        "{shown}: the key did not exist before, so the event must be a create \
                         (version 1, create_revision {revision})"
                    ),
                );
            } else if let Some(before) = before
                && claims_create
            {
                bad_create = true;
                sink.report(
                    ViolationKind::BadCreate,
                    format!(
                        "{shown}: claims to create the key, which existed ({})",
                        describe_kv(Some(before))
                    ),
                );
            }
        }
        if !bad_create {
            if event.kv.version != expected.kv.version {
                differences.push("version");
            }
            if event.kv.create_revision != expected.kv.create_revision {
                differences.push("create_revision");
            }
        }
        if !differences.is_empty() {
            sink.report(
                ViolationKind::WrongEvent,
                format!(
                    "{shown} differs from the history's {} in {}",
                    describe(expected),
                    differences.join(", ")
                ),
            );
        }

        let expected_prev = if self.watcher.prev_kv { before } else { None };
        if event.prev_kv.as_ref() != expected_prev {
            let why = if self.watcher.prev_kv {
                "the key's previous state is"
            } else {
                "prev_kv was not requested, so expected"
            };
            sink.report(
                ViolationKind::BadPrevKv,
                format!(
                    "{shown}: prev_kv is {}, but {why} {}",
                    describe_kv(event.prev_kv.as_ref()),
                    describe_kv(expected_prev)
                ),
            );
        }
        Some(place)
    }
}

fn check_session(
    truth: &Truth<'_>,
    watcher: &Watcher,
    all_matching: &[usize],
    session: &Session,
    sink: &mut Sink<'_>,
) -> Outcome {
    let (created, items) = logical_responses(session, sink);
    let start = effective_start(session.start_revision, created, &items);
    let offset = match start {
        Some(start) => all_matching.partition_point(|&t| truth.revision(t) < start),
        None => all_matching.len(),
    };
    let mut delivery = Delivery {
        truth,
        watcher,
        all_matching,
        offset,
        start,
        seen: HashSet::new(),
        delivered: vec![None; all_matching.len() - offset],
        highest: None,
        first_missing: 0,
    };
    let matching = delivery.matching();

    let mut events = 0;
    let mut progress = 0;
    // The last event received, in arrival order.
    let mut last_event: Option<i64> = None;
    // For the resume point: the last event of a finished response, and a progress
    // notification after it.
    let mut resume_event: Option<i64> = None;
    let mut resume_progress: Option<i64> = None;
    let mut compacted = false;
    // The first response index of each logical response, and whether it was finished.
    let mut item_index = Vec::with_capacity(items.len());
    let mut item_finished = Vec::with_capacity(items.len());
    // Progress notifications that came while matching events up to them were missing:
    // (logical response, response index, revision, places due by then).
    let mut early_progress = Vec::new();

    for (id, item) in items.iter().enumerate() {
        match item {
            Item::Events { parts, finished } => {
                item_index.push(parts[0].index);
                item_finished.push(*finished);
                for part in parts {
                    events += part.events.len();
                    if let Some(max) = part.events.iter().map(Event::revision).max()
                        && part.header_revision < max
                    {
                        sink.report(
                            ViolationKind::HeaderBehind,
                            format!(
                                "response {} has header revision {} but an event of revision \
                                 {max}",
                                part.index, part.header_revision
                            ),
                        );
                    }
                    for event in part.events {
                        last_event = Some(event.revision());
                        let Some(place) = delivery.classify(event, sink) else {
                            continue;
                        };
                        if let Some(highest) = delivery.highest
                            && place < highest
                        {
                            sink.report(
                                ViolationKind::Unordered,
                                format!(
                                    "{} (response {}) arrived after {}",
                                    describe(event),
                                    part.index,
                                    delivery.describe_place(highest)
                                ),
                            );
                        }
                        delivery.highest = delivery.highest.max(Some(place));
                        delivery.delivered[place] = Some(id);
                        while delivery
                            .delivered
                            .get(delivery.first_missing)
                            .is_some_and(Option::is_some)
                        {
                            delivery.first_missing += 1;
                        }
                    }
                }
                if *finished {
                    resume_event = last_event;
                    resume_progress = None;
                }
            }
            Item::Progress {
                index,
                header_revision,
            } => {
                item_index.push(*index);
                item_finished.push(true);
                progress += 1;
                let p = *header_revision;
                if let Some(last) = last_event
                    && p < last
                {
                    sink.report(
                        ViolationKind::HeaderBehind,
                        format!(
                            "progress notification at revision {p} (response {index}) after an \
                             event of revision {last}"
                        ),
                    );
                }
                // Decided at the end, when it is known which missing events are gaps.
                let due = matching.partition_point(|&t| truth.revision(t) <= p);
                if delivery.first_missing < due {
                    early_progress.push((id, *index, p, delivery.first_missing..due));
                }
                resume_progress = Some(p);
            }
            Item::Canceled {
                index,
                compact_revision,
            } => {
                item_index.push(*index);
                item_finished.push(true);
                if *compact_revision > 0 {
                    compacted = true;
                    let needed = resume_progress.or(resume_event).map(|r| r + 1).or(start);
                    if let Some(needed) = needed
                        && *compact_revision <= needed
                    {
                        sink.report(
                            ViolationKind::BadCompaction,
                            format!(
                                "canceled for compaction at revision {compact_revision} \
                                 (response {index}), but the session only needed revisions \
                                 from {needed} on"
                            ),
                        );
                    }
                }
            }
        }
    }

    // Reliable: nothing missing before the last delivered event.
    let highest = delivery.highest;
    if let Some(highest) = highest {
        let mut place = 0;
        while place < highest {
            if delivery.delivered[place].is_some() {
                place += 1;
                continue;
            }
            let end = (place..highest)
                .find(|&p| delivery.delivered[p].is_some())
                .unwrap_or(highest);
            sink.report(
                ViolationKind::Gap,
                format!(
                    "{} matching event(s) missing, from {} to {}, before {}",
                    end - place,
                    delivery.describe_place(place),
                    delivery.describe_place(end - 1),
                    delivery.describe_place(highest)
                ),
            );
            place = end;
        }
    }

    // Bookmarkable: a progress notification came before events up to it, which came
    // later or never (without a later event making them a gap).
    for (id, index, p, due) in early_progress {
        let ahead: Vec<usize> = due
            .filter(|&place| match delivery.delivered[place] {
                Some(by) => by > id,
                None => highest.is_none_or(|highest| place > highest),
            })
            .collect();
        if let Some(&first) = ahead.first() {
            sink.report(
                ViolationKind::ProgressAhead,
                format!(
                    "progress notification at revision {p} (response {index}) before {} \
                     matching event(s) up to it were delivered, the first {}",
                    ahead.len(),
                    delivery.describe_place(first)
                ),
            );
        }
    }

    // Atomic: each delivered revision in one logical response, whole.
    let mut low = 0;
    while low < matching.len() {
        let revision = truth.revision(matching[low]);
        let high = low + matching[low..].partition_point(|&t| truth.revision(t) == revision);
        let responses: BTreeSet<usize> = delivery.delivered[low..high]
            .iter()
            .flatten()
            .copied()
            .collect();
        if responses.len() > 1 {
            let at: Vec<String> = responses
                .iter()
                .map(|&id| item_index[id].to_string())
                .collect();
            sink.report(
                ViolationKind::SplitRevision,
                format!(
                    "the events of revision {revision} came in {} responses (starting at \
                     responses {})",
                    responses.len(),
                    at.join(", ")
                ),
            );
        } else if let Some(&id) = responses.first()
            && item_finished[id]
        {
            let cut_off = (low..high)
                .filter(|&p| delivery.delivered[p].is_none() && highest.is_some_and(|h| p > h))
                .count();
            if cut_off > 0 {
                sink.report(
                    ViolationKind::SplitRevision,
                    format!(
                        "response {} holds {} of the {} matching events of revision {revision}; \
                         the rest never came",
                        item_index[id],
                        high - low - cut_off,
                        high - low
                    ),
                );
            }
        }
        low = high;
    }

    let resume = if compacted {
        None
    } else if let Some(p) = resume_progress {
        Some(Resume {
            revision: p + 1,
            why: format!("after the progress notification at revision {p}"),
        })
    } else if let Some(last) = resume_event {
        Some(Resume {
            revision: last + 1,
            why: format!("after its last event, of revision {last}"),
        })
    } else {
        Some(Resume {
            revision: session.start_revision,
            why: "it delivered nothing, so its own start".into(),
        })
    };
    Outcome {
        resume,
        events,
        progress,
    }
}

/// Bytes as a quoted string, escaping what is not printable ASCII.
fn show(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

fn describe(event: &Event) -> String {
    let kv = &event.kv;
    match event.kind {
        EventKind::Put => format!(
            "PUT {}@{} = {} (version {}, created {}, lease {})",
            show(&kv.key),
            kv.mod_revision,
            show(&kv.value),
            kv.version,
            kv.create_revision,
            kv.lease
        ),
        EventKind::Delete => format!("DELETE {}@{}", show(&kv.key), kv.mod_revision),
    }
}

fn describe_kv(kv: Option<&Kv>) -> String {
    match kv {
        None => "none".into(),
        Some(kv) => format!(
            "{} = {} (revision {}, version {}, created {}, lease {})",
            show(&kv.key),
            show(&kv.value),
            kv.mod_revision,
            kv.version,
            kv.create_revision,
            kv.lease
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use retcd_prng::SplitMix64;
    use std::collections::BTreeMap;

    use EventKind::{Delete, Put};
    use ViolationKind::*;

    // ---- building truths ----

    enum Op {
        Put(Vec<u8>, Vec<u8>, i64),
        Delete(Vec<u8>),
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put(key.into(), value.into(), 0)
    }

    fn put_lease(key: &str, value: &str, lease: i64) -> Op {
        Op::Put(key.into(), value.into(), lease)
    }

    fn del(key: &str) -> Op {
        Op::Delete(key.into())
    }

    /// A key-value store that emits the events of each transaction it applies, with
    /// `prev_kv` filled in (as a full-history watch with `prev_kv` would).
    struct Model {
        state: BTreeMap<Vec<u8>, Kv>,
        revision: i64,
        events: Vec<Event>,
    }

    impl Model {
        fn new() -> Self {
            Model {
                state: BTreeMap::new(),
                revision: 1,
                events: Vec::new(),
            }
        }

        /// Applies `ops` (distinct keys) as one revision and returns it.
        fn apply(&mut self, ops: Vec<Op>) -> i64 {
            assert!(!ops.is_empty(), "a revision needs a change");
            self.revision += 1;
            let revision = self.revision;
            for op in ops {
                match op {
                    Op::Put(key, value, lease) => {
                        let prev = self.state.get(&key).cloned();
                        let kv = Kv {
                            key: key.clone(),
                            value,
                            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                            mod_revision: revision,
                            version: prev.as_ref().map_or(1, |p| p.version + 1),
                            lease,
                        };
                        self.state.insert(key, kv.clone());
                        self.events.push(Event {
                            kind: Put,
                            kv,
                            prev_kv: prev,
                        });
                    }
                    Op::Delete(key) => {
                        let prev = self.state.remove(&key).expect("delete of a missing key");
                        self.events.push(Event {
                            kind: Delete,
                            kv: Kv {
                                key,
                                mod_revision: revision,
                                ..Kv::default()
                            },
                            prev_kv: Some(prev),
                        });
                    }
                }
            }
            revision
        }
    }

    // ---- building watch streams ----

    fn watcher(name: &str, key: &[u8], range_end: &[u8]) -> Watcher {
        Watcher {
            name: name.into(),
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: false,
            filter_put: false,
            filter_delete: false,
            sessions: Vec::new(),
        }
    }

    /// The truth's events of `revisions` as `w` must see them.
    fn seen_by(truth: &[Event], w: &Watcher, revisions: &[i64]) -> Vec<Event> {
        let states = Truth::new(truth);
        truth
            .iter()
            .enumerate()
            .filter(|(_, e)| revisions.contains(&e.revision()) && w.matches(e))
            .map(|(i, e)| Event {
                kind: e.kind,
                kv: e.kv.clone(),
                prev_kv: if w.prev_kv {
                    states.prev[i].cloned()
                } else {
                    None
                },
            })
            .collect()
    }

    fn created(header_revision: i64) -> Response {
        Response::Created { header_revision }
    }

    fn events(header_revision: i64, events: Vec<Event>) -> Response {
        Response::Events {
            header_revision,
            events,
            fragment: false,
        }
    }

    fn fragment(header_revision: i64, events: Vec<Event>) -> Response {
        Response::Events {
            header_revision,
            events,
            fragment: true,
        }
    }

    fn progress(header_revision: i64) -> Response {
        Response::Progress { header_revision }
    }

    fn session(start_revision: i64, responses: Vec<Response>) -> Session {
        Session {
            start_revision,
            responses,
        }
    }

    /// The events of response `r` of session `s` of `w`.
    fn events_mut(w: &mut Watcher, s: usize, r: usize) -> &mut Vec<Event> {
        match &mut w.sessions[s].responses[r] {
            Response::Events { events, .. } => events,
            other => panic!("response {r} of session {s} is {other:?}"),
        }
    }

    /// A valid history: ten revisions, four watchers with ranges, filters, `prev_kv`,
    /// start revision 0, fragments (one left unfinished), progress notifications, resumes
    /// and a compaction.
    fn base() -> (Vec<Event>, Vec<Watcher>) {
        let mut m = Model::new();
        m.apply(vec![put("a", "1")]); // 2
        m.apply(vec![put("b", "1")]); // 3
        m.apply(vec![put("a", "2"), put("c", "1")]); // 4
        m.apply(vec![del("b")]); // 5
        m.apply(vec![put("b", "2")]); // 6: b again, version 1
        m.apply(vec![del("a"), put("c", "2"), put("d", "1")]); // 7
        m.apply(vec![put_lease("a", "3", 7)]); // 8
        m.apply(vec![put("e", "1")]); // 9
        m.apply(vec![put("c", "3")]); // 10
        let truth = m.events;

        // Keys a..e with prev_kv, over three sessions.
        let mut range = watcher("range", b"a", b"e");
        range.prev_kv = true;
        let r7 = seen_by(&truth, &range, &[7]);
        range.sessions = vec![
            session(
                2,
                vec![
                    created(1),
                    events(3, seen_by(&truth, &range, &[2, 3])),
                    events(4, seen_by(&truth, &range, &[4])),
                    progress(4),
                ],
            ),
            session(
                5,
                vec![
                    created(5),
                    events(7, seen_by(&truth, &range, &[5, 6])),
                    fragment(7, r7[..1].to_vec()),
                    events(7, r7[1..].to_vec()),
                    // Unfinished when the stream broke: not handed on, not resumed from.
                    fragment(8, seen_by(&truth, &range, &[8])),
                ],
            ),
            session(
                8,
                vec![
                    events(9, seen_by(&truth, &range, &[8])),
                    progress(9),
                    events(10, seen_by(&truth, &range, &[10])),
                    progress(10),
                ],
            ),
        ];

        // Every key, deletes only.
        let mut deletes = watcher("deletes", b"", &[0]);
        deletes.filter_put = true;
        deletes.sessions = vec![
            session(
                1,
                vec![created(1), events(6, seen_by(&truth, &deletes, &[5]))],
            ),
            session(
                6,
                vec![
                    created(6),
                    events(7, seen_by(&truth, &deletes, &[7])),
                    progress(10),
                ],
            ),
        ];

        // Key c from "now" (start 0), puts only, with prev_kv.
        let mut now = watcher("now", b"c", b"");
        now.prev_kv = true;
        now.filter_delete = true;
        now.sessions = vec![session(
            0,
            vec![
                created(3),
                events(4, seen_by(&truth, &now, &[4])),
                events(10, seen_by(&truth, &now, &[7, 10])),
            ],
        )];

        // Key b, first from a compacted revision, then from the compact revision.
        let mut compacted = watcher("compacted", b"b", b"");
        compacted.sessions = vec![
            session(
                2,
                vec![
                    created(4),
                    Response::Canceled {
                        compact_revision: 4,
                        reason: "mvcc: required revision has been compacted".into(),
                    },
                ],
            ),
            session(
                4,
                vec![created(6), events(6, seen_by(&truth, &compacted, &[5, 6]))],
            ),
        ];

        (truth, vec![range, deletes, now, compacted])
    }

    const RANGE: usize = 0;
    const DELETES: usize = 1;
    const COMPACTED: usize = 3;

    /// Asserts that `report` has violations, all of `kind`.
    fn assert_only(report: &Report, kind: ViolationKind) {
        assert!(report.count(kind) > 0, "expected {kind:?}, got {report}");
        assert!(
            report.violations.iter().all(|v| v.kind == kind),
            "expected only {kind:?}, got {report}"
        );
    }

    // ---- the valid history ----

    #[test]
    fn valid_history_passes() {
        let (truth, watchers) = base();
        assert!(check_truth(&truth).is_empty());
        let report = check(&truth, &watchers);
        assert!(report.is_ok(), "{report}");
        assert_eq!(
            (report.sessions, report.events, report.progress),
            (8, 19, 4),
            "{report}"
        );
    }

    #[test]
    fn ranges_follow_etcd() {
        let single = watcher("", b"b", b"");
        assert!(single.covers(b"b") && !single.covers(b"ba") && !single.covers(b"a"));
        let from = watcher("", b"b", &[0]);
        assert!(from.covers(b"b") && from.covers(b"zz") && !from.covers(b"a"));
        let all = watcher("", b"", &[0]);
        assert!(all.covers(b"") && all.covers(b"\xff"));
        let half_open = watcher("", b"b", b"d");
        assert!(half_open.covers(b"b") && half_open.covers(b"cz") && !half_open.covers(b"d"));
    }

    // ---- one test per violation ----

    #[test]
    fn duplicate_event_is_reported() {
        let (truth, mut ws) = base();
        let events = events_mut(&mut ws[RANGE], 0, 1);
        events.push(events[1].clone());
        assert_only(&check(&truth, &ws), Duplicate);

        // Also when the copy comes in a later response.
        let (truth, mut ws) = base();
        let copy = events_mut(&mut ws[RANGE], 0, 1)[1].clone();
        events_mut(&mut ws[RANGE], 0, 2).insert(0, copy);
        assert_only(&check(&truth, &ws), Duplicate);
    }

    #[test]
    fn reordered_events_are_reported() {
        // Across revisions: rev 3 before rev 2.
        let (truth, mut ws) = base();
        events_mut(&mut ws[RANGE], 0, 1).swap(0, 1);
        assert_only(&check(&truth, &ws), Unordered);

        // Within a revision: d before c at revision 7, inside a fragmented response.
        let (truth, mut ws) = base();
        events_mut(&mut ws[RANGE], 1, 3).swap(0, 1);
        assert_only(&check(&truth, &ws), Unordered);

        // Whole responses swapped.
        let (truth, mut ws) = base();
        ws[RANGE].sessions[0].responses.swap(1, 2);
        let report = check(&truth, &ws);
        assert!(report.count(Unordered) > 0, "{report}");
    }

    #[test]
    fn missing_event_is_a_gap() {
        let (truth, mut ws) = base();
        events_mut(&mut ws[RANGE], 0, 1).remove(1); // PUT b@3
        assert_only(&check(&truth, &ws), Gap);
    }

    #[test]
    fn revision_split_over_two_responses_is_reported() {
        let (truth, mut ws) = base();
        let responses = &mut ws[RANGE].sessions[0].responses;
        let Response::Events { events: both, .. } = responses[2].clone() else {
            unreachable!()
        };
        responses[2] = events(4, both[..1].to_vec());
        responses.insert(3, events(4, both[1..].to_vec()));
        assert_only(&check(&truth, &ws), SplitRevision);
    }

    #[test]
    fn half_a_revision_at_the_end_is_reported() {
        // The session ends after a finished response with half of revision 7.
        let (truth, mut ws) = base();
        let responses = &mut ws[RANGE].sessions[1].responses;
        responses.truncate(4);
        events_mut(&mut ws[RANGE], 1, 3).pop(); // PUT d@7 never comes
        // The next session still starts at 8, right after the last event the client got.
        let report = check(&truth, &ws);
        assert_only(&report, SplitRevision);
    }

    #[test]
    fn resume_starting_late_is_reported() {
        let (truth, mut ws) = base();
        let s = &mut ws[RANGE].sessions[1];
        s.start_revision = 6;
        s.responses[1] = events(7, seen_by(&truth, &watcher_with_prev("a", "e"), &[6]));
        assert_only(&check(&truth, &ws), BadResume);
    }

    #[test]
    fn resume_starting_early_is_reported() {
        let (truth, mut ws) = base();
        let early = events(4, seen_by(&truth, &watcher_with_prev("a", "e"), &[4]));
        let s = &mut ws[RANGE].sessions[1];
        s.start_revision = 4;
        s.responses.insert(1, early);
        assert_only(&check(&truth, &ws), BadResume);
    }

    fn watcher_with_prev(key: &str, range_end: &str) -> Watcher {
        let mut w = watcher("", key.as_bytes(), range_end.as_bytes());
        w.prev_kv = true;
        w
    }

    #[test]
    fn progress_ahead_of_an_undelivered_event_is_reported() {
        let (truth, mut ws) = base();
        // Claims revision 10 before PUT c@10 came.
        ws[RANGE].sessions[2].responses[1] = progress(10);
        assert_only(&check(&truth, &ws), ProgressAhead);
    }

    #[test]
    fn wrong_prev_kv_is_reported() {
        let (truth, mut ws) = base();
        let event = &mut events_mut(&mut ws[RANGE], 0, 2)[0]; // PUT a@4, prev a=1
        event.prev_kv.as_mut().expect("prev_kv").value = b"x".to_vec();
        assert_only(&check(&truth, &ws), BadPrevKv);

        // A create with a prev_kv: b@6 re-creates b, deleted at 5.
        let (truth, mut ws) = base();
        let old_b = truth[1].kv.clone();
        events_mut(&mut ws[RANGE], 1, 1)[1].prev_kv = Some(old_b);
        assert_only(&check(&truth, &ws), BadPrevKv);
    }

    #[test]
    fn missing_prev_kv_is_reported() {
        let (truth, mut ws) = base();
        events_mut(&mut ws[RANGE], 0, 2)[0].prev_kv = None;
        assert_only(&check(&truth, &ws), BadPrevKv);
    }

    #[test]
    fn unrequested_prev_kv_is_reported() {
        let (truth, mut ws) = base();
        let event = &mut events_mut(&mut ws[DELETES], 0, 1)[0]; // DELETE b@5
        event.prev_kv = Some(truth[1].kv.clone());
        assert_only(&check(&truth, &ws), BadPrevKv);
    }

    #[test]
    fn wrong_create_flag_is_reported() {
        // b@6 re-creates b: version 2 would say it existed.
        let (truth, mut ws) = base();
        events_mut(&mut ws[RANGE], 1, 1)[1].kv.version = 2;
        assert_only(&check(&truth, &ws), BadCreate);

        // a@4 updates a: version 1 would say it was created.
        let (truth, mut ws) = base();
        events_mut(&mut ws[RANGE], 0, 2)[0].kv.version = 1;
        assert_only(&check(&truth, &ws), BadCreate);

        // a@4 with create_revision == mod_revision also claims a create.
        let (truth, mut ws) = base();
        events_mut(&mut ws[RANGE], 0, 2)[0].kv.create_revision = 4;
        assert_only(&check(&truth, &ws), BadCreate);
    }

    #[test]
    fn filtered_event_delivered_is_wrong() {
        // A PUT to the NOPUT watcher.
        let (truth, mut ws) = base();
        let mut all = watcher("", b"", &[0]);
        all.filter_delete = true;
        let put_b = seen_by(&truth, &all, &[3]);
        events_mut(&mut ws[DELETES], 0, 1).insert(0, put_b[0].clone());
        assert_only(&check(&truth, &ws), WrongEvent);
    }

    #[test]
    fn events_differing_from_the_history_are_wrong() {
        // A value the history never had.
        let (truth, mut ws) = base();
        events_mut(&mut ws[RANGE], 0, 2)[1].kv.value = b"x".to_vec();
        assert_only(&check(&truth, &ws), WrongEvent);

        // A key outside the range (e@9 to a..e).
        let (truth, mut ws) = base();
        let e9 = seen_by(&truth, &watcher("", b"e", b""), &[9]);
        events_mut(&mut ws[RANGE], 2, 2).insert(0, e9[0].clone());
        assert_only(&check(&truth, &ws), WrongEvent);

        // A change the history does not have.
        let (truth, mut ws) = base();
        let mut ghost = events_mut(&mut ws[RANGE], 2, 2)[0].clone();
        ghost.kv.key = b"b".to_vec();
        ghost.prev_kv = None;
        events_mut(&mut ws[RANGE], 2, 2).insert(0, ghost);
        assert_only(&check(&truth, &ws), WrongEvent);

        // An event before the session's start: a@2 in the session from 5, prepended.
        let (truth, mut ws) = base();
        let a2 = seen_by(&truth, &watcher_with_prev("a", "e"), &[2]);
        events_mut(&mut ws[RANGE], 1, 1).insert(0, a2[0].clone());
        assert_only(&check(&truth, &ws), WrongEvent);
    }

    #[test]
    fn header_revision_behind_is_reported() {
        let (truth, mut ws) = base();
        let Response::Events {
            header_revision, ..
        } = &mut ws[RANGE].sessions[0].responses[1]
        else {
            unreachable!()
        };
        *header_revision = 2; // holds PUT b@3
        assert_only(&check(&truth, &ws), HeaderBehind);

        // A progress notification below a delivered event.
        let (truth, mut ws) = base();
        ws[RANGE].sessions[2].responses[1] = progress(7);
        assert_only(&check(&truth, &ws), HeaderBehind);
    }

    #[test]
    fn misplaced_created_and_responses_after_cancel_are_wrong() {
        let (truth, mut ws) = base();
        ws[RANGE].sessions[0].responses.swap(0, 1);
        assert_only(&check(&truth, &ws), WrongEvent);

        let (truth, mut ws) = base();
        ws[COMPACTED].sessions[0].responses.push(progress(4));
        assert_only(&check(&truth, &ws), WrongEvent);
    }

    #[test]
    fn interrupted_fragments_are_reported() {
        let (truth, mut ws) = base();
        ws[RANGE].sessions[1].responses.insert(3, progress(7));
        let report = check(&truth, &ws);
        assert!(report.count(BadFragment) == 1, "{report}");
    }

    #[test]
    fn compaction_of_nothing_needed_is_reported() {
        let (truth, mut ws) = base();
        ws[COMPACTED].sessions[0].responses[1] = Response::Canceled {
            compact_revision: 2,
            reason: "compacted".into(),
        };
        assert_only(&check(&truth, &ws), BadCompaction);
    }

    #[test]
    fn broken_truths_are_reported() {
        let (truth, _) = base();
        type Break = fn(&mut Vec<Event>);
        let breaks: &[(&str, Break)] = &[
            ("starts late", |t| {
                t.remove(0);
            }),
            ("revision without events", |t| {
                t.remove(4); // DELETE b@5
            }),
            ("revision goes back", |t| t.swap(0, 1)),
            ("version skips", |t| t[2].kv.version = 3),
            ("create revision changes", |t| t[2].kv.create_revision = 3),
            ("new key not version 1", |t| t[1].kv.version = 2),
            ("delete with a value", |t| t[4].kv.value = b"x".to_vec()),
            ("wrong prev_kv", |t| t[2].prev_kv = Some(Kv::default())),
            ("key twice in a revision", |t| {
                let copy = t[3].clone();
                t.insert(4, copy);
            }),
        ];
        for (name, f) in breaks {
            let mut bad = truth.clone();
            f(&mut bad);
            let violations = check_truth(&bad);
            assert!(!violations.is_empty(), "{name}: not reported");
            assert!(
                violations
                    .iter()
                    .all(|v| v.kind == BadTruth && v.watcher == TRUTH)
            );
            let report = check(&bad, &[]);
            assert!(
                report.count(BadTruth) > 0,
                "{name}: check did not include it"
            );
        }

        // Deleting a missing key, with the revisions still contiguous.
        let mut bad = truth.clone();
        bad[4].kv.key = b"z".to_vec();
        assert!(!check_truth(&bad).is_empty());
    }

    // ---- random histories ----

    const KEYS: &[&str] = &["a", "b", "c", "d", "e", "f"];

    fn random_truth(rng: &mut SplitMix64) -> Vec<Event> {
        let mut m = Model::new();
        for _ in 0..3 + rng.below(20) {
            let mut ops = Vec::new();
            let mut used = HashSet::new();
            for _ in 0..1 + rng.below(3) {
                let key = KEYS[rng.below(KEYS.len() as u64) as usize];
                if !used.insert(key) {
                    continue;
                }
                if m.state.contains_key(key.as_bytes()) && rng.chance(1, 3) {
                    ops.push(del(key));
                } else {
                    let value = format!("v{}", rng.below(100));
                    let lease = if rng.chance(1, 4) {
                        1 + rng.below(3) as i64
                    } else {
                        0
                    };
                    ops.push(put_lease(key, &value, lease));
                }
            }
            m.apply(ops);
        }
        let mut truth = m.events;
        if rng.chance(1, 2) {
            for event in &mut truth {
                event.prev_kv = None;
            }
        }
        truth
    }

    /// A value in `low..=high`.
    fn between(rng: &mut SplitMix64, low: i64, high: i64) -> i64 {
        low + rng.below((high - low + 1) as u64) as i64
    }

    fn random_key(rng: &mut SplitMix64) -> Vec<u8> {
        KEYS[rng.below(KEYS.len() as u64) as usize].into()
    }

    fn random_watcher(rng: &mut SplitMix64, truth: &[Event], name: String) -> Watcher {
        let (key, range_end) = match rng.below(4) {
            0 => (random_key(rng), Vec::new()),
            1 => {
                let low = rng.below(KEYS.len() as u64) as usize;
                let high = low + 1 + rng.below((KEYS.len() - low) as u64) as usize;
                let end = KEYS
                    .get(high)
                    .map_or(b"z".to_vec(), |k| k.as_bytes().to_vec());
                (KEYS[low].into(), end)
            }
            2 => (random_key(rng), vec![0]),
            _ => (Vec::new(), vec![0]),
        };
        let mut w = Watcher {
            name,
            key,
            range_end,
            prev_kv: rng.chance(1, 2),
            filter_put: rng.chance(1, 5),
            filter_delete: rng.chance(1, 5),
            sessions: Vec::new(),
        };
        w.sessions = random_sessions(rng, truth, &w);
        w
    }

    /// Splits `events` into fragments, all but the last with `fragment = true` (all of them
    /// if `unfinished`).
    fn push_parts(
        rng: &mut SplitMix64,
        responses: &mut Vec<Response>,
        header_revision: i64,
        events: &[Event],
        unfinished: bool,
    ) {
        let mut cuts: Vec<usize> = Vec::new();
        if events.len() > 1 && (unfinished || rng.chance(1, 3)) {
            cuts = (1..events.len()).filter(|_| rng.chance(1, 2)).collect();
        }
        cuts.push(events.len());
        let mut from = 0;
        for (i, &to) in cuts.iter().enumerate() {
            responses.push(Response::Events {
                header_revision,
                events: events[from..to].to_vec(),
                fragment: unfinished || i + 1 < cuts.len(),
            });
            from = to;
        }
    }

    /// Valid sessions of `w`: what a correct server sends and a correct client resumes.
    fn random_sessions(rng: &mut SplitMix64, truth: &[Event], w: &Watcher) -> Vec<Session> {
        let last_revision = truth.last().map_or(1, Event::revision);
        let seen: Vec<Event> = {
            let revisions: Vec<i64> = (2..=last_revision).collect();
            seen_by(truth, w, &revisions)
        };
        // The end of the revision group starting at `from`, `groups` groups on.
        let groups_end = |from: usize, groups: u64| {
            let mut end = from;
            for _ in 0..groups {
                if end == seen.len() {
                    break;
                }
                let revision = seen[end].revision();
                while end < seen.len() && seen[end].revision() == revision {
                    end += 1;
                }
            }
            end
        };

        let mut sessions = Vec::new();
        let mut start = if rng.chance(1, 5) {
            0
        } else {
            between(rng, 1, last_revision + 1)
        };
        for _ in 0..1 + rng.below(4) {
            let mut responses = Vec::new();
            let effective = if start == 0 {
                let header = between(rng, 1, last_revision);
                responses.push(created(header));
                header + 1
            } else {
                if rng.chance(1, 2) {
                    responses.push(created(last_revision));
                }
                start
            };
            let mut next = seen.partition_point(|e| e.revision() < effective);
            let mut last_event: Option<i64> = None;
            let mut last_progress: Option<i64> = None;
            for _ in 0..rng.below(8) {
                if next < seen.len() && rng.chance(2, 3) {
                    let end = groups_end(next, 1 + rng.below(3));
                    let last = seen[end - 1].revision();
                    let header = between(rng, last, last_revision);
                    push_parts(rng, &mut responses, header, &seen[next..end], false);
                    next = end;
                    last_event = Some(last);
                    last_progress = None;
                } else {
                    let low = last_event.unwrap_or(0).max(effective - 1).max(1);
                    let high = seen.get(next).map_or(last_revision, |e| e.revision() - 1);
                    let high = high.min(last_revision);
                    if low <= high {
                        let p = between(rng, low, high);
                        responses.push(progress(p));
                        last_progress = Some(p);
                    }
                }
            }
            let needed = last_progress.or(last_event).map_or(effective, |r| r + 1);
            let mut compact = None;
            match rng.below(5) {
                0 if next < seen.len() => {
                    let end = groups_end(next, 1 + rng.below(2));
                    let header = seen[end - 1].revision();
                    push_parts(rng, &mut responses, header, &seen[next..end], true);
                }
                1 => responses.push(Response::Canceled {
                    compact_revision: 0,
                    reason: "canceled".into(),
                }),
                2 if needed < last_revision => {
                    let c = between(rng, needed + 1, last_revision);
                    responses.push(Response::Canceled {
                        compact_revision: c,
                        reason: "compacted".into(),
                    });
                    compact = Some(c);
                }
                _ => {}
            }
            sessions.push(session(start, responses));
            start =
                compact.unwrap_or_else(|| last_progress.or(last_event).map_or(start, |r| r + 1));
        }
        sessions
    }

    /// Where an event is: (watcher, session, response, event).
    type Place = (usize, usize, usize, usize);

    fn places(ws: &[Watcher]) -> Vec<Place> {
        let mut out = Vec::new();
        for (w, watcher) in ws.iter().enumerate() {
            for (s, session) in watcher.sessions.iter().enumerate() {
                for (r, response) in session.responses.iter().enumerate() {
                    if let Response::Events { events, .. } = response {
                        out.extend((0..events.len()).map(|e| (w, s, r, e)));
                    }
                }
            }
        }
        out
    }

    fn pick<T: Copy>(rng: &mut SplitMix64, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[rng.below(items.len() as u64) as usize])
        }
    }

    fn event_at(ws: &mut [Watcher], (w, s, r, e): Place) -> &mut Event {
        &mut events_mut(&mut ws[w], s, r)[e]
    }

    /// Places followed by another event of the same session.
    fn followed(ws: &[Watcher]) -> Vec<(Place, Place)> {
        let all = places(ws);
        all.windows(2)
            .filter(|pair| (pair[0].0, pair[0].1) == (pair[1].0, pair[1].1))
            .map(|pair| (pair[0], pair[1]))
            .collect()
    }

    /// A change that breaks a valid history; returns the kind it must be reported as, or
    /// `None` if the history has no place for it.
    type Mutation = fn(&mut [Watcher], &[Event], &mut SplitMix64) -> Option<ViolationKind>;

    const MUTATIONS: &[(&str, Mutation)] = &[
        ("duplicate", |ws, _, rng| {
            let at = pick(rng, &places(ws))?;
            let copy = event_at(ws, at).clone();
            events_mut(&mut ws[at.0], at.1, at.2).insert(at.3 + 1, copy);
            Some(Duplicate)
        }),
        ("drop", |ws, _, rng| {
            let (at, _) = pick(rng, &followed(ws))?;
            events_mut(&mut ws[at.0], at.1, at.2).remove(at.3);
            Some(Gap)
        }),
        ("swap", |ws, _, rng| {
            let (a, b) = pick(rng, &followed(ws))?;
            let first = event_at(ws, a).clone();
            let second = std::mem::replace(event_at(ws, b), first);
            *event_at(ws, a) = second;
            Some(Unordered)
        }),
        ("value", |ws, _, rng| {
            let puts: Vec<Place> = places(ws)
                .into_iter()
                .filter(|&at| event_at(ws, at).kind == Put)
                .collect();
            let at = pick(rng, &puts)?;
            event_at(ws, at).kv.value.push(b'x');
            Some(WrongEvent)
        }),
        ("prev_kv", |ws, _, rng| {
            let at = pick(rng, &places(ws))?;
            let event = event_at(ws, at);
            event.prev_kv = match event.prev_kv.take() {
                Some(mut kv) if rng.chance(1, 2) => {
                    kv.value.push(b'x');
                    Some(kv)
                }
                Some(_) => None,
                None => Some(Kv {
                    key: event.kv.key.clone(),
                    value: b"bogus".to_vec(),
                    ..Kv::default()
                }),
            };
            Some(BadPrevKv)
        }),
        ("create", |ws, _, rng| {
            let puts: Vec<Place> = places(ws)
                .into_iter()
                .filter(|&at| event_at(ws, at).kind == Put)
                .collect();
            let at = pick(rng, &puts)?;
            let kv = &mut event_at(ws, at).kv;
            kv.version = if kv.version == 1 { 2 } else { 1 };
            Some(BadCreate)
        }),
        ("header", |ws, _, rng| {
            let at = pick(rng, &places(ws))?;
            let Response::Events {
                header_revision,
                events,
                ..
            } = &mut ws[at.0].sessions[at.1].responses[at.2]
            else {
                unreachable!()
            };
            *header_revision = events.iter().map(Event::revision).max()? - 1;
            Some(HeaderBehind)
        }),
        ("progress ahead", |ws, _, rng| {
            let (w, s, r, e) = pick(rng, &places(ws))?;
            let revision = events_mut(&mut ws[w], s, r)[e].revision();
            let responses = &mut ws[w].sessions[s].responses;
            let mut chain_start = r;
            while chain_start > 0
                && matches!(
                    responses[chain_start - 1],
                    Response::Events { fragment: true, .. }
                )
            {
                chain_start -= 1;
            }
            responses.insert(chain_start, progress(revision));
            Some(ProgressAhead)
        }),
        ("resume", |ws, _, rng| {
            let mut resumed = Vec::new();
            for (w, watcher) in ws.iter().enumerate() {
                for s in 1..watcher.sessions.len() {
                    let after_compaction =
                        watcher.sessions[s - 1].responses.iter().any(|r| match r {
                            Response::Canceled {
                                compact_revision, ..
                            } => *compact_revision > 0,
                            _ => false,
                        });
                    if !after_compaction {
                        resumed.push((w, s));
                    }
                }
            }
            let (w, s) = pick(rng, &resumed)?;
            let start = &mut ws[w].sessions[s].start_revision;
            *start += if *start > 0 && rng.chance(1, 2) {
                -1
            } else {
                1
            };
            Some(BadResume)
        }),
        ("unwatched event", |ws, truth, rng| {
            let at = pick(rng, &places(ws))?;
            let w = &ws[at.0];
            let start = w.sessions[at.1].start_revision;
            let candidates: Vec<usize> = (0..truth.len())
                .filter(|&t| !w.matches(&truth[t]) || (start > 0 && truth[t].revision() < start))
                .collect();
            let mut event = match pick(rng, &candidates) {
                Some(t) => truth[t].clone(),
                None => Event {
                    kind: Put,
                    kv: Kv {
                        key: b"zz".to_vec(),
                        value: b"ghost".to_vec(),
                        create_revision: 2,
                        mod_revision: 2,
                        version: 1,
                        lease: 0,
                    },
                    prev_kv: None,
                },
            };
            if !w.prev_kv {
                event.prev_kv = None;
            }
            events_mut(&mut ws[at.0], at.1, at.2).insert(at.3, event);
            Some(WrongEvent)
        }),
        ("split", |ws, _, rng| {
            let splittable: Vec<Place> = places(ws)
                .into_iter()
                .filter(|&(w, s, r, e)| {
                    e > 0 && {
                        let events = events_mut_ref(&ws[w], s, r);
                        events[e - 1].revision() == events[e].revision()
                    }
                })
                .collect();
            let (w, s, r, e) = pick(rng, &splittable)?;
            let responses = &mut ws[w].sessions[s].responses;
            let Response::Events {
                header_revision,
                events,
                fragment,
            } = responses[r].clone()
            else {
                unreachable!()
            };
            responses[r] = Response::Events {
                header_revision,
                events: events[..e].to_vec(),
                fragment: false,
            };
            responses.insert(
                r + 1,
                Response::Events {
                    header_revision,
                    events: events[e..].to_vec(),
                    fragment,
                },
            );
            Some(SplitRevision)
        }),
        ("after cancel", |ws, _, rng| {
            let canceled: Vec<(usize, usize)> = ws
                .iter()
                .enumerate()
                .flat_map(|(w, watcher)| {
                    watcher
                        .sessions
                        .iter()
                        .enumerate()
                        .filter_map(move |(s, session)| {
                            matches!(session.responses.last(), Some(Response::Canceled { .. }))
                                .then_some((w, s))
                        })
                })
                .collect();
            let (w, s) = pick(rng, &canceled)?;
            ws[w].sessions[s].responses.push(progress(1));
            Some(WrongEvent)
        }),
    ];

    fn events_mut_ref(w: &Watcher, s: usize, r: usize) -> &[Event] {
        match &w.sessions[s].responses[r] {
            Response::Events { events, .. } => events,
            _ => &[],
        }
    }

    fn env_u64(name: &str) -> Option<u64> {
        std::env::var(name).ok().map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
    }

    /// 300 seeds: random truths and valid sessions of three random watchers pass; every
    /// mutation of them is reported, as its kind. `WATCH_CHECK_FIRST_SEED` and
    /// `WATCH_CHECK_SEEDS` move or widen the range; a failure prints the seed.
    #[test]
    fn random_histories_pass_and_their_mutations_fail() {
        let first = env_u64("WATCH_CHECK_FIRST_SEED").unwrap_or(0);
        let count = env_u64("WATCH_CHECK_SEEDS").unwrap_or(300);
        let mut applied = vec![0usize; MUTATIONS.len()];
        let mut shapes = Shapes::default();
        for seed in first..first + count {
            let replay = format!(
                "replay: WATCH_CHECK_FIRST_SEED={seed} WATCH_CHECK_SEEDS=1 cargo test -p \
                 retcd-testkit --release --lib random_histories"
            );
            let mut rng = SplitMix64::new(seed);
            let truth = random_truth(&mut rng);
            let violations = check_truth(&truth);
            assert!(
                violations.is_empty(),
                "seed {seed}: {violations:?}\n{replay}"
            );
            let watchers: Vec<Watcher> = (0..3)
                .map(|i| random_watcher(&mut rng, &truth, format!("w{i}")))
                .collect();
            let report = check(&truth, &watchers);
            assert!(
                report.is_ok(),
                "seed {seed}: a valid history was rejected: {report}\n{replay}\n{watchers:#?}"
            );
            shapes.add(&watchers, &report);
            for (m, (name, mutate)) in MUTATIONS.iter().enumerate() {
                let mut rng = SplitMix64::new(seed ^ 0x6d75_7461_7465);
                let mut bad = watchers.clone();
                let Some(kind) = mutate(&mut bad, &truth, &mut rng) else {
                    continue;
                };
                applied[m] += 1;
                let report = check(&truth, &bad);
                assert!(
                    report.count(kind) > 0,
                    "seed {seed}: mutation {name} not reported as {kind:?}: {report}\n{replay}\n\
                     {bad:#?}"
                );
            }
        }
        eprintln!(
            "mutations applied: {:?}",
            MUTATIONS
                .iter()
                .zip(&applied)
                .map(|((name, _), n)| format!("{name}={n}"))
                .collect::<Vec<_>>()
        );
        eprintln!("valid histories: {shapes:?}");
        if count >= 100 {
            for ((name, _), n) in MUTATIONS.iter().zip(&applied) {
                assert!(*n >= 10, "mutation {name} applied only {n} times");
            }
            let Shapes {
                sessions,
                events,
                progress,
                fragments,
                unfinished,
                compactions,
                from_now,
            } = shapes;
            for n in [
                sessions,
                events,
                progress,
                fragments,
                unfinished,
                compactions,
                from_now,
            ] {
                assert!(n >= 10, "the generator misses a shape: {shapes:?}");
            }
        }
    }

    /// What the valid random histories contained, to see that the generator covers
    /// every feature the checker handles.
    #[derive(Debug, Default, Clone, Copy)]
    struct Shapes {
        sessions: usize,
        events: usize,
        progress: usize,
        /// `Events` parts with `fragment = true`.
        fragments: usize,
        /// Sessions ending in the middle of a fragmented response.
        unfinished: usize,
        /// Sessions canceled for compaction.
        compactions: usize,
        /// Sessions with start revision 0.
        from_now: usize,
    }

    impl Shapes {
        fn add(&mut self, watchers: &[Watcher], report: &Report) {
            self.sessions += report.sessions;
            self.events += report.events;
            self.progress += report.progress;
            for session in watchers.iter().flat_map(|w| &w.sessions) {
                let responses = &session.responses;
                self.fragments += responses
                    .iter()
                    .filter(|r| matches!(r, Response::Events { fragment: true, .. }))
                    .count();
                match responses.last() {
                    Some(Response::Events { fragment: true, .. }) => self.unfinished += 1,
                    Some(Response::Canceled {
                        compact_revision, ..
                    }) if *compact_revision > 0 => self.compactions += 1,
                    _ => {}
                }
                self.from_now += usize::from(session.start_revision == 0);
            }
        }
    }
}
