//! A set of rates checked together, with the algorithm and burst that apply to them.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use crate::algorithm::{Algorithm, RateParams};
use crate::rate::{ParseError, Rate, parse_rates};

/// One or more rates that a request must all pass, such as `10/minute;100/hour`, with the
/// algorithm that counts them (the limiter's default when unset) and, for GCRA, the burst.
///
/// Build it once (at start-up, or in a `static`) and check it on every request: checking
/// allocates nothing.
///
/// ```
/// use ratelimit_core::{Algorithm, Limits};
///
/// let limits: Limits = "10/minute; 100/hour".parse().unwrap();
/// assert_eq!(limits.to_string(), "10 per 1 minute; 100 per 1 hour");
/// let sliding = limits.with_algorithm(Algorithm::SlidingWindow);
/// assert_eq!(sliding.algorithm(), Some(Algorithm::SlidingWindow));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    params: Box<[RateParams]>,
    algorithm: Option<Algorithm>,
    burst: Option<NonZeroU64>,
    shape: u64,
    label: Option<&'static str>,
    priority: Priority,
}

/// How soon a request is served when a route's capacity is short (`capacity =` on the
/// attribute): waiting requests of a higher priority are served first and shed last. Set by
/// [`Limits::with_priority`], typically on a tier's limits (premium first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Served after every other waiting request, shed first.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Served before every other waiting request, shed last.
    High,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Normal, Priority::High];

    /// The position in [`Priority::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// `"low"`, `"normal"` or `"high"`.
    pub const fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

impl Limits {
    /// The limits of one or more rates; `None` when `rates` is empty.
    pub fn from_rates(rates: impl IntoIterator<Item = Rate>) -> Option<Limits> {
        let params: Box<[RateParams]> = rates
            .into_iter()
            .map(|rate| RateParams::new(rate, None))
            .collect();
        if params.is_empty() {
            return None;
        }
        let shape = shape(&params);
        Some(Limits {
            params,
            algorithm: None,
            burst: None,
            shape,
            label: None,
            priority: Priority::Normal,
        })
    }

    /// Parses `"10/minute"`, `"10/minute;100/hour"` and the rest of the [rate
    /// grammar](crate::rate).
    pub fn parse(input: &str) -> Result<Limits, ParseError> {
        let rates = parse_rates(input)?;
        Ok(Limits::from_rates(rates).expect("the grammar yields at least one rate"))
    }

    /// Counts these limits with `algorithm` instead of the limiter's default.
    pub fn with_algorithm(mut self, algorithm: Algorithm) -> Limits {
        self.algorithm = Some(algorithm);
        self
    }

    /// Lets GCRA admit up to `burst` requests at once (the default is each rate's amount).
    /// The window algorithms have no burst: they admit their amount per window.
    pub fn with_burst(mut self, burst: NonZeroU64) -> Limits {
        self.burst = Some(burst);
        for p in self.params.iter_mut() {
            *p = RateParams::new(p.rate, Some(burst.get()));
        }
        self
    }

    /// Names these limits in metrics and logs, such as the tier they belong to (`"free"`,
    /// `"premium"`): [`Observation::label`](crate::observe::Observation::label) carries it,
    /// and [`Metrics`](crate::observe::Metrics) counts requests per label. Not part of the
    /// state's name: two labels on the same rates share one budget.
    pub fn with_label(mut self, label: &'static str) -> Limits {
        self.label = Some(label);
        self
    }

    /// The label, when one was given.
    pub fn label(&self) -> Option<&'static str> {
        self.label
    }

    /// Serves requests under these limits ahead of others while a route's capacity is short
    /// (`capacity =` on the attribute): with [`Priority::High`], a premium tier's requests
    /// leave the queue first and are shed last. Not part of the state's name.
    pub fn with_priority(mut self, priority: Priority) -> Limits {
        self.priority = priority;
        self
    }

    /// The priority of requests under these limits ([`Priority::Normal`] unless set).
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The rates, in the order they were given.
    pub fn rates(&self) -> impl ExactSizeIterator<Item = Rate> + '_ {
        self.params.iter().map(|p| p.rate)
    }

    /// The algorithm, when one was chosen for these limits.
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.algorithm
    }

    /// The burst, when one was chosen.
    pub fn burst(&self) -> Option<NonZeroU64> {
        self.burst
    }

    /// Each rate with the numbers the algorithms count with, in order.
    pub fn params(&self) -> &[RateParams] {
        &self.params
    }

    /// What the state of these limits is named by, besides the key and scope: each rate's
    /// period in its position. Not the amounts, nor the burst: limits scaled at run time
    /// (`10/minute` to `2/minute` while a model warms up) keep their counted state. Stable
    /// across processes and versions (FNV-1a over the periods), so it may be persisted.
    pub fn shape(&self) -> u64 {
        self.shape
    }
}

/// FNV-1a over the periods: stable across processes, platforms and versions.
fn shape(params: &[RateParams]) -> u64 {
    params
        .iter()
        .flat_map(|p| p.period.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

impl fmt::Display for Limits {
    /// The canonical form: `10 per 1 minute; 100 per 1 hour`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.params.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}", p.rate)?;
        }
        Ok(())
    }
}

impl FromStr for Limits {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Limits, ParseError> {
        Limits::parse(s)
    }
}

impl From<Rate> for Limits {
    fn from(rate: Rate) -> Limits {
        Limits::from_rates([rate]).expect("one rate")
    }
}

/// Limits lent for a while: resolved for one request (by a `LIMITS` function, an API key's
/// tier), or kept by a [`Reservation`](crate::Reservation) until it is settled. Anything
/// that lends a [`Limits`]; a `static` costs nothing to lend.
#[derive(Debug, Clone)]
pub enum LimitsRef {
    /// Limits that live for the whole program (a `static`).
    Static(&'static Limits),
    /// Limits shared behind an `Arc`.
    Shared(Arc<Limits>),
    /// Limits made for this request.
    Owned(Limits),
}

impl LimitsRef {
    /// The limits lent.
    pub fn limits(&self) -> &Limits {
        match self {
            LimitsRef::Static(limits) => limits,
            LimitsRef::Shared(limits) => limits,
            LimitsRef::Owned(limits) => limits,
        }
    }
}

impl From<&'static Limits> for LimitsRef {
    fn from(limits: &'static Limits) -> LimitsRef {
        LimitsRef::Static(limits)
    }
}

impl From<Arc<Limits>> for LimitsRef {
    fn from(limits: Arc<Limits>) -> LimitsRef {
        LimitsRef::Shared(limits)
    }
}

impl From<Limits> for LimitsRef {
    fn from(limits: Limits) -> LimitsRef {
        LimitsRef::Owned(limits)
    }
}

impl From<&'static LazyLock<Limits>> for LimitsRef {
    fn from(limits: &'static LazyLock<Limits>) -> LimitsRef {
        LimitsRef::Static(limits)
    }
}
