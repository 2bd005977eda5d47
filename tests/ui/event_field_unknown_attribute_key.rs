use es_core::Event;

#[derive(Event)]
struct Registered {
    #[event(jsn)]
    name: String,
}

fn main() {}
