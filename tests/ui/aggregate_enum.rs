use es_core::Aggregate;

#[derive(Aggregate)]
#[aggregate(event = UserEvent)]
enum User {
    Active,
}

fn main() {}
