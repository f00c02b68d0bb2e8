//! chatd: a real-time WebSocket chat server with a durable embedded store.
//!
//! A message flows one way: socket → [`session`] → [`store`] (durable, group commit) →
//! [`hub`] → each member's [`outbox`] → socket. The wire contract is docs/PROTOCOL.md.

pub mod admin;
pub mod auth;
pub mod config;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod rules;
pub mod server;
pub mod session;
pub mod state;
pub mod store;
mod sync;

pub use config::Config;
pub use server::{Server, ServerError};
