//! What every connection, the admin socket and the server's chores share: settings, the store,
//! the hub, password hashing, metrics, and the registry of open sockets and WebSocket outboxes.
//!
//! It lives below everything that uses it (server, http, session, admin) so that none of those
//! has to import another to reach it. Invariants: `sockets` counts exactly the accepted TCP
//! connections whose [`SocketSlot`] is alive, which is what `--max-connections` limits; every
//! WebSocket connection is in `outboxes` from its upgrade until its task ends, so shutdown can
//! ask each of them to close.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::Passwords;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::outbox::{CloseRequest, Outbox, ReplyBounds};
use crate::store::Store;
use crate::sync::lock;

/// Everything connections share.
pub struct State {
    /// Settings.
    pub config: Config,
    /// The database.
    pub store: Arc<Store>,
    /// Rooms and connections.
    pub hub: Arc<Hub>,
    /// Password hashing.
    pub passwords: Passwords,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Every connection's reply bounds, from the settings.
    pub reply_bounds: Arc<ReplyBounds>,
    started: Instant,
    conn_ids: AtomicU64,
    sockets: AtomicUsize,
    /// False once a database flush failed.
    healthy: Arc<AtomicBool>,
    /// Every WebSocket connection's outbox, authenticated or not, so shutdown reaches them all.
    outboxes: Mutex<HashMap<u64, Arc<Outbox>>>,
}

impl State {
    /// The state of a server that has just started. `healthy` is shared with the committer's
    /// flush observer, which clears it when a flush fails.
    pub fn new(
        config: Config,
        store: Arc<Store>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        healthy: Arc<AtomicBool>,
    ) -> State {
        State {
            passwords: Passwords::new(config.hash_concurrency),
            reply_bounds: Arc::new(ReplyBounds {
                budget: config.reply_buffer,
                stall_timeout: config.reply_timeout,
                slow_linger: config.idle_timeout,
                slow_closes: metrics.slow_consumer_closes.clone(),
            }),
            config,
            store,
            hub,
            metrics,
            started: Instant::now(),
            conn_ids: AtomicU64::new(1),
            sockets: AtomicUsize::new(0),
            healthy,
            outboxes: Mutex::new(HashMap::new()),
        }
    }

    /// A new connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Tracks a WebSocket connection until [`State::untrack`].
    pub fn track(&self, conn: u64, outbox: Arc<Outbox>) {
        lock(&self.outboxes).insert(conn, outbox);
    }

    /// Stops tracking a connection.
    pub fn untrack(&self, conn: u64) {
        lock(&self.outboxes).remove(&conn);
    }

    /// Replaces `into`'s contents with every WebSocket connection's outbox.
    pub fn connections_into(&self, into: &mut Vec<Arc<Outbox>>) {
        into.clear();
        into.extend(lock(&self.outboxes).values().cloned());
    }

    /// Asks every WebSocket connection to close.
    pub fn close_all(&self, request: CloseRequest) {
        for outbox in lock(&self.outboxes).values() {
            outbox.close(request.clone());
        }
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The `/healthz` body.
    pub fn health_json(&self) -> String {
        serde_json::json!({
            "ok": self.healthy.load(Ordering::Relaxed),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime": self.uptime().as_secs(),
            "connections": self.metrics.connections.get(),
        })
        .to_string()
    }

    /// Counts a newly accepted socket, returning its slot and how many were open before it.
    pub fn count_socket(self: &Arc<State>) -> (SocketSlot, usize) {
        let open = self.sockets.fetch_add(1, Ordering::Relaxed);
        (SocketSlot(self.clone()), open)
    }
}

/// Counts an open socket for `--max-connections`; uncounts it when dropped.
pub struct SocketSlot(Arc<State>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.sockets.fetch_sub(1, Ordering::Relaxed);
    }
}
