use es_core::Event;

#[derive(Event)]
struct Registered {
    name: String,
}

#[derive(Event)]
enum UserEvent {
    #[event(version = 2)]
    Registered(Registered),
}

fn main() {}
