//! The projection conformance suite on the in-memory backend: the same cases es-redis runs
//! on a server and on a cluster.

es_core::projection_conformance_tests!(|| async { es_core::InMemoryStore::new() });
