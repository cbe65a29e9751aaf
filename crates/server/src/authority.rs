//! A read-side filter for client connections that makes one old client bug harmless:
//! gRPC-Go 1.26 (etcdctl 3.4's) sends the endpoint it was given, scheme and all, as the
//! HTTP/2 `:authority` (`http://127.0.0.1:2379`) when it dials a single endpoint, as
//! `etcdctl endpoint status`, `hashkv` and `move-leader` do. Go's HTTP/2 server accepts
//! that; the `h2` crate refuses the stream as malformed (PROTOCOL_ERROR), and etcdctl
//! fails. Nothing reads the authority here, so the filter rewrites it into a well-formed
//! one before `h2` parses it.
//!
//! # How, without an HPACK codec
//! The filter follows the HTTP/2 frame layer of a connection that opens with the HTTP/2
//! preface (anything else passes through untouched). It holds back each HEADERS frame
//! until it is whole, walks the HPACK representations of its header block fragment
//! (lengths only, no table state needed), and for a literal `:authority` value that
//! starts with `http://` or `https://` replaces `://` with `B--`: the same number of
//! bytes, or in Huffman form the same number of bits (`:` and `B` both have 7-bit codes,
//! `/` and `-` 6-bit codes in RFC 7541 Appendix B). Frame and string lengths do not
//! change, so the decoder's dynamic table stays consistent (a later indexed reference
//! yields the rewritten value). `httpB--127.0.0.1:2379` is a valid authority.
//!
//! A block split over CONTINUATION frames is rewritten only as far as its HEADERS frame
//! reaches; gRPC clients put `:authority` first, in a few dozen bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Largest HEADERS frame held back; a larger one passes unchanged.
const MAX_HELD: usize = 1 << 20;

/// Huffman codes (RFC 7541 Appendix B) as (code, bits), for the characters involved.
const H_H: (u32, u32) = (0b100111, 6);
const H_T: (u32, u32) = (0b01001, 5);
const H_P: (u32, u32) = (0b101011, 6);
const H_S: (u32, u32) = (0b01000, 5);
const H_COLON: (u32, u32) = (0b1011100, 7);
const H_SLASH: (u32, u32) = (0b011000, 6);
const H_B: (u32, u32) = (0b1011101, 7);
const H_DASH: (u32, u32) = (0b010110, 6);

enum State {
    /// Comparing the first bytes with the HTTP/2 preface.
    Preface,
    /// Not HTTP/2 with prior knowledge: everything passes.
    Passthrough,
    /// Between frames, collecting the 9-byte frame header.
    FrameHeader,
    /// Passing `remaining` payload bytes of a frame that is not rewritten.
    Skip { remaining: usize },
    /// Holding a HEADERS frame until its payload is complete.
    Hold { total: usize },
}

/// Wraps a client connection; see the module docs.
pub struct AuthorityFix<IO> {
    io: IO,
    state: State,
    /// Bytes being looked at (preface, frame header, held frame).
    held: Vec<u8>,
    /// Bytes ready for the reader.
    ready: Vec<u8>,
    ready_pos: usize,
}

impl<IO> AuthorityFix<IO> {
    pub fn new(io: IO) -> Self {
        AuthorityFix {
            io,
            state: State::Preface,
            held: Vec::new(),
            ready: Vec::new(),
            ready_pos: 0,
        }
    }

    /// Runs `input` through the state machine, appending to `ready` what may go on.
    fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            match self.state {
                State::Passthrough => {
                    self.ready.extend_from_slice(input);
                    return;
                }
                State::Preface => {
                    let want = PREFACE.len() - self.held.len();
                    let n = want.min(input.len());
                    self.held.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if !PREFACE.starts_with(&self.held) {
                        self.ready.append(&mut self.held);
                        self.state = State::Passthrough;
                    } else if self.held.len() == PREFACE.len() {
                        self.ready.append(&mut self.held);
                        self.state = State::FrameHeader;
                    }
                }
                State::FrameHeader => {
                    let n = (9 - self.held.len()).min(input.len());
                    self.held.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.held.len() == 9 {
                        let len = (usize::from(self.held[0]) << 16)
                            | (usize::from(self.held[1]) << 8)
                            | usize::from(self.held[2]);
                        if self.held[3] == FRAME_HEADERS && len <= MAX_HELD {
                            self.state = State::Hold { total: 9 + len };
                        } else {
                            self.ready.append(&mut self.held);
                            self.state = State::Skip { remaining: len };
                        }
                        self.finish_hold_if_complete();
                    }
                }
                State::Skip { remaining } => {
                    let n = remaining.min(input.len());
                    self.ready.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if remaining == n {
                        State::FrameHeader
                    } else {
                        State::Skip {
                            remaining: remaining - n,
                        }
                    };
                    if let State::Skip { remaining: 0 } = self.state {
                        self.state = State::FrameHeader;
                    }
                }
                State::Hold { total } => {
                    let n = (total - self.held.len()).min(input.len());
                    self.held.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.finish_hold_if_complete();
                }
            }
        }
    }

    fn finish_hold_if_complete(&mut self) {
        if let State::Hold { total } = self.state
            && self.held.len() == total
        {
            rewrite_headers_frame(&mut self.held);
            self.ready.append(&mut self.held);
            self.state = State::FrameHeader;
        }
        if let State::Skip { remaining: 0 } = self.state {
            self.state = State::FrameHeader;
        }
    }
}

/// Rewrites a scheme-qualified `:authority` in a whole HEADERS frame (header included).
pub fn rewrite_headers_frame(frame: &mut [u8]) {
    let flags = frame[4];
    let mut start = 9;
    let mut end = frame.len();
    if flags & FLAG_PADDED != 0 {
        let Some(&pad) = frame.get(start) else { return };
        start += 1;
        end = match end.checked_sub(usize::from(pad)) {
            Some(e) if e >= start => e,
            _ => return,
        };
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    if start > end {
        return;
    }
    rewrite_block(&mut frame[start..end]);
}

/// Decodes an HPACK integer with an `n`-bit prefix at `*pos`.
fn hpack_int(block: &[u8], pos: &mut usize, n: u32) -> Option<usize> {
    let mask = (1u16 << n) as u8 - 1;
    let mut value = usize::from(*block.get(*pos)? & mask);
    *pos += 1;
    if value < usize::from(mask) {
        return Some(value);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*pos)?;
        *pos += 1;
        value = value.checked_add(usize::from(b & 0x7f).checked_shl(shift)?)?;
        if b & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// Returns (huffman, start, end) of the string literal at `*pos`.
fn hpack_string(block: &[u8], pos: &mut usize) -> Option<(bool, usize, usize)> {
    let huffman = *block.get(*pos)? & 0x80 != 0;
    let len = hpack_int(block, pos, 7)?;
    let start = *pos;
    let end = start.checked_add(len)?;
    if end > block.len() {
        return None;
    }
    *pos = end;
    Some((huffman, start, end))
}

/// Walks a header block fragment; rewrites every literal `:authority` value.
fn rewrite_block(block: &mut [u8]) {
    let mut pos = 0;
    while pos < block.len() {
        let b = block[pos];
        let name_index = if b & 0x80 != 0 {
            // Indexed field.
            if hpack_int(block, &mut pos, 7).is_none() {
                return;
            }
            continue;
        } else if b & 0x40 != 0 {
            hpack_int(block, &mut pos, 6)
        } else if b & 0x20 != 0 {
            // Dynamic table size update.
            if hpack_int(block, &mut pos, 5).is_none() {
                return;
            }
            continue;
        } else {
            hpack_int(block, &mut pos, 4)
        };
        let Some(name_index) = name_index else { return };
        let is_authority = if name_index == 0 {
            let Some((huffman, s, e)) = hpack_string(block, &mut pos) else {
                return;
            };
            !huffman && &block[s..e] == b":authority"
        } else {
            // Static table entry 1 is `:authority`.
            name_index == 1
        };
        let Some((huffman, s, e)) = hpack_string(block, &mut pos) else {
            return;
        };
        if is_authority {
            if huffman {
                fix_huffman(&mut block[s..e]);
            } else {
                fix_raw(&mut block[s..e]);
            }
        }
    }
}

fn fix_raw(value: &mut [u8]) {
    for scheme in [&b"http"[..], b"https"] {
        let n = scheme.len();
        if value.len() >= n + 3 && value.starts_with(scheme) && &value[n..n + 3] == b"://" {
            value[n..n + 3].copy_from_slice(b"B--");
            return;
        }
    }
}

fn get_bits(data: &[u8], at: u32, n: u32) -> Option<u32> {
    let mut v = 0u32;
    for i in at..at + n {
        let byte = *data.get((i / 8) as usize)?;
        v = (v << 1) | u32::from((byte >> (7 - i % 8)) & 1);
    }
    Some(v)
}

fn set_bits(data: &mut [u8], at: u32, n: u32, value: u32) {
    for (k, i) in (at..at + n).enumerate() {
        let bit = (value >> (n - 1 - k as u32)) & 1;
        let byte = &mut data[(i / 8) as usize];
        let mask = 1u8 << (7 - i % 8);
        if bit == 1 {
            *byte |= mask;
        } else {
            *byte &= !mask;
        }
    }
}

fn fix_huffman(value: &mut [u8]) {
    for scheme in [&[H_H, H_T, H_T, H_P][..], &[H_H, H_T, H_T, H_P, H_S]] {
        // The code is prefix-free, so a match of these codes means the value starts
        // with exactly these characters.
        let mut at = 0;
        let matches = scheme
            .iter()
            .chain([&H_COLON, &H_SLASH, &H_SLASH])
            .all(|&(code, bits)| {
                let ok = get_bits(value, at, bits) == Some(code);
                at += bits;
                ok
            });
        if !matches {
            continue;
        }
        let mut at: u32 = scheme.iter().map(|&(_, bits)| bits).sum();
        for (code, bits) in [H_B, H_DASH, H_DASH] {
            set_bits(value, at, bits, code);
            at += bits;
        }
        return;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_pos < this.ready.len() {
                let n = (this.ready.len() - this.ready_pos).min(buf.remaining());
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                if this.ready_pos == this.ready.len() {
                    this.ready.clear();
                    this.ready_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let filled = rb.filled();
                    if filled.is_empty() {
                        // End of stream: whatever is held goes out as it is.
                        if this.held.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        this.ready.append(&mut this.held);
                        this.state = State::Passthrough;
                        continue;
                    }
                    let filled = filled.to_vec();
                    this.feed(&filled);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Huffman-encodes `s` with the few codes this module knows plus digits and '.'.
    fn huffman(s: &str) -> Vec<u8> {
        let code = |c: char| match c {
            'h' => H_H,
            't' => H_T,
            'p' => H_P,
            's' => H_S,
            ':' => H_COLON,
            '/' => H_SLASH,
            'B' => H_B,
            '-' => H_DASH,
            '0' => (0b00000, 5),
            '1' => (0b00001, 5),
            '2' => (0b00010, 5),
            '7' => (0b011101, 6),
            '9' => (0b011111, 6),
            '3' => (0b011001, 6),
            '.' => (0b010111, 6),
            other => panic!("no code for {other:?} in the test"),
        };
        let mut bits: Vec<u8> = Vec::new();
        for c in s.chars() {
            let (v, n) = code(c);
            for k in (0..n).rev() {
                bits.push(((v >> k) & 1) as u8);
            }
        }
        while !bits.len().is_multiple_of(8) {
            bits.push(1); // EOS padding
        }
        bits.chunks(8)
            .map(|b| b.iter().fold(0u8, |acc, &x| (acc << 1) | x))
            .collect()
    }

    fn headers_frame(block: &[u8], flags: u8) -> Vec<u8> {
        let len = block.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            FRAME_HEADERS,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(block);
        f
    }

    fn run_through(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut fix = AuthorityFix::new(());
        for c in input.chunks(chunk) {
            fix.feed(c);
        }
        fix.ready.clone()
    }

    // Goal: a raw and a Huffman-coded scheme-qualified authority become `httpB--...`,
    // with every length unchanged, however the bytes arrive.
    #[test]
    fn rewrites_scheme_in_authority() {
        // :method GET (indexed 2), then :authority literal with incremental indexing.
        let raw_value = b"http://127.0.0.1:2379";
        let mut block = vec![0x82, 0x41, raw_value.len() as u8];
        block.extend_from_slice(raw_value);
        let h = huffman("https://127.0.0.1:2379");
        block.push(0x01); // without indexing, :authority
        block.push(0x80 | h.len() as u8);
        block.extend_from_slice(&h);
        let frame = headers_frame(&block, 0x4);
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // empty SETTINGS
        input.extend_from_slice(&frame);
        for chunk in [1, 3, 7, 1000] {
            let out = run_through(&input, chunk);
            assert_eq!(out.len(), input.len());
            let block_out = &out[out.len() - block.len()..];
            assert_eq!(&block_out[3..3 + raw_value.len()], b"httpB--127.0.0.1:2379");
            let h_out = &block_out[block_out.len() - h.len()..];
            assert_eq!(h_out, huffman("httpsB--127.0.0.1:2379").as_slice());
        }
    }

    // Goal: other headers, other connections and well-formed authorities pass untouched.
    #[test]
    fn leaves_everything_else_alone() {
        let http1 = b"GET /health HTTP/1.1\r\nHost: http://x\r\n\r\n";
        assert_eq!(run_through(http1, 5), http1);
        // A literal with a new name whose value starts with http://.
        let mut block = vec![0x40, 7];
        block.extend_from_slice(b"referer");
        block.push(11);
        block.extend_from_slice(b"http://a/b/");
        block.extend_from_slice(&[0x41, 14]);
        block.extend_from_slice(b"127.0.0.1:2379");
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&headers_frame(&block, 0x4 | 0x1));
        assert_eq!(run_through(&input, 4), input);
        // Truncated garbage in a HEADERS frame is passed as it is.
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&headers_frame(&[0x41, 0x7f, 0xff], 0x4));
        assert_eq!(run_through(&input, 2), input);
    }

    // Goal: padding and priority fields are skipped before the block.
    #[test]
    fn padded_and_priority_frames() {
        let mut payload = vec![2u8]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 3, 16]); // priority
        payload.extend_from_slice(&[0x41, 12]);
        payload.extend_from_slice(b"http://a:123");
        payload.extend_from_slice(&[0, 0]);
        let mut frame = headers_frame(&payload, 0x4 | FLAG_PADDED | FLAG_PRIORITY);
        rewrite_headers_frame(&mut frame);
        assert_eq!(&frame[9 + 8..9 + 20], b"httpB--a:123");
    }
}
