//! `--grpc-keepalive-min-time`: the client-ping policy etcd gets from gRPC-Go's server
//! (`keepalive.EnforcementPolicy{MinTime}`), which the `h2` crate does not have.
//!
//! A filter on client connections follows the HTTP/2 frame layer in both directions
//! (frame headers only, no payload kept): a PING from the client that arrives sooner than
//! the minimum time after the previous one is a strike, unless the server sent HEADERS
//! or DATA since (gRPC-Go resets its strikes then: a client pinging to measure the
//! bandwidth of a busy stream is not abusive); a third strike closes the connection, as
//! gRPC-Go's "too_many_pings" does. Connections that do not open with the HTTP/2 preface
//! pass untouched.
//!
//! Two simplifications, both more permissive than gRPC-Go: the connection is closed
//! without a GOAWAY frame (gRPC-Go sends ENHANCE_YOUR_CALM first, and its clients then
//! double their keep-alive time; others just reconnect), and a connection with no open
//! stream gets the same minimum time as a busy one (gRPC-Go with etcd's
//! `PermitWithoutStream: false` strikes every ping under two hours apart on an idle
//! connection).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_PING: u8 = 0x6;
const FLAG_ACK: u8 = 0x1;
/// gRPC-Go's `maxPingStrikes`: the connection closes at the strike after these.
const MAX_STRIKES: u32 = 2;
/// gRPC-Go's minimum when the policy's is zero (`defaultKeepalivePolicyMinTime`).
const ZERO_MIN_TIME_MEANS: Duration = Duration::from_secs(5 * 60);

/// Follows frame boundaries in one direction of an HTTP/2 connection.
#[derive(Default)]
struct Frames {
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
}

impl Frames {
    /// Feeds `bytes`; calls `on_frame(type, flags)` for each frame header completed.
    fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(u8, u8)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                let h = self.header;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                self.have = 0;
                on_frame(h[3], h[4]);
            }
        }
    }
}

enum Mode {
    /// Comparing the first bytes read with the preface; `usize` of them matched.
    Preface(usize),
    /// Not HTTP/2 with prior knowledge (HTTP/1.1): nothing to police.
    Passthrough,
    Http2,
}

/// Wraps a client connection; see the module docs.
pub struct PingPolicy<IO> {
    io: IO,
    /// `None`: no policy (peer and metrics listeners).
    min_time: Option<Duration>,
    mode: Mode,
    incoming: Frames,
    outgoing: Frames,
    last_ping: Option<Instant>,
    strikes: u32,
    /// The server sent HEADERS or DATA since the last ping.
    reset: bool,
    too_many: bool,
}

impl<IO> PingPolicy<IO> {
    pub fn new(io: IO, min_time: Option<Duration>) -> Self {
        let min_time = min_time.map(|t| if t.is_zero() { ZERO_MIN_TIME_MEANS } else { t });
        PingPolicy {
            io,
            mode: if min_time.is_some() {
                Mode::Preface(0)
            } else {
                Mode::Passthrough
            },
            min_time,
            incoming: Frames::default(),
            outgoing: Frames::default(),
            last_ping: None,
            strikes: 0,
            reset: false,
            too_many: false,
        }
    }

    fn on_read(&mut self, mut bytes: &[u8]) {
        if let Mode::Preface(matched) = self.mode {
            let n = (PREFACE.len() - matched).min(bytes.len());
            if bytes[..n] != PREFACE[matched..matched + n] {
                self.mode = Mode::Passthrough;
                return;
            }
            bytes = &bytes[n..];
            self.mode = if matched + n == PREFACE.len() {
                Mode::Http2
            } else {
                Mode::Preface(matched + n)
            };
        }
        if !matches!(self.mode, Mode::Http2) {
            return;
        }
        let Some(min_time) = self.min_time else {
            return;
        };
        let mut pings = 0;
        self.incoming.feed(bytes, |kind, flags| {
            if kind == FRAME_PING && flags & FLAG_ACK == 0 {
                pings += 1;
            }
        });
        for _ in 0..pings {
            let now = Instant::now();
            if std::mem::take(&mut self.reset) {
                self.strikes = 0;
            } else if self.last_ping.is_some_and(|last| now < last + min_time) {
                self.strikes += 1;
            }
            self.last_ping = Some(now);
            if self.strikes > MAX_STRIKES && !self.too_many {
                self.too_many = true;
                tracing::warn!(
                    min_time = ?min_time,
                    "closing a client connection: too many pings (--grpc-keepalive-min-time)"
                );
            }
        }
    }

    fn on_write(&mut self, bytes: &[u8]) {
        if !matches!(self.mode, Mode::Http2) {
            return;
        }
        let mut sent = false;
        self.outgoing.feed(bytes, |kind, _| {
            sent |= kind == FRAME_HEADERS || kind == FRAME_DATA;
        });
        self.reset |= sent;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for PingPolicy<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.too_many {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "too_many_pings",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PingPolicy<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, bytes);
        if let Poll::Ready(Ok(n)) = polled {
            this.on_write(&bytes[..n]);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags, 0, 0, 0, 0]);
        f.extend(payload);
        f
    }

    fn ping() -> Vec<u8> {
        frame(FRAME_PING, 0, &[7; 8])
    }

    /// A policed connection over a duplex pipe; the client end is returned.
    fn policed(min: Duration) -> (PingPolicy<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(1 << 16);
        (PingPolicy::new(server, Some(min)), client)
    }

    /// Reads what the client sent so far; `Err` once the policy closed the connection.
    async fn drain(server: &mut PingPolicy<tokio::io::DuplexStream>) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_millis(1), server.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    // Goal: three pings sooner than the minimum after their predecessors close the
    // connection (gRPC-Go's too_many_pings); pings the minimum apart never do.
    #[tokio::test(start_paused = true)]
    async fn pings_too_often_close_the_connection() {
        let (mut server, mut client) = policed(Duration::from_secs(5));
        client.write_all(PREFACE).await.unwrap();
        client.write_all(&frame(0x4, 0, &[])).await.unwrap();
        for _ in 0..3 {
            client.write_all(&ping()).await.unwrap();
            drain(&mut server).await.unwrap();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        client.write_all(&ping()).await.unwrap();
        let _ = drain(&mut server).await;
        let e = drain(&mut server).await.unwrap_err();
        assert_eq!(e.to_string(), "too_many_pings");

        let (mut server, mut client) = policed(Duration::from_secs(5));
        client.write_all(PREFACE).await.unwrap();
        for _ in 0..20 {
            client.write_all(&ping()).await.unwrap();
            drain(&mut server).await.unwrap();
            tokio::time::advance(Duration::from_secs(5)).await;
        }
    }

    // Goal: HEADERS or DATA sent by the server reset the strikes, as gRPC-Go's do: a
    // client pinging after each response of a busy stream is never cut off.
    #[tokio::test(start_paused = true)]
    async fn server_data_resets_the_strikes() {
        let (mut server, mut client) = policed(Duration::from_secs(5));
        client.write_all(PREFACE).await.unwrap();
        for _ in 0..20 {
            client.write_all(&ping()).await.unwrap();
            drain(&mut server).await.unwrap();
            // Written in two pieces: frame boundaries are followed across writes.
            let data = frame(FRAME_DATA, 0, &[1; 40]);
            server.write_all(&data[..5]).await.unwrap();
            server.write_all(&data[5..]).await.unwrap();
            let mut sink = vec![0; data.len()];
            client.read_exact(&mut sink).await.unwrap();
            tokio::time::advance(Duration::from_millis(100)).await;
        }
    }

    // Goal: an HTTP/1.1 connection, and a listener without the policy, pass untouched.
    #[tokio::test(start_paused = true)]
    async fn other_connections_are_not_policed() {
        let (mut server, mut client) = policed(Duration::from_secs(5));
        client
            .write_all(b"GET /health HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..10 {
            client.write_all(&ping()).await.unwrap();
        }
        drain(&mut server).await.unwrap();
        drain(&mut server).await.unwrap();

        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut server = PingPolicy::new(server, None);
        client.write_all(PREFACE).await.unwrap();
        for _ in 0..10 {
            client.write_all(&ping()).await.unwrap();
        }
        drain(&mut server).await.unwrap();
        drain(&mut server).await.unwrap();
    }
}
