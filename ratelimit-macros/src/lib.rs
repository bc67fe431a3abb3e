//! The `#[rate_limit]` attribute of the `ratelimit` crate.
