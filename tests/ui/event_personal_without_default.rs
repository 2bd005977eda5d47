use es_core::codec::{FieldError, FieldValue};
use es_core::Event;

/// Has a codec, but no `Default` for an erased value.
struct Email(String);

impl FieldValue for Email {
    fn encode_value(&self) -> Option<Vec<u8>> {
        self.0.encode_value()
    }
    fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
        String::decode_value(raw).map(Email)
    }
}

#[derive(Event)]
struct EmailChanged {
    #[event(personal)]
    email: Email,
}

fn main() {}
