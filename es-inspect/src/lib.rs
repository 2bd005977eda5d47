#![doc = include_str!("../README.md")]

mod cli;
mod error;
mod http;
mod inspector;
mod replay;
pub mod views;

pub use cli::{Cli, Command};
pub use error::InspectError;
pub use http::Bound;
pub use inspector::{parse_time, Inspector, Until, MAX_PAGE};
