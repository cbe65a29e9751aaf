//! Recording watch clients for fault runs: each records every response of every session
//! in the shape [`crate::watch_checker`] checks, and resumes a broken session the way a
//! careful client does (from the last delivered revision + 1).
//!
//! A watcher runs until told to finish *and* it has seen revision `target` (through an
//! event or a progress response; it asks for progress every [`PROGRESS_EVERY`]), so the
//! checker can hold its sessions against the whole history up to `target`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, WatchFilterType, WatchOptions, WatchResponse,
};

use crate::watch_checker::{Event, EventKind, Kv, Response, Session, Watcher};

/// How often a session asks for a progress response.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// What to watch, and how.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub name: String,
    pub key: Vec<u8>,
    /// etcd's conventions: empty = the key alone, `"\0"` = from the key on.
    pub range_end: Vec<u8>,
    /// First revision of the first session (0 = the next one).
    pub start_revision: i64,
    pub prev_kv: bool,
    pub filter_put: bool,
    pub filter_delete: bool,
    pub progress_notify: bool,
    /// The user and password to log in with (auth on), or none.
    pub user: Option<(String, String)>,
}

/// When to stop: once `finish` is set and the watcher has seen `target` (set `target`
/// before `finish`).
#[derive(Clone, Debug, Default)]
pub struct Finish {
    pub finish: Arc<AtomicBool>,
    pub target: Arc<AtomicI64>,
}

impl Finish {
    pub fn new() -> Finish {
        Finish::default()
    }

    /// Watchers stop once they have seen `revision`.
    pub fn at(&self, revision: i64) {
        self.target.store(revision, Ordering::Release);
        self.finish.store(true, Ordering::Release);
    }

    fn reached(&self, seen: i64) -> bool {
        self.finish.load(Ordering::Acquire) && seen >= self.target.load(Ordering::Acquire)
    }
}

fn kv_of(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

/// The checker's view of one response.
pub fn response_of(r: &WatchResponse) -> Response {
    let header_revision = r.header().map_or(0, |h| h.revision());
    if r.created() {
        return Response::Created { header_revision };
    }
    if r.canceled() {
        return Response::Canceled {
            compact_revision: r.compact_revision(),
            reason: r.cancel_reason().to_string(),
        };
    }
    if r.events().is_empty() {
        return Response::Progress { header_revision };
    }
    let events = r
        .events()
        .iter()
        .map(|e| Event {
            kind: match e.event_type() {
                EventType::Put => EventKind::Put,
                EventType::Delete => EventKind::Delete,
            },
            kv: e.kv().map(kv_of).unwrap_or_default(),
            prev_kv: e.prev_kv().map(kv_of),
        })
        .collect();
    Response::Events {
        header_revision,
        events,
        fragment: false,
    }
}

/// Where the next session starts, after `sessions` (as the checker expects).
fn resume_point(start: i64, sessions: &[Session]) -> i64 {
    let mut next = start;
    for s in sessions {
        for r in &s.responses {
            match r {
                Response::Events { events, .. } => {
                    if let Some(last) = events.last() {
                        next = next.max(last.kv.mod_revision + 1);
                    }
                }
                Response::Progress { header_revision } => {
                    next = next.max(header_revision + 1);
                }
                _ => {}
            }
        }
    }
    next
}

/// The highest revision a session has seen.
fn seen(responses: &[Response]) -> i64 {
    responses
        .iter()
        .map(|r| match r {
            Response::Events { events, .. } => events.last().map_or(0, |e| e.kv.mod_revision),
            Response::Progress { header_revision } => *header_revision,
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// Watches through `url` until `finish` says so, reconnecting after every failure, and
/// returns everything it received. Gives up (returning what it has) after `limit`.
pub async fn record(spec: WatchSpec, url: String, finish: Finish, limit: Duration) -> Watcher {
    let deadline = tokio::time::Instant::now() + limit;
    let mut sessions: Vec<Session> = Vec::new();
    let mut seen_max = 0;
    loop {
        if finish.reached(seen_max) || tokio::time::Instant::now() >= deadline {
            break;
        }
        let start = if sessions.is_empty() {
            spec.start_revision
        } else {
            resume_point(spec.start_revision, &sessions)
        };
        let mut session = Session {
            start_revision: start,
            responses: Vec::new(),
        };
        let ended = tokio::time::timeout_at(
            deadline,
            run_session(&spec, &url, &finish, &mut session, &mut seen_max),
        )
        .await;
        let opened = !session.responses.is_empty();
        let canceled = session
            .responses
            .iter()
            .any(|r| matches!(r, Response::Canceled { .. }));
        if opened {
            sessions.push(session);
        }
        if canceled || ended.is_err() {
            break;
        }
        if !matches!(ended, Ok(true)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Watcher {
        name: spec.name,
        key: spec.key,
        range_end: spec.range_end,
        prev_kv: spec.prev_kv,
        filter_put: spec.filter_put,
        filter_delete: spec.filter_delete,
        sessions,
    }
}

/// One session; returns true when it ended because the watcher is done.
async fn run_session(
    spec: &WatchSpec,
    url: &str,
    finish: &Finish,
    session: &mut Session,
    seen_max: &mut i64,
) -> bool {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_keep_alive(Duration::from_millis(500), Duration::from_millis(1500));
    if let Some((user, password)) = &spec.user {
        options = options.with_user(user, password);
    }
    let Ok(mut client) = Client::connect([url], Some(options)).await else {
        return false;
    };
    let mut opts = WatchOptions::new().with_start_revision(session.start_revision);
    if !spec.range_end.is_empty() {
        opts = opts.with_range(spec.range_end.clone());
    }
    if spec.prev_kv {
        opts = opts.with_prev_key();
    }
    if spec.progress_notify {
        opts = opts.with_progress_notify();
    }
    let mut filters = Vec::new();
    if spec.filter_put {
        filters.push(WatchFilterType::NoPut);
    }
    if spec.filter_delete {
        filters.push(WatchFilterType::NoDelete);
    }
    if !filters.is_empty() {
        opts = opts.with_filters(filters);
    }
    let Ok(mut stream) = client.watch(spec.key.clone(), Some(opts)).await else {
        return false;
    };
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(r)) => {
                    let resp = response_of(&r);
                    let canceled = matches!(resp, Response::Canceled { .. });
                    session.responses.push(resp);
                    *seen_max = (*seen_max).max(seen(&session.responses));
                    if canceled {
                        return false;
                    }
                }
                _ => return false,
            },
            _ = tick.tick() => {
                if finish.reached(*seen_max) {
                    return true;
                }
                if stream.request_progress().await.is_err() {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_at(revs: &[i64]) -> Response {
        Response::Events {
            header_revision: *revs.last().unwrap(),
            events: revs
                .iter()
                .map(|&r| Event {
                    kind: EventKind::Put,
                    kv: Kv {
                        key: b"k".to_vec(),
                        mod_revision: r,
                        ..Kv::default()
                    },
                    prev_kv: None,
                })
                .collect(),
            fragment: false,
        }
    }

    // Goal: the resume point is the last delivered revision + 1, or a later progress + 1,
    // or the start when nothing was delivered.
    #[test]
    fn resume_point_follows_deliveries_and_progress() {
        let s = |responses| Session {
            start_revision: 3,
            responses,
        };
        assert_eq!(resume_point(3, &[]), 3);
        assert_eq!(
            resume_point(3, &[s(vec![Response::Created { header_revision: 9 }])]),
            3
        );
        assert_eq!(resume_point(3, &[s(vec![events_at(&[4, 5])])]), 6);
        assert_eq!(
            resume_point(
                3,
                &[s(vec![
                    events_at(&[4]),
                    Response::Progress { header_revision: 8 }
                ])]
            ),
            9
        );
        assert_eq!(
            resume_point(3, &[s(vec![events_at(&[4])]), s(vec![events_at(&[5, 6])])]),
            7
        );
    }
}
