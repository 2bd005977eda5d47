#![doc = include_str!("../README.md")]

mod appends;
pub mod config;
pub mod connection;
mod copies;
mod deletion;
mod entry;
pub mod error;
mod index;
pub mod keys;
mod listing;
mod partition_records;
mod partitions;
pub mod projection;
pub mod read_model;
mod scripts;
mod snapshots;
pub mod store;
mod subject_keys;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::RedisConfig;
pub use connection::RedisConnection;
pub use error::Error;
pub use keys::KeyLayout;
pub use projection::{ProjectionMonitor, RedisSource};
pub use read_model::RedisReadModels;
pub use store::RedisEventStore;
pub use subject_keys::RedisKeys;
