use es_core::{Aggregate, Apply, Event};

#[derive(Event)]
struct Registered {
    name: String,
}

struct Connection;

#[derive(Aggregate)]
#[aggregate(event = Registered)]
struct User {
    name: String,
    #[aggregate(skip)]
    connection: Connection,
}

impl Default for User {
    fn default() -> Self {
        User { name: String::new(), connection: Connection }
    }
}

impl Apply<Registered> for User {
    fn apply(&mut self, e: &Registered) {
        self.name = e.name.clone();
    }
}

fn main() {}
