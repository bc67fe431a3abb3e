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
    /// the [`Reservation`] it is given.
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
#[doc(hidden)]
#[derive(Debug)]
pub struct SpecData {
    policy: Policy,
    hooks: Hooks,
}

impl SpecData {
    /// The attribute's policy.
    #[inline]
    pub fn policy(&'static self) -> &'static Policy {
        &self.policy
    }

    /// The attribute's hooks.
    #[inline]
    pub(crate) fn hooks(&self) -> &Hooks {
        &self.hooks
    }
}

/// The attributes of the handler whose spec has `text` and `hooks` ([`Spec::TEXT`],
/// [`Spec::HOOKS`]), made on the handler's first request and kept for the process in
/// [`SPECS`], by the address of the text. The common case is one probe of that table: two
/// loads, no lock.
#[inline]
pub(crate) fn specs(text: &'static str, hooks: &'static [Hooks]) -> &'static [SpecData] {
    let first = first_slot(text);
    let slot = &SPECS[first];
    if std::ptr::eq(slot.text.load(Ordering::Relaxed), text.as_ptr()) {
        if let Some(made) = slot.made.get() {
            if std::ptr::eq(made.hooks, hooks) {
                return &made.specs;
            }
        }
    }
    specs_slow(text, hooks, first)
}

/// Where the probe for `text` starts in [`SPECS`].
#[inline]
fn first_slot(text: &'static str) -> usize {
    (text.as_ptr().addr() >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15_u64 as usize)
        >> (usize::BITS - SLOTS.trailing_zeros())
}

/// [`specs`] past the first probe, or before the attributes are made. Two specs share a
/// slot when their texts share an address (equal constants may) and their hooks do too;
/// a text at two addresses makes two equal sets of policies, which count in the same state
/// (named by scope and route, never by address).
#[cold]
fn specs_slow(text: &'static str, hooks: &'static [Hooks], first: usize) -> &'static [SpecData] {
    let key = text.as_ptr().cast_mut();
    for probe in 0..SLOTS {
        let slot = &SPECS[(first + probe) % SLOTS];
        let mut owner = slot.text.load(Ordering::Relaxed);
        if owner.is_null() {
            owner = match slot.text.compare_exchange(
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
            let made = slot
                .made
                .get_or_init(|| Box::leak(Box::new(make(text, hooks))));
            if std::ptr::eq(made.hooks, hooks) {
                return &made.specs;
            }
        }
    }
    // More handlers than slots: the rest in a map.
    type More = dashmap::DashMap<(usize, usize), &'static Made>;
    static MORE: std::sync::OnceLock<More> = std::sync::OnceLock::new();
    let made = *MORE
        .get_or_init(dashmap::DashMap::new)
        .entry((key.addr(), hooks.as_ptr().addr()))
        .or_insert_with(|| Box::leak(Box::new(make(text, hooks))));
    &made.specs
}

/// The attributes of one spec, made.
struct Made {
    /// The hooks they were made with (their address tells specs of one text apart).
    hooks: &'static [Hooks],
    specs: Box<[SpecData]>,
}

/// # Panics
/// On a text that `#[rate_limit]` did not write (a generated constant: never), or hooks
/// for more attributes than it has.
fn make(text: &'static str, hooks: &'static [Hooks]) -> Made {
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
    Made { hooks, specs }
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

/// A handler's specs in [`SPECS`]: the address of its text (null: free), and the specs.
struct Slot {
    text: AtomicPtr<u8>,
    made: OnceRef<'static, Made>,
}

/// The specs of the handlers in use, by their text's address's hash (linear probing): a
/// slot is taken once and for good, so that a reader needs no lock.
static SPECS: [Slot; SLOTS] = [const {
    Slot {
        text: AtomicPtr::new(std::ptr::null_mut()),
        made: OnceRef::new(),
    }
}; SLOTS];

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts of distinct handlers, more than the table has slots, leaked as the generated
    /// constants are `'static`.
    fn texts(count: usize) -> Vec<&'static str> {
        (0..count)
            .map(|i| &*format!("tests::handler_{i}\nl9:10/minute;").leak())
            .collect()
    }

    #[test]
    fn each_handler_has_its_own_specs_made_once_in_the_table_and_past_it() {
        let texts = texts(SLOTS + SLOTS / 2);
        let made: Vec<&'static [SpecData]> = texts.iter().map(|text| specs(text, &[])).collect();
        for (i, (text, specs)) in texts.iter().zip(&made).enumerate() {
            assert_eq!(specs.len(), 1);
            assert_eq!(specs[0].policy().handler, format!("tests::handler_{i}"));
            assert!(std::ptr::eq(super::specs(text, &[]), *specs), "made again");
        }
    }

    #[test]
    fn threads_that_race_for_a_handler_use_one_set_of_specs() {
        let texts = texts(64);
        let made: Vec<Vec<usize>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        texts
                            .iter()
                            .map(|text| specs(text, &[]).as_ptr().addr())
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
    fn one_text_with_other_hooks_is_another_handler() {
        static HOOKS: [Hooks; 1] = [Hooks {
            exempt: Some(never),
            ..Hooks::NONE
        }];
        let text = texts(1)[0];
        let plain = specs(text, &[]);
        let hooked = specs(text, &HOOKS);
        assert!(plain[0].hooks().exempt.is_none());
        assert!(hooked[0].hooks().exempt.is_some());
        assert!(std::ptr::eq(specs(text, &HOOKS), hooked));
        assert!(std::ptr::eq(specs(text, &[]), plain));
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
        let specs = specs(text.leak(), &[]);
        let policy = specs[0].policy();
        assert_eq!(policy.handler, "app::h");
        assert_eq!(policy.scope, Some("shared"));
        assert_eq!(policy.error_message, Some("slow down"));
        assert_eq!(policy.concurrency.map(|slots| slots.get()), Some(2));
        assert!(matches!(&policy.key, Some(KeySource::Header(name)) if name == "x-api-key"));
        assert!(policy.limits.is_some());
    }
}
