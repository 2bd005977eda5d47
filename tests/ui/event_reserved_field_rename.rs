use es_core::Event;

#[derive(Event)]
struct Classified {
    #[event(rename = "type")]
    kind: String,
}

fn main() {}
