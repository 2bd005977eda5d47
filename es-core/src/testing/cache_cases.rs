//! Conformance cases for the [`Repository`]'s cache of hot aggregates and its per-aggregate
//! ordering: serialised commands, stale entries, lost replies and cancellations, bounds,
//! held states, snapshots, and reads that never come from the cache. Stamped by
//! [`conformance_tests!`](crate::conformance_tests) with the store cases.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::repository_cases::{Counter, CountingStore, Deposit, Insufficient, Withdraw};
use crate::store::{ReadRange, SnapshotStore};
use crate::{Apply, AsOf, CacheConfig, Handle, Repository, RepositoryError, SnapshotPolicy};

/// Commands to one aggregate through one repository run one at a time: 8 concurrent tasks
/// never conflict with each other, and every command lands.
pub async fn one_repository_serialises_commands_to_an_aggregate<S>(store: S)
where
    S: SnapshotStore + 'static,
{
    {
        let repository = Arc::new(Repository::<Counter, _>::new(store).with_max_attempts(1));
        let tasks: Vec<_> = (0..8)
            .map(|task| {
                let repository = repository.clone();
                tokio::spawn(async move {
                    let mut conflicts = 0;
                    for i in 0..25 {
                        let done = repository
                            .execute("busy", &Deposit(task * 100 + i))
                            .await
                            .expect("no conflict within one repository");
                        conflicts += done.conflicts_retried;
                    }
                    conflicts
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(
                task.await.expect("task"),
                0,
                "conflicts within one repository"
            );
        }
        let loaded = repository.load("busy").await.expect("load");
        assert_eq!((loaded.version, loaded.state.deposits), (200, 200));
    }
}

/// Two repositories, each with its own cache, interleave commands on one aggregate: nothing
/// is lost, versions are contiguous, and the state each returns is the stored one.
pub async fn two_cached_repositories_interleave_without_losing_commands<S>(store: S)
where
    S: SnapshotStore + 'static,
{
    let store = Arc::new(store);
    let first = Arc::new(Repository::<Counter, _>::new(store.clone()).with_max_attempts(1000));
    let second = Arc::new(Repository::<Counter, _>::new(store.clone()).with_max_attempts(1000));
    let tasks: Vec<_> = [first.clone(), second.clone(), first.clone(), second.clone()]
        .into_iter()
        .enumerate()
        .map(|(task, repository)| {
            tokio::spawn(async move {
                for i in 0..20 {
                    let done = repository
                        .execute("shared", &Deposit(task as u64 * 100 + i))
                        .await
                        .expect("execute");
                    assert_eq!(
                        done.state.deposits, done.version,
                        "state matches its version"
                    );
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let stream = first.stream_id("shared");
    let versions: Vec<u64> = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read")
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, (1..=80).collect::<Vec<_>>());
    let expected_total: u64 = (0..4u64)
        .flat_map(|t| (0..20).map(move |i| t * 100 + i))
        .sum();
    for repository in [&first, &second] {
        let done = repository
            .execute("shared", &Deposit(0))
            .await
            .expect("execute");
        assert_eq!(done.state.total, expected_total);
    }
}

/// A cached aggregate that another repository moved on conflicts on its next append, reads
/// only the newer events and retries; a rejection decided on cached state is first checked
/// against the stored version.
pub async fn a_stale_cached_aggregate_catches_up<S>(store: S)
where
    S: SnapshotStore + 'static,
{
    let store = Arc::new(CountingStore::new(store));
    // One attempt: a conflict met by a cached state is not an attempt, the command has not
    // been tried on the stored state yet.
    let mine = Repository::<Counter, _>::new(store.clone()).with_max_attempts(1);
    let theirs = Repository::<Counter, _>::new(store.clone());
    mine.execute("a", &Deposit(1)).await.expect("deposit");
    theirs.execute("a", &Deposit(10)).await.expect("deposit");
    let reads = store.reads();
    let done = mine.execute("a", &Deposit(100)).await.expect("deposit");
    assert_eq!(done.conflicts_retried, 1, "the cached version was stale");
    assert_eq!((done.version, done.state.total), (3, 111));
    assert_eq!(store.reads() - reads, 1, "one tail read to catch up");

    // Cached total: 111. The other repository withdraws 100; this one's withdrawal of 50
    // would pass on its cached state, conflicts, and is rejected on the fresh one.
    theirs.execute("a", &Withdraw(100)).await.expect("withdraw");
    match mine.execute("a", &Withdraw(50)).await {
        Err(RepositoryError::Rejected(Insufficient { total: 11 })) => {}
        other => panic!("expected a rejection on the fresh total 11, got {other:?}"),
    }
    // Cached total: 11. The other repository deposits 100; a withdrawal of 60, rejected on
    // the cached state, is checked against the stored version and then accepted.
    theirs.execute("a", &Deposit(100)).await.expect("deposit");
    let done = mine
        .execute("a", &Withdraw(60))
        .await
        .expect("accepted on the fresh state");
    assert_eq!(
        (done.version, done.state.total, done.conflicts_retried),
        (6, 51, 0)
    );
}

/// An append whose reply is lost forgets the aggregate, and the next command reloads it
/// (and sees the lost append, which was written); a command on a cached aggregate reads
/// nothing.
pub async fn a_lost_reply_evicts_and_the_next_command_reloads<S>(store: S)
where
    S: SnapshotStore + 'static,
{
    let store = Arc::new(CountingStore::new(store));
    let repository = Repository::<Counter, _>::new(store.clone()).with_resends_on_lost_replies(0);
    repository.execute("a", &Deposit(1)).await.expect("deposit");
    assert_eq!(store.reads(), 1, "the first command loads");
    repository.execute("a", &Deposit(2)).await.expect("deposit");
    assert_eq!(store.reads(), 1, "a cached aggregate is not read");
    assert_eq!(repository.cache_stats().aggregates, 1);

    store.lose_replies.store(1, Ordering::SeqCst);
    match repository.execute("a", &Deposit(4)).await {
        Err(RepositoryError::Store(error)) => assert!(error.is_retryable(), "{error}"),
        other => panic!("expected the lost reply, got {other:?}"),
    }
    assert_eq!(repository.cache_stats().aggregates, 0, "evicted");
    let done = repository.execute("a", &Deposit(8)).await.expect("deposit");
    assert_eq!(store.reads(), 2, "reloaded");
    assert_eq!((done.version, done.state.total), (4, 15));
}

/// The cache never holds more aggregates, or more weight, than its bounds; with the cache
/// off, every command loads.
pub async fn the_cache_stays_within_its_bounds<S>(store: S)
where
    S: SnapshotStore + 'static,
{
    let store = Arc::new(CountingStore::new(store));
    let by_count =
        Repository::<Counter, _>::new(store.clone()).with_cache(CacheConfig::aggregates(40));
    let by_weight = Repository::<Counter, _>::new(store.clone()).with_cache(
        CacheConfig::aggregates(1_000).weighing(1_000, |counter: &Counter| counter.total),
    );
    assert_eq!(by_count.cache_stats().capacity_aggregates, 40);
    for i in 0..120u64 {
        let id = format!("bounded-{i}");
        by_count.execute(&id, &Deposit(1)).await.expect("deposit");
        let stats = by_count.cache_stats();
        assert!(stats.aggregates <= 40, "{stats:?}");
        by_weight
            .execute(&id, &Deposit(i % 30 + 1))
            .await
            .expect("deposit");
        let stats = by_weight.cache_stats();
        assert!(stats.weight <= 1_000, "{stats:?}");
    }
    assert!(by_count.cache_stats().aggregates > 0, "it holds some");
    let stats = by_weight.cache_stats();
    assert!(
        stats.aggregates > 1 && stats.aggregates < 120,
        "it holds some: {stats:?}"
    );

    let uncached = Repository::<Counter, _>::new(store.clone()).without_cache();
    let reads = store.reads();
    for _ in 0..3 {
        uncached
            .execute("uncached", &Deposit(1))
            .await
            .expect("deposit");
    }
    assert_eq!(store.reads() - reads, 3, "every command loads");
    assert_eq!(uncached.cache_stats().capacity_aggregates, 0);
}

/// `load`, `load_as_of` and `events` read the store, never a cached state.
pub async fn reads_never_come_from_the_cache<S>(store: S)
where
    S: SnapshotStore + 'static,
{
    let store = Arc::new(store);
    let mine = Repository::<Counter, _>::new(store.clone());
    let theirs = Repository::<Counter, _>::new(store.clone());
    mine.execute("a", &Deposit(1)).await.expect("deposit");
    mine.execute("a", &Deposit(2)).await.expect("deposit");
    theirs.execute("a", &Deposit(4)).await.expect("deposit");
    let loaded = mine.load("a").await.expect("load");
    assert_eq!((loaded.version, loaded.state.total), (3, 7));
    let then = mine.load_as_of("a", AsOf::Version(3)).await.expect("load");
    assert_eq!(then.state.total, 7);
    let events = mine.events("a", &ReadRange::all()).await.expect("events");
    assert_eq!(events.len(), 3);
}

/// A caller that still holds an earlier `Executed::state` does not make the next command
/// wrong or lose the cache: an aggregate that implements `Clone` is copied, one that does
/// not is loaded again.
pub async fn a_held_state_is_copied_or_reloaded<S>(store: S)
where
    S: SnapshotStore + 'static,
{
    let store = Arc::new(CountingStore::new(store));
    let counters = Repository::<Counter, _>::new(store.clone());
    let held = counters.execute("a", &Deposit(1)).await.expect("deposit");
    let reads = store.reads();
    let done = counters.execute("a", &Deposit(2)).await.expect("deposit");
    assert_eq!(
        store.reads(),
        reads,
        "a Clone aggregate is copied, not read"
    );
    assert_eq!(
        (held.state.total, done.state.total),
        (1, 3),
        "the held state is unchanged"
    );

    let tallies = Repository::<Tally, _>::new(store.clone());
    let held = tallies.execute("t", &Count).await.expect("count");
    let reads = store.reads();
    let done = tallies.execute("t", &Count).await.expect("count");
    assert_eq!(
        store.reads(),
        reads + 1,
        "an aggregate without Clone is loaded again"
    );
    assert_eq!((held.state.count, done.state.count), (1, 2));
    drop((held, done));
    let reads = store.reads();
    tallies.execute("t", &Count).await.expect("count");
    assert_eq!(
        store.reads(),
        reads,
        "once no one holds it, it is used in place"
    );
}

/// A command cancelled while its append is on its way (its future dropped) leaves the
/// aggregate forgotten: the append's outcome is unknown, and the next command loads it.
pub async fn a_cancelled_command_forgets_the_aggregate<S>(store: S)
where
    S: SnapshotStore + 'static,
{
    let store = Arc::new(CountingStore::new(store));
    let repository = Arc::new(Repository::<Counter, _>::new(store.clone()));
    repository.execute("a", &Deposit(1)).await.expect("deposit");
    assert_eq!(repository.cache_stats().aggregates, 1);

    let held = store.hold_appends.clone().lock_owned().await;
    let command = {
        let repository = repository.clone();
        tokio::spawn(async move { repository.execute("a", &Deposit(2)).await })
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while store.appends_waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("waited 10 s for the command's append to reach the store");
    command.abort();
    assert!(command.await.expect_err("aborted").is_cancelled());
    drop(held);
    assert_eq!(repository.cache_stats().aggregates, 0, "forgotten");
    let reads = store.reads();
    let done = repository.execute("a", &Deposit(4)).await.expect("deposit");
    assert_eq!(store.reads(), reads + 1, "loaded again");
    assert_eq!(
        (done.version, done.state.total),
        (2, 5),
        "the cancelled append never ran"
    );
}

/// Commands served from the cache still save snapshots by the policy, and loads use them.
pub async fn cached_commands_snapshot_by_policy<S>(store: S)
where
    S: SnapshotStore + 'static,
{
    let store = Arc::new(store);
    let repository = Repository::<Counter, _>::new(store.clone())
        .with_snapshot_policy(SnapshotPolicy::EveryNEvents(3));
    for n in 1..=7 {
        repository.execute("a", &Deposit(n)).await.expect("deposit");
    }
    let snapshot = store
        .load_snapshot(&repository.stream_id("a"))
        .await
        .expect("load snapshot")
        .expect("a snapshot was saved");
    assert_eq!(snapshot.version, 6);
    let loaded = Repository::<Counter, _>::new(store.clone())
        .load("a")
        .await
        .expect("load");
    assert_eq!((loaded.version, loaded.state.total), (7, 28));
}

#[derive(crate::Event, Debug, PartialEq)]
struct Counted;

#[derive(crate::Event, Debug, PartialEq)]
enum TallyEvent {
    Counted(Counted),
}

/// An aggregate that does not implement `Clone`.
#[derive(crate::Aggregate, Default, Debug)]
#[aggregate(event = TallyEvent, name = "tally")]
struct Tally {
    count: u64,
}

impl Apply<Counted> for Tally {
    fn apply(&mut self, _: &Counted) {
        self.count += 1;
    }
}

struct Count;

impl Handle<Count> for Tally {
    type Error = std::convert::Infallible;
    fn handle(&self, _: &Count) -> Result<Vec<TallyEvent>, Self::Error> {
        Ok(vec![Counted.into()])
    }
}
