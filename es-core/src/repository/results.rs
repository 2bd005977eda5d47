//! What the repository's loads and commands return: [`Loaded`], [`Executed`],
//! [`RepositoryError`], and which past state to load ([`AsOf`]).

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::{ConflictError, StoreError};
use crate::store::{Position, StreamId};

/// An aggregate's state at a version.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    /// The aggregate's stream.
    pub stream: StreamId,
    /// Its state.
    pub state: A,
    /// Its version (0: no events yet).
    pub version: u64,
    /// The category position of its last event ([`Position::ZERO`] if none).
    pub position: Position,
}

/// What a successful command did.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed<A> {
    /// The aggregate after the command's events. The repository's cache shares it, and it
    /// never changes under you: if you still hold it when the next command to the same
    /// aggregate runs, that command works on a copy ([`Aggregate::try_clone`](crate::Aggregate::try_clone)) or, for an
    /// aggregate that is not `Clone`, loads the aggregate again.
    pub state: Arc<A>,
    /// Its version after the append.
    pub version: u64,
    /// The aggregate's stream.
    pub stream: StreamId,
    /// The category position of the aggregate's last event after the command (of the last
    /// one appended, if any): what a projection must have processed to reflect the command
    /// (read-your-writes: [`Progress::wait_for_executed`](crate::projection::Progress::wait_for_executed)).
    pub position: Position,
    /// The category positions of the events the command appended, in order (empty if none).
    pub positions: Vec<Position>,
    /// How many events the command appended (0: it decided nothing happens).
    pub appended: usize,
    /// How many version conflicts were caught up on and retried.
    pub conflicts_retried: u32,
}

/// Why a command failed.
#[derive(Debug)]
pub enum RepositoryError<E> {
    /// The aggregate rejected the command.
    Rejected(E),
    /// The store failed (decode error, lost connection, …).
    Store(StoreError),
    /// Every attempt met a concurrent writer; the last conflict is attached.
    TooManyConflicts {
        /// How many attempts were made.
        attempts: u32,
        /// The last conflict.
        last: ConflictError,
    },
}

impl<E> RepositoryError<E> {
    /// The rejection, if the aggregate rejected the command.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            RepositoryError::Rejected(e) => Some(e),
            _ => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for RepositoryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepositoryError::Rejected(e) => write!(f, "command rejected: {e}"),
            RepositoryError::Store(e) => write!(f, "{e}"),
            RepositoryError::TooManyConflicts { attempts, last } => {
                write!(f, "gave up after {attempts} attempts: {last}")
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for RepositoryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RepositoryError::Store(e) => Some(e),
            RepositoryError::TooManyConflicts { last, .. } => Some(last),
            RepositoryError::Rejected(_) => None,
        }
    }
}

impl<E> From<StoreError> for RepositoryError<E> {
    fn from(e: StoreError) -> Self {
        RepositoryError::Store(e)
    }
}

/// Which past state to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// The state after this version.
    Version(u64),
    /// The state from the events stored at or before this time.
    Time(SystemTime),
}
