//! chatd: a real-time WebSocket chat server with a durable embedded store.
//!
//! A message flows one way: socket → [`session`] → [`store`] (durable, group commit) →
//! [`hub`] → each member's [`outbox`] → socket. The wire contract is docs/PROTOCOL.md.

pub mod admin;
pub mod auth;
pub mod config;
pub mod heartbeat;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod session;
pub mod store;
pub mod transport;
pub mod wire;

pub use config::Config;
pub use server::{Server, ServerError};
