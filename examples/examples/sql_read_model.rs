//! CQRS across two stores: the events of a wallet are kept in Redis Streams (the log of
//! record), and a projection keeps a read model in ordinary PostgreSQL tables, which the
//! example then queries with SQL. Each event's SQL and the record that it was applied
//! commit in one transaction, so redelivered events change nothing.
//!
//! ```text
//! cargo run --example sql_read_model            # Redis and PostgreSQL on this machine
//! cargo run --example sql_read_model -- --in-memory --read-model-url postgres://…
//! ```

use std::borrow::Cow;
use std::process::ExitCode;
use std::time::Duration;

use es_core::projection::{Projection, ProjectionOptions, ProjectionRunner};
use es_core::read_model::ReadModel;
use es_core::{Aggregate, Apply, Event, Handle, RecordedEvent, Repository, StoreError};
use es_examples::{connect_postgres, run, Backend, Options};
use es_postgres::{PostgresEventStore, SqlReadModel};

#[derive(Event, Debug, Clone)]
struct Credited {
    cents: i64,
    memo: String,
}

#[derive(Event, Debug, Clone)]
struct Debited {
    cents: i64,
    memo: String,
}

#[derive(Event, Debug, Clone)]
enum WalletEvent {
    Credited(Credited),
    Debited(Debited),
}

#[derive(Aggregate, Default, Debug, Clone)]
#[aggregate(event = WalletEvent, name = "wallet")]
struct Wallet {
    cents: i64,
}

impl Apply<Credited> for Wallet {
    fn apply(&mut self, e: &Credited) {
        self.cents += e.cents;
    }
}

impl Apply<Debited> for Wallet {
    fn apply(&mut self, e: &Debited) {
        self.cents -= e.cents;
    }
}

enum Command {
    Credit(i64, &'static str),
    Debit(i64, &'static str),
}

impl Handle<Command> for Wallet {
    type Error = String;
    fn handle(&self, command: &Command) -> Result<Vec<WalletEvent>, String> {
        match *command {
            Command::Credit(cents, memo) => Ok(vec![WalletEvent::Credited(Credited {
                cents,
                memo: memo.into(),
            })]),
            Command::Debit(cents, _) if cents > self.cents => {
                Err(format!("insufficient funds: {} < {cents}", self.cents))
            }
            Command::Debit(cents, memo) => Ok(vec![WalletEvent::Debited(Debited {
                cents,
                memo: memo.into(),
            })]),
        }
    }
}

/// The read side: a balance per wallet and every movement, in two tables of the run's
/// schema.
struct Statements {
    model: SqlReadModel,
    balances: String,
    movements: String,
}

#[async_trait::async_trait]
impl Projection for Statements {
    type Event = WalletEvent;
    type Error = StoreError;

    fn name(&self) -> &str {
        self.model.projection()
    }

    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec![Wallet::NAME.into()]
    }

    fn read_model(&self) -> Option<&ReadModel> {
        Some(self.model.as_read_model())
    }

    async fn handle(&self, event: &RecordedEvent<WalletEvent>) -> Result<(), StoreError> {
        let (cents, memo) = match &event.event {
            WalletEvent::Credited(e) => (e.cents, &e.memo),
            WalletEvent::Debited(e) => (-e.cents, &e.memo),
        };
        let Some(update) = self.model.update(event).await? else {
            return Ok(()); // applied before: a redelivery
        };
        update
            .execute(
                &format!(
                    "INSERT INTO {b} (wallet, cents) VALUES ($1, $2) \
                     ON CONFLICT (wallet) DO UPDATE SET cents = {b}.cents + excluded.cents",
                    b = self.balances
                ),
                &[&event.stream.id, &cents],
            )
            .await?;
        update
            .execute(
                &format!(
                    "INSERT INTO {} (wallet, version, cents, memo) VALUES ($1, $2, $3, $4)",
                    self.movements
                ),
                &[&event.stream.id, &(event.version as i64), &cents, memo],
            )
            .await?;
        update.commit().await
    }
}

async fn create_tables(pg: &PostgresEventStore) -> Result<(String, String), StoreError> {
    let s = pg.quoted_schema();
    let (balances, movements) = (format!("{s}.balances"), format!("{s}.movements"));
    pg.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {balances} (wallet text PRIMARY KEY, cents bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS {movements} (wallet text NOT NULL, version bigint NOT NULL,
             cents bigint NOT NULL, memo text NOT NULL, PRIMARY KEY (wallet, version));"
    ))
    .await?;
    Ok((balances, movements))
}

async fn sql_read_model(
    options: Options,
    backend: Backend,
) -> Result<(), Box<dyn std::error::Error>> {
    let url = options.read_model_url();
    let pg = connect_postgres(&options, &url).await?;
    println!(
        "read model: PostgreSQL at {url}, schema {}",
        pg.quoted_schema()
    );
    let (balances, movements) = create_tables(&pg).await?;

    let wallets = Repository::<Wallet, _>::new(backend.store());
    let commands = [
        ("duffy", Command::Credit(10_000, "salary")),
        ("daisy", Command::Credit(2_500, "gift")),
        ("duffy", Command::Debit(1_250, "groceries")),
        ("daisy", Command::Debit(9_999, "car")), // refused: insufficient funds
        ("duffy", Command::Debit(300, "coffee")),
    ];
    let mut last = None;
    for (wallet, command) in &commands {
        match wallets.execute(wallet, command).await {
            Ok(done) => last = Some(done),
            Err(error) => println!("{wallet}: refused: {error}"),
        }
    }

    let projection = Statements {
        model: SqlReadModel::new(
            &pg,
            "wallet_statements",
            [balances.clone(), movements.clone()],
        ),
        balances: balances.clone(),
        movements: movements.clone(),
    };
    let runner = ProjectionRunner::connect(
        backend.projections(),
        projection,
        ProjectionOptions::new("sql-read-model"),
    )
    .await?
    .spawn();
    if let Some(done) = &last {
        runner
            .progress()
            .wait_for_executed(done, Duration::from_secs(10))
            .await?;
    }
    runner.stop().await?;

    let client = pg.pool().get().await?;
    println!("SELECT wallet, cents FROM {balances} ORDER BY wallet;");
    let rows = client
        .query(
            &format!("SELECT wallet, cents FROM {balances} ORDER BY wallet"),
            &[],
        )
        .await?;
    let found: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (wallet, cents) in &found {
        println!("  {wallet:<6} {cents:>7}");
    }
    let expected = [("daisy".to_owned(), 2_500), ("duffy".to_owned(), 8_450)];
    if found != expected {
        return Err(format!("balances {found:?}, expected {expected:?}").into());
    }
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM {movements}"), &[])
        .await?
        .get(0);
    println!("{count} movements recorded");

    println!("look at the read model with psql:");
    println!("  psql {url} -c 'SELECT * FROM {balances} ORDER BY wallet'");
    println!("  psql {url} -c 'SELECT * FROM {movements} ORDER BY wallet, version'");
    println!(
        "  psql {url} -c 'SELECT * FROM {}.applied WHERE projection = $$wallet_statements$$'",
        pg.quoted_schema()
    );
    if let Some(redis) = backend.redis() {
        println!("and the events with redis-cli:");
        println!(
            "  redis-cli -u {} XRANGE '{}' - +",
            options.redis_url,
            redis.keys().category_stream(Wallet::NAME)
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    run(sql_read_model).await
}
