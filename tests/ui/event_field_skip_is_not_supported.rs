use es_core::Event;

#[derive(Event)]
struct Registered {
    name: String,
    #[event(skip)]
    cache: u64,
}

fn main() {}
