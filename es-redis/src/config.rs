//! Connection settings: the server URL, credentials, key namespace, timeouts and paging.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::IntoConnectionInfo;

use crate::error::Error;
use crate::keys::KeyLayout;

/// How to reach Redis and how to lay out keys there.
///
/// ```
/// use std::time::Duration;
/// use es_redis::RedisConfig;
///
/// let config = RedisConfig::new("redis://127.0.0.1:6379/0")
///     .namespace("shop")
///     .credentials("app", "s3cret")
///     .response_timeout(Some(Duration::from_secs(2)));
/// assert_eq!(config.keys().category_stream("cart"), "shop:{cart}:events");
/// // Debug output never shows the password.
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    url: String,
    username: Option<String>,
    password: Option<String>,
    namespace: String,
    response_timeout: Option<Duration>,
    connection_timeout: Option<Duration>,
    reconnect_retries: usize,
    page_size: usize,
    remembered_append_ids: usize,
}

impl RedisConfig {
    /// Settings for the server at `url`: `redis://[user[:password]@]host[:port][/db]`,
    /// `rediss://…` for TLS (with this crate's `tls` feature), or
    /// `redis+unix:///path/to/socket`.
    ///
    /// Defaults: namespace `es`; replies time out after 500 ms and connection attempts
    /// after 1 s (redis-rs's defaults); 6 reconnection attempts; pages of 1,000 events; the
    /// last 8 append ids of each aggregate remembered for idempotent retries.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            username: None,
            password: None,
            namespace: "es".to_owned(),
            response_timeout: Some(Duration::from_millis(500)),
            connection_timeout: Some(Duration::from_secs(1)),
            reconnect_retries: 6,
            page_size: 1_000,
            remembered_append_ids: 8,
        }
    }

    /// Prefixes every key with `namespace` (default `es`). It may not be empty nor contain
    /// `{` or `}`, which would move the hash tag.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Logs in as `username` (Redis 6 ACL) with `password`, overriding the URL's.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// Logs in with `password` only (`requirepass`), overriding the URL's.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// How long to wait for a reply (`None`: forever). A timed-out append may or may not
    /// have been applied: retry it with the same append id.
    pub fn response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long one connection attempt may take (`None`: forever).
    pub fn connection_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// How many times to retry connecting, with exponential backoff, when connecting or
    /// reconnecting after the connection was lost.
    pub fn reconnect_retries(mut self, retries: usize) -> Self {
        self.reconnect_retries = retries;
        self
    }

    /// How many events one read round trip returns at most (default 1,000; at least 1).
    /// Longer reads take several round trips, so no reply is unbounded.
    pub fn page_size(mut self, events: usize) -> Self {
        self.page_size = events.max(1);
        self
    }

    /// How many of an aggregate's most recent appends that carried an append id are
    /// remembered, so that retrying one returns its first result (default 8). Each costs
    /// about 20 bytes per aggregate; 0 turns idempotent retries off.
    pub fn remembered_append_ids(mut self, appends: usize) -> Self {
        self.remembered_append_ids = appends;
        self
    }

    /// The key layout of this namespace.
    pub fn keys(&self) -> KeyLayout {
        KeyLayout::new(self.namespace.clone())
    }

    pub(crate) fn response_timeout_value(&self) -> Option<Duration> {
        self.response_timeout
    }

    pub(crate) fn page_size_value(&self) -> usize {
        self.page_size
    }

    pub(crate) fn remembered_append_ids_value(&self) -> usize {
        self.remembered_append_ids
    }

    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<(), Error> {
        if self.namespace.is_empty() {
            return Err(Error::Config("the namespace is empty".to_owned()));
        }
        if self.namespace.contains(['{', '}']) {
            return Err(Error::Config(format!(
                "namespace {:?} contains `{{` or `}}`, which would move the keys' hash tag",
                self.namespace
            )));
        }
        self.client().map(drop)
    }

    fn client(&self) -> Result<redis::Client, Error> {
        let tls = self.url.starts_with("rediss://") || self.url.starts_with("valkeys://");
        let unusable = |why: &dyn fmt::Display| {
            let hint = if tls {
                " (`rediss://` needs TLS: enable the `tls` feature of es-redis)"
            } else {
                ""
            };
            Error::Config(format!("cannot use URL {}: {why}{hint}", redact(&self.url)))
        };
        let mut info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| unusable(&e))?;
        if !info.addr().is_supported() {
            return Err(unusable(&"this build cannot connect to that address"));
        }
        if self.username.is_some() || self.password.is_some() {
            let mut settings = info.redis_settings().clone();
            if let Some(username) = &self.username {
                settings = settings.set_username(username);
            }
            if let Some(password) = &self.password {
                settings = settings.set_password(password);
            }
            info = info.set_redis_settings(settings);
        }
        redis::Client::open(info).map_err(|e| unusable(&e))
    }

    /// Opens a [`ConnectionManager`]: one multiplexed connection that reconnects by itself.
    /// A command sent while the connection is down fails (and is not resent); the next one
    /// uses the new connection.
    pub async fn connect(&self) -> Result<ConnectionManager, Error> {
        self.validate()?;
        let settings = ConnectionManagerConfig::new()
            .set_response_timeout(self.response_timeout)
            .set_connection_timeout(self.connection_timeout)
            .set_number_of_retries(self.reconnect_retries);
        ConnectionManager::new_with_config(self.client()?, settings)
            .await
            .map_err(|e| Error::redis(format!("connecting to {}", redact(&self.url)), e))
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("namespace", &self.namespace)
            .field("response_timeout", &self.response_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("reconnect_retries", &self.reconnect_retries)
            .field("page_size", &self.page_size)
            .field("remembered_append_ids", &self.remembered_append_ids)
            .finish()
    }
}

/// The URL with any password replaced by `***`.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let Some(at) = url[scheme_end..authority_end]
        .rfind('@')
        .map(|i| scheme_end + i)
    else {
        return url.to_owned();
    };
    match url[scheme_end..at].find(':') {
        Some(colon) => format!("{}***{}", &url[..scheme_end + colon + 1], &url[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://:pw@host/0"), "redis://:***@host/0");
        assert_eq!(
            redact("rediss://user:p@ss@host:6380/1"),
            "rediss://user:***@host:6380/1"
        );
        assert_eq!(redact("redis://user@host"), "redis://user@host");
    }

    #[test]
    fn namespaces_that_move_the_hash_tag_are_rejected() {
        for bad in ["", "a{b", "}"] {
            let error = RedisConfig::new("redis://127.0.0.1:1")
                .namespace(bad)
                .validate()
                .expect_err(bad);
            assert!(matches!(error, Error::Config(_)), "{error}");
        }
        RedisConfig::new("redis://127.0.0.1:1")
            .namespace("app:prod")
            .validate()
            .expect("a colon is fine");
    }

    #[test]
    fn tls_urls_need_the_tls_feature() {
        let result = RedisConfig::new("rediss://user:pw@127.0.0.1:6380/0").validate();
        if cfg!(feature = "tls") {
            result.expect("rediss:// with the tls feature");
        } else {
            let error = result.expect_err("rediss:// without the tls feature");
            assert!(error.to_string().contains("`tls` feature"), "{error}");
        }
    }

    #[test]
    fn malformed_urls_are_config_errors() {
        let error = RedisConfig::new("http://nope")
            .validate()
            .expect_err("scheme");
        assert!(matches!(error, Error::Config(_)), "{error}");
    }
}
