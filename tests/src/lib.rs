//! Workspace-level tests: the macro compile-fail suite (`tests/compiletest.rs`, cases in
//! `ui/` and `pass/`), the in-memory conformance run, derive and repository behaviour.
//! The workspace README is doctested here, so its examples always compile.
#![doc = include_str!("../../README.md")]
