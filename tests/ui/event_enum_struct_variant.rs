use es_core::Event;

#[derive(Event)]
enum UserEvent {
    Registered { name: String },
}

fn main() {}
