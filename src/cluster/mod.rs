//! Cluster mode: several `chatd serve` processes sharing rooms through one Redis
//! (`--cluster redis://HOST:PORT[/DB]`).
//!
//! What nodes share lives in Redis; what a node holds is only its connections and, per room
//! its connections joined, the id it has delivered up to. Each room's log is a Redis Stream
//! ([`log`]); a message is appended by one Lua script that takes the next id, checks the cid,
//! adds the entry and publishes it, so ids strictly increase in acceptance order whichever node
//! accepted the message. Nodes learn of new entries from the published copies and deliver them
//! in log order, filling any gap from the stream ([`feed`]).
//!
//! Durability: a script's reply, and the copies it published, leave Redis only after its
//! append-only file is written and, with `appendfsync always`, fsync'd (Redis writes the AOF
//! before it sends any reply in the same event-loop turn). So "acked only once on disk" holds if,
//! and only if, Redis runs with `appendonly yes` and `appendfsync always`: [`Link::connect`]
//! checks that and refuses otherwise, unless the server runs with relaxed durability.

pub(crate) mod accounts;
pub mod admin;
pub(crate) mod feed;
pub mod import;
pub(crate) mod keys;
pub(crate) mod log;
pub(crate) mod memberships;
pub mod notices;
pub(crate) mod presence;
pub(crate) mod prune;
pub(crate) mod writer;
// The black-box tests' Redis harness, shared so there is one.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../tests/common/redis.rs"]
pub(crate) mod testing;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::Durability;
use accounts::ClusterAccounts;
use feed::{Feed, Rooms};
use log::RoomLogs;
use memberships::ClusterMemberships;
use presence::{PresenceChange, PresenceWriter, Typing};
use writer::LogWriter;

/// Why cluster mode could not start or a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The `--cluster` value is not a Redis URL chatd can use.
    #[error("--cluster {url:?}: {reason} (expected redis://HOST:PORT[/DB])")]
    BadUrl {
        /// The value given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Redis could not be reached or refused the connection.
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        /// The URL, without a password.
        url: String,
        /// The client's error.
        source: redis::RedisError,
    },
    /// Redis does not fsync before it replies, so an ack could precede the disk.
    #[error(
        "Redis at {url} runs with appendonly={appendonly} and appendfsync={appendfsync}; strict \
         durability needs `appendonly yes` and `appendfsync always` (set them in redis.conf, or \
         start chatd with --durability relaxed to accept losing acknowledged messages when Redis \
         crashes)"
    )]
    NotDurable {
        /// The URL, without a password.
        url: String,
        /// Redis's `appendonly` setting.
        appendonly: String,
        /// Redis's `appendfsync` setting.
        appendfsync: String,
    },
    /// A Redis command failed (the link is down, or Redis answered with an error).
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The link to Redis is down.
    #[error("Redis is unreachable: {0}")]
    Unreachable(String),
    /// Something in Redis is not what chatd wrote there.
    #[error("Redis holds data chatd cannot read: {0}")]
    Corrupt(String),
}

/// How long a command may wait for Redis's answer before it fails (a send is then answered with
/// `internal`, never left hanging).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A node's link to the cluster's Redis: one multiplexed connection for commands (scripts and
/// reads from every task share it, pipelined), which reconnects by itself after Redis comes
/// back, and the client to open subscriptions with.
///
/// The redis crate drives each connection with a task it spawns with `smol::spawn`, on smol's
/// global executor (it offers no way to hand that task to ours); it shares async-io's reactor
/// with chatd's executor, and chatd's tasks only await the replies.
#[derive(Clone)]
pub struct Link {
    client: redis::Client,
    commands: ConnectionManager,
    url: String,
    health: Arc<LinkHealth>,
}

/// What the node last saw of Redis, for `/healthz`: the feed and the heartbeat report each
/// success and failure, the latest wins.
#[derive(Default)]
pub(crate) struct LinkHealth {
    down: std::sync::Mutex<Option<String>>,
}

impl LinkHealth {
    /// Redis answered.
    pub(crate) fn up(&self) {
        *crate::sync::lock(&self.down) = None;
    }

    /// Redis did not answer, for `reason`.
    pub(crate) fn down(&self, reason: &ClusterError) {
        *crate::sync::lock(&self.down) = Some(reason.to_string());
    }

    /// Why Redis is unreachable, if it is.
    pub(crate) fn problem(&self) -> Option<String> {
        crate::sync::lock(&self.down).clone()
    }
}

impl Link {
    /// Connects to `url` and checks that Redis makes writes durable before it replies (unless
    /// `durability` is relaxed).
    pub async fn connect(url: &str, durability: Durability) -> Result<Link, ClusterError> {
        let shown = redacted(url);
        if !url.starts_with("redis://") {
            return Err(ClusterError::BadUrl {
                url: shown,
                reason: "only redis:// URLs are supported".into(),
            });
        }
        let client = redis::Client::open(url).map_err(|e| ClusterError::BadUrl {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(1);
        let commands = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|source| ClusterError::Connect {
                url: shown.clone(),
                source,
            })?;
        let link = Link {
            client,
            commands,
            url: shown,
            health: Arc::default(),
        };
        if durability == Durability::Strict {
            link.check_fsync_always().await?;
        }
        Ok(link)
    }

    /// The connection commands go through (cheap to clone: clones share one socket).
    pub(crate) fn commands(&self) -> ConnectionManager {
        self.commands.clone()
    }

    /// What the node last saw of Redis.
    pub(crate) fn health(&self) -> &LinkHealth {
        &self.health
    }

    /// The URL, without a password.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The client, to open a subscription connection with.
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Every key that starts with `prefix`, without the prefix, sorted. A SCAN: keys written or
    /// removed meanwhile may or may not be in it, every other key is, once.
    pub(crate) async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, ClusterError> {
        let mut found_all = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.commands())
                .await?;
            found_all.extend(
                found
                    .into_iter()
                    .filter_map(|k| k.strip_prefix(prefix).map(str::to_string)),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        found_all.sort();
        found_all.dedup();
        Ok(found_all)
    }

    /// Fails unless Redis runs with `appendonly yes` and `appendfsync always`.
    async fn check_fsync_always(&self) -> Result<(), ClusterError> {
        let mut conn = self.commands();
        let setting = |name: &'static str| {
            let mut conn = conn.clone();
            async move {
                let pair: Vec<String> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async(&mut conn)
                    .await?;
                Ok::<_, redis::RedisError>(pair.get(1).cloned().unwrap_or_default())
            }
        };
        let appendonly = setting("appendonly").await?;
        let appendfsync = setting("appendfsync").await?;
        let _: () = redis::cmd("PING").query_async(&mut conn).await?;
        if appendonly != "yes" || appendfsync != "always" {
            return Err(ClusterError::NotDurable {
                url: self.url.clone(),
                appendonly,
                appendfsync,
            });
        }
        Ok(())
    }
}

/// One node of a cluster: its id, and the logs, accounts and feed every node shares.
pub(crate) struct Cluster {
    /// This node's id, random per start: the origin of the entries its connections append.
    pub(crate) node: u64,
    /// The room logs.
    pub(crate) logs: RoomLogs,
    /// Users and sessions.
    pub(crate) accounts: ClusterAccounts,
    /// Read markers and conversation lists.
    pub(crate) memberships: ClusterMemberships,
    link: Link,
    feed: OnceLock<Feed>,
    writer: OnceLock<LogWriter>,
    presence: OnceLock<PresenceWriter>,
    presence_grace: Duration,
}

impl Cluster {
    /// A node over `link`; cids are remembered for `cid_ttl`; its users stay online for
    /// `presence_grace` after it stops.
    pub(crate) fn new(
        link: Link,
        cid_ttl: Duration,
        presence_grace: Duration,
    ) -> Result<Cluster, ClusterError> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id)
            .map_err(|e| ClusterError::Unreachable(format!("no random node id: {e}")))?;
        Ok(Cluster {
            node: u64::from_le_bytes(id),
            logs: RoomLogs::new(link.clone(), cid_ttl.as_secs()),
            accounts: ClusterAccounts::new(link.clone()),
            memberships: ClusterMemberships::new(link.clone()),
            link,
            feed: OnceLock::new(),
            writer: OnceLock::new(),
            presence: OnceLock::new(),
            presence_grace,
        })
    }

    /// Starts the node's tasks (once; later calls do nothing): the feed delivering the rooms'
    /// entries and presence into `rooms`, the log writer, the presence writer and the heartbeat.
    pub(crate) fn start(&self, rooms: Arc<dyn Rooms>, executor: &smol::Executor<'static>) {
        self.writer
            .get_or_init(|| LogWriter::start(self.link.clone(), executor));
        self.presence.get_or_init(|| {
            PresenceWriter::start(self.link.clone(), self.node, self.presence_grace, executor)
        });
        self.feed
            .get_or_init(|| Feed::start(self.link.clone(), self.logs.clone(), rooms, executor));
    }

    /// Announces that `user_key` (shown as `name`) is now online in `room` on this node, or no
    /// longer. Never waits.
    pub(crate) fn publish_presence(&self, room: &str, user_key: &str, name: &str, online: bool) {
        if let Some(writer) = self.presence.get() {
            writer.publish(
                room,
                PresenceChange {
                    node: self.node,
                    user_key: user_key.to_string(),
                    name: name.to_string(),
                    online,
                },
            );
        }
    }

    /// Returns once this node's presence changes queued so far are in Redis (at most
    /// [`RESPONSE_TIMEOUT`]): a join that made its user online is answered only after the
    /// other nodes can know it, so they hear of the user before anything the user sends, and
    /// list the user to whoever joins after the answer.
    pub(crate) async fn presence_sent(&self) {
        if let Some(writer) = self.presence.get() {
            writer.sent(RESPONSE_TIMEOUT).await;
        }
    }

    /// Reports to an admin's kick or ban `request` that this node closed `closed` connections.
    pub(crate) async fn report_closed(&self, request: &str, closed: usize) {
        let key = keys::closing(request);
        let mut pipe = redis::pipe();
        pipe.hincr(&key, "nodes", 1)
            .ignore()
            .hincr(&key, "closed", closed)
            .ignore();
        self.report(pipe, &key, "close").await;
    }

    /// Answers an admin's `online` request with this node's connections (a JSON array).
    pub(crate) async fn report_online(&self, request: &str, connections: String) {
        let key = keys::online(request);
        let mut pipe = redis::pipe();
        pipe.rpush(&key, connections).ignore();
        self.report(pipe, &key, "online").await;
    }

    /// Runs an answer to an admin's request (`pipe`, writing `key`) atomically, and lets the
    /// answer expire: the admin reads it within seconds.
    async fn report(&self, mut pipe: redis::Pipeline, key: &str, what: &str) {
        pipe.atomic().expire(key, 60).ignore();
        let reported: Result<(), redis::RedisError> =
            pipe.query_async(&mut self.link.commands()).await;
        if let Err(e) = reported {
            tracing::warn!(error = %e, request = what, "an admin's request was not answered");
        }
    }

    /// Sends `notice` to the user's connections on every node (this one included).
    pub(crate) fn send_notice(&self, notice: notices::Notice) {
        if let Some(writer) = self.presence.get() {
            writer.notice(notice);
        }
    }

    /// Relays `typing` by `user_key` (shown as `name`) in `room` to the other nodes.
    pub(crate) fn relay_typing(&self, room: &str, user_key: &str, name: &str) {
        if let Some(writer) = self.presence.get() {
            writer.typing(
                room,
                Typing {
                    node: self.node,
                    user_key: user_key.to_string(),
                    name: name.to_string(),
                },
            );
        }
    }

    /// The `cluster` part of `/healthz`, and whether Redis answers.
    pub(crate) fn health(&self) -> (serde_json::Value, bool) {
        let problem = self.link.health().problem();
        let mut health = serde_json::json!({
            "node": format!("{:016x}", self.node),
            "redis": if problem.is_some() { "unreachable" } else { "ok" },
            "url": self.link.url(),
        });
        if let Some(reason) = &problem {
            health["reason"] = reason.as_str().into();
        }
        (health, problem.is_none())
    }

    /// The writer that pipelines the node's message appends, once started.
    pub(crate) fn writer(&self) -> Result<&LogWriter, ClusterError> {
        self.writer
            .get()
            .ok_or_else(|| ClusterError::Unreachable("the log writer has not started".into()))
    }

    /// The feed, once started.
    pub(crate) fn feed(&self) -> Result<&Feed, ClusterError> {
        self.feed
            .get()
            .ok_or_else(|| ClusterError::Unreachable("the feed has not started".into()))
    }
}

/// `url` with any password replaced, for messages and logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Redis as TestRedis;
    use super::*;

    #[test]
    fn a_password_never_appears_in_messages() {
        assert_eq!(
            redacted("redis://user:secret@10.0.0.1:6379/2"),
            "redis://***@10.0.0.1:6379/2"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn a_url_of_another_scheme_is_refused_with_the_expected_form() {
        let e = smol::block_on(Link::connect("http://127.0.0.1:6379", Durability::Strict))
            .err()
            .expect("refused");
        let shown = e.to_string();
        assert!(shown.contains("redis://HOST:PORT"), "{shown}");
    }

    #[test]
    fn strict_durability_needs_appendfsync_always_and_relaxed_does_not() {
        let lax = TestRedis::start_with(&["--appendonly", "yes", "--appendfsync", "everysec"]);
        let e = smol::block_on(Link::connect(&lax.url(), Durability::Strict))
            .err()
            .expect("refused");
        assert!(
            matches!(&e, ClusterError::NotDurable { appendfsync, .. } if appendfsync == "everysec"),
            "{e}"
        );
        assert!(e.to_string().contains("--durability relaxed"), "{e}");
        smol::block_on(Link::connect(&lax.url(), Durability::Relaxed)).expect("relaxed is allowed");

        let strict = TestRedis::start();
        smol::block_on(Link::connect(&strict.url(), Durability::Strict)).expect("durable redis");
    }

    #[test]
    fn an_unreachable_redis_is_a_connect_error_naming_the_url() {
        let port = TcpListenerPort::unused();
        let url = format!("redis://127.0.0.1:{port}");
        let e = smol::block_on(Link::connect(&url, Durability::Strict))
            .err()
            .expect("refused");
        assert!(matches!(e, ClusterError::Connect { .. }), "{e}");
        assert!(e.to_string().contains(&url), "{e}");
    }

    /// A loopback port nothing listens on (bound, then released).
    struct TcpListenerPort;
    impl TcpListenerPort {
        fn unused() -> u16 {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("port")
        }
    }
}
