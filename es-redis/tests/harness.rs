//! The test server harness itself: it never uses the default port, and a server (or every
//! node of a cluster) is stopped when its owner unwinds from a panic.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use es_redis::testing::{unique_namespace, RedisCluster, RedisServer};

#[test]
fn server_is_stopped_when_a_test_panics() {
    let unwound = std::panic::catch_unwind(|| {
        let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        assert!(TcpStream::connect(("127.0.0.1", server.port())).is_ok());
        std::panic::panic_any(server.port());
    });
    let port = *unwound
        .expect_err("the closure panics")
        .downcast::<u16>()
        .expect("the port");
    // Drop kills and reaps the server before the unwinding finishes.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "port {port} still answers");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn servers_use_free_ports_other_than_the_default_one() {
    let shared = RedisServer::shared().unwrap_or_else(|e| panic!("{e}"));
    let own = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(shared.port(), 6379);
    assert_ne!(own.port(), 6379);
    assert_ne!(shared.port(), own.port());
    assert!(shared.url().starts_with("redis://127.0.0.1:"));
    assert_ne!(unique_namespace("t"), unique_namespace("t"));
}

#[test]
fn cluster_nodes_are_stopped_when_a_test_panics() {
    let unwound = std::panic::catch_unwind(|| {
        let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
        let ports = cluster.ports();
        assert_eq!(ports.len(), RedisCluster::MASTERS);
        assert!(!ports.contains(&6379));
        for port in &ports {
            assert!(TcpStream::connect(("127.0.0.1", *port)).is_ok());
        }
        std::panic::panic_any(ports);
    });
    let ports = *unwound
        .expect_err("the closure panics")
        .downcast::<Vec<u16>>()
        .expect("the ports");
    let deadline = Instant::now() + Duration::from_secs(2);
    for port in ports {
        while TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < deadline, "port {port} still answers");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
