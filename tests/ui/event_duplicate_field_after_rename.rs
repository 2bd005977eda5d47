use es_core::Event;

#[derive(Event)]
struct Registered {
    name: String,
    #[event(rename = "name")]
    nickname: String,
}

fn main() {}
