//! The value syntaxes of etcd's flags, as Go parses them.
//!
//! etcd's server reads its flags with Go's standard `flag` package and a few value types
//! of its own (`pkg/flags`), so a value means what Go's `strconv` and `time` and etcd's
//! `types.NewURLs` make of it: `--max-request-bytes=0x100` is 256, `010` is 8 (octal),
//! `1_000` is 1000, `--grpc-keepalive-timeout=1h2m3.5s` is a duration and a bare `5` is
//! not. Each parser here returns the error text Go's `Value.Set` would, which the caller
//! wraps as Go does (`invalid value "x" for flag -y: parse error`).

use std::net::IpAddr;

/// The value type of a flag: how its text is parsed.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// `strconv.ParseBool`; given bare (`--x`) it is true.
    Bool,
    /// `uint`/`uint64`: `strconv.ParseUint(s, 0, 64)`.
    Uint,
    /// A `uint` count of milliseconds (`--heartbeat-interval=100`, never `100ms`).
    Millis,
    /// `int`/`int64`: `strconv.ParseInt(s, 0, 64)`.
    Int,
    /// etcd's `Uint32Value`: `strconv.ParseUint(s, 0, 32)`.
    Uint32,
    /// `time.Duration`: `time.ParseDuration`.
    Duration,
    /// A string, verbatim.
    Str,
    /// etcd's `UniqueURLs`: comma-separated URLs (`types.NewURLs`), sorted; the
    /// `exception` literal is stored without parsing and keeps the current value.
    Urls { exception: &'static str },
    /// etcd's `StringsValue`: split on commas, order and duplicates kept.
    List,
    /// etcd's `UniqueStringsValue`: split on commas, deduplicated and sorted.
    Set,
    /// etcd's `SelectiveStringValue`: one of the listed words, exactly.
    Enum(&'static [&'static str]),
    /// etcd's `IgnoredFlag` (legacy flags): takes any value, or none, and does nothing.
    Ignored,
    /// etcd 3.6's `--feature-gates`: `Name=bool,...` (Kubernetes' feature-gate syntax).
    Gates,
}

/// A parsed flag value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    Uint(u64),
    Int(i64),
    /// A Go `time.Duration`: signed nanoseconds.
    Nanos(i64),
    Str(String),
    /// `urls` is `None` when the text was the flag's exception literal.
    Urls {
        raw: String,
        urls: Option<Vec<String>>,
    },
    List(Vec<String>),
    Gates(Vec<(String, bool)>),
    Ignored,
}

impl Kind {
    /// Go's flag package lets a bool flag stand alone (`--x` means `--x=true`).
    pub fn is_bool(self) -> bool {
        matches!(self, Kind::Bool | Kind::Ignored)
    }

    /// Parses `s` as `Value.Set` does; the error is Go's error text.
    pub fn parse(self, s: &str) -> Result<Value, String> {
        let num = |e: NumError| match e {
            NumError::Syntax => "parse error".to_string(),
            NumError::Range => "value out of range".to_string(),
        };
        Ok(match self {
            Kind::Bool => Value::Bool(parse_bool(s).ok_or("parse error")?),
            Kind::Uint | Kind::Millis => Value::Uint(parse_uint(s, 64).map_err(num)?),
            Kind::Int => Value::Int(parse_int(s, 64).map_err(num)?),
            Kind::Uint32 => Value::Uint(parse_uint(s, 32).map_err(|e| {
                let why = match e {
                    NumError::Syntax => "invalid syntax",
                    NumError::Range => "value out of range",
                };
                format!("strconv.ParseUint: parsing {s:?}: {why}")
            })?),
            Kind::Duration => Value::Nanos(parse_go_duration_nanos(s).map_err(|_| "parse error")?),
            Kind::Str => Value::Str(s.to_string()),
            Kind::Urls { exception } => Value::Urls {
                raw: s.to_string(),
                urls: if s == exception {
                    None
                } else {
                    Some(parse_urls(s)?)
                },
            },
            Kind::List => Value::List(s.split(',').map(str::to_string).collect()),
            Kind::Set => Value::List(sorted_set(s.split(',').map(str::to_string))),
            Kind::Enum(words) => {
                if !words.contains(&s) {
                    return Err("invalid value".into());
                }
                Value::Str(s.to_string())
            }
            Kind::Ignored => Value::Ignored,
            Kind::Gates => Value::Gates(parse_gates(s)?),
        })
    }

    /// How `--help` names the type.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Bool | Kind::Ignored => "bool",
            Kind::Uint | Kind::Uint32 => "uint",
            Kind::Millis => "milliseconds",
            Kind::Int => "int",
            Kind::Duration => "duration",
            Kind::Str | Kind::Enum(_) => "string",
            Kind::Urls { .. } => "URLs",
            Kind::List | Kind::Set => "list",
            Kind::Gates => "gates",
        }
    }
}

impl Value {
    pub fn bool(&self) -> bool {
        match self {
            Value::Bool(b) => *b,
            other => panic!("a bool flag holds {other:?}"),
        }
    }

    pub fn uint(&self) -> u64 {
        match self {
            Value::Uint(n) => *n,
            other => panic!("a uint flag holds {other:?}"),
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Value::Int(n) => *n,
            other => panic!("an int flag holds {other:?}"),
        }
    }

    pub fn nanos(&self) -> i64 {
        match self {
            Value::Nanos(n) => *n,
            other => panic!("a duration flag holds {other:?}"),
        }
    }

    pub fn string(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            other => panic!("a string flag holds {other:?}"),
        }
    }

    pub fn list(&self) -> Vec<String> {
        match self {
            Value::List(l) => l.clone(),
            other => panic!("a list flag holds {other:?}"),
        }
    }

    /// The new list of a URL flag whose current list is `current`, by etcd's
    /// `UniqueURLs.Set`: the exception literal, or a text equal to one current URL,
    /// leaves the list as it is; anything else replaces it.
    pub fn urls_over(&self, current: &[String]) -> Vec<String> {
        match self {
            Value::Urls { urls: None, .. } => current.to_vec(),
            Value::Urls { raw, .. } if current.contains(raw) => current.to_vec(),
            Value::Urls {
                urls: Some(urls), ..
            } => urls.clone(),
            other => panic!("a URL flag holds {other:?}"),
        }
    }
}

/// Sorted and deduplicated, as etcd reads a `UniqueStringsValue` back.
pub fn sorted_set(items: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = items.into_iter().collect();
    v.sort();
    v.dedup();
    v
}

/// `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Why `strconv` refused a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumError {
    Syntax,
    Range,
}

/// `strconv.ParseUint(s, 0, bits)`: `0x`, `0o`, `0b` and a leading `0` (octal) select
/// the base; underscores may separate digits.
pub fn parse_uint(s: &str, bits: u32) -> Result<u64, NumError> {
    if s.is_empty() {
        return Err(NumError::Syntax);
    }
    let b = s.as_bytes();
    let (base, digits) = if b[0] == b'0' && s.len() >= 3 {
        match b[1].to_ascii_lowercase() {
            b'b' => (2, &s[2..]),
            b'o' => (8, &s[2..]),
            b'x' => (16, &s[2..]),
            _ => (8, &s[1..]),
        }
    } else if b[0] == b'0' {
        (8, &s[1..])
    } else {
        (10, s)
    };
    let max: u64 = if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    };
    let mut n: u64 = 0;
    let mut underscores = false;
    for c in digits.bytes() {
        let d = match c {
            b'_' => {
                underscores = true;
                continue;
            }
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' | b'A'..=b'Z' => c.to_ascii_lowercase() - b'a' + 10,
            _ => return Err(NumError::Syntax),
        };
        if u64::from(d) >= base {
            return Err(NumError::Syntax);
        }
        n = n
            .checked_mul(base)
            .and_then(|n| n.checked_add(u64::from(d)))
            .filter(|n| *n <= max)
            .ok_or(NumError::Range)?;
    }
    if underscores && !underscore_ok(s) {
        return Err(NumError::Syntax);
    }
    Ok(n)
}

/// `strconv.ParseInt(s, 0, bits)`.
pub fn parse_int(s: &str, bits: u32) -> Result<i64, NumError> {
    let (neg, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = parse_uint(rest, 64)?;
    let limit = 1u64 << (bits - 1);
    if neg {
        if magnitude > limit {
            return Err(NumError::Range);
        }
        Ok((magnitude as i64).wrapping_neg())
    } else {
        if magnitude >= limit {
            return Err(NumError::Range);
        }
        Ok(magnitude as i64)
    }
}

/// Go's `underscoreOK`: underscores only between digits (or after a base prefix).
fn underscore_ok(s: &str) -> bool {
    let b = s.trim_start_matches(['+', '-']).as_bytes();
    let mut saw = b'^';
    let mut i = 0;
    let mut hex = false;
    if b.len() >= 2 && b[0] == b'0' && matches!(b[1].to_ascii_lowercase(), b'b' | b'o' | b'x') {
        i = 2;
        saw = b'0';
        hex = b[1].eq_ignore_ascii_case(&b'x');
    }
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() || hex && c.is_ascii_hexdigit() {
            saw = b'0';
        } else if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
        } else {
            if saw == b'_' {
                return false;
            }
            saw = b'!';
        }
        i += 1;
    }
    saw != b'_'
}

/// Parses a Go `time.Duration` string into signed nanoseconds, as `time.ParseDuration`:
/// an optional sign, then numbers with units `ns`, `us` (`µs`, `μs`), `ms`, `s`, `m`,
/// `h` (`1h30m`, `1.5s`, `-5s`); `0` is the only number without a unit.
pub fn parse_go_duration_nanos(s: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    const LIMIT: u128 = 1 << 63;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let mut whole: u128 = 0;
        for c in rest[..int_len].bytes() {
            whole = whole * 10 + u128::from(c - b'0');
            if whole > LIMIT {
                return Err(invalid());
            }
        }
        rest = &rest[int_len..];
        let (mut frac, mut scale) = (0u128, 1u128);
        if let Some(after) = rest.strip_prefix('.') {
            let frac_len = after.bytes().take_while(u8::is_ascii_digit).count();
            for c in after[..frac_len].bytes() {
                // Go drops fraction digits that would overflow, keeping the precision it has.
                if scale < 1_000_000_000_000_000_000 {
                    frac = frac * 10 + u128::from(c - b'0');
                    scale *= 10;
                }
            }
            rest = &after[frac_len..];
            if int_len == 0 && frac_len == 0 {
                return Err(invalid());
            }
        } else if int_len == 0 {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {s:?}"));
        }
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            u => return Err(format!("time: unknown unit {u:?} in duration {s:?}")),
        };
        rest = &rest[unit_len..];
        let mut v = whole
            .checked_mul(unit)
            .filter(|v| *v <= LIMIT)
            .ok_or_else(invalid)?;
        if frac > 0 {
            // Go computes this in float64; integer arithmetic agrees for every value a
            // float64 holds exactly and differs by at most a nanosecond otherwise.
            v += frac * unit / scale;
        }
        total += v;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        Ok((total as i128).wrapping_neg() as i64)
    } else if total >= LIMIT {
        Err(invalid())
    } else {
        Ok(total as i64)
    }
}

/// A Go duration that must not be negative, as a `Duration` (etcd passes its durations
/// to timers and gRPC, which do not take negative ones).
pub fn parse_go_duration(s: &str) -> Result<std::time::Duration, String> {
    let nanos = parse_go_duration_nanos(s)?;
    u64::try_from(nanos)
        .map(std::time::Duration::from_nanos)
        .map_err(|_| format!("negative duration {s:?}"))
}

/// The parts of a URL as Go's `net/url.Parse` splits them, enough for etcd's checks.
#[derive(Debug, PartialEq, Eq)]
pub struct GoUrl {
    pub scheme: String,
    /// `host[:port]`, brackets kept for IPv6.
    pub host: String,
    pub path: String,
    /// Everything after the authority and path (`?query`, `#fragment`), as given.
    pub tail: String,
}

impl GoUrl {
    /// `net/url.Parse`, for the forms URLs in etcd's flags take.
    pub fn parse(raw: &str) -> Result<GoUrl, String> {
        let fail = |why: &str| Err(format!("parse {raw:?}: {why}"));
        let (before_fragment, fragment) = match raw.find('#') {
            Some(i) => (&raw[..i], &raw[i..]),
            None => (raw, ""),
        };
        let (scheme, rest) = match scheme_of(before_fragment) {
            Ok(x) => x,
            Err(e) => return fail(e),
        };
        let (rest, query) = match rest.find('?') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let tail = format!("{query}{fragment}");
        let scheme = scheme.to_ascii_lowercase();
        if !rest.starts_with('/') {
            if !scheme.is_empty() {
                // An opaque URL (`localhost:2379` reads as scheme `localhost`).
                return Ok(GoUrl {
                    scheme,
                    host: String::new(),
                    path: String::new(),
                    tail,
                });
            }
            if rest.split('/').next().unwrap_or("").contains(':') {
                return fail("first path segment in URL cannot contain colon");
            }
            return Ok(GoUrl {
                scheme,
                host: String::new(),
                path: rest.to_string(),
                tail,
            });
        }
        let Some(after) = rest.strip_prefix("//").filter(|a| !a.starts_with('/')) else {
            return Ok(GoUrl {
                scheme,
                host: String::new(),
                path: rest.to_string(),
                tail,
            });
        };
        let (authority, path) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let port = if host.starts_with('[') {
            match host.find(']') {
                Some(i) => &host[i + 1..],
                None => return fail("missing ']' in host"),
            }
        } else {
            host.rfind(':').map_or("", |i| &host[i..])
        };
        let digits = port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|c| c.is_ascii_digit()));
        if !port.is_empty() && !digits {
            return fail(&format!("invalid port {port:?} after host"));
        }
        Ok(GoUrl {
            scheme,
            host: host.to_string(),
            path: path.to_string(),
            tail,
        })
    }

    /// `url.String()` for the URLs etcd accepts.
    pub fn render(&self) -> String {
        format!("{}://{}{}{}", self.scheme, self.host, self.path, self.tail)
    }

    /// The host without port or brackets, if the host has the form `host:port`
    /// (`net.SplitHostPort` succeeds).
    pub fn split_host_port(&self) -> Option<(&str, &str)> {
        let h = self.host.as_str();
        if let Some(inner) = h.strip_prefix('[') {
            let end = inner.find(']')?;
            let port = inner[end + 1..].strip_prefix(':')?;
            return Some((&inner[..end], port));
        }
        let (host, port) = h.rsplit_once(':')?;
        if host.contains(':') {
            return None;
        }
        Some((host, port))
    }
}

/// Go's `getScheme`.
fn scheme_of(raw: &str) -> Result<(&str, &str), &'static str> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i == 0 => return Ok(("", raw)),
            b'0'..=b'9' | b'+' | b'-' | b'.' => {}
            b':' if i == 0 => return Err("missing protocol scheme"),
            b':' => return Ok((&raw[..i], &raw[i + 1..])),
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

/// etcd's `types.NewURLs` (3.5): each comma-separated element trimmed and parsed; the
/// scheme http, https, unix or unixs; for http and https a `host:port` (the port is
/// required) and no path (not even `/`); the list sorted and deduplicated.
pub fn parse_urls(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let text = part.trim();
        let url = GoUrl::parse(text)?;
        if !matches!(url.scheme.as_str(), "http" | "https" | "unix" | "unixs") {
            return Err(format!(
                "URL scheme must be http, https, unix, or unixs: {text}"
            ));
        }
        if matches!(url.scheme.as_str(), "http" | "https") {
            if url.split_host_port().is_none() {
                return Err(format!(
                    "URL address does not have the form \"host:port\": {text}"
                ));
            }
            if !url.path.is_empty() {
                return Err(format!("URL must not contain a path: {text}"));
            }
        }
        out.push(url.render());
    }
    Ok(sorted_set(out))
}

/// etcd's `checkBindURLs`: a URL to listen on names an IP address or `localhost`.
pub fn check_bind_url(url: &str) -> Result<(), String> {
    let u = GoUrl::parse(url)?;
    if matches!(u.scheme.as_str(), "unix" | "unixs") {
        return Ok(());
    }
    let (host, _) = u
        .split_host_port()
        .ok_or_else(|| format!("address {}: missing port in address", u.host))?;
    if host == "localhost" || host.parse::<IpAddr>().is_ok() {
        Ok(())
    } else {
        Err(format!("expected IP in URL for binding ({url})"))
    }
}

/// Kubernetes' feature-gate syntax: `Name=bool` pairs separated by commas, each side
/// trimmed, empty elements skipped.
fn parse_gates(s: &str) -> Result<Vec<(String, bool)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), v.trim()),
            None => return Err(format!("missing bool value for {}", part.trim())),
        };
        let b = parse_bool(value).ok_or_else(|| {
            format!("invalid value of {name}={value}, err: strconv.ParseBool: parsing {value:?}: invalid syntax")
        })?;
        out.push((name.to_string(), b));
    }
    Ok(out)
}
