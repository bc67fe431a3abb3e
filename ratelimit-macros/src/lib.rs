//! The `#[rate_limit]` attribute of the [`ratelimit`](https://docs.rs/ratelimit) crate.
//!
//! Use it through `ratelimit::rate_limit`; its documentation lives there. The work is in
//! three steps: `attr` (syntax), `validate` (typed options), `expand` (generation); `plain`
//! takes the common handler through them without parsing it.

mod attr;
mod expand;
mod plain;
mod validate;

use proc_macro::TokenStream;

/// Rate limits an axum handler. See `ratelimit::rate_limit` for the documentation.
#[proc_macro_attribute]
pub fn rate_limit(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::rate_limit(args.into(), item.into()).into()
}
