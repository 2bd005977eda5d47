//! Shared plumbing of the examples: command-line options, choosing the backend, and a
//! clear message (not a panic) when Redis cannot be reached.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use es_core::projection::ProjectionBackend;
use es_core::{InMemoryStore, SnapshotStore};

/// The options every example takes (one `clap` struct; `--help` describes each).
#[derive(Debug, Clone, clap::Parser)]
#[command(about, long_about = None)]
pub struct Options {
    /// The Redis server (or one node of a cluster) that keeps the events.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Keep the events in memory instead (no server needed).
    #[arg(long, conflicts_with = "postgres_url")]
    pub in_memory: bool,
    /// Keep the events in PostgreSQL instead, in a schema named after the namespace.
    #[arg(long, value_name = "URL")]
    pub postgres_url: Option<String>,
    /// The PostgreSQL of SQL read models (the `sql_read_model` example); default: the
    /// `--postgres-url`, else $POSTGRES_URL, else postgres://postgres@127.0.0.1:5432/postgres.
    #[arg(long, value_name = "URL")]
    pub read_model_url: Option<String>,
    /// The key namespace (Redis) or schema (PostgreSQL) of this run; default: a fresh one,
    /// `example-<milliseconds>`.
    #[arg(long, value_name = "NS", default_value_t = fresh_namespace(), hide_default_value = true)]
    pub namespace: String,
    /// Instead of running the example, decode every stored event with the current code and
    /// report what fails (the pre-deploy check); it changes nothing.
    #[arg(long)]
    pub check: bool,
    /// After the run, serve the inspector (es-inspect) on this address, e.g.
    /// 127.0.0.1:8080, until Ctrl-C: browse the events, replay each aggregate's state.
    #[arg(long, value_name = "ADDR")]
    pub inspect: Option<std::net::SocketAddr>,
}

/// With `--inspect ADDR`, serves `inspector` there until Ctrl-C, printing its address
/// first (`inspector at http://…/`); without, returns at once.
pub async fn inspect(
    options: &Options,
    inspector: es_inspect::Inspector,
) -> Result<(), Box<dyn std::error::Error>> {
    let Some(addr) = options.inspect else {
        return Ok(());
    };
    let bound = inspector.bind(addr).await?;
    println!(
        "inspector at http://{}/ (Ctrl-C stops it)",
        bound.local_addr()
    );
    std::io::Write::flush(&mut std::io::stdout())?;
    bound
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The PostgreSQL the examples use when no URL is given: the machine's own server.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// `example-<milliseconds since the epoch>`.
fn fresh_namespace() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("example-{millis}")
}

impl Options {
    /// Parses the process arguments; bad arguments print clap's error and exit with status 2.
    pub fn from_args() -> Self {
        <Self as clap::Parser>::parse()
    }

    /// The PostgreSQL schema for this run: the namespace, with `-` as `_`.
    pub fn schema(&self) -> String {
        self.namespace.replace(['-', '.', ':'], "_")
    }

    /// The PostgreSQL settings of `url` for this run's schema.
    pub fn postgres_config(&self, url: &str) -> es_postgres::PostgresConfig {
        es_postgres::PostgresConfig::new(url)
            .schema(self.schema())
            .connect_timeout(std::time::Duration::from_secs(2))
    }

    /// The URL of the PostgreSQL that holds SQL read models.
    pub fn read_model_url(&self) -> String {
        self.read_model_url
            .clone()
            .or_else(|| self.postgres_url.clone())
            .or_else(|| std::env::var("POSTGRES_URL").ok())
            .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_owned())
    }

    /// The Redis settings these options name.
    pub fn redis_config(&self) -> es_redis::RedisConfig {
        es_redis::RedisConfig::new(&self.redis_url)
            .namespace(&self.namespace)
            .connection_timeout(Some(std::time::Duration::from_secs(2)))
    }

    /// One line saying where the data goes.
    pub fn describe(&self) -> String {
        if self.in_memory {
            "backend: in memory".to_owned()
        } else if let Some(url) = &self.postgres_url {
            format!(
                "backend: PostgreSQL at {url}, schema `{}` (fresh for this run; pass --namespace to choose)",
                self.schema()
            )
        } else {
            format!(
                "backend: Redis at {}, key namespace `{}` (fresh for this run; pass --namespace to choose)",
                self.redis_url, self.namespace
            )
        }
    }
}

/// The chosen backend, behind the traits the examples use: an event and snapshot store for
/// repositories, and a projection backend for runners and read models. The examples' code
/// is the same for both.
#[derive(Clone)]
pub struct Backend {
    store: Arc<dyn SnapshotStore>,
    projections: Arc<dyn ProjectionBackend>,
    redis: Option<es_redis::RedisEventStore>,
    postgres: Option<es_postgres::PostgresEventStore>,
}

impl Backend {
    /// Opens the backend the options name. For Redis it connects and checks the server
    /// answers; the error explains how to start one.
    pub async fn open(options: &Options) -> Result<Self, String> {
        if options.in_memory {
            let store = InMemoryStore::new();
            return Ok(Backend {
                store: Arc::new(store.clone()),
                projections: Arc::new(store),
                redis: None,
                postgres: None,
            });
        }
        if let Some(url) = &options.postgres_url {
            let store = connect_postgres(options, url).await?;
            return Ok(Backend {
                store: Arc::new(store.clone()),
                projections: Arc::new(store.clone()),
                redis: None,
                postgres: Some(store),
            });
        }
        let config = options.redis_config();
        match es_redis::RedisEventStore::connect(&config).await {
            Ok(store) => Ok(Backend {
                store: Arc::new(store.clone()),
                projections: Arc::new(store.clone()),
                redis: Some(store),
                postgres: None,
            }),
            Err(error) => Err(format!(
                "cannot reach Redis at {}: {error}\n\
                 start one with `redis-server --daemonize yes` (Debian: `apt-get install -y redis-server`), \
                 point to another with `--redis-url redis://host:port`, \
                 or run without Redis: `cargo run --example <name> -- --in-memory`",
                options.redis_url
            )),
        }
    }

    /// The store, as the trait object the examples' repositories use.
    pub fn store(&self) -> Arc<dyn SnapshotStore> {
        self.store.clone()
    }

    /// Where projections run and read models live.
    pub fn projections(&self) -> &dyn ProjectionBackend {
        &*self.projections
    }

    /// The Redis store, when that is the backend: only to print `redis-cli` hints.
    pub fn redis(&self) -> Option<&es_redis::RedisEventStore> {
        self.redis.as_ref()
    }

    /// The PostgreSQL store, when that is the backend: only to print `psql` hints.
    pub fn postgres(&self) -> Option<&es_postgres::PostgresEventStore> {
        self.postgres.as_ref()
    }
}

/// Connects to the PostgreSQL at `url` in the run's schema; the error is one line that says
/// how to get one.
pub async fn connect_postgres(
    options: &Options,
    url: &str,
) -> Result<es_postgres::PostgresEventStore, String> {
    es_postgres::PostgresEventStore::connect(&options.postgres_config(url))
        .await
        .map_err(|error| {
            format!(
                "cannot reach PostgreSQL at {url}: {error}; start one (Debian: `apt-get install -y postgresql && pg_ctlcluster 15 main start`), point to another with --postgres-url / --read-model-url, or run in memory with --in-memory"
            )
        })
}

/// Runs an example body: options, backend, and errors printed as one message with a
/// non-zero exit code.
pub async fn run<F, Fut>(body: F) -> ExitCode
where
    F: FnOnce(Options, Backend) -> Fut,
    Fut: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    let options = Options::from_args();
    println!("{}", options.describe());
    let backend = match Backend::open(&options).await {
        Ok(backend) => backend,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    match body(options, backend).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
