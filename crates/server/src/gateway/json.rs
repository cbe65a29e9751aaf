//! JSON to protobuf and back, driven by the message descriptors, as etcd's gateway
//! (grpc-gateway v1 with golang/protobuf's jsonpb, `OrigName: true`) reads and writes it.
//!
//! Written:
//! - fields under their names in the .proto (`cluster_id`, `ID`, `peerURLs`), in
//!   declaration order;
//! - 64-bit integers as strings, 32-bit ones as numbers, `bytes` as standard base64 with
//!   padding, enums by name (a number when the name is unknown);
//! - values equal to their default left out (zero, empty, false, the first enum value, an
//!   empty list, an absent message); a present message is written even when empty (`{}`),
//!   and a oneof member whenever it is the one set;
//! - strings escaped as Go's `encoding/json` escapes them (`<`, `>`, `&` too).
//!
//! Read (leniently, as jsonpb reads):
//! - a field under its .proto name or its camelCase JSON name (the latter wins when both
//!   are given); unknown fields ignored; `null` leaves a field at its default;
//! - integers as numbers or as strings holding one; enums by name or by number;
//! - `bytes` as standard base64 with padding only (line breaks skipped);
//! - of two members of one oneof, the one declared later wins.
//!
//! Errors carry Go's wording where the gateway's clients could see it, and are
//! InvalidArgument for the caller to report.

use base64::Engine as _;
use bytes::Bytes;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage as _, Value,
};
use serde_json::Value as Json;

/// A request the gateway could not read into its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How Go names a JSON value's kind in "cannot unmarshal X into ...".
fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "bool",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

fn cannot(v: &Json, go_type: &str) -> DecodeError {
    DecodeError(format!(
        "json: cannot unmarshal {} into Go value of type {go_type}",
        json_kind(v)
    ))
}

/// The fields of `desc` in the order the .proto declares them (prost-reflect's own
/// iteration is by number), looked up as they are walked: nothing is collected.
fn declared_fields(desc: &MessageDescriptor) -> impl Iterator<Item = FieldDescriptor> + '_ {
    desc.descriptor_proto()
        .field
        .iter()
        .filter_map(|f| desc.get_field(u32::try_from(f.number()).ok()?))
}

/// Go's name of the generated type for an enum or message: `etcdserverpb.RangeRequest_SortOrder`.
fn go_type_name(full_name: &str, package: &str) -> String {
    let local = full_name
        .strip_prefix(package)
        .and_then(|s| s.strip_prefix('.'))
        .unwrap_or(full_name);
    if package.is_empty() {
        local.replace('.', "_")
    } else {
        format!("{package}.{}", local.replace('.', "_"))
    }
}

/// Reads `json` as a message of type `desc`. `null` is the empty message.
pub fn decode(desc: &MessageDescriptor, json: &Json) -> Result<DynamicMessage, DecodeError> {
    let mut message = DynamicMessage::new(desc.clone());
    let object = match json {
        Json::Null => return Ok(message),
        Json::Object(object) => object,
        other => return Err(cannot(other, "map[string]json.RawMessage")),
    };
    // Declaration order, so a later oneof member replaces an earlier one, as in jsonpb.
    for field in declared_fields(desc) {
        // The camelCase name, looked up second, wins over the .proto name.
        let given = [field.name(), field.json_name()]
            .into_iter()
            .filter_map(|name| object.get(name))
            .next_back();
        let Some(given) = given else { continue };
        if given.is_null() {
            continue;
        }
        let value = if field.is_map() {
            decode_map(&field, given)?
        } else if field.is_list() {
            let Json::Array(items) = given else {
                return Err(cannot(given, "[]json.RawMessage"));
            };
            Value::List(
                items
                    .iter()
                    .map(|item| decode_single(&field.kind(), item))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            decode_single(&field.kind(), given)?
        };
        message.set_field(&field, value);
    }
    Ok(message)
}

fn decode_map(field: &FieldDescriptor, given: &Json) -> Result<Value, DecodeError> {
    let Json::Object(entries) = given else {
        return Err(cannot(given, "map[string]json.RawMessage"));
    };
    let Kind::Message(entry) = field.kind() else {
        return Err(DecodeError(format!("{} is not a map", field.full_name())));
    };
    let (key_field, value_field) = (entry.map_entry_key_field(), entry.map_entry_value_field());
    let mut map = std::collections::HashMap::new();
    for (k, v) in entries {
        let key = match decode_single(&key_field.kind(), &Json::String(k.clone()))? {
            Value::String(s) => MapKey::String(s),
            Value::Bool(b) => MapKey::Bool(b),
            Value::I32(n) => MapKey::I32(n),
            Value::I64(n) => MapKey::I64(n),
            Value::U32(n) => MapKey::U32(n),
            Value::U64(n) => MapKey::U64(n),
            _ => return Err(DecodeError(format!("bad map key {k:?}"))),
        };
        map.insert(key, decode_single(&value_field.kind(), v)?);
    }
    Ok(Value::Map(map))
}

/// An integer as jsonpb reads one: a number, or a string holding one.
fn integer(given: &Json, go_type: &str) -> Result<i128, DecodeError> {
    let out_of_range = |text: &str| {
        DecodeError(format!(
            "json: cannot unmarshal number {text} into Go value of type {go_type}"
        ))
    };
    match given {
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Ok(i128::from(u))
            } else {
                Err(out_of_range(&n.to_string()))
            }
        }
        Json::String(s) => {
            // jsonpb strips the quotes and reads what is inside as a JSON number.
            match serde_json::from_str::<Json>(s) {
                Ok(Json::Number(n)) => integer(&Json::Number(n), go_type),
                Ok(other) => Err(cannot(&other, go_type)),
                Err(_) => Err(DecodeError(format!(
                    "invalid character {} looking for beginning of value",
                    go_quote_char(s.chars().next().unwrap_or(' '))
                ))),
            }
        }
        other => Err(cannot(other, go_type)),
    }
}

/// Go's `quoteChar`: `'x'`, or an escape for quotes and backslashes.
fn go_quote_char(c: char) -> String {
    match c {
        '\'' => "'\\''".into(),
        '"' => "'\"'".into(),
        c => format!("'{c}'"),
    }
}

fn ranged<T: TryFrom<i128>>(given: &Json, go_type: &str) -> Result<T, DecodeError> {
    let n = integer(given, go_type)?;
    T::try_from(n).map_err(|_| {
        DecodeError(format!(
            "json: cannot unmarshal number {n} into Go value of type {go_type}"
        ))
    })
}

fn float(given: &Json, go_type: &str) -> Result<f64, DecodeError> {
    match given {
        Json::Number(n) => n.as_f64().ok_or_else(|| cannot(given, go_type)),
        Json::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => s.parse().map_err(|_| cannot(given, go_type)),
        },
        other => Err(cannot(other, go_type)),
    }
}

fn decode_single(kind: &Kind, given: &Json) -> Result<Value, DecodeError> {
    Ok(match kind {
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(ranged(given, "int64")?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(ranged(given, "uint64")?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(ranged(given, "int32")?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(ranged(given, "uint32")?),
        Kind::Double => Value::F64(float(given, "float64")?),
        // Narrowing is what a float field is: the nearest f32.
        Kind::Float => Value::F32(float(given, "float32")? as f32),
        Kind::Bool => match given {
            Json::Bool(b) => Value::Bool(*b),
            other => return Err(cannot(other, "bool")),
        },
        Kind::String => match given {
            Json::String(s) => Value::String(s.clone()),
            other => return Err(cannot(other, "string")),
        },
        Kind::Bytes => match given {
            Json::String(s) => Value::Bytes(decode_base64(s)?),
            other => return Err(cannot(other, "[]uint8")),
        },
        Kind::Enum(e) => match given {
            Json::String(name) => match e.get_value_by_name(name) {
                Some(v) => Value::EnumNumber(v.number()),
                None => {
                    return Err(DecodeError(format!(
                        "unknown value {:?} for enum {}",
                        name,
                        go_type_name(e.full_name(), e.package_name())
                    )));
                }
            },
            // jsonpb takes any number, known or not.
            Json::Number(_) => Value::EnumNumber(ranged(given, "int32")?),
            other => return Err(cannot(other, "int32")),
        },
        Kind::Message(m) => Value::Message(decode(m, given)?),
    })
}

/// Go's `base64.StdEncoding` as `encoding/json` uses it for `[]byte`: the standard
/// alphabet, padding required, `\r` and `\n` skipped.
fn decode_base64(s: &str) -> Result<Bytes, DecodeError> {
    let cleaned: Vec<u8> = s.bytes().filter(|b| *b != b'\r' && *b != b'\n').collect();
    base64::engine::general_purpose::STANDARD
        .decode(&cleaned)
        .map(Bytes::from)
        .map_err(|e| {
            // Go reports a short or badly padded end at the start of its last quantum.
            let len = cleaned.len();
            let last_quantum = if len.is_multiple_of(4) {
                len.saturating_sub(4)
            } else {
                len - len % 4
            };
            let at = match e {
                base64::DecodeError::InvalidByte(at, _)
                | base64::DecodeError::InvalidLastSymbol(at, _) => at,
                base64::DecodeError::InvalidLength(_) | base64::DecodeError::InvalidPadding => {
                    last_quantum
                }
            };
            DecodeError(format!("illegal base64 data at input byte {at}"))
        })
}

/// `message` as the gateway writes it.
pub fn encode(message: &DynamicMessage) -> String {
    let mut out = String::with_capacity(128);
    encode_message(message, &mut out);
    out
}

fn encode_message(message: &DynamicMessage, out: &mut String) {
    out.push('{');
    let mut first = true;
    let desc = message.descriptor();
    for field in declared_fields(&desc) {
        if !message.has_field(&field) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        encode_string(field.name(), out);
        out.push(':');
        let value = message.get_field(&field);
        match value.as_ref() {
            Value::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    encode_value(&field.kind(), item, out);
                }
                out.push(']');
            }
            Value::Map(entries) => {
                let Kind::Message(entry) = field.kind() else {
                    out.push_str("{}");
                    continue;
                };
                let value_kind = entry.map_entry_value_field().kind();
                // Go's encoding/json sorts map keys.
                let mut sorted: Vec<(String, &Value)> =
                    entries.iter().map(|(k, v)| (map_key(k), v)).collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                out.push('{');
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    encode_string(&k, out);
                    out.push(':');
                    encode_value(&value_kind, v, out);
                }
                out.push('}');
            }
            single => encode_value(&field.kind(), single, out),
        }
    }
    out.push('}');
}

fn map_key(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

fn encode_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("\"NaN\"");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 {
            "\"Infinity\""
        } else {
            "\"-Infinity\""
        });
    } else {
        out.push_str(&serde_json::Number::from_f64(f).map_or("0".into(), |n| n.to_string()));
    }
}

fn encode_value(kind: &Kind, value: &Value, out: &mut String) {
    use std::fmt::Write as _;
    match value {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::I32(n) => {
            let _ = write!(out, "{n}");
        }
        Value::U32(n) => {
            let _ = write!(out, "{n}");
        }
        Value::I64(n) => {
            let _ = write!(out, "\"{n}\"");
        }
        Value::U64(n) => {
            let _ = write!(out, "\"{n}\"");
        }
        Value::F32(f) => encode_float(f64::from(*f), out),
        Value::F64(f) => encode_float(*f, out),
        Value::String(s) => encode_string(s, out),
        Value::Bytes(b) => {
            out.push('"');
            base64::engine::general_purpose::STANDARD.encode_string(b, out);
            out.push('"');
        }
        Value::EnumNumber(n) => match kind {
            Kind::Enum(e) => match e.get_value(*n) {
                Some(v) => encode_string(v.name(), out),
                None => {
                    let _ = write!(out, "{n}");
                }
            },
            _ => {
                let _ = write!(out, "{n}");
            }
        },
        Value::Message(m) => encode_message(m, out),
        // Lists and maps of lists do not exist in protobuf; a field's list is handled above.
        Value::List(_) | Value::Map(_) => out.push_str("null"),
    }
}

/// A JSON string as Go's `encoding/json` writes it: HTML-sensitive characters and the
/// JavaScript line separators escaped, invalid UTF-8 impossible (Rust strings).
pub fn encode_string(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use retcd_api::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
    use retcd_api::mvccpb::KeyValue;

    fn pool() -> prost_reflect::DescriptorPool {
        prost_reflect::DescriptorPool::decode(retcd_api::FILE_DESCRIPTOR_SET).unwrap()
    }

    fn read(type_name: &str, json: &str) -> Result<DynamicMessage, DecodeError> {
        let desc = pool().get_message_by_name(type_name).unwrap();
        decode(&desc, &serde_json::from_str(json).unwrap())
    }

    // Goal: a response is written as etcd's gateway writes it: .proto names in
    // declaration order, 64-bit integers quoted, bytes in padded base64, defaults left out.
    #[test]
    fn writes_as_jsonpb_orig_name() {
        let response = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 15118495548433857066,
                member_id: 1,
                revision: 2,
                raft_term: 0,
            }),
            kvs: vec![KeyValue {
                key: Bytes::from_static(b"a"),
                create_revision: 4,
                mod_revision: 4,
                version: 1,
                value: Bytes::new(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        let desc = pool()
            .get_message_by_name("etcdserverpb.RangeResponse")
            .unwrap();
        let dynamic = DynamicMessage::decode(desc, response.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            encode(&dynamic),
            r#"{"header":{"cluster_id":"15118495548433857066","member_id":"1","revision":"2"},"kvs":[{"key":"YQ==","create_revision":"4","mod_revision":"4","version":"1"}],"count":"1"}"#
        );
    }

    // Goal: requests are read as jsonpb reads them, leniently where it is lenient and
    // strictly where it is strict.
    #[test]
    fn reads_as_jsonpb() {
        let m = read(
            "etcdserverpb.RangeRequest",
            r#"{"key":"Zm9v","rangeEnd":"Zm9w","range_end":"eA==","limit":"5","revision":3,"sort_order":"DESCEND","bogus":1,"count_only":null}"#,
        )
        .unwrap();
        let request = RangeRequest::decode(m.encode_to_vec().as_slice()).unwrap();
        assert_eq!(&request.key[..], b"foo");
        assert_eq!(&request.range_end[..], b"fop", "camelCase wins");
        assert_eq!(
            (request.limit, request.revision, request.sort_order),
            (5, 3, 2)
        );
        let err = |json: &str| read("etcdserverpb.RangeRequest", json).unwrap_err().0;
        assert_eq!(
            err(r#"{"key":"-_8="}"#),
            "illegal base64 data at input byte 0"
        );
        assert_eq!(
            err(r#"{"key":"YWI"}"#),
            "illegal base64 data at input byte 0"
        );
        assert_eq!(
            err(r#"{"limit":1.5}"#),
            "json: cannot unmarshal number 1.5 into Go value of type int64"
        );
        assert_eq!(
            err(r#"{"serializable":"true"}"#),
            "json: cannot unmarshal string into Go value of type bool"
        );
        assert_eq!(
            err(r#"{"sort_order":"descend"}"#),
            "unknown value \"descend\" for enum etcdserverpb.RangeRequest_SortOrder"
        );
        assert_eq!(
            err(r#""abc""#),
            "json: cannot unmarshal string into Go value of type map[string]json.RawMessage"
        );
        assert_eq!(
            err(r#"{"max_mod_revision":"abc"}"#),
            "invalid character 'a' looking for beginning of value"
        );
        let txn = |json: &str| read("etcdserverpb.TxnRequest", json);
        assert_eq!(
            txn(r#"{"success":{"request_put":{}}}"#).unwrap_err().0,
            "json: cannot unmarshal object into Go value of type []json.RawMessage"
        );
        // Two members of a oneof: the one declared later (put after range) wins.
        let m =
            txn(r#"{"success":[{"request_put":{"key":"YQ=="},"request_range":{"key":"Yg=="}}]}"#)
                .unwrap();
        let request =
            retcd_api::etcdserverpb::TxnRequest::decode(m.encode_to_vec().as_slice()).unwrap();
        assert!(matches!(
            request.success[0].request,
            Some(retcd_api::etcdserverpb::request_op::Request::RequestPut(_))
        ));
    }

    #[test]
    fn strings_escape_as_go() {
        let mut out = String::new();
        encode_string("a<b>&\"\\\n\u{1}\u{2028}é", &mut out);
        assert_eq!(out, r#""a\u003cb\u003e\u0026\"\\\n\u0001\u2028é""#);
    }
}
