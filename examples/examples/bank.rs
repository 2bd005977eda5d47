//! A bank: commands with invariants (no overdraft; a closed account takes no deposits),
//! concurrent tellers hitting the same accounts, snapshots every 10 events, and a balance
//! read model built by a projection. It checks that the final balances equal the sum of
//! the accepted commands.
//!
//! The tellers first share one repository: it runs the commands to one account one at a
//! time, so they never conflict. Then a second repository (as a second process would, with
//! its own cache) works on the same accounts: its appends and the first one's meet version
//! conflicts, which are caught up and retried.
//!
//! ```text
//! cargo run --example bank                 # Redis on 127.0.0.1:6379
//! cargo run --example bank -- --in-memory  # no Redis needed
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use es_core::projection::{Projection, ProjectionOptions, ProjectionRunner};
use es_core::read_model::ReadModel;
use es_core::{
    Aggregate, Apply, Event, Handle, RecordedEvent, Repository, RepositoryError, SnapshotPolicy,
    SnapshotStore, StoreError,
};
use es_examples::{inspect, run, Backend, Options};
use es_inspect::Inspector;

#[derive(Event, Debug, Clone, PartialEq)]
struct AccountOpened {
    owner: String,
}
#[derive(Event, Debug, Clone, PartialEq)]
struct MoneyDeposited {
    amount: u64,
}
#[derive(Event, Debug, Clone, PartialEq)]
struct MoneyWithdrawn {
    amount: u64,
}
#[derive(Event, Debug, Clone, PartialEq)]
struct AccountClosed;

#[derive(Event, Debug, Clone, PartialEq)]
enum AccountEvent {
    AccountOpened(AccountOpened),
    MoneyDeposited(MoneyDeposited),
    MoneyWithdrawn(MoneyWithdrawn),
    AccountClosed(AccountClosed),
}

#[derive(Aggregate, Default, Debug, Clone)]
#[aggregate(event = AccountEvent, name = "account")]
struct Account {
    owner: Option<String>,
    balance: u64,
    closed: bool,
}

impl Apply<AccountOpened> for Account {
    fn apply(&mut self, e: &AccountOpened) {
        self.owner = Some(e.owner.clone());
    }
}
impl Apply<MoneyDeposited> for Account {
    fn apply(&mut self, e: &MoneyDeposited) {
        self.balance += e.amount;
    }
}
impl Apply<MoneyWithdrawn> for Account {
    fn apply(&mut self, e: &MoneyWithdrawn) {
        self.balance -= e.amount;
    }
}
impl Apply<AccountClosed> for Account {
    fn apply(&mut self, _: &AccountClosed) {
        self.closed = true;
    }
}

#[derive(Debug, PartialEq)]
enum BankError {
    NotOpen,
    Closed,
    Overdraft { balance: u64, requested: u64 },
}

impl std::fmt::Display for BankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BankError::NotOpen => f.write_str("account is not open"),
            BankError::Closed => f.write_str("account is closed"),
            BankError::Overdraft { balance, requested } => {
                write!(f, "cannot withdraw {requested} from a balance of {balance}")
            }
        }
    }
}

struct Open(String);
struct Deposit(u64);
struct Withdraw(u64);
struct Close;

impl Account {
    fn check_open(&self) -> Result<(), BankError> {
        match (&self.owner, self.closed) {
            (None, _) => Err(BankError::NotOpen),
            (Some(_), true) => Err(BankError::Closed),
            (Some(_), false) => Ok(()),
        }
    }
}

impl Handle<Open> for Account {
    type Error = BankError;
    fn handle(&self, c: &Open) -> Result<Vec<AccountEvent>, BankError> {
        if self.owner.is_some() {
            return Ok(vec![]); // opening twice is a no-op
        }
        Ok(vec![AccountOpened { owner: c.0.clone() }.into()])
    }
}

impl Handle<Deposit> for Account {
    type Error = BankError;
    fn handle(&self, c: &Deposit) -> Result<Vec<AccountEvent>, BankError> {
        self.check_open()?;
        Ok(vec![MoneyDeposited { amount: c.0 }.into()])
    }
}

impl Handle<Withdraw> for Account {
    type Error = BankError;
    fn handle(&self, c: &Withdraw) -> Result<Vec<AccountEvent>, BankError> {
        self.check_open()?;
        if c.0 > self.balance {
            return Err(BankError::Overdraft {
                balance: self.balance,
                requested: c.0,
            });
        }
        Ok(vec![MoneyWithdrawn { amount: c.0 }.into()])
    }
}

impl Handle<Close> for Account {
    type Error = BankError;
    fn handle(&self, _: &Close) -> Result<Vec<AccountEvent>, BankError> {
        self.check_open()?;
        Ok(vec![AccountClosed.into()])
    }
}

/// The read model: each account's balance, kept by a projection over the `account`
/// category in hash `balances`, a field per account (Redis hashes on Redis, memory with
/// `--in-memory`).
struct Balances(ReadModel);

#[async_trait::async_trait]
impl Projection for Balances {
    type Event = AccountEvent;
    type Error = StoreError;
    fn name(&self) -> &str {
        self.0.projection()
    }
    fn read_model(&self) -> Option<&ReadModel> {
        Some(&self.0)
    }
    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec![Account::category()]
    }
    async fn handle(&self, event: &RecordedEvent<AccountEvent>) -> Result<(), Self::Error> {
        let delta = match &event.event {
            AccountEvent::MoneyDeposited(e) => e.amount as i64,
            AccountEvent::MoneyWithdrawn(e) => -(e.amount as i64),
            AccountEvent::AccountOpened(_) | AccountEvent::AccountClosed(_) => 0,
        };
        // Each event counts once, even when delivered twice.
        let _applied = self
            .0
            .update(event)
            .hincrby("balances", &event.stream.id, delta)
            .commit()
            .await?;
        Ok(())
    }
}

const ACCOUNTS: [&str; 3] = ["alice", "bob", "carol"];
const TELLERS: u64 = 8;
const COMMANDS_PER_TELLER: u64 = 40;

/// What one teller got accepted: net amount per account.
type Ledger = BTreeMap<String, i64>;

async fn teller(
    accounts: Arc<Repository<Account, Arc<dyn SnapshotStore>>>,
    teller: u64,
    conflicts: Arc<AtomicU32>,
) -> Result<(Ledger, u32), RepositoryError<BankError>> {
    let mut ledger = Ledger::new();
    let mut rejected = 0;
    for i in 0..COMMANDS_PER_TELLER {
        let id = ACCOUNTS[((teller + i) % ACCOUNTS.len() as u64) as usize];
        // Mostly deposits, some withdrawals large enough to be refused now and then.
        let amount = 10 + (teller * 7 + i * 13) % 50;
        let result = if i % 3 == 2 {
            accounts
                .execute(id, &Withdraw(amount * 2))
                .await
                .map(|done| (done, -((amount * 2) as i64)))
        } else {
            accounts
                .execute(id, &Deposit(amount))
                .await
                .map(|done| (done, amount as i64))
        };
        match result {
            Ok((done, delta)) => {
                conflicts.fetch_add(done.conflicts_retried, Ordering::Relaxed);
                *ledger.entry(id.to_owned()).or_default() += delta;
            }
            Err(RepositoryError::Rejected(BankError::Overdraft { .. })) => rejected += 1,
            Err(other) => return Err(other),
        }
    }
    Ok((ledger, rejected))
}

async fn bank(options: Options, backend: Backend) -> Result<(), Box<dyn std::error::Error>> {
    let store = backend.store();
    let accounts = Arc::new(
        Repository::<Account, _>::new(store.clone())
            .with_snapshot_policy(SnapshotPolicy::EveryNEvents(10))
            .with_max_attempts(50),
    );
    for id in ACCOUNTS {
        accounts.execute(id, &Open(format!("{id} smith"))).await?;
    }

    let branch = Arc::new(
        Repository::<Account, _>::new(store.clone())
            .with_snapshot_policy(SnapshotPolicy::EveryNEvents(10))
            .with_max_attempts(50),
    );
    let mut accepted = Ledger::new();
    let mut rejected = 0;
    for (phase, repositories) in [
        ("one repository", vec![accounts.clone()]),
        ("two repositories", vec![accounts.clone(), branch.clone()]),
    ] {
        let conflicts = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..TELLERS)
            .map(|t| {
                let repository = repositories[t as usize % repositories.len()].clone();
                tokio::spawn(teller(repository, t, conflicts.clone()))
            })
            .collect();
        for task in tasks {
            let (ledger, refused) = task.await??;
            rejected += refused;
            for (id, delta) in ledger {
                *accepted.entry(id).or_default() += delta;
            }
        }
        println!(
            "{} commands from {TELLERS} concurrent tellers through {phase}: {} version conflicts caught up and retried",
            TELLERS * COMMANDS_PER_TELLER,
            conflicts.load(Ordering::Relaxed)
        );
    }
    println!("{rejected} withdrawals refused (no overdraft)");

    // Close one account; a deposit to it is then refused.
    accounts.execute("carol", &Close).await?;
    match accounts.execute("carol", &Deposit(1)).await {
        Err(RepositoryError::Rejected(BankError::Closed)) => {
            println!("carol's account is closed: a deposit was refused")
        }
        other => {
            return Err(format!("a deposit to a closed account was not refused: {other:?}").into())
        }
    }

    let balances = Balances(backend.projections().read_model("balances"));
    let runner = ProjectionRunner::connect(
        backend.projections(),
        balances,
        ProjectionOptions::new("bank-1"),
    )
    .await?;
    runner.run_once().await?;
    let read_model: BTreeMap<String, i64> = runner
        .projection()
        .0
        .hash("balances")
        .await?
        .into_iter()
        .map(|(id, value)| {
            let value = String::from_utf8_lossy(&value).parse().unwrap_or(i64::MIN);
            (id, value)
        })
        .collect();

    let mut all_match = true;
    for id in ACCOUNTS {
        let loaded = accounts.load(id).await?;
        let expected = accepted.get(id).copied().unwrap_or(0);
        let snapshot = store
            .load_snapshot(&accounts.stream_id(id))
            .await?
            .map_or("none".to_owned(), |s| format!("at version {}", s.version));
        let projected = read_model.get(id).copied().unwrap_or(0);
        let ok = loaded.state.balance as i64 == expected && projected == expected;
        all_match &= ok;
        println!(
            "{id}: balance {} at version {} (snapshot {snapshot}); read model {projected}; accepted commands sum to {expected} {}",
            loaded.state.balance,
            loaded.version,
            if ok { "✓" } else { "✗ MISMATCH" }
        );
    }
    if !all_match {
        return Err("final balances differ from the accepted commands".into());
    }
    println!("final balances equal the sum of accepted commands");
    let inspector = Inspector::new(store)
        .aggregate::<Account>()
        .projection(runner.control());
    inspect(&options, inspector).await
}

#[tokio::main]
async fn main() -> ExitCode {
    run(bank).await
}
