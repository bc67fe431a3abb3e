//! Where the state of every key lives: in memory by default, in Redis when several instances
//! share their limits.
//!
//! A store answers one [`CheckRequest`] at a time with a [`StoreFuture`]. The trait is
//! object-safe, so a [`Limiter`](crate::Limiter) holds any store behind one pointer, and the
//! future is ready at once for a store that answers without waiting (the in-memory one),
//! so that path allocates nothing; a networked store boxes its `async` block.

mod memory;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub use memory::{DEFAULT_CAPACITY, MemoryStore};

use crate::algorithm::Algorithm;
use crate::decision::Decision;
use crate::limits::Limits;

/// One check of one key against a set of limits.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct CheckRequest<'a> {
    /// The rates that must all pass.
    pub limits: &'a Limits,
    /// The algorithm that counts them (the limits' own, or the limiter's default).
    pub algorithm: Algorithm,
    /// A fingerprint of the prefix, the algorithm and the limits: the same `key` under
    /// another namespace is another budget.
    pub namespace: u64,
    /// The limiter's key prefix, for stores that name their keys (Redis).
    pub prefix: &'a str,
    /// The scope of the key (a route, or a name shared by several routes), already part of
    /// `namespace`; for stores that name their keys.
    pub scope: &'a str,
    /// Who is counted: a client address, an API key, a scope.
    pub key: &'a str,
    /// How many units the request takes.
    pub cost: u64,
    /// Judge without charging anything.
    pub peek: bool,
}

/// A place that keeps rate limit state and applies the algorithms to it.
///
/// Implementations must treat a request as all or nothing: when any rate refuses it, no
/// rate is charged.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a rate limit store",
    note = "a store implements `ratelimit_core::Store`: `fn check<'a>(&'a self, request: CheckRequest<'a>) -> StoreFuture<'a>`; `MemoryStore` is the built-in one"
)]
pub trait Store: Send + Sync + 'static {
    /// Judges `request` and, unless it is a peek and when it passes, charges it.
    fn check<'a>(&'a self, request: CheckRequest<'a>) -> StoreFuture<'a>;
}

type BoxedCheck<'a> = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send + 'a>>;

/// The future a [`Store`] answers with: ready at once, or a boxed `async` block.
#[must_use = "a store check does nothing until it is awaited"]
pub struct StoreFuture<'a>(Inner<'a>);

enum Inner<'a> {
    Ready(Option<Result<Decision, StoreError>>),
    Pending(BoxedCheck<'a>),
}

impl<'a> StoreFuture<'a> {
    /// An answer that is already known.
    #[inline]
    pub fn ready(result: Result<Decision, StoreError>) -> StoreFuture<'a> {
        StoreFuture(Inner::Ready(Some(result)))
    }

    /// An answer that takes I/O: `StoreFuture::new(async move { ... })`.
    pub fn new(
        future: impl Future<Output = Result<Decision, StoreError>> + Send + 'a,
    ) -> StoreFuture<'a> {
        StoreFuture(Inner::Pending(Box::pin(future)))
    }
}

impl<'a> StoreFuture<'a> {
    /// The answer, when it was known at once; the future back otherwise (not yet polled, so
    /// it has done nothing).
    pub fn into_ready(self) -> Result<Result<Decision, StoreError>, StoreFuture<'a>> {
        match self.0 {
            Inner::Ready(Some(result)) => Ok(result),
            inner => Err(StoreFuture(inner)),
        }
    }
}

impl Future for StoreFuture<'_> {
    type Output = Result<Decision, StoreError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Inner::Ready(result) => {
                Poll::Ready(result.take().expect("StoreFuture polled after completion"))
            }
            Inner::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for StoreFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.0 {
            Inner::Ready(_) => "ready",
            Inner::Pending(_) => "pending",
        };
        f.debug_tuple("StoreFuture").field(&state).finish()
    }
}

/// A store could not answer: its server is down, timed out, or said something unexpected.
#[derive(Debug)]
pub struct StoreError(Box<ErrorInner>);

// Boxed: a `Result<Decision, StoreError>` is returned on every check and must stay small.
#[derive(Debug)]
struct ErrorInner {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> StoreError {
        StoreError(Box::new(ErrorInner {
            message: message.into(),
            source: None,
        }))
    }

    /// An error with a message and the error that caused it.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError(Box::new(ErrorInner {
            message: message.into(),
            source: Some(Box::new(source)),
        }))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limit store failed: {}", self.0.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source.as_deref().map(|e| e as _)
    }
}
