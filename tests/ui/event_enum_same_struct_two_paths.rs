use es_core::Event;

#[derive(Event)]
struct Registered {
    name: String,
}

#[derive(Event)]
enum UserEvent {
    Registered(Registered),
    SignedUp(self::Registered),
}

fn main() {}
