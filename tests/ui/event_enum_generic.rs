use es_core::Event;

#[derive(Event)]
struct Registered {
    name: String,
}

#[derive(Event)]
enum UserEvent<E> {
    Registered(Registered),
    Other(E),
}

fn main() {}
