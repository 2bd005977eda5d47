use es_core::Event;

#[derive(Event)]
#[event(rename = "A", rename = "B")]
struct Registered {
    name: String,
}

fn main() {}
