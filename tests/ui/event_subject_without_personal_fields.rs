use es_core::Event;

#[derive(Event)]
struct Shipped {
    #[event(subject)]
    customer: String,
    parcel: String,
}

fn main() {}
