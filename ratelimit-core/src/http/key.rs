//! Who is counted: the client address (the peer, or behind trusted proxies the right-most
//! forwarded hop that no trusted proxy added), a header's bytes, or everyone. Every path
//! that checks a request derives its key here, so the same request gets the same key.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::ConnectInfo;
use http::request::Parts;
use http::{Extensions, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// Who a limit counts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// The client address (IPv6 grouped by /64), behind trusted proxies the right-most
    /// forwarded hop they did not add.
    Ip,
    /// Everyone together: one budget for the whole route.
    Global,
    /// The bytes of a request header's value; a request without the header is counted by
    /// its client address instead (never under one key shared by every such request).
    Header(HeaderName),
    /// A function of the request, given by the attribute's `key = path`.
    Custom,
}

/// A request's key, owned, and without an allocation for a client address.
#[derive(Clone, Debug)]
pub(crate) enum Key {
    /// A client address, and its text as a key.
    Ip(IpKey, IpAddr),
    /// A header's value, by its bytes (not necessarily UTF-8).
    Header(HeaderValue),
    /// What a key function returned.
    Text(Cow<'static, str>),
    /// Everyone.
    Global,
}

impl Key {
    /// The key's bytes, as the store names state by them.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Ip(ip, _) => ip.as_bytes(),
            Key::Header(value) => value.as_bytes(),
            Key::Text(text) => text.as_bytes(),
            Key::Global => b"",
        }
    }

    /// The client address, when the key is one.
    pub(crate) fn client(&self) -> Option<IpAddr> {
        match self {
            Key::Ip(_, ip) => Some(*ip),
            _ => None,
        }
    }

    /// The key of `source` for this request; `Custom` is the attribute's to resolve.
    #[inline]
    pub(crate) fn of(
        source: &KeySource,
        parts: &Parts,
        trusted: &TrustedProxies,
    ) -> Result<Key, MissingConnectInfo> {
        let ip = || client_ip(&parts.extensions, &parts.headers, trusted);
        Ok(match source {
            KeySource::Ip | KeySource::Custom => {
                let ip = ip()?;
                Key::Ip(IpKey::new(ip), ip)
            }
            KeySource::Global => Key::Global,
            KeySource::Header(name) => match parts.headers.get(name) {
                Some(value) => Key::Header(value.clone()),
                // A header value cannot hold a NUL byte: the anonymous key is not one.
                None => Key::anonymous(parts, trusted)?,
            },
        })
    }

    /// A request without a key of its own: counted by its client address, under a key no
    /// header value or key function can spell (a NUL byte first), so that a client cannot
    /// spend another's budget by sending the other's address as its key.
    pub(crate) fn anonymous(
        parts: &Parts,
        trusted: &TrustedProxies,
    ) -> Result<Key, MissingConnectInfo> {
        let ip = client_ip(&parts.extensions, &parts.headers, trusted)?;
        Ok(Key::Ip(IpKey::marked(ip), ip))
    }

    /// What a key function named. Text that begins with a NUL or SOH byte gets one SOH byte
    /// in front, so that no text spells an anonymous key (which begins with NUL) and no two
    /// texts share a key.
    pub(crate) fn text(text: Cow<'static, str>) -> Key {
        match text.as_bytes().first() {
            Some(0 | 1) => Key::Text(Cow::Owned(format!("\u{1}{text}"))),
            _ => Key::Text(text),
        }
    }
}

/// Logs, once per process, why a server without the peer address cannot limit by client IP.
pub(crate) fn missing_connect_info(handler: &str) {
    static ONCE: AtomicBool = AtomicBool::new(false);
    if !ONCE.swap(true, Ordering::Relaxed) {
        tracing::error!(
            handler,
            "rate limiting by client IP needs the peer address, and this server does not provide it: \
             serve the router with `axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())`"
        );
    }
}

/// The proxies whose forwarding headers are believed.
///
/// Empty by default: then `Forwarded`, `X-Forwarded-For` and `X-Real-IP` are ignored, since
/// any client can send them. With proxies configured, the client is the right-most address
/// in the chain (peer first, then the headers from right to left) that is not a trusted
/// proxy.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Trusts the given networks (`"10.0.0.0/8"`, `"127.0.0.1/32"`, `"::1/128"`).
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> TrustedProxies {
        TrustedProxies {
            nets: nets.into_iter().collect(),
        }
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// Why the client address could not be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MissingConnectInfo;

/// The client's address of a request with these extensions and headers.
#[inline]
pub(crate) fn client_ip(
    extensions: &Extensions,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> Result<IpAddr, MissingConnectInfo> {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| canonical(addr.ip()))
        .ok_or(MissingConnectInfo)?;
    if trusted.is_empty() || !trusted.trusts(peer) {
        return Ok(peer);
    }
    Ok(forwarded_client(headers, trusted).unwrap_or(peer))
}

/// Walks the forwarding chain from the right, skipping trusted proxies. `None` when the
/// headers name no untrusted hop (then the peer itself stands for the client).
fn forwarded_client(headers: &HeaderMap, trusted: &TrustedProxies) -> Option<IpAddr> {
    type Parse = fn(&str) -> Option<IpAddr>;
    // `Forwarded` (RFC 7239) first, as the standard; then the de facto headers.
    let chains: [(&str, Parse); 3] = [
        ("forwarded", parse_forwarded_element),
        ("x-forwarded-for", parse_plain),
        ("x-real-ip", parse_plain),
    ];
    for (name, parse) in chains {
        let (mut leftmost, mut client) = (None, None);
        each_hop(headers, name, parse, &mut |ip| {
            leftmost = Some(ip);
            let trusted = trusted.trusts(ip);
            if !trusted {
                client = Some(ip);
            }
            trusted
        });
        if client.is_some() {
            return client;
        }
        if leftmost.is_some() {
            return leftmost;
        }
    }
    None
}

/// Calls `visit` with each hop of header `name`, right-most first, until it returns false.
fn each_hop(
    headers: &HeaderMap,
    name: &str,
    parse: fn(&str) -> Option<IpAddr>,
    visit: &mut dyn FnMut(IpAddr) -> bool,
) {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for value in values.iter().rev() {
        for hop in value.rsplit(',') {
            // An unparsable hop ends the walk: nothing left of it can be attributed.
            let Some(ip) = parse(hop.trim()) else { return };
            if !visit(canonical(ip)) {
                return;
            }
        }
    }
}

fn parse_plain(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// `for=192.0.2.60;proto=http;by=203.0.113.43` or `for="[2001:db8::1]:4711"`.
fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let value = value.trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    parse_plain(value)
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Room for the longest key: a NUL marker and `ffff:ffff:ffff:ffff::/64` take 25 bytes; 31
/// makes the whole key 32.
const IP_KEY_LEN: usize = 31;

/// Each octet's decimal text and a dot, as the four bytes to store (little-endian, the digits
/// first), and how many of them count: `7` is `7.` and two unused bytes, `255` is `255.`.
static OCTET_TEXT: [(u32, u8); 256] = {
    let mut table = [(0, 0); 256];
    let mut octet = 0;
    while octet < 256 {
        let o = octet as u8;
        let text = u32::from_le_bytes([b'0' + o / 100, b'0' + o / 10 % 10, b'0' + o % 10, b'.']);
        let leading = if o >= 100 {
            0
        } else if o >= 10 {
            1
        } else {
            2
        };
        table[octet] = (text >> (8 * leading), 4 - leading as u8);
        octet += 1;
    }
    table
};

/// A client address as a key: IPv4 as it is, IPv6 by its /64 network, since one subscriber
/// commonly holds a whole /64 and could otherwise rotate through it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpKey {
    buf: [u8; IP_KEY_LEN],
    len: u8,
}

impl IpKey {
    pub(crate) fn new(ip: IpAddr) -> IpKey {
        IpKey::written(
            ip,
            IpKey {
                buf: [0; IP_KEY_LEN],
                len: 0,
            },
        )
    }

    /// The key of a client counted by address in place of a missing header: a NUL byte, then
    /// the address.
    pub(crate) fn marked(ip: IpAddr) -> IpKey {
        IpKey::written(
            ip,
            IpKey {
                buf: [0; IP_KEY_LEN],
                len: 1,
            },
        )
    }

    fn written(ip: IpAddr, mut key: IpKey) -> IpKey {
        let result = match ip {
            IpAddr::V4(v4) => {
                for octet in v4.octets() {
                    key.push_octet(octet);
                }
                key.len -= 1; // the last octet's dot
                Ok(())
            }
            IpAddr::V6(v6) => {
                let net = u128::from(v6) & !((1u128 << 64) - 1);
                write!(key, "{}/64", Ipv6Addr::from(net))
            }
        };
        debug_assert!(result.is_ok(), "an address fits in {IP_KEY_LEN} bytes");
        key
    }

    /// Appends an octet's decimal digits and a dot: one 4-byte store from a table (the
    /// formatting machinery, or the digits worked out per request, cost more than the rest
    /// of the key).
    #[inline]
    fn push_octet(&mut self, octet: u8) {
        let (text, len) = OCTET_TEXT[usize::from(octet)];
        let start = usize::from(self.len);
        // Room for all four bytes: a marked IPv4 key is at most 1 + 12 + 4 bytes long here.
        self.buf[start..start + 4].copy_from_slice(&text.to_le_bytes());
        self.len += len;
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    #[cfg(test)]
    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl fmt::Write for IpKey {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let start = usize::from(self.len);
        let end = start + s.len();
        let dest = self.buf.get_mut(start..end).ok_or(fmt::Error)?;
        dest.copy_from_slice(s.as_bytes());
        self.len = u8::try_from(end).map_err(|_| fmt::Error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::request::Parts;

    fn client_ip(p: &Parts, trusted: &TrustedProxies) -> Result<IpAddr, MissingConnectInfo> {
        super::client_ip(&p.extensions, &p.headers, trusted)
    }

    fn parts(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder();
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        parts
            .extensions
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        parts
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_headers_are_ignored() {
        let p = parts(
            "203.0.113.7:5000",
            &[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "5.6.7.8")],
        );
        assert_eq!(
            client_ip(&p, &TrustedProxies::default()),
            Ok(ip("203.0.113.7"))
        );
    }

    #[test]
    fn a_peer_that_is_not_trusted_is_the_client_whatever_it_says() {
        let p = parts("203.0.113.7:5000", &[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            client_ip(&p, &trusted(&["10.0.0.0/8"])),
            Ok(ip("203.0.113.7"))
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        // The client spoofs a first hop; our two proxies append what they saw.
        let p = parts(
            "10.0.0.2:80",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.9, 10.0.0.1")],
        );
        assert_eq!(
            client_ip(&p, &trusted(&["10.0.0.0/8"])),
            Ok(ip("198.51.100.9"))
        );
        let p = parts(
            "10.0.0.2:80",
            &[(
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.1",
            )],
        );
        assert_eq!(
            client_ip(&p, &trusted(&["10.0.0.0/8"])),
            Ok(ip("2001:db8::7"))
        );
        let p = parts("10.0.0.2:80", &[("x-real-ip", "192.0.2.1")]);
        assert_eq!(
            client_ip(&p, &trusted(&["10.0.0.0/8"])),
            Ok(ip("192.0.2.1"))
        );
    }

    #[test]
    fn all_trusted_means_the_left_most_and_garbage_ends_the_walk() {
        let p = parts("10.0.0.2:80", &[("x-forwarded-for", "10.0.0.9, 10.0.0.1")]);
        assert_eq!(client_ip(&p, &trusted(&["10.0.0.0/8"])), Ok(ip("10.0.0.9")));
        let p = parts(
            "10.0.0.2:80",
            &[("x-forwarded-for", "1.1.1.1, garbage, 10.0.0.1")],
        );
        assert_eq!(client_ip(&p, &trusted(&["10.0.0.0/8"])), Ok(ip("10.0.0.1")));
    }

    #[test]
    fn no_text_spells_an_anonymous_key_and_no_two_texts_share_one() {
        let p = parts("203.0.113.7:5000", &[]);
        let anonymous = Key::anonymous(&p, &TrustedProxies::default()).unwrap();
        assert_eq!(anonymous.as_bytes(), b"\x00203.0.113.7");
        let texts = [
            "\u{0}203.0.113.7",
            "\u{1}\u{0}203.0.113.7",
            "\u{1}",
            "plain",
            "",
        ];
        let keys: Vec<Vec<u8>> = texts
            .iter()
            .map(|t| Key::text(Cow::Borrowed(t)).as_bytes().to_vec())
            .collect();
        for (i, key) in keys.iter().enumerate() {
            assert_ne!(key.as_slice(), anonymous.as_bytes(), "{:?}", texts[i]);
            for other in &keys[i + 1..] {
                assert_ne!(key, other);
            }
        }
        assert_eq!(keys[3], b"plain", "ordinary text is kept as it is");
    }

    #[test]
    fn no_connect_info_is_an_error_not_a_panic() {
        let (p, ()) = http::Request::new(()).into_parts();
        assert_eq!(
            client_ip(&p, &TrustedProxies::default()),
            Err(MissingConnectInfo)
        );
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_v4_is_v4() {
        assert_eq!(
            IpKey::new(ip("2001:db8:1:2:aaaa::1")).as_str(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            IpKey::new(ip("2001:db8:1:2:bbbb::9")).as_str(),
            "2001:db8:1:2::/64"
        );
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(
            IpKey::marked(longest).as_bytes(),
            b"\0ffff:ffff:ffff:ffff::/64",
            "the longest key fits"
        );
        // Every octet, in every position, as the standard library writes it.
        for octet in 0..=255u8 {
            for at in 0..4 {
                let mut octets = [1, 22, 233, 4];
                octets[at] = octet;
                let v4 = std::net::Ipv4Addr::from(octets);
                assert_eq!(IpKey::new(v4.into()).as_str(), v4.to_string());
                let marked = IpKey::marked(v4.into());
                assert_eq!(marked.as_bytes()[0], 0);
                assert_eq!(&marked.as_bytes()[1..], v4.to_string().as_bytes());
            }
        }
        for v4 in [
            "203.0.113.7",
            "0.0.0.0",
            "10.100.9.255",
            "1.20.100.0",
            "255.255.255.255",
        ] {
            assert_eq!(IpKey::new(ip(v4)).as_str(), v4);
        }
        let p = parts("[::ffff:203.0.113.7]:80", &[]);
        assert_eq!(
            client_ip(&p, &TrustedProxies::default()),
            Ok(ip("203.0.113.7"))
        );
    }
}
