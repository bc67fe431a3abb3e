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
//!
//! A key Redis refused until some instant is refused locally until then, with no round trip
//! (a bounded cache of blocked keys, as Envoy's rate limit service keeps one): an abusive
//! client costs Redis one call per refusal period, not one per request.
//!
//! `rediss://` connects over TLS (rustls, verified against the system's roots, or against a
//! private authority with [`RedisStore::connect_tls`]).
//!
//! When Redis fails (down, or slower than the per-call timeout, 50 ms by default), the store
//! follows its [`FailurePolicy`]: the in-memory store answers (the default), every request
//! passes, or every request is refused (the HTTP layer answers 503). It says so once with a
//! warning, probes Redis about once a second (not on every request) and says when it is back.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::hash::{BuildHasher, Hasher};

use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Script, ScriptInvocation};

use super::{
    Charge, CheckRequest, MemoryStore, Mode, SlotCheck, SlotRequest, Store, StoreError, StoreFuture,
};
use crate::algorithm::Algorithm;
use crate::algorithm::Scale;
use crate::clock::{Clock, MonotonicClock};
use crate::decision::Decision;

mod shared;

pub use shared::DEFAULT_SLOT_LEASE;

static CHECK: &str = include_str!("check.lua");

/// The default time a Redis call may take before the failure policy answers instead.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// How many refused requests the blocked-key cache remembers at most.
const BLOCKED_CAPACITY: usize = 100_000;

/// How often, at most, a request tries Redis again while it is down.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What a [`RedisStore`] answers while Redis is unreachable or too slow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Count in this process's memory until Redis is back (the default): limits still hold,
    /// per instance instead of across the fleet.
    #[default]
    FallBackToMemory,
    /// Let every request through (Stripe's and Envoy's default): availability over limits.
    FailOpen,
    /// Refuse every request: the HTTP layer answers 503 (Envoy's `failure_mode_deny`).
    FailClosed,
}

/// Whether Redis answers, and what failed.
#[derive(Debug)]
struct Health {
    started: Instant,
    down: AtomicBool,
    /// Milliseconds since `started` before which no request tries Redis while it is down.
    next_probe: AtomicU64,
    errors: AtomicU64,
    fallbacks: AtomicU64,
}

impl Health {
    fn new() -> Health {
        Health {
            started: Instant::now(),
            down: AtomicBool::new(false),
            next_probe: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether Redis is down and no probe is due: the policy answers without trying it.
    fn skip(&self) -> bool {
        self.down.load(Ordering::Relaxed) && self.millis() < self.next_probe.load(Ordering::Relaxed)
    }

    /// Whether this request should go to Redis: always while it is up; while it is down, one
    /// request per probe interval.
    fn try_redis(&self) -> bool {
        if !self.down.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.millis();
        let due = self.next_probe.load(Ordering::Relaxed);
        now >= due
            && self
                .next_probe
                .compare_exchange(
                    due,
                    now + PROBE_EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn failed(&self, url: &str, error: &dyn fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            self.next_probe.store(
                self.millis() + PROBE_EVERY.as_millis() as u64,
                Ordering::Relaxed,
            );
            tracing::warn!(redis = url, %error, "rate limit store lost Redis; answering by the failure policy until it is back");
        }
    }

    fn answered(&self, url: &str) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(redis = url, "rate limit store reached Redis again");
        }
    }
}

/// Rate limit state in Redis (feature `redis`).
///
/// ```no_run
/// # async fn run() -> Result<(), ratelimit_core::StoreError> {
/// use ratelimit_core::Limiter;
/// use ratelimit_core::store::{FailurePolicy, RedisStore};
///
/// let store = RedisStore::connect("redis://127.0.0.1:6379")
///     .await? // a Redis that is down now is not an error: the policy answers until it is up
///     .on_failure(FailurePolicy::FallBackToMemory); // the default; or FailOpen, FailClosed (503)
/// let limiter = Limiter::builder().store(store).key_prefix("my-api").build();
/// // or RedisStore::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    script: Script,
    clock: Option<Arc<dyn Clock>>,
    url: Arc<str>,
    timeout: Duration,
    policy: FailurePolicy,
    fallback: Arc<MemoryStore>,
    health: Arc<Health>,
    blocked: Arc<Blocked>,
    cache_blocked: bool,
    monotonic: MonotonicClock,
    slots: Arc<shared::Slots>,
    slot_lease: Duration,
    scales: Arc<shared::Scales>,
}

/// Makes ring the process's TLS cryptography unless something chose one already, so that a
/// `rediss://` connection works whichever other TLS crates the application links.
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One Redis, or a Redis Cluster (whose connection is made on first use and remade when it
/// fails).
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(Arc<Cluster>),
}

impl Connection {
    /// Runs the script (`EVALSHA`, loading it on `NOSCRIPT`: on every primary of a cluster).
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        match self {
            Connection::Single(manager) => invocation.invoke_async(&mut manager.clone()).await,
            Connection::Cluster(cluster) => {
                invocation
                    .invoke_async(&mut cluster.connection().await?)
                    .await
            }
        }
    }

    async fn ping(&self) -> redis::RedisResult<()> {
        self.query(redis::cmd("PING")).await
    }

    /// One command, on the node that holds its key.
    async fn query<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Connection::Single(manager) => command.query_async(&mut manager.clone()).await,
            Connection::Cluster(cluster) => {
                command.query_async(&mut cluster.connection().await?).await
            }
        }
    }
}

/// A Redis Cluster's client, and its connection once made.
struct Cluster {
    client: ClusterClient,
    connection: tokio::sync::RwLock<Option<ClusterConnection>>,
}

impl Cluster {
    /// The connection, made now if there is none yet.
    async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        if let Some(connection) = self.connection.read().await.as_ref() {
            return Ok(connection.clone());
        }
        let mut slot = self.connection.write().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self.client.get_async_connection().await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }
}

/// Requests Redis refused, by a keyed hash of everything the answer depends on (prefix, key,
/// and each charge's scope, algorithm, cost and rates), with the instant (microseconds on
/// the store's time) before which the same request is refused again.
#[derive(Debug, Default)]
struct Blocked {
    entries: DashMap<u64, (u64, Decision), foldhash::fast::RandomState>,
    hasher: foldhash::fast::RandomState,
    hits: AtomicU64,
}

impl Blocked {
    fn identity(&self, request: &CheckRequest<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(request.prefix.as_bytes());
        h.write_u8(0xff);
        h.write(request.key);
        h.write_u8(0xff);
        for charge in request.charges {
            h.write(charge.scope.as_bytes());
            h.write_u8(0xff);
            h.write_usize(charge.algorithm.index());
            h.write_u64(charge.cost);
            for rate in charge.params().iter() {
                h.write_u64(rate.amount());
                h.write_u64(rate.period_nanos());
                h.write_u64(rate.burst());
            }
        }
        h.finish()
    }

    /// The refusal to answer again, while it holds.
    fn get(&self, identity: u64, now: u64) -> Option<Decision> {
        let (until, decision) = *self.entries.get(&identity)?;
        if now >= until {
            self.entries.remove_if(&identity, |_, (u, _)| *u == until);
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        let left = Duration::from_micros(until - now);
        let elapsed = decision
            .retry_after()
            .unwrap_or_default()
            .saturating_sub(left);
        let reset = decision.reset_after().saturating_sub(elapsed);
        Some(
            Decision::refused(decision.rate(), decision.remaining(), reset, Some(left))
                .at_rate(decision.rate_index())
                .at_charge(decision.charge_index()),
        )
    }

    fn remember(&self, identity: u64, now: u64, decision: Decision) {
        let Some(retry) = decision.retry_after() else {
            return; // a cost that can never pass: rare, and the answer does not depend on time
        };
        if self.entries.len() >= BLOCKED_CAPACITY {
            self.entries.retain(|_, (until, _)| *until > now);
            if self.entries.len() >= BLOCKED_CAPACITY {
                return;
            }
        }
        let until = now.saturating_add(u64::try_from(retry.as_micros()).unwrap_or(u64::MAX));
        self.entries.insert(identity, (until, decision));
    }
}

impl RedisStore {
    /// A store on the Redis at `url`: `redis://host:port/db`, `rediss://host:port/db` (TLS,
    /// verified against the system's trusted roots) or `redis+unix:///path`. The connection
    /// is made on first use and remade when lost; a Redis that is down now is not an error
    /// (the failure policy answers until it is up, and a warning says so). Only a URL that is
    /// not one is.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        install_tls_provider();
        let client = Client::open(url)
            .map_err(|e| StoreError::with_source(format!("invalid Redis URL {url:?}"), e))?;
        RedisStore::single(client, url).await
    }

    /// A store on the Redis at `rediss://` `url` whose certificate a private authority signed:
    /// `root_cert` is that authority's certificate, PEM-encoded.
    pub async fn connect_tls(url: &str, root_cert: &[u8]) -> Result<RedisStore, StoreError> {
        install_tls_provider();
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert.to_vec()),
        };
        let client = Client::build_with_tls(url, certificates).map_err(|e| {
            StoreError::with_source(format!("invalid Redis URL or certificate for {url:?}"), e)
        })?;
        RedisStore::single(client, url).await
    }

    async fn single(client: Client, url: &str) -> Result<RedisStore, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DEFAULT_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::with_source(format!("cannot use Redis at {url}"), e))?;
        RedisStore::on(Connection::Single(connection), url).await
    }

    /// A store on the Redis Cluster that `nodes` belong to (`["redis://10.0.0.1:7000", ..]`):
    /// one client's state shares a slot (its key is the hash tag), so each request is still
    /// one script call, on the node that holds the slot.
    pub async fn cluster<I, T>(nodes: I) -> Result<RedisStore, StoreError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let nodes: Vec<String> = nodes.into_iter().map(|n| n.as_ref().to_owned()).collect();
        let client = ClusterClient::new(nodes.iter().map(String::as_str)).map_err(|e| {
            StoreError::with_source(format!("invalid Redis Cluster nodes {nodes:?}"), e)
        })?;
        let connection = Connection::Cluster(Arc::new(Cluster {
            client,
            connection: Default::default(),
        }));
        RedisStore::on(connection, &nodes.join(",")).await
    }

    async fn on(connection: Connection, url: &str) -> Result<RedisStore, StoreError> {
        let store = RedisStore {
            connection,
            script: Script::new(CHECK),
            clock: None,
            url: Arc::from(url),
            timeout: DEFAULT_TIMEOUT,
            policy: FailurePolicy::default(),
            fallback: Arc::new(MemoryStore::new()),
            health: Arc::new(Health::new()),
            blocked: Arc::default(),
            cache_blocked: true,
            monotonic: MonotonicClock::new(),
            slots: Arc::default(),
            slot_lease: DEFAULT_SLOT_LEASE,
            scales: Arc::default(),
        };
        store.ping().await;
        Ok(store)
    }

    /// What to answer while Redis is unreachable or too slow (default: count in memory).
    pub fn on_failure(mut self, policy: FailurePolicy) -> RedisStore {
        self.policy = policy;
        self
    }

    /// How long one Redis call may take before the failure policy answers (default 50 ms).
    pub fn timeout(mut self, timeout: Duration) -> RedisStore {
        self.timeout = timeout;
        self
    }

    /// Whether to refuse a request Redis refused until it said to retry without asking it again
    /// (default: yes). The refusal is certain; the wait it reports is the one Redis gave, so
    /// other requests of the key made since may have made the true wait longer. Turn it off
    /// to have every answer from Redis itself.
    pub fn cache_blocked_keys(mut self, on: bool) -> RedisStore {
        self.cache_blocked = on;
        self
    }

    /// Whether Redis answered the last call that tried it.
    pub fn is_available(&self) -> bool {
        !self.health.down.load(Ordering::Relaxed)
    }

    /// Redis calls that failed or timed out.
    pub fn errors(&self) -> u64 {
        self.health.errors.load(Ordering::Relaxed)
    }

    /// Requests the in-memory fallback answered.
    pub fn fallbacks(&self) -> u64 {
        self.health.fallbacks.load(Ordering::Relaxed)
    }

    /// Requests refused from the blocked-key cache, without a round trip.
    pub fn cached_refusals(&self) -> u64 {
        self.blocked.hits.load(Ordering::Relaxed)
    }

    /// Microseconds on the store's time: the clock given for tests, else its own monotonic
    /// one.
    fn micros(&self) -> u64 {
        match &self.clock {
            Some(clock) => clock.now() / 1_000,
            None => self.monotonic.now() / 1_000,
        }
    }

    /// The refusal the blocked-key cache holds for `request`, if it still holds.
    fn cached(&self, request: &CheckRequest<'_>) -> Option<Decision> {
        if !self.cache_blocked {
            return None;
        }
        let identity = self.blocked.identity(request);
        match request.mode {
            Mode::Charge => self.blocked.get(identity, self.micros()),
            Mode::Peek => None,
            Mode::Refund | Mode::Debit => {
                // What is given back may let the same request through sooner, and what is
                // owed later: a cached refusal no longer describes the key.
                self.blocked.entries.remove(&identity);
                None
            }
        }
    }

    /// Tries Redis once, so that a store made while Redis is down says so at start-up.
    async fn ping(&self) {
        let ping = self.connection.ping();
        match tokio::time::timeout(self.timeout.max(Duration::from_millis(500)), ping).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => self.health.failed(&self.url, &error),
            Err(_) => self.health.failed(&self.url, &"no answer in time"),
        }
    }

    /// The answer of the failure policy.
    fn degraded(&self, request: &CheckRequest<'_>) -> Result<Decision, StoreError> {
        match self.policy {
            FailurePolicy::FallBackToMemory => {
                self.health.fallbacks.fetch_add(1, Ordering::Relaxed);
                Ok(self.fallback.check_now(request))
            }
            FailurePolicy::FailOpen => {
                let rate = request.charges[0].param(0).rate();
                Ok(Decision::allowed(rate, rate.amount(), Duration::ZERO))
            }
            FailurePolicy::FailClosed => Err(StoreError::new(format!(
                "Redis at {} is unavailable and the failure policy is to refuse",
                self.url
            ))),
        }
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

impl RedisStore {
    /// The check script's call for `request`: its keys and arguments (see `check.lua`).
    fn invocation(&self, request: &CheckRequest<'_>) -> ScriptInvocation<'_> {
        let mut invocation = self.script.prepare_invoke();
        let now = self
            .clock
            .as_ref()
            .map_or_else(String::new, |clock| (clock.now() / 1_000).to_string());
        let mode = match request.mode {
            Mode::Charge => 0,
            Mode::Peek => 1,
            Mode::Refund => 2,
            Mode::Debit => 3,
        };
        invocation.arg(now).arg(mode).arg(request.charges.len());
        for charge in request.charges {
            let params = charge.params();
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
        invocation
    }

    /// What a failed or timed-out call of the check script with a slot answers: the lease it
    /// may have taken is given back (in the background), then both as the failure policy says.
    fn degraded_with_slot(
        &self,
        request: &CheckRequest<'_>,
        slot: &SlotRequest<'_>,
    ) -> Result<SlotCheck, StoreError> {
        let Some(lease) = self.degraded_slot(slot)? else {
            return Ok(SlotCheck::NoSlot);
        };
        match self.degraded(request) {
            Ok(decision) if decision.is_allowed() => Ok(SlotCheck::Admitted(decision, lease)),
            checked => {
                self.release_slot_in_redis(slot, lease);
                checked.map(SlotCheck::Refused)
            }
        }
    }
}

impl Store for RedisStore {
    fn check<'a>(&'a self, request: CheckRequest<'a>) -> StoreFuture<'a> {
        if let Some(refusal) = self.cached(&request) {
            return StoreFuture::ready(Ok(refusal));
        }
        if !self.health.try_redis() {
            return StoreFuture::ready(self.degraded(&request));
        }
        let invocation = self.invocation(&request);
        StoreFuture::new(async move {
            let call = self.connection.invoke::<Vec<i64>>(&invocation);
            match tokio::time::timeout(self.timeout, call).await {
                Ok(Ok(reply)) => {
                    self.health.answered(&self.url);
                    let decision = decision(&request, &reply)?;
                    if self.cache_blocked && request.mode == Mode::Charge && !decision.is_allowed()
                    {
                        let identity = self.blocked.identity(&request);
                        self.blocked.remember(identity, self.micros(), decision);
                    }
                    Ok(decision)
                }
                Ok(Err(error)) => {
                    self.health.failed(&self.url, &error);
                    self.degraded(&request)
                }
                Err(_) => {
                    self.health.failed(
                        &self.url,
                        &format_args!("no answer within {:?}", self.timeout),
                    );
                    self.degraded(&request)
                }
            }
        })
    }

    fn answer_now(&self, request: &CheckRequest<'_>) -> Option<Result<Decision, StoreError>> {
        // A key known to be blocked, and while Redis is down the requests between probes, are
        // answered at once: no round trip, no future.
        if let Some(refusal) = self.cached(request) {
            return Some(Ok(refusal));
        }
        self.health.skip().then(|| self.degraded(request))
    }

    /// A lease in a sorted set that expires ([`RedisStore::slot_lease`]); while Redis is
    /// down, as the failure policy says (the in-memory fallback counts slots too).
    fn acquire_slot<'a>(&'a self, request: SlotRequest<'a>) -> StoreFuture<'a, Option<u64>> {
        self.acquire_slot_in_redis(request)
    }

    /// The slot's sorted set is one more key of the check script, under the same hash tag
    /// (the client's key): one round trip takes both, all or nothing.
    fn check_with_slot<'a>(
        &'a self,
        request: CheckRequest<'a>,
        slot: SlotRequest<'a>,
    ) -> StoreFuture<'a, SlotCheck> {
        if let Some(refusal) = self.cached(&request) {
            return StoreFuture::ready(Ok(SlotCheck::Refused(refusal)));
        }
        if !self.health.try_redis() {
            return StoreFuture::ready(self.degraded_with_slot(&request, &slot));
        }
        let mut invocation = self.invocation(&request);
        let (lease, lease_ms) = self.next_lease();
        invocation
            .key(shared::slots_name(&slot))
            .arg(slot.limit)
            .arg(lease)
            .arg(lease_ms);
        StoreFuture::new(async move {
            let call = self.connection.invoke::<Vec<i64>>(&invocation);
            match tokio::time::timeout(self.timeout, call).await {
                Ok(Ok(reply)) => {
                    self.health.answered(&self.url);
                    if reply.first() == Some(&-1) {
                        return Ok(SlotCheck::NoSlot);
                    }
                    let decision = decision(&request, &reply)?;
                    if decision.is_allowed() {
                        self.keep_renewing(&slot, lease, lease_ms);
                        return Ok(SlotCheck::Admitted(decision, lease));
                    }
                    if self.cache_blocked {
                        let identity = self.blocked.identity(&request);
                        self.blocked.remember(identity, self.micros(), decision);
                    }
                    Ok(SlotCheck::Refused(decision))
                }
                Ok(Err(error)) => {
                    self.health.failed(&self.url, &error);
                    self.release_slot_in_redis(&slot, lease);
                    self.degraded_with_slot(&request, &slot)
                }
                Err(_) => {
                    self.health.failed(
                        &self.url,
                        &format_args!("no answer within {:?}", self.timeout),
                    );
                    // The script may have run: its lease is given back.
                    self.release_slot_in_redis(&slot, lease);
                    self.degraded_with_slot(&request, &slot)
                }
            }
        })
    }

    fn release_slot(&self, request: SlotRequest<'_>, lease: u64) {
        self.release_slot_in_redis(&request, lease);
    }

    fn shared_scale(&self, prefix: &str) -> Option<Scale> {
        self.shared_scale_of(prefix)
    }

    fn publish_scale<'a>(
        &'a self,
        prefix: &'a str,
        scale: Scale,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        self.publish_scale_to_redis(prefix, scale, ttl)
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
        .filter(|c| rate_index < c.limits.params().len())
        .ok_or_else(|| StoreError::new("the Redis script named a rate the request does not have"))?
        .param(rate_index)
        .rate();
    let decision = if *allowed == 1 {
        Decision::allowed(binding, as_u64(remaining), micros(reset))
    } else {
        let retry = (*retry >= 0).then(|| micros(retry));
        Decision::refused(binding, as_u64(remaining), micros(reset), retry)
    };
    Ok(decision.at_rate(rate_index).at_charge(charge_index))
}
