//! Passwords: bcrypt, hashed by the member that takes the request, before anything is
//! proposed, so no plaintext password reaches the log, a snapshot or the backend. The
//! hash travels in the request's `hashedPassword` field base64-encoded (as etcd 3.5
//! sends it) and is stored as bcrypt's text, which etcd reads too.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10): both hashing and
//! checking run on [`BcryptPool`]'s threads, never on the reactor or the raft loop.
//! Those threads run at a lower CPU priority than the rest of the server, so a storm of
//! logins (every client of a restarted application at once, or someone guessing
//! passwords) slows logins down and leaves reads and writes their share of the CPU. In
//! etcd a login storm takes the CPU from everything else.

use std::future::Future;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use retcd_api::errors::EtcdError;
use tokio::sync::oneshot;

use crate::errors::RequestError;

/// The nice value of the bcrypt threads (the server's other threads keep 0). At 10 the
/// kernel weighs a bcrypt thread about a tenth of a normal one (110 against 1024), so
/// while the server is busy all of them together take a few percent of the CPU, and
/// when it is idle they take what they want. Linux applies it to the thread alone.
pub const BCRYPT_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of low-priority threads for bcrypt, as many as the machine has cores
/// (at most 8), started on first use and living as long as the process.
pub struct BcryptPool {
    jobs: mpsc::Sender<Job>,
}

impl BcryptPool {
    /// The process's pool.
    pub fn get() -> &'static BcryptPool {
        static POOL: OnceLock<BcryptPool> = OnceLock::new();
        POOL.get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
            BcryptPool::start(threads)
        })
    }

    fn start(threads: usize) -> BcryptPool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("bcrypt-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a bcrypt thread");
            }
        }
        BcryptPool { jobs: tx }
    }

    /// Queues `work` for a pool thread at once; the future answers its result, or `None`
    /// when the pool is gone. Work whose future was dropped before a thread took it (a
    /// client that gave up) is skipped unrun.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Option<T>> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            if !tx.is_closed() {
                let _ = tx.send(work());
            }
        });
        // A send fails only when every thread is gone; the dropped sender then answers None.
        let _ = self.jobs.send(job);
        async move { rx.await.ok() }
    }
}

/// Lowers the calling thread's CPU priority to [`BCRYPT_NICE`]. Raising a nice value
/// needs no privilege; where it fails the thread keeps its priority, with a warning.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), BCRYPT_NICE) {
            tracing::warn!(error = %e, "cannot lower the priority of a bcrypt thread");
        }
    }
}

/// bcrypt's input limit; longer passwords are refused rather than silently truncated.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// Hashes `password` at `cost` on the bcrypt threads; the result as the request carries it.
pub async fn hash_for_request(password: String, cost: u32) -> Result<String, RequestError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(RequestError::InvalidArgument(
            "bcrypt: password length exceeds 72 bytes".into(),
        ));
    }
    let hashed = BcryptPool::get()
        .run(move || hash(&password, cost))
        .await
        .ok_or_else(|| RequestError::Internal("the bcrypt threads are gone".into()))??;
    Ok(base64::engine::general_purpose::STANDARD.encode(hashed))
}

fn hash(password: &str, cost: u32) -> Result<String, RequestError> {
    use ring::rand::SecureRandom as _;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| RequestError::Internal("no randomness for a password salt".into()))?;
    let parts = bcrypt::hash_with_salt(password, cost, salt)
        .map_err(|e| RequestError::InvalidArgument(format!("bcrypt: {e}")))?;
    Ok(parts.format_for_version(bcrypt::Version::TwoA))
}

/// The stored form of a request's `hashedPassword`: the bcrypt text it encodes.
/// A value that is not base64 of a bcrypt hash is refused.
pub fn stored_from_request(hashed: &str) -> Result<Vec<u8>, EtcdError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(hashed)
        .map_err(|_| EtcdError::InvalidAuthMgmt)?;
    if !bytes.starts_with(b"$2") {
        return Err(EtcdError::InvalidAuthMgmt);
    }
    Ok(bytes)
}

/// Whether `password` matches the stored hash, on the bcrypt threads. A stored value that is
/// not a bcrypt hash matches nothing.
pub async fn matches(password: String, stored: Vec<u8>) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    BcryptPool::get()
        .run(move || {
            std::str::from_utf8(&stored)
                .ok()
                .and_then(|h| bcrypt::verify(&password, h).ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a hash made for a request is stored as bcrypt text that verifies the password
    // and nothing else, and the plaintext appears nowhere in it.
    // Goal: pool threads run at BCRYPT_NICE, and a job whose caller stopped waiting is
    // skipped. One thread, so jobs run in order: the first holds the thread until the
    // second has been abandoned, and the third runs after the second was considered.
    #[tokio::test]
    async fn pool_priority_and_abandoned_work() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let pool = BcryptPool::start(1);
        #[cfg(target_os = "linux")]
        {
            let nice = pool
                .run(|| rustix::process::getpriority_process(Some(rustix::thread::gettid())))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(nice, BCRYPT_NICE);
        }
        let (release, held) = std::sync::mpsc::channel::<()>();
        let first = pool.run(move || held.recv().is_ok());
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let second = pool.run(move || flag.store(true, Ordering::SeqCst));
        // Both are queued already; the second's caller gives up.
        drop(second);
        release.send(()).unwrap();
        assert_eq!(first.await, Some(true));
        assert_eq!(pool.run(|| 7).await, Some(7));
        assert!(!ran.load(Ordering::SeqCst), "abandoned work ran");
    }

    #[tokio::test]
    async fn hash_round_trip() {
        let sent = hash_for_request("s3cret-pw".into(), 4).await.unwrap();
        let stored = stored_from_request(&sent).unwrap();
        assert!(
            stored.starts_with(b"$2a$04$"),
            "{}",
            String::from_utf8_lossy(&stored)
        );
        assert!(!String::from_utf8_lossy(&stored).contains("s3cret"));
        assert!(matches("s3cret-pw".into(), stored.clone()).await);
        assert!(!matches("s3cret-pX".into(), stored.clone()).await);
        assert!(!matches("s3cret-pw".into(), b"not a hash".to_vec()).await);
        let long = "x".repeat(73);
        assert!(hash_for_request(long.clone(), 4).await.is_err());
        assert!(!matches(long, stored).await);
        assert_eq!(stored_from_request("%%%"), Err(EtcdError::InvalidAuthMgmt));
        assert_eq!(
            stored_from_request("aGVsbG8="),
            Err(EtcdError::InvalidAuthMgmt)
        );
    }
}
