use es_core::Event;

#[derive(Event)]
#[event(rename = "")]
struct Registered {
    name: String,
}

fn main() {}
