use es_core::Event;

#[derive(Event)]
enum UserEvent {}

fn main() {}
