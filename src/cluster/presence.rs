//! Presence across nodes: who is online in a room, whichever node their connections are on.
//!
//! Each node decides its own users' presence as a single server does (connections, grace
//! period) and publishes only the changes: "user U is online in room R on node N" is a field of
//! the room's presence hash, written and announced on the room's channel in one script. Every
//! node keeps, per loaded room, the other nodes' users (`remote`), read from the hash when the
//! room is loaded or the feed reconnects, and kept current by the announcements. A user is
//! online in a room while any node has them.
//!
//! A node proves it is alive with a key that expires one presence grace period after its last
//! heartbeat (three heartbeats fit in it). When a node's key is gone, the first node to notice
//! removes that node's presence entries and announces its users offline, in one script, so only
//! one node does it. A user whose node died and who reconnects elsewhere within that time never
//! appears offline: the grace period, as on a single server.
//!
//! Invariants:
//! - A node's own changes reach Redis in the order they happened (one task sends them).
//! - The hash and the channel agree: every write to the hash is announced by the same script.

use std::sync::OnceLock;
use std::time::Duration;

use redis::Script;

use super::notices::Notice;
use super::{keys, ClusterError, Link};

/// The shortest time a node counts as alive after its last heartbeat.
const MIN_NODE_TTL: Duration = Duration::from_secs(1);

/// Presence changes waiting to be written; beyond this, changes are dropped (with a warning):
/// Redis has been unreachable for a long time, and the feed's reconnect reads presence afresh.
const CHANGE_QUEUE: usize = 65_536;

/// Writes or removes one user's presence entry and announces it.
/// KEYS: room presence hash, this node's room set. ARGV: field, name, online, room, channel,
/// payload.
const CHANGE: &str = r"
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[4])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
";

/// Removes a dead node's presence entries and announces its users offline, unless the node is
/// alive or another node did it already. KEYS: the node's alive key, the node set, the node's
/// room set. ARGV: node id (hex), presence key prefix, channel prefix.
const REAP: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local prefix = ARGV[1] .. ':'
for _, room in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local hash = ARGV[2] .. room
  local fields = redis.call('HGETALL', hash)
  for i = 1, #fields, 2 do
    local field = fields[i]
    if string.sub(field, 1, #prefix) == prefix then
      redis.call('HDEL', hash, field)
      local user = string.sub(field, #prefix + 1)
      redis.call('PUBLISH', ARGV[3] .. room,
        table.concat({'P', ARGV[1], '0', user, fields[i + 1]}, '\n'))
    end
  end
end
redis.call('DEL', KEYS[3])
return 1
";

fn change_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(CHANGE))
}

fn reap_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(REAP))
}

/// One user's presence in a room on one node, as announced on the room's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PresenceChange {
    /// The node the user's connections are on.
    pub node: u64,
    /// The user's key (lower-cased name).
    pub user_key: String,
    /// The name as displayed.
    pub name: String,
    /// Online (or no longer).
    pub online: bool,
}

impl PresenceChange {
    fn payload(&self) -> String {
        format!(
            "P\n{:x}\n{}\n{}\n{}",
            self.node,
            if self.online { '1' } else { '0' },
            self.user_key,
            self.name
        )
    }

    /// Parses an announcement; `None` for anything else.
    pub(crate) fn parse(payload: &[u8]) -> Option<PresenceChange> {
        let payload = std::str::from_utf8(payload).ok()?;
        let mut parts = payload.splitn(5, '\n');
        if parts.next()? != "P" {
            return None;
        }
        let node = u64::from_str_radix(parts.next()?, 16).ok()?;
        let online = match parts.next()? {
            "1" => true,
            "0" => false,
            _ => return None,
        };
        Some(PresenceChange {
            node,
            online,
            user_key: parts.next()?.to_string(),
            name: parts.next()?.to_string(),
        })
    }
}

/// The presence entry field of `user_key` on `node`.
fn field(node: u64, user_key: &str) -> String {
    format!("{node:x}:{user_key}")
}

/// Every node's users online in room `room` (from its hash).
pub(crate) async fn read_room(
    link: &Link,
    room: &str,
) -> Result<Vec<PresenceChange>, ClusterError> {
    let fields: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(keys::presence(room))
        .query_async(&mut link.commands())
        .await?;
    Ok(fields
        .into_iter()
        .filter_map(|(field, name)| {
            let (node, user_key) = field.split_once(':')?;
            Some(PresenceChange {
                node: u64::from_str_radix(node, 16).ok()?,
                user_key: user_key.to_string(),
                name,
                online: true,
            })
        })
        .collect())
}

/// Someone typing in a room, relayed to the other nodes (not stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Typing {
    /// The node the typist is connected to.
    pub node: u64,
    /// The typist's key.
    pub user_key: String,
    /// The typist's name as displayed.
    pub name: String,
}

impl Typing {
    fn payload(&self) -> String {
        format!("T\n{:x}\n{}\n{}", self.node, self.user_key, self.name)
    }

    /// Parses a relayed `typing`; `None` for anything else.
    pub(crate) fn parse(payload: &[u8]) -> Option<Typing> {
        let payload = std::str::from_utf8(payload).ok()?;
        let mut parts = payload.splitn(4, '\n');
        if parts.next()? != "T" {
            return None;
        }
        Some(Typing {
            node: u64::from_str_radix(parts.next()?, 16).ok()?,
            user_key: parts.next()?.to_string(),
            name: parts.next()?.to_string(),
        })
    }
}

/// What a node tells the others.
enum Announcement {
    Presence(PresenceChange),
    Typing(Typing),
    Notice(Notice),
    /// Everything queued before it was sent: tell the waiter.
    Sent(async_channel::Sender<()>),
}

/// A node's announcer: presence changes and typing queued from under room locks, sent in
/// order by one task; and the node's heartbeat, which also reaps dead nodes.
pub(crate) struct PresenceWriter {
    changes: async_channel::Sender<(String, Announcement)>,
}

impl PresenceWriter {
    /// Starts node `node`'s writer and heartbeat on `executor`; the node counts as alive for
    /// `grace` after each heartbeat.
    pub(crate) fn start(
        link: Link,
        node: u64,
        grace: Duration,
        executor: &smol::Executor<'static>,
    ) -> PresenceWriter {
        let (changes, queued) = async_channel::bounded(CHANGE_QUEUE);
        executor.spawn(write_changes(link.clone(), queued)).detach();
        executor
            .spawn(heartbeat(link, node, grace.max(MIN_NODE_TTL)))
            .detach();
        PresenceWriter { changes }
    }

    /// Queues a change of this node's presence in `room`. Never waits.
    pub(crate) fn publish(&self, room: &str, change: PresenceChange) {
        let queued = (room.to_string(), Announcement::Presence(change));
        if self.changes.try_send(queued).is_err() {
            tracing::warn!(
                room,
                "cluster presence: change dropped, Redis has been unreachable too long"
            );
        }
    }

    /// Queues a notice for a user's connections on every node. Never waits; dropped (with a
    /// warning) when Redis has been unreachable too long.
    pub(crate) fn notice(&self, notice: Notice) {
        if self
            .changes
            .try_send((String::new(), Announcement::Notice(notice)))
            .is_err()
        {
            tracing::warn!("cluster notice dropped, Redis has been unreachable too long");
        }
    }

    /// Returns once everything queued before this call reached Redis (or after `limit`).
    pub(crate) async fn sent(&self, limit: Duration) {
        let (done, finished) = async_channel::bounded(1);
        let queued = self
            .changes
            .send((String::new(), Announcement::Sent(done)))
            .await;
        if queued.is_ok() {
            let _ = futures_lite::future::or(async { finished.recv().await.is_ok() }, async {
                smol::Timer::after(limit).await;
                false
            })
            .await;
        }
    }

    /// Queues a `typing` to relay to the other nodes' members of `room`. Never waits; dropped
    /// when the queue is full (it is only a hint).
    pub(crate) fn typing(&self, room: &str, typing: Typing) {
        let _ = self
            .changes
            .try_send((room.to_string(), Announcement::Typing(typing)));
    }
}

async fn write_changes(link: Link, queued: async_channel::Receiver<(String, Announcement)>) {
    while let Ok((room, announcement)) = queued.recv().await {
        let change = match announcement {
            Announcement::Presence(change) => change,
            Announcement::Typing(typing) => {
                if let Err(e) = publish(&link, &keys::feed(&room), typing.payload()).await {
                    tracing::debug!(room, error = %e, "cluster typing not relayed");
                }
                continue;
            }
            Announcement::Notice(notice) => {
                if let Err(e) = publish(&link, keys::NOTICES, notice.payload()).await {
                    tracing::warn!(error = %e, "cluster notice not sent");
                }
                continue;
            }
            Announcement::Sent(done) => {
                let _ = done.try_send(());
                continue;
            }
        };
        let mut wait = Duration::from_millis(50);
        // A change is retried until Redis takes it: dropping one would leave a user online
        // (or offline) on every other node until the room is loaded again.
        loop {
            match write_change(&link, &room, &change).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(room, error = %e, "cluster presence: write failed, retrying");
                    smol::Timer::after(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

async fn publish(link: &Link, channel: &str, payload: String) -> Result<(), ClusterError> {
    let _receivers: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(&mut link.commands())
        .await?;
    Ok(())
}

async fn write_change(
    link: &Link,
    room: &str,
    change: &PresenceChange,
) -> Result<(), ClusterError> {
    let () = change_script()
        .key(keys::presence(room))
        .key(keys::node_rooms(change.node))
        .arg(field(change.node, &change.user_key))
        .arg(&change.name)
        .arg(if change.online { "1" } else { "0" })
        .arg(room)
        .arg(keys::feed(room))
        .arg(change.payload())
        .invoke_async(&mut link.commands())
        .await?;
    Ok(())
}

/// Renews the node's key three times per `ttl` and reaps nodes whose key expired.
async fn heartbeat(link: Link, node: u64, ttl: Duration) {
    loop {
        match beat(&link, node, ttl).await {
            Ok(_) => link.health().up(),
            Err(e) => {
                link.health().down(&e);
                tracing::warn!(error = %e, "cluster heartbeat failed");
            }
        }
        smol::Timer::after(ttl / 3).await;
    }
}

/// One heartbeat: this node's key renewed for `ttl`, dead nodes reaped. Returns the nodes
/// reaped.
pub(crate) async fn beat(link: &Link, node: u64, ttl: Duration) -> Result<usize, ClusterError> {
    let mut commands = link.commands();
    let () = redis::cmd("SET")
        .arg(keys::node_alive(node))
        .arg(1)
        .arg("PX")
        .arg(ttl.as_millis() as u64)
        .query_async(&mut commands)
        .await?;
    let () = redis::cmd("SADD")
        .arg(keys::NODES)
        .arg(format!("{node:x}"))
        .query_async(&mut commands)
        .await?;
    let nodes: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::NODES)
        .query_async(&mut commands)
        .await?;
    let mut reaped = 0;
    for other in nodes {
        let Ok(other_id) = u64::from_str_radix(&other, 16) else {
            continue;
        };
        if other_id == node {
            continue;
        }
        let done: i64 = reap_script()
            .key(keys::node_alive(other_id))
            .key(keys::NODES)
            .key(keys::node_rooms(other_id))
            .arg(&other)
            .arg(keys::presence(""))
            .arg(keys::feed(""))
            .invoke_async(&mut commands)
            .await?;
        if done == 1 {
            tracing::info!(node = %other, "cluster: a node stopped; its users' presence was removed");
            reaped += 1;
        }
    }
    Ok(reaped)
}

#[cfg(test)]
mod tests {
    use super::super::testing::Redis as TestRedis;
    use super::*;
    use crate::config::Durability;
    use futures_lite::StreamExt;

    const TTL: Duration = Duration::from_secs(60);

    fn link(redis: &TestRedis) -> Link {
        smol::block_on(Link::connect(&redis.url(), Durability::Strict)).expect("link")
    }

    fn change(node: u64, user: &str, online: bool) -> PresenceChange {
        PresenceChange {
            node,
            user_key: user.to_lowercase(),
            name: user.into(),
            online,
        }
    }

    #[test]
    fn an_announcement_reads_back_as_what_was_announced() {
        for c in [change(0xabc, "Alice", true), change(1, "b.o-b_", false)] {
            assert_eq!(PresenceChange::parse(c.payload().as_bytes()), Some(c));
        }
        assert_eq!(PresenceChange::parse(b"1\n2\n3"), None);
        let typing = Typing {
            node: 0xfe,
            user_key: "alice".into(),
            name: "Alice".into(),
        };
        assert_eq!(Typing::parse(typing.payload().as_bytes()), Some(typing));
        assert_eq!(Typing::parse(b"P\nfe\n1\nalice\nAlice"), None);
    }

    #[test]
    fn changes_are_written_announced_and_a_dead_nodes_users_go_offline_once() {
        let redis = TestRedis::start();
        let link = link(&redis);
        smol::block_on(async {
            let mut sub = link.client().get_async_pubsub().await.unwrap();
            sub.subscribe(keys::feed("general")).await.unwrap();
            // Node 2 is alive briefly, with alice and bob online.
            let () = redis::cmd("SET")
                .arg(keys::node_alive(2))
                .arg(1)
                .arg("PX")
                .arg(60_000)
                .query_async(&mut link.commands())
                .await
                .unwrap();
            beat(&link, 2, TTL).await.unwrap();
            for c in [change(2, "Alice", true), change(2, "Bob", true)] {
                write_change(&link, "general", &c).await.unwrap();
            }
            write_change(&link, "general", &change(1, "Carol", true))
                .await
                .unwrap();
            let mut online: Vec<_> = read_room(&link, "general").await.unwrap();
            online.sort_by(|a, b| a.user_key.cmp(&b.user_key));
            assert_eq!(
                online,
                [
                    change(2, "Alice", true),
                    change(2, "Bob", true),
                    change(1, "Carol", true)
                ]
            );
            // Alive: nothing to reap.
            assert_eq!(beat(&link, 1, TTL).await.unwrap(), 0);
            // Node 2 dies: the next heartbeat of node 1 reaps it, once.
            let () = redis::cmd("DEL")
                .arg(keys::node_alive(2))
                .query_async(&mut link.commands())
                .await
                .unwrap();
            assert_eq!(beat(&link, 1, TTL).await.unwrap(), 1);
            assert_eq!(beat(&link, 3, TTL).await.unwrap(), 0);
            assert_eq!(
                read_room(&link, "general").await.unwrap(),
                [change(1, "Carol", true)]
            );
            let mut announced = Vec::new();
            let mut messages = sub.on_message();
            while announced.len() < 5 {
                let msg = messages.next().await.unwrap();
                announced.push(PresenceChange::parse(msg.get_payload_bytes()).unwrap());
            }
            announced[3..].sort_by(|a, b| a.user_key.cmp(&b.user_key));
            assert_eq!(
                announced,
                [
                    change(2, "Alice", true),
                    change(2, "Bob", true),
                    change(1, "Carol", true),
                    change(2, "Alice", false),
                    change(2, "Bob", false),
                ]
            );
        });
    }
}
