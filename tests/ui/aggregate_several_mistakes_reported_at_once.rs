use es_core::{Aggregate, Event};

#[derive(Event)]
struct Registered {
    name: String,
}

#[derive(Aggregate, Default)]
#[aggregate(evnt = Registered, name = "")]
struct User {
    #[aggregate(rename = "_name")]
    name: String,
}

fn main() {}
