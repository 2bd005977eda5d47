use es_core::Event;

#[derive(Event)]
struct Registered {
    name: String,
}

#[derive(Event)]
enum UserEvent {
    #[event(rename = "UserRegistered")]
    Registered(Registered),
}

fn main() {}
