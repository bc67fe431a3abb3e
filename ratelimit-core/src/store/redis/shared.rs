//! What instances share in Redis besides the counts: concurrency slots, as leases that
//! expire, and the scale of every limit.
//!
//! Slots of one key under one scope are a sorted set, `<prefix>:{<key>}:<scope>:slots`, of
//! lease ids scored by the instant (Redis's clock, milliseconds) they expire: taking one
//! drops the expired leases and adds one when fewer than the limit are left, in one script
//! (`check.lua` itself when the slot is taken with the key's rates, the set being one more
//! key under the same hash tag; `ACQUIRE` below for a slot alone); giving one back removes
//! it. An instance that dies holding slots holds them only until
//! their leases run out ([`RedisStore::slot_lease`]).
//!
//! The scale of a prefix is the string `N/D` at `<prefix>:scale`, written by
//! [`Limiter::set_scale`](crate::Limiter::set_scale) and read again by every instance in the
//! background, at most about once a second.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use redis::Script;

use super::RedisStore;
use crate::algorithm::Scale;
use crate::store::{SlotRequest, StoreError, StoreFuture};

/// How long a slot lease lasts unless given back first, by default.
pub const DEFAULT_SLOT_LEASE: Duration = Duration::from_secs(60);

/// How often, at most, an instance reads the shared scale again.
const SCALE_REFRESH: Duration = Duration::from_secs(1);

/// A lease given by the in-memory fallback while Redis was down: the top bit of its id.
const LOCAL_LEASE: u64 = 1 << 63;

static ACQUIRE: &str = r"
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
";

/// Pushes a lease's expiry one lease further, if the lease is still held: 1, or 0 when it
/// was lost (expired and taken).
static RENEW: &str = r"
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// The slot scripts and the ids of this instance's leases.
#[derive(Debug)]
pub(super) struct Slots {
    script: Script,
    renew: Script,
    /// The task renewing each lease held, by lease id: stopped when it is given back.
    renewals: DashMap<u64, tokio::task::AbortHandle, foldhash::fast::RandomState>,
    /// Unique per instance (time and process id at start), so two instances' ids differ.
    base: u64,
    next: AtomicU64,
}

impl Default for Slots {
    fn default() -> Slots {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Slots {
            script: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            renewals: DashMap::default(),
            base: (nanos ^ (u64::from(std::process::id()) << 40)) & !LOCAL_LEASE,
            next: AtomicU64::new(0),
        }
    }
}

/// The scale of each prefix as this instance last read it.
#[derive(Debug, Default)]
pub(super) struct Scales {
    known: DashMap<Box<str>, Arc<KnownScale>, foldhash::fast::RandomState>,
}

#[derive(Debug, Default)]
struct KnownScale {
    /// `Scale::to_bits`, or 0 while none was read.
    bits: AtomicU64,
    /// Milliseconds on the store's clock of the last read started.
    read_at: AtomicU64,
    reading: AtomicBool,
}

/// The name of a key's slots.
pub(super) fn slots_name(request: &SlotRequest<'_>) -> Vec<u8> {
    let mut name = Vec::with_capacity(request.prefix.len() + request.key.len() + 16);
    name.extend_from_slice(request.prefix.as_bytes());
    name.extend_from_slice(b":{");
    name.extend_from_slice(request.key);
    name.extend_from_slice(b"}:");
    name.extend_from_slice(request.scope.as_bytes());
    name.extend_from_slice(b":slots");
    name
}

fn scale_name(prefix: &str) -> String {
    format!("{prefix}:scale")
}

impl RedisStore {
    /// How long a concurrency slot is held at most when its request never gives it back (an
    /// instance that crashed): 60 seconds by default. While its request runs, the instance
    /// renews the lease every third of it, so a request longer than the lease keeps its slot;
    /// only an instance that stopped renewing (crashed) loses it.
    pub fn slot_lease(mut self, lease: Duration) -> RedisStore {
        self.slot_lease = lease.max(Duration::from_millis(1));
        self
    }

    /// A new lease id of this instance's, and how long a lease lasts in milliseconds.
    pub(super) fn next_lease(&self) -> (u64, u64) {
        let lease = self
            .slots
            .base
            .wrapping_add(self.slots.next.fetch_add(1, Ordering::Relaxed))
            & !LOCAL_LEASE;
        let lease_ms = u64::try_from(self.slot_lease.as_millis()).unwrap_or(u64::MAX);
        (lease, lease_ms)
    }

    pub(super) fn acquire_slot_in_redis<'a>(
        &'a self,
        request: SlotRequest<'a>,
    ) -> StoreFuture<'a, Option<u64>> {
        if !self.health.try_redis() {
            return StoreFuture::ready(self.degraded_slot(&request));
        }
        let (lease, lease_ms) = self.next_lease();
        let name = slots_name(&request);
        StoreFuture::new(async move {
            let mut invocation = self.slots.script.prepare_invoke();
            invocation
                .key(name)
                .arg(request.limit)
                .arg(lease)
                .arg(lease_ms);
            match tokio::time::timeout(self.timeout, self.connection.invoke::<i64>(&invocation))
                .await
            {
                Ok(Ok(taken)) => {
                    self.health.answered(&self.url);
                    if taken == 1 {
                        self.keep_renewing(&request, lease, lease_ms);
                    }
                    Ok((taken == 1).then_some(lease))
                }
                Ok(Err(error)) => {
                    self.health.failed(&self.url, &error);
                    self.degraded_slot(&request)
                }
                Err(_) => {
                    self.health.failed(
                        &self.url,
                        &format_args!("no answer within {:?}", self.timeout),
                    );
                    self.degraded_slot(&request)
                }
            }
        })
    }

    /// A slot while Redis is down, as the failure policy says.
    pub(super) fn degraded_slot(
        &self,
        request: &SlotRequest<'_>,
    ) -> Result<Option<u64>, StoreError> {
        use super::FailurePolicy;
        match self.policy {
            FailurePolicy::FallBackToMemory => {
                self.health.fallbacks.fetch_add(1, Ordering::Relaxed);
                Ok(self
                    .fallback
                    .slots()
                    .acquire(request)
                    .then_some(LOCAL_LEASE))
            }
            // A lease no one holds: giving it back is a no-op.
            FailurePolicy::FailOpen => Ok(Some(LOCAL_LEASE | 1)),
            FailurePolicy::FailClosed => Err(StoreError::new(format!(
                "Redis at {} is unavailable and the failure policy is to refuse",
                self.url
            ))),
        }
    }

    /// Renews `lease` every third of its length until it is given back (the task is stopped)
    /// or lost; nothing is sent for a request shorter than a third of the lease.
    pub(super) fn keep_renewing(&self, request: &SlotRequest<'_>, lease: u64, lease_ms: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let connection = self.connection.clone();
        let slots = Arc::downgrade(&self.slots);
        let name = slots_name(request);
        let timeout = self.timeout.max(Duration::from_millis(500));
        let every = Duration::from_millis((lease_ms / 3).max(1));
        let task = runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(slots) = slots.upgrade() else { return };
                let mut invocation = slots.renew.prepare_invoke();
                invocation.key(&name).arg(lease).arg(lease_ms);
                let renewed =
                    tokio::time::timeout(timeout, connection.invoke::<i64>(&invocation)).await;
                if let Ok(Ok(0)) = renewed {
                    slots.renewals.remove(&lease);
                    return; // lost: expired and taken while Redis was unreachable
                }
            }
        });
        self.slots.renewals.insert(lease, task.abort_handle());
    }

    pub(super) fn release_slot_in_redis(&self, request: &SlotRequest<'_>, lease: u64) {
        if let Some((_, renewal)) = self.slots.renewals.remove(&lease) {
            renewal.abort();
        }
        if lease == LOCAL_LEASE {
            self.fallback.slots().release(request);
            return;
        }
        if lease & LOCAL_LEASE != 0 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime to send it from: the lease expires
        };
        let mut command = redis::cmd("ZREM");
        command.arg(slots_name(request)).arg(lease);
        let connection = self.connection.clone();
        let timeout = self.timeout.max(Duration::from_millis(500));
        let mut release = Box::pin(async move {
            let _ = tokio::time::timeout(timeout, connection.query::<i64>(command)).await;
        });
        // Polled once here, which queues the command on the connection before the request's
        // answer goes out: the client's next request, sent after it, cannot overtake it and
        // find its own slot still held. The answer is awaited in the background.
        let mut polled = std::task::Context::from_waker(std::task::Waker::noop());
        if release.as_mut().poll(&mut polled).is_pending() {
            runtime.spawn(release);
        }
    }

    /// The scale known for `prefix`: a read of a sharded table and two atomics per request
    /// (nothing cloned); at most about once a second, a `GET` in the background.
    pub(super) fn shared_scale_of(&self, prefix: &str) -> Option<Scale> {
        let bits = match self.scales.known.get(prefix) {
            Some(known) => self.keep_fresh(prefix, &known),
            None => {
                let known = Arc::clone(&self.scales.known.entry(prefix.into()).or_default());
                self.keep_fresh(prefix, &known)
            }
        };
        (bits != 0).then(|| Scale::from_bits(bits))
    }

    /// Reads the shared scale again in the background when the last read is a second old;
    /// the bits known now.
    fn keep_fresh(&self, prefix: &str, known: &Arc<KnownScale>) -> u64 {
        let now = self.micros() / 1_000;
        let read_at = known.read_at.load(Ordering::Relaxed);
        let due = read_at == 0 || now.saturating_sub(read_at) >= SCALE_REFRESH.as_millis() as u64;
        if due && !known.reading.swap(true, Ordering::AcqRel) {
            known.read_at.store(now.max(1), Ordering::Relaxed);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let connection = self.connection.clone();
                    let name = scale_name(prefix);
                    let timeout = self.timeout.max(Duration::from_millis(500));
                    let known = Arc::clone(known);
                    runtime.spawn(async move {
                        let mut command = redis::cmd("GET");
                        command.arg(name);
                        let read = connection.query::<Option<String>>(command);
                        if let Ok(Ok(value)) = tokio::time::timeout(timeout, read).await {
                            let bits = value
                                .and_then(|v| v.parse::<Scale>().ok())
                                .map_or(0, Scale::to_bits);
                            known.bits.store(bits, Ordering::Relaxed);
                        }
                        known.reading.store(false, Ordering::Release);
                    });
                }
                Err(_) => known.reading.store(false, Ordering::Release),
            }
        }
        known.bits.load(Ordering::Relaxed)
    }

    pub(super) fn publish_scale_to_redis<'a>(
        &'a self,
        prefix: &'a str,
        scale: Scale,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        self.scales
            .known
            .entry(prefix.into())
            .or_default()
            .bits
            .store(scale.to_bits(), Ordering::Relaxed);
        StoreFuture::new(async move {
            let mut command = redis::cmd("SET");
            command.arg(scale_name(prefix)).arg(scale.to_string());
            if let Some(ttl) = ttl {
                command
                    .arg("PX")
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
            }
            let timeout = self.timeout.max(Duration::from_millis(500));
            match tokio::time::timeout(timeout, self.connection.query::<()>(command)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(StoreError::with_source(
                    format!(
                        "could not publish the scale {scale} to Redis at {}",
                        self.url
                    ),
                    error,
                )),
                Err(_) => Err(StoreError::new(format!(
                    "could not publish the scale {scale} to Redis at {}: no answer within {timeout:?}",
                    self.url
                ))),
            }
        })
    }
}
