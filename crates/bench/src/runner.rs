//! The closed loop: `clients` tasks, each issuing its next request as soon
//! as the previous one answered, until `total` requests were sent.
//!
//! Requests are numbered from a shared counter, so request `i` is the same
//! request (same key) whichever client takes it, and the run stops after
//! exactly `total` requests however the clients' speeds differ.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::Status;

use crate::stats::Recorder;

/// One client's request, in a workload.
pub trait Op: Send + 'static {
    /// Issues request number `index` and waits for its answer. On success
    /// returns a workload-defined count added to [`RunOutcome::items`]: keys
    /// returned by a range, 1 for a Txn that succeeded, and so on.
    fn call(&mut self, index: u64) -> impl Future<Output = Result<u64, Status>> + Send;

    /// Forgets whatever the op recorded itself, after the warmup.
    fn reset(&mut self) {}
}

/// What a closed-loop run measured.
#[derive(Debug)]
pub struct RunOutcome<O> {
    /// The ops, handed back for the state they kept (per-step recorders,
    /// open streams).
    pub ops: Vec<O>,
    /// Latencies and errors of every request, merged over the clients.
    pub recorder: Recorder,
    /// Sum of what successful calls returned.
    pub items: u64,
    /// From the first request sent to the last answer received.
    pub elapsed: Duration,
}

/// Runs `total` requests spread over `ops.len()` concurrent clients. A
/// request unanswered after `request_timeout` counts as DeadlineExceeded
/// and the client moves on.
pub async fn run_closed_loop<O: Op>(
    ops: Vec<O>,
    total: u64,
    request_timeout: Duration,
) -> RunOutcome<O> {
    assert!(!ops.is_empty(), "a run needs at least one client");
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = ops
        .into_iter()
        .map(|mut op| {
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut recorder = Recorder::new();
                let mut items = 0u64;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= total {
                        break;
                    }
                    let sent = Instant::now();
                    match tokio::time::timeout(request_timeout, op.call(index)).await {
                        Ok(Ok(n)) => {
                            recorder.record_ok(sent.elapsed());
                            items += n;
                        }
                        Ok(Err(status)) => recorder.record_error(status.code()),
                        Err(_elapsed) => recorder.record_error(tonic::Code::DeadlineExceeded),
                    }
                }
                (op, recorder, items)
            })
        })
        .collect();

    let mut outcome = RunOutcome {
        ops: Vec::with_capacity(tasks.len()),
        recorder: Recorder::new(),
        items: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        match task.await {
            Ok((op, recorder, items)) => {
                outcome.ops.push(op);
                outcome.recorder.merge(&recorder);
                outcome.items += items;
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a client task was cancelled: {e}"),
        }
    }
    outcome.elapsed = start.elapsed();
    outcome
}

/// Runs `warmup` unmeasured requests, then `total` measured ones, with the
/// same clients.
pub async fn run_with_warmup<O: Op>(
    ops: Vec<O>,
    warmup: u64,
    total: u64,
    request_timeout: Duration,
) -> RunOutcome<O> {
    let ops = if warmup > 0 {
        let mut warm = run_closed_loop(ops, warmup, request_timeout).await;
        warm.ops.iter_mut().for_each(Op::reset);
        warm.ops
    } else {
        ops
    };
    run_closed_loop(ops, total, request_timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    /// Fails every fifth request, hangs on request 7, and remembers what
    /// it was asked.
    struct FakeOp {
        seen: Arc<Mutex<Vec<u64>>>,
        resets: u32,
    }

    impl Op for FakeOp {
        async fn call(&mut self, index: u64) -> Result<u64, Status> {
            self.seen.lock().expect("not poisoned").push(index);
            tokio::task::yield_now().await;
            if index == 7 {
                std::future::pending::<()>().await;
            }
            if index % 5 == 4 {
                return Err(Status::unavailable("fake"));
            }
            Ok(2)
        }

        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_request_is_issued_once_and_counted() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ops: Vec<_> = (0..4)
            .map(|_| FakeOp {
                seen: Arc::clone(&seen),
                resets: 0,
            })
            .collect();
        let out = run_with_warmup(ops, 3, 100, Duration::from_millis(50)).await;
        assert_eq!(out.ops.len(), 4);
        assert!(out.ops.iter().all(|op| op.resets == 1));
        // Warmup 0..3, then the measured 0..100: every index exactly once each.
        let seen = seen.lock().expect("not poisoned").clone();
        assert_eq!(seen.len(), 103);
        let measured: BTreeSet<u64> = seen[..].iter().copied().collect();
        assert_eq!(measured, (0..100).collect());
        let summary = out.recorder.summary(out.elapsed);
        // 20 of 100 fail (index % 5 == 4), request 7 times out.
        assert_eq!(summary.errors["Unavailable"], 20);
        assert_eq!(summary.errors["DeadlineExceeded"], 1);
        assert_eq!(summary.ok, 79);
        assert_eq!(out.items, 79 * 2);
    }
}
