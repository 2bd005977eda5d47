//! A throwaway PostgreSQL server for tests (feature `testing`).
//!
//! [`PostgresServer::start`] runs `initdb` into a temporary directory and `postgres` on a
//! free loopback port (never 5432) with its socket in that directory, waits until it
//! accepts connections, and stops it when dropped, also when the test panics; it never
//! touches the machine's own cluster. [`PostgresServer::shared`] gives one server per test
//! binary; give each test its own schema ([`unique_schema`]) so tests run in parallel.
//!
//! The binaries are found on `PATH`, else in Debian's `/usr/lib/postgresql/<version>/bin`
//! (a plain `apt-get install postgresql` keeps them there), or in `$ES_POSTGRES_BIN`. As
//! root (PostgreSQL refuses to run as root), the server runs as the `postgres` user, which
//! Debian's package creates. A server in a `static` is never dropped, so every server also
//! has a watchdog that stops it once the test process has exited.
//!
//! ```no_run
//! use es_postgres::testing::{unique_schema, PostgresServer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = PostgresServer::shared()?;
//! let store = server.store(&unique_schema("my_test")).await?;
//! # Ok(())
//! # }
//! ```

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use es_core::testing::servers::{free_loopback_port, spawn_watchdog, temp_dir, unique_name};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{PostgresConfig, PostgresEventStore};

/// The variable that names the directory of `initdb` and `postgres`.
pub const BIN_DIR_VARIABLE: &str = "ES_POSTGRES_BIN";

/// Why the test server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// `initdb` or `postgres` was not found.
    #[error("PostgreSQL is not installed: no `initdb` on PATH, in /usr/lib/postgresql/*/bin or in ${BIN_DIR_VARIABLE}; install it (`apt-get install postgresql`)")]
    NotInstalled,
    /// A step failed.
    #[error("PostgreSQL test server: {0}")]
    Failed(String),
    /// A file system or process error.
    #[error("PostgreSQL test server: {0}")]
    Io(#[from] std::io::Error),
    /// The store could not connect to it.
    #[error(transparent)]
    Connect(#[from] es_core::StoreError),
}

/// A running throwaway PostgreSQL, stopped (and its directory removed) on drop.
#[derive(Debug)]
pub struct PostgresServer {
    server: Child,
    watchdog: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl PostgresServer {
    /// Creates a cluster in a temporary directory and starts it on a free loopback port,
    /// without durability (`fsync`, `synchronous_commit` and `full_page_writes` off: a
    /// throwaway server's tests are not about surviving a power cut).
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(&[])
    }

    /// Starts a server with more `postgres` settings, which override the defaults (e.g.
    /// `[("fsync", "on"), ("synchronous_commit", "on")]` for durable commits, as the
    /// benchmark measures).
    pub fn start_with(settings: &[(&str, &str)]) -> Result<Self, HarnessError> {
        let bin = bin_dir().ok_or(HarnessError::NotInstalled)?;
        let owner = run_as()?;
        let dir = temp_dir("es-postgres-test")?;
        let data = dir.join("data");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .args(["--locale", "C"])
            .stdin(Stdio::null());
        as_owner(&mut initdb, owner);
        let output = initdb.output()?;
        if !output.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(HarnessError::Failed(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let mut last_failure = String::new();
        // Another process may take the free port before the server binds it: try again.
        for _ in 0..5 {
            let port = free_loopback_port(5432)?;
            match spawn_server(&bin, &data, &dir, port, owner, settings) {
                Ok(server) => {
                    let watchdog = spawn_watchdog(server.id(), &dir);
                    return Ok(PostgresServer {
                        server,
                        watchdog,
                        port,
                        dir,
                    });
                }
                Err(HarnessError::Failed(failure)) => last_failure = failure,
                Err(other) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(other);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(HarnessError::Failed(last_failure))
    }

    /// One server for the whole test binary, started on first use.
    pub fn shared() -> Result<&'static PostgresServer, String> {
        static SHARED: OnceLock<Result<PostgresServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| PostgresServer::start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Settings for this server, with the store's tables in `schema`.
    pub fn config(&self, schema: &str) -> PostgresConfig {
        PostgresConfig::new(self.url()).schema(schema)
    }

    /// A store on this server in `schema`.
    pub async fn store(&self, schema: &str) -> Result<PostgresEventStore, HarnessError> {
        Ok(PostgresEventStore::connect(&self.config(schema)).await?)
    }
}

impl Drop for PostgresServer {
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

/// A schema name no other test of this process uses: `<label>_<n>`.
pub fn unique_schema(label: &str) -> String {
    unique_name(label, '_')
}

/// Where `initdb` and `postgres` are.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_VARIABLE) {
        return Some(PathBuf::from(dir));
    }
    let on_path = es_core::testing::servers::find_on_path("initdb")
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
        .filter(|dir| dir.join("postgres").is_file());
    if on_path.is_some() {
        return on_path;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

/// As root, the `postgres` user's uid and gid; else `None` (run as ourselves).
fn run_as() -> Result<Option<(u32, u32)>, HarnessError> {
    let id = |args: &[&str]| -> Result<u32, HarnessError> {
        let output = Command::new("id").args(args).output()?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                HarnessError::Failed(format!(
                    "`id {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            })
    };
    if id(&["-u"])? != 0 {
        return Ok(None);
    }
    let uid = id(&["-u", "postgres"]).map_err(|_| {
        HarnessError::Failed(
            "running as root, and there is no `postgres` user to run PostgreSQL as (PostgreSQL refuses root); create one (`useradd postgres`) or run the tests as another user".into(),
        )
    })?;
    Ok(Some((uid, id(&["-g", "postgres"])?)))
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}

/// Starts `postgres` and waits until it accepts TCP connections.
fn spawn_server(
    bin: &Path,
    data: &Path,
    dir: &Path,
    port: u16,
    owner: Option<(u32, u32)>,
    settings: &[(&str, &str)],
) -> Result<Child, HarnessError> {
    let log = std::fs::File::create(dir.join("postgres.log"))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir.join("postgres.log"), Some(uid), Some(gid))?;
    }
    let mut command = Command::new(bin.join("postgres"));
    command
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        // A throwaway server: durability is not what its tests are about.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=200"]);
    for (name, value) in settings {
        command.arg("-c").arg(format!("{name}={value}"));
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    as_owner(&mut command, owner);
    let mut server = command.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.try_wait()? {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            return Err(HarnessError::Failed(format!(
                "postgres exited with {status}: {}",
                log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            )));
        }
        if std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() && accepts(dir) {
            return Ok(server);
        }
        if Instant::now() >= deadline {
            let _ = server.kill();
            let _ = server.wait();
            return Err(HarnessError::Failed(format!(
                "postgres did not accept connections on port {port} within 30 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the server has finished starting: its pid file says "ready".
fn accepts(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("data").join("postmaster.pid"))
        .map(|pid| pid.lines().any(|line| line.trim() == "ready"))
        .unwrap_or(false)
}
