//! [`Position`]: where an event is in its category (or partition), as an ordered token
//! whose meaning each backend defines.

use std::fmt;
use std::str::FromStr;

/// A position in a category's order (in one partition's, for a partitioned category).
///
/// An ordered token of two numbers, written `<major>-<minor>`, whose meaning each backend
/// defines: a sequence backend issues [`Position::from_sequence`] (`<n>-0`), another may
/// use both parts. Every backend issues strictly increasing positions per category (per
/// partition), and [`Position::ZERO`] is before every event. Compare, store and print
/// positions; do not read meaning into their parts (an event's time is
/// [`RecordedEvent::timestamp`](crate::RecordedEvent::timestamp)).
///
/// ```
/// use es_core::Position;
/// let first = Position::from_sequence(1);
/// assert!(Position::ZERO < first && first < Position::from_sequence(2));
/// assert_eq!(first.to_string(), "1-0");
/// assert_eq!("1".parse::<Position>()?, first);
/// assert_eq!("7-3".parse::<Position>()?, Position::new(7, 3));
/// # Ok::<_, es_core::store::ParsePositionError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Position {
    major: u64,
    minor: u64,
}

impl Position {
    /// Before every event.
    pub const ZERO: Position = Position { major: 0, minor: 0 };

    /// The position `<major>-<minor>`.
    pub const fn new(major: u64, minor: u64) -> Self {
        Position { major, minor }
    }

    /// The `n`th position of a backend that numbers events: `<n>-0`.
    pub const fn from_sequence(n: u64) -> Self {
        Position::new(n, 0)
    }

    /// The first part (what a backend puts there is its own business).
    pub const fn major(self) -> u64 {
        self.major
    }

    /// The second part.
    pub const fn minor(self) -> u64 {
        self.minor
    }

    /// The greatest position before this one (no position lies between the two);
    /// [`Position::ZERO`] for itself.
    pub const fn previous(self) -> Self {
        match (self.major, self.minor) {
            (0, 0) => Position::ZERO,
            (major, 0) => Position::new(major - 1, u64::MAX),
            (major, minor) => Position::new(major, minor - 1),
        }
    }

    /// The smallest position after this one.
    pub const fn next(self) -> Self {
        if self.minor == u64::MAX {
            Position::new(self.major.saturating_add(1), 0)
        } else {
            Position::new(self.major, self.minor + 1)
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.major, self.minor)
    }
}

/// A text that is not a `<major>-<minor>` (or `<major>`) position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid position {0:?}: expected `<number>-<number>` or `<number>`")]
pub struct ParsePositionError(pub String);

impl FromStr for Position {
    type Err = ParsePositionError;
    /// `<major>-<minor>`, or `<major>` alone for `<major>-0`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParsePositionError(text.to_owned());
        let (major, minor) = text.split_once('-').unwrap_or((text, "0"));
        Ok(Position::new(
            major.parse().map_err(|_| error())?,
            minor.parse().map_err(|_| error())?,
        ))
    }
}
