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
    let mut answer = Decoder::default();
    answer.feed(&raw);
    let (status, headers) = answer
        .head
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {raw:?}")))?;
    Ok(Answer {
        status,
        headers,
        body: answer.data,
    })
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
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    // The server's address as Host, unless the caller gives its own.
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
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
    let deadline = Instant::now() + timeout;
    let mut reader = LineReader::open(port, path, headers, body.as_bytes()).expect("connect");
    let mut got = Vec::new();
    while got.len() < lines {
        match reader.next_line(deadline) {
            Some(line) => got.push(line),
            None => break,
        }
    }
    let (status, headers) = reader.answer.head.clone().unwrap_or_default();
    Streamed {
        status,
        headers,
        lines: got,
        ended: reader.answer.ended,
    }
}

/// An HTTP/1.1 answer decoded as its bytes arrive: the head, then the body's data,
/// chunked or not.
#[derive(Default)]
struct Decoder {
    /// Bytes received and not yet decoded.
    raw: Vec<u8>,
    head: Option<(u16, Headers)>,
    chunked: bool,
    /// Decoded body bytes not yet taken.
    data: Vec<u8>,
    /// Whether the body ended (the last chunk, or the connection closed).
    ended: bool,
}

impl Decoder {
    /// Takes `bytes` and decodes what it can.
    fn feed(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        if self.head.is_none() {
            let Some((status, headers, start)) = split_head(&self.raw) else {
                return;
            };
            self.chunked = headers
                .iter()
                .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
            self.head = Some((status, headers));
            self.raw.drain(..start);
        }
        if !self.chunked {
            self.data.append(&mut self.raw);
            return;
        }
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..eol]).into_owned();
            let Ok(size) =
                usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            else {
                self.ended = true;
                return;
            };
            if size == 0 {
                self.ended = true;
                return;
            }
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            self.data
                .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 2 + size + 2);
        }
    }
}

/// A streamed answer read line by line as it arrives (chunked or not).
pub struct LineReader {
    s: TcpStream,
    answer: Decoder,
}

impl LineReader {
    pub fn open(
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<LineReader> {
        Ok(LineReader {
            s: connect(port, "POST", path, headers, body)?,
            answer: Decoder::default(),
        })
    }

    /// Reads once (up to `deadline`); false when nothing more will come by then.
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || self.answer.ended {
            return false;
        }
        self.s
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        let mut buf = [0u8; 64 * 1024];
        match self.s.read(&mut buf) {
            Ok(0) => {
                self.answer.ended = true;
                false
            }
            Ok(n) => {
                self.answer.feed(&buf[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(e) => panic!("reading a stream: {e}"),
        }
    }

    /// The status, once the head arrived (by `deadline`).
    pub fn status(&mut self, deadline: Instant) -> Option<u16> {
        while self.answer.head.is_none() && self.fill(deadline) {}
        self.answer.head.as_ref().map(|h| h.0)
    }

    /// The next line (without its newline); at the end of the stream, what is left
    /// without a newline; `None` when nothing more came by `deadline`.
    pub fn next_line(&mut self, deadline: Instant) -> Option<String> {
        loop {
            let data = &mut self.answer.data;
            if let Some(i) = data.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = data.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if self.answer.ended {
                if data.is_empty() {
                    return None;
                }
                let rest = std::mem::take(data);
                return Some(String::from_utf8_lossy(&rest).into_owned());
            }
            if !self.fill(deadline) && !self.answer.ended {
                return None;
            }
        }
    }
}
