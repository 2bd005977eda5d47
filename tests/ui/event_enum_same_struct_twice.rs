use es_core::Event;

#[derive(Event)]
struct Registered {
    name: String,
}

#[derive(Event)]
enum UserEvent {
    Registered(Registered),
    SignedUp(Registered),
}

fn main() {}
