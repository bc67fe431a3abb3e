//! The Redis store: every instance that points at the same Redis shares the same limits.
//!
//! One request and key is one call of one Lua script (`check.lua`, loaded once and called
//! with `EVALSHA`; a `NOSCRIPT` answer, after a restart or a `SCRIPT FLUSH`, loads it again),
//! which judges every charge and every rate and charges them all or none, on the Redis
//! server's clock (`TIME`), so instances with skewed clocks agree.
//!
//! State is named by what a user configured, readable in `redis-cli --scan`:
//! `<prefix>:{<key>}:<scope>:<algorithm>:<period>ms:<position>`, for example
//! `ratelimit:{203.0.113.7}:/predict:gcra:60000ms:0`. The key between braces is the Redis
//! Cluster hash tag, so one client's state shares a slot; every entry expires when its state
//! stops mattering.

use std::fmt;
use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::{Client, Script};

use super::{Charge, CheckRequest, Mode, Store, StoreError, StoreFuture};
use crate::algorithm::Algorithm;
use crate::clock::Clock;
use crate::decision::Decision;

static CHECK: &str = include_str!("check.lua");

/// Rate limit state in Redis (feature `redis`).
///
/// ```no_run
/// use ratelimit_core::{Limiter, store::RedisStore};
///
/// # async fn run() -> Result<(), ratelimit_core::StoreError> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let limiter = Limiter::builder().store(store).key_prefix("my-api").build();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    script: Script,
    clock: Option<Arc<dyn Clock>>,
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://host:port/db`, `redis+unix:///path`); the
    /// connection reconnects by itself when it is lost.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let client = Client::open(url)
            .map_err(|e| StoreError::with_source(format!("invalid Redis URL {url:?}"), e))?;
        let connection = ConnectionManager::new(client)
            .await
            .map_err(|e| StoreError::with_source(format!("cannot connect to Redis at {url}"), e))?;
        Ok(RedisStore {
            connection,
            script: Script::new(CHECK),
            clock: None,
        })
    }

    /// Judges on `clock` (to the microsecond) instead of the Redis server's: for tests that
    /// compare Redis with the in-memory store on one [`FakeClock`](crate::FakeClock). In
    /// production the server's clock is the one every instance agrees on.
    #[doc(hidden)]
    pub fn with_clock(mut self, clock: impl Clock) -> RedisStore {
        self.clock = Some(Arc::new(clock));
        self
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

/// The name of one rate's state.
fn state_name(
    prefix: &str,
    key: &[u8],
    charge: &Charge<'_>,
    period_ms: u64,
    position: usize,
) -> Vec<u8> {
    let mut name = Vec::with_capacity(prefix.len() + key.len() + charge.scope.len() + 48);
    name.extend_from_slice(prefix.as_bytes());
    name.extend_from_slice(b":{");
    name.extend_from_slice(key);
    name.extend_from_slice(b"}:");
    name.extend_from_slice(charge.scope.as_bytes());
    name.push(b':');
    name.extend_from_slice(charge.algorithm.name().as_bytes());
    name.extend_from_slice(format!(":{period_ms}ms:{position}").as_bytes());
    name
}

fn algorithm_code(algorithm: Algorithm) -> u8 {
    match algorithm {
        Algorithm::Gcra => 1,
        Algorithm::FixedWindow => 2,
        Algorithm::SlidingWindow => 3,
        Algorithm::MovingWindow => 4,
    }
}

impl Store for RedisStore {
    fn check<'a>(&'a self, request: CheckRequest<'a>) -> StoreFuture<'a> {
        let mut invocation = self.script.prepare_invoke();
        let now = self
            .clock
            .as_ref()
            .map_or_else(String::new, |clock| (clock.now() / 1_000).to_string());
        let mode = match request.mode {
            Mode::Charge => 0,
            Mode::Peek => 1,
            Mode::Refund => 2,
        };
        invocation.arg(now).arg(mode).arg(request.charges.len());
        for charge in request.charges {
            let params = charge.limits.params();
            invocation
                .arg(algorithm_code(charge.algorithm))
                .arg(charge.cost)
                .arg(params.len());
            for (position, rate) in params.iter().enumerate() {
                // Microseconds: the resolution of Redis's TIME, and exact in Lua's doubles.
                let period = rate.period_nanos() / 1_000;
                let interval = period.div_ceil(rate.amount()).max(1);
                let tolerance = interval.saturating_mul(rate.burst());
                invocation
                    .key(state_name(
                        request.prefix,
                        request.key,
                        charge,
                        period / 1_000,
                        position,
                    ))
                    .arg(rate.amount())
                    .arg(period)
                    .arg(interval)
                    .arg(rate.burst())
                    .arg(tolerance);
            }
        }
        let mut connection = self.connection.clone();
        StoreFuture::new(async move {
            let reply: Vec<i64> = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|e| StoreError::with_source("Redis check failed", e))?;
            decision(&request, &reply)
        })
    }
}

/// The script's answer as a decision.
fn decision(request: &CheckRequest<'_>, reply: &[i64]) -> Result<Decision, StoreError> {
    let [allowed, charge, rate, remaining, reset, retry] = reply else {
        return Err(StoreError::new(format!(
            "unexpected answer from the Redis script: {reply:?}"
        )));
    };
    let as_u64 = |n: &i64| u64::try_from(*n).unwrap_or(0);
    let micros = |n: &i64| std::time::Duration::from_micros(as_u64(n));
    let charge_index = usize::try_from(*charge).unwrap_or(0);
    let rate_index = usize::try_from(*rate).unwrap_or(0);
    let binding = request
        .charges
        .get(charge_index)
        .and_then(|c| c.limits.params().get(rate_index))
        .ok_or_else(|| StoreError::new("the Redis script named a rate the request does not have"))?
        .rate();
    let decision = if *allowed == 1 {
        Decision::allowed(binding, as_u64(remaining), micros(reset))
    } else {
        let retry = (*retry >= 0).then(|| micros(retry));
        Decision::refused(binding, as_u64(remaining), micros(reset), retry)
    };
    Ok(decision.at_rate(rate_index).at_charge(charge_index))
}
