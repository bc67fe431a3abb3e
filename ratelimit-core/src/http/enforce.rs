//! The one place that checks a request and refuses it: every limit that applies to a request
//! (its attributes, the route's default limits, the application's) goes through
//! [`enforce`], which groups them by key (one store call per key), charges all of them or
//! none, builds the refusal, logs it, shows the decision to the observer and keeps the
//! admission for the response headers.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use arrayvec::ArrayVec;

use super::config::HttpConfig;
use super::context;
use super::key::Key;
use super::response::{HeaderStyle, RateLimited, Rejection};
use crate::capacity::Permit;
use crate::decision::Decision;
use crate::limiter::SlotLease;
use crate::limits::Limits;
use crate::observe::{Observation, Outcome};
use crate::store::{Charge, Mode, SlotCheck, StoreError};

/// The most limits one request can meet: eight stacked attributes, the route's default limits
/// and the application's.
pub(crate) const MAX_ENTRIES: usize = 10;

/// One limit that applies to a request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry<'r> {
    pub(crate) key: &'r Key,
    pub(crate) scope: &'r str,
    pub(crate) limits: &'r Limits,
    pub(crate) cost: u64,
    /// The attribute's `error_message`.
    pub(crate) message: Option<&'static str>,
    /// Whether the cost is a reservation (`reserve =`): checked in a store call of its own,
    /// so that its budget's state is known apart from the request limits'.
    pub(crate) reserves: bool,
}

impl Entry<'_> {
    /// Whether `other` goes in the same store call: the same key, and both reserving or not.
    pub(crate) fn checked_with(&self, other: &Entry<'_>) -> bool {
        self.reserves == other.reserves && self.key.as_bytes() == other.key.as_bytes()
    }
}

/// Checks every entry as one: grouped by key, one store call per key (a reservation, `reserve
/// =`, in a call of its own, so that its budget's state is known apart), in order; when a key
/// refuses, the keys already charged are given back (with `charged`, what an earlier stage
/// of the same request charged), so the request is charged by all or none.
///
/// Two keys cannot be judged atomically together by one store call (Redis Cluster may keep
/// them on different nodes), hence charge-then-refund: concurrent requests may see a charge
/// that is about to be given back and be refused for it, never admitted beyond a limit.
pub(crate) async fn enforce(
    config: &HttpConfig,
    route: &str,
    entries: &[Entry<'_>],
    charged: &[Entry<'_>],
) -> Result<Option<Decision>, Rejection> {
    let (admitted, _) = enforce_holding(config, route, entries, charged, None).await?;
    Ok(admitted)
}

/// [`enforce`], taking the concurrency slot `slot` too: in the same store call as the first
/// entry's group (one round trip with Redis) when the slot is of its key, which the caller
/// arranges by putting that group first ([`Entry::checked_with`]); before any rate
/// otherwise ([`take_slots`]). All or nothing either way: no slot, no charge; a refused rate
/// gives the slot back.
pub(crate) async fn enforce_holding(
    config: &HttpConfig,
    route: &str,
    entries: &[Entry<'_>],
    charged: &[Entry<'_>],
    slot: Option<&SlotNeed<'_>>,
) -> Result<(Option<Decision>, Option<SlotLease>), Rejection> {
    // Timed only for an observer (the latency histogram of `Metrics`).
    let started = Started::now(config);
    let mut held = None;
    let slot = match slot {
        Some(need)
            if !entries.first().is_some_and(|first| {
                !first.reserves && first.key.as_bytes() == need.key.as_bytes()
            }) =>
        {
            // Of another key than the first group's: taken apart, first.
            match take_slots(config, route, std::slice::from_ref(need)).await {
                Ok(mut leases) => held = leases.pop(),
                Err(rejection) => {
                    refund(config, charged).await;
                    return Err(rejection);
                }
            }
            None
        }
        slot => slot,
    };
    if let (
        [
            entry @ Entry {
                reserves: false, ..
            },
        ],
        [],
        None,
    ) = (entries, charged, slot)
    {
        // One limit and nothing charged before it: nothing to group or give back.
        let charge = config.limiter.charge(entry.scope, entry.limits, entry.cost);
        let key = entry.key.as_bytes();
        let checked = check(config, key, std::slice::from_ref(&charge), Mode::Charge).await;
        return judged(config, route, entry, checked, started).map(|admitted| (admitted, held));
    }
    let mut admitted: Option<(Decision, usize)> = None;
    let mut reserved: Option<(Decision, usize)> = None;
    for first in 0..entries.len() {
        let key = entries[first].key.as_bytes();
        if entries[..first]
            .iter()
            .any(|e| e.checked_with(&entries[first]))
        {
            continue; // checked with its group
        }
        let (charges, members) = group(config, entries, first);
        let outcome = match slot.filter(|_| first == 0) {
            None => check(config, key, &charges, Mode::Charge).await,
            Some(need) => match check_with_slot(config, key, &charges, need).await {
                Ok(SlotCheck::Admitted(decision, lease)) => {
                    held = Some(lease);
                    Ok(decision)
                }
                Ok(SlotCheck::Refused(decision)) => Ok(decision),
                Ok(SlotCheck::NoSlot) => {
                    refund(config, charged).await;
                    return Err(no_slot(config, route, need, started));
                }
                Err(error) => Err(error),
            },
        };
        let refusal = match outcome {
            Ok(decision) if decision.is_allowed() => {
                let entry = members[decision.charge_index().min(members.len() - 1)];
                if entries[first].reserves {
                    reserved = Some((decision, entry));
                } else if admitted.is_none_or(|(best, _)| decision.binds_harder_than(&best)) {
                    admitted = Some((decision, entry));
                }
                continue;
            }
            Ok(decision) => Ok((
                decision,
                members[decision.charge_index().min(members.len() - 1)],
            )),
            Err(error) => Err(error),
        };
        // Refused (or the store failed): give back everything this request was charged, the
        // groups checked before this one (every entry under a key met earlier) and what an
        // earlier stage charged.
        let earlier: ArrayVec<Entry<'_>, MAX_ENTRIES> = entries
            .iter()
            .filter(|e| entries[..first].iter().any(|f| f.checked_with(e)))
            .copied()
            .collect();
        refund(config, &earlier).await;
        refund(config, charged).await;
        return Err(match refusal {
            Ok((decision, entry)) => refuse(config, route, &entries[entry], decision, started),
            Err(error) => store_failed(config, route, &entries[first], error, started),
        });
    }
    // One observation per request: the reservation's admission is kept for the headers only,
    // unless it is all the request had to pass.
    if let Some((decision, entry)) = reserved {
        context::record_reserved(decision);
        if admitted.is_none() {
            observe_admission(config, route, &entries[entry], &decision, started);
        }
    }
    let admitted =
        admitted.map(|(decision, entry)| admit(config, route, &entries[entry], decision, started));
    Ok((admitted, held))
}

/// [`enforce`] of one limit, nothing charged before it, with a store that answers at once
/// (`None` with one that waits): the common request, checked without a future.
#[inline]
pub(crate) fn enforce_one_now(
    config: &HttpConfig,
    route: &str,
    entry: &Entry<'_>,
) -> Option<Result<(), Rejection>> {
    let started = Started::now(config);
    let charge = config.limiter.charge(entry.scope, entry.limits, entry.cost);
    let key = entry.key.as_bytes();
    let checked =
        config
            .limiter
            .check_charges_now(key, std::slice::from_ref(&charge), Mode::Charge)?;
    // The decision stays where the store put it: observed and recorded by reference.
    Some(match checked {
        Ok(ref decision) if decision.is_allowed() => {
            admitted(config, route, entry, decision, started);
            Ok(())
        }
        Ok(decision) => Err(refuse(config, route, entry, decision, started)),
        Err(error) => Err(store_failed(config, route, entry, error, started)),
    })
}

/// What the store answered for one limit: the admission kept, or the refusal built.
#[inline]
fn judged(
    config: &HttpConfig,
    route: &str,
    entry: &Entry<'_>,
    checked: Result<Decision, StoreError>,
    started: Started,
) -> Result<Option<Decision>, Rejection> {
    match checked {
        Ok(decision) if decision.is_allowed() => {
            Ok(Some(admit(config, route, entry, decision, started)))
        }
        Ok(decision) => Err(refuse(config, route, entry, decision, started)),
        Err(error) => Err(store_failed(config, route, entry, error, started)),
    }
}

/// One store call charging `charges` and taking `need`'s slot, trying again while no slot
/// is free and `need` may still wait.
async fn check_with_slot(
    config: &HttpConfig,
    key: &[u8],
    charges: &[Charge<'_>],
    need: &SlotNeed<'_>,
) -> Result<SlotCheck<SlotLease>, StoreError> {
    waiting_for_slot(
        need.wait,
        || {
            config
                .limiter
                .check_with_slot(key, charges, need.scope, need.limit)
        },
        |checked| matches!(checked, Ok(SlotCheck::NoSlot)),
    )
    .await
}

/// Tries `attempt` until it finds a slot (`none_free` says whether it did not) or `wait`
/// is over; once when there is no `wait`. Between tries a pause that doubles from 1 ms up to
/// [`SLOT_POLL`]: a slot given back by another instance (Redis) is seen within it.
async fn waiting_for_slot<T, F: Future<Output = T>>(
    wait: Option<Duration>,
    mut attempt: impl FnMut() -> F,
    none_free: impl Fn(&T) -> bool,
) -> T {
    let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
    let mut pause = Duration::from_millis(1);
    loop {
        let tried = attempt().await;
        match deadline {
            Some(deadline) if none_free(&tried) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
                pause = (pause * 2).min(SLOT_POLL);
            }
            _ => return tried,
        }
    }
}

/// When a check started, for an observer; nothing read without one.
#[derive(Clone, Copy)]
struct Started(Option<quanta::Instant>);

impl Started {
    #[inline]
    fn now(config: &HttpConfig) -> Started {
        Started(config.limiter.is_observed().then(quanta::Instant::now))
    }

    #[inline]
    fn elapsed(self) -> Duration {
        self.0.map_or(Duration::ZERO, |at| {
            at.elapsed().max(Duration::from_nanos(1))
        })
    }
}

/// A request admitted, bound by `entry`: observed, and kept for the response headers.
#[inline]
fn admit(
    config: &HttpConfig,
    route: &str,
    entry: &Entry<'_>,
    decision: Decision,
    started: Started,
) -> Decision {
    admitted(config, route, entry, &decision, started);
    decision
}

/// [`admit`] by reference.
#[inline]
fn admitted(
    config: &HttpConfig,
    route: &str,
    entry: &Entry<'_>,
    decision: &Decision,
    started: Started,
) {
    observe_admission(config, route, entry, decision, started);
    // Kept for the response headers, if any go out.
    if config.headers != HeaderStyle::None {
        context::record(*decision);
    }
}

#[inline]
fn observe_admission(
    config: &HttpConfig,
    route: &str,
    entry: &Entry<'_>,
    decision: &Decision,
    started: Started,
) {
    if config.limiter.is_observed() {
        config.limiter.observe(
            &Observation::new(route, entry.key.as_bytes(), Outcome::Allowed)
                .with_decision(decision)
                .with_label(entry.limits.label())
                .with_elapsed(started.elapsed()),
        );
    }
}

#[cold]
fn store_failed(
    config: &HttpConfig,
    route: &str,
    entry: &Entry<'_>,
    error: StoreError,
    started: Started,
) -> Rejection {
    tracing::error!(%error, route, "rate limit store failed");
    config.limiter.observe(
        &Observation::new(route, entry.key.as_bytes(), Outcome::StoreFailed)
            .with_label(entry.limits.label())
            .with_elapsed(started.elapsed()),
    );
    Rejection::store_failed()
}

/// Gives back charges made earlier in a request.
pub(crate) async fn refund(config: &HttpConfig, charged: &[Entry<'_>]) {
    for first in 0..charged.len() {
        let key = charged[first].key.as_bytes();
        if charged[..first]
            .iter()
            .any(|e| e.checked_with(&charged[first]))
        {
            continue;
        }
        let (charges, _) = group(config, charged, first);
        let _ = check(config, key, &charges, Mode::Refund).await;
    }
}

type Group<'r> = (
    ArrayVec<Charge<'r>, MAX_ENTRIES>,
    ArrayVec<usize, MAX_ENTRIES>,
);

/// The charges of every entry checked with `entries[first]`, and their positions.
fn group<'r>(config: &HttpConfig, entries: &[Entry<'r>], first: usize) -> Group<'r> {
    let mut charges = ArrayVec::new();
    let mut members = ArrayVec::new();
    for (i, entry) in entries.iter().enumerate().skip(first) {
        if entry.checked_with(&entries[first]) {
            charges.push(config.limiter.charge(entry.scope, entry.limits, entry.cost));
            members.push(i);
        }
    }
    (charges, members)
}

/// Settles the check `make` builds: at once when the store answers at once (an in-memory
/// store: ready at its first poll) and the check does not wait, so that the answer itself is
/// returned and the check's state machine is no part of the caller's future (which axum
/// moves and boxes with the handler's, and which every handler would compile anew); boxed
/// when the store waits, or the check may (`queue =`: for a slot, or in a route's capacity
/// queue).
pub(crate) fn settling<'a, T, F>(
    config: &HttpConfig,
    waits: bool,
    make: impl FnOnce() -> F,
) -> Settling<'a, T>
where
    F: Future<Output = Result<T, Rejection>> + Send + 'a,
{
    if !waits && config.limiter.answers_now() {
        // Cannot be pending; were it, refuse rather than let the request through unchecked.
        return Settling::Ready(Some(
            now_or_never(make()).unwrap_or_else(|| Err(Rejection::store_failed())),
        ));
    }
    Settling::Waiting(Box::pin(make()))
}

/// What [`settling`] answers.
#[doc(hidden)]
pub enum Settling<'a, T> {
    /// Checked at once.
    Ready(Option<Result<T, Rejection>>),
    /// A check that waits (for a networked store, or in a queue).
    Waiting(Pin<Box<dyn Future<Output = Result<T, Rejection>> + Send + 'a>>),
}

impl<T> Settling<'_, T> {
    /// Polls the check: a plain method, so that callers need not pin it.
    pub(crate) fn poll_unpin(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<T, Rejection>> {
        match self {
            Settling::Ready(answer) => Poll::Ready(
                answer
                    .take()
                    .expect("a settled check is polled once it is ready"),
            ),
            Settling::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T: Unpin> Future for Settling<'_, T> {
    type Output = Result<T, Rejection>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_unpin(cx)
    }
}

impl<T> std::fmt::Debug for Settling<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Settling::Ready(_) => "Settling::Ready",
            Settling::Waiting(_) => "Settling::Waiting",
        })
    }
}

/// Polls `future` once: the answer when it is ready at once.
pub(crate) fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// One store call: without a future when the store answers at once.
async fn check(
    config: &HttpConfig,
    key: &[u8],
    charges: &[Charge<'_>],
    mode: Mode,
) -> Result<Decision, StoreError> {
    match config.limiter.check_charges_now(key, charges, mode) {
        Some(answer) => answer,
        None => config.limiter.check_charges(key, charges, mode).await,
    }
}

/// The answer to a refusal, logged (once per spell, see [`RejectionLog`]) and observed.
#[cold]
fn refuse(
    config: &HttpConfig,
    route: &str,
    entry: &Entry<'_>,
    decision: Decision,
    started: Started,
) -> Rejection {
    let key = entry.key.as_bytes();
    config.limiter.observe(
        &Observation::new(route, key, Outcome::Limited)
            .with_decision(&decision)
            .with_label(entry.limits.label())
            .with_elapsed(started.elapsed()),
    );
    let client = entry.key.client();
    let spell = decision
        .reset_after()
        .max(decision.retry_after().unwrap_or_default());
    if let Some(unlogged) = config.rejections.first_of_spell(route, key, spell) {
        let limit = decision.rate();
        match client {
            Some(ip) => tracing::warn!(
                client = %ip, route, %limit, unlogged_before = unlogged,
                "client rate limited: further rejections are counted, not logged, until its limit resets"
            ),
            None => tracing::warn!(
                key = %String::from_utf8_lossy(key), route, %limit, unlogged_before = unlogged,
                "client rate limited: further rejections are counted, not logged, until its limit resets"
            ),
        }
    }
    match &config.on_rejected {
        Some(handler) => Rejection::custom(handler(&details(route, entry, decision, client))),
        None => Rejection::limited(&decision, entry.message, config.headers),
    }
}

/// One concurrency slot a request needs: at most `limit` requests of `key` in flight under
/// `scope`, waiting up to `wait` for one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotNeed<'r> {
    pub(crate) key: &'r Key,
    pub(crate) scope: &'r str,
    pub(crate) limit: u32,
    pub(crate) message: Option<&'static str>,
    pub(crate) wait: Option<Duration>,
}

/// What a request holds while its handler runs: its concurrency slots and its place in the
/// route's capacity, each given back when dropped. Most requests hold nothing: that is one
/// word to test when they are dropped.
#[derive(Debug, Default)]
pub struct Leases {
    _held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    _slots: Vec<SlotLease>,
    _capacity: Option<Permit>,
}

impl Leases {
    /// `slots` and `capacity`, held until the leases are dropped.
    pub(crate) fn holding(slots: Vec<SlotLease>, capacity: Option<Permit>) -> Leases {
        match slots.is_empty() && capacity.is_none() {
            true => Leases { _held: None },
            false => Leases {
                _held: Some(Held {
                    _slots: slots,
                    _capacity: capacity,
                }),
            },
        }
    }

    /// Gives the leases back at once: nothing to do when nothing is held (the common case,
    /// decided here rather than in a call to their drop glue).
    #[inline]
    pub(crate) fn release(self) {
        if self._held.is_some() {
            drop(self);
        } else {
            std::mem::forget(self);
        }
    }
}

/// The longest pause between two tries for a slot while waiting for one: a slot given back
/// by another instance (Redis) is seen within it.
const SLOT_POLL: Duration = Duration::from_millis(25);

/// Takes every slot in `needs`, before any rate is charged: all of them, or none and the
/// 429 (so that a request refused for want of a slot consumes no rate). A need with a
/// `wait` tries again, at most every 25 ms, until its wait is over.
pub(crate) async fn take_slots(
    config: &HttpConfig,
    route: &str,
    needs: &[SlotNeed<'_>],
) -> Result<Vec<SlotLease>, Rejection> {
    let mut leases = Vec::with_capacity(needs.len());
    for need in needs {
        let started = Started::now(config);
        let taken = waiting_for_slot(
            need.wait,
            || {
                config
                    .limiter
                    .acquire_slot(need.scope, need.key.as_bytes(), need.limit)
            },
            |taken| matches!(taken, Ok(None)),
        )
        .await;
        match taken {
            Ok(Some(lease)) => leases.push(lease),
            Ok(None) => return Err(no_slot(config, route, need, started)),
            Err(error) => {
                tracing::error!(%error, route, "rate limit store failed to give a slot");
                config.limiter.observe(
                    &Observation::new(route, need.key.as_bytes(), Outcome::StoreFailed)
                        .with_elapsed(started.elapsed()),
                );
                return Err(Rejection::store_failed());
            }
        }
    }
    Ok(leases)
}

#[cold]
fn no_slot(config: &HttpConfig, route: &str, need: &SlotNeed<'_>, started: Started) -> Rejection {
    let key = need.key.as_bytes();
    config
        .limiter
        .observe(&Observation::new(route, key, Outcome::NoSlot).with_elapsed(started.elapsed()));
    if let Some(unlogged) = config
        .rejections
        .first_of_spell(route, key, Duration::from_secs(1))
    {
        let client = need.key.client();
        let key = String::from_utf8_lossy(key);
        tracing::warn!(
            client = ?client, %key, route, slots = need.limit, unlogged_before = unlogged,
            "client has every concurrency slot in use: further rejections are counted, not logged, for a second"
        );
    }
    Rejection::no_slot(need.limit, need.message)
}

fn details(
    route: &str,
    entry: &Entry<'_>,
    decision: Decision,
    client: Option<IpAddr>,
) -> RateLimited {
    RateLimited {
        decision,
        route: route.to_owned(),
        key: String::from_utf8_lossy(entry.key.as_bytes()).into_owned(),
        client,
        message: entry.message.map(Into::into),
    }
}
