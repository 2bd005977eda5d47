//! Workspace-level tests: the macro compile-fail suite (`tests/compiletest.rs`, cases in
//! `ui/` and `pass/`), the in-memory conformance run, and repository behaviour.
