use es_core::{Aggregate, Apply, Event};

#[derive(Event)]
struct Registered {
    name: String,
}

#[derive(Default)]
struct Settings {
    dark_mode: bool,
}

#[derive(Aggregate, Default)]
#[aggregate(event = Registered)]
struct User {
    name: String,
    settings: Settings,
}

impl Apply<Registered> for User {
    fn apply(&mut self, e: &Registered) {
        self.name = e.name.clone();
    }
}

fn main() {}
