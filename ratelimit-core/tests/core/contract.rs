//! The store contract from outside the crate: a third party implements `Store` with the
//! public pieces alone, and the limiter calls a store exactly once per check, also when the
//! store's future is pending at first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ratelimit_core::store::{CheckRequest, LimitState, Mode, StoreFuture};
use ratelimit_core::{
    Clock, Decision, FakeClock, Limiter, Limits, MemoryStore, Rate, Store, StoreError,
};

/// What names a state: prefix, scope, key, and the periods of the limits.
type Name = (String, String, Vec<u8>, u64);

/// A store of its own: one `LimitState` per name behind one lock, peeked all then charged
/// all, so a request passes or fails as one.
#[derive(Default)]
struct OwnStore {
    clock: FakeClock,
    states: Mutex<HashMap<Name, LimitState>>,
}

impl Store for OwnStore {
    fn check<'a>(&'a self, request: CheckRequest<'a>) -> StoreFuture<'a> {
        let now = self.clock.now();
        let mut states = self.states.lock().unwrap();
        let mut state = |i: usize| {
            let charge = &request.charges[i];
            let name = (
                request.prefix.to_owned(),
                charge.scope.to_owned(),
                request.key.to_vec(),
                charge.limits.shape(),
            );
            states
                .entry(name)
                .or_insert_with(|| LimitState::new(charge))
                .clone()
        };
        let judge = |mode: Mode, state: &mut dyn FnMut(usize) -> LimitState| {
            let mut binding: Option<Decision> = None;
            let mut after = Vec::new();
            for (i, charge) in request.charges.iter().enumerate() {
                let mut s = state(i);
                let d = s.check(charge, now, mode).at_charge(i);
                after.push(s);
                if binding.is_none_or(|b| d.binds_harder_than(&b)) {
                    binding = Some(d);
                }
            }
            (binding.expect("one charge at least"), after)
        };
        let (peeked, _) = judge(Mode::Peek, &mut state);
        if request.mode == Mode::Peek || (request.mode == Mode::Charge && !peeked.is_allowed()) {
            return StoreFuture::ready(Ok(peeked));
        }
        let (decision, after) = judge(request.mode, &mut state);
        for (charge, s) in request.charges.iter().zip(after) {
            let name = (
                request.prefix.to_owned(),
                charge.scope.to_owned(),
                request.key.to_vec(),
                charge.limits.shape(),
            );
            states.insert(name, s);
        }
        StoreFuture::ready(Ok(decision))
    }
}

#[tokio::test]
async fn a_third_party_store_implements_the_contract_with_public_pieces() {
    let store = std::sync::Arc::new(OwnStore::default());
    let limiter = Limiter::builder().shared_store(store.clone()).build();
    let limits = Limits::parse("2/second").unwrap();
    assert!(limiter.check(&limits, "a", 1).await.unwrap().is_allowed());
    assert!(limiter.check(&limits, "a", 1).await.unwrap().is_allowed());
    let refused = limiter.check(&limits, "a", 1).await.unwrap();
    assert!(!refused.is_allowed());
    assert_eq!(refused.retry_after(), Some(Duration::from_millis(500)));
    store.clock.advance(Duration::from_millis(500));
    assert!(limiter.check(&limits, "a", 1).await.unwrap().is_allowed());

    // Several charges under one key: one refusing charge means none is charged.
    let tight = Limits::parse("1/minute").unwrap();
    let loose = Limits::parse("5/minute").unwrap();
    let charges = [
        limiter.charge("loose", &loose, 1),
        limiter.charge("tight", &tight, 1),
    ];
    let first = limiter.check_charges(b"k", &charges, Mode::Charge).await;
    assert!(first.unwrap().is_allowed());
    let refused = limiter
        .check_charges(b"k", &charges, Mode::Charge)
        .await
        .unwrap();
    assert!(!refused.is_allowed());
    assert_eq!(refused.charge_index(), 1, "the tight charge refused");
    let loose_left = limiter.peek(&loose, "k", 1).await.unwrap();
    assert_eq!(
        loose_left.remaining(),
        4,
        "unscoped: untouched (a peek at cost 1 says 4)"
    );
    let loose_scoped = limiter
        .check_charges(b"k", &charges[..1], Mode::Peek)
        .await
        .unwrap();
    assert_eq!(
        loose_scoped.remaining(),
        3,
        "charged once (4 left), peeked at cost 1"
    );

    // Reserve and settle: the same store, with `LimitState` doing the refund and the debit.
    let tokens = std::sync::Arc::new(Limits::parse("100/minute").unwrap());
    let reservation = limiter.reserve("t", tokens.clone(), "k", 64).await;
    let settled = reservation.unwrap().unwrap().settle(10).await.unwrap();
    assert_eq!(settled.remaining(), 90);
    let reservation = limiter.reserve("t", tokens.clone(), "k", 90).await;
    let indebted = reservation.unwrap().unwrap().settle(120).await.unwrap();
    assert!(!indebted.is_allowed(), "30 over the budget: in debt");
    let next = limiter.check_scoped("t", &tokens, "k", 1).await.unwrap();
    // 30 owed beyond the budget (18 s at 600 ms a unit), then this request's own 600 ms.
    assert_eq!(next.retry_after(), Some(Duration::from_millis(18_600)));
}

#[test]
fn decisions_are_built_by_any_store() {
    let rate: Rate = "10/minute".parse().unwrap();
    let allowed = Decision::allowed(rate, 7, Duration::from_secs(18));
    assert!(allowed.is_allowed());
    assert_eq!((allowed.remaining(), allowed.limit()), (7, 10));
    let refused = Decision::refused(
        rate,
        0,
        Duration::from_secs(60),
        Some(Duration::from_secs(6)),
    )
    .at_rate(1)
    .at_charge(2);
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(6)));
    assert_eq!((refused.rate_index(), refused.charge_index()), (1, 2));
    assert!(refused.binds_harder_than(&allowed));
    let never = Decision::refused(rate, 3, Duration::ZERO, None);
    assert!(never.exceeds_capacity());
    assert!(
        never.binds_harder_than(&refused),
        "never passing binds hardest"
    );
}

/// Delegates to a memory store and counts its calls; with `pending`, its future waits one
/// poll before answering, as a networked store's does.
struct Counting {
    inner: MemoryStore<FakeClock>,
    calls: AtomicUsize,
    pending: bool,
}

impl Store for Counting {
    fn check<'a>(&'a self, request: CheckRequest<'a>) -> StoreFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.pending {
            StoreFuture::new(async move {
                tokio::task::yield_now().await;
                Ok::<_, StoreError>(self.inner.check_now(&request))
            })
        } else {
            StoreFuture::ready(Ok(self.inner.check_now(&request)))
        }
    }
}

#[tokio::test]
async fn a_check_is_one_store_call_ready_or_pending() {
    for pending in [false, true] {
        let store = std::sync::Arc::new(Counting {
            inner: MemoryStore::with_clock(FakeClock::new()),
            calls: AtomicUsize::new(0),
            pending,
        });
        let limiter = Limiter::builder().shared_store(store.clone()).build();
        let limits = Limits::parse("10/minute; 100/hour").unwrap();
        for n in 1..=3 {
            assert!(limiter.check(&limits, "k", 1).await.unwrap().is_allowed());
            assert_eq!(store.calls.load(Ordering::SeqCst), n, "pending: {pending}");
        }
        // `check_now` answers only for stores that never wait, and never sends twice.
        let before = store.calls.load(Ordering::SeqCst);
        assert!(limiter.check_now(&limits, "k", 1).is_none());
        assert_eq!(store.calls.load(Ordering::SeqCst), before);
    }
}

/// Counts what the observer is shown.
#[derive(Default)]
struct Seen(Mutex<Vec<(String, Vec<u8>, bool)>>);

impl ratelimit_core::observe::Observer for Seen {
    fn observe(&self, seen: &ratelimit_core::observe::Observation<'_>) {
        let allowed = seen.outcome == ratelimit_core::observe::Outcome::Allowed;
        let entry = (seen.route.to_owned(), seen.key.to_vec(), allowed);
        self.0.lock().unwrap().push(entry);
    }
}

/// `check` and `peek` are futures like any other, in memory as in a store of one's own:
/// nothing is charged before the first poll (a future dropped unpolled charges nothing), and
/// the observer is shown the checks, with their scope, not the peeks.
#[tokio::test]
async fn a_check_does_nothing_until_polled_and_shows_checks_to_the_observer() {
    let own = std::sync::Arc::new(OwnStore::default());
    let limits = Limits::parse("2/minute").unwrap();
    for store in ["memory", "own"] {
        let seen = std::sync::Arc::new(Seen::default());
        let builder = Limiter::builder().observer(seen.clone());
        let limiter = match store {
            "memory" => builder.build(),
            _ => builder.shared_store(own.clone()).build(),
        };
        drop(limiter.check(&limits, "k", 1));
        drop(limiter.check_scoped("s", &limits, "k", 2));
        let peeked = limiter.peek(&limits, "k", 2).await.unwrap();
        assert!(peeked.is_allowed(), "{store}: nothing was charged yet");
        assert!(limiter.check(&limits, "k", 2).await.unwrap().is_allowed());
        assert!(!limiter.check(&limits, "k", 1).await.unwrap().is_allowed());
        let scoped = limiter.check_scoped("s", &limits, "k", 2).await.unwrap();
        assert!(
            scoped.is_allowed(),
            "{store}: another scope, another budget"
        );
        let seen = seen.0.lock().unwrap().clone();
        let expected = [
            (String::new(), b"k".to_vec(), true),
            (String::new(), b"k".to_vec(), false),
            ("s".to_owned(), b"k".to_vec(), true),
        ];
        assert_eq!(seen, expected, "{store}");
    }
}
