//! The in-memory backend keeps the same contract as every other backend.

es_core::conformance_tests!(|| async { es_core::InMemoryStore::new() });
