//! The facade's integration tests, one binary (one link step): HTTP through real servers on
//! ephemeral ports and real clients, the examples among them, and Redis-backed ones against
//! `redis-server` processes they start themselves. (The flood that measures resident memory
//! is `tests/adversarial_memory.rs`, a binary of its own.)

mod apps;
mod common;
#[path = "../../ratelimit-core/tests/support/redis_server.rs"]
mod redis_server;
#[path = "../../ratelimit-core/tests/support/redis_stats.rs"]
mod redis_stats;

mod adversarial;
mod attribute;
mod capacity;
mod engine;
mod examples;
mod ml_api;
mod redis;
mod reserve;
