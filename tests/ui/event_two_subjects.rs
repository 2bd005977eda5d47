use es_core::Event;

#[derive(Event)]
struct Married {
    #[event(subject)]
    spouse_a: String,
    #[event(subject)]
    spouse_b: String,
    #[event(personal)]
    surname: String,
}

fn main() {}
