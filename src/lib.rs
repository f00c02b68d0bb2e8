//! chatd: a real-time WebSocket chat server with a durable embedded store.
//!
//! A message flows one way: socket → `session` → [`store`] (durable, group commit) →
//! `hub` → each member's `outbox` → socket. The wire contract is docs/PROTOCOL.md.
//!
//! Modules import only downwards, so each can change without the others following: `server`,
//! `http`, `session` and [`admin`] share the server's `state`, which sits below them; names, ids
//! and text are checked by [`rules`], below both the protocol and the store; `sync` holds the one
//! lock helper. Only what the `chatd` binary (cli/) uses is public; the rest is `pub(crate)`, so
//! the compiler reports code nothing uses.

pub(crate) mod account_limits;
pub(crate) mod accounts;
pub mod admin;
pub(crate) mod admission;
pub mod auth;
pub mod cluster;
pub mod config;
pub(crate) mod executors;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub(crate) mod heartbeat;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod log_gate;
pub(crate) mod log_reader;
pub(crate) mod metrics;
pub(crate) mod origin;
pub(crate) mod outbox;
pub(crate) mod protocol;
pub(crate) mod replay;
pub mod rules;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod state;
pub mod store;
mod sync;
pub(crate) mod throttle;
pub mod tls;
pub(crate) mod transport;
pub(crate) mod wire;

pub use config::Config;
pub use server::{Server, ServerError, Stopped};
