//! The engine's integration tests, one binary (one link step): the grammar, the algorithms
//! against a reference model on a fake clock, the store contract, settlement, the layering
//! of the modules, and Redis against `redis-server` processes the tests start themselves.

mod common;
#[path = "../support/model.rs"]
mod model;
#[cfg(feature = "redis")]
#[path = "../support/redis_server.rs"]
mod redis_server;
#[cfg(feature = "redis")]
#[path = "../support/redis_stats.rs"]
mod redis_stats;

mod algorithms;
mod contract;
mod edges;
mod grammar;
mod layering;
mod redis;
mod settle;
mod store;
