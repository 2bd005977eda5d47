//! Macro misuse is a compile error at the offending token: every case in `ui/` must fail
//! with exactly its `.stderr`; every case in `pass/` must compile.
//! Regenerate expectations with `TRYBUILD=overwrite cargo test -p es-tests --test compiletest`
//! and read each `.stderr` before committing it.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("pass/*.rs");
    cases.compile_fail("ui/*.rs");
}
