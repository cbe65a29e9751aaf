//! Histories of key-value operations, as clients saw them.
//!
//! A history is what a linearizability checker needs and nothing more: for every operation,
//! which client issued it, when it was called and when it returned (nanoseconds on one
//! monotonic clock), what was asked ([`Input`]) and what came back ([`Output`]), including
//! etcd's header revision. Four operations are modelled, all on a single key: `Put`, a
//! linearizable `Get` (a Range without `serializable`), `Delete` and a compare-and-set `Cas`
//! (a Txn that puts only if the key's value equals the expected one, or if the key does not
//! exist when no value is expected).
//!
//! An operation that got no answer has an unknown outcome ([`Outcome::Unknown`]): a write may
//! or may not have taken effect, and may take effect long after the client gave up (a timed
//! out proposal can still commit). The checker lets such writes happen at any time after
//! their call, or never. A read without an answer tells nothing and is ignored.
//!
//! [`Recorder`] performs operations through `etcd_client::KvClient` and records them. It
//! logs the call before sending the request, so an operation whose future is dropped (a test
//! timeout, a cancelled task) stays in the history with an unknown outcome rather than
//! vanishing while its write may still land.
//!
//! # Text form
//!
//! [`History::dump`] writes one line per operation and [`History::parse`] reads it back, so a
//! history from a failed run can be saved with the failure and replayed. Times are seconds
//! with nanosecond digits; keys and values are quoted, with bytes outside printable ASCII (and
//! space, `"` and `\`) written as `\xNN`:
//!
//! ```text
//! #0 c1 0.001000000 0.001500000 put "k1" "v1" -> rev=2
//! #1 c2 0.001200000 0.001900000 get "k1" -> "v1" rev=2
//! #2 c1 0.002000000 0.002100000 get "k2" -> none rev=2
//! #3 c3 0.002000000 0.002400000 delete "k1" -> deleted=1 rev=3
//! #4 c2 0.002500000 0.002600000 cas "k1" none "v2" -> succeeded=true rev=4
//! #5 c4 0.003000000 ? put "k2" "v3" -> error@1.003000000: deadline exceeded
//! ```
//!
//! The leading `#n` is optional when parsing; blank lines and lines starting with `//` are
//! skipped. An error message is the rest of its line and is informational only.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp};

/// What a client asked for. Every operation names exactly one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// A linearizable Range of one key.
    Get {
        key: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Txn: if the key holds `expected` (or, for `None`, does not exist), put `new_value`.
    Cas {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new_value: Vec<u8>,
    },
}

impl Input {
    pub fn key(&self) -> &[u8] {
        match self {
            Input::Put { key, .. }
            | Input::Get { key }
            | Input::Delete { key }
            | Input::Cas { key, .. } => key,
        }
    }

    /// Whether the operation may change the store (everything but `Get`).
    pub fn is_write(&self) -> bool {
        !matches!(self, Input::Get { .. })
    }
}

/// What the server answered. `revision` is always the response header's revision: for a
/// write that changed the store, the revision it created; otherwise the store's revision
/// when the request was served.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    Put {
        revision: i64,
    },
    Get {
        value: Option<Vec<u8>>,
        revision: i64,
    },
    /// `deleted` is etcd's count of deleted keys: 0 or 1 for one key.
    Delete {
        deleted: i64,
        revision: i64,
    },
    Cas {
        succeeded: bool,
        revision: i64,
    },
}

impl Output {
    pub fn revision(&self) -> i64 {
        match self {
            Output::Put { revision }
            | Output::Get { revision, .. }
            | Output::Delete { revision, .. }
            | Output::Cas { revision, .. } => *revision,
        }
    }

    /// Whether this is the kind of answer `input` gets (a Put's answer for a Put, ...).
    pub fn answers(&self, input: &Input) -> bool {
        matches!(
            (input, self),
            (Input::Put { .. }, Output::Put { .. })
                | (Input::Get { .. }, Output::Get { .. })
                | (Input::Delete { .. }, Output::Delete { .. })
                | (Input::Cas { .. }, Output::Cas { .. })
        )
    }

    /// Whether the answer says the store changed (and `revision` is the new revision).
    pub fn is_effective_write(&self) -> bool {
        match self {
            Output::Put { .. } => true,
            Output::Get { .. } => false,
            Output::Delete { deleted, .. } => *deleted > 0,
            Output::Cas { succeeded, .. } => *succeeded,
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered; the answer arrived at `ret_ns`.
    Ok { ret_ns: u64, output: Output },
    /// No answer: an error, a timeout, or the caller dropped the request. A write may have
    /// taken effect at any time after its call, or never; a read is ignored by the checker.
    /// `error_ns` is when the error came back (`None` if it never did).
    Unknown {
        error: String,
        error_ns: Option<u64>,
    },
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Which client issued it. Operations of one client never overlap in time.
    pub client: usize,
    /// When the request was sent, in nanoseconds since the recorder started.
    pub call_ns: u64,
    pub input: Input,
    pub outcome: Outcome,
}

impl Operation {
    /// When the answer arrived, if one did.
    pub fn ret_ns(&self) -> Option<u64> {
        match &self.outcome {
            Outcome::Ok { ret_ns, .. } => Some(*ret_ns),
            Outcome::Unknown { .. } => None,
        }
    }

    /// The answer, if one arrived.
    pub fn output(&self) -> Option<&Output> {
        match &self.outcome {
            Outcome::Ok { output, .. } => Some(output),
            Outcome::Unknown { .. } => None,
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Put { key, value } => write!(f, "put {} {}", Quoted(key), Quoted(value)),
            Input::Get { key } => write!(f, "get {}", Quoted(key)),
            Input::Delete { key } => write!(f, "delete {}", Quoted(key)),
            Input::Cas {
                key,
                expected,
                new_value,
            } => write!(
                f,
                "cas {} {} {}",
                Quoted(key),
                MaybeQuoted(expected.as_deref()),
                Quoted(new_value)
            ),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Put { revision } => write!(f, "rev={revision}"),
            Output::Get { value, revision } => {
                write!(f, "{} rev={revision}", MaybeQuoted(value.as_deref()))
            }
            Output::Delete { deleted, revision } => write!(f, "deleted={deleted} rev={revision}"),
            Output::Cas {
                succeeded,
                revision,
            } => write!(f, "succeeded={succeeded} rev={revision}"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok { output, .. } => write!(f, "{output}"),
            Outcome::Unknown { error, error_ns } => {
                f.write_str("error")?;
                if let Some(ns) = error_ns {
                    write!(f, "@{}", Seconds(*ns))?;
                }
                // The message is the rest of the line: keep it on one line.
                let one_line: String = error
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                write!(f, ": {}", one_line.trim())
            }
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{} {} ", self.client, Seconds(self.call_ns))?;
        match self.ret_ns() {
            Some(ret_ns) => write!(f, "{}", Seconds(ret_ns))?,
            // As wide as a time below 10 s, so that short dumps line up.
            None => write!(f, "{:<11}", "?")?,
        }
        write!(f, " {} -> {}", self.input, self.outcome)
    }
}

/// Nanoseconds shown as seconds with nine decimals.
pub(crate) struct Seconds(pub(crate) u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:09}",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

/// Bytes in double quotes; anything but printable ASCII other than space, `"` and `\` is
/// written as `\xNN`, so a quoted string is one whitespace-free token.
pub(crate) struct Quoted<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            if b.is_ascii_graphic() && b != b'"' && b != b'\\' {
                write!(f, "{}", char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_str("\"")
    }
}

/// A quoted value, or `none` for an absent one.
pub(crate) struct MaybeQuoted<'a>(pub(crate) Option<&'a [u8]>);

impl fmt::Display for MaybeQuoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(bytes) => write!(f, "{}", Quoted(bytes)),
            None => f.write_str("none"),
        }
    }
}

/// A sequence of operations, in the order they were called (the checker does not rely on
/// the order; the dump is easier to read in it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub operations: Vec<Operation>,
}

impl History {
    pub fn new(operations: Vec<Operation>) -> History {
        History { operations }
    }

    pub fn len(&self) -> usize {
        self.operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// One line per operation, `#index` first (see the module docs for the format).
    pub fn dump(&self) -> String {
        self.to_string()
    }

    /// Counts for a failure report, e.g. `1200 operations from 8 clients: 700 reads (3
    /// failed), 500 writes (12 with unknown outcome)`.
    pub fn summary(&self) -> String {
        let mut reads = 0;
        let mut failed_reads = 0;
        let mut writes = 0;
        let mut unknown_writes = 0;
        let mut clients = std::collections::BTreeSet::new();
        for op in &self.operations {
            clients.insert(op.client);
            let unknown = op.output().is_none();
            if op.input.is_write() {
                writes += 1;
                unknown_writes += usize::from(unknown);
            } else {
                reads += 1;
                failed_reads += usize::from(unknown);
            }
        }
        format!(
            "{} operations from {} clients: {reads} reads ({failed_reads} failed), \
             {writes} writes ({unknown_writes} with unknown outcome)",
            self.operations.len(),
            clients.len()
        )
    }

    /// Writes [`History::dump`] to `path`, replacing the file.
    pub fn write_to_file(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.dump())
    }

    /// Reads a file written by [`History::write_to_file`].
    pub fn read_from_file(path: impl AsRef<Path>) -> io::Result<History> {
        let text = std::fs::read_to_string(path)?;
        History::parse(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Parses the text form (see the module docs).
    pub fn parse(text: &str) -> Result<History, ParseError> {
        let mut operations = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with("//") {
                continue;
            }
            let op = parse_operation(line).map_err(|message| ParseError {
                line: index + 1,
                message,
            })?;
            operations.push(op);
        }
        Ok(History { operations })
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, op) in self.operations.iter().enumerate() {
            writeln!(f, "#{index} {op}")?;
        }
        Ok(())
    }
}

/// A line of a history's text form that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "history line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

fn parse_operation(line: &str) -> Result<Operation, String> {
    let (left, right) = line
        .split_once(" -> ")
        .ok_or_else(|| "missing ` -> ` between request and answer".to_string())?;
    let mut tokens = left.split_whitespace().peekable();
    if tokens.peek().is_some_and(|t| t.starts_with('#')) {
        tokens.next();
    }
    let mut next = |what: &str| tokens.next().ok_or_else(|| format!("missing {what}"));
    let client = next("client")?;
    let client = client
        .strip_prefix('c')
        .and_then(|c| c.parse::<usize>().ok())
        .ok_or_else(|| format!("bad client {client:?}, want c<number>"))?;
    let call_ns = parse_seconds(next("call time")?)?;
    let ret = next("return time")?;
    let ret_ns = if ret == "?" {
        None
    } else {
        Some(parse_seconds(ret)?)
    };
    let input = match next("operation")? {
        "put" => Input::Put {
            key: parse_quoted(next("key")?)?,
            value: parse_quoted(next("value")?)?,
        },
        "get" => Input::Get {
            key: parse_quoted(next("key")?)?,
        },
        "delete" => Input::Delete {
            key: parse_quoted(next("key")?)?,
        },
        "cas" => Input::Cas {
            key: parse_quoted(next("key")?)?,
            expected: parse_maybe_quoted(next("expected value")?)?,
            new_value: parse_quoted(next("new value")?)?,
        },
        other => return Err(format!("unknown operation {other:?}")),
    };
    if let Some(extra) = tokens.next() {
        return Err(format!("unexpected {extra:?} before ` -> `"));
    }
    let right = right.trim();
    let outcome = if let Some(rest) = right.strip_prefix("error") {
        let (at, message) = rest
            .split_once(':')
            .ok_or_else(|| "want `error: <message>` or `error@<time>: <message>`".to_string())?;
        let error_ns = match at.strip_prefix('@') {
            Some(time) => Some(parse_seconds(time)?),
            None if at.is_empty() => None,
            None => return Err(format!("bad error time {at:?}")),
        };
        if ret_ns.is_some() {
            return Err("an operation with an error has return time `?`".to_string());
        }
        Outcome::Unknown {
            error: message.trim().to_string(),
            error_ns,
        }
    } else {
        let ret_ns = ret_ns.ok_or_else(|| "return time `?` but an answer".to_string())?;
        Outcome::Ok {
            ret_ns,
            output: parse_output(&input, right)?,
        }
    };
    Ok(Operation {
        client,
        call_ns,
        input,
        outcome,
    })
}

fn parse_output(input: &Input, text: &str) -> Result<Output, String> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let field = |token: &str, name: &str| -> Result<String, String> {
        token
            .strip_prefix(name)
            .and_then(|t| t.strip_prefix('='))
            .map(str::to_string)
            .ok_or_else(|| format!("want {name}=..., got {token:?}"))
    };
    let revision = |token: &str| -> Result<i64, String> {
        let value = field(token, "rev")?;
        value.parse().map_err(|_| format!("bad revision {value:?}"))
    };
    let arity = |n: usize| -> Result<(), String> {
        if tokens.len() == n {
            Ok(())
        } else {
            Err(format!(
                "want {n} fields after ` -> ` for {}, got {text:?}",
                input_name(input)
            ))
        }
    };
    match input {
        Input::Put { .. } => {
            arity(1)?;
            Ok(Output::Put {
                revision: revision(tokens[0])?,
            })
        }
        Input::Get { .. } => {
            arity(2)?;
            Ok(Output::Get {
                value: parse_maybe_quoted(tokens[0])?,
                revision: revision(tokens[1])?,
            })
        }
        Input::Delete { .. } => {
            arity(2)?;
            let deleted = field(tokens[0], "deleted")?;
            Ok(Output::Delete {
                deleted: deleted
                    .parse()
                    .map_err(|_| format!("bad deleted count {deleted:?}"))?,
                revision: revision(tokens[1])?,
            })
        }
        Input::Cas { .. } => {
            arity(2)?;
            let succeeded = match field(tokens[0], "succeeded")?.as_str() {
                "true" => true,
                "false" => false,
                other => return Err(format!("bad succeeded {other:?}")),
            };
            Ok(Output::Cas {
                succeeded,
                revision: revision(tokens[1])?,
            })
        }
    }
}

fn input_name(input: &Input) -> &'static str {
    match input {
        Input::Put { .. } => "put",
        Input::Get { .. } => "get",
        Input::Delete { .. } => "delete",
        Input::Cas { .. } => "cas",
    }
}

/// `12`, `12.5` or `12.000000001` seconds, in nanoseconds.
fn parse_seconds(text: &str) -> Result<u64, String> {
    let bad = || format!("bad time {text:?}, want seconds like 1.250000000");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let seconds: u64 = whole.parse().map_err(|_| bad())?;
    let nanos: u64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().map_err(|_| bad())?
    };
    seconds
        .checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(nanos))
        .ok_or_else(bad)
}

fn parse_maybe_quoted(token: &str) -> Result<Option<Vec<u8>>, String> {
    if token == "none" {
        Ok(None)
    } else {
        parse_quoted(token).map(Some)
    }
}

fn parse_quoted(token: &str) -> Result<Vec<u8>, String> {
    let inner = token
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .ok_or_else(|| format!("want a quoted string, got {token:?}"))?;
    let mut bytes = Vec::with_capacity(inner.len());
    let mut rest = inner.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'\\' {
            let hex = tail
                .strip_prefix(b"x")
                .and_then(|t| t.get(..2))
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape in {token:?}, want \\xNN"))?;
            bytes.push(hex);
            rest = &tail[3..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    Ok(bytes)
}

/// Performs operations through `etcd_client` and records them into one shared history.
///
/// Cheap to clone; every clone appends to the same history. Times come from one
/// [`Instant`] taken in [`Recorder::new`]. The call is logged before the request is sent
/// and the answer after it arrives, so a dropped future leaves an operation with an unknown
/// outcome behind (which is right: its write may still be applied).
#[derive(Clone, Debug)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

#[derive(Debug)]
struct RecorderInner {
    start: Instant,
    // Invariant: entries are in call order, since each call time is read under this lock.
    // The lock is never held across an `.await`.
    operations: Mutex<Vec<Operation>>,
}

/// What an operation still in flight (or whose future was dropped) is recorded as.
const NO_REPLY: &str = "no reply: still in flight, or the caller dropped the request";

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            inner: Arc::new(RecorderInner {
                start: Instant::now(),
                operations: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Nanoseconds since the recorder was created (the history's clock).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.inner.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The operations recorded so far, in call order. Operations still in flight appear
    /// with an unknown outcome.
    pub fn history(&self) -> History {
        History::new(self.lock().clone())
    }

    /// Puts `key` = `value`; returns the revision the put created.
    pub async fn put(
        &self,
        kv: &mut KvClient,
        client: usize,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<i64, etcd_client::Error> {
        let (key, value) = (key.as_ref().to_vec(), value.as_ref().to_vec());
        let index = self.begin(
            client,
            Input::Put {
                key: key.clone(),
                value: value.clone(),
            },
        );
        let result = kv.put(key, value, None).await;
        match result {
            Ok(response) => {
                let revision = header_revision(response.header());
                self.finish(index, Output::Put { revision });
                Ok(revision)
            }
            Err(e) => Err(self.fail(index, e)),
        }
    }

    /// A linearizable read of `key`; returns its value (if it exists) and the header
    /// revision.
    pub async fn get(
        &self,
        kv: &mut KvClient,
        client: usize,
        key: impl AsRef<[u8]>,
    ) -> Result<(Option<Vec<u8>>, i64), etcd_client::Error> {
        let key = key.as_ref().to_vec();
        let index = self.begin(client, Input::Get { key: key.clone() });
        // No options: a Range is linearizable unless `serializable` is set.
        let result = kv.get(key, None).await;
        match result {
            Ok(response) => {
                let value = response.kvs().first().map(|kv| kv.value().to_vec());
                let revision = header_revision(response.header());
                self.finish(
                    index,
                    Output::Get {
                        value: value.clone(),
                        revision,
                    },
                );
                Ok((value, revision))
            }
            Err(e) => Err(self.fail(index, e)),
        }
    }

    /// Deletes `key`; returns whether a key was deleted and the header revision.
    pub async fn delete(
        &self,
        kv: &mut KvClient,
        client: usize,
        key: impl AsRef<[u8]>,
    ) -> Result<(bool, i64), etcd_client::Error> {
        let key = key.as_ref().to_vec();
        let index = self.begin(client, Input::Delete { key: key.clone() });
        let result = kv.delete(key, None).await;
        match result {
            Ok(response) => {
                let (deleted, revision) = (response.deleted(), header_revision(response.header()));
                self.finish(index, Output::Delete { deleted, revision });
                Ok((deleted > 0, revision))
            }
            Err(e) => Err(self.fail(index, e)),
        }
    }

    /// Compare-and-set in one Txn: if `key` holds `expected` (for `None`: if `key` does not
    /// exist, `create_revision == 0`), put `new_value`. Returns whether the put happened and
    /// the header revision.
    pub async fn cas(
        &self,
        kv: &mut KvClient,
        client: usize,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new_value: impl AsRef<[u8]>,
    ) -> Result<(bool, i64), etcd_client::Error> {
        let (key, new_value) = (key.as_ref().to_vec(), new_value.as_ref().to_vec());
        let expected = expected.map(<[u8]>::to_vec);
        let index = self.begin(
            client,
            Input::Cas {
                key: key.clone(),
                expected: expected.clone(),
                new_value: new_value.clone(),
            },
        );
        // etcd fails a value comparison on a missing key, so `value == expected` alone
        // already means "exists with this value".
        let compare = match expected {
            Some(value) => Compare::value(key.clone(), CompareOp::Equal, value),
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key, new_value, None)]);
        let result = kv.txn(txn).await;
        match result {
            Ok(response) => {
                let (succeeded, revision) =
                    (response.succeeded(), header_revision(response.header()));
                self.finish(
                    index,
                    Output::Cas {
                        succeeded,
                        revision,
                    },
                );
                Ok((succeeded, revision))
            }
            Err(e) => Err(self.fail(index, e)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Operation>> {
        // Nothing panics while holding the lock, so a poisoned one still holds a whole log.
        self.inner
            .operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs the call; returns its index for [`Recorder::finish`] / [`Recorder::fail`].
    fn begin(&self, client: usize, input: Input) -> usize {
        let mut operations = self.lock();
        let call_ns = self.now_ns();
        operations.push(Operation {
            client,
            call_ns,
            input,
            outcome: Outcome::Unknown {
                error: NO_REPLY.to_string(),
                error_ns: None,
            },
        });
        operations.len() - 1
    }

    fn finish(&self, index: usize, output: Output) {
        let ret_ns = self.now_ns();
        self.lock()[index].outcome = Outcome::Ok { ret_ns, output };
    }

    fn fail(&self, index: usize, error: etcd_client::Error) -> etcd_client::Error {
        let error_ns = self.now_ns();
        self.lock()[index].outcome = Outcome::Unknown {
            error: error.to_string(),
            error_ns: Some(error_ns),
        };
        error
    }
}

/// A response without a header is recorded with revision 0, which no store state has, so
/// the checker reports it instead of the recorder hiding it.
fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> History {
        let ops = vec![
            Operation {
                client: 1,
                call_ns: 1_000_000,
                input: Input::Put {
                    key: b"k1".to_vec(),
                    value: b"v1".to_vec(),
                },
                outcome: Outcome::Ok {
                    ret_ns: 1_500_000,
                    output: Output::Put { revision: 2 },
                },
            },
            Operation {
                client: 2,
                call_ns: 1_200_000,
                input: Input::Get {
                    key: b"k1".to_vec(),
                },
                outcome: Outcome::Ok {
                    ret_ns: 1_900_000,
                    output: Output::Get {
                        value: Some(b"v1".to_vec()),
                        revision: 2,
                    },
                },
            },
            Operation {
                client: 1,
                call_ns: 2_000_000,
                input: Input::Get {
                    key: b"k2".to_vec(),
                },
                outcome: Outcome::Ok {
                    ret_ns: 2_100_000,
                    output: Output::Get {
                        value: None,
                        revision: 2,
                    },
                },
            },
            Operation {
                client: 3,
                call_ns: 2_000_000,
                input: Input::Delete {
                    key: b"k1".to_vec(),
                },
                outcome: Outcome::Ok {
                    ret_ns: 2_400_000,
                    output: Output::Delete {
                        deleted: 1,
                        revision: 3,
                    },
                },
            },
            Operation {
                client: 2,
                call_ns: 2_500_000,
                input: Input::Cas {
                    key: b"k1".to_vec(),
                    expected: None,
                    new_value: b"v2".to_vec(),
                },
                outcome: Outcome::Ok {
                    ret_ns: 2_600_000,
                    output: Output::Cas {
                        succeeded: true,
                        revision: 4,
                    },
                },
            },
            Operation {
                client: 4,
                call_ns: 3_000_000,
                input: Input::Put {
                    key: b"k2".to_vec(),
                    value: b"v3".to_vec(),
                },
                outcome: Outcome::Unknown {
                    error: "deadline exceeded".to_string(),
                    error_ns: Some(1_003_000_000),
                },
            },
            Operation {
                client: 5,
                call_ns: 12_345_678_901,
                input: Input::Cas {
                    key: vec![0, b' ', b'"', b'\\', 0xff],
                    expected: Some(Vec::new()),
                    new_value: b"none".to_vec(),
                },
                outcome: Outcome::Unknown {
                    error: NO_REPLY.to_string(),
                    error_ns: None,
                },
            },
        ];
        History::new(ops)
    }

    #[test]
    fn dump_is_one_line_per_operation_and_matches_the_documented_form() {
        let dump = sample().dump();
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(lines.len(), 7, "{dump}");
        assert_eq!(
            lines[0],
            r#"#0 c1 0.001000000 0.001500000 put "k1" "v1" -> rev=2"#
        );
        assert_eq!(
            lines[1],
            r#"#1 c2 0.001200000 0.001900000 get "k1" -> "v1" rev=2"#
        );
        assert_eq!(
            lines[2],
            r#"#2 c1 0.002000000 0.002100000 get "k2" -> none rev=2"#
        );
        assert_eq!(
            lines[3],
            r#"#3 c3 0.002000000 0.002400000 delete "k1" -> deleted=1 rev=3"#
        );
        assert_eq!(
            lines[4],
            r#"#4 c2 0.002500000 0.002600000 cas "k1" none "v2" -> succeeded=true rev=4"#
        );
        assert_eq!(
            lines[5],
            r#"#5 c4 0.003000000 ?           put "k2" "v3" -> error@1.003000000: deadline exceeded"#
        );
        assert_eq!(
            lines[6],
            format!(
                r#"#6 c5 12.345678901 ?           cas "\x00\x20\x22\x5c\xff" "" "none" -> error: {NO_REPLY}"#
            )
        );
    }

    #[test]
    fn parse_reads_back_what_dump_writes() {
        let history = sample();
        let parsed = History::parse(&history.dump()).expect("parse the dump");
        assert_eq!(parsed, history);
    }

    #[test]
    fn parse_accepts_comments_short_times_and_no_index() {
        let text = r#"
            // a comment
            c0 1 2 put "a" "b" -> rev=2

            c1 1.5 ? get "a" -> error: connection refused
        "#;
        let parsed = History::parse(text).expect("parse");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed.operations[0].call_ns, 1_000_000_000);
        assert_eq!(parsed.operations[0].ret_ns(), Some(2_000_000_000));
        assert_eq!(parsed.operations[1].call_ns, 1_500_000_000);
        assert_eq!(parsed.operations[1].ret_ns(), None);
    }

    #[test]
    fn parse_rejects_malformed_lines_with_their_line_number() {
        let cases = [
            (r#"c0 1 2 put "a" "b""#, "missing ` -> `"),
            (r#"x0 1 2 put "a" "b" -> rev=2"#, "bad client"),
            (r#"c0 1 2 put a "b" -> rev=2"#, "quoted string"),
            (r#"c0 1 2 put "a" "b" -> rev=x"#, "bad revision"),
            (r#"c0 1 2 get "a" -> rev=2"#, "want 2 fields"),
            (
                r#"c0 1 ? get "a" -> none rev=2"#,
                "return time `?` but an answer",
            ),
            (r#"c0 1 2 get "a" -> error: boom"#, "return time `?`"),
            (r#"c0 1 2 frob "a" -> rev=2"#, "unknown operation"),
            (r#"c0 1.0000000001 2 get "a" -> none rev=2"#, "bad time"),
            (r#"c0 1 2 get "\x4" -> none rev=2"#, "bad escape"),
        ];
        for (line, want) in cases {
            let text = format!("// header\n{line}\n");
            let err = History::parse(&text).expect_err(line);
            assert_eq!(err.line, 2, "{line}: {err}");
            assert!(
                err.message.contains(want),
                "{line}: got {err}, want {want:?}"
            );
        }
    }

    #[test]
    fn write_to_file_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.txt");
        let history = sample();
        history.write_to_file(&path).expect("write");
        assert_eq!(History::read_from_file(&path).expect("read"), history);
    }

    #[test]
    fn summary_counts_reads_writes_and_unknown_outcomes() {
        assert_eq!(
            sample().summary(),
            "7 operations from 5 clients: 2 reads (0 failed), 5 writes (2 with unknown outcome)"
        );
    }

    /// A port on 127.0.0.1 that refuses connections (bound, then closed).
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    async fn client_for(port: u16) -> KvClient {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_millis(500))
            .with_timeout(std::time::Duration::from_millis(500));
        etcd_client::Client::connect([format!("http://127.0.0.1:{port}")], Some(options))
            .await
            .expect("the client connects lazily")
            .kv_client()
    }

    #[tokio::test]
    async fn failed_operations_are_recorded_with_unknown_outcome() {
        let mut kv = client_for(closed_port()).await;
        let recorder = Recorder::new();
        assert!(recorder.put(&mut kv, 0, "k", "v").await.is_err());
        assert!(recorder.get(&mut kv, 1, "k").await.is_err());
        assert!(recorder.delete(&mut kv, 2, "k").await.is_err());
        assert!(recorder.cas(&mut kv, 3, "k", None, "w").await.is_err());
        let history = recorder.history();
        assert_eq!(history.len(), 4, "{history}");
        for (client, op) in history.operations.iter().enumerate() {
            assert_eq!(op.client, client);
            match &op.outcome {
                Outcome::Unknown { error, error_ns } => {
                    assert_ne!(error, NO_REPLY, "{op}");
                    assert!(error_ns.is_some_and(|ns| ns >= op.call_ns), "{op}");
                }
                Outcome::Ok { .. } => panic!("answered without a server: {op}"),
            }
        }
    }

    #[tokio::test]
    async fn a_dropped_request_stays_in_the_history_with_unknown_outcome() {
        // Accepts connections and never answers: the request hangs until dropped.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let mut kv = client_for(port).await;
        let recorder = Recorder::new();
        let put = recorder.put(&mut kv, 7, "k", "v");
        let dropped = tokio::time::timeout(std::time::Duration::from_millis(100), put).await;
        assert!(dropped.is_err(), "the put should hang: {dropped:?}");
        let history = recorder.history();
        assert_eq!(history.len(), 1);
        assert_eq!(
            history.operations[0].outcome,
            Outcome::Unknown {
                error: NO_REPLY.to_string(),
                error_ns: None
            }
        );
        accept.abort();
    }

    /// Records every kind of operation against a real etcd (see `etcd_bin` for when it
    /// skips) and checks the answers and the history.
    #[tokio::test]
    async fn records_answers_from_a_real_etcd() {
        let Some(etcd) = crate::etcd_bin::etcd() else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = crate::cluster::free_ports(2).expect("free ports");
        let (client_port, peer_port) = (ports[0], ports[1]);
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut child = tokio::process::Command::new(etcd)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--name", "recorder-test"])
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("recorder-test={peer_url}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn etcd");
        let mut kv = client_for(client_port).await;
        let recorder = Recorder::new();

        // Wait for etcd to serve, with a deadline and a reason (no fixed sleeps).
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match kv.get("probe", None).await {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("etcd did not start serving within 20s: {e}"),
            }
        }

        assert_eq!(recorder.get(&mut kv, 0, "k").await.unwrap(), (None, 1));
        assert_eq!(recorder.put(&mut kv, 0, "k", "v1").await.unwrap(), 2);
        assert_eq!(
            recorder.get(&mut kv, 1, "k").await.unwrap(),
            (Some(b"v1".to_vec()), 2)
        );
        assert_eq!(
            recorder.cas(&mut kv, 1, "k", None, "x").await.unwrap(),
            (false, 2)
        );
        assert_eq!(
            recorder
                .cas(&mut kv, 1, "k", Some(b"v1"), "v2")
                .await
                .unwrap(),
            (true, 3)
        );
        assert_eq!(
            recorder.cas(&mut kv, 0, "new", None, "n1").await.unwrap(),
            (true, 4)
        );
        assert_eq!(
            recorder
                .cas(&mut kv, 0, "gone", Some(b""), "n1")
                .await
                .unwrap(),
            (false, 4)
        );
        assert_eq!(recorder.delete(&mut kv, 0, "k").await.unwrap(), (true, 5));
        assert_eq!(recorder.delete(&mut kv, 0, "k").await.unwrap(), (false, 5));
        assert_eq!(recorder.get(&mut kv, 1, "k").await.unwrap(), (None, 5));

        let history = recorder.history();
        assert_eq!(history.len(), 10, "{history}");
        for op in &history.operations {
            let ret_ns = op.ret_ns().expect("every operation was answered");
            assert!(op.call_ns <= ret_ns, "{op}");
        }
        let verdict = crate::linearizability::check(
            &history,
            &crate::linearizability::State::new(),
            &crate::linearizability::Budget::default(),
        );
        assert!(verdict.is_linearizable(), "{verdict}\n{history}");
        child.kill().await.expect("kill etcd");
    }
}
