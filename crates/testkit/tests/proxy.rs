//! The fault proxy against echo servers on 127.0.0.1: forwarding, blackhole and heal,
//! delay, seeded loss, and attribution of connections to the processes that opened them
//! (this test process and `bash` children using `/dev/tcp`).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use retcd_prng::SplitMix64;
use retcd_testkit::proxy::{Proxy, ProxyStats, Scope};

/// Bound on every wait for something that should happen.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long a read waits before we conclude nothing is coming; only used where the
/// proxy's counters already show that what would have come was discarded.
const QUIET: Duration = Duration::from_millis(300);

/// A TCP echo server on 127.0.0.1, one thread per connection; stops on drop.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Echo {
            addr,
            accepted,
            stop,
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn connect(proxy: &Proxy) -> TcpStream {
    let s = TcpStream::connect(proxy.addr()).expect("connect to the proxy");
    s.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    s
}

fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    Ok(back)
}

/// Reads until the peer closes; panics if it does not within the deadline.
fn assert_closed(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            // A socket read with a timeout is not restarted after a signal handler ran.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: still open after {DEADLINE:?}")
            }
            Err(_) => return, // reset
        }
    }
}

/// Asserts nothing arrives within `QUIET`.
fn assert_silent(s: &mut TcpStream, what: &str) {
    let until = Instant::now() + QUIET;
    let mut buf = [0u8; 64];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            other => panic!("{what}: expected silence, got {other:?}"),
        }
    }
    s.set_read_timeout(Some(DEADLINE)).expect("read timeout");
}

fn wait(proxy: &Proxy, what: &str, ready: impl FnMut(&ProxyStats) -> bool) -> ProxyStats {
    proxy
        .wait_for(DEADLINE, ready)
        .unwrap_or_else(|last| panic!("timed out waiting for {what}; stats: {last:?}"))
}

#[test]
fn forwards_both_ways_and_closes_on_drop() {
    let echo = Echo::start();
    let proxy = Proxy::start(echo.addr).expect("start proxy");
    let mut s = connect(&proxy);
    assert_eq!(roundtrip(&mut s, b"hello").unwrap(), b"hello");

    // A megabyte each way, written while it is being read back.
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut writer = s.try_clone().unwrap();
    let sent = payload.clone();
    let write = std::thread::spawn(move || writer.write_all(&sent));
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).unwrap();
    write.join().unwrap().unwrap();
    assert!(back == payload, "the payload came back altered");
    let total = 5 + payload.len() as u64;
    let stats = wait(&proxy, "all bytes counted", |s| {
        s.bytes_to_target == total && s.bytes_to_client == total
    });
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.accepted_by_source.get(&None), Some(&1));
    assert_eq!(stats.resets_injected, 0);

    // A half-close travels through: the echo server sees EOF and closes its side.
    s.shutdown(Shutdown::Write).unwrap();
    assert_closed(&mut s, "connection after half-close");
    wait(&proxy, "the connection to be gone", |s| s.closed == 1);
    assert_eq!(proxy.connections(), vec![]);

    // Dropping the proxy closes its connections and its listener.
    let mut open = connect(&proxy);
    assert_eq!(roundtrip(&mut open, b"x").unwrap(), b"x");
    let addr = proxy.addr();
    drop(proxy);
    assert_closed(&mut open, "connection after the proxy was dropped");
    assert!(TcpStream::connect(addr).is_err(), "the listener survived");
}

#[test]
fn blackhole_stops_traffic_and_heal_restores_it() {
    let echo = Echo::start();
    let proxy = Proxy::start(echo.addr).expect("start proxy");
    let mut before = connect(&proxy);
    assert_eq!(roundtrip(&mut before, b"one").unwrap(), b"one");

    proxy.blackhole(Scope::All);
    assert_closed(&mut before, "open connection under a new blackhole");
    wait(&proxy, "the close to be counted", |s| {
        s.closed_by_blackhole == 1
    });

    // New connections are accepted and held, and what they send goes nowhere.
    let mut held = connect(&proxy);
    held.write_all(b"into the void").unwrap();
    let stats = wait(&proxy, "the bytes to be discarded", |s| {
        s.bytes_discarded == 13
    });
    assert_eq!(stats.held, 1);
    assert_eq!(stats.bytes_to_target, 3);
    assert_eq!(echo.accepted(), 1, "the target saw a held connection");
    assert_silent(&mut held, "held connection");
    assert!(proxy.connections().iter().any(|c| c.held));

    // Healing closes the held connection; a new one goes through.
    proxy.heal(Scope::All);
    assert_closed(&mut held, "held connection after heal");
    wait(&proxy, "the heal to close it", |s| s.closed_by_heal == 1);
    let mut after = connect(&proxy);
    assert_eq!(roundtrip(&mut after, b"two").unwrap(), b"two");
    assert_eq!(echo.accepted(), 2);
}

#[test]
fn delay_holds_each_chunk_at_least_the_delay_and_keeps_order() {
    let echo = Echo::start();
    let proxy = Proxy::start(echo.addr).expect("start proxy");
    let delay = Duration::from_millis(150);
    proxy.delay(Scope::All, delay, Duration::from_millis(40), 7);
    let mut s = connect(&proxy);
    let start = Instant::now();
    assert_eq!(roundtrip(&mut s, b"ping").unwrap(), b"ping");
    let elapsed = start.elapsed();
    assert!(elapsed >= 2 * delay, "a round trip took {elapsed:?}");

    // Many small writes, each likely its own chunk with its own jitter, arrive in order.
    let mut writer = s.try_clone().unwrap();
    let write = std::thread::spawn(move || {
        for i in 0..50u8 {
            writer.write_all(&[i]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let mut back = [0u8; 50];
    s.read_exact(&mut back).unwrap();
    write.join().unwrap();
    assert_eq!(back.to_vec(), (0..50u8).collect::<Vec<_>>());

    proxy.heal_all();
    assert_eq!(roundtrip(&mut s, b"pong").unwrap(), b"pong");
}

#[test]
fn loss_resets_connections_as_the_seed_says() {
    let echo = Echo::start();
    let proxy = Proxy::start(echo.addr).expect("start proxy");

    proxy.loss(Scope::All, 1.0, 1);
    let mut s = connect(&proxy);
    s.write_all(b"lost").unwrap();
    let mut buf = [0u8; 4];
    let err = s
        .read_exact(&mut buf)
        .expect_err("a certain loss forwarded");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
        ),
        "{err:?}"
    );
    wait(&proxy, "the reset to be counted", |s| {
        s.resets_injected == 1
    });
    assert_eq!(
        proxy.stats().bytes_to_target,
        0,
        "the lost chunk reached the target"
    );

    // One connection at a time, one chunk each way: the seed decides exactly which
    // connections survive, and in which direction the others are reset.
    let seed = 20240607;
    let p = 0.5;
    proxy.loss(Scope::All, p, seed);
    let mut model = SplitMix64::new(seed);
    let mut expected = Vec::new();
    let mut observed = Vec::new();
    for i in 0..24u32 {
        let outcome = if model.chance(500_000, 1_000_000) {
            "reset before the target"
        } else if model.chance(500_000, 1_000_000) {
            "reset on the way back"
        } else {
            "echoed"
        };
        expected.push(outcome);
        let before = proxy.stats();
        let mut s = connect(&proxy);
        let msg = format!("m{i:03}");
        let got = roundtrip(&mut s, msg.as_bytes());
        let outcome = match got {
            Ok(back) => {
                assert_eq!(back, msg.as_bytes());
                "echoed"
            }
            Err(_) => {
                let stats = wait(&proxy, "the reset to be counted", |s| {
                    s.resets_injected == before.resets_injected + 1
                });
                if stats.bytes_to_target == before.bytes_to_target {
                    "reset before the target"
                } else {
                    "reset on the way back"
                }
            }
        };
        observed.push(outcome);
    }
    assert_eq!(observed, expected, "seed {seed}");
    assert!(observed.contains(&"echoed") && observed.iter().any(|o| o.starts_with("reset")));

    proxy.heal_all();
    let mut s = connect(&proxy);
    assert_eq!(roundtrip(&mut s, b"fine").unwrap(), b"fine");
}

/// A `bash` child that opens a connection with `/dev/tcp`. With `wait_first`, it waits for
/// a line on stdin before connecting. It sends `hello <tag>`, prints the line that comes
/// back, and holds the connection until its stdin closes. Killed on drop.
struct BashClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl BashClient {
    fn spawn(port: u16, tag: &str, wait_first: bool) -> BashClient {
        let script = format!(
            "{}exec 3<>/dev/tcp/127.0.0.1/{port} || exit 1; \
             echo 'hello {tag}' >&3; read -r line <&3; echo \"$line\"; read -r _",
            if wait_first { "read -r _; " } else { "" }
        );
        let mut child = Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bash");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        BashClient {
            child,
            stdin,
            lines,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn go(&mut self) {
        writeln!(self.stdin.as_mut().expect("stdin"), "go").expect("write to bash");
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(DEADLINE)
            .expect("a line from the bash client")
    }
}

impl Drop for BashClient {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bash_available() -> bool {
    Command::new("bash")
        .args(["-c", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn connections_are_attributed_to_the_registered_processes() {
    if !bash_available() {
        eprintln!("skipping: bash is not installed (the child clients use its /dev/tcp)");
        return;
    }
    let echo = Echo::start();
    let proxy = Proxy::start(echo.addr).expect("start proxy");
    let port = proxy.addr().port();

    // This process, registered before it connects.
    proxy.register_source(7, std::process::id());
    let mut own = connect(&proxy);
    assert_eq!(roundtrip(&mut own, b"own").unwrap(), b"own");
    let own_addr = own.local_addr().unwrap();
    let info = proxy
        .connections()
        .into_iter()
        .find(|c| c.peer == own_addr)
        .expect("our connection is listed");
    assert_eq!(info.source, Some(7));

    // A child registered before it connects.
    let mut waiting = BashClient::spawn(port, "early", true);
    proxy.register_source(3, waiting.pid());
    waiting.go();
    assert_eq!(waiting.line(), "hello early");
    wait(&proxy, "the child's connection", |s| {
        s.accepted_by_source.get(&Some(3)) == Some(&1)
    });

    // A child that connects before it is registered: unknown at first, attributed once
    // registered.
    let eager = BashClient::spawn(port, "eager", false);
    assert_eq!(eager.line(), "hello eager");
    wait(&proxy, "an unknown connection", |s| {
        s.accepted_by_source.get(&None) == Some(&1)
    });
    proxy.register_source(4, eager.pid());
    let stats = wait(&proxy, "the re-attribution", |s| {
        s.accepted_by_source.get(&Some(4)) == Some(&1)
    });
    assert_eq!(stats.accepted_by_source.get(&None), None, "{stats:?}");

    // A child nobody registered stays unknown.
    let stranger = BashClient::spawn(port, "stranger", false);
    assert_eq!(stranger.line(), "hello stranger");
    let stats = wait(&proxy, "the stranger's connection", |s| s.accepted == 4);
    let expected = [(None, 1), (Some(3), 1), (Some(4), 1), (Some(7), 1)];
    assert_eq!(
        stats.accepted_by_source.into_iter().collect::<Vec<_>>(),
        expected.to_vec()
    );
}

#[test]
fn a_blackhole_for_one_source_spares_the_others() {
    if !bash_available() {
        eprintln!("skipping: bash is not installed (the child clients use its /dev/tcp)");
        return;
    }
    let echo = Echo::start();
    let proxy = Proxy::start(echo.addr).expect("start proxy");
    proxy.register_source(0, std::process::id());
    let mut own = connect(&proxy);
    assert_eq!(roundtrip(&mut own, b"a").unwrap(), b"a");

    proxy.blackhole(Scope::Source(0));
    assert_closed(&mut own, "our connection under our blackhole");
    let mut own = connect(&proxy);
    own.write_all(b"b").unwrap();
    wait(&proxy, "our bytes to be discarded", |s| {
        s.bytes_discarded == 1
    });

    // An unregistered child still gets through, and so does a registered one.
    let other = BashClient::spawn(proxy.addr().port(), "other", false);
    assert_eq!(other.line(), "hello other");
    let mut friend = BashClient::spawn(proxy.addr().port(), "friend", true);
    proxy.register_source(1, friend.pid());
    friend.go();
    assert_eq!(friend.line(), "hello friend");
    assert_silent(&mut own, "our held connection");

    proxy.heal(Scope::Source(0));
    assert_closed(&mut own, "our held connection after heal");
    let mut own = connect(&proxy);
    assert_eq!(roundtrip(&mut own, b"c").unwrap(), b"c");
}

#[tokio::test]
async fn serves_async_callers() {
    let echo = Echo::start();
    let proxy = Proxy::start(echo.addr).expect("start proxy");
    let delay = Duration::from_millis(100);
    proxy.delay(Scope::All, delay, Duration::ZERO, 0);
    let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = tokio::time::Instant::now();
    s.write_all(b"async").await.unwrap();
    let mut back = [0u8; 5];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut back))
        .await
        .expect("the echo within the deadline")
        .unwrap();
    assert_eq!(&back, b"async");
    assert!(start.elapsed() >= 2 * delay, "{:?}", start.elapsed());
    proxy
        .wait_for_async(DEADLINE, |s| s.bytes_forwarded() == 10)
        .await
        .expect("the bytes counted");
}
