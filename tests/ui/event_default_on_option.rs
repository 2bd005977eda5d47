use es_core::Event;

#[derive(Event)]
struct Registered {
    name: String,
    #[event(default = Some(18))]
    age: Option<u32>,
}

fn main() {}
