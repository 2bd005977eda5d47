use es_core::Event;

#[derive(Event)]
struct Registered {
    name: String,
}

#[derive(Event)]
enum UserEvent<'a> {
    Registered(&'a Registered),
}

fn main() {}
