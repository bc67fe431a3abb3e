//! The examples the tests drive, each compiled once for all of them.

// `ml_api` and `redis` each include `examples/support/json.rs`; each test uses a part.
#![allow(clippy::duplicate_mod, dead_code)]

#[path = "../../examples/in_memory.rs"]
pub mod in_memory;
#[path = "../../examples/ml_api.rs"]
pub mod ml_api;
#[cfg(feature = "redis")]
#[path = "../../examples/redis.rs"]
pub mod redis;
#[path = "../../examples/tiers.rs"]
pub mod tiers;
