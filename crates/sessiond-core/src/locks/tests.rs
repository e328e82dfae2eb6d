use super::*;
use crate::LockError;

fn sid(s: &str) -> SessionId {
    SessionId::parse(s.as_bytes()).unwrap()
}

fn req(session: &str, scope: Scope, owner: OwnerId) -> LockRequest {
    LockRequest {
        session: sid(session),
        scope,
        owner,
        lease_ms: None,
        reqid: None,
        wait: true,
    }
}

fn key(k: &str) -> Scope {
    Scope::Key(Bytes::from(k.to_owned()))
}

fn granted(a: Acquired) -> Grant {
    match a {
        Acquired::Granted(g) => g,
        Acquired::Queued(w) => panic!("queued as {w}, expected a grant"),
    }
}

fn queued(a: Acquired) -> WaiterId {
    match a {
        Acquired::Queued(w) => w,
        Acquired::Granted(g) => panic!("granted {g:?}, expected to queue"),
    }
}

#[test]
fn waiters_are_served_in_fifo_order_by_the_release() {
    let mut t = LockTable::new(1, 60_000);
    let g1 = granted(t.acquire(0, req("s", Scope::Session, 1)).unwrap());
    let w2 = queued(t.acquire(1, req("s", Scope::Session, 2)).unwrap());
    let w3 = queued(t.acquire(2, req("s", Scope::Session, 3)).unwrap());
    let h = t.release(5, g1.token, Some(1)).unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].waiter, w2);
    assert_eq!(h[0].grant.owner, 2);
    let h = t.release(6, h[0].grant.token, Some(2)).unwrap();
    assert_eq!(h[0].waiter, w3);
}

#[test]
fn locks_are_not_reentrant_waiting_for_yourself_is_a_deadlock() {
    let mut t = LockTable::new(1, 60_000);
    granted(t.acquire(0, req("s", Scope::Session, 1)).unwrap());
    // The same lock again, and a key lock under one's own session lock.
    for scope in [Scope::Session, key("a")] {
        let err = t.acquire(1, req("s", scope.clone(), 1)).unwrap_err();
        assert!(matches!(err, LockError::Deadlock(_)), "{err:?}");
        let try_once = LockRequest {
            wait: false,
            ..req("s", scope, 1)
        };
        let err = t.acquire(1, try_once).unwrap_err();
        assert!(matches!(err, LockError::Timeout(0)), "{err:?}");
    }
    // Nothing was queued by the refusals.
    assert_eq!(t.counts(), (1, 0));
}

#[test]
fn every_ended_lock_reports_how_long_it_was_held() {
    let mut t = LockTable::new(1, 1_000);
    let g1 = granted(t.acquire(100, req("s", Scope::Session, 1)).unwrap());
    queued(t.acquire(120, req("s", Scope::Session, 2)).unwrap());
    // Released at 350: held 250 ms; the waiter gets it at 350.
    let h = t.release(350, g1.token, Some(1)).unwrap();
    assert_eq!(t.take_ended_holds(), vec![250]);
    assert!(t.take_ended_holds().is_empty(), "drained");
    // The second holder runs into the 1 s maximum hold.
    assert_eq!(h[0].grant.granted_at, 350);
    t.expire(1_350);
    // A lock on another session ends when its connection closes.
    granted(t.acquire(2_000, req("t", key("k"), 3)).unwrap());
    t.release_owner(2_040, 3);
    assert_eq!(t.take_ended_holds(), vec![1_000, 40]);
}

#[test]
fn key_locks_on_different_keys_do_not_wait_but_a_session_lock_excludes_them() {
    let mut t = LockTable::new(1, 60_000);
    let a = granted(t.acquire(0, req("s", key("a"), 1)).unwrap());
    let b = granted(t.acquire(0, req("s", key("b"), 2)).unwrap());
    let ws = queued(t.acquire(0, req("s", Scope::Session, 3)).unwrap());
    // A new key lock queues behind the waiting session lock (no starvation).
    let wc = queued(t.acquire(0, req("s", key("c"), 4)).unwrap());
    assert!(t.release(1, a.token, Some(1)).unwrap().is_empty());
    let h = t.release(2, b.token, Some(2)).unwrap();
    assert_eq!(h.iter().map(|h| h.waiter).collect::<Vec<_>>(), vec![ws]);
    let h = t.release(3, h[0].grant.token, Some(3)).unwrap();
    assert_eq!(h.iter().map(|h| h.waiter).collect::<Vec<_>>(), vec![wc]);
}

#[test]
fn try_once_fails_at_once_when_held() {
    let mut t = LockTable::new(1, 60_000);
    granted(t.acquire(0, req("s", Scope::Session, 1)).unwrap());
    let mut r = req("s", Scope::Session, 2);
    r.wait = false;
    assert_eq!(t.acquire(0, r), Err(LockError::Timeout(0)));
}

#[test]
fn tokens_strictly_increase_and_stale_tokens_are_fenced() {
    let mut t = LockTable::new(7, 60_000);
    let g1 = granted(t.acquire(0, req("s", key("k"), 1)).unwrap());
    assert_eq!(g1.token >> 32, 7);
    let k = Bytes::from("k");
    assert!(t.check_fence(0, &sid("s"), g1.token, &[&k]).is_ok());
    t.release(1, g1.token, Some(1)).unwrap();
    let g2 = granted(t.acquire(2, req("s", key("k"), 2)).unwrap());
    assert!(g2.token > g1.token);
    assert!(matches!(
        t.check_fence(0, &sid("s"), g1.token, &[&k]),
        Err(LockError::Fenced { .. })
    ));
    let other = Bytes::from("other");
    assert!(matches!(
        t.check_fence(0, &sid("s"), g2.token, &[&other]),
        Err(LockError::OutsideLock { .. })
    ));
    assert_eq!(t.stats().fenced, 2, "both refusals are counted");
    // A later epoch (the next start) issues higher tokens than any before.
    let mut restarted = LockTable::new(8, 60_000);
    let g3 = granted(restarted.acquire(0, req("s", key("k"), 1)).unwrap());
    assert!(g3.token > g2.token);
}

#[test]
fn a_lease_runs_out_and_passes_the_lock_on() {
    let mut t = LockTable::new(1, 60_000);
    let mut r = req("s", Scope::Session, 1);
    r.lease_ms = Some(100);
    let g1 = granted(t.acquire(0, r).unwrap());
    let w2 = queued(t.acquire(10, req("s", Scope::Session, 2)).unwrap());
    assert!(t.expire(99).is_empty());
    assert!(t.check_fence(99, &sid("s"), g1.token, &[]).is_ok());
    assert!(t.check_fence(100, &sid("s"), g1.token, &[]).is_err());
    let h = t.expire(100);
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].waiter, w2);
    assert!(t.check_fence(100, &sid("s"), g1.token, &[]).is_err());
    assert_eq!(t.stats().expired, 1);
}

#[test]
fn renew_extends_the_lease_but_not_past_the_maximum_hold() {
    let mut t = LockTable::new(1, 1_000);
    let mut r = req("s", Scope::Session, 1);
    r.lease_ms = Some(100);
    let g = granted(t.acquire(0, r).unwrap());
    t.renew(90, &sid("s"), &Scope::Session, g.token, 1, 100)
        .unwrap();
    assert!(t.expire(150).is_empty());
    t.renew(180, &sid("s"), &Scope::Session, g.token, 1, 5_000)
        .unwrap();
    assert_eq!(t.next_deadline(), Some(1_000));
    assert!(t.expire(999).is_empty());
    t.expire(1_000);
    assert!(matches!(
        t.renew(1_001, &sid("s"), &Scope::Session, g.token, 1, 100),
        Err(LockError::Fenced { .. })
    ));
}

#[test]
fn maximum_hold_applies_without_a_lease() {
    let mut t = LockTable::new(1, 500);
    let g = granted(t.acquire(0, req("s", Scope::Session, 1)).unwrap());
    assert!(t.expire(499).is_empty());
    t.expire(500);
    assert!(t.grant(g.token).is_none());
}

#[test]
fn a_two_party_cycle_is_a_deadlock() {
    let mut t = LockTable::new(1, 60_000);
    granted(t.acquire(0, req("s", key("a"), 1)).unwrap());
    granted(t.acquire(0, req("s", key("b"), 2)).unwrap());
    queued(t.acquire(0, req("s", key("b"), 1)).unwrap());
    assert!(matches!(
        t.acquire(0, req("s", key("a"), 2)),
        Err(LockError::Deadlock(_))
    ));
    assert_eq!(t.stats().deadlocks, 1);
}

#[test]
fn a_three_party_cycle_across_sessions_is_a_deadlock() {
    let mut t = LockTable::new(1, 60_000);
    granted(t.acquire(0, req("x", Scope::Session, 1)).unwrap());
    granted(t.acquire(0, req("y", Scope::Session, 2)).unwrap());
    granted(t.acquire(0, req("z", Scope::Session, 3)).unwrap());
    queued(t.acquire(0, req("y", Scope::Session, 1)).unwrap());
    queued(t.acquire(0, req("z", Scope::Session, 2)).unwrap());
    assert!(matches!(
        t.acquire(0, req("x", Scope::Session, 3)),
        Err(LockError::Deadlock(_))
    ));
    // A waiter that closes no cycle still queues.
    queued(t.acquire(0, req("x", Scope::Session, 4)).unwrap());
}

#[test]
fn a_retried_acquire_with_the_same_reqid_gets_the_same_grant() {
    let mut t = LockTable::new(1, 60_000);
    let mut r = req("s", Scope::Session, 1);
    r.reqid = Some("r-1".into());
    let g1 = granted(t.acquire(0, r.clone()).unwrap());
    // The retry comes from a new connection (owner 9).
    r.owner = 9;
    let g2 = granted(t.acquire(5, r).unwrap());
    assert_eq!(g1.token, g2.token);
    assert_eq!(t.grant(g1.token).unwrap().owner, 9);
    assert_eq!(t.counts(), (1, 0));
}

#[test]
fn closing_a_connection_releases_its_locks_and_cancels_its_wait() {
    let mut t = LockTable::new(1, 60_000);
    granted(t.acquire(0, req("a", Scope::Session, 1)).unwrap());
    granted(t.acquire(0, req("b", Scope::Session, 2)).unwrap());
    queued(t.acquire(0, req("b", Scope::Session, 1)).unwrap());
    let w3 = queued(t.acquire(0, req("a", Scope::Session, 3)).unwrap());
    let h = t.release_owner(1, 1);
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].waiter, w3);
    assert_eq!(t.counts(), (2, 0));
}

#[test]
fn cancelling_a_wait_lets_compatible_waiters_behind_it_go() {
    let mut t = LockTable::new(1, 60_000);
    granted(t.acquire(0, req("s", key("a"), 1)).unwrap());
    let ws = queued(t.acquire(0, req("s", Scope::Session, 2)).unwrap());
    let wb = queued(t.acquire(0, req("s", key("b"), 3)).unwrap());
    let h = t.cancel_wait(1, ws);
    assert_eq!(h.iter().map(|h| h.waiter).collect::<Vec<_>>(), vec![wb]);
}

#[test]
fn break_fences_the_holder() {
    let mut t = LockTable::new(1, 60_000);
    let g = granted(t.acquire(0, req("s", Scope::Session, 1)).unwrap());
    let (was, _) = t.break_lock(1, &sid("s"), &Scope::Session);
    assert!(was);
    assert!(t.check_fence(0, &sid("s"), g.token, &[]).is_err());
    assert_eq!(t.release(2, g.token, Some(1)), Err(LockError::NotHeld));
}
