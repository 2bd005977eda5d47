//! A throwaway `redis-server` for tests (feature `testing`).
//!
//! [`RedisServer::start`] runs `redis-server` on a free loopback port (never 6379), with no
//! persistence, in its own temporary directory, waits until it answers `PING`, and stops it
//! when dropped, also when the test panics. [`RedisServer::shared`] gives one server per
//! test binary; give each test its own namespace ([`unique_namespace`]) so tests can run in
//! parallel.
//!
//! A server in a `static` is never dropped, so every server also has a watchdog: a small
//! shell loop that stops it (and removes its directory) once the test process has exited.
//!
//! [`RedisCluster::start`] does the same for a Redis Cluster of three masters (no
//! replicas): three such servers with `--cluster-enabled yes`, joined with
//! `redis-cli --cluster create`; [`RedisCluster::shared`] gives one per test binary.
//!
//! ```no_run
//! use es_redis::testing::{unique_namespace, RedisServer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = RedisServer::shared()?;
//! let store = server.store(&unique_namespace("my-test")).await?;
//! # Ok(())
//! # }
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use es_core::testing::servers::{free_loopback_port, spawn_watchdog, temp_dir, unique_name};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{RedisConfig, RedisEventStore};

/// The `redis-server` binary: `$REDIS_SERVER` if set, else `redis-server` on the `PATH`.
pub const SERVER_BINARY_VARIABLE: &str = "REDIS_SERVER";

/// The `redis-cli` binary ([`RedisCluster`] creates the cluster with it): `$REDIS_CLI` if
/// set, else `redis-cli` on the `PATH`.
pub const CLI_BINARY_VARIABLE: &str = "REDIS_CLI";

/// Why a test server could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// There is no `redis-server` binary.
    #[error(
        "cannot run `{binary}`: {source}. Redis tests start their own server: install it with \
         `apt-get install -y redis-server` (or set {SERVER_BINARY_VARIABLE} to its path)"
    )]
    NotInstalled {
        /// The binary that was tried.
        binary: String,
        /// Why it could not run.
        #[source]
        source: std::io::Error,
    },
    /// It started but did not come up.
    #[error("redis-server did not start: {0}")]
    DidNotStart(String),
    /// A file system or process error.
    #[error("test server: {0}")]
    Io(#[from] std::io::Error),
    /// The store could not connect to it.
    #[error(transparent)]
    Connect(#[from] crate::Error),
}

/// A running `redis-server`, stopped on drop.
#[derive(Debug)]
pub struct RedisServer {
    server: Child,
    watchdog: Option<Child>,
    port: u16,
    dir: PathBuf,
    binary: String,
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free loopback port, with no persistence.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(&[])
    }

    /// Starts a server on a free loopback port with more `redis-server` arguments, which
    /// override the defaults (e.g. `["--appendonly", "yes", "--appendfsync", "always"]`).
    pub fn start_with(extra_args: &[&str]) -> Result<Self, HarnessError> {
        let binary =
            std::env::var(SERVER_BINARY_VARIABLE).unwrap_or_else(|_| "redis-server".to_owned());
        let dir = temp_dir("es-redis-test")?;
        let extra_args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
        let mut last_failure = String::new();
        // Another process may take the free port before the server binds it: try again.
        for _ in 0..5 {
            let port = free_loopback_port(6379)?;
            match spawn_server(&binary, port, &dir, &extra_args) {
                Ok(server) => {
                    let watchdog = spawn_watchdog(server.id(), &dir);
                    return Ok(RedisServer {
                        server,
                        watchdog,
                        port,
                        dir,
                        binary,
                        extra_args,
                    });
                }
                Err(HarnessError::DidNotStart(failure)) => last_failure = failure,
                Err(other) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(other);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(HarnessError::DidNotStart(last_failure))
    }

    /// Kills the server with SIGKILL, as a crash would: no shutdown save, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }

    /// Starts the server again on the same port, in the same directory (so with whatever
    /// it persisted there), with the same arguments. Kills it first if it still runs.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match spawn_server(&self.binary, self.port, &self.dir, &self.extra_args) {
                Ok(server) => {
                    self.watchdog = spawn_watchdog(server.id(), &self.dir);
                    self.server = server;
                    return Ok(());
                }
                // The port may linger for a moment after the kill.
                Err(HarnessError::DidNotStart(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Its working directory (where it keeps its log and any persistence files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One server for the whole test binary, started on first use.
    pub fn shared() -> Result<&'static RedisServer, String> {
        static SHARED: OnceLock<Result<RedisServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| RedisServer::start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Settings for this server under `namespace`.
    pub fn config(&self, namespace: &str) -> RedisConfig {
        RedisConfig::new(self.url()).namespace(namespace)
    }

    /// A store on this server under `namespace`.
    pub async fn store(&self, namespace: &str) -> Result<RedisEventStore, HarnessError> {
        Ok(RedisEventStore::connect(&self.config(namespace)).await?)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        if let Some(watchdog) = &mut self.watchdog {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway Redis Cluster: three masters without replicas on free loopback ports,
/// stopped on drop (each node also has its watchdog).
///
/// ```no_run
/// use es_redis::testing::{unique_namespace, RedisCluster};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = RedisCluster::shared()?;
/// let config = cluster.config(&unique_namespace("my-test")).partitions("user", 6);
/// let store = es_redis::RedisEventStore::connect(&config).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// How many masters [`start`](Self::start) runs.
    pub const MASTERS: usize = 3;

    /// Starts three cluster-enabled servers (no persistence, each with its own free
    /// cluster bus port), creates the cluster with `redis-cli --cluster create …
    /// --cluster-replicas 0 --cluster-yes`, and waits until every node reports
    /// `cluster_state:ok` and knows all three.
    pub fn start() -> Result<Self, HarnessError> {
        let mut nodes = Vec::with_capacity(Self::MASTERS);
        for _ in 0..Self::MASTERS {
            nodes.push(start_cluster_node()?);
        }
        let cli = std::env::var(CLI_BINARY_VARIABLE).unwrap_or_else(|_| "redis-cli".to_owned());
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let created = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| HarnessError::NotInstalled {
                binary: cli.clone(),
                source,
            })?;
        if !created.status.success() {
            return Err(HarnessError::DidNotStart(format!(
                "`{cli} --cluster create {}` exited with {}: {}{}",
                addresses.join(" "),
                created.status,
                String::from_utf8_lossy(&created.stdout),
                String::from_utf8_lossy(&created.stderr)
            )));
        }
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok()?;
        Ok(cluster)
    }

    /// One cluster for the whole test binary, started on first use.
    pub fn shared() -> Result<&'static RedisCluster, String> {
        static SHARED: OnceLock<Result<RedisCluster, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| RedisCluster::start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn wait_until_ok(&self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut last = String::new();
            let mut all_ok = true;
            for node in &self.nodes {
                let info = command(node.port(), "CLUSTER INFO").unwrap_or_default();
                let ok = info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
                    && info.contains("cluster_slots_ok:16384");
                if !ok {
                    all_ok = false;
                    last = format!("node {}: {info}", node.port());
                }
            }
            if all_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(HarnessError::DidNotStart(format!(
                    "the cluster is not ok after 20 s; {last}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The nodes' ports on 127.0.0.1.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Settings for this cluster under `namespace` (every node as a seed).
    pub fn config(&self, namespace: &str) -> RedisConfig {
        RedisConfig::cluster(self.urls()).namespace(namespace)
    }

    /// A store on this cluster under `namespace`.
    pub async fn store(&self, namespace: &str) -> Result<RedisEventStore, HarnessError> {
        Ok(RedisEventStore::connect(&self.config(namespace)).await?)
    }
}

/// Starts one cluster-enabled server; its cluster bus port is a free port of its own
/// (the default, port + 10000, may be taken or past 65535).
fn start_cluster_node() -> Result<RedisServer, HarnessError> {
    let mut last = None;
    for _ in 0..5 {
        let bus = free_loopback_port(6379)?.to_string();
        match RedisServer::start_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            &bus,
            "--cluster-node-timeout",
            "5000",
        ]) {
            Ok(node) => return Ok(node),
            Err(HarnessError::DidNotStart(why)) => last = Some(HarnessError::DidNotStart(why)),
            Err(other) => return Err(other),
        }
    }
    Err(last.unwrap_or_else(|| HarnessError::DidNotStart("no attempt".to_owned())))
}

/// Sends an inline command to the server on `port` and returns its bulk-string reply.
fn command(port: u16, inline: &str) -> std::io::Result<String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut connection = TcpStream::connect_timeout(&address, Duration::from_millis(200))?;
    connection.set_read_timeout(Some(Duration::from_millis(500)))?;
    connection.write_all(format!("{inline}\r\n").as_bytes())?;
    // `$<length>\r\n<payload>\r\n`: read until the whole payload is in.
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = connection.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        reply.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&reply);
        if let Some((header, body)) = text.split_once("\r\n") {
            let length: usize = header.trim_start_matches('$').parse().unwrap_or(0);
            if body.len() >= length + 2 || !header.starts_with('$') {
                return Ok(body.get(..length).unwrap_or(body).to_owned());
            }
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Writes an entry the way a writer other than this store would — `redis-cli`, a script,
/// an older release: `XADD` of `pairs` (the envelope included, as given) to the category
/// stream of `stream`, then `RPUSH` of the new entry id to the aggregate's index (after
/// the index's placeholder element 0 when the aggregate is new), so loads find it. Returns the entry id. For tests of entries the current code did not write;
/// it checks nothing, as such writers do not.
///
/// ```no_run
/// # async fn run(store: &es_redis::RedisEventStore) -> Result<(), redis::RedisError> {
/// use es_core::StreamId;
/// let id = es_redis::testing::write_by_hand(
///     store,
///     &StreamId::new("user", "42"),
///     &[("type", "Registered"), ("aggregate_id", "42"), ("version", "1"), ("name", "Duffy Duck")],
/// )
/// .await?;
/// # Ok(())
/// # }
/// ```
pub async fn write_by_hand(
    store: &RedisEventStore,
    stream: &es_core::StreamId,
    pairs: &[(&str, &str)],
) -> Result<String, redis::RedisError> {
    let mut connection = store.connection();
    let mut xadd = redis::cmd("XADD");
    xadd.arg(store.keys().aggregate_stream(stream)).arg("*");
    for (name, value) in pairs {
        xadd.arg(name).arg(value);
    }
    let id: String = xadd.query_async(&mut connection).await?;
    let index = store.keys().index(stream);
    let indexed: u64 = redis::cmd("LLEN")
        .arg(&index)
        .query_async(&mut connection)
        .await?;
    let mut rpush = redis::cmd("RPUSH");
    rpush.arg(&index);
    if indexed == 0 {
        rpush.arg("");
    }
    let _: i64 = rpush.arg(&id).query_async(&mut connection).await?;
    Ok(id)
}

/// A namespace no other test of this process uses: `<label>-<n>`.
pub fn unique_namespace(label: &str) -> String {
    unique_name(label, '-')
}

/// Spawns `redis-server` on `port` and waits until it answers.
fn spawn_server(
    binary: &str,
    port: u16,
    dir: &Path,
    extra_args: &[String],
) -> Result<Child, HarnessError> {
    let log = dir.join("redis.log");
    let spawned = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut server = spawned.map_err(|source| HarnessError::NotInstalled {
        binary: binary.to_owned(),
        source,
    })?;
    match wait_until_ready(&mut server, port) {
        Ok(()) => Ok(server),
        Err(failure) => {
            let _ = server.kill();
            let _ = server.wait();
            let mut stderr = String::new();
            if let Some(mut pipe) = server.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            Err(HarnessError::DidNotStart(format!(
                "{failure}; stderr: {stderr:?}; log: {log}"
            )))
        }
    }
}

fn wait_until_ready(server: &mut Child, port: u16) -> Result<(), String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = server.try_wait() {
            return Err(format!("it exited with {status}"));
        }
        if ping(address).unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no PONG from {address} within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ping(address: SocketAddr) -> std::io::Result<bool> {
    let mut connection = TcpStream::connect_timeout(&address, Duration::from_millis(200))?;
    connection.set_read_timeout(Some(Duration::from_millis(500)))?;
    connection.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    connection.read_exact(&mut reply)?;
    Ok(&reply == b"+PONG\r\n")
}
