#![doc = include_str!("../README.md")]

mod appends;
mod config;
mod deletion;
mod error;
mod projection;
mod read_model;
mod schema;
mod sql_read_model;
mod store;
mod subject_keys;
#[cfg(feature = "testing")]
pub mod testing;
mod wakeups;

pub use config::PostgresConfig;
pub use projection::PostgresSource;
pub use read_model::PostgresReadModels;
pub use sql_read_model::{SqlReadModel, SqlUpdate};
pub use store::PostgresEventStore;
pub use subject_keys::PostgresKeys;
/// The driver's types a [`SqlUpdate`] takes and returns (parameters, rows).
pub use tokio_postgres::{types::ToSql, Row};
