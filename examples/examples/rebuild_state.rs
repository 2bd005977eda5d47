//! Rebuilding state from the log, and the event replay: each event and the state derived
//! after it, then time travel by version and by timestamp.
//!
//! ```text
//! cargo run --example rebuild_state                 # Redis on 127.0.0.1:6379
//! cargo run --example rebuild_state -- --in-memory  # no Redis needed
//! ```

use std::process::ExitCode;
use std::time::Duration;

use es_core::{
    Aggregate, Apply, AsOf, Event, EventStore, ExpectedVersion, Metadata, NewEvent, ReadRange,
    Repository,
};
use es_examples::{run, Backend, Options};

#[derive(Event, Debug, Clone, PartialEq)]
struct UserCreated {
    name: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
struct EmailUpdated {
    email: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
enum UserEvent {
    UserCreated(UserCreated),
    EmailUpdated(EmailUpdated),
}

#[derive(Aggregate, Default, Debug, Clone)]
#[aggregate(event = UserEvent, name = "user_events")]
struct User {
    name: Option<String>,
    email: Option<String>,
}

impl Apply<UserCreated> for User {
    fn apply(&mut self, e: &UserCreated) {
        self.name = Some(e.name.clone());
    }
}

impl Apply<EmailUpdated> for User {
    fn apply(&mut self, e: &EmailUpdated) {
        self.email = Some(e.email.clone());
    }
}

fn show(user: &User) -> String {
    format!(
        "{{name: {}, email: {}}}",
        user.name.as_deref().unwrap_or("-"),
        user.email.as_deref().unwrap_or("-")
    )
}

async fn rebuild(_options: Options, backend: Backend) -> Result<(), Box<dyn std::error::Error>> {
    let store = backend.store();
    let users = Repository::<User, _>::new(store.clone());
    let stream = users.stream_id("42");

    // The write side: append the history one event at a time, a little apart in time.
    let history: [UserEvent; 4] = [
        UserCreated {
            name: "Duffy".into(),
        }
        .into(),
        EmailUpdated {
            email: "duffy@acme.test".into(),
        }
        .into(),
        EmailUpdated {
            email: "duck@acme.test".into(),
        }
        .into(),
        EmailUpdated {
            email: "d.duck@looney.test".into(),
        }
        .into(),
    ];
    for (i, event) in history.iter().enumerate() {
        let new = NewEvent::encode(event, Metadata::new().correlation_id("seed"))?;
        store
            .append(
                &stream,
                ExpectedVersion::Exact(i as u64),
                vec![new],
                &Default::default(),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let current = users.load("42").await?;
    println!(
        "rebuilt state of user 42 (version {}): {}",
        current.version,
        show(&current.state)
    );

    println!("replay:");
    let mut state = User::default();
    let events = users.events("42", &ReadRange::all()).await?;
    for event in &events {
        state.apply_event(&event.event);
        println!(
            "  v{} at {} ms  {} {:?}  => {}",
            event.version,
            event.timestamp,
            event.event_type,
            event.event,
            show(&state)
        );
    }

    let as_of_version = users.load_as_of("42", AsOf::Version(2)).await?;
    println!("as of version 2: {}", show(&as_of_version.state));
    let third = events.get(2).ok_or("the log has fewer than 3 events")?;
    let as_of_time = users
        .load_as_of("42", AsOf::Time(third.recorded_at()))
        .await?;
    println!(
        "as of {} ms (when v3 was stored): version {}, {}",
        third.timestamp,
        as_of_time.version,
        show(&as_of_time.state)
    );
    if as_of_time.version != 3 || current.version != 4 {
        return Err("time travel returned the wrong versions".into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    run(rebuild).await
}
