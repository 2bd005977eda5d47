//! The in-memory backend keeps the same contract as every other backend.

es_core::conformance_tests!(|| async { es_core::InMemoryStore::new() });

mod personal_data {
    es_core::personal_data_tests!(|| async {
        (
            es_core::InMemoryStore::new(),
            es_core::personal::InMemoryKeys::new(),
        )
    });
}
