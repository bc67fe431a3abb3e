//! Who a key function says is calling: a key of its own, the client address as `key = ip`
//! derives it, or a refusal; and, for API keys, the limits of the caller's tier. A made-up
//! key is never a fresh budget: [`ApiKeys`] counts only the keys its lookup knows.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use axum::response::IntoResponse;
use http::HeaderName;
use http::request::Parts;

use super::context;
use super::key::{IpKey, client_ip};
use super::response::Rejection;
use crate::limits::{Limits, LimitsRef};

/// The client address of a request, exactly as `key = ip` derives it: the peer, or behind
/// the layer's trusted proxies the right-most forwarded hop that none of them added; counted
/// by its /64 network when it is IPv6.
///
/// A key function builds on it instead of reading the peer address itself:
///
/// ```
/// use axum::http::request::Parts;
/// use ratelimit_core::http::{ClientAddr, Identity};
///
/// /// The tenant header when there is one, else the client address.
/// fn tenant(parts: &Parts) -> Identity {
///     match parts.headers.get("x-tenant").and_then(|v| v.to_str().ok()) {
///         Some(tenant) => Identity::key(format!("tenant:{tenant}")),
///         None => Identity::client(),
///     }
/// }
/// # let _ = ClientAddr::of;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(IpAddr);

impl ClientAddr {
    /// The client address of the request with these parts, under the configuration that
    /// serves it (the layer's trusted proxies, or none without a layer); `None` when the
    /// server does not provide the peer address (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`).
    pub fn of(parts: &Parts) -> Option<ClientAddr> {
        let config = context::current_config();
        client_ip(&parts.extensions, &parts.headers, &config.trusted_proxies)
            .ok()
            .map(ClientAddr)
    }

    /// The address (IPv4-mapped IPv6 addresses as the IPv4 address they carry).
    pub fn ip(self) -> IpAddr {
        self.0
    }
}

impl fmt::Display for ClientAddr {
    /// The address as it is counted: `203.0.113.7`, or `2001:db8:1:2::/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = IpKey::new(self.0);
        f.write_str(std::str::from_utf8(key.as_bytes()).map_err(|_| fmt::Error)?)
    }
}

/// Who is calling, as a key function answers it: what is counted, and optionally the limits
/// that apply to this caller (a tier), which then replace the attribute's.
#[derive(Debug)]
pub struct Identity {
    pub(crate) who: Who,
    pub(crate) limits: Option<LimitsRef>,
}

/// What an [`Identity`] counts.
#[derive(Debug)]
pub(crate) enum Who {
    /// A key of the caller's own (a known API key, a user, a tenant).
    Key(Cow<'static, str>),
    /// The client address, as `key = ip` counts it (the same budget).
    Client,
    /// The client address, under a key that no key function's string can spell: for a
    /// request that carries no key of its own.
    Anonymous,
}

impl Identity {
    /// Counted under `key`.
    pub fn key(key: impl Into<Cow<'static, str>>) -> Identity {
        Identity {
            who: Who::Key(key.into()),
            limits: None,
        }
    }

    /// Counted by the client address exactly as `key = ip` counts it (behind the layer's
    /// trusted proxies, IPv6 by /64), sharing that budget on the same scope.
    pub fn client() -> Identity {
        Identity {
            who: Who::Client,
            limits: None,
        }
    }

    /// A caller without a key of its own: counted by its client address, under a key no
    /// string can spell, so that one anonymous client never spends another's budget (what
    /// `None` from a key function means).
    pub fn anonymous() -> Identity {
        Identity {
            who: Who::Anonymous,
            limits: None,
        }
    }

    /// These limits for this caller instead of the attribute's (a tier). They are used as
    /// they are, with their own algorithm and burst (`Limits::with_algorithm`): the
    /// attribute's `algorithm =` and `burst =` tune the attribute's own limits only.
    pub fn with_limits(mut self, limits: impl Into<LimitsRef>) -> Identity {
        self.limits = Some(limits.into());
        self
    }

    /// The limits this identity carries, if any.
    pub fn limits(&self) -> Option<&Limits> {
        self.limits.as_ref().map(LimitsRef::limits)
    }
}

/// What a key function returns: a string type (the key), an [`Identity`], a [`ClientAddr`],
/// an `Option` of one (`None`: counted by the client address, never under one key shared by
/// every such request), or a `Result` whose error answers the request instead.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a rate limit key",
    note = "a key function takes `&http::request::Parts` and returns a `String`, `&'static str`, `Cow<str>`, `Identity`, `ClientAddr`, an `Option` of one, or a `Result` of one with an error that is a response (sync or async)"
)]
pub trait IntoKey {
    /// Who is calling, or the answer to send instead of running the handler.
    fn into_key(self) -> Result<Identity, Rejection>;
}

impl IntoKey for Identity {
    fn into_key(self) -> Result<Identity, Rejection> {
        Ok(self)
    }
}

impl IntoKey for ClientAddr {
    fn into_key(self) -> Result<Identity, Rejection> {
        Ok(Identity::client())
    }
}

impl IntoKey for String {
    fn into_key(self) -> Result<Identity, Rejection> {
        Ok(Identity::key(self))
    }
}

impl IntoKey for &'static str {
    fn into_key(self) -> Result<Identity, Rejection> {
        Ok(Identity::key(self))
    }
}

impl IntoKey for Cow<'static, str> {
    fn into_key(self) -> Result<Identity, Rejection> {
        Ok(Identity::key(self))
    }
}

impl IntoKey for Box<str> {
    fn into_key(self) -> Result<Identity, Rejection> {
        Ok(Identity::key(String::from(self)))
    }
}

impl IntoKey for Arc<str> {
    fn into_key(self) -> Result<Identity, Rejection> {
        Ok(Identity::key(self.as_ref().to_owned()))
    }
}

impl<K: IntoKey> IntoKey for Option<K> {
    fn into_key(self) -> Result<Identity, Rejection> {
        self.map_or_else(|| Ok(Identity::anonymous()), IntoKey::into_key)
    }
}

impl<K: IntoKey, E: IntoResponse> IntoKey for Result<K, E> {
    fn into_key(self) -> Result<Identity, Rejection> {
        self.map_err(|error| Rejection::custom(error.into_response()))
            .and_then(IntoKey::into_key)
    }
}

/// A known API key: who it belongs to (what is counted) and the limits of its tier.
#[derive(Clone, Debug)]
pub struct KnownKey {
    /// What is counted: the account, not the key's text (two keys of one account may share
    /// a budget by naming the same account).
    pub account: Cow<'static, str>,
    /// The limits of the account's tier.
    pub limits: LimitsRef,
}

impl KnownKey {
    /// The key of `account`, limited by `limits`.
    pub fn new(account: impl Into<Cow<'static, str>>, limits: impl Into<LimitsRef>) -> KnownKey {
        KnownKey {
            account: account.into(),
            limits: limits.into(),
        }
    }
}

/// Where API keys are looked up: a table in memory ([`KeyTable`]), or your database or
/// Redis (implement it with an `async fn`).
///
/// ```
/// use ratelimit_core::Limits;
/// use ratelimit_core::http::{KeyLookup, KnownKey};
///
/// struct Accounts; // a database pool, in a real service
///
/// impl KeyLookup for Accounts {
///     async fn lookup(&self, key: &str) -> Option<KnownKey> {
///         // SELECT account, tier FROM api_keys WHERE key = $1
///         (key == "sk-test-1").then(|| KnownKey::new("acct-1", Limits::parse("20/minute").unwrap()))
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot look up API keys",
    note = "implement `KeyLookup` (an `async fn lookup(&self, key: &str) -> Option<KnownKey>`), or use `KeyTable`"
)]
pub trait KeyLookup: Send + Sync + 'static {
    /// The account and tier of `key`, or `None` for a key that is not known.
    fn lookup(&self, key: &str) -> impl Future<Output = Option<KnownKey>> + Send;
}

/// API keys in memory: a fixed table.
#[derive(Clone, Debug, Default)]
pub struct KeyTable {
    keys: HashMap<String, KnownKey>,
}

impl KeyTable {
    /// An empty table.
    pub fn new() -> KeyTable {
        KeyTable::default()
    }

    /// Adds (or replaces) `key`.
    pub fn insert(&mut self, key: impl Into<String>, known: KnownKey) -> &mut KeyTable {
        self.keys.insert(key.into(), known);
        self
    }

    /// Adds (or replaces) `key`.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, known: KnownKey) -> KeyTable {
        self.insert(key, known);
        self
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is known.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The known key `key`, at once.
    pub fn get(&self, key: &str) -> Option<&KnownKey> {
        self.keys.get(key)
    }
}

impl KeyLookup for KeyTable {
    fn lookup(&self, key: &str) -> impl Future<Output = Option<KnownKey>> + Send {
        std::future::ready(self.get(key).cloned())
    }
}

/// What [`ApiKeys`] does with a key its lookup does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownKey {
    /// Answer `401 {"detail": "unknown API key"}` (the default): a client learns its key is
    /// wrong instead of silently getting the anonymous limits.
    #[default]
    Reject,
    /// Count the request by its client address, as if it carried no key, at the attribute's
    /// limits: for APIs that serve anonymous clients and ignore a stale key.
    CountByAddress,
}

/// Identity by API key, that a client cannot forge: a request's key is counted only when
/// the lookup knows it, under its account and with its tier's limits. A request without a
/// key is counted by its client address (as `key = ip` derives it) at the attribute's
/// limits; a key the lookup does not know is refused with a 401 or counted by address
/// ([`UnknownKey`]). Rotating made-up keys therefore never buys a fresh budget.
///
/// ```
/// use std::sync::LazyLock;
///
/// use axum::http::request::Parts;
/// use ratelimit_core::Limits;
/// use ratelimit_core::http::{ApiKeys, Identity, KeyTable, KnownKey, Rejection};
///
/// static PREMIUM: LazyLock<Limits> = LazyLock::new(|| Limits::parse("100/minute").unwrap());
/// static KEYS: LazyLock<ApiKeys<KeyTable>> = LazyLock::new(|| {
///     ApiKeys::new(KeyTable::new().with("sk-live-1", KnownKey::new("acme", &PREMIUM)))
/// });
///
/// /// `#[rate_limit("20/minute", key = caller)]`: 20/minute for anonymous clients, by address.
/// async fn caller(parts: &Parts) -> Result<Identity, Rejection> {
///     KEYS.identify(parts).await
/// }
/// ```
#[derive(Clone, Debug)]
pub struct ApiKeys<L> {
    lookup: L,
    header: HeaderName,
    unknown: UnknownKey,
}

impl<L: KeyLookup> ApiKeys<L> {
    /// Keys from the `X-API-Key` header, looked up in `lookup`; unknown keys refused.
    pub fn new(lookup: L) -> ApiKeys<L> {
        ApiKeys {
            lookup,
            header: HeaderName::from_static("x-api-key"),
            unknown: UnknownKey::Reject,
        }
    }

    /// The header that carries the key (default `X-API-Key`).
    #[must_use]
    pub fn header(mut self, header: HeaderName) -> ApiKeys<L> {
        self.header = header;
        self
    }

    /// What an unknown key gets (default: [`UnknownKey::Reject`]).
    #[must_use]
    pub fn unknown(mut self, unknown: UnknownKey) -> ApiKeys<L> {
        self.unknown = unknown;
        self
    }

    /// The lookup.
    pub fn lookup(&self) -> &L {
        &self.lookup
    }

    /// Who calls: the account of a known key with its tier's limits; the client address
    /// (anonymous) without a key; an unknown key refused or counted by address.
    pub async fn identify(&self, parts: &Parts) -> Result<Identity, Rejection> {
        let Some(value) = parts.headers.get(&self.header) else {
            return Ok(Identity::anonymous());
        };
        // A key that is not text, or empty, cannot be in any table: it is an unknown key.
        let known = match value.to_str() {
            Ok(key) if !key.is_empty() => self.lookup.lookup(key).await,
            _ => None,
        };
        match (known, self.unknown) {
            (Some(known), _) => Ok(Identity::key(known.account).with_limits(known.limits)),
            (None, UnknownKey::CountByAddress) => Ok(Identity::anonymous()),
            (None, UnknownKey::Reject) => Err(Rejection::unknown_api_key()),
        }
    }
}
