//! `--config-file`: etcd's YAML configuration file, decoded by etcd's rules.
//!
//! etcd turns the YAML into JSON (`sigs.k8s.io/yaml`, YAML 1.1 scalars) and decodes that
//! with Go's `encoding/json` into its config struct, which gives rules of their own:
//! keys match case-insensitively; a plain `yes`/`on`/`true` is a bool and a quoted
//! `'true'` a string; a string field refuses a number (`auto-compaction-retention: "1"`
//! must be quoted) and a number field refuses a string; durations are integer
//! nanoseconds; URL lists are one comma-separated string while `log-outputs` and
//! `cipher-suites` are YAML lists; TLS settings live in `client-transport-security` and
//! `peer-transport-security` blocks. etcd ignores unknown keys silently; retcd ignores
//! them too, with a warning naming each. Every known key goes through the flag table, so
//! a key retcd refuses is refused by name, as its flag is.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::flags::{Draft, FLAGS, Flag, Shape};
use super::value::{Kind, Value, parse_int, parse_uint, sorted_set};
use super::{Config, ConfigError, Notice, Source};

/// The blocks of nested keys.
const BLOCKS: &[&str] = &[
    "client-transport-security",
    "peer-transport-security",
    "socket-options",
];

/// Reads the file at `path` into a draft that starts from etcd's defaults for a config
/// file (which differ from the flags' in one place: no `auto-compaction-mode`).
pub fn load(path: &str) -> Result<Draft, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("open {path}: {e}")))?;
    let root = parse_document(&text)
        .map_err(|e| ConfigError::Invalid(format!("error converting YAML to JSON: {path}: {e}")))?;
    let mut d = Draft::new(Config {
        auto_compaction_mode: String::new(),
        ..Config::default()
    });
    let entries = match root.map(resolve) {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Map(entries)) => entries,
        Some(other) => {
            return Err(unmarshal(
                path,
                other.kind(),
                "Go value",
                "embed.configYAML",
            ));
        }
    };
    for (key, value) in entries {
        if let Some(block) = BLOCKS.iter().find(|b| b.eq_ignore_ascii_case(&key)) {
            let inner = match value {
                Json::Null => continue,
                Json::Map(inner) => inner,
                other => {
                    return Err(unmarshal(
                        path,
                        other.kind(),
                        &field(&key),
                        "embed.securityConfig",
                    ));
                }
            };
            for (sub, v) in inner {
                apply(&mut d, path, &format!("{block}.{sub}"), v)?;
            }
        } else {
            apply(&mut d, path, &key, value)?;
        }
    }
    Ok(d)
}

/// Applies one key: through its flag's row, or the one key that has no flag.
fn apply(d: &mut Draft, path: &str, key: &str, value: Json) -> Result<(), ConfigError> {
    if key.eq_ignore_ascii_case("client-transport-security.allowed-cn") {
        if let Some(v) = decode_list(path, key, value, false)? {
            d.c.client_tls.allowed_cn = v.into_iter().filter(|s| !s.is_empty()).collect();
        }
        return Ok(());
    }
    let Some(flag) = find(key) else {
        d.notices.push(Notice::warn(format!(
            "unknown key {key:?} in {path}: etcd ignores it, and so does retcd"
        )));
        return Ok(());
    };
    let Some(v) = decode(flag, path, key, value)? else {
        return Ok(());
    };
    let source = Source::File {
        path: path.to_string(),
        key: key.to_string(),
    };
    d.apply(flag, &v, &source)
}

/// The flag whose key this is: an exact match first, then case-insensitively, as
/// `encoding/json` matches.
fn find(key: &str) -> Option<&'static Flag> {
    let keyed = || FLAGS.iter().filter_map(|f| Some((f.yaml_key()?, f)));
    keyed()
        .find(|(k, _)| *k == key)
        .or_else(|| keyed().find(|(k, _)| k.eq_ignore_ascii_case(key)))
        .map(|(_, f)| f)
}

fn field(key: &str) -> String {
    format!("Go struct field configYAML.{key}")
}

fn unmarshal(path: &str, json: &str, field: &str, go_type: &str) -> ConfigError {
    ConfigError::Invalid(format!(
        "error unmarshaling JSON: {path}: json: cannot unmarshal {json} into {field} of type {go_type}"
    ))
}

/// The value `encoding/json` would store for `flag`, as the flag's [`Value`]; `None`
/// for a null (the field keeps its value).
fn decode(flag: &Flag, path: &str, key: &str, json: Json) -> Result<Option<Value>, ConfigError> {
    if matches!(flag.shape, Shape::List | Shape::ListOrScalar) {
        let scalar_ok = flag.shape == Shape::ListOrScalar;
        return Ok(
            decode_list(path, key, json, scalar_ok)?.map(|items| match flag.kind {
                Kind::Set => Value::List(sorted_set(items)),
                _ => Value::List(items),
            }),
        );
    }
    let wrong =
        |json: &Json, go_type: &str| Err(unmarshal(path, json.kind(), &field(key), go_type));
    let invalid = |e: String| {
        ConfigError::Invalid(format!(
            "unexpected error setting up {key} from {path}: {e}"
        ))
    };
    Ok(Some(match (flag.kind, json) {
        (_, Json::Null) => return Ok(None),
        (Kind::Bool, Json::Bool(b)) => Value::Bool(b),
        (Kind::Bool, j) => return wrong(&j, "bool"),
        (Kind::Uint | Kind::Millis, Json::Int(n)) => match u64::try_from(n) {
            Ok(n) => Value::Uint(n),
            Err(_) => return wrong(&Json::Int(n), "uint"),
        },
        (Kind::Uint | Kind::Millis, j) => return wrong(&j, "uint"),
        (Kind::Uint32, Json::Int(n)) => match u32::try_from(n) {
            Ok(n) => Value::Uint(u64::from(n)),
            Err(_) => return wrong(&Json::Int(n), "uint32"),
        },
        (Kind::Uint32, j) => return wrong(&j, "uint32"),
        (Kind::Int, Json::Int(n)) => match i64::try_from(n) {
            Ok(n) => Value::Int(n),
            Err(_) => return wrong(&Json::Int(n), "int64"),
        },
        (Kind::Int, j) => return wrong(&j, "int64"),
        (Kind::Duration, Json::Int(n)) => match i64::try_from(n) {
            Ok(n) => Value::Nanos(n),
            Err(_) => return wrong(&Json::Int(n), "time.Duration"),
        },
        (Kind::Duration, j) => return wrong(&j, "time.Duration"),
        (Kind::Enum(_), Json::Str(s)) if flag.name == "initial-cluster-state" => match s.as_str() {
            "" | "new" => Value::Str("new".into()),
            "existing" => Value::Str(s),
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "unexpected clusterState {s:?}"
                )));
            }
        },
        (Kind::Enum(words), Json::Str(s)) if s.is_empty() && !words.contains(&"") => {
            return Ok(None);
        }
        (Kind::Urls { .. }, Json::Str(s)) if s.is_empty() => return Ok(None),
        (
            Kind::Str | Kind::Enum(_) | Kind::Urls { .. } | Kind::Set | Kind::List | Kind::Gates,
            Json::Str(s),
        ) => flag.parse(&s).map_err(invalid)?,
        (_, j) => return wrong(&j, "string"),
    }))
}

/// A `[]string` field: a YAML list of strings (or, where `scalar_ok`, one string that
/// is split on commas).
fn decode_list(
    path: &str,
    key: &str,
    json: Json,
    scalar_ok: bool,
) -> Result<Option<Vec<String>>, ConfigError> {
    match json {
        Json::Null => Ok(None),
        Json::Seq(items) => items
            .into_iter()
            .map(|j| match j {
                Json::Str(s) => Ok(s),
                Json::Null => Ok(String::new()),
                other => Err(unmarshal(path, other.kind(), &field(key), "string")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Json::Str(s) if scalar_ok => Ok(Some(s.split(',').map(str::to_string).collect())),
        other => Err(unmarshal(path, other.kind(), &field(key), "[]string")),
    }
}

/// A YAML node, with each scalar's style kept: YAML 1.1 resolves only plain scalars.
#[derive(Clone, Debug)]
enum Node {
    Scalar { text: String, plain: bool },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// The JSON value `sigs.k8s.io/yaml` makes of a node.
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Json>),
    Map(Vec<(String, Json)>),
}

impl Json {
    /// `encoding/json`'s name of the value's type, for its error messages.
    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "bool",
            Json::Int(_) | Json::Float(_) => "number",
            Json::Str(_) => "string",
            Json::Seq(_) => "array",
            Json::Map(_) => "object",
        }
    }
}

/// Resolves a node as go-yaml v2 (YAML 1.1) and `sigs.k8s.io/yaml` do.
fn resolve(node: Node) -> Json {
    match node {
        Node::Scalar { text, plain: false } => Json::Str(text),
        Node::Scalar { text, plain: true } => resolve_plain(text),
        Node::Seq(items) => Json::Seq(items.into_iter().map(resolve).collect()),
        Node::Map(entries) => Json::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = match resolve(k) {
                        Json::Str(s) => s,
                        Json::Null => "null".into(),
                        Json::Bool(b) => b.to_string(),
                        Json::Int(n) => n.to_string(),
                        Json::Float(f) => f.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, resolve(v))
                })
                .collect(),
        ),
    }
}

/// A plain scalar by YAML 1.1's rules; a whole float becomes an integer, as
/// `encoding/json` writes it (`1.5e6` is `1500000`).
fn resolve_plain(text: String) -> Json {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Json::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
            return Json::Bool(true);
        }
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
            return Json::Bool(false);
        }
        _ => {}
    }
    if !text.starts_with(|c: char| c.is_ascii_digit() || "+-.".contains(c)) {
        return Json::Str(text);
    }
    let digits = text.replace('_', "");
    if let Ok(n) = parse_int(&digits, 64) {
        return Json::Int(i128::from(n));
    }
    if let Ok(n) = parse_uint(&digits, 64) {
        return Json::Int(i128::from(n));
    }
    if is_yaml_float(&digits)
        && let Ok(f) = digits.parse::<f64>()
    {
        if f.fract() == 0.0 && f.abs() < 1e21 {
            return Json::Int(f as i128);
        }
        return Json::Float(f);
    }
    Json::Str(text)
}

/// go-yaml's `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => digits(frac),
        Some((whole, frac)) => digits(whole) && (frac.is_empty() || digits(frac)),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

/// The first document of `text` as nodes; `None` for an empty stream.
fn parse_document(text: &str) -> Result<Option<Node>, String> {
    let mut builder = Builder::default();
    Parser::new_from_str(text)
        .load(&mut builder, false)
        .map_err(|e| e.to_string())?;
    match builder.error {
        Some(e) => Err(e),
        None => Ok(builder.root),
    }
}

/// Builds nodes from the parser's events.
#[derive(Default)]
struct Builder {
    stack: Vec<(Node, usize)>,
    /// A mapping's key waiting for its value, per open mapping.
    keys: Vec<Option<Node>>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    error: Option<String>,
}

impl Builder {
    fn add(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                self.root.get_or_insert(node);
            }
            Some((Node::Seq(items), _)) => items.push(node),
            Some((Node::Map(entries), _)) => {
                let slot = self.keys.last_mut().expect("a key slot per open mapping");
                match slot.take() {
                    None => *slot = Some(node),
                    Some(key) => entries.push((key, node)),
                }
            }
            Some((Node::Scalar { .. }, _)) => unreachable!("scalars are never opened"),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, _mark: Marker) {
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let is_str = matches!(&tag, Some(Tag { suffix, .. }) if suffix == "str");
                let plain = style == TScalarStyle::Plain && !is_str;
                self.add(Node::Scalar { text, plain }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push((Node::Seq(Vec::new()), anchor)),
            Event::MappingStart(anchor, _) => {
                self.stack.push((Node::Map(Vec::new()), anchor));
                self.keys.push(None);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = self.stack.pop().expect("an end closes an open node");
                if matches!(node, Node::Map(_)) {
                    self.keys.pop();
                }
                self.add(node, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => self.add(node, 0),
                None => self.error = Some(format!("unknown anchor {id}")),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Json {
        resolve(parse_document(text).unwrap().unwrap())
    }

    // Goal: scalars resolve by YAML 1.1's rules with their quoting kept, as etcd's
    // decoder sees them.
    #[test]
    fn scalars_resolve_as_yaml_1_1() {
        let Json::Map(m) = doc(
            "a: yes\nb: 'yes'\nc: off\nd: 0x10\ne: 010\nf: 1.5e6\ng: 1.5\nh: ~\ni: \"12\"\nj: 1_000\nk: !!str 5\nl: [x, 'y']\nm: &x 7\nnn: *x\no: .5\ny: 1\n",
        ) else {
            panic!("a map")
        };
        let get = |k: &str| m.iter().find(|(key, _)| key == k).unwrap().1.clone();
        assert_eq!(get("a"), Json::Bool(true));
        assert_eq!(get("b"), Json::Str("yes".into()));
        assert_eq!(get("c"), Json::Bool(false));
        assert_eq!(get("d"), Json::Int(16));
        assert_eq!(get("e"), Json::Int(8));
        assert_eq!(get("f"), Json::Int(1_500_000));
        assert_eq!(get("g"), Json::Float(1.5));
        assert_eq!(get("h"), Json::Null);
        assert_eq!(get("i"), Json::Str("12".into()));
        assert_eq!(get("j"), Json::Int(1000));
        assert_eq!(get("k"), Json::Str("5".into()));
        assert_eq!(
            get("l"),
            Json::Seq(vec![Json::Str("x".into()), Json::Str("y".into())])
        );
        assert_eq!(get("nn"), Json::Int(7));
        assert_eq!(
            get("true"),
            Json::Int(1),
            "a plain y key is a YAML 1.1 bool"
        );
        assert_eq!(get("o"), Json::Float(0.5));
        assert!(parse_document("").unwrap().is_none());
        assert!(parse_document("a: [").is_err());
    }
}
