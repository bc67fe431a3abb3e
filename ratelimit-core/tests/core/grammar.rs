//! The rate grammar, table-driven: Python `limits`' own examples, our short units, the
//! canonical display, and every error message.

use std::time::Duration;

use ratelimit_core::rate::{Rate, parse_rates};

const S: u64 = 1;
const MIN: u64 = 60;
const H: u64 = 3_600;
const D: u64 = 86_400;

/// `(input, [(amount, period in seconds)])`.
const ACCEPTED: &[(&str, &[(u64, u64)])] = &[
    // limits' test_singles
    ("1 per second", &[(1, S)]),
    ("1/SECOND", &[(1, S)]),
    ("1 / Second", &[(1, S)]),
    ("1 per minute", &[(1, MIN)]),
    ("1/MINUTE", &[(1, MIN)]),
    ("1/Minute", &[(1, MIN)]),
    ("1 per hour", &[(1, H)]),
    ("1/HOUR", &[(1, H)]),
    ("1/Hour", &[(1, H)]),
    ("1 per day", &[(1, D)]),
    ("1/DAY", &[(1, D)]),
    ("1 / Day", &[(1, D)]),
    ("1 per month", &[(1, 30 * D)]),
    ("1/MONTH", &[(1, 30 * D)]),
    ("1 / Month", &[(1, 30 * D)]),
    ("1 per year", &[(1, 360 * D)]),
    ("1/Year", &[(1, 360 * D)]),
    ("1 / year", &[(1, 360 * D)]),
    // limits' test_multiples
    ("1 per 3 hour", &[(1, 3 * H)]),
    ("1 per 2 hours", &[(1, 2 * H)]),
    ("1/2 day", &[(1, 2 * D)]),
    ("1/2 days", &[(1, 2 * D)]),
    ("5/5 minutes", &[(5, 5 * MIN)]),
    ("10 per minute", &[(10, MIN)]),
    ("10/minute", &[(10, MIN)]),
    ("10/2seconds", &[(10, 2 * S)]),
    ("10per minute", &[(10, MIN)]),
    // limits' test_many
    ("1 per 3 hour, 1 per day", &[(1, 3 * H), (1, D)]),
    ("1 per 2 hours; 1 per day", &[(1, 2 * H), (1, D)]),
    ("1 per 2 hours | 1 per day", &[(1, 2 * H), (1, D)]),
    ("10/minute;100/hour", &[(10, MIN), (100, H)]),
    (
        "10/minute , 100/hour | 1000/day",
        &[(10, MIN), (100, H), (1000, D)],
    ),
    // short units
    ("10/s", &[(10, S)]),
    ("10/m", &[(10, MIN)]),
    ("10/min", &[(10, MIN)]),
    ("10/5 MIN", &[(10, 5 * MIN)]),
    ("10/h", &[(10, H)]),
    ("3/d", &[(3, D)]),
    ("  7 PER 2 Hours  ", &[(7, 2 * H)]),
];

#[test]
fn accepts_what_limits_accepts_and_the_short_units() {
    for (input, expected) in ACCEPTED {
        let rates = parse_rates(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        let got: Vec<(u64, u64)> = rates
            .iter()
            .map(|r| (r.amount(), r.period().as_secs()))
            .collect();
        assert_eq!(&got, expected, "{input:?}");
    }
}

#[test]
fn milliseconds() {
    let rate = Rate::parse("100/250ms").unwrap();
    assert_eq!(rate.amount(), 100);
    assert_eq!(rate.period(), Duration::from_millis(250));
    assert_eq!(rate.to_string(), "100 per 250 milliseconds");
    assert_eq!(
        Rate::parse("1 per millisecond").unwrap().period(),
        Duration::from_millis(1)
    );
}

#[test]
fn displays_canonically_and_parses_back() {
    for (input, canonical) in [
        ("10/minute", "10 per 1 minute"),
        ("10/MINUTES", "10 per 1 minute"),
        ("2/5 minutes", "2 per 5 minutes"),
        ("5 per 2 h", "5 per 2 hours"),
        ("1/s", "1 per 1 second"),
        ("3/d", "3 per 1 day"),
        ("1/month", "1 per 1 month"),
        ("1/2 years", "1 per 2 years"),
    ] {
        let rate = Rate::parse(input).unwrap();
        assert_eq!(rate.to_string(), canonical, "{input:?}");
        assert_eq!(
            Rate::parse(canonical).unwrap(),
            rate,
            "{canonical:?} round trip"
        );
    }
}

const REJECTED: &[(&str, &str)] = &[
    (
        "10/minut",
        r#"unknown unit "minut" at 3..8: expected one of second, minute, hour, day, month, year"#,
    ),
    (
        "10 per fortnight",
        r#"unknown unit "fortnight" at 7..16: expected one of second, minute, hour, day, month, year"#,
    ),
    (
        "10/",
        "missing unit at 3..3: expected one of second, minute, hour, day, month, year",
    ),
    (
        "10/5",
        "missing unit at 4..4: expected one of second, minute, hour, day, month, year",
    ),
    (
        "10/ *",
        r#"unexpected "*" at 4..5: expected one of second, minute, hour, day, month, year"#,
    ),
    (
        "ten/minute",
        r#"unexpected "ten/minute" at 0..10: expected a number of requests, as in "10/minute""#,
    ),
    (
        "-1/minute",
        r#"unexpected "-1/minute" at 0..9: expected a number of requests, as in "10/minute""#,
    ),
    (
        "10 minute",
        r#"unexpected "minute" at 3..9: expected "/" or "per" after the number, as in "10/minute""#,
    ),
    (
        "10",
        r#"missing "/" or "per" at 2..2: expected "/" or "per" after the number, as in "10/minute""#,
    ),
    (
        "0/minute",
        "zero amount at 0..1: expected a number of at least 1",
    ),
    (
        "10/0 minutes",
        "zero period at 3..4: expected a number of at least 1",
    ),
    (
        "99999999999999999999/second",
        "number too large at 0..20: expected a number below 2^64",
    ),
    (
        "1/99999999999999999999 seconds",
        "number too large at 2..22: expected a number below 2^64",
    ),
    (
        "1/600 years",
        "period too long at 2..11: expected a period of at most 593 years",
    ),
    (
        "",
        "empty rate at 0..0: expected a limit such as \"10/minute\"",
    ),
    (
        "   ",
        "empty rate at 0..3: expected a limit such as \"10/minute\"",
    ),
    (
        "10/minute;",
        "empty limit at 10..10: expected a limit such as \"10/minute\"",
    ),
    (
        "10/minute;;1/day",
        "empty limit at 10..10: expected a limit such as \"10/minute\"",
    ),
    (
        "10/minute extra",
        r#"unexpected "extra" at 10..15: expected ";", "," or "|" between limits"#,
    ),
    (
        "10/minute 5/hour",
        r#"unexpected "5/hour" at 10..16: expected ";", "," or "|" between limits"#,
    ),
];

#[test]
fn rejects_with_where_and_what_was_expected() {
    for (input, message) in REJECTED {
        let err = parse_rates(input).expect_err(input);
        assert_eq!(&err.to_string(), message, "{input:?}");
        let span = err.span();
        assert!(
            span.start <= span.end && span.end <= input.len(),
            "{input:?}: span {span:?}"
        );
    }
}

#[test]
fn a_single_rate_refuses_a_list() {
    let err = Rate::parse("10/minute;100/hour").unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"unexpected ";100/hour" at 9..18: expected exactly one limit"#
    );
}
