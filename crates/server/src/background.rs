//! Background work on threads of its own at a lower CPU priority than the rest of the
//! server: bcrypt (logins and password changes) and snapshot streams. On a busy member
//! that work slows down and reads and writes keep their share of the CPU; on an idle one
//! it takes what it wants. In etcd a login storm or a backup takes the CPU from
//! everything else.

use std::future::Future;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::oneshot;

/// The nice value of background threads (the server's other threads keep 0). At 10 the
/// kernel weighs such a thread about a tenth of a normal one (110 against 1024). Linux
/// applies it to the thread alone.
pub const BACKGROUND_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of low-priority threads, started on first use and living as long as the
/// process. Jobs beyond the threads wait their turn, in order.
pub struct Pool {
    jobs: mpsc::Sender<Job>,
}

/// bcrypt's pool: one thread per core (at most 8).
pub fn bcrypt() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        Pool::start("bcrypt", threads)
    })
}

/// Snapshot streams' pool: two at a time, whatever the machine (each reads the whole
/// backend; a third waits for one of them to end). Long-lived threads also keep the
/// memory a stream's reads allocate in the backend cache reused by the next stream.
pub fn snapshots() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::start("snapshot", 2))
}

impl Pool {
    fn start(name: &str, threads: usize) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
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
                tracing::error!(error = %e, pool = name, "cannot start a background thread");
            }
        }
        Pool { jobs: tx }
    }

    /// Queues `work` for a pool thread at once; the future answers its result, or `None`
    /// when the pool is gone. Work whose future was dropped before a thread took it (a
    /// client that gave up) is skipped unrun.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Option<T>> {
        let (tx, rx) = oneshot::channel();
        self.spawn(move || {
            if !tx.is_closed() {
                let _ = tx.send(work());
            }
        });
        async move { rx.await.ok() }
    }

    /// Queues `work`, which reports on its own (through a channel it holds), for a pool
    /// thread. Whether it is still wanted when its turn comes is for `work` to check.
    pub fn spawn(&self, work: impl FnOnce() + Send + 'static) {
        // A send fails only when every thread is gone; the work is then dropped, and with
        // it whatever channel it would have answered on.
        let _ = self.jobs.send(Box::new(work));
    }
}

/// Lowers the calling thread's CPU priority to [`BACKGROUND_NICE`]. Raising a nice value
/// needs no privilege; where it fails the thread keeps its priority, with a warning.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), BACKGROUND_NICE) {
            tracing::warn!(error = %e, "cannot lower the priority of a background thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: pool threads run at BACKGROUND_NICE; a job whose caller stopped waiting is
    // skipped; a spawned job runs. One thread, so jobs run in order: the first holds the
    // thread until the second has been abandoned, and the third runs after the second was
    // considered.
    #[tokio::test]
    async fn priority_and_abandoned_work() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let pool = Pool::start("test", 1);
        #[cfg(target_os = "linux")]
        {
            let nice = pool
                .run(|| rustix::process::getpriority_process(Some(rustix::thread::gettid())))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(nice, BACKGROUND_NICE);
        }
        let (release, held) = std::sync::mpsc::channel::<()>();
        let first = pool.run(move || held.recv().is_ok());
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let second = pool.run(move || flag.store(true, Ordering::SeqCst));
        // Both are queued already; the second's caller gives up.
        drop(second);
        let (done_tx, done_rx) = oneshot::channel();
        pool.spawn(move || {
            let _ = done_tx.send(());
        });
        release.send(()).unwrap();
        assert_eq!(first.await, Some(true));
        assert_eq!(pool.run(|| 7).await, Some(7));
        assert!(done_rx.await.is_ok(), "spawned work did not run");
        assert!(!ran.load(Ordering::SeqCst), "abandoned work ran");
    }
}
