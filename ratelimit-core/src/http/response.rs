//! The 429 answer and the rate limit headers.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::decision::Decision;

/// Which rate limit headers go on limited responses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// The IETF draft's `RateLimit-Policy` and `RateLimit` (draft-11 syntax) and the legacy
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (the default).
    #[default]
    Both,
    /// Only the IETF draft's fields.
    Draft,
    /// Only the legacy `X-RateLimit-*` fields (`X-RateLimit-Reset` in Unix seconds, as
    /// slowapi and GitHub send it).
    Legacy,
    /// No rate limit headers (a 429 still carries `Retry-After`).
    None,
}

/// A refused request, as a custom rejection handler sees it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RateLimited {
    /// The refusal, with the binding rate and when to retry.
    pub decision: Decision,
    /// The matched route (or the handler's path when the request matched no route).
    pub route: String,
    /// The key that was counted.
    pub key: String,
    /// The client's address, when the key is the client IP.
    pub client: Option<IpAddr>,
    /// The attribute's `error_message`, if any.
    pub message: Option<Cow<'static, str>>,
}

impl RateLimited {
    /// The `detail` of the default answer: `Rate limit exceeded: 10 per 1 minute`, or the
    /// attribute's `error_message`.
    pub fn detail(&self) -> Cow<'_, str> {
        if let Some(message) = &self.message {
            return Cow::Borrowed(message);
        }
        let rate = self.decision.rate();
        if self.decision.exceeds_capacity() {
            Cow::Owned(format!(
                "Rate limit exceeded: this request costs more than {rate} allows"
            ))
        } else {
            Cow::Owned(format!("Rate limit exceeded: {rate}"))
        }
    }
}

/// What the rate limiting extractors answer instead of running the handler.
#[derive(Debug)]
pub struct Rejection(Box<Response>);

impl Rejection {
    pub(crate) fn limited(limited: RateLimited, style: HeaderStyle) -> Rejection {
        let mut response = json(StatusCode::TOO_MANY_REQUESTS, &limited.detail());
        let headers = response.headers_mut();
        if let Some(retry) = limited.decision.retry_after() {
            headers.insert(RETRY_AFTER, HeaderValue::from(whole_seconds(retry).max(1)));
        }
        insert_headers(headers, &limited.decision, style);
        Rejection(Box::new(response))
    }

    pub(crate) fn custom(response: Response) -> Rejection {
        Rejection(Box::new(response))
    }

    pub(crate) fn misconfigured() -> Rejection {
        Rejection(Box::new(json(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Rate limiting by client IP is misconfigured: the server does not provide the client address",
        )))
    }

    pub(crate) fn store_failed() -> Rejection {
        Rejection(Box::new(json(
            StatusCode::SERVICE_UNAVAILABLE,
            "Rate limiting is unavailable; try again shortly",
        )))
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// `{"detail": ...}` with `status`.
fn json(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({ "detail": detail }).to_string();
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Adds the rate limit fields of `decision` to `headers`.
pub(crate) fn insert_headers(headers: &mut HeaderMap, decision: &Decision, style: HeaderStyle) {
    let rate = decision.rate();
    let reset = whole_seconds(decision.reset_after());
    if matches!(style, HeaderStyle::Both | HeaderStyle::Draft) {
        let mut name = String::with_capacity(24);
        let _ = write!(
            name,
            "\"{}-per-{}{}\"",
            rate.amount(),
            rate.multiples(),
            short_unit(rate.unit())
        );
        let window = whole_seconds(rate.period()).max(1);
        let policy = format!("{name};q={};w={window}", rate.amount());
        let current = format!("{name};r={};t={reset}", decision.remaining());
        if let (Ok(policy), Ok(current)) = (
            HeaderValue::from_str(&policy),
            HeaderValue::from_str(&current),
        ) {
            headers.insert(RATELIMIT_POLICY.clone(), policy);
            headers.insert(RATELIMIT.clone(), current);
        }
    }
    if matches!(style, HeaderStyle::Both | HeaderStyle::Legacy) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        headers.insert(X_LIMIT.clone(), HeaderValue::from(rate.amount()));
        headers.insert(X_REMAINING.clone(), HeaderValue::from(decision.remaining()));
        headers.insert(
            X_RESET.clone(),
            HeaderValue::from(whole_seconds(now + decision.reset_after())),
        );
    }
}

fn short_unit(unit: crate::rate::Unit) -> &'static str {
    use crate::rate::Unit;
    match unit {
        Unit::Millisecond => "ms",
        Unit::Second => "s",
        Unit::Minute => "m",
        Unit::Hour => "h",
        Unit::Day => "d",
        Unit::Month => "mo",
        Unit::Year => "y",
    }
}
