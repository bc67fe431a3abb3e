//! The rate grammar: `"10/minute"`, `"10 per minute"`, `"5/5 minutes"`,
//! `"10/minute;100/hour"`.
//!
//! This module is the one implementation of the grammar. It depends on nothing but `core`
//! and `std`, so the `#[rate_limit]` attribute validates its string at compile time with
//! exactly the code that parses dynamic limits at run time.
//!
//! The grammar accepts everything Python's `limits` library accepts:
//!
//! ```text
//! rates  = rate { ("; " | "," | "|") rate }
//! rate   = amount ("/" | "per") [multiples] unit
//! unit   = second | minute | hour | day | month | year      (plural or not, any case)
//!        | millisecond | ms | s | m | min | h | d
//! ```
//!
//! A month is 30 days and a year 360 days (12 × 30), as in `limits`, whose own tests pin
//! `RateLimitItemPerYear(1).get_expiry()` at `60 * 60 * 24 * 30 * 12` seconds.
//!
//! ```
//! use ratelimit_core::rate::{parse_rates, Rate, Unit};
//!
//! let rates = parse_rates("10/minute; 100 per hour").unwrap();
//! assert_eq!(rates[0].amount(), 10);
//! assert_eq!(rates[1].period(), std::time::Duration::from_secs(3600));
//! assert_eq!(rates[0].to_string(), "10 per 1 minute");
//!
//! let err = "10/minut".parse::<Rate>().unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     r#"unknown unit "minut" at 3..8: expected one of second, minute, hour, day, month, year"#
//! );
//! ```

use std::fmt;
use std::num::NonZeroU64;
use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

/// A unit of time in the rate grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// A thousandth of a second (`ms`, `millisecond`).
    Millisecond,
    /// A second (`s`, `second`).
    Second,
    /// Sixty seconds (`m`, `min`, `minute`).
    Minute,
    /// Sixty minutes (`h`, `hour`).
    Hour,
    /// Twenty-four hours (`d`, `day`).
    Day,
    /// Thirty days, as in Python's `limits`.
    Month,
    /// Three hundred and sixty days (twelve 30-day months), as in Python's `limits`.
    Year,
}

impl Unit {
    /// Every unit, shortest first.
    pub const ALL: [Unit; 7] = [
        Unit::Millisecond,
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Month,
        Unit::Year,
    ];

    /// The unit's canonical (singular, long) name: `"minute"`.
    pub const fn name(self) -> &'static str {
        match self {
            Unit::Millisecond => "millisecond",
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// The unit's length in nanoseconds.
    pub const fn nanos(self) -> u64 {
        const MS: u64 = 1_000_000;
        const S: u64 = 1_000 * MS;
        const DAY: u64 = 86_400 * S;
        match self {
            Unit::Millisecond => MS,
            Unit::Second => S,
            Unit::Minute => 60 * S,
            Unit::Hour => 3_600 * S,
            Unit::Day => DAY,
            Unit::Month => 30 * DAY,
            Unit::Year => 360 * DAY,
        }
    }

    /// Looks a unit up by any of the names the grammar accepts, ignoring case.
    pub fn from_name(name: &str) -> Option<Unit> {
        let lower = name.to_ascii_lowercase();
        let unit = match lower.as_str() {
            "ms" | "millisecond" | "milliseconds" => Unit::Millisecond,
            "s" | "second" | "seconds" => Unit::Second,
            "m" | "min" | "minute" | "minutes" => Unit::Minute,
            "h" | "hour" | "hours" => Unit::Hour,
            "d" | "day" | "days" => Unit::Day,
            "month" | "months" => Unit::Month,
            "year" | "years" => Unit::Year,
            _ => return None,
        };
        Some(unit)
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One limit: `amount` requests per `multiples` × `unit`, such as 10 per 1 minute.
///
/// A `Rate` is never "one every N seconds": `Rate::parse("10/minute")` admits ten requests
/// in any minute, and its [`period`](Rate::period) is the minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    amount: NonZeroU64,
    multiples: NonZeroU64,
    unit: Unit,
}

impl Rate {
    /// `amount` requests per `multiples` × `unit`, or `None` when the period does not fit in
    /// 64 bits of nanoseconds (about 593 of its 360-day years).
    pub const fn new(amount: NonZeroU64, multiples: NonZeroU64, unit: Unit) -> Option<Rate> {
        match multiples.get().checked_mul(unit.nanos()) {
            Some(_) => Some(Rate {
                amount,
                multiples,
                unit,
            }),
            None => None,
        }
    }

    /// The same period with another amount.
    #[cfg_attr(not(feature = "runtime"), allow(dead_code))]
    pub(crate) const fn with_amount(self, amount: NonZeroU64) -> Rate {
        Rate { amount, ..self }
    }

    /// `amount` requests per one `unit`: `Rate::per(nonzero(10), Unit::Minute)`.
    pub const fn per(amount: NonZeroU64, unit: Unit) -> Rate {
        Rate {
            amount,
            multiples: NonZeroU64::MIN,
            unit,
        }
    }

    /// Parses exactly one rate, such as `"10/minute"`.
    pub fn parse(input: &str) -> Result<Rate, ParseError> {
        let rates = parse_rates(input)?;
        match rates.as_slice() {
            [rate] => Ok(*rate),
            _ => {
                let second = input.find([';', ',', '|']).unwrap_or(0);
                Err(ParseError::new(
                    ParseErrorKind::Trailing(input[second..].trim_end().to_owned()),
                    second..input.trim_end().len(),
                    Expected::One,
                ))
            }
        }
    }

    /// How many requests the rate admits per period.
    pub const fn amount(&self) -> u64 {
        self.amount.get()
    }

    /// How many units make the period (5 in `"5/5 minutes"`).
    pub const fn multiples(&self) -> u64 {
        self.multiples.get()
    }

    /// The unit the period is counted in.
    pub const fn unit(&self) -> Unit {
        self.unit
    }

    /// The period in nanoseconds.
    pub const fn period_nanos(&self) -> u64 {
        // `new` checked this product.
        self.multiples.get() * self.unit.nanos()
    }

    /// The period: a minute for `"10/minute"`, five minutes for `"2/5 minutes"`.
    pub const fn period(&self) -> Duration {
        Duration::from_nanos(self.period_nanos())
    }
}

impl fmt::Display for Rate {
    /// The canonical form, `10 per 1 minute` or `2 per 5 minutes`, which parses back to the
    /// same rate.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.multiples.get() == 1 { "" } else { "s" };
        write!(
            f,
            "{} per {} {}{}",
            self.amount,
            self.multiples,
            self.unit.name(),
            plural
        )
    }
}

impl FromStr for Rate {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Rate, ParseError> {
        Rate::parse(s)
    }
}

/// Parses a wait such as `"2s"`, `"500ms"` or `"2 seconds"` (`queue = "2s"` on the
/// attribute): a whole number and a unit of the grammar, at most a day.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_core::rate::parse_wait;
///
/// assert_eq!(parse_wait("2s"), Ok(Duration::from_secs(2)));
/// assert_eq!(parse_wait("750 ms"), Ok(Duration::from_millis(750)));
/// assert!(parse_wait("2 fortnights").unwrap_err().contains("unknown unit"));
/// ```
pub fn parse_wait(input: &str) -> Result<std::time::Duration, String> {
    let text = input.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "expected a whole number and a unit, such as \"2s\" or \"500ms\", not {input:?}"
        ));
    }
    let amount: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("{:?} is too large", &text[..digits]))?;
    let unit = text[digits..].trim();
    let unit = Unit::from_name(unit).ok_or_else(|| {
        format!("unknown unit {unit:?}: expected one of ms, s, second, minute (such as \"2s\")")
    })?;
    let nanos = amount
        .checked_mul(unit.nanos())
        .filter(|&n| n <= Unit::Day.nanos())
        .ok_or_else(|| {
            format!("{input:?} is longer than a day: a request cannot wait that long")
        })?;
    if nanos == 0 {
        return Err("a wait of zero: leave `queue` out to refuse at once".to_owned());
    }
    Ok(std::time::Duration::from_nanos(nanos))
}

/// Parses one or more rates joined by `;`, `,` or `|`.
///
/// Every rate must pass for a request to pass, so `"10/minute;100/hour"` admits at most ten
/// requests a minute and a hundred an hour.
pub fn parse_rates(input: &str) -> Result<Vec<Rate>, ParseError> {
    if input.trim().is_empty() {
        return Err(ParseError::new(
            ParseErrorKind::Empty,
            0..input.len(),
            Expected::Example,
        ));
    }
    let mut rates = Vec::new();
    let mut start = 0;
    for piece in input.split([';', ',', '|']) {
        rates.push(parse_one(input, start..start + piece.len())?);
        start += piece.len() + 1;
    }
    Ok(rates)
}

/// Parses the rate in `input[range]`; spans in errors are offsets into `input`.
fn parse_one(input: &str, range: Range<usize>) -> Result<Rate, ParseError> {
    let mut cur = Cursor {
        input,
        pos: range.start,
        end: range.end,
    };
    cur.skip_space();
    if cur.at_end() {
        return Err(ParseError::new(
            ParseErrorKind::EmptyLimit,
            cur.pos..cur.pos,
            Expected::Example,
        ));
    }

    let amount_span = cur.take_while(|c| c.is_ascii_digit());
    if amount_span.is_empty() {
        let found = cur.word();
        return Err(ParseError::new(
            ParseErrorKind::Unexpected(input[found.clone()].to_owned()),
            found,
            Expected::Amount,
        ));
    }
    let amount = number(input, amount_span.clone(), ParseErrorKind::ZeroAmount)?;

    cur.skip_space();
    if !cur.eat("/") && !cur.eat_ignore_case("per") {
        let found = cur.word();
        let kind = if found.is_empty() {
            ParseErrorKind::Missing("\"/\" or \"per\"")
        } else {
            ParseErrorKind::Unexpected(input[found.clone()].to_owned())
        };
        return Err(ParseError::new(kind, found, Expected::Per));
    }

    cur.skip_space();
    let multiples_span = cur.take_while(|c| c.is_ascii_digit());
    let multiples = if multiples_span.is_empty() {
        NonZeroU64::MIN
    } else {
        number(input, multiples_span.clone(), ParseErrorKind::ZeroPeriod)?
    };

    cur.skip_space();
    let unit_span = cur.take_while(|c| c.is_ascii_alphabetic());
    if unit_span.is_empty() {
        let found = cur.word();
        let kind = if found.is_empty() {
            ParseErrorKind::Missing("unit")
        } else {
            ParseErrorKind::Unexpected(input[found.clone()].to_owned())
        };
        return Err(ParseError::new(kind, found, Expected::Unit));
    }
    let unit_text = &input[unit_span.clone()];
    let Some(unit) = Unit::from_name(unit_text) else {
        return Err(ParseError::new(
            ParseErrorKind::UnknownUnit(unit_text.to_owned()),
            unit_span,
            Expected::Unit,
        ));
    };

    cur.skip_space();
    if !cur.at_end() {
        let rest = cur.pos..input[..cur.end].trim_end().len();
        return Err(ParseError::new(
            ParseErrorKind::Unexpected(input[rest.clone()].to_owned()),
            rest,
            Expected::Separator,
        ));
    }

    let period_span = if multiples_span.is_empty() {
        unit_span
    } else {
        multiples_span.start..unit_span.end
    };
    Rate::new(amount, multiples, unit).ok_or_else(|| {
        ParseError::new(ParseErrorKind::PeriodTooLong, period_span, Expected::Period)
    })
}

fn number(input: &str, span: Range<usize>, zero: ParseErrorKind) -> Result<NonZeroU64, ParseError> {
    match input[span.clone()].parse::<u64>() {
        Ok(0) => Err(ParseError::new(zero, span, Expected::NonZero)),
        Ok(n) => Ok(NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN)),
        Err(_) => Err(ParseError::new(
            ParseErrorKind::NumberTooLarge,
            span,
            Expected::Fits,
        )),
    }
}

struct Cursor<'a> {
    input: &'a str,
    pos: usize,
    end: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        &self.input[self.pos..self.end]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    fn skip_space(&mut self) {
        self.take_while(char::is_whitespace);
    }

    fn take_while(&mut self, pred: impl Fn(char) -> bool) -> Range<usize> {
        let start = self.pos;
        let len = self
            .rest()
            .find(|c: char| !pred(c))
            .unwrap_or(self.rest().len());
        self.pos += len;
        start..self.pos
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn eat_ignore_case(&mut self, token: &str) -> bool {
        let rest = self.rest().as_bytes();
        if rest.len() >= token.len() && rest[..token.len()].eq_ignore_ascii_case(token.as_bytes()) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// The span of the token at the cursor (up to white space), without moving.
    fn word(&self) -> Range<usize> {
        let len = self
            .rest()
            .find(char::is_whitespace)
            .unwrap_or(self.rest().len());
        self.pos..self.pos + len
    }
}

/// Why a rate string did not parse, and where.
///
/// Its `Display` names the problem, the byte range in the input, and what was expected:
/// `unknown unit "minut" at 3..8: expected one of second, minute, hour, day, month, year`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    kind: ParseErrorKind,
    span: Range<usize>,
    expected: Expected,
}

/// The kind of problem a [`ParseError`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The input holds no rate at all.
    Empty,
    /// Two separators with nothing between them, or one at either end.
    EmptyLimit,
    /// A token that does not belong where it stands.
    Unexpected(String),
    /// Something required is missing.
    Missing(&'static str),
    /// A unit name the grammar does not know.
    UnknownUnit(String),
    /// A rate that admits no request.
    ZeroAmount,
    /// A period of zero units.
    ZeroPeriod,
    /// A number beyond 64 bits.
    NumberTooLarge,
    /// A period beyond 64 bits of nanoseconds (about 593 of its 360-day years).
    PeriodTooLong,
    /// More than one rate where exactly one was asked for.
    Trailing(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expected {
    Example,
    Amount,
    Per,
    Unit,
    Separator,
    NonZero,
    Fits,
    Period,
    One,
}

impl ParseError {
    fn new(kind: ParseErrorKind, span: Range<usize>, expected: Expected) -> ParseError {
        ParseError {
            kind,
            span,
            expected,
        }
    }

    /// The byte range of the input that the error points at.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// What went wrong.
    pub fn kind(&self) -> &ParseErrorKind {
        &self.kind
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ParseErrorKind::Empty => f.write_str("empty rate")?,
            ParseErrorKind::EmptyLimit => f.write_str("empty limit")?,
            ParseErrorKind::Unexpected(found) | ParseErrorKind::Trailing(found) => {
                write!(f, "unexpected {found:?}")?
            }
            ParseErrorKind::Missing(what) => write!(f, "missing {what}")?,
            ParseErrorKind::UnknownUnit(found) => write!(f, "unknown unit {found:?}")?,
            ParseErrorKind::ZeroAmount => f.write_str("zero amount")?,
            ParseErrorKind::ZeroPeriod => f.write_str("zero period")?,
            ParseErrorKind::NumberTooLarge => f.write_str("number too large")?,
            ParseErrorKind::PeriodTooLong => f.write_str("period too long")?,
        }
        write!(f, " at {}..{}: expected ", self.span.start, self.span.end)?;
        f.write_str(match self.expected {
            Expected::Example => "a limit such as \"10/minute\"",
            Expected::Amount => "a number of requests, as in \"10/minute\"",
            Expected::Per => "\"/\" or \"per\" after the number, as in \"10/minute\"",
            Expected::Unit => "one of second, minute, hour, day, month, year",
            Expected::Separator => "\";\", \",\" or \"|\" between limits",
            Expected::NonZero => "a number of at least 1",
            Expected::Fits => "a number below 2^64",
            Expected::Period => "a period of at most 593 years",
            Expected::One => "exactly one limit",
        })
    }
}

impl std::error::Error for ParseError {}
