use es_core::Event;

#[derive(Event)]
struct Registered {
    #[event(personal, subject)]
    email: String,
    #[event(personal)]
    name: String,
}

fn main() {}
