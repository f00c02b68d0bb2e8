//! What every connection, the admin socket and the server's chores share: settings, the store,
//! the hub, password hashing, metrics, and the registry of open sockets and WebSocket outboxes.
//!
//! It lives below everything that uses it (server, http, session, admin) so that none of those
//! has to import another to reach it. Invariants: `admission` counts exactly the accepted TCP
//! connections whose slot is alive, which is what the connection limits bound; every
//! WebSocket connection is in `outboxes` from its upgrade until its task ends, so shutdown can
//! ask each of them to close.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::account_limits::AccountLimits;
use crate::accounts::Accounts;
use crate::admission::{Admission, Limits, Refusal};
use crate::auth::Passwords;
use crate::config::Config;
use crate::hub::Hub;
use crate::log_gate::LogGate;
use crate::metrics::Metrics;
use crate::outbox::{CloseRequest, Outbox, ReplyBounds};
use crate::store::gate::Condition;
use crate::store::Store;
use crate::sync::lock;
use crate::throttle::AuthThrottle;

/// Everything connections share.
pub struct State {
    /// Settings.
    pub config: Config,
    /// The database.
    pub store: Arc<Store>,
    /// Users and sessions: in the database, or in the cluster's Redis.
    pub(crate) accounts: Accounts,
    /// Rooms and connections.
    pub hub: Arc<Hub>,
    /// Password hashing.
    pub passwords: Passwords,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Login backoff and registration limits.
    pub(crate) throttle: AuthThrottle,
    /// Send rate and storage quota per account.
    pub(crate) account_limits: AccountLimits,
    /// Every connection's reply bounds, from the settings.
    pub reply_bounds: Arc<ReplyBounds>,
    started: Instant,
    conn_ids: AtomicU64,
    /// Connection limits and counts.
    pub(crate) admission: Arc<Admission>,
    /// Every WebSocket connection's outbox, authenticated or not, so shutdown reaches them all.
    outboxes: Mutex<HashMap<u64, Arc<Outbox>>>,
}

impl State {
    /// The state of a server that has just started.
    pub fn new(config: Config, store: Arc<Store>, hub: Arc<Hub>, metrics: Arc<Metrics>) -> State {
        State {
            passwords: Passwords::new(config.hash_concurrency, config.hash_jobs_per_ip),
            throttle: AuthThrottle::new(&config),
            account_limits: AccountLimits::new(&config),
            admission: Arc::new(Admission::new(Limits::from_config(&config))),
            reply_bounds: Arc::new(ReplyBounds {
                budget: config.reply_buffer,
                stall_timeout: config.reply_timeout,
                slow_linger: config.idle_timeout,
                slow_closes: metrics.slow_consumer_closes.clone(),
            }),
            config,
            accounts: match hub.cluster() {
                Some(cluster) => Accounts::Cluster(cluster.accounts.clone()),
                None => Accounts::Local(store.clone()),
            },
            store,
            hub,
            metrics,
            started: Instant::now(),
            conn_ids: AtomicU64::new(1),
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

    /// Whether the database takes writes, and in cluster mode Redis answers (what `/healthz`
    /// answers 200 or 503 for).
    pub fn healthy(&self) -> bool {
        let redis = self.hub.cluster().is_none_or(|cluster| cluster.health().1);
        redis && self.hub.committer().gate().condition() == Condition::Writable
    }

    /// The `/healthz` body. `storage` names the write gate's state; `reason` explains a state
    /// other than `ok`.
    pub fn health_json(&self) -> String {
        let gate = self.hub.committer().gate();
        let mut health = serde_json::json!({
            "ok": gate.condition() == Condition::Writable,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime": self.uptime().as_secs(),
            "connections": self.metrics.connections.get(),
            "storage": gate.condition().as_str(),
        });
        if let Some(reason) = gate.reason() {
            health["reason"] = reason.into();
        }
        if let Some(cluster) = self.hub.cluster() {
            let (link, reachable) = cluster.health();
            health["cluster"] = link;
            if !reachable {
                health["ok"] = false.into();
            }
        }
        health.to_string()
    }

    /// Counts a connection refused by a limit and logs it (a line per reason per interval at
    /// most: a flood of refusals must not become a flood of log lines).
    pub(crate) fn refused(&self, refusal: Refusal, peer: SocketAddr) {
        self.metrics.connection_refused(refusal);
        static GATES: [LogGate; Refusal::ALL.len()] =
            [const { LogGate::new() }; Refusal::ALL.len()];
        if let Some(unlogged) = GATES[refusal.index()].pass() {
            tracing::warn!(%peer, reason = refusal.reason(), unlogged, "connection refused by a limit (`unlogged`: like refusals since the last such line)");
        }
    }
}
