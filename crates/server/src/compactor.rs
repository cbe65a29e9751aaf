//! Auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`) with etcd
//! 3.4's exact semantics. Every member runs the loop; only the leader compacts (a
//! follower's periodic compactor keeps sampling, as etcd's paused one does).
//!
//! - **periodic** (a window: hours, or a duration): every tenth of `min(window, 1h)`
//!   the store's revision is sampled, keeping the samples of one window; once a window
//!   has passed since the start (then every `min(window, 1h)` after the last success),
//!   the leader compacts at the oldest sample, the revision of about one window ago. A
//!   failure is retried at the next sample.
//! - **revision** (a count): every 5 minutes the leader compacts at the current
//!   revision minus the count, unless that is not positive or is where it compacted
//!   last.
//!
//! [`AutoCompactor`] is the decision, with time and revisions handed in (tests drive it
//! with a made-up clock); [`run`] is the loop that feeds it and proposes compactions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use crate::config::Policy;

use crate::config::compaction::HOUR;
/// etcd's revision compactor's interval (`revInterval`).
pub const REVISION_INTERVAL: Duration = Duration::from_secs(300);

/// The compactor's decisions.
#[derive(Debug)]
pub struct AutoCompactor {
    policy: Policy,
    /// Periodic: revisions sampled, oldest first, one window's worth.
    revs: VecDeque<i64>,
    /// Periodic: when the last compaction succeeded (the start, before the first).
    last_success: Instant,
    /// Periodic: the wait since the last success before compacting (a whole window
    /// before the first compaction, `min(window, 1h)` after).
    base_interval: Duration,
    /// Revision: where it compacted last.
    prev: i64,
}

impl AutoCompactor {
    pub fn new(policy: Policy, now: Instant) -> AutoCompactor {
        let base_interval = match policy {
            Policy::Periodic(period) => period,
            Policy::Revision(_) => Duration::ZERO,
        };
        AutoCompactor {
            policy,
            revs: VecDeque::new(),
            last_success: now,
            base_interval,
            prev: 0,
        }
    }

    /// How often the periodic compactor compacts: the window, at most an hour.
    fn compact_interval(&self, period: Duration) -> Duration {
        period.min(HOUR)
    }

    /// The wait between two turns.
    pub fn interval(&self) -> Duration {
        match self.policy {
            Policy::Periodic(period) => self.compact_interval(period) / 10,
            Policy::Revision(_) => REVISION_INTERVAL,
        }
    }

    /// Before a wait: the store's revision now (periodic samples it).
    pub fn sample(&mut self, revision: i64) {
        if let Policy::Periodic(period) = self.policy {
            self.revs.push_back(revision);
            let keep = (period.as_nanos() / self.interval().as_nanos().max(1)) as usize + 1;
            while self.revs.len() > keep {
                self.revs.pop_front();
            }
        }
    }

    /// After a wait: the revision to compact at, if any. `revision` is the store's
    /// revision now; `leader` whether this member leads (only the leader compacts).
    pub fn due(&mut self, now: Instant, revision: i64, leader: bool) -> Option<i64> {
        if !leader {
            return None;
        }
        match self.policy {
            Policy::Periodic(period) => {
                if now.saturating_duration_since(self.last_success) < self.base_interval {
                    return None;
                }
                self.base_interval = self.compact_interval(period);
                self.revs.front().copied()
            }
            Policy::Revision(keep) => {
                let rev = revision - keep;
                (rev > 0 && rev != self.prev).then_some(rev)
            }
        }
    }

    /// The outcome of compacting at `rev`: done (or compacted already), or failed.
    pub fn compacted(&mut self, rev: i64, now: Instant, done: bool) {
        if !done {
            return;
        }
        match self.policy {
            Policy::Periodic(_) => self.last_success = now,
            Policy::Revision(_) => self.prev = rev,
        }
    }
}

/// The loop: every member runs it until the server stops; `revision` reads the store's
/// revision, `leader` says whether this member leads, `compact` proposes a compaction
/// and answers whether it is done (compacted already counts).
pub async fn run<R, L, C, F>(policy: Policy, revision: R, leader: L, mut compact: C)
where
    R: Fn() -> i64,
    L: Fn() -> bool,
    C: FnMut(i64) -> F,
    F: std::future::Future<Output = bool>,
{
    let mut c = AutoCompactor::new(policy, Instant::now());
    tracing::info!(?policy, interval = ?c.interval(), "auto compaction on");
    loop {
        c.sample(revision());
        tokio::time::sleep(c.interval()).await;
        let Some(rev) = c.due(Instant::now(), revision(), leader()) else {
            continue;
        };
        tracing::info!(revision = rev, ?policy, "starting auto compaction");
        let done = compact(rev).await;
        if done {
            tracing::info!(revision = rev, "completed auto compaction");
        } else {
            tracing::warn!(revision = rev, retry = ?c.interval(), "auto compaction failed");
        }
        c.compacted(rev, Instant::now(), done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a periodic compactor as `run` does, over `turns` turns of a made-up clock,
    /// with the store's revision growing by `per_turn` each turn; returns the (turn,
    /// revision) of each compaction.
    fn periodic_turns(
        period: Duration,
        turns: u32,
        per_turn: i64,
        leader: impl Fn(u32) -> bool,
        fail: impl Fn(u32) -> bool,
    ) -> Vec<(u32, i64)> {
        let start = Instant::now();
        let mut c = AutoCompactor::new(Policy::Periodic(period), start);
        let mut now = start;
        let mut rev = 1;
        let mut out = Vec::new();
        for turn in 1..=turns {
            c.sample(rev);
            now += c.interval();
            rev += per_turn;
            if let Some(at) = c.due(now, rev, leader(turn)) {
                let ok = !fail(turn);
                if ok {
                    out.push((turn, at));
                }
                c.compacted(at, now, ok);
            }
        }
        out
    }

    // Goal: a 10-minute window: samples every minute, the first compaction after a whole
    // window at the revision of one window ago, then one every window.
    #[test]
    fn periodic_window_under_an_hour() {
        let got = periodic_turns(Duration::from_secs(600), 35, 10, |_| true, |_| false);
        // Turn t samples revision 1 + 10 (t - 1) before its wait; at turn 10 the oldest
        // of the 11 samples kept is turn 1's.
        assert_eq!(got, [(10, 1), (20, 91), (30, 191)]);
    }

    // Goal: a 24-hour window compacts every hour, each time at the revision of 24 hours
    // before, after a first wait of 24 hours.
    #[test]
    fn periodic_window_over_an_hour() {
        let got = periodic_turns(HOUR * 24, 24 * 10 + 25, 1, |_| true, |_| false);
        // 6-minute turns; the first compaction at turn 240 (24 h), then every 10 turns.
        assert_eq!(got.first(), Some(&(240, 1)));
        assert_eq!(got.get(1), Some(&(250, 10)));
        assert_eq!(got.get(2), Some(&(260, 20)));
        assert_eq!(got.len(), 3);
    }

    // Goal: a failed compaction is retried at the next turn; a follower never compacts
    // but keeps sampling, so a new leader compacts at once at the right revision.
    #[test]
    fn periodic_retries_and_followers() {
        let got = periodic_turns(Duration::from_secs(600), 12, 10, |_| true, |t| t == 10);
        assert_eq!(got, [(11, 1)]);
        let got = periodic_turns(Duration::from_secs(600), 25, 10, |t| t >= 15, |_| false);
        assert_eq!(got, [(15, 41), (25, 141)]);
    }

    // Goal: revision mode: every 5 minutes the current revision minus the count, never
    // at a revision that is not positive, never twice at the same one.
    #[test]
    fn revision_mode() {
        let start = Instant::now();
        let mut c = AutoCompactor::new(Policy::Revision(100), start);
        assert_eq!(c.interval(), Duration::from_secs(300));
        let now = start + c.interval();
        assert_eq!(c.due(now, 50, true), None);
        assert_eq!(c.due(now, 100, true), None);
        assert_eq!(c.due(now, 150, false), None);
        assert_eq!(c.due(now, 150, true), Some(50));
        c.compacted(50, now, false);
        assert_eq!(c.due(now, 150, true), Some(50), "a failure is retried");
        c.compacted(50, now, true);
        assert_eq!(c.due(now, 150, true), None, "not twice at one revision");
        assert_eq!(c.due(now, 151, true), Some(51));
    }
}
