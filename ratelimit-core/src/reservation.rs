//! Cost known only after the work: a request reserves an estimate, charged all or nothing
//! like any cost, and settles the real amount once the work is done. What was over-reserved
//! is given back; what was under-reserved is charged as debt, never refused (the work is
//! done), and the key's next requests wait until its limits have earned it back.

use std::sync::Arc;

use crate::decision::Decision;
use crate::limiter::Limiter;
use crate::limits::{Limits, LimitsRef};
use crate::observe::Settlement;
use crate::store::{Mode, StoreError};

impl Limiter {
    /// Reserves `estimate` units of `limits` for `key` in `scope`, as
    /// [`check_scoped`](Limiter::check_scoped) charges a cost: the [`Reservation`] to settle
    /// once the real amount is known, or the refusal (which reserved nothing).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use ratelimit_core::{Limiter, Limits};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new();
    /// let tokens = Arc::new(Limits::parse("2000/minute").unwrap());
    /// // A generation of at most 64 tokens after a prompt of 10.
    /// let reservation = limiter
    ///     .reserve("generate", tokens.clone(), "client-1", 10 + 64)
    ///     .await
    ///     .unwrap()
    ///     .expect("within the budget");
    /// // ... generate: it stopped after 23 tokens ...
    /// let after = reservation.settle(10 + 23).await.unwrap();
    /// assert_eq!(after.remaining(), 2000 - 33);
    /// # }
    /// ```
    pub async fn reserve(
        &self,
        scope: impl Into<Arc<str>>,
        limits: impl Into<LimitsRef>,
        key: impl AsRef<[u8]>,
        estimate: u64,
    ) -> Result<Result<Reservation, Decision>, StoreError> {
        let (scope, key): (Arc<str>, Arc<[u8]>) = (scope.into(), Arc::from(key.as_ref()));
        let limits = limits.into();
        let charge = self.charge(&scope, limits.limits(), estimate);
        let decision = self
            .check_charges(&key, std::slice::from_ref(&charge), Mode::Charge)
            .await?;
        if !decision.is_allowed() {
            return Ok(Err(decision));
        }
        Ok(Ok(Reservation::new(
            self.clone(),
            scope,
            limits,
            key,
            estimate,
            decision,
        )))
    }

    /// Settles a charge of `reserved` units made earlier for `key` under `limits` in `scope`
    /// to the `actual` amount, in one store call: gives back `reserved - actual`
    /// ([`Mode::Refund`]) or charges `actual - reserved` as debt ([`Mode::Debit`], never
    /// refused). Answers the key's state after it: a key in debt is refused, with the wait
    /// until the debt is paid.
    ///
    /// Debt is counted as each algorithm counts a request admitted at the moment of the
    /// settlement: GCRA moves the key's theoretical arrival time on (the key waits exactly
    /// as long as the rate takes to earn the units back), the windows count the units in the
    /// window open now (the key is refused until they have left it: a fixed window forgets
    /// them when it closes, as it forgets every request).
    ///
    /// [`Reservation::settle`] does this once per reservation; this is the primitive for
    /// glue that keeps its reservations itself.
    pub async fn settle(
        &self,
        scope: &str,
        limits: &Limits,
        key: &[u8],
        reserved: u64,
        actual: u64,
    ) -> Result<Decision, StoreError> {
        let (mode, units) = settlement(reserved, actual);
        let charge = self.charge(scope, limits, units);
        self.check_charges(key, std::slice::from_ref(&charge), mode)
            .await
    }
}

/// The store call that settles `reserved` to `actual`: a refund, a debit, or (nothing to
/// change) a look at the state as it is.
pub(crate) fn settlement(reserved: u64, actual: u64) -> (Mode, u64) {
    match actual.cmp(&reserved) {
        std::cmp::Ordering::Less => (Mode::Refund, reserved - actual),
        std::cmp::Ordering::Greater => (Mode::Debit, actual - reserved),
        std::cmp::Ordering::Equal => (Mode::Peek, 0),
    }
}

/// Units reserved ahead of work whose cost is known only when it ends (tokens generated,
/// milliseconds of inference): settled once with [`settle`](Reservation::settle), which
/// takes the reservation, so that it cannot be settled twice.
///
/// A reservation dropped without being settled keeps its estimate charged: the work may
/// have happened, and the estimate is what the request was admitted on (a handler that
/// fails before doing any work settles 0 to give it all back).
///
/// ```compile_fail
/// # use std::sync::Arc;
/// # use ratelimit_core::{Limiter, Limits};
/// # async fn twice(limiter: Limiter, limits: Arc<Limits>) {
/// let reservation = limiter.reserve("s", limits, "k", 64).await.unwrap().unwrap();
/// reservation.settle(10).await.unwrap();
/// reservation.settle(10).await.unwrap(); // error: use of moved value
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a reservation keeps its estimate charged until it is settled"]
pub struct Reservation {
    /// `None` for a request exempt from the limits: nothing was reserved, nothing is settled.
    limiter: Option<Limiter>,
    scope: Arc<str>,
    limits: LimitsRef,
    key: Arc<[u8]>,
    reserved: u64,
    admitted: Decision,
    /// Told the state after the settlement (the HTTP glue keeps it for the headers).
    on_settle: Option<fn(&Decision)>,
    /// Where the request went, for the observer: the scope, or the matched route.
    route: Arc<str>,
    /// Whether it was settled (or handed to a meter, which settles it).
    done: bool,
}

impl Reservation {
    /// `hook` is told the key's state after the settlement.
    pub(crate) fn on_settle(mut self, hook: fn(&Decision)) -> Reservation {
        self.on_settle = Some(hook);
        self
    }

    /// Observed under `route` (the matched route) rather than the scope.
    pub(crate) fn on_route(mut self, route: &str) -> Reservation {
        self.route = Arc::from(route);
        self
    }

    /// Shows the settlement to the limiter's observer.
    fn observe(&self, actual: u64) {
        if let Some(limiter) = &self.limiter {
            limiter.observe_settlement(&Settlement::new(
                &self.route,
                self.limits.limits().label(),
                self.reserved,
                actual,
            ));
        }
    }

    /// `reserved` units charged to `key` under `limits` in `scope`, admitted by `admitted`.
    pub(crate) fn new(
        limiter: Limiter,
        scope: Arc<str>,
        limits: LimitsRef,
        key: Arc<[u8]>,
        reserved: u64,
        admitted: Decision,
    ) -> Reservation {
        Reservation {
            limiter: Some(limiter),
            route: scope.clone(),
            scope,
            limits,
            key,
            reserved,
            admitted,
            on_settle: None,
            done: false,
        }
    }

    /// The reservation of a request exempt from `limits`: nothing reserved, and settling it
    /// charges nothing.
    pub(crate) fn exempt(limits: LimitsRef) -> Reservation {
        let rate = limits.limits().rates().next().expect("limits hold a rate");
        Reservation {
            limiter: None,
            scope: Arc::from(""),
            key: Arc::from(&b""[..]),
            reserved: 0,
            admitted: Decision::allowed(rate, rate.amount(), std::time::Duration::ZERO),
            limits,
            on_settle: None,
            route: Arc::from(""),
            done: false,
        }
    }

    /// Whether the request was exempt from the limits (then nothing is reserved or settled).
    pub fn is_exempt(&self) -> bool {
        self.limiter.is_none()
    }
    /// The units reserved.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// The admission the reservation was charged with.
    pub fn admitted(&self) -> &Decision {
        &self.admitted
    }

    /// The limits reserved from.
    pub fn limits(&self) -> &Limits {
        self.limits.limits()
    }

    /// Settles the reservation to the `actual` amount ([`Limiter::settle`]): the key's state
    /// after it (for an exempt request, the admission, unchanged).
    pub async fn settle(mut self, actual: u64) -> Result<Decision, StoreError> {
        self.done = true;
        let Some(limiter) = &self.limiter else {
            return Ok(self.admitted);
        };
        let after = limiter
            .settle(
                &self.scope,
                self.limits.limits(),
                &self.key,
                self.reserved,
                actual,
            )
            .await?;
        if let Some(hook) = self.on_settle {
            hook(&after);
        }
        self.observe(actual);
        Ok(after)
    }
}

impl Reservation {
    /// A meter over this reservation, for work that may stop at any point: add what is used
    /// as it is used (tokens as they are streamed), and the reservation is settled to that
    /// when the meter is settled or dropped (a client that goes away mid-stream pays for what
    /// was produced, not for the estimate).
    pub fn meter(mut self) -> Meter {
        self.done = true;
        Meter {
            reservation: Some(self),
            used: 0,
        }
    }

    /// Settles without waiting: at once with a store that answers at once (the in-memory
    /// one), else in a task of its own on the current Tokio runtime.
    fn settle_detached(self, actual: u64) {
        let Some(limiter) = &self.limiter else {
            return;
        };
        self.observe(actual);
        let (mode, units) = settlement(self.reserved, actual);
        let charge = limiter.charge(&self.scope, self.limits.limits(), units);
        if let Some(answer) =
            limiter.check_charges_now(&self.key, std::slice::from_ref(&charge), mode)
        {
            if let Err(error) = answer {
                tracing::warn!(%error, "a reservation could not be settled");
            }
            return;
        }
        #[cfg(any(feature = "axum", feature = "redis"))]
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let settled = self.limiter.as_ref().map(|limiter| {
                    limiter.settle(
                        &self.scope,
                        self.limits.limits(),
                        &self.key,
                        self.reserved,
                        actual,
                    )
                });
                let Some(settled) = settled else { return };
                if let Err(error) = settled.await {
                    tracing::warn!(%error, "a reservation could not be settled");
                }
            });
            return;
        }
        tracing::warn!(
            reserved = self.reserved,
            actual,
            "a reservation dropped outside a Tokio runtime keeps its estimate"
        );
    }
}

impl Drop for Reservation {
    /// Unsettled: the estimate stays charged, and is shown to the observer as settled.
    fn drop(&mut self) {
        if !self.done {
            self.observe(self.reserved);
        }
    }
}

/// Units used so far against a [`Reservation`], settled when the meter is settled or
/// dropped ([`Reservation::meter`]).
///
/// ```
/// use ratelimit_core::{Limiter, Limits};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new();
/// let tokens = std::sync::Arc::new(Limits::parse("2000/minute").unwrap());
/// let reservation = limiter.reserve("", tokens.clone(), "k", 512).await.unwrap().unwrap();
/// let mut meter = reservation.meter();
/// for _token in 0..3 {
///     meter.add(1); // streamed to the client
/// }
/// drop(meter); // the client went away: 3 charged, not 512
/// let left = limiter.peek(&tokens, "k", 0).await.unwrap();
/// assert_eq!(left.remaining(), 1997);
/// # }
/// ```
#[derive(Debug)]
pub struct Meter {
    reservation: Option<Reservation>,
    used: u64,
}

impl Meter {
    /// Adds `units` to what was used.
    pub fn add(&mut self, units: u64) {
        self.used = self.used.saturating_add(units);
    }

    /// What was used so far.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The units reserved.
    pub fn reserved(&self) -> u64 {
        self.reservation.as_ref().map_or(0, Reservation::reserved)
    }

    /// Settles the reservation to what was used, and answers the key's state after it.
    pub async fn settle(mut self) -> Result<Option<Decision>, StoreError> {
        match self.reservation.take() {
            Some(reservation) => reservation.settle(self.used).await.map(Some),
            None => Ok(None),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            reservation.settle_detached(self.used);
        }
    }
}
