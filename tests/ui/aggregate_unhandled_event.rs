use es_core::{Aggregate, Apply, Event};

#[derive(Event)]
struct Registered {
    name: String,
}

#[derive(Event)]
struct EmailUpdated {
    email: String,
}

#[derive(Event)]
enum UserEvent {
    Registered(Registered),
    EmailUpdated(EmailUpdated),
}

#[derive(Aggregate, Default)]
#[aggregate(event = UserEvent)]
struct User {
    name: String,
}

impl Apply<Registered> for User {
    fn apply(&mut self, e: &Registered) {
        self.name = e.name.clone();
    }
}

fn main() {}
