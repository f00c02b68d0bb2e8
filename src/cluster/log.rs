//! A room's log in Redis: one Stream per room, appended by Lua scripts so that taking the id,
//! checking the cid, adding the entry, updating the room and publishing the entry are one
//! atomic step on the one Redis every node shares.
//!
//! A log holds messages and events (edits and deletions of its messages, protocol 1.1), all
//! numbered from the same ids. A message's entry never changes: its current text, once edited,
//! is in the room's overlay hash; a deletion removes the message's entry and its edits' entries
//! from the stream (so no read finds its text again) and leaves the `deleted` event.
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
//! - An edit or deletion is checked (the target is a message of the room, not deleted, at most
//!   the id the writer's node has published, by the author unless an admin) in the script that
//!   stores it.

use std::collections::HashMap;
use std::sync::OnceLock;

use redis::streams::{StreamId, StreamRangeReply};
use redis::{Script, ScriptInvocation};

use super::{keys, ClusterError, Link};
use crate::store::{Change, CidEntry, Event, Message, Page, RoomRef, StoredMessage};

/// The part both append scripts start with: the cid and the room's number. KEYS: room record,
/// log, id counter, cid key. ARGV: room no, …, ts (4), cid (5).
const CHECK: &str = r"
local cid = ARGV[5]
if cid ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then return {'dup', seen} end
end
if redis.call('HGET', KEYS[1], 'no') ~= ARGV[1] then return {'gone'} end
";

/// The part both append scripts end with: the entry's id taken and published. ARGV: 6 origin,
/// 7 cid ttl, 8 room name, 9 channel; `fields` the entry's fields, `published` the payload's
/// kind-specific part.
const COMMIT: &str = r"
local id = string.format('%d', redis.call('INCR', KEYS[3]))
local prev = redis.call('HGET', KEYS[1], 'last_id') or '0'
local entry = {'o', ARGV[6], 'c', cid, 'ts', ARGV[4]}
for _, v in ipairs(fields) do entry[#entry + 1] = v end
redis.call('XADD', KEYS[2], id .. '-0', unpack(entry))
redis.call('HSET', KEYS[1], 'last_id', id)
if cid ~= '' then
  redis.call('SET', KEYS[4], ARGV[8] .. ' ' .. id .. ' ' .. ARGV[4], 'EX', ARGV[7])
end
local payload = {'1', ARGV[1], id, prev, ARGV[6], ARGV[4], cid}
for _, v in ipairs(published) do payload[#payload + 1] = v end
redis.call('PUBLISH', ARGV[9], table.concat(payload, '\n'))
";

/// Appends a message. ARGV beyond the shared ones: 2 author name, 3 text. Replies
/// `{'new', id, prev}`, `{'dup', 'room id ts'}` or `{'gone'}`.
const APPEND_MESSAGE: &str = r"
local fields = {'k', 'm', 'u', ARGV[2], 't', ARGV[3]}
local published = {'m', ARGV[2], ARGV[3]}
redis.call('HINCRBY', KEYS[1], 'count', 1)
";

/// Appends an edit or a deletion. KEYS beyond the shared ones: 5 the room's overlay (current
/// texts of edited messages), 6 the room's edit index (a message's edit ids). ARGV beyond the
/// shared ones: 2 author name, 3 new text (edits), 10 target id, 11 `edited` or `deleted`,
/// 12 the author's key ('' for an admin), 13 when the author's account was created, 14 the
/// highest id the writer's node has published. Replies as an append, or `{'not_found'}`,
/// `{'forbidden'}`.
const APPEND_EVENT: &str = r"
local target = ARGV[10]
if tonumber(target) > tonumber(ARGV[14]) then return {'not_found'} end
local found = redis.call('XRANGE', KEYS[2], target .. '-0', target .. '-0')
if #found == 0 then return {'not_found'} end
local f = {}
local raw = found[1][2]
for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
if f['k'] == 'e' then return {'not_found'} end
if ARGV[12] ~= '' and (string.lower(f['u']) ~= ARGV[12] or tonumber(f['ts']) < tonumber(ARGV[13])) then
  return {'forbidden'}
end
local fields = {'k', 'e', 'u', ARGV[2], 'ch', ARGV[11], 'tg', target, 't', ARGV[3]}
local published = {'e', ARGV[2], ARGV[11], target, ARGV[3]}
";

/// What an edit or deletion does to the message after its event is appended (`id`).
const APPLY_EVENT: &str = r"
if ARGV[11] == 'edited' then
  redis.call('HSET', KEYS[5], target, ARGV[4] .. '\n' .. ARGV[3])
  local edits = redis.call('HGET', KEYS[6], target)
  redis.call('HSET', KEYS[6], target, edits and (edits .. ',' .. id) or id)
else
  remove_message(KEYS[1], KEYS[2], KEYS[5], KEYS[6], target)
end
";

/// A Lua function that removes message `id` from a room: its entry, its edits' entries (which
/// hold its earlier texts), its current text and edit index entry, and one from the room's
/// count. Arguments: the room's record, log, overlay and edit index keys, and the id. Shared by
/// deletions and pruning.
pub(crate) const REMOVE_MESSAGE: &str = r"
local function remove_message(record, log, overlay, edit_index, id)
  redis.call('XDEL', log, id .. '-0')
  local edits = redis.call('HGET', edit_index, id)
  if edits then
    for seq in string.gmatch(edits, '%d+') do redis.call('XDEL', log, seq .. '-0') end
  end
  redis.call('HDEL', overlay, id)
  redis.call('HDEL', edit_index, id)
  redis.call('HINCRBY', record, 'count', -1)
end
";

/// Creates a room record unless it exists. Replies `{no, last_id, created}`.
const ENSURE_ROOM: &str = r"
local no = redis.call('HGET', KEYS[1], 'no')
if no then return {no, redis.call('HGET', KEYS[1], 'last_id') or '0', 0} end
no = string.format('%d', redis.call('INCR', KEYS[2]))
redis.call('HSET', KEYS[1], 'no', no, 'created_ms', ARGV[1], 'last_id', '0', 'count', '0')
return {no, '0', 1}
";

/// The script that appends a message.
pub(crate) fn append_message_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        Script::new(&format!(
            "{CHECK}{APPEND_MESSAGE}{COMMIT}return {{'new', id, prev}}"
        ))
    })
}

fn append_event_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        Script::new(&format!(
            "{REMOVE_MESSAGE}{CHECK}{APPEND_EVENT}{COMMIT}{APPLY_EVENT}return {{'new', id, prev}}"
        ))
    })
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
    /// An edit's or deletion's target is not a message of the room (any more).
    NotFound,
    /// An edit's or deletion's target is someone else's message.
    Forbidden,
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

/// What an entry of a log holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Body {
    /// A message (in its current state when read from the log).
    Message(Message),
    /// An edit or deletion of one of the room's messages.
    Event(Event),
}

/// An entry of a room's log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LogEntry {
    /// The entry's id (an event's seq).
    pub id: u64,
    /// Who appended it (`None` for entries written by other tools).
    pub origin: Option<Origin>,
    /// The writer's cid, if any.
    pub cid: Option<String>,
    /// The message or event.
    pub body: Body,
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
    /// Parses a published payload (see [`COMMIT`]); `None` for anything else.
    pub(crate) fn parse(payload: &[u8]) -> Option<Published> {
        let payload = std::str::from_utf8(payload).ok()?;
        let mut parts = payload.splitn(8, '\n');
        if parts.next()? != "1" {
            return None;
        }
        let room_no = parts.next()?.parse().ok()?;
        let id = parts.next()?.parse().ok()?;
        let prev = parts.next()?.parse().ok()?;
        let origin = Origin::decode(parts.next()?);
        let ts: u64 = parts.next()?.parse().ok()?;
        let cid = Some(parts.next()?)
            .filter(|c| !c.is_empty())
            .map(String::from);
        let rest = parts.next()?;
        let body = match rest.split_once('\n')? {
            ("m", rest) => {
                let (user, text) = rest.split_once('\n')?;
                Body::Message(Message::new(user.into(), text.into(), ts, cid.clone()))
            }
            ("e", rest) => {
                let mut parts = rest.splitn(4, '\n');
                let user = parts.next()?.to_string();
                let kind = parts.next()?;
                let target = parts.next()?.parse().ok()?;
                Body::Event(event(user, ts, kind, target, parts.next()?)?)
            }
            _ => return None,
        };
        Some(Published {
            room_no,
            prev,
            entry: LogEntry {
                id,
                origin,
                cid,
                body,
            },
        })
    }
}

fn event(user: String, ts: u64, kind: &str, target: u64, text: &str) -> Option<Event> {
    let change = match kind {
        "edited" => Change::Edited {
            text: Some(text.to_string()),
            replaced: None,
        },
        "deleted" => Change::Deleted,
        _ => return None,
    };
    Some(Event {
        target,
        user,
        ts,
        change,
    })
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

    /// The link the logs are read and written through.
    pub(super) fn link(&self) -> &Link {
        &self.link
    }

    /// Every room's name, sorted.
    pub(crate) async fn room_names(&self) -> Result<Vec<String>, ClusterError> {
        self.link.keys_with_prefix(&keys::room("")).await
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

    /// Room `name`'s record as an admin sees it: number, creation time, newest id, messages
    /// held; `None` if there is no such room.
    pub(crate) async fn room_record(
        &self,
        name: &str,
    ) -> Result<Option<(u32, u64, u64, u64)>, ClusterError> {
        let fields: (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ) = redis::cmd("HMGET")
            .arg(keys::room(name))
            .arg("no")
            .arg("created_ms")
            .arg("last_id")
            .arg("count")
            .query_async(&mut self.link.commands())
            .await?;
        let (Some(no), created, last, count) = fields else {
            return Ok(None);
        };
        let num = |v: Option<String>, what: &str| number(v.as_deref().unwrap_or("0"), what);
        Ok(Some((
            number(&no, "room number")?,
            num(created, "room creation time")?,
            num(last, "room last_id")?,
            num(count, "room count")?,
        )))
    }

    /// The times of the oldest and newest messages of room `room_no`.
    pub(crate) async fn ends(
        &self,
        room_no: u32,
    ) -> Result<(Option<u64>, Option<u64>), ClusterError> {
        let max = (1u64 << 53) - 1;
        let first = self.messages_after(room_no, 0, max, 1).await?;
        let last = self.messages_before(room_no, u64::MAX, max, 1).await?;
        let ts = |p: Page| p.messages.first().map(|m| m.message.ts);
        Ok((ts(first), ts(last)))
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
        let script = self.message_append(room, user_key, message, origin);
        appended(script.invoke_async(&mut self.link.commands()).await?)
    }

    /// The script run that appends `message` from `user_key` to `room` (for a writer that
    /// pipelines many: [`super::writer`]); its reply is read with [`appended`].
    pub(crate) fn message_append(
        &self,
        room: &RoomRef,
        user_key: &str,
        message: &Message,
        origin: Origin,
    ) -> ScriptInvocation<'static> {
        let cid = message.cid.as_deref().unwrap_or("");
        let mut script = append_message_script().prepare_invoke();
        let written = Written {
            user_key,
            cid,
            ts: message.ts,
            origin,
            author: &message.user,
            text: &message.text,
        };
        self.shared_args(&mut script, room, &written);
        script
    }

    /// Appends `event` by `changer` to `room`; `published` is the highest id the changer's
    /// node has announced.
    pub(crate) async fn append_event(
        &self,
        room: &RoomRef,
        changer: &Changer<'_>,
        event: &Event,
        cid: Option<&str>,
        published: u64,
    ) -> Result<Appended, ClusterError> {
        let Changer {
            author_key,
            account_created_ms,
            origin,
        } = *changer;
        let cid = cid.unwrap_or("");
        let (kind, text) = match &event.change {
            Change::Edited { text, .. } => ("edited", text.as_deref().unwrap_or("")),
            Change::Deleted => ("deleted", ""),
        };
        let mut script = append_event_script().prepare_invoke();
        let key = author_key.unwrap_or("");
        let written = Written {
            user_key: key,
            cid,
            ts: event.ts,
            origin,
            author: &event.user,
            text,
        };
        self.shared_args(&mut script, room, &written);
        script
            .key(keys::overlay(room.no))
            .key(keys::edits(room.no))
            .arg(event.target)
            .arg(kind)
            .arg(key)
            .arg(account_created_ms)
            .arg(published);
        appended(script.invoke_async(&mut self.link.commands()).await?)
    }

    /// The keys and arguments both append scripts take (see [`CHECK`], [`COMMIT`]): KEYS 1–4
    /// and ARGV 1–9; an event's follow.
    fn shared_args(&self, script: &mut redis::ScriptInvocation<'_>, room: &RoomRef, w: &Written) {
        script
            .key(keys::room(&room.name))
            .key(keys::log(room.no))
            .key(keys::NEXT_ID)
            .key(keys::cid(w.user_key, w.cid))
            .arg(room.no)
            .arg(w.author)
            .arg(w.text)
            .arg(w.ts)
            .arg(w.cid)
            .arg(w.origin.encode())
            .arg(self.cid_ttl_secs)
            .arg(&*room.name)
            .arg(keys::feed(&room.name));
    }

    /// Entries of room `room_no` with `after < id <= upto`, oldest first, at most `limit`
    /// (messages in their current state), and whether more follow.
    pub(crate) async fn entries_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<(Vec<LogEntry>, bool), ClusterError> {
        let (mut entries, more) = self
            .written_entries_after(room_no, after, upto, limit)
            .await?;
        self.apply_edits(room_no, &mut entries).await?;
        Ok((entries, more))
    }

    /// As [`RoomLogs::entries_after`], but messages as they were sent (edits not applied).
    pub(crate) async fn written_entries_after(
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
        let more = reply.ids.len() > limit;
        Ok((parse_entries(reply.ids.into_iter().take(limit))?, more))
    }

    /// Hands `visit` the entries of room `room_no` with `after < id <= upto` as written, oldest
    /// first, a page at a time, until it returns false or the log ends.
    pub(crate) async fn scan_written(
        &self,
        room_no: u32,
        mut after: u64,
        upto: u64,
        mut visit: impl FnMut(LogEntry) -> bool,
    ) -> Result<(), ClusterError> {
        const PAGE: usize = 500;
        loop {
            let (entries, more) = self
                .written_entries_after(room_no, after, upto, PAGE)
                .await?;
            for entry in entries {
                after = entry.id;
                if !visit(entry) {
                    return Ok(());
                }
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// The ids of the edits of message `id` of room `room_no` that its entry still has (none
    /// once it is deleted), oldest first.
    pub(crate) async fn edit_ids(&self, room_no: u32, id: u64) -> Result<Vec<u64>, ClusterError> {
        let edits: Option<String> = redis::cmd("HGET")
            .arg(keys::edits(room_no))
            .arg(id)
            .query_async(&mut self.link.commands())
            .await?;
        edits
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| number(s, "edit id"))
            .collect()
    }

    /// Entries of room `room_no` with `after < id < before`, newest first, at most `limit`
    /// (messages in their current state).
    pub(crate) async fn entries_before(
        &self,
        room_no: u32,
        before: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, ClusterError> {
        if before <= after + 1 || limit == 0 {
            return Ok(Vec::new());
        }
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(keys::log(room_no))
            .arg(format!("({}", keys::entry_id(before)))
            .arg(format!("({}", keys::entry_id(after)))
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.link.commands())
            .await?;
        let mut entries = parse_entries(reply.ids.into_iter())?;
        self.apply_edits(room_no, &mut entries).await?;
        Ok(entries)
    }

    /// Messages of room `room_no` with `after < id <= upto`, oldest first, at most `limit`
    /// (events skipped), and whether more messages follow.
    pub(crate) async fn messages_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, ClusterError> {
        // One message beyond the page tells whether more follow.
        let mut messages = Vec::new();
        let mut cursor = after;
        while messages.len() <= limit {
            let want = limit + 1 - messages.len();
            let (entries, more) = self.entries_after(room_no, cursor, upto, want).await?;
            cursor = entries.last().map_or(cursor, |e| e.id);
            messages.extend(entries.into_iter().filter_map(stored_message));
            if !more {
                break;
            }
        }
        let more = messages.len() > limit;
        messages.truncate(limit);
        Ok(Page { messages, more })
    }

    /// The newest messages of room `room_no` with `id < before` and `id <= upto`, at most
    /// `limit`, oldest first (events skipped), and whether older messages exist.
    pub(crate) async fn messages_before(
        &self,
        room_no: u32,
        before: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, ClusterError> {
        let mut newest_first = Vec::new();
        let mut end = before.min(upto.saturating_add(1));
        while newest_first.len() <= limit && end > 1 {
            let want = limit + 1 - newest_first.len();
            let reply: StreamRangeReply = redis::cmd("XREVRANGE")
                .arg(keys::log(room_no))
                .arg(format!("({}", keys::entry_id(end)))
                .arg("-")
                .arg("COUNT")
                .arg(want)
                .query_async(&mut self.link.commands())
                .await?;
            let read = reply.ids.len();
            let mut entries = parse_entries(reply.ids.into_iter())?;
            self.apply_edits(room_no, &mut entries).await?;
            end = entries.last().map_or(0, |e| e.id);
            newest_first.extend(entries.into_iter().filter_map(stored_message));
            if read < want {
                break;
            }
        }
        let more = newest_first.len() > limit;
        newest_first.truncate(limit);
        newest_first.reverse();
        Ok(Page {
            messages: newest_first,
            more,
        })
    }

    /// Replaces the texts of edited messages among `entries` with their current ones.
    async fn apply_edits(
        &self,
        room_no: u32,
        entries: &mut [LogEntry],
    ) -> Result<(), ClusterError> {
        let ids: Vec<u64> = entries
            .iter()
            .filter(|e| is_message(e))
            .map(|e| e.id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let current: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(keys::overlay(room_no))
            .arg(&ids)
            .query_async(&mut self.link.commands())
            .await?;
        let edited: HashMap<u64, String> = ids
            .into_iter()
            .zip(current)
            .filter_map(|(id, v)| Some((id, v?)))
            .collect();
        for entry in entries {
            if let (Body::Message(message), Some(current)) =
                (&mut entry.body, edited.get(&entry.id))
            {
                let (ts, text) = current
                    .split_once('\n')
                    .ok_or_else(|| ClusterError::Corrupt(format!("edited text of {}", entry.id)))?;
                message.edited_ts = Some(number(ts, "edit time")?);
                message.text = text.to_string();
            }
        }
        Ok(())
    }
}

/// Who changes a message: its author (whose account was created at `account_created_ms`: a
/// newer account of the same name is someone else), or an admin (`author_key` `None`).
#[derive(Clone, Copy)]
pub(crate) struct Changer<'a> {
    /// The author's key, or `None` for an admin.
    pub author_key: Option<&'a str>,
    /// When the author's account was created.
    pub account_created_ms: u64,
    /// Where the change comes from.
    pub origin: Origin,
}

/// What both append scripts write: by whom, when, with which cid, from where, and the text.
struct Written<'a> {
    user_key: &'a str,
    cid: &'a str,
    ts: u64,
    origin: Origin,
    author: &'a str,
    text: &'a str,
}

/// What an append script's reply says.
pub(crate) fn appended(reply: Vec<String>) -> Result<Appended, ClusterError> {
    match reply.as_slice() {
        [kind, id, prev] if kind == "new" => Ok(Appended::New {
            id: number(id, "new id")?,
            prev: number(prev, "previous id")?,
        }),
        [kind, seen] if kind == "dup" => Ok(Appended::Duplicate(cid_entry(seen)?)),
        [kind] if kind == "gone" => Ok(Appended::RoomGone),
        [kind] if kind == "not_found" => Ok(Appended::NotFound),
        [kind] if kind == "forbidden" => Ok(Appended::Forbidden),
        other => Err(ClusterError::Corrupt(format!(
            "unexpected append reply {other:?}"
        ))),
    }
}

fn is_message(entry: &LogEntry) -> bool {
    matches!(entry.body, Body::Message(_))
}

fn stored_message(entry: LogEntry) -> Option<StoredMessage> {
    match entry.body {
        Body::Message(message) => Some(StoredMessage {
            id: entry.id,
            message,
        }),
        Body::Event(_) => None,
    }
}

fn parse_entries(ids: impl Iterator<Item = StreamId>) -> Result<Vec<LogEntry>, ClusterError> {
    ids.map(|entry| log_entry(&entry)).collect()
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
    let ts = number(&field("ts")?, "entry time")?;
    let body = match entry.get::<String>("k").as_deref() {
        Some("e") => {
            let target = number(&field("tg")?, "event target")?;
            let kind = field("ch")?;
            Body::Event(
                event(field("u")?, ts, &kind, target, &field("t")?)
                    .ok_or_else(|| ClusterError::Corrupt(format!("log entry {id}: {kind:?}")))?,
            )
        }
        _ => Body::Message(Message::new(field("u")?, field("t")?, ts, cid.clone())),
    };
    Ok(LogEntry {
        id,
        origin: entry.get::<String>("o").as_deref().and_then(Origin::decode),
        cid,
        body,
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

    use super::super::testing::Redis as TestRedis;
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
                cid: Some("c-9".into()),
                body: Body::Message(m),
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
                (published.prev, published.entry.id, published.entry.cid),
                (1, 2, None)
            );
            // The log holds what was published, origin included.
            let (read, more) = logs.entries_after(a.no, 0, 1, 10).await.unwrap();
            assert_eq!((read, more), (vec![entry], false));
        });
    }

    fn edit(user: &str, target: u64, text: &str) -> Event {
        Event {
            target,
            user: user.into(),
            ts: 1_764_255_001_000,
            change: Change::Edited {
                text: Some(text.into()),
                replaced: None,
            },
        }
    }

    fn delete(user: &str, target: u64) -> Event {
        Event {
            target,
            user: user.into(),
            ts: 1_764_255_002_000,
            change: Change::Deleted,
        }
    }

    /// Appends `event` by `author` (an admin if `None`), anything published.
    async fn change(
        logs: &RoomLogs,
        room: &RoomRef,
        event: Event,
        author: Option<&str>,
        cid: Option<&str>,
    ) -> Appended {
        let changer = Changer {
            author_key: author,
            account_created_ms: 0,
            origin: ORIGIN,
        };
        logs.append_event(room, &changer, &event, cid, MAX)
            .await
            .unwrap()
    }

    const MAX: u64 = (1 << 53) - 1;

    #[test]
    fn edits_and_deletions_are_checked_stored_as_events_and_change_what_reads_return() {
        let redis = TestRedis::start();
        let logs = logs(&redis);
        smol::block_on(async {
            let a = room_ref("a", logs.ensure_room("a", 1).await.unwrap().no);
            let sent = message("alice", "frist", None);
            let Appended::New { id, .. } = logs.append(&a, "alice", &sent, ORIGIN).await.unwrap()
            else {
                panic!("stored")
            };
            // Someone else's message, or one that is not there.
            let by_bob = change(&logs, &a, edit("bob", id, "x"), Some("bob"), None).await;
            assert_eq!(by_bob, Appended::Forbidden);
            let missing = change(&logs, &a, edit("alice", 99, "x"), Some("alice"), None).await;
            assert_eq!(missing, Appended::NotFound);
            let fixed = edit("alice", id, "first");
            let Appended::New { id: seq, prev } =
                change(&logs, &a, fixed.clone(), Some("alice"), Some("e1")).await
            else {
                panic!("edit stored")
            };
            assert_eq!(prev, id);
            // A repeated cid is the original's.
            let again = change(&logs, &a, edit("alice", id, "x"), Some("alice"), Some("e1")).await;
            assert!(matches!(again, Appended::Duplicate(CidEntry { id, .. }) if id == seq));
            let page = logs.messages_after(a.no, 0, 1000, 10).await.unwrap();
            assert_eq!(page.messages.len(), 1, "the event is not a message");
            let current = &page.messages[0].message;
            assert_eq!(current.text, "first");
            assert_eq!(current.edited_ts, Some(1_764_255_001_000));
            let (entries, _) = logs.entries_after(a.no, 0, 1000, 10).await.unwrap();
            assert_eq!(entries.len(), 2);
            assert_eq!(entries[1].body, Body::Event(fixed));
            assert_eq!(entries[1].cid.as_deref(), Some("e1"));

            // An admin may delete anyone's; the text and its edits are gone from the log.
            let removal = delete("[system]", id);
            let Appended::New { id: deleted, .. } =
                change(&logs, &a, removal.clone(), None, None).await
            else {
                panic!("deletion stored")
            };
            assert!(logs
                .messages_after(a.no, 0, 1000, 10)
                .await
                .unwrap()
                .messages
                .is_empty());
            let (entries, _) = logs.entries_after(a.no, 0, 1000, 10).await.unwrap();
            let left: Vec<_> = entries.iter().map(|e| (e.id, e.body.clone())).collect();
            assert_eq!(left, [(deleted, Body::Event(removal))]);
            let twice = change(&logs, &a, delete("alice", id), Some("alice"), None).await;
            assert_eq!(twice, Appended::NotFound);
        });
    }

    #[test]
    fn an_edit_beyond_what_the_node_published_or_by_a_newer_account_is_refused() {
        let redis = TestRedis::start();
        let logs = logs(&redis);
        smol::block_on(async {
            let a = room_ref("a", logs.ensure_room("a", 1).await.unwrap().no);
            let sent = message("alice", "hi", None);
            let Appended::New { id, .. } = logs.append(&a, "alice", &sent, ORIGIN).await.unwrap()
            else {
                panic!("stored")
            };
            let event = edit("alice", id, "hello");
            let mut changer = Changer {
                author_key: Some("alice"),
                account_created_ms: 0,
                origin: ORIGIN,
            };
            let outcome = logs
                .append_event(&a, &changer, &event, None, id - 1)
                .await
                .unwrap();
            assert_eq!(outcome, Appended::NotFound);
            // An account made after the message (a new account of that name) may not edit it.
            changer.account_created_ms = sent.ts + 1;
            let outcome = logs
                .append_event(&a, &changer, &event, None, id)
                .await
                .unwrap();
            assert_eq!(outcome, Appended::Forbidden);
        });
    }

    #[test]
    fn history_pages_skip_events_and_say_whether_more_messages_exist() {
        let redis = TestRedis::start();
        let logs = logs(&redis);
        smol::block_on(async {
            let a = room_ref("a", logs.ensure_room("a", 1).await.unwrap().no);
            let mut ids = Vec::new();
            for i in 0..4 {
                let m = message("alice", &format!("m{i}"), None);
                let Appended::New { id, .. } = logs.append(&a, "alice", &m, ORIGIN).await.unwrap()
                else {
                    panic!("stored")
                };
                ids.push(id);
                // An edit after every message: pages must read past them.
                change(
                    &logs,
                    &a,
                    edit("alice", id, &format!("m{i}!")),
                    Some("alice"),
                    None,
                )
                .await;
            }
            let of = |p: &Page| p.messages.iter().map(|m| m.id).collect::<Vec<_>>();
            let p = logs.messages_after(a.no, 0, MAX, 2).await.unwrap();
            assert_eq!((of(&p), p.more), (ids[..2].to_vec(), true));
            let p = logs.messages_after(a.no, ids[1], MAX, 2).await.unwrap();
            assert_eq!((of(&p), p.more), (ids[2..].to_vec(), false));
            let p = logs.messages_before(a.no, MAX, MAX, 3).await.unwrap();
            assert_eq!((of(&p), p.more), (ids[1..].to_vec(), true));
            let p = logs.messages_before(a.no, ids[1], MAX, 3).await.unwrap();
            assert_eq!((of(&p), p.more), (ids[..1].to_vec(), false));
            assert_eq!(p.messages[0].message.text, "m0!");
        });
    }
}
