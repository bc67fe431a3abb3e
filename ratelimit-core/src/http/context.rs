//! What the layer shares with the extractors of the request it serves: the configuration,
//! what the layer did about its own limits, and what the extractors leave for the response
//! (the admission for the headers, a reservation's state, a body dropped unread).
//!
//! The layer owns the request's [`RequestContext`]; while it polls the route's future (or
//! drops it), the context sits in a thread-local where the extractors find it, and it comes
//! back when that poll returns: the way tokio's task-locals work. Unlike a task-local, only
//! the parts that hold something move in and out: a request no attribute touches swaps two
//! words, where a task-local swaps the whole context (about 250 bytes) twice per poll.
//! Nothing is allocated, and nothing shared between requests is written (a reference count
//! bounced between cores costs more than the whole check). Outside a layer, every reader
//! falls back to the process-wide configuration and every writer does nothing.

use std::cell::Cell;
use std::mem::{self, ManuallyDrop};

use axum::body::Body;

use super::config::HttpConfig;
use super::key::Key;
use crate::decision::Decision;

/// An attribute's extractor ran in the request (the layer learns which routes carry one).
const ATTRIBUTED: u8 = 1;
/// The extractor records its route in the configuration (the layer wraps several routes and
/// cannot learn them itself).
const RECORD_ROUTE: u8 = 1 << 1;
/// `layer` holds the layer's state.
const LAYER: u8 = 1 << 2;
/// `admitted` holds an admission.
const ADMITTED: u8 = 1 << 3;
/// `reserved` holds a reservation's state.
const RESERVED: u8 = 1 << 4;
/// `unread` holds a body.
const UNREAD: u8 = 1 << 5;
/// The bits that say a part holds something to move.
const PARTS: u8 = LAYER | ADMITTED | RESERVED | UNREAD;

/// The context of one request, kept by the layer between polls.
pub(crate) struct RequestContext {
    config: &'static HttpConfig,
    /// Which parts hold something, and the flags above.
    held: u8,
    /// What the layer did about its own limits.
    layer: LayerState,
    /// The most restrictive admission so far, for the response headers.
    admitted: Option<Decision>,
    /// The reserved budget's state (`reserve =`): as reserved, then as settled.
    reserved: Option<Decision>,
    /// A request body dropped before it was read to its end, for the layer to drain.
    unread: Option<Body>,
}

impl RequestContext {
    pub(crate) fn new(
        config: &'static HttpConfig,
        layer: LayerState,
        admitted: Option<Decision>,
        record_route: bool,
    ) -> RequestContext {
        let mut held = if record_route { RECORD_ROUTE } else { 0 };
        if !matches!(layer, LayerState::Done) {
            held |= LAYER;
        }
        if admitted.is_some() {
            held |= ADMITTED;
        }
        RequestContext {
            config,
            held,
            layer,
            admitted,
            reserved: None,
            unread: None,
        }
    }

    /// The configuration serving the request.
    #[inline]
    pub(crate) fn config(&self) -> &'static HttpConfig {
        self.config
    }

    /// Runs `f` (a poll or a drop of the request's future) with this context current.
    #[inline(always)]
    pub(crate) fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let _current = self.enter();
        f()
    }

    /// Makes this context current until the guard is dropped (the end of a poll, or an
    /// unwinding one). Two plain loads of the thread-local (it has no destructor to
    /// register), and what runs in between is no closure: the route's answer is not moved
    /// out of one.
    #[inline(always)]
    pub(crate) fn enter(&mut self) -> Current<'_> {
        let outer = CURRENT.with(|slots| slots.enter(self));
        Current {
            context: self,
            outer,
        }
    }

    /// Whether an attribute ran in the request.
    pub(crate) fn attributed(&self) -> bool {
        self.held & ATTRIBUTED != 0
    }

    /// What the response headers describe, once the request's future completes: the most
    /// restrictive admission, and the reserved budget's state (as settled, or as reserved).
    /// Nothing is moved when the request recorded neither (a route without an attribute).
    pub(crate) fn take_budget(&mut self) -> Option<(Option<Decision>, Option<Decision>)> {
        if self.held & (ADMITTED | RESERVED) == 0 {
            return None;
        }
        self.held &= !(ADMITTED | RESERVED);
        Some((self.admitted.take(), self.reserved.take()))
    }

    /// The request body, when it was dropped before its end: the layer drains it.
    pub(crate) fn take_unread(&mut self) -> Option<Body> {
        if self.held & UNREAD == 0 {
            return None;
        }
        self.held &= !UNREAD;
        self.unread.take()
    }
}

/// The current request's context, while the layer polls its future.
///
/// The parts that own something are kept as `ManuallyDrop`, so that the thread-local has no
/// destructor and each access is a plain load (no registration state to check first). The
/// slots are empty whenever no poll is in progress, so nothing is left to drop when a thread
/// ends.
struct Slots {
    /// `None` outside a layer's poll.
    config: Cell<Option<&'static HttpConfig>>,
    held: Cell<u8>,
    layer: Cell<ManuallyDrop<LayerState>>,
    admitted: Cell<Option<Decision>>,
    reserved: Cell<Option<Decision>>,
    unread: Cell<ManuallyDrop<Option<Body>>>,
}

thread_local! {
    static CURRENT: Slots = const {
        Slots {
            config: Cell::new(None),
            held: Cell::new(0),
            layer: Cell::new(ManuallyDrop::new(LayerState::Done)),
            admitted: Cell::new(None),
            reserved: Cell::new(None),
            unread: Cell::new(ManuallyDrop::new(None)),
        }
    };
}

/// What was current before a context was entered: none, or the request whose poll serves
/// this one (a service called inside a handler). The parts that request left in the slots
/// wait in the inner request's context meanwhile.
#[derive(Clone, Copy)]
struct Outer {
    config: Option<&'static HttpConfig>,
    held: u8,
}

impl Slots {
    #[inline(always)]
    fn enter(&self, context: &mut RequestContext) -> Outer {
        let outer = Outer {
            config: self.config.replace(Some(context.config)),
            held: self.held.replace(context.held),
        };
        self.swap_parts(context, outer.held | context.held);
        outer
    }

    #[inline(always)]
    fn leave(&self, context: &mut RequestContext, outer: Outer) {
        let held = self.held.replace(outer.held);
        self.config.set(outer.config);
        self.swap_parts(context, outer.held | held);
        context.held = held;
    }

    /// Exchanges the parts that either side holds (`held`, both sides' bits) between the
    /// slots and the context: an empty part is `Done` or `None` on both sides.
    #[inline]
    fn swap_parts(&self, context: &mut RequestContext, held: u8) {
        if held & PARTS == 0 {
            return;
        }
        if held & LAYER != 0 {
            let layer = ManuallyDrop::new(mem::take(&mut context.layer));
            context.layer = ManuallyDrop::into_inner(self.layer.replace(layer));
        }
        if held & ADMITTED != 0 {
            context.admitted = self.admitted.replace(context.admitted);
        }
        if held & RESERVED != 0 {
            context.reserved = self.reserved.replace(context.reserved);
        }
        if held & UNREAD != 0 {
            let unread = ManuallyDrop::new(context.unread.take());
            context.unread = ManuallyDrop::into_inner(self.unread.replace(unread));
        }
    }

    /// Runs `f` on the slots of a request in progress; `None` outside a layer's poll.
    fn with<R>(f: impl FnOnce(&Slots, &'static HttpConfig) -> R) -> Option<R> {
        CURRENT.with(|slots| slots.config.get().map(|config| f(slots, config)))
    }

    fn mark(&self, bit: u8) {
        self.held.set(self.held.get() | bit);
    }
}

/// A request's context made current ([`RequestContext::enter`]): dropped, it puts the
/// context back in the layer's hands and the outer one (if any) back in the slots.
pub(crate) struct Current<'a> {
    context: &'a mut RequestContext,
    outer: Outer,
}

impl Drop for Current<'_> {
    #[inline]
    fn drop(&mut self) {
        CURRENT.with(|slots| slots.leave(self.context, self.outer));
    }
}

/// The configuration serving this request (the layer's, or the process-wide default), and
/// whether the attribute should record its route for the layer. Tells the layer that an
/// attribute runs on this request.
pub(crate) fn attribute_context() -> (&'static HttpConfig, bool) {
    Slots::with(|slots, config| {
        slots.mark(ATTRIBUTED);
        (config, slots.held.get() & RECORD_ROUTE != 0)
    })
    .unwrap_or_else(|| (HttpConfig::global(), false))
}

/// The configuration serving this request (the layer's, or the process-wide default), for
/// what reads it without running an attribute (a key function's client address).
pub(crate) fn current_config() -> &'static HttpConfig {
    Slots::with(|_, config| config).unwrap_or_else(HttpConfig::global)
}

/// Hands a body dropped before its end to the layer serving this request, to drain it
/// before the response goes out (outside a layer, it is dropped).
pub(crate) fn keep_unread(body: Body) {
    let mut body = Some(body);
    let earlier = Slots::with(|slots, _| {
        slots.mark(UNREAD);
        ManuallyDrop::into_inner(slots.unread.replace(ManuallyDrop::new(body.take())))
    });
    // Dropped here, out of the slots' way.
    drop((earlier, body));
}

/// Takes what the layer left for the attribute's check.
pub(crate) fn take_layer_state() -> LayerState {
    Slots::with(|slots, _| {
        let held = slots.held.get();
        if held & LAYER == 0 {
            return LayerState::Done;
        }
        slots.held.set(held & !LAYER);
        ManuallyDrop::into_inner(slots.layer.replace(ManuallyDrop::new(LayerState::Done)))
    })
    .unwrap_or_default()
}

/// Keeps the reservation's admission for the response headers.
pub(crate) fn record_reserved(decision: Decision) {
    Slots::with(|slots, _| {
        slots.mark(RESERVED);
        slots.reserved.set(Some(decision));
    });
}

/// Keeps a reservation's settlement for the response headers (when the handler settles
/// before it answers).
pub(crate) fn record_settled(decision: &Decision) {
    record_reserved(*decision);
}

/// The reservation's admission in this request, if any.
pub(crate) fn reserved_admission() -> Option<Decision> {
    Slots::with(|slots, _| slots.reserved.get()).flatten()
}

/// Remembers an admission for the response headers, unless an earlier one binds harder (a
/// no-op outside the layer).
pub(crate) fn record(decision: Decision) {
    Slots::with(|slots, _| {
        let earlier = match slots.held.get() & ADMITTED {
            0 => None,
            _ => slots.admitted.get(),
        };
        if earlier.is_none_or(|earlier| decision.binds_harder_than(&earlier)) {
            slots.mark(ADMITTED);
            slots.admitted.set(Some(decision));
        }
    });
}

/// What the layer did about its default and application limits before the handler ran.
#[derive(Debug, Default)]
pub(crate) enum LayerState {
    /// Nothing to do, or already accounted for.
    #[default]
    Done,
    /// The route carries an attribute: the application limits are left to its check, so
    /// that they pass or fail with the attribute's.
    LeftToAttribute,
    /// The route was not yet known to carry an attribute: the layer charged `key` for the
    /// application limits (`application`) and the route's default limits (`default`), under
    /// the scope of the request's URI path when it saw no matched route (`by_uri`).
    Charged {
        key: Key,
        application: bool,
        default: bool,
        by_uri: bool,
    },
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::time::Duration;

    use super::*;
    use crate::Limiter;
    use crate::rate::Rate;

    fn config() -> &'static HttpConfig {
        Box::leak(Box::new(HttpConfig::new(Limiter::new())))
    }

    fn admission(remaining: u64) -> Decision {
        let rate: Rate = "10/minute".parse().unwrap();
        Decision::allowed(rate, remaining, Duration::from_secs(6))
    }

    fn is_current(config: &'static HttpConfig) -> bool {
        std::ptr::eq(current_config(), config)
    }

    #[test]
    fn outside_a_layer_readers_fall_back_and_writers_do_nothing() {
        assert!(is_current(HttpConfig::global()));
        record(admission(3));
        record_reserved(admission(2));
        keep_unread(Body::from("left"));
        assert!(reserved_admission().is_none());
        assert!(matches!(take_layer_state(), LayerState::Done));
        let (config, record_route) = attribute_context();
        assert!(std::ptr::eq(config, HttpConfig::global()) && !record_route);
    }

    #[test]
    fn what_a_poll_leaves_is_there_at_the_next_and_at_the_end() {
        let ours = config();
        let mut context = RequestContext::new(ours, LayerState::LeftToAttribute, None, true);
        context.run(|| {
            assert!(is_current(ours));
            assert!(attribute_context().1, "the route is to be recorded");
            record(admission(5));
            record(admission(7)); // binds less: the earlier stays
            record_reserved(admission(9));
        });
        // Between polls nothing is current, and nothing of this request is visible.
        assert!(is_current(HttpConfig::global()));
        assert!(reserved_admission().is_none());
        context.run(|| {
            assert_eq!(reserved_admission().map(|d| d.remaining()), Some(9));
            assert!(matches!(take_layer_state(), LayerState::LeftToAttribute));
            assert!(matches!(take_layer_state(), LayerState::Done), "taken once");
            record(admission(4));
            keep_unread(Body::from("left"));
        });
        assert!(context.attributed());
        let (admitted, reserved) = context.take_budget().expect("both recorded");
        assert_eq!(admitted.map(|d| d.remaining()), Some(4));
        assert_eq!(reserved.map(|d| d.remaining()), Some(9));
        assert!(context.take_unread().is_some());
        assert!(context.take_budget().is_none() && context.take_unread().is_none());
    }

    #[test]
    fn a_request_served_inside_another_poll_keeps_to_its_own() {
        let (outer_config, inner_config) = (config(), config());
        let mut outer = RequestContext::new(
            outer_config,
            LayerState::LeftToAttribute,
            Some(admission(6)),
            false,
        );
        let mut inner = RequestContext::new(inner_config, LayerState::Done, None, true);
        outer.run(|| {
            record_reserved(admission(8));
            inner.run(|| {
                assert!(is_current(inner_config));
                assert!(
                    reserved_admission().is_none(),
                    "the outer request's reservation"
                );
                assert!(matches!(take_layer_state(), LayerState::Done));
                assert!(attribute_context().1);
                record(admission(9));
                keep_unread(Body::from("inner"));
            });
            assert!(is_current(outer_config));
            assert_eq!(reserved_admission().map(|d| d.remaining()), Some(8));
            assert!(matches!(take_layer_state(), LayerState::LeftToAttribute));
            assert!(!attribute_context().1);
        });
        let outer_budget = outer.take_budget().expect("the outer admission");
        assert_eq!(outer_budget.0.map(|d| d.remaining()), Some(6));
        assert!(outer.take_unread().is_none() && outer.attributed());
        let inner_budget = inner.take_budget().expect("the inner admission");
        assert_eq!(inner_budget.0.map(|d| d.remaining()), Some(9));
        assert!(inner_budget.1.is_none());
        assert!(inner.take_unread().is_some() && inner.attributed());
    }

    #[test]
    fn a_panicking_poll_puts_everything_back() {
        let ours = config();
        let mut context = RequestContext::new(ours, LayerState::Done, Some(admission(2)), false);
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            context.run(|| {
                record(admission(1));
                panic!("the handler panics");
            })
        }));
        assert!(panicked.is_err());
        assert!(is_current(HttpConfig::global()));
        assert!(reserved_admission().is_none());
        let budget = context.take_budget().expect("the admission");
        assert_eq!(budget.0.map(|d| d.remaining()), Some(1));
    }
}
