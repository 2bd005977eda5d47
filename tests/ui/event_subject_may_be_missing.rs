use es_core::Event;

#[derive(Event)]
struct Shipped {
    #[event(subject)]
    customer: Option<String>,
    #[event(personal)]
    address: String,
}

fn main() {}
