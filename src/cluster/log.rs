//! A room's log in Redis: one Stream per room, appended by a Lua script so that taking the id,
//! checking the cid, adding the entry, raising the room's counters and publishing the entry
//! are one atomic step on the one Redis every node shares.
//!
//! Invariants:
//! - Ids come from one counter for all rooms, so they are unique across the cluster and
//!   strictly increase within a room in the order Redis ran the appends: the acceptance order.
//! - A cid is checked and recorded in the same script as the append: two nodes racing with the
//!   same cid store the message once, and the loser gets the winner's id and time.
//! - Every entry is published on the room's channel with the id of the room's previous entry
//!   (`prev`), so a node that missed one (a dropped subscription) sees the gap and reads the
//!   stream instead of skipping it.
//! - A write for a room whose record no longer has the number the writer loaded (deleted, or
//!   deleted and created again) stores nothing.

use std::sync::OnceLock;

use redis::streams::{StreamId, StreamRangeReply};
use redis::Script;

use super::{keys, ClusterError, Link};
use crate::store::{CidEntry, Message, Page, RoomRef, StoredMessage};

/// Appends a message; see the module doc. Replies `{'new', id, prev}`, `{'dup', 'room id ts'}`
/// or `{'gone'}`.
const APPEND: &str = r"
local cid = ARGV[5]
if cid ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then return {'dup', seen} end
end
if redis.call('HGET', KEYS[1], 'no') ~= ARGV[1] then return {'gone'} end
local id = string.format('%d', redis.call('INCR', KEYS[3]))
local prev = redis.call('HGET', KEYS[1], 'last_id') or '0'
redis.call('XADD', KEYS[2], id .. '-0', 'u', ARGV[2], 't', ARGV[3], 'ts', ARGV[4], 'c', cid, 'o', ARGV[6])
redis.call('HSET', KEYS[1], 'last_id', id)
redis.call('HINCRBY', KEYS[1], 'count', 1)
if cid ~= '' then
  redis.call('SET', KEYS[4], ARGV[8] .. ' ' .. id .. ' ' .. ARGV[4], 'EX', ARGV[7])
end
redis.call('PUBLISH', ARGV[9],
  table.concat({'1', ARGV[1], id, prev, 'm', ARGV[6], ARGV[2], ARGV[4], cid, ARGV[3]}, '\n'))
return {'new', id, prev}
";

/// Creates a room record unless it exists. Replies `{no, last_id, created}`.
const ENSURE_ROOM: &str = r"
local no = redis.call('HGET', KEYS[1], 'no')
if no then return {no, redis.call('HGET', KEYS[1], 'last_id') or '0', 0} end
no = string.format('%d', redis.call('INCR', KEYS[2]))
redis.call('HSET', KEYS[1], 'no', no, 'created_ms', ARGV[1], 'last_id', '0', 'count', '0')
return {no, '0', 1}
";

fn append_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(APPEND))
}

fn ensure_room_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(ENSURE_ROOM))
}

/// Which connection of which node appended an entry: the node that holds that connection acks
/// it when the entry reaches it in log order, so the ack always comes before the sender's own
/// copy of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The node's id (random per process).
    pub node: u64,
    /// The connection's id on that node.
    pub conn: u64,
}

impl Origin {
    fn encode(self) -> String {
        format!("{:x}.{:x}", self.node, self.conn)
    }

    fn decode(s: &str) -> Option<Origin> {
        let (node, conn) = s.split_once('.')?;
        Some(Origin {
            node: u64::from_str_radix(node, 16).ok()?,
            conn: u64::from_str_radix(conn, 16).ok()?,
        })
    }
}

/// What an append did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Appended {
    /// Stored as `id`; the room's entry before it was `prev` (0: none).
    New {
        /// The new id.
        id: u64,
        /// The id of the room's previous entry.
        prev: u64,
    },
    /// The cid was used before, for this.
    Duplicate(CidEntry),
    /// The room no longer exists under the number the writer loaded.
    RoomGone,
}

/// A room as loaded from its record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RoomState {
    /// The room's number (its log's key).
    pub no: u32,
    /// The newest id in its log.
    pub last_id: u64,
    /// Whether this call created it.
    pub created: bool,
}

/// An entry of a room's log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LogEntry {
    /// The entry's id.
    pub id: u64,
    /// Who appended it (`None` for entries written by other tools).
    pub origin: Option<Origin>,
    /// The message.
    pub message: Message,
}

/// An entry as published on a room's channel.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Published {
    /// The room's number when it was appended.
    pub room_no: u32,
    /// The id of the room's entry before it (0: none).
    pub prev: u64,
    /// The entry.
    pub entry: LogEntry,
}

impl Published {
    /// Parses a published payload (see [`APPEND`]); `None` for anything else.
    pub(crate) fn parse(payload: &[u8]) -> Option<Published> {
        let payload = std::str::from_utf8(payload).ok()?;
        let mut parts = payload.splitn(10, '\n');
        if parts.next()? != "1" {
            return None;
        }
        let room_no = parts.next()?.parse().ok()?;
        let id = parts.next()?.parse().ok()?;
        let prev = parts.next()?.parse().ok()?;
        if parts.next()? != "m" {
            return None;
        }
        let origin = Origin::decode(parts.next()?);
        let user = parts.next()?.to_string();
        let ts = parts.next()?.parse().ok()?;
        let cid = Some(parts.next()?)
            .filter(|c| !c.is_empty())
            .map(String::from);
        let text = parts.next()?.to_string();
        Some(Published {
            room_no,
            prev,
            entry: LogEntry {
                id,
                origin,
                message: Message::new(user, text, ts, cid),
            },
        })
    }
}

/// The room logs, through a node's [`Link`].
#[derive(Clone)]
pub(crate) struct RoomLogs {
    link: Link,
    cid_ttl_secs: u64,
}

impl RoomLogs {
    /// Logs over `link`; cids are remembered for `cid_ttl_secs`.
    pub(crate) fn new(link: Link, cid_ttl_secs: u64) -> RoomLogs {
        RoomLogs {
            link,
            cid_ttl_secs: cid_ttl_secs.max(1),
        }
    }

    /// Loads room `name`, creating it (at `now_ms`) if it does not exist.
    pub(crate) async fn ensure_room(
        &self,
        name: &str,
        now_ms: u64,
    ) -> Result<RoomState, ClusterError> {
        let (no, last_id, created): (String, String, i64) = ensure_room_script()
            .key(keys::room(name))
            .key(keys::NEXT_ROOM_NO)
            .arg(now_ms)
            .invoke_async(&mut self.link.commands())
            .await?;
        Ok(RoomState {
            no: number(&no, "room number")?,
            last_id: number(&last_id, "room last_id")?,
            created: created == 1,
        })
    }

    /// Room `name` if it exists (`created` is false).
    pub(crate) async fn room(&self, name: &str) -> Result<Option<RoomState>, ClusterError> {
        let (no, last_id): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(keys::room(name))
            .arg("no")
            .arg("last_id")
            .query_async(&mut self.link.commands())
            .await?;
        let Some(no) = no else {
            return Ok(None);
        };
        Ok(Some(RoomState {
            no: number(&no, "room number")?,
            last_id: number(last_id.as_deref().unwrap_or("0"), "room last_id")?,
            created: false,
        }))
    }

    /// Appends `message` from `user_key` to `room`; see the module doc.
    pub(crate) async fn append(
        &self,
        room: &RoomRef,
        user_key: &str,
        message: &Message,
        origin: Origin,
    ) -> Result<Appended, ClusterError> {
        let cid = message.cid.as_deref().unwrap_or("");
        let reply: Vec<String> = append_script()
            .key(keys::room(&room.name))
            .key(keys::log(room.no))
            .key(keys::NEXT_ID)
            .key(keys::cid(user_key, cid))
            .arg(room.no)
            .arg(&message.user)
            .arg(&message.text)
            .arg(message.ts)
            .arg(cid)
            .arg(origin.encode())
            .arg(self.cid_ttl_secs)
            .arg(&*room.name)
            .arg(keys::feed(&room.name))
            .invoke_async(&mut self.link.commands())
            .await?;
        match reply.as_slice() {
            [kind, id, prev] if kind == "new" => Ok(Appended::New {
                id: number(id, "new id")?,
                prev: number(prev, "previous id")?,
            }),
            [kind, seen] if kind == "dup" => Ok(Appended::Duplicate(cid_entry(seen)?)),
            [kind] if kind == "gone" => Ok(Appended::RoomGone),
            other => Err(ClusterError::Corrupt(format!(
                "unexpected append reply {other:?}"
            ))),
        }
    }

    /// Entries of room `room_no` with `after < id <= upto`, oldest first, at most `limit`, and
    /// whether more follow.
    pub(crate) async fn entries_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<(Vec<LogEntry>, bool), ClusterError> {
        if after >= upto || limit == 0 {
            return Ok((Vec::new(), false));
        }
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys::log(room_no))
            .arg(format!("({}", keys::entry_id(after)))
            .arg(keys::entry_id(upto))
            .arg("COUNT")
            .arg(limit + 1)
            .query_async(&mut self.link.commands())
            .await?;
        entries(reply.ids, limit)
    }

    /// Messages of room `room_no` with `after < id <= upto`, oldest first, at most `limit`.
    pub(crate) async fn messages_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, ClusterError> {
        let (entries, more) = self.entries_after(room_no, after, upto, limit).await?;
        Ok(page(entries, more))
    }

    /// The newest messages of `room` with `id < before` and `id <= upto`, at most `limit`,
    /// oldest first.
    pub(crate) async fn messages_before(
        &self,
        room_no: u32,
        before: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, ClusterError> {
        let end = before.min(upto.saturating_add(1));
        if end <= 1 || limit == 0 {
            return Ok(Page::default());
        }
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(keys::log(room_no))
            .arg(format!("({}", keys::entry_id(end)))
            .arg("-")
            .arg("COUNT")
            .arg(limit + 1)
            .query_async(&mut self.link.commands())
            .await?;
        let (mut entries, more) = entries(reply.ids, limit)?;
        entries.reverse();
        Ok(page(entries, more))
    }
}

/// Up to `limit` entries, and whether more were read.
fn entries(ids: Vec<StreamId>, limit: usize) -> Result<(Vec<LogEntry>, bool), ClusterError> {
    let more = ids.len() > limit;
    let entries = ids
        .into_iter()
        .take(limit)
        .map(|entry| log_entry(&entry))
        .collect::<Result<_, _>>()?;
    Ok((entries, more))
}

fn page(entries: Vec<LogEntry>, more: bool) -> Page {
    let messages = entries
        .into_iter()
        .map(|e| StoredMessage {
            id: e.id,
            message: e.message,
        })
        .collect();
    Page { messages, more }
}

fn log_entry(entry: &StreamId) -> Result<LogEntry, ClusterError> {
    let id = entry
        .id
        .strip_suffix("-0")
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| ClusterError::Corrupt(format!("log entry id {:?}", entry.id)))?;
    let field = |name: &str| {
        entry
            .get::<String>(name)
            .ok_or_else(|| ClusterError::Corrupt(format!("log entry {id} has no field {name}")))
    };
    let cid = Some(field("c")?).filter(|c| !c.is_empty());
    let ts = number(&field("ts")?, "message time")?;
    Ok(LogEntry {
        id,
        origin: entry.get::<String>("o").as_deref().and_then(Origin::decode),
        message: Message::new(field("u")?, field("t")?, ts, cid),
    })
}

fn cid_entry(seen: &str) -> Result<CidEntry, ClusterError> {
    let mut parts = seen.split(' ');
    let (Some(room), Some(id), Some(ts), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ClusterError::Corrupt(format!("cid record {seen:?}")));
    };
    Ok(CidEntry {
        room: room.to_string(),
        id: number(id, "cid's id")?,
        ts: number(ts, "cid's time")?,
    })
}

fn number<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, ClusterError> {
    s.parse()
        .map_err(|_| ClusterError::Corrupt(format!("{what} {s:?} is not a number")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_lite::StreamExt;

    use super::super::testing::TestRedis;
    use super::*;
    use crate::config::Durability;

    fn logs(redis: &TestRedis) -> RoomLogs {
        let link = smol::block_on(Link::connect(&redis.url(), Durability::Strict)).expect("link");
        RoomLogs::new(link, 3600)
    }

    fn room_ref(name: &str, no: u32) -> RoomRef {
        RoomRef {
            name: Arc::from(name),
            no,
        }
    }

    fn message(user: &str, text: &str, cid: Option<&str>) -> Message {
        Message::new(
            user.into(),
            text.into(),
            1_764_255_000_000,
            cid.map(String::from),
        )
    }

    const ORIGIN: Origin = Origin { node: 7, conn: 42 };

    #[test]
    fn ids_increase_across_rooms_and_each_entry_names_the_one_before_it_in_its_room() {
        let redis = TestRedis::start();
        let logs = logs(&redis);
        smol::block_on(async {
            let a = logs.ensure_room("a", 1).await.unwrap();
            let b = logs.ensure_room("b", 1).await.unwrap();
            assert!(a.created && b.created && a.no != b.no);
            assert!(!logs.ensure_room("a", 2).await.unwrap().created);
            let (a, b) = (room_ref("a", a.no), room_ref("b", b.no));
            let m = message("alice", "hi", None);
            let first = logs.append(&a, "alice", &m, ORIGIN).await.unwrap();
            let other = logs.append(&b, "alice", &m, ORIGIN).await.unwrap();
            let second = logs.append(&a, "alice", &m, ORIGIN).await.unwrap();
            assert_eq!(first, Appended::New { id: 1, prev: 0 });
            assert_eq!(other, Appended::New { id: 2, prev: 0 });
            assert_eq!(second, Appended::New { id: 3, prev: 1 });
            assert_eq!(logs.ensure_room("a", 3).await.unwrap().last_id, 3);
        });
    }

    #[test]
    fn a_repeated_cid_stores_nothing_and_returns_the_original_in_any_room() {
        let redis = TestRedis::start();
        let logs = logs(&redis);
        smol::block_on(async {
            let a = room_ref("a", logs.ensure_room("a", 1).await.unwrap().no);
            let b = room_ref("b", logs.ensure_room("b", 1).await.unwrap().no);
            let sent = message("alice", "once", Some("c-1"));
            let Appended::New { id, .. } = logs.append(&a, "alice", &sent, ORIGIN).await.unwrap()
            else {
                panic!("stored")
            };
            let again = message("alice", "other text", Some("c-1"));
            assert_eq!(
                logs.append(&b, "alice", &again, ORIGIN).await.unwrap(),
                Appended::Duplicate(CidEntry {
                    room: "a".into(),
                    id,
                    ts: sent.ts
                })
            );
            // Another user's cid is their own.
            assert!(matches!(
                logs.append(&a, "bob", &again, ORIGIN).await.unwrap(),
                Appended::New { .. }
            ));
            let page = logs
                .messages_after(a.no, 0, u64::MAX >> 11, 10)
                .await
                .unwrap();
            let texts: Vec<_> = page
                .messages
                .iter()
                .map(|m| m.message.text.as_str())
                .collect();
            assert_eq!(texts, ["once", "other text"]);
            assert!(logs
                .messages_after(b.no, 0, 100, 10)
                .await
                .unwrap()
                .messages
                .is_empty());
        });
    }

    #[test]
    fn a_write_for_a_room_number_that_is_gone_stores_nothing() {
        let redis = TestRedis::start();
        let logs = logs(&redis);
        smol::block_on(async {
            let no = logs.ensure_room("a", 1).await.unwrap().no;
            let stale = room_ref("a", no + 1);
            let m = message("alice", "lost", Some("c"));
            assert_eq!(
                logs.append(&stale, "alice", &m, ORIGIN).await.unwrap(),
                Appended::RoomGone
            );
            // The cid stays free for the real room.
            let real = room_ref("a", no);
            assert!(matches!(
                logs.append(&real, "alice", &m, ORIGIN).await.unwrap(),
                Appended::New { .. }
            ));
        });
    }

    #[test]
    fn pages_keep_to_their_bounds_in_both_directions() {
        let redis = TestRedis::start();
        let logs = logs(&redis);
        smol::block_on(async {
            let a = room_ref("a", logs.ensure_room("a", 1).await.unwrap().no);
            for i in 1..=10 {
                let m = message("alice", &format!("m{i}"), None);
                logs.append(&a, "alice", &m, ORIGIN).await.unwrap();
            }
            let ids = |p: &Page| p.messages.iter().map(|m| m.id).collect::<Vec<_>>();
            let p = logs.messages_after(a.no, 2, 8, 3).await.unwrap();
            assert_eq!((ids(&p), p.more), (vec![3, 4, 5], true));
            let p = logs.messages_after(a.no, 5, 8, 3).await.unwrap();
            assert_eq!((ids(&p), p.more), (vec![6, 7, 8], false));
            let p = logs.messages_before(a.no, u64::MAX, 8, 3).await.unwrap();
            assert_eq!((ids(&p), p.more), (vec![6, 7, 8], true));
            let p = logs.messages_before(a.no, 4, 8, 5).await.unwrap();
            assert_eq!((ids(&p), p.more), (vec![1, 2, 3], false));
            assert_eq!(p.messages[0].message, message("alice", "m1", None));
        });
    }

    #[test]
    fn each_append_is_published_with_its_predecessor() {
        let redis = TestRedis::start();
        let logs = logs(&redis);
        smol::block_on(async {
            let a = room_ref("a", logs.ensure_room("a", 1).await.unwrap().no);
            let mut sub = logs.link.client().get_async_pubsub().await.unwrap();
            sub.subscribe(keys::feed("a")).await.unwrap();
            let text = "two\nlines and a \\ backslash";
            let m = message("alice", text, Some("c-9"));
            logs.append(&a, "alice", &m, ORIGIN).await.unwrap();
            logs.append(&a, "alice", &message("alice", "next", None), ORIGIN)
                .await
                .unwrap();
            let mut messages = sub.on_message();
            let first = messages.next().await.unwrap();
            let published = Published::parse(first.get_payload_bytes()).expect("parses");
            let entry = LogEntry {
                id: 1,
                origin: Some(ORIGIN),
                message: m,
            };
            assert_eq!(
                published,
                Published {
                    room_no: a.no,
                    prev: 0,
                    entry: entry.clone(),
                }
            );
            let second = messages.next().await.unwrap();
            let published = Published::parse(second.get_payload_bytes()).expect("parses");
            assert_eq!(
                (
                    published.prev,
                    published.entry.id,
                    published.entry.message.cid
                ),
                (1, 2, None)
            );
            // The log holds what was published, origin included.
            let (read, more) = logs.entries_after(a.no, 0, 1, 10).await.unwrap();
            assert_eq!((read, more), (vec![entry], false));
        });
    }
}
