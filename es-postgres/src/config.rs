//! [`PostgresConfig`]: where the store connects and which schema holds its tables.

use std::time::Duration;

/// How to reach PostgreSQL, and the schema that holds the store's tables.
///
/// ```
/// use es_postgres::PostgresConfig;
/// let config = PostgresConfig::new("postgres://postgres@127.0.0.1:5432/postgres")
///     .schema("bank")
///     .pool_size(8);
/// assert_eq!(config.schema_name(), "bank");
/// ```
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    url: String,
    schema: String,
    pool_size: usize,
    connect_timeout: Duration,
    append_batch: usize,
}

impl PostgresConfig {
    /// Settings for the server at `url` (`postgres://user[:password]@host[:port]/database`,
    /// or libpq's `key=value` form), with the default schema `es`, a pool of 16
    /// connections, a 5-second connect timeout, and group commit of up to 256 appends.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            schema: "es".to_owned(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            append_batch: 256,
        }
    }

    /// The schema of the store's tables: letters, digits and `_`, at most 63 bytes. Two
    /// stores in different schemas of one database share nothing (as Redis namespaces).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// At most this many connections (at least 1).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How long to wait for a connection to open.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Group commit: appends made while earlier ones are on their way are sent together,
    /// up to `appends` per call, one transaction (one flush to disk) for all; each append
    /// still succeeds or conflicts on its own. 1 sends each append alone. Default 256.
    pub fn append_batch(mut self, appends: usize) -> Self {
        self.append_batch = appends.max(1);
        self
    }

    /// The group-commit bound.
    pub fn append_batch_value(&self) -> usize {
        self.append_batch
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// The pool's size.
    pub fn pool_size_value(&self) -> usize {
        self.pool_size
    }

    /// The connect timeout.
    pub fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }
}
