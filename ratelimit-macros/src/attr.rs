//! Parsing and checking the attribute's arguments.

use ratelimit_core::rate::parse_rates;
use syn::parse::{Parse, ParseStream};
use syn::{Expr, Ident, LitInt, LitStr, Path, Token};

mod kw {
    syn::custom_keyword!(key);
    syn::custom_keyword!(scope);
    syn::custom_keyword!(algorithm);
    syn::custom_keyword!(burst);
    syn::custom_keyword!(cost);
    syn::custom_keyword!(exempt_when);
    syn::custom_keyword!(error_message);
    syn::custom_keyword!(header);
}

const OPTIONS: &str =
    "`key`, `scope`, `algorithm`, `burst`, `cost`, `exempt_when`, `error_message`, `crate`";
const ALGORITHMS: [&str; 4] = ["gcra", "fixed_window", "sliding_window", "moving_window"];

/// What limits a request.
pub(crate) enum LimitsArg {
    /// A string in the rate grammar, checked here.
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

/// The attribute's arguments, each option with the keyword it was given by (for spans).
pub(crate) struct Args {
    pub(crate) limits: LimitsArg,
    pub(crate) key: Option<KeyArg>,
    pub(crate) scope: Option<LitStr>,
    pub(crate) algorithm: Option<Ident>,
    pub(crate) burst: Option<LitInt>,
    pub(crate) cost: Option<Expr>,
    pub(crate) exempt_when: Option<Path>,
    pub(crate) error_message: Option<LitStr>,
    pub(crate) krate: Option<Path>,
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

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Sets an option once; a repeat is an error spanned on the repeat.
fn once<T>(
    slot: &mut Option<T>,
    value: T,
    keyword: &dyn quote::ToTokens,
    name: &str,
    errors: &mut Errors,
) {
    if slot.is_some() {
        errors.push(syn::Error::new_spanned(
            keyword,
            format!("duplicate option `{name}`: give it once"),
        ));
    } else {
        *slot = Some(value);
    }
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Args> {
        let mut errors = Errors::default();
        let limits = if input.is_empty()
            || (input.peek(Ident) && input.peek2(Token![=]))
            || input.peek(Token![crate])
        {
            return Err(syn::Error::new(
                input.span(),
                "missing limits: the first argument is a rate such as \"10/minute\" or the path of a function returning the limits",
            ));
        } else if input.peek(LitStr) {
            let lit: LitStr = input.parse()?;
            if let Err(e) = parse_rates(&lit.value()) {
                errors.push(syn::Error::new_spanned(
                    &lit,
                    format!("invalid rate limit: {e}"),
                ));
            }
            LimitsArg::Literal(lit)
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
                let k: kw::key = keyword(input)?;
                let value = parse_key(input, &mut errors)?;
                once(&mut args.key, value, &k, "key", &mut errors);
            } else if lookahead.peek(kw::scope) {
                let k: kw::scope = keyword(input)?;
                let value: LitStr = input.parse()?;
                non_empty(
                    &value,
                    "empty scope: expected a name such as \"inference\"",
                    &mut errors,
                );
                once(&mut args.scope, value, &k, "scope", &mut errors);
            } else if lookahead.peek(kw::algorithm) {
                let k: kw::algorithm = keyword(input)?;
                let value: Ident = input.parse()?;
                if !ALGORITHMS.contains(&value.to_string().as_str()) {
                    errors.push(syn::Error::new_spanned(
                        &value,
                        format!(
                            "unknown algorithm `{value}`: expected one of {}",
                            ALGORITHMS.join(", ")
                        ),
                    ));
                }
                once(&mut args.algorithm, value, &k, "algorithm", &mut errors);
            } else if lookahead.peek(kw::burst) {
                let k: kw::burst = keyword(input)?;
                let value: LitInt = input.parse()?;
                match value.base10_parse::<u64>() {
                    Ok(0) => errors.push(syn::Error::new_spanned(
                        &value,
                        "zero burst: expected at least 1",
                    )),
                    Ok(_) => {}
                    Err(_) => errors.push(syn::Error::new_spanned(
                        &value,
                        "invalid burst: expected a whole number below 2^64",
                    )),
                }
                once(&mut args.burst, value, &k, "burst", &mut errors);
            } else if lookahead.peek(kw::cost) {
                let k: kw::cost = keyword(input)?;
                let value: Expr = input.parse()?;
                once(&mut args.cost, value, &k, "cost", &mut errors);
            } else if lookahead.peek(kw::exempt_when) {
                let k: kw::exempt_when = keyword(input)?;
                let value: Path = input.parse()?;
                once(&mut args.exempt_when, value, &k, "exempt_when", &mut errors);
            } else if lookahead.peek(kw::error_message) {
                let k: kw::error_message = keyword(input)?;
                let value: LitStr = input.parse()?;
                non_empty(
                    &value,
                    "empty error message: expected the text of the 429 answer",
                    &mut errors,
                );
                once(
                    &mut args.error_message,
                    value,
                    &k,
                    "error_message",
                    &mut errors,
                );
            } else if lookahead.peek(Token![crate]) {
                let k: Token![crate] = keyword(input)?;
                let value: Path = input.parse()?;
                once(&mut args.krate, value, &k, "crate", &mut errors);
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
        if let (Some(burst), Some(algorithm)) = (&args.burst, &args.algorithm) {
            if algorithm != "gcra" {
                errors.push(syn::Error::new_spanned(
                    burst,
                    format!(
                        "`burst` applies to `gcra` only: `{algorithm}` admits its amount per window"
                    ),
                ));
            }
        }
        errors.finish()?;
        Ok(args)
    }
}

/// Parses `keyword =`.
fn keyword<K: Parse>(input: ParseStream<'_>) -> syn::Result<K> {
    let keyword = input.parse()?;
    input.parse::<Token![=]>()?;
    Ok(keyword)
}

fn non_empty(value: &LitStr, message: &str, errors: &mut Errors) {
    if value.value().trim().is_empty() {
        errors.push(syn::Error::new_spanned(value, message));
    }
}

fn parse_key(input: ParseStream<'_>, errors: &mut Errors) -> syn::Result<KeyArg> {
    if input.peek(kw::header) && input.peek2(syn::token::Paren) {
        input.parse::<kw::header>()?;
        let content;
        syn::parenthesized!(content in input);
        let name: LitStr = content.parse()?;
        let value = name.value();
        if value.is_empty() {
            errors.push(syn::Error::new_spanned(
                &name,
                "empty header name: expected a header such as \"X-API-Key\"",
            ));
        } else if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            errors.push(syn::Error::new_spanned(
                &name,
                format!("invalid header name {value:?}: expected letters, digits and `-`, such as \"X-API-Key\""),
            ));
        }
        return Ok(KeyArg::Header(name));
    }
    let path: Path = input.parse()?;
    Ok(match path.get_ident().map(ToString::to_string).as_deref() {
        Some("ip") => KeyArg::Ip,
        Some("global") => KeyArg::Global,
        _ => KeyArg::Function(path),
    })
}
