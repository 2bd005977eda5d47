use es_core::{Aggregate, Apply, Event};

#[derive(Event)]
struct Registered {
    name: String,
}

#[derive(Aggregate, Default)]
#[aggregate(event = Registered, snapshot_version = "2")]
struct User {
    name: String,
}

impl Apply<Registered> for User {
    fn apply(&mut self, e: &Registered) {
        self.name = e.name.clone();
    }
}

fn main() {}
