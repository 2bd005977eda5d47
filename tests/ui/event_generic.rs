use es_core::Event;

#[derive(Event)]
struct Registered<T> {
    name: T,
}

fn main() {}
