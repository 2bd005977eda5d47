use es_core::Event;

#[derive(Event)]
struct Registered {
    name: String,
    event_version: u32,
}

fn main() {}
