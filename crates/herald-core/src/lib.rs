//! Herald's domain logic: validation and canonical form of events, the filter language, time
//! bounds and cursors, event types and their schemas, sampling and pipeline processors.
//!
//! This crate exists to keep every rule about *what* an event or a query is in one place that
//! does no IO, has no async and reads no clock: the caller passes "now" in. Bad input is data
//! here (a [`event::Rejection`] with a reason and a JSON pointer, a [`filter::ParseError`] with
//! the offending span), never a panic. The store compiles the filter AST to SQL; the server
//! turns rejections into HTTP answers.

pub mod access;
pub mod cursor;
pub mod event;
pub mod filter;
pub mod json;
pub mod limits;
pub mod matcher;
pub mod pipeline;
pub mod schema;
pub mod timespec;
pub mod types;

pub use access::Access;
pub use event::{PreparedEvent, Rejection};
pub use filter::{Filter, ParseError};
pub use limits::Limits;
