use es_core::Event;

#[derive(Event)]
enum UserEvent {
    Registered(String),
}

fn main() {}
