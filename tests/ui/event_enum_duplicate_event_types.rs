use es_core::Event;

#[derive(Event)]
struct Registered {
    name: String,
}

#[derive(Event)]
#[event(rename = "Registered")]
struct SignedUp {
    name: String,
}

#[derive(Event)]
enum UserEvent {
    Registered(Registered),
    SignedUp(SignedUp),
}

fn main() {}
