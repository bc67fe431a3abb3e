//! The observer hook: what every decision is shown to, for logs and metrics; and
//! [`Metrics`], the observer that counts them per route and per label (tier) and serves them
//! as JSON and as Prometheus text.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;

use crate::clock::{Clock, MonotonicClock};
use crate::decision::Decision;

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Every limit admitted it (and charged it).
    Allowed,
    /// A rate refused it (429).
    Limited,
    /// Every concurrency slot of its key was taken (429); no rate was charged.
    NoSlot,
    /// The store failed and its policy refused (503).
    StoreFailed,
    /// The route (the model) was at capacity and the request was shed (503): the queue was
    /// full or its wait passed its bound. Its rates admitted it first (and were given back),
    /// so it follows that request's [`Allowed`](Outcome::Allowed) observation, which it
    /// replaces.
    Overloaded,
}

impl Outcome {
    /// `allowed`, `limited`, `no_slot`, `store_failed` or `overloaded`: the label value in
    /// metrics.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Limited => "limited",
            Outcome::NoSlot => "no_slot",
            Outcome::StoreFailed => "store_failed",
            Outcome::Overloaded => "overloaded",
        }
    }
}

/// One decision, as an [`Observer`] sees it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Observation<'a> {
    /// Where the request went: the matched route for HTTP, the scope otherwise.
    pub route: &'a str,
    /// The key that bound the decision (for the client IP, its text).
    pub key: &'a [u8],
    /// What became of the request.
    pub outcome: Outcome,
    /// The rate decision, bound by the limit that refused the request or has the fewest
    /// left; `None` when no rate was judged (no slot, store failure).
    pub decision: Option<&'a Decision>,
    /// The label of the binding limits ([`Limits::with_label`](crate::Limits::with_label)):
    /// the tier, where limits are given per tier.
    pub label: Option<&'a str>,
    /// How long the check took (the store calls included).
    pub elapsed: Duration,
}

impl<'a> Observation<'a> {
    /// An observation of `outcome` on `route` for `key`, with no decision, label or time.
    pub fn new(route: &'a str, key: &'a [u8], outcome: Outcome) -> Observation<'a> {
        Observation {
            route,
            key,
            outcome,
            decision: None,
            label: None,
            elapsed: Duration::ZERO,
        }
    }

    /// The same, with the rate decision.
    pub fn with_decision(mut self, decision: &'a Decision) -> Observation<'a> {
        self.decision = Some(decision);
        self
    }

    /// The same, with the limits' label.
    pub fn with_label(mut self, label: Option<&'a str>) -> Observation<'a> {
        self.label = label;
        self
    }

    /// The same, with the time the check took.
    pub fn with_elapsed(mut self, elapsed: Duration) -> Observation<'a> {
        self.elapsed = elapsed;
        self
    }
}

/// Shown every decision of a [`Limiter`](crate::Limiter), from the one place that enforces
/// them; set with [`LimiterBuilder::observer`](crate::LimiterBuilder::observer).
///
/// It runs on the request path: keep it to counters and sampling. [`Metrics`] is one.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use ratelimit_core::observe::{Observation, Observer, Outcome};
///
/// #[derive(Default)]
/// struct Refusals(AtomicU64);
///
/// impl Observer for Refusals {
///     fn observe(&self, seen: &Observation<'_>) {
///         if seen.outcome != Outcome::Allowed {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a rate limit observer",
    note = "an observer implements `ratelimit_core::observe::Observer`: `fn observe(&self, seen: &Observation<'_>)`"
)]
pub trait Observer: Send + Sync + 'static {
    /// Called once per request with what became of it.
    fn observe(&self, seen: &Observation<'_>);

    /// Called once per reservation when it is settled (or dropped unsettled, keeping its
    /// estimate): what was reserved and what the work used.
    fn settled(&self, seen: &Settlement<'_>) {
        let _ = seen;
    }

    /// Called once, when the limiter this observer watches is built: its routes'
    /// capacities (`capacity =`), to report with the counts.
    #[cfg(feature = "axum")]
    fn attached(&self, capacities: crate::Capacities) {
        let _ = capacities;
    }
}

impl<O: Observer> Observer for Arc<O> {
    fn observe(&self, seen: &Observation<'_>) {
        (**self).observe(seen);
    }

    fn settled(&self, seen: &Settlement<'_>) {
        (**self).settled(seen);
    }

    #[cfg(feature = "axum")]
    fn attached(&self, capacities: crate::Capacities) {
        (**self).attached(capacities);
    }
}

/// A reservation settled, as an [`Observer`] sees it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Settlement<'a> {
    /// Where the request went: the matched route for HTTP, the scope otherwise.
    pub route: &'a str,
    /// The label of the reserved limits (the tier).
    pub label: Option<&'a str>,
    /// Units reserved up front.
    pub reserved: u64,
    /// Units the work used: what stays charged.
    pub settled: u64,
}

impl<'a> Settlement<'a> {
    /// `reserved` units on `route`, settled to `settled`.
    pub fn new(route: &'a str, label: Option<&'a str>, reserved: u64, settled: u64) -> Self {
        Settlement {
            route,
            label,
            reserved,
            settled,
        }
    }

    /// What was given back: reserved beyond what was used.
    pub fn refunded(&self) -> u64 {
        self.reserved.saturating_sub(self.settled)
    }

    /// What was charged as debt: used beyond what was reserved.
    pub fn debt(&self) -> u64 {
        self.settled.saturating_sub(self.reserved)
    }
}

/// Counts of one route or label.
#[derive(Default)]
struct Counts {
    allowed: AtomicU64,
    limited: AtomicU64,
    no_slot: AtomicU64,
    store_failed: AtomicU64,
    overloaded: AtomicU64,
    reserved: AtomicU64,
    settled: AtomicU64,
    refunded: AtomicU64,
    debt: AtomicU64,
}

impl Counts {
    #[inline]
    fn add(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Allowed => &self.allowed,
            Outcome::Limited => &self.limited,
            Outcome::NoSlot => &self.no_slot,
            Outcome::StoreFailed => &self.store_failed,
            Outcome::Overloaded => {
                // Replaces the request's admission by its rates.
                let _ = self
                    .allowed
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                &self.overloaded
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn settle(&self, seen: &Settlement<'_>) {
        for (counter, units) in [
            (&self.reserved, seen.reserved),
            (&self.settled, seen.settled),
            (&self.refunded, seen.refunded()),
            (&self.debt, seen.debt()),
        ] {
            counter.fetch_add(units, Ordering::Relaxed);
        }
    }

    fn read(&self) -> Counted {
        Counted {
            allowed: self.allowed.load(Ordering::Relaxed),
            limited: self.limited.load(Ordering::Relaxed),
            no_slot: self.no_slot.load(Ordering::Relaxed),
            store_failed: self.store_failed.load(Ordering::Relaxed),
            overloaded: self.overloaded.load(Ordering::Relaxed),
            units: Units {
                reserved: self.reserved.load(Ordering::Relaxed),
                settled: self.settled.load(Ordering::Relaxed),
                refunded: self.refunded.load(Ordering::Relaxed),
                debt: self.debt.load(Ordering::Relaxed),
            },
        }
    }
}

/// Units of reserved budgets (`reserve =`: tokens, milliseconds) of one route or label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Units {
    /// Reserved up front.
    pub reserved: u64,
    /// Charged once settled: what the work used.
    pub settled: u64,
    /// Given back: reserved beyond what was used.
    pub refunded: u64,
    /// Charged as debt: used beyond what was reserved.
    pub debt: u64,
}

impl Units {
    fn plus(self, other: Units) -> Units {
        Units {
            reserved: self.reserved + other.reserved,
            settled: self.settled + other.settled,
            refunded: self.refunded + other.refunded,
            debt: self.debt + other.debt,
        }
    }
}

/// The requests of one route or label, by outcome, at the time of a [`Metrics::snapshot`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counted {
    /// Admitted.
    pub allowed: u64,
    /// Refused by a rate.
    pub limited: u64,
    /// Refused for want of a concurrency slot.
    pub no_slot: u64,
    /// Refused because the store failed.
    pub store_failed: u64,
    /// Shed because the route was at capacity (503).
    pub overloaded: u64,
    /// Units of reserved budgets, as reservations were settled.
    pub units: Units,
}

impl Counted {
    /// Every request.
    pub fn total(&self) -> u64 {
        self.allowed + self.refused()
    }

    /// Every request refused, whatever the reason.
    pub fn refused(&self) -> u64 {
        self.limited + self.no_slot + self.store_failed + self.overloaded
    }

    fn of(&self, outcome: Outcome) -> u64 {
        match outcome {
            Outcome::Allowed => self.allowed,
            Outcome::Limited => self.limited,
            Outcome::NoSlot => self.no_slot,
            Outcome::StoreFailed => self.store_failed,
            Outcome::Overloaded => self.overloaded,
        }
    }

    fn plus(mut self, other: Counted) -> Counted {
        self.allowed += other.allowed;
        self.limited += other.limited;
        self.no_slot += other.no_slot;
        self.store_failed += other.store_failed;
        self.overloaded += other.overloaded;
        self.units = self.units.plus(other.units);
        self
    }
}

/// Upper bounds of the check latency histogram, in seconds: an in-memory check falls in the
/// first buckets, a Redis round trip in the middle ones.
const LATENCY_BOUNDS: [f64; 12] = [
    1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2,
];

/// A histogram of check latency: one atomic per bucket, no lock.
#[derive(Debug, Default)]
struct Latency {
    /// Per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Latency {
    #[inline]
    fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// Counters of every decision, per route and per label (tier), with a histogram of check
/// latency: an [`Observer`], and what serves `GET /metrics` (the HTTP glue's
/// `metrics_json` and `metrics_prometheus` handlers).
///
/// Cloning it is cheap and every clone counts into the same counters: give one to the
/// limiter, keep one for the handlers. Counting takes a few atomic additions per request and
/// no lock held across requests (the per-route table is sharded and only read once a route
/// is known).
///
/// ```
/// use ratelimit_core::observe::Metrics;
/// use ratelimit_core::{Limiter, Limits};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let metrics = Metrics::new();
/// let limiter = Limiter::builder().observer(metrics.clone()).build();
/// let limits = Limits::parse("1/minute").unwrap().with_label("free");
/// limiter.check_scoped("/predict", &limits, "k", 1).await.unwrap();
/// limiter.check_scoped("/predict", &limits, "k", 1).await.unwrap();
/// let seen = metrics.snapshot();
/// assert_eq!((seen.total.total(), seen.total.limited), (2, 1));
/// assert_eq!(seen.routes["/predict"].limited, 1);
/// assert_eq!(seen.labels["free"].allowed, 1);
/// assert!(metrics.prometheus().contains("ratelimit_requests_total{route=\"/predict\",outcome=\"limited\"} 1"));
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

#[derive(Debug, Default)]
struct MetricsInner {
    routes: DashMap<Box<str>, Counts, foldhash::fast::RandomState>,
    labels: DashMap<Box<str>, Counts, foldhash::fast::RandomState>,
    latency: Latency,
    /// The capacities of the limiters this observes.
    #[cfg(feature = "axum")]
    capacities: std::sync::Mutex<Vec<crate::Capacities>>,
}

/// The most distinct routes and labels counted: beyond, they count under `other`, so that a
/// client inventing paths (a layer over unmatched routes) cannot grow the table without end.
const MAX_NAMES: usize = 10_000;

impl MetricsInner {
    fn entry<'t>(
        table: &'t DashMap<Box<str>, Counts, foldhash::fast::RandomState>,
        name: &str,
    ) -> dashmap::mapref::one::RefMut<'t, Box<str>, Counts> {
        let name = if table.len() >= MAX_NAMES && !table.contains_key(name) {
            "other"
        } else {
            name
        };
        table.entry(name.into()).or_default()
    }

    #[inline]
    fn count(
        table: &DashMap<Box<str>, Counts, foldhash::fast::RandomState>,
        name: &str,
        outcome: Outcome,
    ) {
        if let Some(counts) = table.get(name) {
            counts.add(outcome);
            return;
        }
        let name = if table.len() >= MAX_NAMES {
            "other"
        } else {
            name
        };
        table.entry(name.into()).or_default().add(outcome);
    }
}

impl Observer for Metrics {
    #[inline]
    fn observe(&self, seen: &Observation<'_>) {
        MetricsInner::count(&self.inner.routes, seen.route, seen.outcome);
        if let Some(label) = seen.label {
            MetricsInner::count(&self.inner.labels, label, seen.outcome);
        }
        if seen.elapsed > Duration::ZERO {
            self.inner.latency.record(seen.elapsed);
        }
    }

    fn settled(&self, seen: &Settlement<'_>) {
        MetricsInner::entry(&self.inner.routes, seen.route).settle(seen);
        if let Some(label) = seen.label {
            MetricsInner::entry(&self.inner.labels, label).settle(seen);
        }
    }

    #[cfg(feature = "axum")]
    fn attached(&self, capacities: crate::Capacities) {
        let mut all = self
            .inner
            .capacities
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.retain(|c| !c.is_gone());
        all.push(capacities);
    }
}

/// What [`Metrics`] counted, at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Every request.
    pub total: Counted,
    /// Per route (the matched path, such as `/models/{name}/predict`).
    pub routes: std::collections::BTreeMap<String, Counted>,
    /// Per label of the binding limits (the tier).
    pub labels: std::collections::BTreeMap<String, Counted>,
    /// The capacity of each route with one (`capacity =`), now.
    #[cfg(feature = "axum")]
    pub capacity: std::collections::BTreeMap<String, crate::CapacityStats>,
}

impl Metrics {
    /// Empty counters.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// The counts so far.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let read = |table: &DashMap<Box<str>, Counts, foldhash::fast::RandomState>| {
            table
                .iter()
                .map(|entry| (entry.key().to_string(), entry.value().read()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let routes = read(&self.inner.routes);
        let total = routes
            .values()
            .fold(Counted::default(), |sum, c| sum.plus(*c));
        MetricsSnapshot {
            total,
            routes,
            labels: read(&self.inner.labels),
            #[cfg(feature = "axum")]
            capacity: self
                .inner
                .capacities
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .flat_map(crate::Capacities::read)
                .collect(),
        }
    }

    /// Adds these counters to a `prometheus-client` registry (to serve them with the
    /// application's own metrics): `ratelimit_requests_total{route, outcome}`,
    /// `ratelimit_label_requests_total{label, outcome}` and the histogram
    /// `ratelimit_check_duration_seconds`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }

    /// These counters alone in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("routes", &self.inner.routes.len())
            .field("labels", &self.inner.labels.len())
            .finish_non_exhaustive()
    }
}

const OUTCOMES: [Outcome; 5] = [
    Outcome::Allowed,
    Outcome::Limited,
    Outcome::NoSlot,
    Outcome::StoreFailed,
    Outcome::Overloaded,
];

impl prometheus_client::collector::Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let snapshot = self.snapshot();
        for (metric, label, help, table) in [
            (
                "ratelimit_requests",
                "route",
                "Requests seen by the rate limiter, by route and outcome",
                &snapshot.routes,
            ),
            (
                "ratelimit_label_requests",
                "label",
                "Requests seen by the rate limiter, by the label (tier) of their limits and outcome",
                &snapshot.labels,
            ),
        ] {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
            for (name, counted) in table {
                for outcome in OUTCOMES {
                    let labels = [(label, name.as_str()), ("outcome", outcome.name())];
                    let counter = ConstCounter::new(counted.of(outcome));
                    counter.encode(family.encode_family(&labels)?)?;
                }
            }
        }
        self.encode_units(&snapshot, &mut encoder)?;
        #[cfg(feature = "axum")]
        encode_capacity(&snapshot, &mut encoder)?;
        let latency = &self.inner.latency;
        // Per bucket: the encoder sums them into Prometheus's cumulative buckets.
        let mut count = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BOUNDS.len() + 1);
        for (i, bucket) in latency.buckets.iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            count += n;
            let bound = LATENCY_BOUNDS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, n));
        }
        let sum = latency.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let metric = encoder.encode_descriptor(
            "ratelimit_check_duration_seconds",
            "Time the rate limit check of a request took, store calls included",
            None,
            MetricType::Histogram,
        )?;
        let mut metric = metric;
        metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

impl Metrics {
    /// `ratelimit_units_total{route, kind}`: the units of reserved budgets.
    fn encode_units(
        &self,
        snapshot: &MetricsSnapshot,
        encoder: &mut DescriptorEncoder<'_>,
    ) -> Result<(), fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "ratelimit_units",
            "Units of reserved budgets (tokens, milliseconds) by route and kind: reserved up front, settled to what the work used, refunded, and charged as debt",
            None,
            MetricType::Counter,
        )?;
        for (name, counted) in &snapshot.routes {
            let u = counted.units;
            for (kind, n) in [
                ("reserved", u.reserved),
                ("settled", u.settled),
                ("refunded", u.refunded),
                ("debt", u.debt),
            ] {
                if u == Units::default() {
                    break;
                }
                let labels = [("route", name.as_str()), ("kind", kind)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// `ratelimit_capacity_*{route}`: each capacity's limit, requests in flight and waiting,
/// latency, and requests shed.
#[cfg(feature = "axum")]
fn encode_capacity(
    snapshot: &MetricsSnapshot,
    encoder: &mut DescriptorEncoder<'_>,
) -> Result<(), fmt::Error> {
    use prometheus_client::metrics::gauge::ConstGauge;
    type Read = fn(&crate::CapacityStats) -> f64;
    let gauges: [(&str, &str, Read); 5] = [
        (
            "ratelimit_capacity_limit",
            "The limit on requests in flight across clients (adaptive or fixed)",
            |s| s.limit.map_or(f64::INFINITY, f64::from),
        ),
        ("ratelimit_capacity_in_flight", "Requests in flight", |s| {
            f64::from(s.in_flight)
        }),
        ("ratelimit_capacity_queued", "Requests waiting", |s| {
            f64::from(s.queued)
        }),
        (
            "ratelimit_capacity_latency_seconds",
            "The handler's latency, a moving average",
            |s| s.latency.as_secs_f64(),
        ),
        (
            "ratelimit_capacity_no_load_latency_seconds",
            "The handler's latency without a queue, as the adaptive limit measured it",
            |s| s.no_load_latency.unwrap_or_default().as_secs_f64(),
        ),
    ];
    for (metric, help, read) in gauges {
        let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
        for (route, stats) in &snapshot.capacity {
            let labels = [("route", route.as_str())];
            ConstGauge::new(read(stats)).encode(family.encode_family(&labels)?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "ratelimit_capacity_shed",
        "Requests shed (503) because the route was at capacity",
        None,
        MetricType::Counter,
    )?;
    for (route, stats) in &snapshot.capacity {
        let labels = [("route", route.as_str())];
        ConstCounter::new(stats.shed).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl fmt::Debug for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.read(), f)
    }
}

/// Who was refused lately, so that a client that keeps knocking is logged once per spell:
/// its first rejection writes a warning; the next ones, until its limit resets, are counted
/// (and reported with the next warning). A flood of 429s is one log line per client and
/// limit window, not one per request.
#[derive(Debug, Default)]
pub(crate) struct RejectionLog {
    clock: MonotonicClock,
    /// By a hash of route and key: when the spell ends (clock nanoseconds), and the
    /// rejections not logged since it began.
    spells: DashMap<u64, (u64, u64), foldhash::fast::RandomState>,
}

/// The most clients remembered; beyond, the table starts over (some get a second line).
const REMEMBERED: usize = 100_000;

impl RejectionLog {
    /// `Some(rejections not logged in the spell before)` when this rejection starts a spell
    /// (log it); `None` when it falls within one (counted only). A spell lasts `length`, at
    /// least a second.
    pub(crate) fn first_of_spell(&self, route: &str, key: &[u8], length: Duration) -> Option<u64> {
        let now = self.clock.now();
        let until = now.saturating_add(
            u64::try_from(length.max(Duration::from_secs(1)).as_nanos()).unwrap_or(u64::MAX),
        );
        let mut hasher = SPELL.build_hasher();
        hasher.write(route.as_bytes());
        hasher.write_u8(0xff);
        hasher.write(key);
        let name = hasher.finish();
        if let Some(mut spell) = self.spells.get_mut(&name) {
            let (ends, unlogged) = *spell;
            if now < ends {
                spell.1 += 1;
                return None;
            }
            *spell = (until, 0);
            return Some(unlogged);
        }
        if self.spells.len() >= REMEMBERED {
            self.spells.clear();
        }
        self.spells.insert(name, (until, 0));
        Some(0)
    }
}

static SPELL: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x5be1_1ed0);
