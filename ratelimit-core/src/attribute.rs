//! The options of `#[rate_limit]` attributes as the generated code carries them: one string
//! per handler, written by the attribute ([`write`]) and read back by the core on the
//! handler's first request ([`parse`]). A string constant is the quickest item there is for
//! the compiler to check in a crate of many handlers (a struct literal per attribute cost
//! it five times as much); hooks, which are functions, are not in it.
//!
//! The text is the handler's path, a line feed, then each attribute's fields, each ended by
//! `;`. A field is a tag and its value: strings as their length in bytes, `:`, and the bytes
//! (so that any text may be in them), numbers in decimal ended by `,`.

use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use crate::algorithm::Algorithm;

/// `key = ..` of an attribute.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyText<'a> {
    /// `key = ip`.
    Ip,
    /// `key = global`.
    Global,
    /// `key = header("name")`: the name, lowercase (checked at compile time).
    Header(&'a str),
    /// `key = path`: a key function, which is a hook of the generated code.
    Custom,
}

/// What one attribute says that is data, not code: every option but the hooks.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AttributeText<'a> {
    /// The limits, when given as a string (checked at compile time).
    pub limits: Option<&'a str>,
    /// `algorithm = ..`, for limits given as a string.
    pub algorithm: Option<Algorithm>,
    /// `burst = ..`, for limits given as a string.
    pub burst: Option<NonZeroU64>,
    /// `key = ..`.
    pub key: Option<KeyText<'a>>,
    /// `scope = ..`.
    pub scope: Option<&'a str>,
    /// `error_message = ..`.
    pub error_message: Option<&'a str>,
    /// `reserve = ..`.
    pub reserves: bool,
    /// `concurrency = ..`.
    pub concurrency: Option<NonZeroU32>,
    /// `capacity = ..`: a fixed limit, or adaptive between a floor and a ceiling.
    pub capacity: Option<CapacityText>,
    /// `queue = ..`.
    pub queue: Option<Duration>,
}

/// `capacity = ..` of an attribute.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapacityText {
    /// `capacity = N`.
    Fixed(u32),
    /// `capacity = adaptive(min = .., max = ..)`.
    Adaptive {
        /// The floor.
        min: u32,
        /// The ceiling.
        max: u32,
    },
}

/// Appends `attribute`'s fields to `out`, the text of its handler (after the handler's path
/// and line feed, which the generated code writes with `module_path!`).
#[doc(hidden)]
pub fn write(out: &mut String, attribute: &AttributeText<'_>) {
    use std::fmt::Write;
    let text = |out: &mut String, tag: char, value: &str| {
        let _ = write!(out, "{tag}{}:{value}", value.len());
    };
    let number = |out: &mut String, tag: char, value: u64| {
        let _ = write!(out, "{tag}{value},");
    };
    if let Some(limits) = attribute.limits {
        text(out, 'l', limits);
    }
    if let Some(algorithm) = attribute.algorithm {
        number(out, 'a', algorithm.index() as u64);
    }
    if let Some(burst) = attribute.burst {
        number(out, 'b', burst.get());
    }
    match attribute.key {
        Some(KeyText::Ip) => out.push_str("ki"),
        Some(KeyText::Global) => out.push_str("kg"),
        Some(KeyText::Custom) => out.push_str("kc"),
        Some(KeyText::Header(name)) => text(out, 'h', name),
        None => {}
    }
    if let Some(scope) = attribute.scope {
        text(out, 's', scope);
    }
    if let Some(message) = attribute.error_message {
        text(out, 'e', message);
    }
    if attribute.reserves {
        out.push('r');
    }
    if let Some(slots) = attribute.concurrency {
        number(out, 'c', slots.get().into());
    }
    match attribute.capacity {
        Some(CapacityText::Fixed(limit)) => number(out, 'f', limit.into()),
        Some(CapacityText::Adaptive { min, max }) => {
            number(out, 'm', min.into());
            number(out, 'M', max.into());
        }
        None => {}
    }
    if let Some(queue) = attribute.queue {
        // Nanoseconds of a `queue` the attribute checked fit in a u64.
        number(
            out,
            'q',
            u64::try_from(queue.as_nanos()).unwrap_or(u64::MAX),
        );
    }
    out.push(';');
}

/// Text that [`write`] did not write: what [`parse`] found wrong, and where.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadText {
    /// The byte at which reading stopped.
    pub at: usize,
    /// What was expected there.
    pub expected: &'static str,
}

impl std::fmt::Display for BadText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte {}: expected {}", self.at, self.expected)
    }
}

impl std::error::Error for BadText {}

/// The handler's path and its attributes, in order, from the text the attribute wrote.
#[doc(hidden)]
pub fn parse(text: &str) -> Result<(&str, Vec<AttributeText<'_>>), BadText> {
    let Some((handler, mut rest)) = text.split_once('\n') else {
        return Err(BadText {
            at: text.len(),
            expected: "a line feed after the handler's path",
        });
    };
    let mut reader = Reader {
        at: handler.len() + 1,
    };
    let mut attributes = Vec::new();
    let mut attribute = AttributeText::default();
    while let Some(tag) = rest.chars().next() {
        reader.at = text.len() - rest.len();
        rest = &rest[tag.len_utf8()..];
        match tag {
            'l' => attribute.limits = Some(reader.text(&mut rest)?),
            's' => attribute.scope = Some(reader.text(&mut rest)?),
            'e' => attribute.error_message = Some(reader.text(&mut rest)?),
            'h' => attribute.key = Some(KeyText::Header(reader.text(&mut rest)?)),
            'k' => {
                attribute.key = Some(match rest.as_bytes().first() {
                    Some(b'i') => KeyText::Ip,
                    Some(b'g') => KeyText::Global,
                    Some(b'c') => KeyText::Custom,
                    _ => return Err(reader.bad(1, "a key: `i`, `g` or `c`")),
                });
                rest = &rest[1..];
            }
            'a' => {
                let index = reader.number(&mut rest)?;
                let algorithm = usize::try_from(index)
                    .ok()
                    .and_then(|index| Algorithm::ALL.get(index));
                attribute.algorithm = Some(*algorithm.ok_or(reader.bad(1, "an algorithm"))?);
            }
            'b' => attribute.burst = Some(reader.non_zero(&mut rest)?),
            'r' => attribute.reserves = true,
            'c' => {
                let slots = u32::try_from(reader.number(&mut rest)?).ok();
                attribute.concurrency = Some(
                    slots
                        .and_then(NonZeroU32::new)
                        .ok_or(reader.bad(1, "slots"))?,
                );
            }
            'f' => attribute.capacity = Some(CapacityText::Fixed(reader.u32(&mut rest)?)),
            'm' => {
                let min = reader.u32(&mut rest)?;
                reader.at = text.len() - rest.len();
                if !rest.starts_with('M') {
                    return Err(reader.bad(0, "`M` after `m`"));
                }
                rest = &rest[1..];
                let max = reader.u32(&mut rest)?;
                attribute.capacity = Some(CapacityText::Adaptive { min, max });
            }
            'q' => attribute.queue = Some(Duration::from_nanos(reader.number(&mut rest)?)),
            ';' => attributes.push(std::mem::take(&mut attribute)),
            _ => return Err(reader.bad(0, "a field")),
        }
    }
    if attribute != AttributeText::default() {
        return Err(BadText {
            at: text.len(),
            expected: "`;` after the last attribute",
        });
    }
    Ok((handler, attributes))
}

/// Where [`parse`] is in the text, for its errors.
struct Reader {
    at: usize,
}

impl Reader {
    fn bad(&self, past: usize, expected: &'static str) -> BadText {
        BadText {
            at: self.at + past,
            expected,
        }
    }

    /// A length, `:`, and that many bytes.
    fn text<'t>(&self, rest: &mut &'t str) -> Result<&'t str, BadText> {
        let (length, tail) = rest
            .split_once(':')
            .ok_or(self.bad(1, "a length and `:`"))?;
        let length: usize = length.parse().map_err(|_| self.bad(1, "a length"))?;
        let value = tail
            .get(..length)
            .ok_or(self.bad(1, "as many bytes as the length says"))?;
        *rest = &tail[length..];
        Ok(value)
    }

    /// A decimal number and `,`.
    fn number(&self, rest: &mut &str) -> Result<u64, BadText> {
        let (number, tail) = rest
            .split_once(',')
            .ok_or(self.bad(1, "a number and `,`"))?;
        let number = number.parse().map_err(|_| self.bad(1, "a number"))?;
        *rest = tail;
        Ok(number)
    }

    fn u32(&self, rest: &mut &str) -> Result<u32, BadText> {
        u32::try_from(self.number(rest)?).map_err(|_| self.bad(1, "a number below 2^32"))
    }

    fn non_zero(&self, rest: &mut &str) -> Result<NonZeroU64, BadText> {
        NonZeroU64::new(self.number(rest)?).ok_or(self.bad(1, "a number above 0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(handler: &str, attributes: &[AttributeText<'_>]) -> String {
        let mut text = format!("{handler}\n");
        for attribute in attributes {
            write(&mut text, attribute);
        }
        text
    }

    #[test]
    fn the_quick_start_is_a_short_text() {
        let attribute = AttributeText {
            limits: Some("10/minute"),
            key: Some(KeyText::Ip),
            ..AttributeText::default()
        };
        let text = written("app::predict", &[attribute]);
        assert_eq!(text, "app::predict\nl9:10/minuteki;");
        assert_eq!(parse(&text), Ok(("app::predict", vec![attribute])));
    }

    #[test]
    fn text_it_did_not_write_is_refused_with_where() {
        for (text, at) in [
            ("app::h", 6),
            ("app::h\nl9:10/minute", 19),
            ("app::h\nl99:10/minute;", 8),
            ("app::h\nkx;", 8),
            ("app::h\nc0,;", 8),
            ("app::h\na9,;", 8),
            ("app::h\nm1,;", 10),
            ("app::h\nz;", 7),
        ] {
            let error = parse(text).expect_err(text);
            assert_eq!(error.at, at, "{text:?}: {error}");
        }
    }

    fn text() -> impl Strategy<Value = String> {
        // Any characters, those of the format's own among them.
        "[a-z0-9;:,\n é/-]{0,12}"
    }

    fn attribute() -> impl Strategy<Value = AttributeText<'static>> {
        let key = prop_oneof![
            Just(None),
            Just(Some(KeyText::Ip)),
            Just(Some(KeyText::Global)),
            Just(Some(KeyText::Custom)),
            text().prop_map(|name| Some(KeyText::Header(name.leak()))),
        ];
        let capacity = prop_oneof![
            Just(None),
            any::<u32>().prop_map(|limit| Some(CapacityText::Fixed(limit))),
            (any::<u32>(), any::<u32>())
                .prop_map(|(min, max)| Some(CapacityText::Adaptive { min, max })),
        ];
        let strings = (
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
        );
        let numbers = (
            proptest::option::of(0..Algorithm::ALL.len()),
            proptest::option::of(1..=u64::MAX),
            proptest::option::of(1..=u32::MAX),
            proptest::option::of(any::<u64>()),
            any::<bool>(),
        );
        (strings, numbers, key, capacity).prop_map(
            |(
                (limits, scope, message),
                (algorithm, burst, slots, queue, reserves),
                key,
                capacity,
            )| {
                let leak = |text: Option<String>| text.map(|text| &*text.leak());
                AttributeText {
                    limits: leak(limits),
                    algorithm: algorithm.map(|index| Algorithm::ALL[index]),
                    burst: burst.and_then(NonZeroU64::new),
                    key,
                    scope: leak(scope),
                    error_message: leak(message),
                    reserves,
                    concurrency: slots.and_then(NonZeroU32::new),
                    capacity,
                    queue: queue.map(Duration::from_nanos),
                }
            },
        )
    }

    proptest! {
        #[test]
        fn what_is_written_reads_back_the_same(
            handler in "[a-z_:]{1,20}",
            attributes in proptest::collection::vec(attribute(), 1..4),
        ) {
            let text = written(&handler, &attributes);
            prop_assert_eq!(parse(&text), Ok((handler.as_str(), attributes)));
        }
    }
}
