//! Validation: each attribute's arguments checked once and turned into typed options, which
//! the expansion never checks or parses again.

use std::num::{NonZeroU32, NonZeroU64};
use std::str::FromStr;

use proc_macro2::Span;
use quote::ToTokens;
use ratelimit_core::Algorithm;
use ratelimit_core::rate::parse_rates;
use syn::{Expr, LitStr, Path};

use crate::attr::{Args, CapacityArg, Errors, KeyArg, LimitsArg};

/// A value with the span of the tokens it was checked from.
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// What limits a request, checked.
pub(crate) enum Limits {
    /// A string in the rate grammar.
    Literal(LitStr),
    /// A function of the request parts returning its limits.
    Function(Path),
}

/// Who is counted, checked.
pub(crate) enum Key {
    Ip,
    Global,
    /// The header's name, lowercase (as `HeaderName::from_static` needs it).
    Header(String),
    Function(Path),
}

/// A route's capacity, checked.
pub(crate) enum Capacity {
    Adaptive { min: u32, max: u32 },
    Fixed(u32),
}

/// One attribute, checked.
pub(crate) struct Options {
    pub(crate) limits: Limits,
    pub(crate) key: Option<Key>,
    pub(crate) scope: Option<LitStr>,
    pub(crate) algorithm: Option<Spanned<Algorithm>>,
    pub(crate) burst: Option<NonZeroU64>,
    /// The cost, or with `reserve =` the estimate to reserve.
    pub(crate) cost: Option<Expr>,
    /// `reserve =`: where it was given; the handler settles the reservation.
    pub(crate) reserves: Option<Span>,
    pub(crate) concurrency: Option<NonZeroU32>,
    pub(crate) capacity: Option<Capacity>,
    /// `queue =`, in nanoseconds.
    pub(crate) queue: Option<u64>,
    pub(crate) exempt_when: Option<Path>,
    pub(crate) error_message: Option<LitStr>,
    pub(crate) krate: Option<Path>,
}

/// Checks `args`, adding what is wrong to `errors`.
pub(crate) fn validate(args: Args, errors: &mut Errors) -> Options {
    let limits = limits(args.limits, errors);
    let algorithm = args.algorithm.map(|(_, name)| algorithm(&name, errors));
    let burst = args.burst.and_then(|(_, burst)| {
        if algorithm.as_ref().is_some_and(|a| !a.value.has_burst()) {
            let algorithm = algorithm.as_ref().map(|a| a.value).unwrap_or_default();
            errors.spanned(
                &burst,
                format!(
                    "`burst` applies to `gcra` only: `{algorithm}` admits its amount per window"
                ),
            );
        }
        match burst.base10_parse::<u64>().ok().map(NonZeroU64::new) {
            Some(Some(value)) => Some(value),
            Some(None) => {
                errors.spanned(&burst, "zero burst: expected at least 1");
                None
            }
            None => {
                errors.spanned(&burst, "invalid burst: expected a whole number below 2^64");
                None
            }
        }
    });
    Options {
        limits,
        key: args.key.map(|(_, key)| self::key(key, errors)),
        scope: args.scope.map(|(_, scope)| {
            non_empty(
                &scope,
                "empty scope: expected a name such as \"inference\"",
                errors,
            );
            scope
        }),
        algorithm,
        burst,
        reserves: args.reserve.as_ref().map(|(keyword, _)| keyword.span),
        cost: match (args.cost, args.reserve) {
            (Some((_, cost)), Some((keyword, _))) => {
                errors.spanned(
                    keyword,
                    "`reserve` is this request's cost as an estimate, settled by the handler: give `cost` or `reserve`, not both",
                );
                Some(cost)
            }
            (cost, reserve) => cost
                .map(|(_, cost)| cost)
                .or(reserve.map(|(_, estimate)| estimate)),
        },
        concurrency: args.concurrency.as_ref().and_then(|(_, slots)| {
            match slots.base10_parse::<u32>().ok().map(NonZeroU32::new) {
                Some(Some(value)) => Some(value),
                Some(None) => {
                    errors.spanned(
                        slots,
                        "zero concurrency: expected at least 1 request in flight per key",
                    );
                    None
                }
                None => {
                    errors.spanned(
                        slots,
                        "invalid concurrency: expected a whole number of requests in flight, below 2^32",
                    );
                    None
                }
            }
        }),
        queue: args.queue.and_then(|(keyword, wait)| {
            if args.capacity.is_none() && args.concurrency.is_none() {
                errors.spanned(
                    keyword,
                    "`queue` is how long a request waits for `capacity` or a `concurrency` slot: give one of them",
                );
            }
            match ratelimit_core::rate::parse_wait(&wait.value()) {
                Ok(wait) => Some(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX)),
                Err(e) => {
                    errors.spanned(&wait, format!("invalid queue wait: {e}"));
                    None
                }
            }
        }),
        capacity: args.capacity.and_then(|(_, capacity)| self::capacity(capacity, errors)),
        exempt_when: args.exempt_when.map(|(_, path)| path),
        error_message: args.error_message.map(|(_, message)| {
            non_empty(
                &message,
                "empty error message: expected the text of the 429 answer",
                errors,
            );
            message
        }),
        krate: args.krate.map(|(_, path)| path),
    }
}

/// One of the core's algorithm names: the one table of them.
fn algorithm(name: &syn::Ident, errors: &mut Errors) -> Spanned<Algorithm> {
    let value = Algorithm::from_str(&name.to_string()).unwrap_or_else(|_| {
        let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
        errors.spanned(
            name,
            format!(
                "unknown algorithm `{name}`: expected one of {}",
                names.join(", ")
            ),
        );
        Algorithm::default()
    });
    Spanned {
        value,
        span: name.span(),
    }
}

fn limits(limits: LimitsArg, errors: &mut Errors) -> Limits {
    match limits {
        LimitsArg::Literal(lit) => {
            if let Err(e) = parse_rates(&lit.value()) {
                errors.spanned(&lit, format!("invalid rate limit: {e}"));
            }
            Limits::Literal(lit)
        }
        LimitsArg::Function(path) => Limits::Function(path),
    }
}

fn key(key: KeyArg, errors: &mut Errors) -> Key {
    match key {
        KeyArg::Ip => Key::Ip,
        KeyArg::Global => Key::Global,
        KeyArg::Function(path) => Key::Function(path),
        KeyArg::Header(name) => {
            let value = name.value();
            if value.is_empty() {
                errors.spanned(
                    &name,
                    "empty header name: expected a header such as \"X-API-Key\"",
                );
            } else if !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                errors.spanned(
                    &name,
                    format!("invalid header name {value:?}: expected letters, digits and `-`, such as \"X-API-Key\""),
                );
            }
            Key::Header(value.to_ascii_lowercase())
        }
    }
}

fn non_empty(value: &LitStr, message: &str, errors: &mut Errors) {
    if value.value().trim().is_empty() {
        errors.spanned(value, message);
    }
}

/// `adaptive`, `adaptive(min = A, max = B)` or `N`: at least 1, `min` at most `max`.
fn capacity(capacity: CapacityArg, errors: &mut Errors) -> Option<Capacity> {
    let count = |lit: &syn::LitInt, what: &str, errors: &mut Errors| match lit.base10_parse::<u32>()
    {
        Ok(0) => {
            errors.spanned(
                lit,
                format!("zero {what}: expected at least 1 request in flight"),
            );
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            errors.spanned(
                lit,
                format!(
                    "invalid {what}: expected a whole number of requests in flight, below 2^32"
                ),
            );
            None
        }
    };
    match capacity {
        CapacityArg::Fixed(lit) => count(&lit, "capacity", errors).map(Capacity::Fixed),
        CapacityArg::Adaptive { keyword, min, max } => {
            let low = match &min {
                Some(lit) => count(lit, "minimum", errors)?,
                None => 1,
            };
            let high = match &max {
                Some(lit) => count(lit, "maximum", errors)?,
                None => 256.max(low),
            };
            if low > high {
                errors.spanned(
                    max.as_ref()
                        .map_or_else(|| keyword.to_token_stream(), |m| m.to_token_stream()),
                    format!("the adaptive capacity's `max` ({high}) is below its `min` ({low})"),
                );
                return None;
            }
            Some(Capacity::Adaptive {
                min: low,
                max: high,
            })
        }
    }
}
