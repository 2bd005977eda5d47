//! What the inspector's tests share: the seed's user events, a store holding them on each
//! backend, a projection that fails until fixed, and an HTTP client for a served inspector.

#![allow(dead_code)]

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use es_core::projection::{Projection, ProjectionBackend, ProjectionOptions, ProjectionRunner};
use es_core::{
    Aggregate, Apply, Event, EventStore, ExpectedVersion, InMemoryStore, Metadata, NewEvent,
    RecordedEvent, SnapshotStore, StoreError, StreamId,
};
use es_inspect::Inspector;

#[derive(Event, Debug, Clone, PartialEq)]
pub struct Registered {
    pub name: String,
    pub surname: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
pub struct EmailUpdated {
    pub email: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
pub enum UserEvent {
    Registered(Registered),
    EmailUpdated(EmailUpdated),
}

#[derive(Aggregate, Default, Debug, Clone, PartialEq)]
#[aggregate(event = UserEvent)]
pub struct User {
    pub name: String,
    pub surname: String,
    pub email: Option<String>,
}

impl Apply<Registered> for User {
    fn apply(&mut self, event: &Registered) {
        self.name = event.name.clone();
        self.surname = event.surname.clone();
    }
}

impl Apply<EmailUpdated> for User {
    fn apply(&mut self, event: &EmailUpdated) {
        self.email = Some(event.email.clone());
    }
}

/// A store to inspect, on some backend.
pub trait Backend: SnapshotStore + ProjectionBackend + Clone + 'static {}
impl<B: SnapshotStore + ProjectionBackend + Clone + 'static> Backend for B {}

pub async fn memory() -> InMemoryStore {
    InMemoryStore::new()
}

pub async fn redis() -> es_redis::RedisEventStore {
    let server = es_redis::testing::RedisServer::shared().unwrap_or_else(|e| panic!("{e}"));
    server
        .store(&es_redis::testing::unique_namespace("inspect"))
        .await
        .expect("a store on the test server")
}

/// Appends `event` to `user/<id>` with `metadata`.
pub async fn append<S: EventStore, E: Event>(store: &S, id: &str, event: E, metadata: Metadata) {
    let new = NewEvent::encode(&event, metadata).expect("encode");
    store
        .append(
            &StreamId::new("user", id),
            ExpectedVersion::Any,
            vec![new],
            &Default::default(),
        )
        .await
        .expect("append");
}

/// The seed's user: registered as Duffy Duck, then two email changes, each a few
/// milliseconds apart (so times tell them apart), and user `bugs`.
pub async fn seed<S: EventStore>(store: &S) {
    let registered = Registered {
        name: "Duffy".into(),
        surname: "Duck".into(),
    };
    append(
        store,
        "duffy",
        registered,
        Metadata::new().correlation_id("signup-1"),
    )
    .await;
    for email in ["duffy@acme.test", "duffy.duck@acme.test"] {
        tokio::time::sleep(Duration::from_millis(3)).await; // distinct timestamps, not a wait
        let updated = EmailUpdated {
            email: email.into(),
        };
        append(store, "duffy", updated, Metadata::new().with("by", "duffy")).await;
    }
    let bugs = Registered {
        name: "Bugs".into(),
        surname: "Bunny".into(),
    };
    append(store, "bugs", bugs, Metadata::new()).await;
}

/// Stores emails; while `broken`, fails on every email of `poison.test`.
pub struct Emails {
    pub broken: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Projection for Emails {
    type Event = UserEvent;
    type Error = StoreError;
    fn name(&self) -> &str {
        "emails"
    }
    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec!["user".into()]
    }
    async fn handle(&self, event: &RecordedEvent<UserEvent>) -> Result<(), StoreError> {
        match &event.event {
            UserEvent::EmailUpdated(e)
                if self.broken.load(Ordering::SeqCst) && e.email.ends_with("poison.test") =>
            {
                Err(StoreError::InvalidRequest(format!(
                    "cannot send to {}",
                    e.email
                )))
            }
            _ => Ok(()),
        }
    }
}

/// A runner of [`Emails`] that ran once over a poisoned email (one dead letter), and the
/// switch that fixes it.
pub async fn poisoned_projection<B: Backend>(
    backend: &B,
) -> (ProjectionRunner<Emails>, Arc<AtomicBool>) {
    append(
        backend,
        "daisy",
        EmailUpdated {
            email: "daisy@poison.test".into(),
        },
        Metadata::new(),
    )
    .await;
    let broken = Arc::new(AtomicBool::new(true));
    let emails = Emails {
        broken: broken.clone(),
    };
    let options = ProjectionOptions::new("c1").max_deliveries(1);
    let runner = ProjectionRunner::connect(backend, emails, options)
        .await
        .expect("runner");
    let stats = runner.run_once().await.expect("run");
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    (runner, broken)
}

/// An inspector served on a free loopback port, and a client for it.
pub struct Served {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Served {
    pub async fn start(inspector: Inspector) -> Served {
        let bound = inspector
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = bound.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(bound.run(async {
            let _ = stopped.await;
        }));
        Served {
            addr,
            client: reqwest::Client::new(),
            stop: Some(stop),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GETs `path`: the status and the body as JSON (`Null` if it is none).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        answer(response).await
    }

    /// POSTs to `path`.
    pub async fn post(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.client.post(self.url(path)).send().await.expect("POST");
        answer(response).await
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn answer(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// `id` written into a URL path segment.
pub fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The state's pairs as the inspector shows them: the aggregate's snapshot fields.
pub fn state_pairs<A: Aggregate>(state: &A) -> serde_json::Value {
    let mut fields = es_core::codec::Fields::new();
    state.encode_snapshot(&mut fields).expect("encode");
    serde_json::Value::Array(
        fields
            .iter()
            .map(|(name, value)| {
                serde_json::json!([name, String::from_utf8_lossy(value).into_owned()])
            })
            .collect(),
    )
}
