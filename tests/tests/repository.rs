//! The repository over the in-memory store: commands, rejections, conflicts and retries,
//! snapshot policy, time travel, and multi-event commands.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use es_core::testing::AggregateTest;
use es_core::{Aggregate, Apply};
use es_core::{
    AsOf, Changes, Event, EventStore, ExpectedVersion, Handle, InMemoryStore, Metadata, NewEvent,
    ReadRange, Repository, RepositoryError, SnapshotPolicy, SnapshotStore, StoreError,
};

#[derive(Event, Debug, Clone, PartialEq)]
struct Opened {
    owner: String,
}
#[derive(Event, Debug, Clone, PartialEq)]
struct Deposited {
    amount: u64,
}
#[derive(Event, Debug, Clone, PartialEq)]
struct Withdrawn {
    amount: u64,
}
#[derive(Event, Debug, Clone, PartialEq)]
struct Closed;

#[derive(Event, Debug, Clone, PartialEq)]
enum AccountEvent {
    Opened(Opened),
    Deposited(Deposited),
    Withdrawn(Withdrawn),
    Closed(Closed),
}

#[derive(Aggregate, Default, Debug, Clone, PartialEq)]
#[aggregate(event = AccountEvent)]
struct Account {
    owner: Option<String>,
    balance: u64,
    closed: bool,
}

impl Apply<Opened> for Account {
    fn apply(&mut self, e: &Opened) {
        self.owner = Some(e.owner.clone());
    }
}
impl Apply<Deposited> for Account {
    fn apply(&mut self, e: &Deposited) {
        self.balance += e.amount;
    }
}
impl Apply<Withdrawn> for Account {
    fn apply(&mut self, e: &Withdrawn) {
        self.balance -= e.amount;
    }
}
impl Apply<Closed> for Account {
    fn apply(&mut self, _: &Closed) {
        self.closed = true;
    }
}

#[derive(Debug, PartialEq)]
enum AccountError {
    NotOpen,
    Closed,
    Overdraft { balance: u64, requested: u64 },
}

impl std::fmt::Display for AccountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

struct Open(&'static str);
struct Deposit(u64);
struct Withdraw(u64);
/// Withdraws everything and closes the account: two events, the second decided on the
/// state after the first.
struct WithdrawAllAndClose;

impl Handle<Open> for Account {
    type Error = AccountError;
    fn handle(&self, c: &Open) -> Result<Vec<AccountEvent>, AccountError> {
        Ok(vec![Opened { owner: c.0.into() }.into()])
    }
}

impl Handle<Deposit> for Account {
    type Error = AccountError;
    fn handle(&self, c: &Deposit) -> Result<Vec<AccountEvent>, AccountError> {
        match (&self.owner, self.closed) {
            (None, _) => Err(AccountError::NotOpen),
            (_, true) => Err(AccountError::Closed),
            _ => Ok(vec![Deposited { amount: c.0 }.into()]),
        }
    }
}

impl Handle<Withdraw> for Account {
    type Error = AccountError;
    fn handle(&self, c: &Withdraw) -> Result<Vec<AccountEvent>, AccountError> {
        if c.0 > self.balance {
            return Err(AccountError::Overdraft {
                balance: self.balance,
                requested: c.0,
            });
        }
        Ok(vec![Withdrawn { amount: c.0 }.into()])
    }
}

impl Handle<WithdrawAllAndClose> for Account {
    type Error = AccountError;
    fn handle(&self, _: &WithdrawAllAndClose) -> Result<Vec<AccountEvent>, AccountError> {
        let mut changes = Changes::new(self);
        if self.balance > 0 {
            changes.emit(Withdrawn {
                amount: self.balance,
            });
        }
        assert_eq!(
            changes.state().balance,
            0,
            "the handler sees the state after each event"
        );
        changes.emit(Closed);
        Ok(changes.into_events())
    }
}

fn accounts(store: InMemoryStore) -> Repository<Account, InMemoryStore> {
    Repository::new(store)
}

#[tokio::test]
async fn commands_append_events_and_return_the_new_state() {
    let repo = accounts(InMemoryStore::new());
    repo.execute("a", &Open("duffy")).await.unwrap();
    let done = repo.execute("a", &Deposit(50)).await.unwrap();
    assert_eq!(
        (done.version, done.appended, done.state.balance),
        (2, 1, 50)
    );
    let loaded = repo.load("a").await.unwrap();
    assert_eq!(loaded.state, *done.state);
    assert_eq!(loaded.version, 2);
}

#[tokio::test]
async fn rejected_commands_append_nothing() {
    let repo = accounts(InMemoryStore::new());
    let error = repo.execute("a", &Deposit(5)).await.unwrap_err();
    assert_eq!(error.rejection(), Some(&AccountError::NotOpen));
    repo.execute("a", &Open("duffy")).await.unwrap();
    let error = repo.execute("a", &Withdraw(1)).await.unwrap_err();
    assert!(matches!(
        error,
        RepositoryError::Rejected(AccountError::Overdraft {
            balance: 0,
            requested: 1
        })
    ));
    assert_eq!(repo.load("a").await.unwrap().version, 1);
}

#[tokio::test]
async fn multi_event_commands_see_the_state_after_each_event() {
    let repo = accounts(InMemoryStore::new());
    repo.execute("a", &Open("duffy")).await.unwrap();
    repo.execute("a", &Deposit(30)).await.unwrap();
    let done = repo.execute("a", &WithdrawAllAndClose).await.unwrap();
    assert_eq!(done.appended, 2);
    assert_eq!(
        (done.state.balance, done.state.closed, done.version),
        (0, true, 4)
    );
    let error = repo.execute("a", &Deposit(1)).await.unwrap_err();
    assert_eq!(error.rejection(), Some(&AccountError::Closed));
}

#[tokio::test]
async fn metadata_is_stored_with_every_event() {
    let repo = accounts(InMemoryStore::new());
    let meta = Metadata::new()
        .correlation_id("req-1")
        .with("user", "admin");
    repo.execute_with("a", &Open("duffy"), meta.clone())
        .await
        .unwrap();
    let events = repo.events("a", &ReadRange::all()).await.unwrap();
    assert_eq!(events[0].metadata, meta);
    assert_eq!(
        events[0].event,
        AccountEvent::Opened(Opened {
            owner: "duffy".into()
        })
    );
}

#[tokio::test]
async fn a_conflict_catches_up_on_the_new_events_and_retries() {
    let store = InMemoryStore::new();
    let repo = accounts(store.clone());
    repo.execute("a", &Open("duffy")).await.unwrap();
    repo.execute("a", &Deposit(10)).await.unwrap();
    // Another writer deposits behind the repository's back, after it has loaded version 2:
    // a store wrapper injects that write right before the repository's first append.
    let racing = RacingStore {
        inner: store.clone(),
        raced: Default::default(),
    };
    let repo = Repository::<Account, _>::new(racing);
    let done = repo.execute("a", &Withdraw(10)).await.unwrap();
    assert_eq!(done.conflicts_retried, 1);
    assert_eq!((done.state.balance, done.version), (5, 4));
    assert_eq!(store.stream_version(&repo.stream_id("a")).await.unwrap(), 4);
}

#[tokio::test]
async fn conflicts_beyond_the_attempt_limit_are_reported() {
    let store = InMemoryStore::new();
    accounts(store.clone())
        .execute("a", &Open("duffy"))
        .await
        .unwrap();
    let racing = AlwaysRacingStore { inner: store };
    let repo = Repository::<Account, _>::new(racing).with_max_attempts(3);
    match repo.execute("a", &Deposit(1)).await.unwrap_err() {
        RepositoryError::TooManyConflicts { attempts, last } => {
            assert_eq!(attempts, 3);
            assert_eq!(last.expected, ExpectedVersion::Exact(3));
        }
        other => panic!("expected TooManyConflicts, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_all_land_with_contiguous_versions() {
    let store = InMemoryStore::new();
    let repo = Arc::new(accounts(store.clone()).with_max_attempts(1000));
    repo.execute("a", &Open("duffy")).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    repo.execute("a", &Deposit(1)).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let loaded = repo.load("a").await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (401, 400));
    let versions: Vec<u64> = store
        .read_stream(&repo.stream_id("a"), &ReadRange::all())
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, (1..=401).collect::<Vec<_>>());
}

#[tokio::test]
async fn snapshots_follow_the_policy_and_loads_use_them() {
    let store = InMemoryStore::new();
    let repo = accounts(store.clone()).with_snapshot_policy(SnapshotPolicy::EveryNEvents(10));
    repo.execute("a", &Open("duffy")).await.unwrap();
    for _ in 0..8 {
        repo.execute("a", &Deposit(1)).await.unwrap();
    }
    let stream = repo.stream_id("a");
    assert_eq!(
        store.load_snapshot(&stream).await.unwrap(),
        None,
        "9 events: no snapshot yet"
    );
    repo.execute("a", &Deposit(1)).await.unwrap();
    let snapshot = store
        .load_snapshot(&stream)
        .await
        .unwrap()
        .expect("snapshot at 10");
    assert_eq!(snapshot.version, 10);
    assert_eq!(snapshot.schema, Account::SNAPSHOT_SCHEMA);
    for _ in 0..5 {
        repo.execute("a", &Deposit(2)).await.unwrap();
    }
    let loaded = repo.load("a").await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (15, 19));
    // A load uses the snapshot: corrupting the early events does not affect it.
    let replayed = repo.load_as_of("a", AsOf::Version(15)).await.unwrap();
    assert_eq!(replayed.state, loaded.state);
}

#[tokio::test]
async fn a_snapshot_that_does_not_decode_falls_back_to_replay() {
    let store = InMemoryStore::new();
    let repo = accounts(store.clone());
    repo.execute("a", &Open("duffy")).await.unwrap();
    repo.execute("a", &Deposit(7)).await.unwrap();
    let stream = repo.stream_id("a");
    let broken = es_core::Snapshot {
        version: 2,
        position: es_core::Position::ZERO,
        schema: Account::SNAPSHOT_SCHEMA,
        fields: [("balance", "not a number")].into_iter().collect(),
    };
    store.save_snapshot(&stream, &broken).await.unwrap();
    let loaded = repo.load("a").await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (2, 7));
}

#[tokio::test]
async fn time_travel_by_version_and_by_time() {
    let repo = accounts(InMemoryStore::new());
    repo.execute("a", &Open("duffy")).await.unwrap();
    repo.execute("a", &Deposit(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(15)).await;
    let between = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(15)).await;
    repo.execute("a", &Deposit(5)).await.unwrap();
    assert_eq!(
        repo.load_as_of("a", AsOf::Version(1))
            .await
            .unwrap()
            .state
            .balance,
        0
    );
    let then = repo.load_as_of("a", AsOf::Time(between)).await.unwrap();
    assert_eq!((then.version, then.state.balance), (2, 10));
    assert_eq!(repo.load("a").await.unwrap().state.balance, 15);
}

#[tokio::test]
async fn an_undecodable_event_is_a_typed_error_naming_the_entry() {
    let store = InMemoryStore::new();
    let repo = accounts(store.clone());
    repo.execute("a", &Open("duffy")).await.unwrap();
    let bad = NewEvent {
        event_type: "Deposited".into(),
        fields: [("amount", "lots")].into_iter().collect(),
        metadata: Metadata::default(),
    };
    let written = store
        .append(
            &repo.stream_id("a"),
            ExpectedVersion::Any,
            vec![bad],
            &Default::default(),
        )
        .await
        .unwrap();
    match repo.load("a").await.unwrap_err() {
        StoreError::Decode {
            location,
            entry,
            source,
        } => {
            assert_eq!(location, "memory:account");
            assert_eq!(entry, written.positions[0].to_string());
            assert_eq!(source.field_name(), Some("amount"));
        }
        other => panic!("expected a decode error, got {other}"),
    }
    // Other aggregates are unaffected.
    repo.execute("b", &Open("bugs")).await.unwrap();
}

#[test]
fn given_when_then() {
    AggregateTest::<Account>::given([Opened {
        owner: "duffy".into(),
    }])
    .and([Deposited { amount: 10 }])
    .when(&Withdraw(4))
    .then([Withdrawn { amount: 4 }]);
    AggregateTest::<Account>::given_no_events()
        .when(&Deposit(1))
        .then_error(AccountError::NotOpen);
    let state = AggregateTest::<Account>::given([Opened {
        owner: "duffy".into(),
    }])
    .when(&WithdrawAllAndClose)
    .then([AccountEvent::from(Closed)]);
    assert!(state.closed);
}

#[tokio::test]
async fn a_lost_append_reply_is_resent_with_the_same_id_and_written_once() {
    let store = InMemoryStore::new();
    let lossy = LosingRepliesStore {
        inner: store.clone(),
        lose: std::sync::atomic::AtomicU32::new(2),
        forget: false,
    };
    let repo = Repository::<Account, _>::new(lossy);
    repo.execute("a", &Open("duffy")).await.unwrap();
    let done = repo.execute("a", &Deposit(5)).await.unwrap();
    assert_eq!((done.version, done.state.balance), (2, 5));
    assert_eq!(
        store.stream_version(&repo.stream_id("a")).await.unwrap(),
        2,
        "written once"
    );

    let lossy = LosingRepliesStore {
        inner: store.clone(),
        lose: std::sync::atomic::AtomicU32::new(5),
        forget: false,
    };
    let repo = Repository::<Account, _>::new(lossy).with_resends_on_lost_replies(1);
    match repo.execute("a", &Deposit(1)).await.unwrap_err() {
        RepositoryError::Store(error) => assert!(error.is_retryable(), "{error}"),
        other => panic!("expected the connection error, got {other}"),
    }
}

#[tokio::test]
async fn a_resend_the_store_no_longer_recognises_is_reported_not_written_twice() {
    let store = InMemoryStore::new();
    accounts(store.clone())
        .execute("a", &Open("duffy"))
        .await
        .unwrap();
    let lossy = LosingRepliesStore {
        inner: store.clone(),
        lose: std::sync::atomic::AtomicU32::new(1),
        forget: true,
    };
    let repo = Repository::<Account, _>::new(lossy);
    match repo.execute("a", &Deposit(5)).await.unwrap_err() {
        RepositoryError::Store(error @ StoreError::Connection { .. }) => {
            assert!(
                error
                    .to_string()
                    .contains("may or may not have been written"),
                "{error}"
            )
        }
        other => panic!("expected an outcome-unknown connection error, got {other}"),
    }
    assert_eq!(
        store.stream_version(&repo.stream_id("a")).await.unwrap(),
        2,
        "the deposit is written once"
    );
}

#[tokio::test]
async fn a_store_behind_the_cached_state_is_reloaded_not_trusted() {
    // The repository caches "a" at version 3 (balance 15); then its store loses versions 2
    // and 3, as a failover can lose acknowledged appends.
    let before = InMemoryStore::new();
    let after = InMemoryStore::new();
    accounts(after.clone())
        .execute("a", &Open("duffy"))
        .await
        .unwrap();
    let switching = SwitchingStore {
        inner: Switch {
            stores: [before, after],
            current: Default::default(),
        },
    };
    let repo = Repository::<Account, _>::new(switching).with_max_attempts(1);
    repo.execute("a", &Open("duffy")).await.unwrap();
    repo.execute("a", &Deposit(10)).await.unwrap();
    repo.execute("a", &Deposit(5)).await.unwrap();
    repo.store()
        .inner
        .current
        .store(1, std::sync::atomic::Ordering::SeqCst);
    // Rejected on the cached balance (15); the stored version (1) is behind: reloaded, and
    // rejected on the stored balance.
    match repo.execute("a", &Withdraw(20)).await {
        Err(RepositoryError::Rejected(AccountError::Overdraft { balance: 0, .. })) => {}
        other => panic!("expected a rejection on the stored balance 0, got {other:?}"),
    }
    // Accepted on the cached balance; the append conflicts with a version behind it.
    let repo = Repository::<Account, _>::new(repo.store().clone_switched()).with_max_attempts(1);
    repo.execute("a", &Deposit(1)).await.unwrap();
    repo.store()
        .inner
        .current
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let done = repo.execute("a", &Deposit(7)).await.unwrap();
    assert_eq!(
        (done.version, done.state.balance),
        (2, 7),
        "reloaded from the store"
    );
}

/// Forwards to one of two stores (a store that loses data, seen from the repository).
struct SwitchingStore {
    inner: Switch,
}

struct Switch {
    stores: [InMemoryStore; 2],
    current: std::sync::atomic::AtomicUsize,
}

impl std::ops::Deref for Switch {
    type Target = InMemoryStore;
    fn deref(&self) -> &InMemoryStore {
        &self.stores[self.current.load(std::sync::atomic::Ordering::SeqCst)]
    }
}

impl SwitchingStore {
    /// The same two stores, switched back to the first.
    fn clone_switched(&self) -> SwitchingStore {
        SwitchingStore {
            inner: Switch {
                stores: self.inner.stores.clone(),
                current: Default::default(),
            },
        }
    }
}

/// Performs each append but reports its reply as lost, `lose` times.
struct LosingRepliesStore {
    inner: InMemoryStore,
    lose: std::sync::atomic::AtomicU32,
    /// Write the lost appends without their id, as a store whose id window moved on.
    forget: bool,
}

/// Appends one deposit behind the caller's back before the first append it forwards.
struct RacingStore {
    inner: InMemoryStore,
    raced: std::sync::atomic::AtomicBool,
}

/// Appends one deposit behind the caller's back before every append it forwards.
struct AlwaysRacingStore {
    inner: InMemoryStore,
}

async fn race(inner: &InMemoryStore, stream: &es_core::StreamId) {
    let deposit = NewEvent::encode(
        &AccountEvent::from(Deposited { amount: 5 }),
        Metadata::default(),
    )
    .unwrap();
    inner
        .append(
            stream,
            ExpectedVersion::Any,
            vec![deposit],
            &Default::default(),
        )
        .await
        .unwrap();
}

macro_rules! forward_store {
    ($ty:ty, |$this:ident, $stream:ident| $before_append:expr) => {
        forward_store!($ty, |this, stream, expected, events, options| {
            let ($this, $stream) = (this, stream);
            $before_append;
            this.inner.append(stream, expected, events, options).await
        });
    };
    ($ty:ty, |$this:ident, $stream:ident, $expected:ident, $events:ident, $options:ident| $append:expr) => {
        #[async_trait::async_trait]
        impl EventStore for $ty {
            async fn append(
                &self,
                stream: &es_core::StreamId,
                expected: ExpectedVersion,
                events: Vec<NewEvent>,
                options: &es_core::AppendOptions,
            ) -> Result<es_core::AppendResult, StoreError> {
                let ($this, $stream, $expected, $events, $options) =
                    (self, stream, expected, events, options);
                $append
            }
            async fn read_stream(
                &self,
                s: &es_core::StreamId,
                r: &ReadRange,
            ) -> Result<Vec<es_core::StoredEvent>, StoreError> {
                self.inner.read_stream(s, r).await
            }
            async fn stream_version(&self, s: &es_core::StreamId) -> Result<u64, StoreError> {
                self.inner.stream_version(s).await
            }
            async fn read_category(
                &self,
                c: &str,
                a: es_core::Position,
                l: usize,
            ) -> Result<Vec<es_core::StoredEvent>, StoreError> {
                self.inner.read_category(c, a, l).await
            }
            async fn categories(&self) -> Result<Vec<es_core::CategoryInfo>, StoreError> {
                self.inner.categories().await
            }
            async fn delete_stream(
                &self,
                s: &es_core::StreamId,
                d: es_core::deletion::Deletion,
                m: es_core::Metadata,
            ) -> Result<es_core::AppendResult, StoreError> {
                self.inner.delete_stream(s, d, m).await
            }
            async fn aggregate_ids(
                &self,
                c: &str,
                a: Option<&str>,
                l: usize,
            ) -> Result<es_core::AggregateIds, StoreError> {
                self.inner.aggregate_ids(c, a, l).await
            }
        }
        #[async_trait::async_trait]
        impl SnapshotStore for $ty {
            async fn save_snapshot(
                &self,
                s: &es_core::StreamId,
                snap: &es_core::Snapshot,
            ) -> Result<bool, StoreError> {
                self.inner.save_snapshot(s, snap).await
            }
            async fn load_snapshot(
                &self,
                s: &es_core::StreamId,
            ) -> Result<Option<es_core::Snapshot>, StoreError> {
                self.inner.load_snapshot(s).await
            }
        }
    };
}

forward_store!(RacingStore, |this, stream| if !this
    .raced
    .swap(true, std::sync::atomic::Ordering::SeqCst)
{
    race(&this.inner, stream).await
});
forward_store!(
    LosingRepliesStore,
    |this, stream, expected, events, options| {
        let lost = this
            .lose
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        let written = if lost && this.forget {
            let without_id = es_core::AppendOptions::default();
            this.inner
                .append(stream, expected, events, &without_id)
                .await?
        } else {
            this.inner.append(stream, expected, events, options).await?
        };
        if lost {
            return Err(StoreError::Connection {
                message: "reply lost".into(),
                source: None,
            });
        }
        Ok(written)
    }
);

forward_store!(AlwaysRacingStore, |this, stream| race(&this.inner, stream)
    .await);

forward_store!(SwitchingStore, |this, stream| {
    let _ = (this, stream);
});
