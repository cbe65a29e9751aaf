//! The lessor's rules with simulated time: no clock is read and nothing sleeps; every
//! test moves `now` by hand.

use std::time::Duration;

use retcd_lease::{Expiry, LeaseError, LeaseId, Lessor, MAX_LEASE_TTL, Record, Time};

fn at(secs: u64) -> Time {
    Time::ZERO + Duration::from_secs(secs)
}

fn at_ms(ms: u64) -> Time {
    Time::ZERO + Duration::from_millis(ms)
}

fn ids(expired: &[Expiry]) -> Vec<i64> {
    expired.iter().map(|e| e.id.0).collect()
}

// Goal: a lease expires exactly TTL after its grant, not a moment before; it is taken
// once, and only by the leader's call.
#[test]
fn a_lease_expires_ttl_after_its_grant() {
    let mut l = Lessor::new();
    l.grant(LeaseId(1), 10, 0, 5, at(100)).unwrap();
    assert!(l.take_expired(at_ms(109_999), 10).is_empty());
    let e = l.take_expired(at(110), 10);
    assert_eq!(
        e,
        [Expiry {
            id: LeaseId(1),
            renewed_index: 5
        }]
    );
    assert!(
        l.take_expired(at(200), 10).is_empty(),
        "pending: not taken twice"
    );
    assert_eq!(
        l.get(LeaseId(1)).unwrap().remaining(at(105)),
        Duration::from_secs(5)
    );
    l.check_invariants();
}

// Goal: a renewal restarts the TTL from the time it is applied and voids an expiry
// proposed before it; a voided lease can expire again later.
#[test]
fn renewal_restarts_the_ttl_and_voids_an_earlier_expiry() {
    let mut l = Lessor::new();
    l.grant(LeaseId(1), 10, 0, 5, at(0)).unwrap();
    assert_eq!(l.renew(LeaseId(1), 1_000, 8, at(9)), Some(10));
    assert!(
        l.take_expired(at(18), 10).is_empty(),
        "renewed at 9: due at 19"
    );
    let proposed = l.take_expired(at(19), 10);
    assert_eq!(proposed[0].renewed_index, 8);
    // A keep-alive wins the race: applied before the expiry entry.
    l.renew(LeaseId(1), 2_000, 12, at(20));
    assert!(!l.expiry_applies(&proposed[0]));
    l.expiry_void(LeaseId(1));
    assert!(l.take_expired(at(29), 10).is_empty());
    let again = l.take_expired(at(30), 10);
    assert_eq!(again[0].renewed_index, 12);
    assert!(l.expiry_applies(&again[0]));
    let gone = l.revoke(LeaseId(1)).unwrap();
    assert_eq!(gone.record().wall_ms, 2_000);
    assert_eq!(l.renew(LeaseId(1), 0, 13, at(31)), None, "unknown lease");
    l.check_invariants();
}

// Goal: 10,000 leases expiring at the same moment are taken in bounded rounds, earliest
// deadline first and by id within a deadline, each exactly once, and a round taken while
// others are pending skips them.
#[test]
fn mass_expiry_is_bounded_ordered_and_complete() {
    let mut l = Lessor::new();
    for id in (1..=10_000).rev() {
        l.grant(LeaseId(id), 5, 0, id as u64, at(0)).unwrap();
    }
    // One lease with an earlier deadline goes first, whatever its id.
    l.grant(LeaseId(20_000), 3, 0, 1, at(0)).unwrap();
    let mut seen = Vec::new();
    let first = l.take_expired(at(10), 100);
    assert_eq!(first.len(), 100);
    assert_eq!(first[0].id, LeaseId(20_000));
    assert_eq!(ids(&first[1..4]), [1, 2, 3]);
    seen.extend(ids(&first));
    loop {
        let round = l.take_expired(at(10), 100);
        if round.is_empty() {
            break;
        }
        assert!(round.len() <= 100);
        seen.extend(ids(&round));
    }
    assert_eq!(seen.len(), 10_001);
    let mut unique = seen.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 10_001, "a lease was taken twice");
    // Apply revokes them all; nothing is left to expire.
    for id in seen {
        assert!(l.revoke(LeaseId(id)).is_some());
    }
    assert!(l.is_empty());
    l.check_invariants();
}

// Goal: a new leader bounds each deadline by the wall-clock estimate plus the grace, so a
// lease whose renewals stopped long ago (a restart replayed them as fresh) ends within
// the grace; a fresh lease keeps its own deadline; expiries proposed by an old leader
// are forgotten at demotion and promotion alike.
#[test]
fn leader_change_bounds_deadlines_and_forgets_pending_expiries() {
    let grace = Duration::from_secs(1);
    let mut l = Lessor::new();
    // Renewed (wall clock) at 1 s; replayed now at local time 500 s with 60 s TTL.
    l.grant(LeaseId(9), 60, 1_000, 1, at(500)).unwrap();
    // A fresh one: wall clock says it was renewed just now.
    l.grant(LeaseId(10), 60, 1_000_000, 2, at(500)).unwrap();
    l.on_promotion(at(500), 1_000_000, grace);
    assert_eq!(l.get(LeaseId(9)).unwrap().deadline(), at(501));
    assert_eq!(l.get(LeaseId(10)).unwrap().deadline(), at(560));
    assert_eq!(ids(&l.take_expired(at(501), 10)), [9]);
    // Demoted before the expiry applied: the next leader (maybe us again) retakes it.
    l.on_demotion();
    assert_eq!(ids(&l.take_expired(at(501), 10)), [9]);
    l.on_promotion(at(502), 1_002_000, grace);
    assert_eq!(ids(&l.take_expired(at(502), 10)), [9]);
    // Wall clocks far apart (the new leader's is behind): deadlines never grow.
    l.on_promotion(at(503), 0, grace);
    assert_eq!(l.get(LeaseId(10)).unwrap().deadline(), at(560));
    l.check_invariants();
}

// Goal: a defragmentation that held everything up gives every lease that time back, and
// only that.
#[test]
fn postponed_deadlines_move_by_the_pause() {
    let mut l = Lessor::new();
    l.grant(LeaseId(1), 10, 5, 3, at(0)).unwrap();
    l.postpone(Duration::from_secs(4));
    assert!(l.take_expired(at(13), 10).is_empty());
    assert_eq!(l.take_expired(at(14), 10).len(), 1);
    l.check_invariants();
}

// Goal: etcd's grant rules: id 0 is "not found", a TTL above the maximum is refused
// before an existing id is, and hostile TTLs neither panic nor wrap.
#[test]
fn grant_refusals_and_hostile_ttls() {
    let mut l = Lessor::new();
    assert_eq!(
        l.grant(LeaseId(0), 5, 0, 1, at(0)),
        Err(LeaseError::NotFound)
    );
    l.grant(LeaseId(1), 5, 0, 1, at(0)).unwrap();
    assert_eq!(l.grant(LeaseId(1), 5, 0, 2, at(0)), Err(LeaseError::Exists));
    assert_eq!(
        l.grant(LeaseId(1), MAX_LEASE_TTL + 1, 0, 2, at(0)),
        Err(LeaseError::TtlTooLarge)
    );
    l.grant(LeaseId(2), MAX_LEASE_TTL, i64::MAX, 3, at(0))
        .unwrap();
    l.grant(LeaseId(-3), i64::MIN, i64::MIN, 4, at(0)).unwrap();
    assert_eq!(
        ids(&l.take_expired(at(0), 10)),
        [-3],
        "a negative TTL is due at once"
    );
    l.on_promotion(Time::MAX, i64::MIN, Duration::MAX);
    l.postpone(Duration::MAX);
    l.check_invariants();
}

// Goal: what must be stored is reported once, in id order, as records or deletions; a
// restored lessor has the same records and gets its keys back by attach.
#[test]
fn changes_persist_and_restore() {
    let mut l = Lessor::new();
    l.grant(LeaseId(2), 20, 5, 4, at(0)).unwrap();
    l.grant(LeaseId(1), 10, 5, 3, at(0)).unwrap();
    l.renew(LeaseId(2), 9, 6, at(1));
    let changes = l.take_changes();
    assert_eq!(
        changes,
        [
            (
                LeaseId(1),
                Some(Record {
                    id: LeaseId(1),
                    ttl: 10,
                    wall_ms: 5,
                    renewed_index: 3
                })
            ),
            (
                LeaseId(2),
                Some(Record {
                    id: LeaseId(2),
                    ttl: 20,
                    wall_ms: 9,
                    renewed_index: 6
                })
            ),
        ]
    );
    assert!(l.take_changes().is_empty());
    l.attach(LeaseId(2), b"a");
    l.attach(LeaseId(2), b"b");
    l.detach(LeaseId(2), b"a");
    l.attach(LeaseId(77), b"orphan");
    l.revoke(LeaseId(1));
    assert_eq!(l.take_changes(), [(LeaseId(1), None)]);

    let records: Vec<Record> = l
        .ids()
        .iter()
        .map(|id| *l.get(*id).unwrap().record())
        .collect();
    let mut back = Lessor::restore(records, at(100));
    back.attach(LeaseId(2), b"b");
    let two = back.get(LeaseId(2)).unwrap();
    assert_eq!(two.record(), l.get(LeaseId(2)).unwrap().record());
    assert_eq!(two.keys().iter().collect::<Vec<_>>(), [&b"b".to_vec()]);
    assert_eq!(two.deadline(), at(120), "a full TTL from the restore");
    assert!(
        back.take_changes().is_empty(),
        "restoring changes nothing stored"
    );
    back.check_invariants();
}

// Goal: the same calls give the same answers, step for step: the lessor has no hidden
// source of order or time (seeded random walk over every operation, two lessors side by
// side, invariants after every step).
#[test]
fn two_lessors_fed_the_same_calls_agree() {
    let mut state = 0x5eed_u64;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let (mut a, mut b) = (Lessor::new(), Lessor::new());
    let mut now = Time::ZERO;
    for step in 0..20_000u64 {
        now = now + Duration::from_millis(next(500));
        let id = LeaseId(next(50) as i64 - 5);
        match next(7) {
            0 | 1 => {
                let ttl = next(20) as i64 - 2;
                assert_eq!(
                    a.grant(id, ttl, 0, step, now),
                    b.grant(id, ttl, 0, step, now)
                );
            }
            2 => assert_eq!(a.renew(id, 1, step, now), b.renew(id, 1, step, now)),
            3 => assert_eq!(a.revoke(id), b.revoke(id)),
            4 => {
                let (ea, eb) = (a.take_expired(now, 3), b.take_expired(now, 3));
                assert_eq!(ea, eb);
                for e in ea {
                    assert_eq!(a.expiry_applies(&e), b.expiry_applies(&e));
                    if next(2) == 0 {
                        a.revoke(e.id);
                        b.revoke(e.id);
                    } else {
                        a.expiry_void(e.id);
                        b.expiry_void(e.id);
                    }
                }
            }
            5 => {
                a.attach(id, &step.to_be_bytes());
                b.attach(id, &step.to_be_bytes());
            }
            _ => assert_eq!(a.take_changes(), b.take_changes()),
        }
        a.check_invariants();
        b.check_invariants();
    }
    assert_eq!(a.ids(), b.ids());
}
