use es_core::Event;

#[derive(Event)]
#[event(version = 0)]
struct Registered {
    name: String,
}

fn main() {}
