//! The 429 answer and the rate limit headers.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::decision::Decision;
use crate::rate::Rate;

/// Which rate limit headers go on limited responses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// The IETF draft's `RateLimit-Policy` and `RateLimit` (draft-11 syntax) and the legacy
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    Both,
    /// Only the IETF draft's fields (the default): the standard's pair, which names every
    /// budget of a route (a reserving route's tokens too) in two fields.
    #[default]
    Draft,
    /// Only the legacy `X-RateLimit-*` fields (`X-RateLimit-Reset` in Unix seconds, as
    /// slowapi and GitHub send it).
    Legacy,
    /// Only the fields large-model API clients read, one set per budget of a route that
    /// reserves (`reserve =`): `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`,
    /// `x-ratelimit-reset-requests` (`1s`, `6m0s`) and the same with `-tokens` for the
    /// reserved budget. (`Both` sends them too, beside the others.)
    OpenAi,
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
            None => default_body(decision),
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let headers = response.headers_mut();
        // Content-Type, Retry-After, the five rate limit fields and hyper's `Content-Length`:
        // one allocation.
        headers.reserve(8);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(retry) = decision.retry_after() {
            headers.insert(RETRY_AFTER, HeaderValue::from(whole_seconds(retry).max(1)));
        }
        insert_headers(headers, decision, style);
        Rejection(Box::new(response))
    }

    /// An answer of `status` with the JSON body `{"detail": detail}` (FastAPI's shape), for
    /// key functions that refuse a request.
    pub fn new(status: StatusCode, detail: &str) -> Rejection {
        Rejection(Box::new(json(status, detail)))
    }

    /// `401 {"detail": "unknown API key"}`: a key that no lookup knows is not a budget.
    pub(crate) fn unknown_api_key() -> Rejection {
        let mut response = json(StatusCode::UNAUTHORIZED, "unknown API key");
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("ApiKey"),
        );
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

    /// The 429 of a request that found every concurrency slot of its key taken: it was
    /// charged nothing, and a slot is likely free within a second.
    pub(crate) fn no_slot(limit: u32, message: Option<&str>) -> Rejection {
        let detail = match message {
            Some(message) => message.to_owned(),
            None => format!(
                "Too many concurrent requests: at most {limit} in flight per client; retry when one completes"
            ),
        };
        let mut response = json(StatusCode::TOO_MANY_REQUESTS, &detail);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        Rejection(Box::new(response))
    }

    /// The 503 of a request shed because the route (the model) is at capacity: the server is
    /// overloaded, the client did nothing wrong. `Retry-After` is about how long the requests
    /// waiting now take to be served.
    pub(crate) fn overloaded(
        shed: crate::Shed,
        stats: &crate::CapacityStats,
        waited: Option<Duration>,
    ) -> Rejection {
        let limit = stats.limit.unwrap_or(u32::MAX).max(1);
        let drain = stats
            .latency
            .mul_f64(f64::from(stats.queued + 1) / f64::from(limit));
        let retry = whole_seconds(drain).clamp(1, 60);
        let why = match shed {
            crate::Shed::Timeout => format!(
                "waited {} ms for one of its {limit} slots",
                waited.unwrap_or_default().as_millis()
            ),
            crate::Shed::QueueFull => {
                format!("all {limit} of its slots are busy and the queue is full")
            }
            crate::Shed::Full => format!("all {limit} of its slots are busy"),
        };
        let detail = format!(
            "The server is overloaded: this model is at capacity ({why}); retry in {retry} s"
        );
        let mut response = json(StatusCode::SERVICE_UNAVAILABLE, &detail);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry));
        Rejection(Box::new(response))
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

/// The default 429 body of `decision`'s rate, made once per rate on each thread: a refused
/// request then costs a reference count on memory this thread owns, not a serialization.
fn default_body(decision: &Decision) -> Bytes {
    type Bodies = RefCell<Vec<((Rate, bool), Bytes)>>;
    thread_local! {
        static BODIES: Bodies = const { RefCell::new(Vec::new()) };
    }
    /// Enough for every rate of a real application; beyond it, bodies are made each time.
    const KEPT: usize = 32;
    let key = (decision.rate(), decision.exceeds_capacity());
    BODIES.with(|bodies| {
        let mut bodies = bodies.borrow_mut();
        if let Some((_, body)) = bodies.iter().find(|(k, _)| *k == key) {
            return body.clone();
        }
        let body = json_body(&detail(decision));
        if bodies.len() < KEPT {
            bodies.push((key, body.clone()));
        }
        body
    })
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

/// Adds the rate limit fields of `decision` to `headers`. The fields that depend on the rate
/// alone (`RateLimit-Policy`, `X-RateLimit-Limit`) are made once per rate and thread and
/// cloned after; the rest is formatted by hand into stack buffers (the formatting machinery
/// cost more than the rest of the check).
pub(crate) fn insert_headers(headers: &mut HeaderMap, decision: &Decision, style: HeaderStyle) {
    let (draft, legacy) = match style {
        HeaderStyle::Both => (true, true),
        HeaderStyle::Draft => (true, false),
        HeaderStyle::Legacy => (false, true),
        HeaderStyle::OpenAi => return insert_budget_headers(headers, Some(decision), None, style),
        HeaderStyle::None => return,
    };
    // Room for the fields and for the `Content-Length` hyper adds after: one growth of the
    // map at most (the map grows at three quarters full).
    headers.reserve(if draft && legacy { 6 } else { 3 });
    let reset = whole_seconds(decision.reset_after());
    RATE_FIELDS.with_borrow_mut(|cache| {
        let fields = cache.get(decision.rate());
        if draft {
            // `"10-per-1m";r=9;t=6`
            let mut current = StackText::<128>::new();
            current.push(fields.name.as_bytes());
            current.push(b";r=");
            current.number(decision.remaining());
            current.push(b";t=");
            current.number(reset);
            if let Ok(current) = HeaderValue::from_bytes(current.as_bytes()) {
                headers.insert(RATELIMIT_POLICY.clone(), fields.policy.clone());
                headers.insert(RATELIMIT.clone(), current);
            }
        }
        if legacy {
            headers.insert(X_LIMIT.clone(), fields.limit.clone());
        }
    });
    if legacy {
        headers.insert(X_REMAINING.clone(), small_number(decision.remaining()));
        headers.insert(X_RESET.clone(), unix_reset(decision.reset_after()));
    }
}

/// The fields of one rate: the same on every response it limits.
struct RateFields {
    rate: Rate,
    /// `"10-per-1m"`: the policy's name, in both draft fields.
    name: StackText<64>,
    /// `"10-per-1m";q=10;w=60`
    policy: HeaderValue,
    /// `10`
    limit: HeaderValue,
}

impl RateFields {
    fn new(rate: Rate) -> RateFields {
        let mut name = StackText::new();
        name.push(b"\"");
        name.number(rate.amount());
        name.push(b"-per-");
        name.number(rate.multiples());
        name.push(short_unit(rate.unit()).as_bytes());
        name.push(b"\"");
        let mut policy = StackText::<128>::new();
        policy.push(name.as_bytes());
        policy.push(b";q=");
        policy.number(rate.amount());
        policy.push(b";w=");
        policy.number(whole_seconds(rate.period()).max(1));
        RateFields {
            rate,
            name,
            policy: HeaderValue::from_bytes(policy.as_bytes())
                .expect("digits, letters and quotes make a valid field"),
            limit: small_number(rate.amount()),
        }
    }
}

/// The last few rates' fields on this thread: a route's responses find theirs at once, and
/// the cache stays bounded whatever rates come and go (scaled or per-tier limits).
struct RateCache {
    entries: [Option<RateFields>; 4],
    next: usize,
}

impl RateCache {
    fn get(&mut self, rate: Rate) -> &RateFields {
        let at = match self
            .entries
            .iter()
            .position(|entry| entry.as_ref().is_some_and(|fields| fields.rate == rate))
        {
            Some(at) => at,
            None => {
                let at = self.next;
                self.next = (at + 1) % self.entries.len();
                self.entries[at] = Some(RateFields::new(rate));
                at
            }
        };
        self.entries[at].as_ref().expect("found or just made")
    }
}

thread_local! {
    static RATE_FIELDS: RefCell<RateCache> = const {
        RefCell::new(RateCache {
            entries: [None, None, None, None],
            next: 0,
        })
    };
    /// `X-RateLimit-Reset` for the last reset instant on this thread: most responses of a
    /// busy second share it.
    static LAST_RESET: RefCell<(u64, HeaderValue)> =
        const { RefCell::new((0, HeaderValue::from_static("0"))) };
}

/// `X-RateLimit-Reset`: a Unix time, as slowapi and GitHub send it: now plus the reset,
/// rounded up.
fn unix_reset(reset_after: Duration) -> HeaderValue {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let at = whole_seconds(now.saturating_add(reset_after));
    LAST_RESET.with_borrow_mut(|(last, value)| {
        if *last != at {
            *last = at;
            *value = HeaderValue::from(at);
        }
        value.clone()
    })
}

/// The rate limit fields of a route that reserves: two budgets, the request limits (the
/// binding one of them, when any) as `requests` and the reserved budget (as settled, when
/// the handler settled before answering) as `tokens`. Draft-11 names a policy per budget;
/// the legacy fields describe the requests; large-model clients read one set per budget.
#[cold]
pub(crate) fn insert_budget_headers(
    headers: &mut HeaderMap,
    requests: Option<&Decision>,
    tokens: Option<&Decision>,
    style: HeaderStyle,
) {
    let (draft, legacy, per_budget) = match style {
        HeaderStyle::Both => (true, true, true),
        HeaderStyle::Draft => (true, false, false),
        HeaderStyle::Legacy => (false, true, false),
        HeaderStyle::OpenAi => (false, false, true),
        HeaderStyle::None => return,
    };
    let budgets: Vec<(&str, &Decision)> = [("requests", requests), ("tokens", tokens)]
        .into_iter()
        .filter_map(|(name, d)| Some((name, d?)))
        .collect();
    let field = |text: String| HeaderValue::from_str(&text).ok();
    if draft {
        let list = |each: &dyn Fn(&str, &Decision) -> String| {
            let items: Vec<String> = budgets.iter().map(|(n, d)| each(n, d)).collect();
            items.join(", ")
        };
        let policy = list(&|name, d| {
            let rate = d.rate();
            let window = whole_seconds(rate.period()).max(1);
            format!("\"{name}\";q={};w={window}", rate.amount())
        });
        let current = list(&|name, d| {
            let reset = whole_seconds(d.reset_after());
            format!("\"{name}\";r={};t={reset}", d.remaining())
        });
        if let (Some(policy), Some(current)) = (field(policy), field(current)) {
            headers.insert(RATELIMIT_POLICY.clone(), policy);
            headers.insert(RATELIMIT.clone(), current);
        }
    }
    if let (true, Some(d)) = (legacy, requests.or(tokens)) {
        insert_headers(headers, d, HeaderStyle::Legacy);
    }
    if per_budget {
        for (name, d) in &budgets {
            let fields = [
                ("limit", d.rate().amount().to_string()),
                ("remaining", d.remaining().to_string()),
                ("reset", go_duration(d.reset_after())),
            ];
            for (what, value) in fields {
                let name = HeaderName::try_from(format!("x-ratelimit-{what}-{name}"));
                if let (Ok(name), Some(value)) = (name, field(value)) {
                    headers.insert(name, value);
                }
            }
        }
    }
}

/// A duration as Go prints it, the way large-model APIs send resets: `0s`, `17ms`, `1s`,
/// `1.5s`, `6m0s`, `1h2m3s` (to the millisecond).
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (hours, minutes) = (ms / 3_600_000, ms / 60_000 % 60);
    let seconds = ms % 60_000;
    let seconds = match seconds % 1000 {
        0 => format!("{}s", seconds / 1000),
        frac => {
            let text = format!("{}.{frac:03}", seconds / 1000);
            format!("{}s", text.trim_end_matches('0'))
        }
    };
    match (hours, minutes) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
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

/// Text made on the stack; what does not fit is dropped (sized for every field's longest).
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

    fn push(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(N);
        self.buf[self.len..end].copy_from_slice(&bytes[..end - self.len]);
        self.len = end;
    }

    /// `n` in decimal.
    fn number(&mut self, n: u64) {
        self.push(itoa::Buffer::new().format(n).as_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_overflow_on_the_stack() {
        let mut text = StackText::<64>::new();
        for n in [0, 7, 10, 999, u64::MAX] {
            text.number(n);
            text.push(b",");
        }
        assert_eq!(text.as_bytes(), b"0,7,10,999,18446744073709551615,");
        let mut small = StackText::<4>::new();
        small.push(b"abcdef");
        assert_eq!(small.as_bytes(), b"abcd", "what does not fit is dropped");
    }

    #[test]
    fn the_fields_of_a_decision() {
        let rate: crate::Rate = "10/minute".parse().unwrap();
        let decision = Decision::allowed(rate, 9, Duration::from_millis(5_500));
        let mut headers = HeaderMap::new();
        insert_headers(&mut headers, &decision, HeaderStyle::Both);
        assert_eq!(headers["ratelimit-policy"], "\"10-per-1m\";q=10;w=60");
        assert_eq!(headers["ratelimit"], "\"10-per-1m\";r=9;t=6");
        assert_eq!(headers["x-ratelimit-limit"], "10");
        assert_eq!(headers["x-ratelimit-remaining"], "9");
        let mut none = HeaderMap::new();
        insert_headers(&mut none, &decision, HeaderStyle::None);
        assert!(none.is_empty());
    }

    #[test]
    fn each_rate_keeps_its_own_fields_past_the_cache() {
        // More rates than the per-thread cache holds, in turns: every response still
        // describes its own rate.
        for round in 0..3 {
            for amount in 1..=9u64 {
                let rate: crate::Rate = format!("{amount}/second").parse().unwrap();
                let decision = Decision::allowed(rate, amount - 1, Duration::from_millis(200));
                let mut headers = HeaderMap::new();
                insert_headers(&mut headers, &decision, HeaderStyle::Both);
                let policy = format!("\"{amount}-per-1s\";q={amount};w=1");
                assert_eq!(
                    headers["ratelimit-policy"],
                    policy.as_str(),
                    "round {round}"
                );
                assert_eq!(headers["x-ratelimit-limit"], amount.to_string().as_str());
                let current = format!("\"{amount}-per-1s\";r={};t=1", amount - 1);
                assert_eq!(headers["ratelimit"], current.as_str());
            }
        }
    }

    #[test]
    fn the_longest_numbers_fit_whole() {
        let rate: crate::Rate = format!("{}/{} day", u64::MAX, 1).parse().unwrap();
        let decision = Decision::allowed(rate, u64::MAX - 1, Duration::from_secs(86_400));
        let mut headers = HeaderMap::new();
        insert_headers(&mut headers, &decision, HeaderStyle::Both);
        let max = u64::MAX;
        let policy = format!("\"{max}-per-1d\";q={max};w=86400");
        assert_eq!(headers["ratelimit-policy"], policy.as_str());
        let current = format!("\"{max}-per-1d\";r={};t=86400", max - 1);
        assert_eq!(headers["ratelimit"], current.as_str());
        assert_eq!(headers["x-ratelimit-limit"], max.to_string().as_str());
    }
}
