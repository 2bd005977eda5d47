//! Types, fields and the event path passed through a user's `macro_rules!` keep working:
//! only paths are spanned at the user's tokens, so hygiene of `self` and locals holds.
#![deny(warnings)]

use es_core::{Aggregate, Apply, Event};

macro_rules! event_struct {
    ($name:ident { $($field:ident : $ty:ty),* }) => {
        #[derive(Event)]
        pub struct $name { $(pub $field: $ty),* }
    };
}

macro_rules! aggregate {
    ($name:ident, $event:path, { $($field:ident : $ty:ty),* }) => {
        #[derive(Aggregate, Default)]
        #[aggregate(event = $event)]
        pub struct $name { $(pub $field: $ty),* }
    };
}

event_struct!(Moved { to: String, steps: u32 });

#[derive(Event)]
pub enum PieceEvent {
    Moved(Moved),
}

aggregate!(Piece, PieceEvent, { at: String, moves: u64 });

impl Apply<Moved> for Piece {
    fn apply(&mut self, e: &Moved) {
        self.at = e.to.clone();
        self.moves += u64::from(e.steps);
    }
}

fn main() {
    let mut piece = Piece::default();
    piece.apply_event(&Moved { to: "e4".into(), steps: 2 }.into());
    assert_eq!((piece.at.as_str(), piece.moves), ("e4", 2));
    let mut fields = es_core::codec::Fields::new();
    PieceEvent::from(Moved { to: "e5".into(), steps: 1 }).encode(&mut fields).unwrap();
    assert!(PieceEvent::decode("Moved", &fields).is_ok());
}
