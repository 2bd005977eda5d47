use es_core::Event;

#[derive(Event)]
#[event(alias = "")]
struct Registered {
    name: String,
}

fn main() {}
