//! Waking blocked projection reads: every append call that writes events sends
//! `NOTIFY es_events_<schema>` (delivered when it commits), and a projection source listens
//! on a connection of its own, so a read waiting for new events wakes at once instead of at
//! its next poll. Polling stays as the fallback: a lost listening connection, or a
//! notification dropped in between, costs at most one poll interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

/// The channel of schema `schema` (a validated name: letters, digits and `_`).
pub(crate) fn channel(schema: &str) -> String {
    format!("es_events_{schema}")
}

/// A listening connection; it closes when this is dropped.
pub(crate) struct Wakeups {
    notify: Arc<Notify>,
    /// Keeps the connection open (dropping the client closes it).
    _client: tokio_postgres::Client,
}

impl Wakeups {
    /// Opens a connection with `config` and listens on `channel`.
    pub(crate) async fn listen(
        config: &tokio_postgres::Config,
        channel: &str,
    ) -> Result<Self, tokio_postgres::Error> {
        let (client, mut connection) = config.connect(NoTls).await?;
        let notify = Arc::new(Notify::new());
        let woken = notify.clone();
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => woken.notify_one(),
                    Some(Ok(_)) => {}
                    // Closed or broken: readers go on polling.
                    Some(Err(_)) | None => break,
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await?;
        Ok(Wakeups {
            notify,
            _client: client,
        })
    }

    /// Returns after `at_most`, or earlier when new events were committed since the last
    /// wake-up.
    pub(crate) async fn wait(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.notify.notified()).await;
    }
}
