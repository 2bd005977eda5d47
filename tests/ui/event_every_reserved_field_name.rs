// Every name in `es_core::event::RESERVED_EVENT_FIELDS` is rejected.
use es_core::Event;

#[derive(Event)]
struct Everything {
    r#type: String,
    aggregate_id: String,
    version: u64,
    timestamp: u64,
    correlation_id: String,
    causation_id: String,
    metadata: String,
}

fn main() {}
