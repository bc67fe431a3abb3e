//! What the `#[rate_limit]` attribute injects into a handler: the [`Guard`] extractor (the
//! check runs before the body is read), or [`Deferred`] when a `cost` needs the handler's
//! arguments; and the [`Spec`] the attribute describes itself with.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use std::task::{Context, Poll};
use std::time::Duration;

use arrayvec::ArrayVec;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use super::config::HttpConfig;
use super::context::{self, LayerState};
use super::enforce::{
    self, Entry, Leases, MAX_ENTRIES, Settling, SlotNeed, enforce_holding, take_slots,
};
use super::identity::{Identity, Who};
use super::key::{Key, KeySource, missing_connect_info};
use super::response::Rejection;
use super::spec::{KeyedSpec, Policy, Spec, SpecData, SpecRef, Specs};
use crate::capacity::CapacityLimit;
use crate::decision::Decision;
use crate::limits::{Limits, LimitsRef};
use crate::reservation::Reservation;

/// What the `N` attributes of a handler say of one request.
#[doc(hidden)]
#[derive(Debug)]
pub struct Resolved<const N: usize>(ArrayVec<One, N>);

impl<const N: usize> AsRef<[One]> for Resolved<N> {
    fn as_ref(&self) -> &[One] {
        &self.0
    }
}

impl<const N: usize> FromIterator<One> for Resolved<N> {
    /// # Panics
    /// On more than `N` attributes (one per hook of a handler with `N`: never).
    fn from_iter<I: IntoIterator<Item = One>>(ones: I) -> Resolved<N> {
        Resolved(ones.into_iter().collect())
    }
}

/// What one attribute says of one request.
#[doc(hidden)]
#[derive(Debug)]
pub struct One {
    policy: &'static Policy,
    /// `None` when the request is exempt from this attribute.
    key: Option<Key>,
    limits: LimitsRef,
    cost: u64,
}

/// What the attributes of `S`, of which one at least has a key function, say of this
/// request. Generic only as far as the key functions need: they are awaited here, and
/// everything else is [`resolve_with`]'s, compiled once for every handler.
async fn resolve_keyed<S: KeyedSpec, R: FromIterator<One>>(
    config: &'static HttpConfig,
    parts: &Parts,
) -> Result<R, Rejection> {
    let mut resolved: ArrayVec<One, MAX_SPECS> = ArrayVec::new();
    let specs = S::SPEC.specs();
    for (index, spec) in specs.as_slice().iter().enumerate() {
        let policy = spec.policy();
        let hooks = spec.hooks();
        let exempt = hooks.exempt.is_some_and(|exempt| exempt(parts));
        let identity = if !exempt && custom_key(config, policy) {
            Some(S::key(index, parts).await?)
        } else {
            None
        };
        resolved.push(resolve_with(
            config,
            parts,
            policy,
            exempt,
            identity,
            hooks.limits_of,
            hooks.cost,
        )?);
    }
    Ok(resolved.drain(..).collect())
}

/// Whether the attribute's key is its key function (`key = path`).
fn custom_key(config: &HttpConfig, policy: &Policy) -> bool {
    matches!(
        policy.key.as_ref().unwrap_or(&config.default_key),
        KeySource::Custom
    )
}

/// What one attribute says of this request: its key (`identity`: what its key function
/// answered, if it has one and the request is not `exempt`), its limits and its cost.
fn resolve_with(
    config: &HttpConfig,
    parts: &Parts,
    policy: &'static Policy,
    exempt: bool,
    identity: Option<Identity>,
    limits: Option<fn(&Parts) -> Option<LimitsRef>>,
    cost: Option<fn(&Parts) -> u64>,
) -> Result<One, Rejection> {
    let (key, tier) = match exempt {
        true => (None, None),
        false => {
            let (key, tier) = attribute_key(config, parts, policy, identity)?;
            (Some(key), tier)
        }
    };
    Ok(One {
        policy,
        key,
        limits: attribute_limits(policy, tier, limits, parts),
        cost: cost.map_or(1, |cost| cost(parts)),
    })
}

/// The key an attribute counts this request under (`identity`: what its key function
/// answered, if it has one), and the tier that function found, if any.
#[inline(always)]
fn attribute_key(
    config: &HttpConfig,
    parts: &Parts,
    policy: &'static Policy,
    identity: Option<Identity>,
) -> Result<(Key, Option<LimitsRef>), Rejection> {
    let misconfigured = |_| {
        missing_connect_info(policy.handler);
        Rejection::misconfigured()
    };
    let trusted = &config.trusted_proxies;
    Ok(match identity {
        Some(identity) => {
            let key = match identity.who {
                Who::Key(text) => Key::text(text),
                Who::Client => Key::of(&KeySource::Ip, parts, trusted).map_err(misconfigured)?,
                Who::Anonymous => Key::anonymous(parts, trusted).map_err(misconfigured)?,
            };
            (key, identity.limits)
        }
        None => {
            let source = policy.key.as_ref().unwrap_or(&config.default_key);
            (
                Key::of(source, parts, trusted).map_err(misconfigured)?,
                None,
            )
        }
    })
}

/// The limits an attribute applies to this request: the tier its key function found binds
/// instead of its own, else its limits function's answer, else its fixed limits.
#[inline(always)]
fn attribute_limits(
    policy: &'static Policy,
    tier: Option<LimitsRef>,
    limits: Option<fn(&Parts) -> Option<LimitsRef>>,
    parts: &Parts,
) -> LimitsRef {
    match tier.or_else(|| limits.and_then(|limits| limits(parts))) {
        Some(dynamic) => dynamic,
        None => LimitsRef::Static(
            policy
                .limits
                .as_ref()
                .expect("the attribute gives either fixed limits or a limits function"),
        ),
    }
}

/// What the layer left for the attributes' check.
#[derive(Debug)]
enum LayerPart {
    Nothing,
    /// The application limits, to check with the attributes' under this key.
    ToCheck(Key),
    /// The application limits, already charged to this key: given back if refused.
    Charged(Key),
}

impl LayerPart {
    /// Takes the layer's state; a default-limit charge made before the route was known to
    /// carry an attribute is given back at once.
    async fn take(config: &HttpConfig, parts: &Parts, route: &str) -> Result<LayerPart, Rejection> {
        Ok(match context::take_layer_state() {
            LayerState::Done => LayerPart::Nothing,
            LayerState::LeftToAttribute => LayerPart::ToCheck(
                Key::of(&config.default_key, parts, &config.trusted_proxies).map_err(|_| {
                    missing_connect_info("the rate limit layer");
                    Rejection::misconfigured()
                })?,
            ),
            LayerState::Charged {
                key,
                application,
                default,
                by_uri,
            } => {
                if let (true, Some(defaults)) = (default, &config.default_limits) {
                    // The scope the layer charged: what it saw of the route.
                    let scope = if by_uri { parts.uri.path() } else { route };
                    let entry = Entry {
                        key: &key,
                        scope,
                        limits: defaults,
                        cost: 1,
                        message: None,
                        reserves: false,
                    };
                    enforce::refund(config, &[entry]).await;
                }
                if application {
                    LayerPart::Charged(key)
                } else {
                    LayerPart::Nothing
                }
            }
        })
    }
}

/// Checks a request against its attributes (at `costs`, one per attribute, when given; at
/// each attribute's own cost otherwise) and what the layer left.
async fn check(
    config: &HttpConfig,
    route: Option<&str>,
    resolved: &[One],
    costs: Option<&[u64]>,
    layer: &LayerPart,
) -> Result<Leases, Rejection> {
    let handler = resolved.first().map_or("", |one| one.policy.handler);
    let mut needs: ArrayVec<SlotNeed<'_>, 8> = ArrayVec::new();
    for one in resolved {
        if let (Some(key), Some(limit)) = (&one.key, one.policy.concurrency) {
            needs.push(SlotNeed {
                key,
                scope: one.policy.scope.or(route).unwrap_or(one.policy.handler),
                limit: limit.get(),
                message: one.policy.error_message,
                wait: one.policy.queue,
            });
        }
    }
    let mut entries: ArrayVec<Entry<'_>, MAX_ENTRIES> = ArrayVec::new();
    let mut charged: ArrayVec<Entry<'_>, 1> = ArrayVec::new();
    for (i, one) in resolved.iter().enumerate() {
        let Some(key) = &one.key else { continue };
        entries.push(Entry {
            key,
            scope: one.policy.scope.or(route).unwrap_or(one.policy.handler),
            limits: one.limits.limits(),
            cost: costs.and_then(|c| c.get(i).copied()).unwrap_or(one.cost),
            message: one.policy.error_message,
            reserves: one.policy.reserves,
        });
    }
    let application = config.application_limits.as_deref();
    match (layer, application) {
        (LayerPart::ToCheck(key), Some(limits)) => entries.push(application_entry(key, limits)),
        (LayerPart::Charged(key), Some(limits)) => charged.push(application_entry(key, limits)),
        _ => {}
    }
    // Slots before rates: a request refused for want of a slot is charged nothing (what the
    // layer charged for it is given back). A refused rate drops the leases, which gives the
    // slots back. One slot of the same key as an attribute's rates (`concurrency = N` beside
    // them) is taken in the same store call as they are, their group put first.
    let lead = match needs.as_slice() {
        [need] => entries
            .iter()
            .find(|e| !e.reserves && e.key.as_bytes() == need.key.as_bytes())
            .copied(),
        _ => None,
    };
    let mut slots = match lead {
        Some(lead) => {
            entries.sort_by_key(|e| !e.checked_with(&lead));
            Vec::with_capacity(1)
        }
        None if needs.is_empty() => Vec::new(),
        None => match take_slots(config, route.unwrap_or(handler), &needs).await {
            Ok(leases) => leases,
            Err(rejection) => {
                enforce::refund(config, &charged).await;
                return Err(rejection);
            }
        },
    };
    let slot = lead.and_then(|_| needs.first());
    let (_, held) =
        enforce_holding(config, route.unwrap_or(handler), &entries, &charged, slot).await?;
    slots.extend(held);
    // The route's capacity after the rates, so that a client over its own limit hears so at
    // once (429) rather than after waiting; a request shed (503) is given its rates back.
    let capacity = resolved.iter().find_map(|one| {
        let (key, limit) = (one.key.as_ref()?, one.policy.capacity?);
        Some((one, key, limit))
    });
    let capacity = match capacity {
        None => None,
        Some((one, key, limit)) => {
            let scope = one.policy.scope.or(route).unwrap_or(one.policy.handler);
            // A client that hangs up while it waits is given its rates back.
            let hang_up = RefundOnDrop {
                config,
                entries: &entries,
                charged: &charged,
            };
            let admitted = Box::pin(admit_capacity(
                config,
                route.unwrap_or(handler),
                scope,
                key,
                one,
                limit,
            ))
            .await;
            std::mem::forget(hang_up);
            match admitted {
                Ok(permit) => Some(permit),
                Err(rejection) => {
                    enforce::refund(config, &entries).await;
                    enforce::refund(config, &charged).await;
                    return Err(rejection);
                }
            }
        }
    };
    Ok(Leases::holding(slots, capacity))
}

/// Gives a request's rates back when it is dropped waiting for capacity (its client hung
/// up). At once with a store that answers at once (memory); another store's refund would
/// need a task, and the request stays charged there (as one admitted by its rates).
struct RefundOnDrop<'a, 'r> {
    config: &'a HttpConfig,
    entries: &'a [Entry<'r>],
    charged: &'a [Entry<'r>],
}

impl Drop for RefundOnDrop<'_, '_> {
    fn drop(&mut self) {
        let (config, entries, charged) = (self.config, self.entries, self.charged);
        let _ = enforce::now_or_never(async {
            enforce::refund(config, entries).await;
            enforce::refund(config, charged).await;
        });
    }
}

/// A place in the capacity of `scope` for `key`'s request, waiting as the attribute allows;
/// the 503 when it is shed.
async fn admit_capacity(
    config: &HttpConfig,
    route: &str,
    scope: &str,
    key: &Key,
    one: &One,
    limit: CapacityLimit,
) -> Result<crate::capacity::Permit, Rejection> {
    let capacity = config.limiter.capacity_of(scope, limit);
    let client = {
        use std::hash::BuildHasher;
        CLIENT_HASH.hash_one(key.as_bytes())
    };
    let priority = one.limits.limits().priority();
    let started = tokio::time::Instant::now();
    match capacity.acquire(client, priority, one.policy.queue).await {
        Ok(permit) => Ok(permit),
        Err(shed) => {
            let stats = capacity.stats();
            config.limiter.observe(
                &crate::observe::Observation::new(
                    route,
                    key.as_bytes(),
                    crate::observe::Outcome::Overloaded,
                )
                .with_label(one.limits.limits().label()),
            );
            if let Some(unlogged) =
                config
                    .rejections
                    .first_of_spell(route, b"\x00capacity", Duration::from_secs(1))
            {
                tracing::warn!(
                    route, limit = ?stats.limit, in_flight = stats.in_flight, queued = stats.queued,
                    shed = ?shed, unlogged_before = unlogged,
                    "model at capacity: request shed with 503; further sheds are counted, not logged, for a second"
                );
            }
            Err(Rejection::overloaded(shed, &stats, Some(started.elapsed())))
        }
    }
}

/// The hash a client's key is known by in a capacity's queues.
static CLIENT_HASH: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0xfa1e_c0de);

fn application_entry<'r>(key: &'r Key, limits: &'r Limits) -> Entry<'r> {
    Entry {
        key,
        scope: HttpConfig::APPLICATION,
        limits,
        cost: 1,
        message: None,
        reserves: false,
    }
}

/// Remembers that `route` carries an attribute: default limits skip it, and application
/// limits are checked with the attribute's.
#[inline(never)]
fn note_limited_route(config: &HttpConfig, route: &str) {
    if !config.limited_routes.contains(route) {
        config.limited_routes.insert(route.to_owned());
    }
}

/// The extractor the attribute injects: by the time the handler runs, the request has passed
/// every limit of its attributes (or is exempt), and otherwise the client got the 429 answer.
///
/// It holds nothing, so that a handler's future carries no drop code for it: attributes
/// with `concurrency = N` or `capacity` use [`HoldingGuard`], which holds what the request
/// takes while the handler runs (the attribute chooses which).
///
/// Its attributes have no key function (see [`KeyedGuard`]): they are resolved and checked
/// by one function compiled once for every handler, from their [`Spec::TEXT`](super::Spec::TEXT); what is
/// generic per handler is a call and a small future around the answer.
pub struct Guard<S: Spec> {
    _spec: PhantomData<fn() -> S>,
}

/// [`Guard`] for attributes with `concurrency = N` or `capacity`: it holds the request's
/// slots and its place in the route's capacity, given back when the handler's future, which
/// owns the guard, completes or is dropped.
pub struct HoldingGuard<S: Spec> {
    _slots: Leases,
    _spec: PhantomData<fn() -> S>,
}

impl<S: Spec, St: Send + Sync> FromRequestParts<St> for Guard<S> {
    type Rejection = Rejection;

    // The attribute picks the guard: a key function is awaited by `KeyedGuard`, slots and
    // capacity are held by `HoldingGuard` (here, a key function's attribute would count the
    // client address, and a slot would be given back at once).
    fn from_request_parts(
        parts: &mut Parts,
        _state: &St,
    ) -> impl Future<Output = Result<Guard<S>, Rejection>> + Send {
        Guarded::<Guard<S>> {
            settling: guard_specs(parts, S::SPEC.specs()),
            _guard: PhantomData,
        }
    }
}

impl<S: Spec, St: Send + Sync> FromRequestParts<St> for HoldingGuard<S> {
    type Rejection = Rejection;

    fn from_request_parts(
        parts: &mut Parts,
        _state: &St,
    ) -> impl Future<Output = Result<HoldingGuard<S>, Rejection>> + Send {
        Guarded::<HoldingGuard<S>> {
            settling: guard_specs(parts, S::SPEC.specs()),
            _guard: PhantomData,
        }
    }
}

/// [`Guard`]'s and [`HoldingGuard`]'s extraction: the check's answer, made a guard.
struct Guarded<'a, G> {
    settling: Settling<'a, Leases>,
    _guard: PhantomData<fn() -> G>,
}

// One impl per guard, each building its guard in place: no helper to compile per handler.
// Matches rather than `map`s: each closure would be one more function per handler.
impl<S: Spec> Future for Guarded<'_, Guard<S>> {
    type Output = Result<Guard<S>, Rejection>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut().settling.poll_unpin(cx) {
            // Nothing to hold: no attribute takes a slot or capacity (the attribute's choice).
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(Guard { _spec: PhantomData })),
            Poll::Ready(Err(rejection)) => Poll::Ready(Err(rejection)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: Spec> Future for Guarded<'_, HoldingGuard<S>> {
    type Output = Result<HoldingGuard<S>, Rejection>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut().settling.poll_unpin(cx) {
            Poll::Ready(Ok(slots)) => Poll::Ready(Ok(HoldingGuard {
                _slots: slots,
                _spec: PhantomData,
            })),
            Poll::Ready(Err(rejection)) => Poll::Ready(Err(rejection)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A handler's first argument with the check of [`Guard`] (or of [`HoldingGuard`], when
/// `H` is [`Leases`]) in front of its extraction: what the attribute makes of the first of
/// several arguments, so that the handler keeps its number of extractors (axum compiles
/// its whole extraction once more per handler for each one more). The request is checked
/// before the argument or any other is extracted, as by a `Guard` of its own; the handler
/// binds the argument's pattern in the first field, and the slots (if `H` holds them) in
/// the second, held until its future completes or is dropped.
#[doc(hidden)]
pub struct CheckedParts<S, T, H>(pub T, pub H, pub PhantomData<S>);

/// [`CheckedParts`] for a handler's only argument, which may read the body (its check, too,
/// comes before the body is read).
#[doc(hidden)]
pub struct Checked<S, T, H>(pub T, pub H, pub PhantomData<S>);

/// What a checked argument keeps of the check: nothing, or the slots ([`Leases`]).
#[doc(hidden)]
pub trait Held: Send + Sized + 'static {
    /// What is kept of `leases`.
    fn hold(leases: Leases) -> Self;
}

impl Held for () {
    #[inline]
    fn hold(leases: Leases) {
        leases.release();
    }
}

impl Held for Leases {
    #[inline]
    fn hold(leases: Leases) -> Leases {
        leases
    }
}

/// How a [`Checked`] is extracted: `M` is how its argument is.
#[doc(hidden)]
pub struct ViaChecked<M>(PhantomData<fn() -> M>);

impl<S, T, H, St> FromRequestParts<St> for CheckedParts<S, T, H>
where
    S: Spec,
    T: FromRequestParts<St> + Send,
    H: Held,
    St: Send + Sync,
{
    type Rejection = Response;

    // Per handler, a call and a small future around the answer, as for `Guard`: the check
    // and the extraction are one future generic over the argument, shared by every handler
    // whose first argument is of the same type.
    fn from_request_parts(
        parts: &mut Parts,
        state: &St,
    ) -> impl Future<Output = Result<CheckedParts<S, T, H>, Response>> + Send {
        Checking::<CheckedParts<S, T, H>, _> {
            checking: check_parts::<T, H, St>(parts, state, &S::SPEC),
            _arg: PhantomData,
        }
    }
}

impl<S, T, H, St, M> FromRequest<St, ViaChecked<M>> for Checked<S, T, H>
where
    S: Spec,
    T: FromRequest<St, M> + Send,
    H: Held,
    St: Send + Sync,
{
    type Rejection = Response;

    fn from_request(
        req: Request,
        state: &St,
    ) -> impl Future<Output = Result<Checked<S, T, H>, Response>> + Send {
        Checking::<Checked<S, T, H>, _> {
            checking: check_request::<T, H, St, M>(req, state, &S::SPEC),
            _arg: PhantomData,
        }
    }
}

/// [`CheckedParts`]'s work: [`guard_specs`]'s check, then the argument.
async fn check_parts<T, H, St>(
    parts: &mut Parts,
    state: &St,
    spec: &'static SpecRef,
) -> Result<(T, H), Response>
where
    T: FromRequestParts<St>,
    H: Held,
    St: Send + Sync,
{
    let answer = match guard_specs(parts, spec.specs()) {
        Settling::Ready(answer) => answer.expect("a check answered at once"),
        waiting => waiting.await,
    };
    let held = match answer {
        Ok(leases) => H::hold(leases),
        Err(rejection) => return Err(rejection.into_response()),
    };
    match T::from_request_parts(parts, state).await {
        Ok(value) => Ok((value, held)),
        Err(rejection) => Err(rejection.into_response()),
    }
}

/// [`Checked`]'s work: [`guard_specs`]'s check on the request's head, then the argument.
async fn check_request<T, H, St, M>(
    req: Request,
    state: &St,
    spec: &'static SpecRef,
) -> Result<(T, H), Response>
where
    T: FromRequest<St, M>,
    H: Held,
    St: Send + Sync,
{
    let (parts, body) = req.into_parts();
    // Answered at once (an in-memory store), the check is not awaited.
    let answer = match guard_specs(&parts, spec.specs()) {
        Settling::Ready(answer) => answer.expect("a check answered at once"),
        waiting => waiting.await,
    };
    let held = match answer {
        Ok(leases) => H::hold(leases),
        Err(rejection) => return Err(rejection.into_response()),
    };
    match T::from_request(Request::from_parts(parts, body), state).await {
        Ok(value) => Ok((value, held)),
        Err(rejection) => Err(rejection.into_response()),
    }
}

pin_project_lite::pin_project! {
    /// A checked argument's extraction (a [`Checked`], [`CheckedParts`] or [`CostedArg`]):
    /// the answer of the future shared by every handler that takes the same argument, made
    /// the argument `A`. All that is compiled per handler.
    struct Checking<A, F> {
        #[pin]
        checking: F,
        _arg: PhantomData<A>,
    }
}

impl<S, T, H, F> Future for Checking<CheckedParts<S, T, H>, F>
where
    F: Future<Output = Result<(T, H), Response>>,
{
    type Output = Result<CheckedParts<S, T, H>, Response>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().checking.poll(cx) {
            Poll::Ready(Ok((value, held))) => {
                Poll::Ready(Ok(CheckedParts(value, held, PhantomData)))
            }
            Poll::Ready(Err(rejection)) => Poll::Ready(Err(rejection)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S, T, H, F> Future for Checking<Checked<S, T, H>, F>
where
    F: Future<Output = Result<(T, H), Response>>,
{
    type Output = Result<Checked<S, T, H>, Response>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().checking.poll(cx) {
            Poll::Ready(Ok((value, held))) => Poll::Ready(Ok(Checked(value, held, PhantomData))),
            Poll::Ready(Err(rejection)) => Poll::Ready(Err(rejection)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// [`Guard`]'s whole extraction, not generic: the attributes resolved through their hooks,
/// then checked ([`guard`]).
fn guard_specs<'a>(parts: &'a Parts, specs: &'static Specs) -> Settling<'a, Leases> {
    let specs = specs.as_slice();
    let (config, route) = enter(parts);
    // The common case, resolved and checked in place: one attribute of rates alone.
    if let [spec] = specs {
        if let Some(answer) = guard_one_now(config, parts, route.map(MatchedPath::as_str), spec) {
            return Settling::Ready(Some(answer));
        }
    }
    let mut resolved = ArrayVec::new();
    if let Err(rejection) = resolve_hooks(config, parts, specs, &mut resolved) {
        return Settling::Ready(Some(Err(rejection)));
    }
    guard(config, parts, route, resolved)
}

/// [`guard_now`] for one attribute through its hooks, resolved where it is checked (no
/// [`One`] built and moved); `None` when it is not checked alone, or the store waits.
#[inline(always)]
fn guard_one_now(
    config: &'static HttpConfig,
    parts: &Parts,
    route: Option<&str>,
    spec: &'static SpecData,
) -> Option<Result<Leases, Rejection>> {
    let policy = spec.policy();
    let hooks = spec.hooks();
    // Decided before anything is resolved: the general path would resolve it again.
    if !checked_alone(config, policy) || !config.limiter.answers_now() {
        return None;
    }
    if hooks.exempt.is_some_and(|exempt| exempt(parts)) {
        return Some(Ok(Leases::default()));
    }
    let key = match attribute_key(config, parts, policy, None) {
        Ok((key, _)) => key,
        Err(rejection) => return Some(Err(rejection)),
    };
    let limits = attribute_limits(policy, None, hooks.limits_of, parts);
    let cost = hooks.cost.map_or(1, |cost| cost(parts));
    check_alone(config, route, policy, Some(&key), &limits, cost)
}

/// The most attributes on one handler.
const MAX_SPECS: usize = 8;

/// What attributes without a key function say of this request, through their hooks, into
/// `resolved` (in place: room for eight attributes is too much to move around).
fn resolve_hooks(
    config: &'static HttpConfig,
    parts: &Parts,
    specs: &'static [SpecData],
    resolved: &mut ArrayVec<One, MAX_SPECS>,
) -> Result<(), Rejection> {
    for spec in specs {
        let policy = spec.policy();
        let hooks = spec.hooks();
        let exempt = hooks.exempt.is_some_and(|exempt| exempt(parts));
        resolved.push(resolve_with(
            config,
            parts,
            policy,
            exempt,
            None,
            hooks.limits_of,
            hooks.cost,
        )?);
    }
    Ok(())
}

/// [`Guard`] for attributes of which one at least has a key function (`key = path`), which
/// may be `async`: it is awaited in the extractor's own future, generic per handler. `N` is
/// the number of attributes (what the future keeps of them has room for exactly so many).
pub struct KeyedGuard<S: KeyedSpec, const N: usize> {
    _slots: Leases,
    _spec: PhantomData<fn() -> S>,
}

impl<S: KeyedSpec, St: Send + Sync, const N: usize> FromRequestParts<St> for KeyedGuard<S, N> {
    type Rejection = Rejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &St,
    ) -> Result<KeyedGuard<S, N>, Rejection> {
        let (config, route) = enter(parts);
        let resolved: Resolved<N> = resolve_keyed::<S, _>(config, parts).await?;
        Ok(KeyedGuard {
            _slots: guard(config, parts, route, resolved.as_ref()).await?,
            _spec: PhantomData,
        })
    }
}

/// What every annotated handler does first: the configuration serving the request, and its
/// matched route, recorded for the layer when it asks.
#[inline(always)]
fn enter(parts: &Parts) -> (&'static HttpConfig, Option<&MatchedPath>) {
    let (config, record_route) = context::attribute_context();
    let route = parts.extensions.get::<MatchedPath>();
    // Only default limits skip the routes recorded (a layer without them reads none).
    let layer_limits = config.default_limits.is_some() || config.application_limits.is_some();
    if let (true, true, Some(route)) = (record_route, layer_limits, route) {
        note_limited_route(config, route.as_str());
    }
    (config, route)
}

/// [`Guard`]'s and [`KeyedGuard`]'s check, once the attributes are resolved (owned, or
/// borrowed from the extractor's future): what the layer left, then the attributes' limits.
/// Not generic per handler, so compiled twice whatever the number of handlers, and answered
/// as a [`Settling`], so that no handler's future embeds the check's.
fn guard<'a, R: AsRef<[One]> + Send + 'a>(
    config: &'static HttpConfig,
    parts: &'a Parts,
    route: Option<&'a MatchedPath>,
    resolved: R,
) -> Settling<'a, Leases> {
    let route = route.map(MatchedPath::as_str);
    if let Some(answer) = guard_now(config, route, resolved.as_ref()) {
        return Settling::Ready(Some(answer));
    }
    let waits = resolved.as_ref().iter().any(|one| one.policy.waits());
    enforce::settling(config, waits, move || async move {
        let layer = LayerPart::take(config, parts, route.unwrap_or("")).await?;
        check(config, route, resolved.as_ref(), None, &layer).await
    })
}

/// [`guard`]'s common case, checked without a future: one attribute of rates alone (no
/// slot, capacity or reservation), no layer limits to take into account, and a store that
/// answers at once. `None` otherwise.
#[inline]
fn guard_now(
    config: &HttpConfig,
    route: Option<&str>,
    resolved: &[One],
) -> Option<Result<Leases, Rejection>> {
    let [one] = resolved else { return None };
    check_alone(
        config,
        route,
        one.policy,
        one.key.as_ref(),
        &one.limits,
        one.cost,
    )
}

/// Whether an attribute is checked alone, without a future: rates only (no slot, no
/// capacity, no reservation), and no limits of the layer's own to pass or fail with.
#[inline(always)]
fn checked_alone(config: &HttpConfig, policy: &Policy) -> bool {
    let simple = policy.concurrency.is_none() && policy.capacity.is_none() && !policy.reserves;
    let layer_limits = config.application_limits.is_some() || config.default_limits.is_some();
    simple && !layer_limits
}

/// One attribute's check without a future (`key`: `None` when the request is exempt);
/// `None` when it is not checked alone, or the store waits.
#[inline(always)]
fn check_alone(
    config: &HttpConfig,
    route: Option<&str>,
    policy: &'static Policy,
    key: Option<&Key>,
    limits: &LimitsRef,
    cost: u64,
) -> Option<Result<Leases, Rejection>> {
    if !checked_alone(config, policy) {
        return None;
    }
    let Some(key) = key else {
        // Exempt: nothing to check.
        return Some(Ok(Leases::default()));
    };
    let entry = Entry {
        key,
        scope: policy.scope.or(route).unwrap_or(policy.handler),
        limits: limits.limits(),
        cost,
        message: policy.error_message,
        reserves: false,
    };
    let answer = enforce::enforce_one_now(config, route.unwrap_or(policy.handler), &entry)?;
    Some(answer.map(|()| Leases::default()))
}

/// The extractor for attributes whose `cost` needs the handler's arguments: it finds the
/// keys and limits before the body is read, and the rewritten handler calls
/// [`check`](Deferred::check) once the arguments are extracted.
pub struct Deferred<S: Spec, const N: usize> {
    pending: Pending<Resolved<N>>,
    _spec: PhantomData<fn() -> S>,
}

/// A [`Deferred`] without its attributes' types (generic only over how many there are): what
/// its check needs, owned.
struct Pending<R> {
    config: &'static HttpConfig,
    route: Option<MatchedPath>,
    resolved: R,
    layer: LayerPart,
}

impl<S: Spec, St: Send + Sync, const N: usize> FromRequestParts<St> for Deferred<S, N> {
    type Rejection = Rejection;

    fn from_request_parts(
        parts: &mut Parts,
        _state: &St,
    ) -> impl Future<Output = Result<Deferred<S, N>, Rejection>> + Send {
        Deferring {
            pending: Resolving::new(parts, S::SPEC.specs()),
            _spec: PhantomData,
        }
    }
}

/// [`Deferred`]'s extraction: what [`Resolving`] finds, made a `Deferred`. All that is
/// compiled per handler.
struct Deferring<'a, S: Spec, const N: usize> {
    pending: Resolving<'a, Resolved<N>>,
    _spec: PhantomData<fn() -> S>,
}

impl<S: Spec, const N: usize> Future for Deferring<'_, S, N> {
    type Output = Result<Deferred<S, N>, Rejection>;

    // Matches rather than `map`s: each closure would be one more function per handler.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut().pending.poll_unpin(cx) {
            Poll::Ready(Ok(pending)) => Poll::Ready(Ok(Deferred {
                pending,
                _spec: PhantomData,
            })),
            Poll::Ready(Err(rejection)) => Poll::Ready(Err(rejection)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What a [`Deferred`] finds before the body is read: its attributes, resolved at once
/// through their hooks, then what the layer left. Generic only over how many attributes
/// there are.
struct Resolving<'a, R> {
    config: &'static HttpConfig,
    route: Option<MatchedPath>,
    resolved: Option<Result<R, Rejection>>,
    layer: Option<Settling<'a, LayerPart>>,
}

impl<'a, R: FromIterator<One>> Resolving<'a, R> {
    fn new(parts: &'a Parts, specs: &'static Specs) -> Resolving<'a, R> {
        let specs = specs.as_slice();
        let (config, route) = enter(parts);
        let mut ones = ArrayVec::new();
        let (resolved, layer) = match resolve_hooks(config, parts, specs, &mut ones) {
            Ok(()) => (
                Ok(ones.drain(..).collect()),
                Some(layer_part(config, parts, route)),
            ),
            Err(rejection) => (Err(rejection), None),
        };
        Resolving {
            config,
            route: route.cloned(),
            resolved: Some(resolved),
            layer,
        }
    }

    fn poll_unpin(&mut self, cx: &mut Context<'_>) -> Poll<Result<Pending<R>, Rejection>> {
        let layer = match &mut self.layer {
            Some(layer) => std::task::ready!(layer.poll_unpin(cx)),
            None => Ok(LayerPart::Nothing),
        };
        Poll::Ready(match (self.resolved.take(), layer) {
            (Some(Ok(resolved)), Ok(layer)) => Ok(Pending {
                config: self.config,
                route: self.route.take(),
                resolved,
                layer,
            }),
            (Some(Err(rejection)), _) | (_, Err(rejection)) => Err(rejection),
            (None, _) => panic!("a finished extraction is not polled again"),
        })
    }
}

/// [`Deferred`] for attributes of which one at least has a key function (`key = path`),
/// which may be `async`: it is awaited in the extractor's own future, generic per handler.
/// The rewritten handler uses it as a [`Deferred`].
pub struct KeyedDeferred<S: KeyedSpec, const N: usize>(Deferred<S, N>);

impl<S: KeyedSpec, const N: usize> std::ops::Deref for KeyedDeferred<S, N> {
    type Target = Deferred<S, N>;

    fn deref(&self) -> &Deferred<S, N> {
        &self.0
    }
}

impl<S: KeyedSpec, St: Send + Sync, const N: usize> FromRequestParts<St> for KeyedDeferred<S, N> {
    type Rejection = Rejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &St,
    ) -> Result<KeyedDeferred<S, N>, Rejection> {
        let (config, route) = enter(parts);
        let route = route.cloned();
        let resolved = resolve_keyed::<S, _>(config, parts).await?;
        let layer = layer_part(config, parts, route.as_ref()).await?;
        Ok(KeyedDeferred(Deferred {
            pending: Pending {
                config,
                route,
                resolved,
                layer,
            },
            _spec: PhantomData,
        }))
    }
}

/// A handler's costs computed from its last argument, by the generated code: what
/// [`CostedArg`] asks once the argument is extracted.
pub trait Costed<T, const N: usize>: Spec {
    /// Each attribute's cost, in order, from the argument, which is given back.
    fn costs(value: T) -> (T, [u64; N]);
}

/// How a [`CostedArg`] is extracted: `M` is how its argument is (axum's marker for the
/// last argument of a handler).
#[doc(hidden)]
pub struct ViaCosted<M>(PhantomData<fn() -> M>);

/// The last argument of a handler whose `cost` uses only that argument, extracted and
/// then checked: keys and limits found before the argument is (before the body is read),
/// the check once its costs are known. The handler binds the argument's pattern in the
/// first field and the slots the request holds in the second (kept until its future
/// completes or is dropped); its body is untouched, and every `await` is in this
/// extractor's own future: generic code of this crate, not code of each handler.
#[doc(hidden)]
pub struct CostedArg<S, T, const N: usize>(pub T, pub Leases, pub PhantomData<S>);

impl<S, T, St, M, const N: usize> FromRequest<St, ViaCosted<M>> for CostedArg<S, T, N>
where
    S: Costed<T, N>,
    T: FromRequest<St, M> + Send,
    St: Send + Sync,
{
    type Rejection = Response;

    // Per handler, a call and a small future around the answer: the work is one future of
    // this crate generic over the argument's type and the number of attributes, compiled
    // once for every handler that takes the same argument.
    fn from_request(
        req: Request,
        state: &St,
    ) -> impl Future<Output = Result<CostedArg<S, T, N>, Response>> + Send {
        Checking::<CostedArg<S, T, N>, _> {
            checking: costed::<T, St, M, N>(req, state, &S::SPEC, S::costs),
            _arg: PhantomData,
        }
    }
}

/// [`CostedArg`]'s whole extraction, generic over the argument but not over the handler:
/// keys and limits found, the argument extracted, its costs asked (`costs`, the spec's
/// [`Costed::costs`]), then the check.
async fn costed<T, St, M, const N: usize>(
    req: Request,
    state: &St,
    spec: &'static SpecRef,
    costs: fn(T) -> (T, [u64; N]),
) -> Result<(T, Leases), Response>
where
    T: FromRequest<St, M>,
    St: Send + Sync,
{
    let (req, pending) = resolve_request::<N>(req, spec.specs()).await?;
    let value = match T::from_request(req, state).await {
        Ok(value) => value,
        Err(rejection) => return Err(rejection.into_response()),
    };
    let (value, costs) = costs(value);
    let slots = check_costs(pending, costs).await?;
    Ok((value, slots))
}

impl<S, T, const N: usize, F> Future for Checking<CostedArg<S, T, N>, F>
where
    F: Future<Output = Result<(T, Leases), Response>>,
{
    type Output = Result<CostedArg<S, T, N>, Response>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().checking.poll(cx) {
            Poll::Ready(Ok((value, slots))) => {
                Poll::Ready(Ok(CostedArg(value, slots, PhantomData)))
            }
            Poll::Ready(Err(rejection)) => Poll::Ready(Err(rejection)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// [`CostedArg`]'s work before its argument is extracted: the request taken apart to find
/// the keys and limits (and what the layer left), then put back together.
async fn resolve_request<const N: usize>(
    req: Request,
    specs: &'static Specs,
) -> Result<(Request, Pending<Resolved<N>>), Response> {
    let (parts, body) = req.into_parts();
    let pending = {
        let mut resolving: Resolving<'_, Resolved<N>> = Resolving::new(&parts, specs);
        std::future::poll_fn(|cx| resolving.poll_unpin(cx)).await
    };
    match pending {
        Ok(pending) => Ok((Request::from_parts(parts, body), pending)),
        Err(rejection) => Err(rejection.into_response()),
    }
}

/// [`CostedArg`]'s check, once the costs are known: the slots to hold, or the answer.
async fn check_costs<const N: usize>(
    pending: Pending<Resolved<N>>,
    costs: [u64; N],
) -> Result<Leases, Response> {
    pending
        .start(&costs)
        .await
        .map_err(IntoResponse::into_response)
}

/// The costed path's code generic over the number of attributes alone ([`resolve_request`],
/// [`check_costs`] and all they call), compiled here for one attribute, as nearly every
/// costed handler has: debug builds share generic code between crates (rustc's
/// `share-generics`, on below `opt-level = 2`), so a crate of handlers links to this code
/// instead of compiling it again. Never called; not in release builds, which share nothing.
#[cfg(debug_assertions)]
#[used]
static COSTED_ONE: fn(&mut Context<'_>, Request, &'static Specs) = costed_one;

#[cfg(debug_assertions)]
fn costed_one(cx: &mut Context<'_>, req: Request, specs: &'static Specs) {
    let work = async move {
        let (_, pending) = resolve_request::<1>(req, specs).await?;
        check_costs::<1>(pending, [1]).await
    };
    let _ = std::pin::pin!(work).poll(cx);
}

/// What the layer left for a [`Deferred`] check.
fn layer_part<'a>(
    config: &'static HttpConfig,
    parts: &'a Parts,
    route: Option<&'a MatchedPath>,
) -> Settling<'a, LayerPart> {
    let path = route.map_or("", MatchedPath::as_str);
    enforce::settling(config, false, move || LayerPart::take(config, parts, path))
}

impl<S: Spec, const N: usize> Deferred<S, N> {
    /// Checks the request now that the arguments are known: `costs` holds each attribute's
    /// cost, in order. The slots of `concurrency = N` come back in the result: hold it
    /// while the handler runs.
    pub async fn check(&self, costs: &[u64]) -> Result<Leases, Rejection> {
        self.pending.settled().check(costs).await
    }

    /// [`check`](Deferred::check), and the reservation of the attribute with `reserve =`
    /// (its cost in `costs` is the estimate): the handler settles it.
    pub async fn check_reserving(&self, costs: &[u64]) -> Result<(Leases, Reservation), Rejection> {
        self.pending.settled().check_reserving(costs).await
    }

    /// What the rewritten handler of an attribute with `reserve =` awaits before its body:
    /// [`check_reserving`](Deferred::check_reserving) as one small value of one type for
    /// every handler (the answer itself with an in-memory store), not a state machine
    /// compiled into each.
    #[doc(hidden)]
    pub fn reserving<'a>(&'a self, costs: &'a [u64]) -> Settling<'a, (Leases, Reservation)> {
        self.pending.settled().check_reserving(costs)
    }

    /// What the rewritten handler awaits: the check at `costs` (one per attribute, in
    /// order), then `body` (the original body) while the request holds its slots, given back
    /// when the body completes or is dropped. The extractor is taken, so that what it holds
    /// is gone once the check answers. One small future around the body's for every
    /// handler: the check itself is the same value whatever the handler (the answer itself
    /// with an in-memory store), compiled once.
    #[doc(hidden)]
    pub fn run<F: Future>(self, costs: &[u64], body: F) -> Run<F> {
        Run {
            check: Some(self.pending.start(costs)),
            slots: None,
            body,
        }
    }

    /// What the rewritten handler awaits before a body it can run in place (one without
    /// `return` or `?`, whose value is the handler's): the check at `costs`, answered with
    /// the slots to hold while the body runs. The extractor is taken, and the future is the
    /// same type for every handler (the answer itself with an in-memory store).
    #[doc(hidden)]
    pub fn checking(self, costs: &[u64]) -> Settling<'static, Leases> {
        self.pending.start(costs)
    }
}

impl<S: KeyedSpec, const N: usize> KeyedDeferred<S, N> {
    /// [`Deferred::run`].
    #[doc(hidden)]
    pub fn run<F: Future>(self, costs: &[u64], body: F) -> Run<F> {
        self.0.run(costs, body)
    }

    /// [`Deferred::checking`].
    #[doc(hidden)]
    pub fn checking(self, costs: &[u64]) -> Settling<'static, Leases> {
        self.0.checking(costs)
    }
}

pin_project_lite::pin_project! {
    /// [`Deferred::run`]'s future: the check, then the handler's body, holding the request's
    /// slots. Its `poll` is all that is compiled per handler.
    #[doc(hidden)]
    pub struct Run<F> {
        // `None` once answered.
        check: Option<Settling<'static, Leases>>,
        #[pin]
        body: F,
        // Declared after the body, so dropped after it: a body dropped before it completes (a
        // client that hangs up) holds the slots to its end, and gives them back with it.
        slots: Option<Leases>,
    }
}

impl<F> std::fmt::Debug for Run<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run").finish_non_exhaustive()
    }
}

/// [`Run`]'s check, not generic: ready once answered, keeping the slots in `slots`.
fn poll_check(
    check: &mut Option<Settling<'static, Leases>>,
    slots: &mut Option<Leases>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Rejection>> {
    let Some(settling) = check else {
        return Poll::Ready(Ok(()));
    };
    let answer = std::task::ready!(settling.poll_unpin(cx));
    *check = None;
    Poll::Ready(answer.map(|held| *slots = Some(held)))
}

impl<F: Future> Future for Run<F> {
    type Output = Result<F::Output, Rejection>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Err(rejection) = std::task::ready!(poll_check(this.check, this.slots, cx)) {
            return Poll::Ready(Err(rejection));
        }
        let output = std::task::ready!(this.body.poll(cx));
        *this.slots = None;
        Poll::Ready(Ok(output))
    }
}

impl<R: AsRef<[One]> + Send + Sync + 'static> Pending<R> {
    fn settled(&self) -> Settled<'_> {
        Settled {
            config: self.config,
            route: self.route.as_ref().map(MatchedPath::as_str),
            resolved: self.resolved.as_ref(),
            layer: &self.layer,
        }
    }

    /// [`Run`]'s check: answered at once with a store that answers at once and no queue to
    /// wait in; else a boxed future that owns what it needs.
    fn start(self, costs: &[u64]) -> Settling<'static, Leases> {
        let waits = self.resolved.as_ref().iter().any(|one| one.policy.waits());
        if !waits && self.config.limiter.answers_now() {
            // Cannot be pending; were it, refuse rather than let the request through unchecked.
            let answer = enforce::now_or_never(self.check(costs));
            return Settling::Ready(Some(
                answer.unwrap_or_else(|| Err(Rejection::store_failed())),
            ));
        }
        let costs: ArrayVec<u64, MAX_SPECS> = costs.iter().copied().collect();
        Settling::Waiting(Box::pin(async move { self.check(&costs).await }))
    }

    async fn check(&self, costs: &[u64]) -> Result<Leases, Rejection> {
        let Settled {
            config,
            route,
            resolved,
            layer,
        } = self.settled();
        check(config, route, resolved, Some(costs), layer).await
    }
}

/// A [`Deferred`] without its attributes' types: its checks, compiled once for every
/// handler.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct Settled<'a> {
    config: &'static HttpConfig,
    route: Option<&'a str>,
    resolved: &'a [One],
    layer: &'a LayerPart,
}

impl std::fmt::Debug for Settled<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settled")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl<'a> Settled<'a> {
    /// [`Deferred::check`]: the answer at once with a store that answers at once.
    pub fn check(self, costs: &'a [u64]) -> Settling<'a, Leases> {
        let Settled {
            config,
            route,
            resolved,
            layer,
        } = self;
        let waits = resolved.iter().any(|one| one.policy.waits());
        enforce::settling(config, waits, move || {
            check(config, route, resolved, Some(costs), layer)
        })
    }

    /// [`Deferred::check_reserving`].
    pub fn check_reserving(self, costs: &'a [u64]) -> Settling<'a, (Leases, Reservation)> {
        let reserving = move |leases| (leases, self.reservation(costs));
        match self.check(costs) {
            Settling::Ready(answer) => Settling::Ready(answer.map(|answer| answer.map(reserving))),
            Settling::Waiting(check) => {
                Settling::Waiting(Box::pin(async move { check.await.map(reserving) }))
            }
        }
    }

    /// The reservation of the attribute with `reserve =`, once the check admitted it.
    fn reservation(self, costs: &[u64]) -> Reservation {
        let Settled {
            config,
            route,
            resolved,
            ..
        } = self;
        let (index, one) = resolved
            .iter()
            .enumerate()
            .find(|(_, one)| one.policy.reserves)
            .expect("the attribute with `reserve =` is one of the handler's");
        match &one.key {
            None => Reservation::exempt(one.limits.clone()),
            Some(key) => {
                let scope = one.policy.scope.or(route).unwrap_or(one.policy.handler);
                let reserved = costs.get(index).copied().unwrap_or(one.cost);
                // The reservation's own admission; outside a layer, which keeps none, the
                // limits' first rate as spent.
                let admitted = context::reserved_admission().unwrap_or_else(|| {
                    let rate = one.limits.limits().rates().next().expect("a rate");
                    Decision::allowed(rate, 0, Duration::ZERO)
                });
                Reservation::new(
                    config.limiter.clone(),
                    Arc::from(scope),
                    one.limits.clone(),
                    Arc::from(key.as_bytes()),
                    reserved,
                    admitted,
                )
                .on_settle(context::record_settled)
                .on_route(route.unwrap_or(one.policy.handler))
            }
        }
    }
}

/// What the code generated by `#[rate_limit]` calls; not a public API.
#[doc(hidden)]
pub mod support {
    use std::cell::Cell;
    use std::future::Future;

    use super::super::identity::{Identity, IntoKey};
    use super::super::response::Rejection;

    /// Holds a key function's result until [`KeyFromFuture`] or [`KeyFromValue`] takes it:
    /// method resolution picks the first for a future (an `async fn`), the second for a
    /// value (a plain `fn`).
    pub struct Probe<T>(Cell<Option<T>>);

    impl<T> Probe<T> {
        /// Wraps a key function's result.
        pub fn new(value: T) -> Probe<T> {
            Probe(Cell::new(Some(value)))
        }

        fn take(&self) -> T {
            self.0.take().expect("a probe is read once")
        }
    }

    /// The key of an `async` key function.
    pub trait KeyFromFuture {
        /// The key, once the function's future completes.
        fn key_future(self) -> impl Future<Output = Result<Identity, Rejection>> + Send;
    }

    impl<F> KeyFromFuture for Probe<F>
    where
        F: Future + Send,
        F::Output: IntoKey,
    {
        fn key_future(self) -> impl Future<Output = Result<Identity, Rejection>> + Send {
            let future = self.take();
            async move { future.await.into_key() }
        }
    }

    /// The key of a plain key function.
    pub trait KeyFromValue {
        /// The key, at once.
        fn key_future(self) -> std::future::Ready<Result<Identity, Rejection>>;
    }

    impl<K: IntoKey> KeyFromValue for &Probe<K> {
        fn key_future(self) -> std::future::Ready<Result<Identity, Rejection>> {
            std::future::ready(self.take().into_key())
        }
    }

    /// A request's cost, from any integer type (a negative cost counts as 0).
    #[diagnostic::on_unimplemented(
        message = "`cost` must be an integer, not `{Self}`",
        note = "`cost = EXPR` takes an integer expression, such as `cost = batch.len()`"
    )]
    pub trait Cost {
        /// The cost in units.
        fn units(self) -> u64;
    }

    macro_rules! unsigned {
        ($($t:ty),*) => {$(impl Cost for $t { fn units(self) -> u64 { u64::try_from(self).unwrap_or(u64::MAX) } })*};
    }
    macro_rules! signed {
        ($($t:ty),*) => {$(impl Cost for $t { fn units(self) -> u64 { u64::try_from(self.max(0)).unwrap_or(u64::MAX) } })*};
    }
    unsigned!(u8, u16, u32, u64, u128, usize);
    signed!(i8, i16, i32, i64, i128, isize);

    /// Pins the type of what `future` returns, so that `?` and `return` inside a handler's
    /// body infer as they did before the rewrite moved it into an `async` block.
    pub fn returns<T, F: Future<Output = T>>(future: F) -> F {
        future
    }
}
