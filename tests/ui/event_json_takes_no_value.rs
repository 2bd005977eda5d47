use es_core::Event;

#[derive(Event)]
struct Registered {
    #[event(json = true)]
    tags: Vec<String>,
}

fn main() {}
