use es_core::Event;

#[derive(Event)]
#[event(version = 2)]
struct Registered {
    first_name: String,
}

fn main() {}
