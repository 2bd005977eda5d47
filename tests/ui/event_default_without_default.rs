use es_core::codec::{FieldError, FieldValue};
use es_core::Event;

struct Plan(u8);

impl FieldValue for Plan {
    fn encode_value(&self) -> Option<Vec<u8>> {
        self.0.encode_value()
    }
    fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
        u8::decode_value(raw).map(Plan)
    }
}

#[derive(Event)]
struct Registered {
    name: String,
    #[event(default)]
    plan: Plan,
}

fn main() {}
