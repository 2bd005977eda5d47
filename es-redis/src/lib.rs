#![doc = include_str!("../README.md")]

pub mod config;
mod entry;
pub mod error;
pub mod keys;
mod scripts;
mod snapshots;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::RedisConfig;
pub use error::Error;
pub use keys::KeyLayout;
pub use store::RedisEventStore;
