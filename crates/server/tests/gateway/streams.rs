//! The JSON gateway on its own (issue 17, acceptance 3 and 4): a watch stream over HTTP
//! that must carry every event in order, stalled readers that must not make the server
//! buffer, and seeded hostile requests that must each get a 4xx answer (never a 500, a
//! dropped connection or a panic). Runs without etcd.

use std::time::{Duration, Instant};

use crate::common::gateway::{LineReader, request};
use crate::common::{Retcd, env_u64};
use retcd_prng::SplitMix64 as Rng;
use serde_json::Value as Json;

fn b64(s: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

// Goal: a watch over the gateway delivers every one of 10,000 puts, in revision order,
// each once, as they happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stream_delivers_every_put_in_order() {
    const PUTS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let s = Retcd::start(&dir.path().join("data"), &[]);
    let port = s.port;
    let body = format!(
        r#"{{"create_request":{{"key":"{}","range_end":"{}"}}}}"#,
        b64(b"w/"),
        b64(b"w0")
    );
    let mut reader = LineReader::open(port, "/v3/watch", &[], body.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    assert_eq!(reader.status(deadline), Some(200));
    let created: Json = serde_json::from_str(&reader.next_line(deadline).unwrap()).unwrap();
    assert_eq!(created["result"]["created"], true, "{created}");

    // The puts, from 8 clients at once; the watch sees them in revision order.
    let mut tasks = Vec::new();
    for c in 0..8 {
        let mut client = s.client().await;
        tasks.push(tokio::spawn(async move {
            for i in (c..PUTS).step_by(8) {
                client
                    .put(format!("w/{i:05}"), format!("v{i}"), None)
                    .await
                    .unwrap();
            }
        }));
    }
    let read = tokio::task::spawn_blocking(move || {
        let mut events = Vec::new();
        while events.len() < PUTS {
            let Some(line) = reader.next_line(deadline) else {
                panic!("the stream stopped after {} events", events.len());
            };
            let v: Json = serde_json::from_str(&line).expect("a JSON line");
            for e in v["result"]["events"].as_array().expect("events") {
                let rev: i64 = e["kv"]["mod_revision"].as_str().unwrap().parse().unwrap();
                events.push((rev, e["kv"]["key"].as_str().unwrap().to_string()));
            }
        }
        events
    });
    for t in tasks {
        t.await.unwrap();
    }
    let events = read.await.unwrap();
    assert_eq!(events.len(), PUTS);
    assert!(
        events.windows(2).all(|w| w[0].0 < w[1].0),
        "revisions out of order"
    );
    let mut keys: Vec<String> = events.into_iter().map(|(_, k)| k).collect();
    keys.sort();
    let expected: Vec<String> = (0..PUTS)
        .map(|i| b64(format!("w/{i:05}").as_bytes()))
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(keys, expected, "each put's event exactly once");
}

// Goal: clients that open watches over the gateway and never read do not make the server
// hold what it could not send. 10 streams each ask for the history of 80 MB of values
// (107 MB of JSON each, 1.07 GB in all). The server holds a bounded amount per stream
// (the watch outbox's 4 MiB, a response in encoding, HTTP's write buffer), so its
// resident memory may grow by a quarter of that at most. Then each stream, read at
// last, delivers the whole history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watch_streams_do_not_grow_memory() {
    const KEYS: usize = 800;
    const STREAMS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let s = Retcd::start(&dir.path().join("data"), &[]);
    let mut client = s.client().await;
    let value = vec![b'x'; 100_000];
    for i in 0..KEYS {
        client
            .put(format!("big/{i:03}"), value.clone(), None)
            .await
            .unwrap();
    }
    let body = format!(
        r#"{{"create_request":{{"key":"{}","range_end":"{}","start_revision":1}}}}"#,
        b64(b"big/"),
        b64(b"big0")
    );
    // Read everything once first, so that the backend's cache holds it before the
    // baseline (the streams' history reads must not count as their buffering).
    for start in (0..KEYS).step_by(25) {
        let options = etcd_client::GetOptions::new()
            .with_range(format!("big/{:03}", start + 25))
            .with_limit(25);
        let got = client
            .get(format!("big/{start:03}"), Some(options))
            .await
            .unwrap();
        assert_eq!(got.kvs().len(), 25);
    }
    let before = rss_kib(s.pid());
    let mut readers: Vec<LineReader> = (0..STREAMS)
        .map(|_| LineReader::open(s.port, "/v3/watch", &[], body.as_bytes()).unwrap())
        .collect();
    // An observation window, not a wait for progress: for two seconds the server may
    // push as much as it will into streams nobody reads.
    let window = Instant::now() + Duration::from_secs(2);
    let mut peak = before;
    while Instant::now() < window {
        peak = peak.max(rss_kib(s.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!("RSS before {before} KiB, peak {peak} KiB, growth {growth_mib} MiB");
    let unbounded_mib = (STREAMS * KEYS * value.len() * 4 / 3) as u64 >> 20;
    assert!(
        growth_mib < unbounded_mib / 4,
        "{STREAMS} stalled streams grew the server by {growth_mib} MiB (all they would need: {unbounded_mib} MiB)"
    );
    // Read now: every stream delivers every key.
    let deadline = Instant::now() + Duration::from_secs(120);
    for reader in &mut readers {
        let mut seen = 0;
        while seen < KEYS {
            let line = reader.next_line(deadline).expect("more events");
            let v: Json = serde_json::from_str(&line).unwrap();
            seen += v["result"]["events"].as_array().map_or(0, Vec::len);
        }
        assert_eq!(seen, KEYS);
    }
}

/// Valid requests the hostile test mutates: (path, body).
const TEMPLATES: &[(&str, &str)] = &[
    (
        "/v3/kv/put",
        r#"{"key":"aG9zdGlsZQ==","value":"dg==","prev_kv":true,"lease":"0"}"#,
    ),
    (
        "/v3/kv/range",
        r#"{"key":"aA==","range_end":"aQ==","limit":"10","sort_order":"DESCEND","sort_target":"MOD","revision":0}"#,
    ),
    (
        "/v3/kv/deleterange",
        r#"{"key":"aG9zdGlsZQ==","prev_kv":true}"#,
    ),
    (
        "/v3/kv/txn",
        r#"{"compare":[{"key":"aA==","result":"EQUAL","target":"VERSION","version":"0"}],"success":[{"request_put":{"key":"aA==","value":"MQ=="}}],"failure":[{"request_range":{"key":"aA=="}}]}"#,
    ),
    ("/v3/kv/compaction", r#"{"revision":"1","physical":true}"#),
    ("/v3/lease/grant", r#"{"TTL":"30","ID":"0"}"#),
    ("/v3/lease/revoke", r#"{"ID":"12345"}"#),
    ("/v3/lease/timetolive", r#"{"ID":"12345","keys":true}"#),
    ("/v3/lease/leases", r#"{}"#),
    ("/v3/cluster/member/list", r#"{"linearizable":true}"#),
    ("/v3/cluster/member/remove", r#"{"ID":"1"}"#),
    ("/v3/maintenance/status", r#"{}"#),
    (
        "/v3/maintenance/alarm",
        r#"{"action":"GET","memberID":"0","alarm":"NONE"}"#,
    ),
    ("/v3/maintenance/hash", r#"{}"#),
    ("/v3/maintenance/transfer-leadership", r#"{"targetID":"1"}"#),
    ("/v3/auth/user/get", r#"{"name":"nobody"}"#),
    ("/v3/auth/role/get", r#"{"role":"nobody"}"#),
    (
        "/v3/auth/user/add",
        r#"{"name":"u","password":"p","options":{"no_password":false}}"#,
    ),
    ("/v3/auth/authenticate", r#"{"name":"u","password":"p"}"#),
    ("/v3/lock/unlock", r#"{"key":"bG9jaw=="}"#),
    (
        "/v3/election/proclaim",
        r#"{"leader":{"name":"ZQ==","key":"ZS8x","rev":"1","lease":"1"},"value":"dg=="}"#,
    ),
    (
        "/v3/election/resign",
        r#"{"leader":{"name":"ZQ==","key":"ZS8x","rev":"1","lease":"1"}}"#,
    ),
    ("/v3/lease/keepalive", r#"{"ID":"12345"}"#),
    (
        "/v3/watch",
        r#"{"create_request":{"key":"aA==","filters":["NOPUT"],"prev_kv":true}}"#,
    ),
];

/// Replacements that make a JSON value wrong for most fields.
const WRONG: &[&str] = &[
    "\"!!!\"",
    "\"YWI\"",
    "\"-_8=\"",
    "1.5",
    "-1",
    "1e400",
    "99999999999999999999",
    "\"abc\"",
    "true",
    "null",
    "[]",
    "{}",
    "[1,2]",
    "{\"x\":{}}",
    "\"\\ud800\"",
    "\"DESCEND\"",
    "\"BOGUS\"",
    "-9223372036854775809",
    "18446744073709551616",
];

/// One mutation of `body`, drawn by `rng`.
fn mutate(rng: &mut Rng, body: &str) -> Vec<u8> {
    let bytes = body.as_bytes();
    match rng.below(10) {
        // Cut short.
        0 => bytes[..rng.below(bytes.len() as u64) as usize].to_vec(),
        // A byte replaced by anything, invalid UTF-8 included.
        1 => {
            let mut b = bytes.to_vec();
            let i = rng.below(b.len() as u64) as usize;
            b[i] = rng.below(256) as u8;
            b
        }
        // A value replaced by a wrong one.
        2..=5 => {
            let colons: Vec<usize> = body.match_indices(':').map(|(i, _)| i).collect();
            let Some(&at) = colons.get(rng.below(colons.len().max(1) as u64) as usize) else {
                return bytes.to_vec();
            };
            let rest = &body[at + 1..];
            let end = rest
                .find([',', '}', ']'])
                .map_or(body.len(), |e| at + 1 + e);
            let wrong = WRONG[rng.below(WRONG.len() as u64) as usize];
            format!("{}{}{}", &body[..=at], wrong, &body[end..]).into_bytes()
        }
        // Deep nesting.
        6 => {
            let depth = 100 + rng.below(2000) as usize;
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }
        // Unknown fields, duplicated keys.
        7 => body
            .replacen('{', "{\"unknown\":[1,{\"a\":null}],\"key\":\"eA==\",", 1)
            .into_bytes(),
        // Garbage after the value, or two values.
        8 => format!("{body}{body}}}]").into_bytes(),
        // Random bytes.
        _ => (0..rng.below(64)).map(|_| rng.below(256) as u8).collect(),
    }
}

/// Answers a client's mistake may get. A 500 only from the lock and election paths with
/// gRPC's Unknown: etcd's v3lock and v3election services hand back their own errors and
/// those of the KV client they call as plain errors, which gRPC sends as Unknown and both
/// gateways turn into 500. retcd's gRPC answers are etcd's there, and the gateway does
/// not rewrite them.
fn acceptable(path: &str, status: u16, body: &Json) -> bool {
    match status {
        200 | 400 | 401 | 403 | 404 | 405 | 409 | 429 => true,
        500 => {
            (path.starts_with("/v3/lock/") || path.starts_with("/v3/election/"))
                && body["code"] == 2
        }
        _ => false,
    }
}

// Goal: hostile requests (cut, corrupted, wrong types, bad base64, deep nesting,
// oversized, wrong methods and paths) each get a well-formed 4xx answer with a message,
// and the server stays up. Seeded: RETCD_GATEWAY_SEED, RETCD_GATEWAY_HOSTILE (count,
// default 2,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_errors() {
    let seed = env_u64("RETCD_GATEWAY_SEED").unwrap_or(1717);
    let count = env_u64("RETCD_GATEWAY_HOSTILE").unwrap_or(2_000);
    eprintln!("RETCD_GATEWAY_SEED={seed} RETCD_GATEWAY_HOSTILE={count}");
    let dir = tempfile::tempdir().unwrap();
    let s = Retcd::start(&dir.path().join("data"), &[]);
    let port = s.port;
    let result = tokio::task::spawn_blocking(move || {
        let mut rng = Rng::new(seed);
        let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
        for n in 0..count {
            let (path, template) = TEMPLATES[rng.below(TEMPLATES.len() as u64) as usize];
            let (method, path, body): (&str, String, Vec<u8>) = match rng.below(40) {
                0 => ("GET", path.to_string(), Vec::new()),
                1 => ("POST", format!("{path}/nope"), template.as_bytes().to_vec()),
                // Oversized: a value far above --max-request-bytes.
                2 => (
                    "POST",
                    "/v3/kv/put".to_string(),
                    format!(
                        r#"{{"key":"eA==","value":"{}"}}"#,
                        "QUFB".repeat(600_000 + rng.below(1_000_000) as usize)
                    )
                    .into_bytes(),
                ),
                _ => ("POST", path.to_string(), mutate(&mut rng, template)),
            };
            let streaming = path.ends_with("/watch") || path.ends_with("/keepalive");
            let (status, text) = if streaming && method == "POST" {
                // A mutation that still parses opens a stream: its first answer is enough.
                let mut reader = LineReader::open(port, &path, &[], &body).expect("connect");
                let deadline = Instant::now() + Duration::from_secs(2);
                let status = reader.status(deadline).unwrap_or(0);
                if status == 0 {
                    // Nothing to answer yet: only for a well-formed request the server
                    // has nothing to say to (no watch request, or an empty one, as in
                    // etcd).
                    let first = serde_json::Deserializer::from_slice(&body)
                        .into_iter::<Json>()
                        .next();
                    assert!(
                        matches!(first, None | Some(Ok(Json::Object(_)))),
                        "request {n} (seed {seed}): no answer to {:?}",
                        String::from_utf8_lossy(&body)
                    );
                    *statuses.entry(0).or_default() += 1;
                    continue;
                }
                let line = reader.next_line(deadline).unwrap_or_default();
                (status, line)
            } else {
                let answer = request(port, method, &path, &[], &body).unwrap_or_else(|e| {
                    panic!("request {n} ({method} {path}) failed: {e}; seed {seed}")
                });
                (answer.status, answer.text())
            };
            *statuses.entry(status).or_default() += 1;
            let json: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
            let bad = || {
                format!(
                    "request {n} (seed {seed}): {method} {path} {:?}\n  -> {status} {text}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                )
            };
            assert!(acceptable(&path, status, &json), "{}", bad());
            if json.is_null() && (status == 404 || status == 405) {
                // The router's plain-text answers.
                assert!(
                    text == "Not Found\n" || text == "Method Not Allowed\n",
                    "{}",
                    bad()
                );
            } else if status != 200 {
                // An error: JSON with the code and a message, or a stream's error object.
                let error = if json["error"].is_object() {
                    &json["error"]
                } else {
                    &json
                };
                assert!(
                    error["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{}",
                    bad()
                );
            }
        }
        statuses
    })
    .await
    .unwrap();
    eprintln!("statuses: {result:?}");
    assert!(
        result.get(&400).copied().unwrap_or(0) > count / 4,
        "{result:?}"
    );
    // Still serving.
    let mut client = s.client().await;
    client.put("after", "ok", None).await.unwrap();
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

// Goal: the three prefixes, `--cors` (an origin echoed only when listed, OPTIONS answered
// at once) and `--host-whitelist` (etcd's 421 for an unlisted Host on plain HTTP).
#[test]
fn prefixes_cors_and_host_whitelist() {
    let dir = tempfile::tempdir().unwrap();
    let s = Retcd::start(
        &dir.path().join("data"),
        &[
            "--cors",
            "http://example.com:8080",
            "--host-whitelist",
            "localhost,127.0.0.1",
        ],
    );
    for prefix in ["/v3", "/v3beta", "/v3alpha"] {
        let answer = crate::common::gateway::post(
            s.port,
            &format!("{prefix}/kv/range"),
            r#"{"key":"eA=="}"#,
        );
        assert_eq!(answer.status, 200, "{prefix}: {}", answer.text());
        assert!(answer.json()["header"]["revision"].is_string());
    }
    let listed = request(
        s.port,
        "POST",
        "/v3/kv/range",
        &[("Origin", "http://example.com:8080")],
        br#"{"key":"eA=="}"#,
    )
    .unwrap();
    assert_eq!(
        listed.header("access-control-allow-origin"),
        Some("http://example.com:8080")
    );
    assert_eq!(
        listed.header("access-control-allow-headers"),
        Some("accept, content-type, authorization")
    );
    let other = request(
        s.port,
        "POST",
        "/v3/kv/range",
        &[("Origin", "http://evil.com")],
        b"{}",
    )
    .unwrap();
    assert_eq!(other.header("access-control-allow-origin"), None);
    let preflight = request(
        s.port,
        "OPTIONS",
        "/v3/kv/put",
        &[("Origin", "http://example.com:8080")],
        b"",
    )
    .unwrap();
    assert_eq!((preflight.status, preflight.body.len()), (200, 0));
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        Some("POST, GET, OPTIONS, PUT, DELETE")
    );
    // An unlisted Host header.
    let refused = request(
        s.port,
        "GET",
        "/version",
        &[("Host", "evil.example:2379")],
        b"",
    )
    .unwrap();
    assert_eq!(refused.status, 421, "{}", refused.text());
    assert!(
        refused.text().contains("DNS Rebinding"),
        "{}",
        refused.text()
    );
    // gRPC's content type on HTTP/1.1 (which a page may set) does not pass the check.
    let refused = request(
        s.port,
        "POST",
        "/v3/kv/put",
        &[
            ("Host", "evil.example"),
            ("Content-Type", "application/grpc"),
        ],
        b"{}",
    )
    .unwrap();
    assert_eq!(refused.status, 421, "{}", refused.text());
}
