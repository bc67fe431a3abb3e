//! A set of rates checked together, with the algorithm and burst that apply to them.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use crate::algorithm::Algorithm;
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
    id: u64,
    #[cfg(feature = "axum")]
    http: HttpCache,
}

/// The header values and 429 bodies of each rate, made on first use.
#[cfg(feature = "axum")]
#[derive(Clone, Default)]
struct HttpCache(std::sync::OnceLock<Box<[crate::http::response::RateHttp]>>);

#[cfg(feature = "axum")]
impl PartialEq for HttpCache {
    fn eq(&self, _: &HttpCache) -> bool {
        true // derived from the rates, which the limits compare
    }
}

#[cfg(feature = "axum")]
impl Eq for HttpCache {}

#[cfg(feature = "axum")]
impl std::fmt::Debug for HttpCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("..")
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
        let mut limits = Limits {
            params,
            algorithm: None,
            burst: None,
            id: 0,
            #[cfg(feature = "axum")]
            http: HttpCache::default(),
        };
        limits.id = limits.compute_id();
        Some(limits)
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
        self.id = self.compute_id();
        self
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

    /// The header values and 429 bodies of rate `index`.
    #[cfg(feature = "axum")]
    pub(crate) fn http_rate(&self, index: usize) -> &crate::http::response::RateHttp {
        let all = self.http.0.get_or_init(|| {
            self.params
                .iter()
                .map(|p| crate::http::response::RateHttp::new(p.rate))
                .collect()
        });
        &all[index.min(all.len() - 1)]
    }

    pub(crate) fn params(&self) -> &[RateParams] {
        &self.params
    }

    /// A fingerprint of the rates and burst: state kept for one set of limits is never read
    /// for another.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn compute_id(&self) -> u64 {
        let mut words = vec![self.burst.map_or(0, NonZeroU64::get)];
        for p in self.params.iter() {
            words.extend([p.amount, p.period]);
        }
        fnv1a(words.iter().flat_map(|w| w.to_le_bytes()))
    }
}

/// FNV-1a: stable across processes and platforms, which a fingerprint shared between
/// instances needs.
pub(crate) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
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

/// A rate with the numbers the algorithms need, worked out once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RateParams {
    pub(crate) rate: Rate,
    pub(crate) amount: u64,
    /// The period in nanoseconds.
    pub(crate) period: u64,
    /// GCRA: the spacing of requests, `period / amount` rounded up.
    pub(crate) interval: u64,
    /// GCRA: how many requests may pass at once.
    pub(crate) burst: u64,
    /// GCRA: `burst × interval`.
    pub(crate) tolerance: u64,
}

impl RateParams {
    pub(crate) fn new(rate: Rate, burst: Option<u64>) -> RateParams {
        let amount = rate.amount();
        let period = rate.period_nanos();
        let interval = period.div_ceil(amount).max(1);
        let burst = burst.unwrap_or(amount);
        RateParams {
            rate,
            amount,
            period,
            interval,
            burst,
            tolerance: interval.saturating_mul(burst),
        }
    }
}
