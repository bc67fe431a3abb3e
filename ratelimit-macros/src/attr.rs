//! Syntax: the attribute's arguments as tokens, each option with the keyword it was given by
//! (for spans). Nothing is checked here but the shape; `validate` checks the values.

use syn::parse::{Parse, ParseStream};
use syn::{Expr, Ident, LitInt, LitStr, Path, Token};

pub(crate) mod kw {
    syn::custom_keyword!(key);
    syn::custom_keyword!(scope);
    syn::custom_keyword!(algorithm);
    syn::custom_keyword!(burst);
    syn::custom_keyword!(cost);
    syn::custom_keyword!(reserve);
    syn::custom_keyword!(concurrency);
    syn::custom_keyword!(capacity);
    syn::custom_keyword!(queue);
    syn::custom_keyword!(adaptive);
    syn::custom_keyword!(min);
    syn::custom_keyword!(max);
    syn::custom_keyword!(exempt_when);
    syn::custom_keyword!(error_message);
    syn::custom_keyword!(header);
}

const OPTIONS: &str = "`key`, `scope`, `algorithm`, `burst`, `cost`, `reserve`, `concurrency`, `capacity`, `queue`, `exempt_when`, `error_message`, `crate`";

/// What limits a request.
pub(crate) enum LimitsArg {
    /// A string, to be checked against the rate grammar.
    Literal(LitStr),
    /// A function of the request parts returning its limits.
    Function(Path),
}

/// Who is counted.
pub(crate) enum KeyArg {
    Ip,
    Global,
    Header(LitStr),
    Function(Path),
}

/// A route's capacity across clients, as written.
pub(crate) enum CapacityArg {
    /// `adaptive`, or `adaptive(min = A, max = B)`.
    Adaptive {
        keyword: kw::adaptive,
        min: Option<LitInt>,
        max: Option<LitInt>,
    },
    /// `N`: a fixed limit.
    Fixed(LitInt),
}

/// One attribute's arguments, as written.
pub(crate) struct Args {
    pub(crate) limits: LimitsArg,
    pub(crate) key: Option<(kw::key, KeyArg)>,
    pub(crate) scope: Option<(kw::scope, LitStr)>,
    pub(crate) algorithm: Option<(kw::algorithm, Ident)>,
    pub(crate) burst: Option<(kw::burst, LitInt)>,
    pub(crate) cost: Option<(kw::cost, Expr)>,
    pub(crate) reserve: Option<(kw::reserve, Expr)>,
    pub(crate) concurrency: Option<(kw::concurrency, LitInt)>,
    pub(crate) capacity: Option<(kw::capacity, CapacityArg)>,
    pub(crate) queue: Option<(kw::queue, LitStr)>,
    pub(crate) exempt_when: Option<(kw::exempt_when, Path)>,
    pub(crate) error_message: Option<(kw::error_message, LitStr)>,
    pub(crate) krate: Option<(Token![crate], Path)>,
}

/// Collects errors so the user sees all of them at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn spanned(
        &mut self,
        tokens: impl quote::ToTokens,
        message: impl std::fmt::Display,
    ) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Parses `keyword = value` into `slot`; a repeat is an error spanned on the repeat.
fn option<K: Parse + quote::ToTokens, T>(
    input: ParseStream<'_>,
    slot: &mut Option<(K, T)>,
    name: &str,
    value: impl FnOnce(ParseStream<'_>) -> syn::Result<T>,
) -> syn::Result<()> {
    let keyword: K = input.parse()?;
    input.parse::<Token![=]>()?;
    let value = value(input)?;
    if slot.is_some() {
        return Err(syn::Error::new_spanned(
            keyword,
            format!("duplicate option `{name}`: give it once"),
        ));
    }
    *slot = Some((keyword, value));
    Ok(())
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Args> {
        let limits = if input.is_empty()
            || (input.peek(Ident) && input.peek2(Token![=]))
            || input.peek(Token![crate])
        {
            return Err(syn::Error::new(
                input.span(),
                "missing limits: the first argument is a rate such as \"10/minute\" or the path of a function returning the limits",
            ));
        } else if input.peek(LitStr) {
            LimitsArg::Literal(input.parse()?)
        } else if input.peek(syn::Lit) {
            let lit: syn::Lit = input.parse()?;
            return Err(syn::Error::new_spanned(
                lit,
                "expected the limits as a string such as \"10/minute\"",
            ));
        } else {
            LimitsArg::Function(input.parse()?)
        };

        let mut args = Args {
            limits,
            key: None,
            scope: None,
            algorithm: None,
            burst: None,
            cost: None,
            reserve: None,
            concurrency: None,
            capacity: None,
            queue: None,
            exempt_when: None,
            error_message: None,
            krate: None,
        };
        while !input.is_empty() {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::key) {
                option(input, &mut args.key, "key", parse_key)?;
            } else if lookahead.peek(kw::scope) {
                option(input, &mut args.scope, "scope", Parse::parse)?;
            } else if lookahead.peek(kw::algorithm) {
                option(input, &mut args.algorithm, "algorithm", Parse::parse)?;
            } else if lookahead.peek(kw::burst) {
                option(input, &mut args.burst, "burst", Parse::parse)?;
            } else if lookahead.peek(kw::cost) {
                option(input, &mut args.cost, "cost", Parse::parse)?;
            } else if lookahead.peek(kw::reserve) {
                option(input, &mut args.reserve, "reserve", Parse::parse)?;
            } else if lookahead.peek(kw::concurrency) {
                option(input, &mut args.concurrency, "concurrency", Parse::parse)?;
            } else if lookahead.peek(kw::capacity) {
                option(input, &mut args.capacity, "capacity", parse_capacity)?;
            } else if lookahead.peek(kw::queue) {
                option(input, &mut args.queue, "queue", Parse::parse)?;
            } else if lookahead.peek(kw::exempt_when) {
                option(input, &mut args.exempt_when, "exempt_when", Parse::parse)?;
            } else if lookahead.peek(kw::error_message) {
                option(
                    input,
                    &mut args.error_message,
                    "error_message",
                    Parse::parse,
                )?;
            } else if lookahead.peek(Token![crate]) {
                option(input, &mut args.krate, "crate", Parse::parse)?;
            } else if input.peek(Ident) {
                let unknown: Ident = input.parse()?;
                return Err(syn::Error::new_spanned(
                    &unknown,
                    format!("unknown option `{unknown}`: expected one of {OPTIONS}"),
                ));
            } else {
                return Err(lookahead.error());
            }
        }
        Ok(args)
    }
}

fn parse_key(input: ParseStream<'_>) -> syn::Result<KeyArg> {
    if input.peek(kw::header) && input.peek2(syn::token::Paren) {
        input.parse::<kw::header>()?;
        let content;
        syn::parenthesized!(content in input);
        return Ok(KeyArg::Header(content.parse()?));
    }
    let path: Path = input.parse()?;
    Ok(match path.get_ident().map(ToString::to_string).as_deref() {
        Some("ip") => KeyArg::Ip,
        Some("global") => KeyArg::Global,
        _ => KeyArg::Function(path),
    })
}

fn parse_capacity(input: ParseStream<'_>) -> syn::Result<CapacityArg> {
    let lookahead = input.lookahead1();
    if lookahead.peek(LitInt) {
        return Ok(CapacityArg::Fixed(input.parse()?));
    }
    if !lookahead.peek(kw::adaptive) {
        return Err(syn::Error::new(
            input.span(),
            "expected `adaptive`, `adaptive(min = 2, max = 64)` or a number of requests in flight, such as `capacity = 8`",
        ));
    }
    let keyword: kw::adaptive = input.parse()?;
    let (mut min, mut max) = (None, None);
    if input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in input);
        while !content.is_empty() {
            let lookahead = content.lookahead1();
            if lookahead.peek(kw::min) {
                let bound: kw::min = content.parse()?;
                content.parse::<Token![=]>()?;
                if min.replace(content.parse::<LitInt>()?).is_some() {
                    return Err(syn::Error::new_spanned(bound, "duplicate bound `min`"));
                }
            } else if lookahead.peek(kw::max) {
                let bound: kw::max = content.parse()?;
                content.parse::<Token![=]>()?;
                if max.replace(content.parse::<LitInt>()?).is_some() {
                    return Err(syn::Error::new_spanned(bound, "duplicate bound `max`"));
                }
            } else {
                return Err(lookahead.error());
            }
            if !content.is_empty() {
                content.parse::<Token![,]>()?;
            }
        }
    }
    Ok(CapacityArg::Adaptive { keyword, min, max })
}
