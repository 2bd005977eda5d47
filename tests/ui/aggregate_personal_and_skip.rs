use es_core::{Aggregate, Apply, Event};

#[derive(Event)]
struct Registered {
    #[event(personal)]
    name: String,
}

#[derive(Event)]
enum UserEvent {
    Registered(Registered),
}

#[derive(Aggregate, Default)]
#[aggregate(event = UserEvent)]
struct User {
    #[aggregate(personal, skip)]
    name: String,
}

impl Apply<Registered> for User {
    fn apply(&mut self, event: &Registered) {
        self.name = event.name.clone();
    }
}

fn main() {}
