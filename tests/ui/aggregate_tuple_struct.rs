use es_core::{Aggregate, Event};

#[derive(Event)]
struct Registered {
    name: String,
}

#[derive(Aggregate, Default)]
#[aggregate(event = Registered)]
struct User(String);

fn main() {}
