//! The backend conformance suite of es-core, on a real Redis: one shared test server, a
//! fresh namespace per test.

use es_redis::testing::{unique_namespace, RedisServer};

es_core::conformance_tests!(|| async {
    let server = RedisServer::shared().unwrap_or_else(|e| panic!("{e}"));
    server
        .store(&unique_namespace("conformance"))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"))
});

/// The same suite with tail copies on (`RedisConfig::tail_copies`): every case holds when
/// loads read the copies instead of the stream.
mod with_tail_copies {
    use super::*;
    use es_redis::RedisEventStore;

    es_core::conformance_tests!(|| async {
        let server = RedisServer::shared().unwrap_or_else(|e| panic!("{e}"));
        let config = server
            .config(&unique_namespace("conformance-copies"))
            .tail_copies(16);
        RedisEventStore::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"))
    });
}

/// The projection conformance suite: consumer groups and Redis-hash read models.
mod projections {
    use super::*;

    es_core::projection_conformance_tests!(|| async {
        let server = RedisServer::shared().unwrap_or_else(|e| panic!("{e}"));
        server
            .store(&unique_namespace("projection-conformance"))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"))
    });
}

mod personal_data {
    es_core::personal_data_tests!(|| async {
        let server = es_redis::testing::RedisServer::shared().unwrap_or_else(|e| panic!("{e}"));
        let store = server
            .store(&es_redis::testing::unique_namespace("personal"))
            .await
            .expect("connect");
        let keys = es_redis::RedisKeys::new(&store);
        (store, keys)
    });
}
