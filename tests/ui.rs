//! Compile-time behaviour of `#[rate_limit]`: what compiles, and what the errors say.
//! Regenerate the snapshots with `TRYBUILD=overwrite cargo test --test ui` and read the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
