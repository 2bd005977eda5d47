//! The backend conformance suites of es-core, on a real PostgreSQL the harness starts: one
//! shared server per test binary, a fresh schema per test.

use es_postgres::testing::{unique_schema, PostgresServer};

es_core::conformance_tests!(|| async {
    let server = PostgresServer::shared().unwrap_or_else(|e| panic!("{e}"));
    server
        .store(&unique_schema("conformance"))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"))
});

/// The projection conformance suite: cursors and pending events in tables, read models of
/// hashes in a table.
mod projections {
    use super::*;

    es_core::projection_conformance_tests!(|| async {
        let server = PostgresServer::shared().unwrap_or_else(|e| panic!("{e}"));
        server
            .store(&unique_schema("projection_conformance"))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"))
    });
}

/// Personal data, with the subjects' keys in table `subject_keys`.
mod personal_data {
    use super::*;

    es_core::personal_data_tests!(|| async {
        let server = PostgresServer::shared().unwrap_or_else(|e| panic!("{e}"));
        let store = server
            .store(&unique_schema("personal"))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
        let keys = es_postgres::PostgresKeys::new(&store);
        (store, keys)
    });
}
