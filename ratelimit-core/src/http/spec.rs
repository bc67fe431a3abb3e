//! A handler's `#[rate_limit]` attributes as the generated code describes them, and the
//! table that turns that description into their policies once per process.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::Duration;

use http::HeaderName;
use http::request::Parts;
use once_cell::race::OnceRef;

use super::identity::Identity;
use super::key::KeySource;
use super::response::Rejection;
use crate::attribute::{self, AttributeText, CapacityText, KeyText};
use crate::capacity::CapacityLimit;
use crate::limits::{Limits, LimitsRef};

/// What one `#[rate_limit]` attribute says, built once per attribute by the generated code.
#[derive(Debug)]
pub struct Policy {
    pub(super) handler: &'static str,
    pub(super) limits: Option<Limits>,
    pub(super) key: Option<KeySource>,
    pub(super) scope: Option<&'static str>,
    pub(super) error_message: Option<&'static str>,
    pub(super) concurrency: Option<NonZeroU32>,
    pub(super) capacity: Option<CapacityLimit>,
    pub(super) queue: Option<Duration>,
    pub(super) reserves: bool,
}

impl Policy {
    /// The policy of the handler named `handler` (`module::path::fn_name`, for logs and as the
    /// fallback scope when a request carries no matched route).
    pub fn new(handler: &'static str) -> Policy {
        Policy {
            handler,
            limits: None,
            key: None,
            scope: None,
            error_message: None,
            concurrency: None,
            capacity: None,
            queue: None,
            reserves: false,
        }
    }

    /// `capacity = adaptive | N`: at most so many requests of this route in flight across
    /// every client of this instance, shared fairly between them (see [`CapacityLimit`]).
    /// The limiter's builder may size it instead
    /// ([`LimiterBuilder::capacity`](crate::LimiterBuilder::capacity)).
    pub fn capacity(mut self, limit: CapacityLimit) -> Policy {
        self.capacity = Some(limit);
        self
    }

    /// `queue = "2s"`: a request that finds the route's capacity, or its client's
    /// concurrency slots, full waits up to `wait` (round robin across clients, higher
    /// priority first) before it is refused.
    pub fn queue(mut self, wait: Duration) -> Policy {
        self.queue = Some(wait);
        self
    }

    /// Whether a request may wait for a slot or for capacity.
    pub(super) fn waits(&self) -> bool {
        self.capacity.is_some() || (self.queue.is_some() && self.concurrency.is_some())
    }

    /// `reserve = EXPR`: the cost is an estimate, reserved and settled by the handler with
    /// the [`Reservation`](crate::Reservation) it is given.
    pub fn reserves(mut self) -> Policy {
        self.reserves = true;
        self
    }

    /// Fixed limits (without them, the spec's `limits` function answers per request).
    pub fn limits(mut self, limits: Limits) -> Policy {
        self.limits = Some(limits);
        self
    }

    /// Who is counted (default: the limiter's default key, the client IP).
    pub fn key(mut self, key: KeySource) -> Policy {
        self.key = Some(key);
        self
    }

    /// One budget shared by every handler naming the same scope.
    pub fn scope(mut self, scope: &'static str) -> Policy {
        self.scope = Some(scope);
        self
    }

    /// At most `slots` requests of one key in flight at once (`concurrency = N`): a slot is
    /// taken before any rate is charged and given back when the handler's future completes
    /// or is dropped.
    pub fn concurrency(mut self, slots: NonZeroU32) -> Policy {
        self.concurrency = Some(slots);
        self
    }

    /// The `detail` of the 429 answer instead of `Rate limit exceeded: 10 per 1 minute`.
    pub fn error_message(mut self, message: &'static str) -> Policy {
        self.error_message = Some(message);
        self
    }
}

/// A handler's `#[rate_limit]` attributes, as the generated code describes them: one type
/// per handler, whose [`TEXT`](Spec::TEXT) holds every attribute's options in order (as
/// [`attribute::write`] writes them) and whose [`HOOKS`](Spec::HOOKS) its hooks, if any.
/// Several attributes on one handler are checked as one.
pub trait Spec: Send + Sync + 'static {
    /// The handler's path and its attributes' options: a string constant of the generated
    /// code, the quickest item for the compiler to check in every crate of handlers.
    const TEXT: &'static str;
    /// Each attribute's hooks, in order, when one at least has some (none by default).
    const HOOKS: &'static [Hooks] = &[];
    /// Both, as the extractors carry them (not given by the generated code).
    #[doc(hidden)]
    const SPEC: SpecRef = SpecRef {
        text: Self::TEXT,
        hooks: Self::HOOKS,
    };
}

/// A [`Spec`] of which one attribute at least has a key function (`key = path`), which may
/// be `async`: [`KeyedGuard`](super::KeyedGuard) and
/// [`KeyedDeferred`](super::KeyedDeferred) await it.
pub trait KeyedSpec: Spec {
    /// The key function of the attribute at `index` (any other index: the client).
    fn key(index: usize, parts: &Parts)
    -> impl Future<Output = Result<Identity, Rejection>> + Send;
}

/// An attribute's hooks: plain functions of the generated code, so that what every handler
/// does with them is compiled once.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct Hooks {
    /// `limits = path`: the limits of this request (`None` from it: the policy's).
    pub limits_of: Option<fn(&Parts) -> Option<LimitsRef>>,
    /// `cost = EXPR` when the expression uses no handler argument (`None`: 1).
    pub cost: Option<fn(&Parts) -> u64>,
    /// `exempt_when = path`: requests that skip this limit (`None`: none).
    pub exempt: Option<fn(&Parts) -> bool>,
}

impl Hooks {
    /// No hook.
    pub const NONE: Hooks = Hooks {
        limits_of: None,
        cost: None,
        exempt: None,
    };
}

/// One attribute, made ready for requests from its spec's text: its policy and its hooks.
#[derive(Debug)]
pub(crate) struct SpecData {
    policy: Policy,
    hooks: Hooks,
}

impl SpecData {
    /// The attribute's policy.
    #[inline]
    pub(crate) fn policy(&'static self) -> &'static Policy {
        &self.policy
    }

    /// The attribute's hooks.
    #[inline]
    pub(crate) fn hooks(&self) -> &Hooks {
        &self.hooks
    }
}

/// A handler's spec as its extractor names it ([`Spec::SPEC`]): its [`Spec::TEXT`] and
/// [`Spec::HOOKS`] in a constant the extractor's code borrows for the whole program, so
/// that one pointer carries it into the future shared with every handler, and the address
/// of that constant finds its attributes.
#[doc(hidden)]
#[derive(Debug)]
pub struct SpecRef {
    /// [`Spec::TEXT`].
    pub(super) text: &'static str,
    /// [`Spec::HOOKS`].
    pub(super) hooks: &'static [Hooks],
}

impl SpecRef {
    /// The handler's attributes, made on its first request and kept for the process in
    /// [`SPECS`], by the address of this constant. The common case is one probe of that
    /// table: two loads, no lock.
    #[inline]
    pub(crate) fn specs(&'static self) -> &'static Specs {
        let first = self.first_slot();
        let slot = &SPECS[first];
        if std::ptr::eq(slot.spec.load(Ordering::Relaxed), self) {
            if let Some(made) = slot.made.get() {
                return made;
            }
        }
        self.specs_slow(first)
    }

    /// Where the probe for this spec starts in [`SPECS`].
    #[inline]
    fn first_slot(&'static self) -> usize {
        (std::ptr::from_ref(self).addr() >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15_u64 as usize)
            >> (usize::BITS - SLOTS.trailing_zeros())
    }

    /// [`specs`](SpecRef::specs) past the first probe, or before the attributes are made.
    /// Equal constants may share an address, and then their attributes (made of nothing
    /// else); one constant at two addresses makes two equal sets of policies, which count
    /// in the same state (named by scope and route, never by address).
    #[cold]
    fn specs_slow(&'static self, first: usize) -> &'static Specs {
        let key = std::ptr::from_ref(self).cast_mut();
        for probe in 0..SLOTS {
            let slot = &SPECS[(first + probe) % SLOTS];
            let mut owner = slot.spec.load(Ordering::Relaxed);
            if owner.is_null() {
                owner = match slot.spec.compare_exchange(
                    std::ptr::null_mut(),
                    key,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => key,
                    Err(taken) => taken,
                };
            }
            if owner == key {
                // Two threads that race to make it each make one, and both use the one kept.
                return slot
                    .made
                    .get_or_init(|| Box::leak(Box::new(make(self.text, self.hooks))));
            }
        }
        // More handlers than slots: the rest in a map.
        static MORE: std::sync::OnceLock<dashmap::DashMap<usize, &'static Specs>> =
            std::sync::OnceLock::new();
        *MORE
            .get_or_init(dashmap::DashMap::new)
            .entry(key.addr())
            .or_insert_with(|| Box::leak(Box::new(make(self.text, self.hooks))))
    }
}

/// A handler's attributes, made ready for requests: what [`SpecRef::specs`] finds (one thin
/// reference, cheap to carry in the futures of the extractors).
#[derive(Debug)]
pub(crate) struct Specs {
    specs: Box<[SpecData]>,
}

impl Specs {
    /// Each attribute, in order.
    #[inline]
    pub(crate) fn as_slice(&'static self) -> &'static [SpecData] {
        &self.specs
    }
}

/// # Panics
/// On a text that `#[rate_limit]` did not write (a generated constant: never), or hooks
/// for more attributes than it has.
fn make(text: &'static str, hooks: &'static [Hooks]) -> Specs {
    let (handler, attributes) = attribute::parse(text).unwrap_or_else(|error| {
        panic!("#[rate_limit]: the spec {text:?} was written by another version of the attribute ({error})")
    });
    assert!(
        hooks.len() <= attributes.len(),
        "#[rate_limit]: hooks for more attributes than {handler} has"
    );
    let specs = attributes
        .iter()
        .enumerate()
        .map(|(index, attribute)| SpecData {
            policy: policy(handler, attribute),
            hooks: hooks.get(index).copied().unwrap_or(Hooks::NONE),
        })
        .collect();
    Specs { specs }
}

/// The policy of one attribute of the handler named `handler`.
fn policy(handler: &'static str, attribute: &AttributeText<'static>) -> Policy {
    let mut policy = Policy::new(handler);
    if let Some(text) = attribute.limits {
        let mut limits = Limits::parse(text).unwrap_or_else(|error| {
            panic!("#[rate_limit] on {handler}: limits {text:?} it checked: {error}")
        });
        if let Some(algorithm) = attribute.algorithm {
            limits = limits.with_algorithm(algorithm);
        }
        if let Some(burst) = attribute.burst {
            limits = limits.with_burst(burst);
        }
        policy = policy.limits(limits);
    }
    if let Some(key) = attribute.key {
        policy = policy.key(match key {
            KeyText::Ip => KeySource::Ip,
            KeyText::Global => KeySource::Global,
            KeyText::Custom => KeySource::Custom,
            KeyText::Header(name) => {
                KeySource::Header(HeaderName::try_from(name).unwrap_or_else(|_| {
                    panic!("#[rate_limit] on {handler}: header name {name:?} it checked")
                }))
            }
        });
    }
    if let Some(scope) = attribute.scope {
        policy = policy.scope(scope);
    }
    if let Some(message) = attribute.error_message {
        policy = policy.error_message(message);
    }
    if attribute.reserves {
        policy = policy.reserves();
    }
    if let Some(slots) = attribute.concurrency {
        policy = policy.concurrency(slots);
    }
    if let Some(capacity) = attribute.capacity {
        policy = policy.capacity(match capacity {
            CapacityText::Fixed(limit) => CapacityLimit::fixed(limit),
            CapacityText::Adaptive { min, max } => CapacityLimit::adaptive().min(min).max(max),
        });
    }
    if let Some(queue) = attribute.queue {
        policy = policy.queue(queue);
    }
    policy
}

/// Room for the specs of this many handlers in [`SPECS`] (a power of two).
const SLOTS: usize = 1024;

/// A handler's attributes in [`SPECS`]: the address of its spec (null: free), and them.
struct Slot {
    spec: AtomicPtr<SpecRef>,
    made: OnceRef<'static, Specs>,
}

/// The specs of the handlers in use, by their text's address's hash (linear probing): a
/// slot is taken once and for good, so that a reader needs no lock.
static SPECS: [Slot; SLOTS] = [const {
    Slot {
        spec: AtomicPtr::new(std::ptr::null_mut()),
        made: OnceRef::new(),
    }
}; SLOTS];

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec of `text` with `hooks`, leaked as the generated constants are `'static`.
    fn spec(text: String, hooks: &'static [Hooks]) -> &'static SpecRef {
        Box::leak(Box::new(SpecRef {
            text: text.leak(),
            hooks,
        }))
    }

    /// Specs of distinct handlers, more than the table has slots.
    fn handlers(count: usize) -> Vec<&'static SpecRef> {
        (0..count)
            .map(|i| spec(format!("tests::handler_{i}\nl9:10/minute;"), &[]))
            .collect()
    }

    #[test]
    fn each_handler_has_its_own_specs_made_once_in_the_table_and_past_it() {
        let handlers = handlers(SLOTS + SLOTS / 2);
        let made: Vec<&'static Specs> = handlers.iter().map(|spec| spec.specs()).collect();
        for (i, (spec, specs)) in handlers.iter().zip(&made).enumerate() {
            assert_eq!(specs.as_slice().len(), 1);
            let policy = specs.as_slice()[0].policy();
            assert_eq!(policy.handler, format!("tests::handler_{i}"));
            assert!(std::ptr::eq(spec.specs(), *specs), "made again");
        }
    }

    #[test]
    fn threads_that_race_for_a_handler_use_one_set_of_specs() {
        let handlers = handlers(64);
        let made: Vec<Vec<usize>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        handlers
                            .iter()
                            .map(|spec| std::ptr::from_ref(spec.specs()).addr())
                            .collect()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for other in &made[1..] {
            assert_eq!(other, &made[0]);
        }
    }

    fn never(_: &Parts) -> bool {
        false
    }

    #[test]
    fn each_attribute_has_its_own_hooks() {
        static HOOKS: [Hooks; 1] = [Hooks {
            exempt: Some(never),
            ..Hooks::NONE
        }];
        let text = "tests::hooked\nl9:10/minute;l8:100/hour;";
        let hooked = spec(text.to_owned(), &HOOKS).specs().as_slice();
        assert!(hooked[0].hooks().exempt.is_some());
        assert!(hooked[1].hooks().exempt.is_none(), "no hooks given: none");
        let plain = spec(text.to_owned(), &[]).specs().as_slice();
        assert!(plain[0].hooks().exempt.is_none());
    }

    #[test]
    fn every_option_of_the_text_is_in_the_policy() {
        let mut text = String::from("app::h\n");
        attribute::write(
            &mut text,
            &AttributeText {
                limits: Some("5/second"),
                key: Some(KeyText::Header("x-api-key")),
                scope: Some("shared"),
                error_message: Some("slow down"),
                concurrency: std::num::NonZeroU32::new(2),
                ..AttributeText::default()
            },
        );
        let specs = spec(text, &[]).specs().as_slice();
        let policy = specs[0].policy();
        assert_eq!(policy.handler, "app::h");
        assert_eq!(policy.scope, Some("shared"));
        assert_eq!(policy.error_message, Some("slow down"));
        assert_eq!(policy.concurrency.map(|slots| slots.get()), Some(2));
        assert!(matches!(&policy.key, Some(KeySource::Header(name)) if name == "x-api-key"));
        assert!(policy.limits.is_some());
    }
}
