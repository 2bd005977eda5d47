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
