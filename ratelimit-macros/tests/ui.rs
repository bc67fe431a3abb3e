//! Compile-time behaviour of `#[rate_limit]`: what compiles, and what the errors say.
//!
//! The cases that must fail are compiled by trybuild, which checks them (no code generated)
//! against a project holding only this crate's small set of dependencies; regenerate their
//! snapshots with `TRYBUILD=overwrite cargo test -p ratelimit-macros --test ui` and read
//! the diff. The cases that must compile are modules of this test, compiled with it (and
//! under the workspace's lints, `-D warnings` in CI), and each one's `main` is run.

#[test]
fn what_must_not_compile_fails_with_its_message() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
}

// The cases that compile, each with the `main` that builds its router.
#[path = "ui/pass/capacity-and-queue.rs"]
mod capacity_and_queue;
#[path = "ui/pass/generics-and-options.rs"]
mod generics_and_options;
#[path = "ui/pass/keeps-the-signature.rs"]
pub mod keeps_the_signature;
#[path = "ui/pass/one-expression-bodies.rs"]
mod one_expression_bodies;
#[path = "ui/pass/reserve-and-settle.rs"]
mod reserve_and_settle;
#[path = "ui/pass/returns-and-early-exits.rs"]
mod returns_and_early_exits;
#[path = "ui/pass/token-level-rewrite.rs"]
mod token_level_rewrite;

#[test]
fn what_must_compile_compiles_and_builds_its_router() {
    capacity_and_queue::main();
    generics_and_options::main();
    keeps_the_signature::main();
    one_expression_bodies::main();
    reserve_and_settle::main();
    returns_and_early_exits::main();
    token_level_rewrite::main();
}
