//! A small HTTP/1.1 client for the JSON gateway's tests: one request per connection,
//! unary answers read whole, streamed answers read line by line as they arrive.

#![allow(dead_code)] // each test binary uses its own part

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// An answer: status, headers (lowercase names), body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A request: method, path, extra headers and body, sent with `Connection: close`.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let mut s = connect(port, method, path, headers, body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse(&raw)
}

/// `POST path` with a JSON body.
pub fn post(port: u16, path: &str, body: &str) -> Answer {
    request(port, "POST", path, &[], body.as_bytes()).expect("gateway request")
}

/// `POST path` with a JSON body and extra headers.
pub fn post_with(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    request(port, "POST", path, headers, body.as_bytes()).expect("gateway request")
}

fn connect(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    Ok(s)
}

/// Header names (lowercase) and values.
type Headers = Vec<(String, String)>;

/// A response's status, headers and where its body starts.
fn split_head(raw: &[u8]) -> Option<(u16, Headers, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, end + 4))
}

fn parse(raw: &[u8]) -> std::io::Result<Answer> {
    let (status, headers, start) =
        split_head(raw).ok_or_else(|| std::io::Error::other(format!("no HTTP head in {raw:?}")))?;
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(&raw[start..]).0
    } else {
        raw[start..].to_vec()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// The data of the whole chunks in `raw`, and whether the last (empty) chunk was seen.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return (out, false);
        };
        if size == 0 {
            return (out, true);
        }
        if raw.len() < eol + 2 + size + 2 {
            return (out, false);
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

/// A streamed answer: its status and headers, and the body's lines as far as read.
#[derive(Debug, Clone)]
pub struct Streamed {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Whole lines (without the newline); a last piece without a newline is its own line.
    pub lines: Vec<String>,
    /// Whether the server ended the stream (as opposed to the reader stopping).
    pub ended: bool,
}

/// `POST path` with `body`, reading the streamed answer until `lines` lines arrived, the
/// stream ended, or `timeout` passed.
pub fn post_stream(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    lines: usize,
    timeout: Duration,
) -> Streamed {
    let mut s = connect(port, "POST", path, headers, body.as_bytes()).expect("connect");
    let deadline = Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let parsed = split_head(&raw).map(|(status, headers, start)| {
            let chunked = headers
                .iter()
                .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
            let (data, ended) = if chunked {
                dechunk(&raw[start..])
            } else {
                (raw[start..].to_vec(), false)
            };
            (status, headers, data, ended)
        });
        if let Some((status, headers, data, ended)) = &parsed {
            let text = String::from_utf8_lossy(data);
            let mut got: Vec<String> = text.split('\n').map(String::from).collect();
            let partial = got.pop().unwrap_or_default();
            if got.len() >= lines || *ended || Instant::now() >= deadline {
                if *ended && !partial.is_empty() {
                    got.push(partial);
                }
                return Streamed {
                    status: *status,
                    headers: headers.clone(),
                    lines: got,
                    ended: *ended,
                };
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Streamed {
                status: parsed.as_ref().map_or(0, |p| p.0),
                headers: parsed.map(|p| p.1).unwrap_or_default(),
                lines: Vec::new(),
                ended: false,
            };
        }
        s.set_read_timeout(Some(
            left.min(Duration::from_millis(200))
                .max(Duration::from_millis(1)),
        ))
        .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => {
                // The connection closed: whatever came is all there is.
                let (status, headers, data, _) = parsed.unwrap_or_default();
                let text = String::from_utf8_lossy(&data);
                let lines = text
                    .split('\n')
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect();
                return Streamed {
                    status,
                    headers,
                    lines,
                    ended: true,
                };
            }
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading a stream: {e}"),
        }
    }
}
