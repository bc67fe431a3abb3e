//! The 429 answer and the rate limit headers.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use axum::body::Bytes;

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
        match &self.message {
            Some(message) => Cow::Borrowed(message),
            None => Cow::Owned(detail(&self.decision)),
        }
    }
}

/// What the rate limiting extractors answer instead of running the handler.
#[derive(Debug)]
pub struct Rejection(Box<Response>);

impl Rejection {
    /// The default 429: the detail, `Retry-After` and the rate limit fields.
    pub(crate) fn limited(
        decision: &Decision,
        message: Option<&str>,
        style: HeaderStyle,
    ) -> Rejection {
        let body = match message {
            Some(message) => json_body(message),
            None => json_body(&detail(decision)),
        };
        let mut response = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(retry) = decision.retry_after() {
            headers.insert(RETRY_AFTER, HeaderValue::from(whole_seconds(retry).max(1)));
        }
        insert_headers(headers, decision, style);
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

/// `Rate limit exceeded: 10 per 1 minute`, or why waiting will not help.
fn detail(decision: &Decision) -> String {
    let rate = decision.rate();
    if decision.exceeds_capacity() {
        format!("Rate limit exceeded: this request costs more than {rate} allows")
    } else {
        format!("Rate limit exceeded: {rate}")
    }
}

/// `{"detail": ...}`.
fn json_body(detail: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "detail": detail }).to_string())
}

/// `{"detail": ...}` with `status`.
fn json(status: StatusCode, detail: &str) -> Response {
    let mut response = (status, json_body(detail)).into_response();
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
        // `"10-per-1m"`: the policy's name, in both fields.
        let mut name = StackText::<48>::new();
        let _ = write!(
            name,
            "\"{}-per-{}{}\"",
            rate.amount(),
            rate.multiples(),
            short_unit(rate.unit())
        );
        let window = whole_seconds(rate.period()).max(1);
        let mut policy = StackText::<96>::new();
        let mut current = StackText::<96>::new();
        let _ = policy.write_bytes(name.as_bytes());
        let _ = write!(policy, ";q={};w={window}", rate.amount());
        let _ = current.write_bytes(name.as_bytes());
        let _ = write!(current, ";r={};t={reset}", decision.remaining());
        if let (Ok(policy), Ok(current)) = (
            HeaderValue::from_bytes(policy.as_bytes()),
            HeaderValue::from_bytes(current.as_bytes()),
        ) {
            headers.insert(RATELIMIT_POLICY.clone(), policy);
            headers.insert(RATELIMIT.clone(), current);
        }
    }
    if matches!(style, HeaderStyle::Both | HeaderStyle::Legacy) {
        // A Unix time, as slowapi and GitHub send it: now plus the reset, rounded up.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        headers.insert(X_LIMIT.clone(), small_number(rate.amount()));
        headers.insert(X_REMAINING.clone(), small_number(decision.remaining()));
        headers.insert(
            X_RESET.clone(),
            HeaderValue::from(whole_seconds(now.saturating_add(decision.reset_after()))),
        );
    }
}

/// `n` as a header value; the first thousand numbers are made once and shared.
fn small_number(n: u64) -> HeaderValue {
    // Static values clone without touching a shared reference count; the table is made
    // once per process and kept for its life.
    static SMALL: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
        (0..1000u64)
            .map(|n| HeaderValue::from_static(Box::leak(n.to_string().into_boxed_str())))
            .collect()
    });
    SMALL
        .get(n as usize)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

/// Text formatted on the stack.
#[derive(Clone, Debug)]
pub(crate) struct StackText<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    fn new() -> Self {
        StackText {
            buf: [0; N],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> std::fmt::Result {
        let end = self.len + bytes.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }
}

impl<const N: usize> std::fmt::Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
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
