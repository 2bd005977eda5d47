//! The README's quickstart: a user aggregate with two derives, commands run through a
//! repository, a rejected command, a snapshot, and time travel.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use es_core::{
    Aggregate, Apply, AsOf, Event, Handle, InMemoryStore, ReadRange, Repository, SnapshotPolicy,
};

#[derive(Event, Debug, Clone, PartialEq)]
struct Registered {
    name: String,
    surname: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
struct EmailUpdated {
    email: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
enum UserEvent {
    Registered(Registered),
    EmailUpdated(EmailUpdated),
}

#[derive(Aggregate, Default, Debug, Clone)]
#[aggregate(event = UserEvent, name = "user")]
struct User {
    name: String,
    email: Option<String>,
}

impl Apply<Registered> for User {
    fn apply(&mut self, e: &Registered) {
        self.name = format!("{} {}", e.name, e.surname);
    }
}

impl Apply<EmailUpdated> for User {
    fn apply(&mut self, e: &EmailUpdated) {
        self.email = Some(e.email.clone());
    }
}

struct Register {
    name: String,
    surname: String,
}

struct UpdateEmail(String);

#[derive(Debug, PartialEq)]
enum UserError {
    AlreadyRegistered,
    NotRegistered,
    InvalidEmail(String),
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserError::AlreadyRegistered => f.write_str("already registered"),
            UserError::NotRegistered => f.write_str("not registered"),
            UserError::InvalidEmail(e) => write!(f, "{e:?} is not an email address"),
        }
    }
}

impl Handle<Register> for User {
    type Error = UserError;
    fn handle(&self, c: &Register) -> Result<Vec<UserEvent>, UserError> {
        if !self.name.is_empty() {
            return Err(UserError::AlreadyRegistered);
        }
        Ok(vec![Registered {
            name: c.name.clone(),
            surname: c.surname.clone(),
        }
        .into()])
    }
}

impl Handle<UpdateEmail> for User {
    type Error = UserError;
    fn handle(&self, c: &UpdateEmail) -> Result<Vec<UserEvent>, UserError> {
        if self.name.is_empty() {
            return Err(UserError::NotRegistered);
        }
        if !c.0.contains('@') {
            return Err(UserError::InvalidEmail(c.0.clone()));
        }
        Ok(vec![EmailUpdated { email: c.0.clone() }.into()])
    }
}

/// The README's quickstart: a user aggregate in memory, its commands, its log and time
/// travel. It takes no options.
#[derive(clap::Parser)]
struct Cli;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    <Cli as clap::Parser>::parse();
    let users = Repository::<User, _>::new(InMemoryStore::new())
        .with_snapshot_policy(SnapshotPolicy::EveryNEvents(2));

    let register = Register {
        name: "Duffy".into(),
        surname: "Duck".into(),
    };
    users.execute("1", &register).await?;
    users
        .execute("1", &UpdateEmail("duffy@acme.test".into()))
        .await?;
    let done = users
        .execute("1", &UpdateEmail("duck@acme.test".into()))
        .await?;
    println!("user 1 at version {}: {:?}", done.version, done.state);

    match users
        .execute("1", &UpdateEmail("not-an-email".into()))
        .await
    {
        Err(error) => println!("rejected: {error}"),
        Ok(_) => return Err("an invalid email was accepted".into()),
    }

    println!("event log of user 1:");
    for event in users.events("1", &ReadRange::all()).await? {
        println!(
            "  v{} {} {:?}",
            event.version, event.event_type, event.event
        );
    }
    let then = users.load_as_of("1", AsOf::Version(2)).await?;
    println!("user 1 as of version 2: {:?}", then.state);
    Ok(())
}
