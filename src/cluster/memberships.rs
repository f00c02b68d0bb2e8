//! Each user's standing in rooms in Redis (protocol 1.1): read markers and the conversation
//! list, shared by every node, with the same rules as the embedded store's memberships.
//!
//! A user's memberships are one hash, `room → "{read}:{left_at}"` (`left_at` empty while the
//! room is on the list), changed by Lua scripts so each change is a compare-and-set of one
//! field: a marker only moves forward (an admin's reset aside), two connections on two nodes
//! never lose each other's change.
//!
//! Unread counts read at most [`UNREAD_CAP`] of other users' messages per room (and at most four
//! times that of the user's own), newest first, as the embedded store does; nothing is cached.

use std::sync::OnceLock;

use redis::Script;

use super::log::{Body, RoomLogs};
use super::{keys, ClusterError, Link};
use crate::rules;
use crate::store::{listed, Conversation, Membership, StoredMessage, UNREAD_CAP};

/// The user's own messages skipped at most while counting one room's unread ones.
const OWN_SKIP_CAP: u64 = 4 * UNREAD_CAP;

/// Entries read at a time while counting.
const COUNT_PAGE: usize = 200;

/// Changes one membership. KEYS: the user's memberships. ARGV: room, operation, id, the notices
/// channel and the user's key (these two used by `mark` and `reset`). Replies the marker in
/// force (`list`, `mark`), or 1/0 (`unlist`: changed; `set`, `reset`: existed). `mark` and
/// `reset` publish the marker in force on the notices channel in the same step, so every node
/// sees a user's markers in the order they took effect: a marker moves backwards only by an
/// admin's reset.
const CHANGE: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
local read, left = 0, nil
if v then
  local sep = string.find(v, ':', 1, true)
  read = tonumber(string.sub(v, 1, sep - 1))
  left = string.sub(v, sep + 1)
end
local op, id = ARGV[2], tonumber(ARGV[3])
if op == 'list' then
  if v and left == '' then return read end
  redis.call('HSET', KEYS[1], ARGV[1], read .. ':')
  return read
elseif op == 'unlist' then
  if not v or left ~= '' then return 0 end
  redis.call('HSET', KEYS[1], ARGV[1], read .. ':' .. ARGV[3])
  return 1
elseif op == 'mark' then
  local now = read
  if not v then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ':0')
    now = id
  elseif read < id then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ':' .. left)
    now = id
  end
  redis.call('PUBLISH', ARGV[4], 'R\n' .. ARGV[5] .. '\n' .. ARGV[1] .. '\n' .. string.format('%d', now))
  return now
elseif op == 'reset' then
  if not v then return 0 end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ':' .. left)
  redis.call('PUBLISH', ARGV[4], 'R\n' .. ARGV[5] .. '\n' .. ARGV[1] .. '\n' .. ARGV[3])
  return 1
elseif op == 'set' then
  if not v then return 0 end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ':' .. left)
  return 1
elseif op == 'dm' then
  redis.call('HSETNX', KEYS[1], ARGV[1], '0:0')
  return 1
end
return redis.error_reply('unknown membership operation ' .. op)
";

fn change_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(CHANGE))
}

/// Memberships, through a node's [`Link`].
#[derive(Clone)]
pub(crate) struct ClusterMemberships {
    link: Link,
}

impl ClusterMemberships {
    /// Memberships over `link`.
    pub(crate) fn new(link: Link) -> ClusterMemberships {
        ClusterMemberships { link }
    }

    async fn change(
        &self,
        user_key: &str,
        room: &str,
        op: &str,
        id: u64,
    ) -> Result<u64, ClusterError> {
        Ok(change_script()
            .key(keys::memberships(user_key))
            .arg(room)
            .arg(op)
            .arg(id)
            .arg(keys::NOTICES)
            .arg(user_key)
            .invoke_async(&mut self.link.commands())
            .await?)
    }

    /// `user_key`'s membership of `room`, if any.
    pub(crate) async fn membership(
        &self,
        user_key: &str,
        room: &str,
    ) -> Result<Option<Membership>, ClusterError> {
        let value: Option<String> = redis::cmd("HGET")
            .arg(keys::memberships(user_key))
            .arg(room)
            .query_async(&mut self.link.commands())
            .await?;
        value.map(|v| parse(&v)).transpose()
    }

    /// Every membership of `user_key`, by room name.
    pub(crate) async fn memberships(
        &self,
        user_key: &str,
    ) -> Result<Vec<(String, Membership)>, ClusterError> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(keys::memberships(user_key))
            .query_async(&mut self.link.commands())
            .await?;
        all.into_iter()
            .map(|(room, v)| Ok((room, parse(&v)?)))
            .collect()
    }

    /// Puts `room` on `user_key`'s list (a join); returns the read marker there.
    pub(crate) async fn list_room(&self, user_key: &str, room: &str) -> Result<u64, ClusterError> {
        self.change(user_key, room, "list", 0).await
    }

    /// Takes `room` off `user_key`'s list (a `leave`); `last_id` is the room's newest id now.
    pub(crate) async fn unlist_room(
        &self,
        user_key: &str,
        room: &str,
        last_id: u64,
    ) -> Result<(), ClusterError> {
        self.change(user_key, room, "unlist", last_id)
            .await
            .map(drop)
    }

    /// Moves `user_key`'s marker in `room` forward to `id`; returns the marker in force, which
    /// every node hands to the user's connections (published by the same script).
    pub(crate) async fn mark_read(
        &self,
        user_key: &str,
        room: &str,
        id: u64,
    ) -> Result<u64, ClusterError> {
        self.change(user_key, room, "mark", id).await
    }

    /// Sets `user_key`'s marker in `room` to `id`, backwards too (an admin's reset); every node
    /// hands it to the user's connections. Returns whether the user had a marker there.
    pub(crate) async fn reset_read(
        &self,
        user_key: &str,
        room: &str,
        id: u64,
    ) -> Result<bool, ClusterError> {
        Ok(self.change(user_key, room, "reset", id).await? == 1)
    }

    /// Removes every membership of `user_key` (an account deleted); returns how many it had.
    pub(crate) async fn remove_all(&self, user_key: &str) -> Result<u64, ClusterError> {
        let (count,): (u64,) = redis::pipe()
            .atomic()
            .hlen(keys::memberships(user_key))
            .del(keys::memberships(user_key))
            .ignore()
            .query_async(&mut self.link.commands())
            .await?;
        Ok(count)
    }

    /// Gives both users of a direct-message room a membership (not joined), so it shows on
    /// their lists once it holds a message. Does nothing for other rooms.
    pub(crate) async fn add_dm_memberships(&self, room: &str) -> Result<(), ClusterError> {
        let Ok(Some((a, b))) = rules::dm_participants(room) else {
            return Ok(());
        };
        for user in [a, b] {
            self.change(user, room, "dm", 0).await?;
        }
        Ok(())
    }

    /// `room` (number `room_no`, newest visible id `upto`) as an entry of `reader`'s list, or
    /// `None` if it is not on it (the rules of the embedded store's `Store::conversation`).
    pub(crate) async fn conversation(
        &self,
        logs: &RoomLogs,
        reader: &str,
        room: &str,
        room_no: u32,
        membership: &Membership,
        upto: u64,
    ) -> Result<Option<Conversation>, ClusterError> {
        let last = last_message(logs, room_no, upto).await?;
        if !listed(room, membership, last.as_ref()) {
            return Ok(None);
        }
        let (unread, mentions) = count_unread(logs, reader, room_no, membership.read, upto).await?;
        Ok(Some(Conversation {
            last_id: upto,
            read: membership.read,
            unread,
            mentions,
            last,
        }))
    }
}

/// `reader`'s standing in `room` (number `room_no`, newest visible id `upto`) as an admin sees
/// it: other users' messages above the marker (capped) and whether the room is on the list.
pub(crate) async fn read_state(
    logs: &RoomLogs,
    reader: &str,
    room: &str,
    room_no: u32,
    membership: &Membership,
    upto: u64,
) -> Result<(u64, bool), ClusterError> {
    let last = last_message(logs, room_no, upto).await?;
    let (unread, _) = count_unread(logs, reader, room_no, membership.read, upto).await?;
    Ok((unread, listed(room, membership, last.as_ref())))
}

async fn last_message(
    logs: &RoomLogs,
    room_no: u32,
    upto: u64,
) -> Result<Option<StoredMessage>, ClusterError> {
    Ok(logs
        .messages_before(room_no, u64::MAX, upto, 1)
        .await?
        .messages
        .pop())
}

/// Other users' messages in `(read, upto]` and how many mention `reader`, newest first, up to
/// the caps.
async fn count_unread(
    logs: &RoomLogs,
    reader: &str,
    room_no: u32,
    read: u64,
    upto: u64,
) -> Result<(u64, u64), ClusterError> {
    let (mut unread, mut mentions, mut own) = (0, 0, 0);
    let mut before = upto.saturating_add(1);
    while before > read + 1 {
        let page = logs
            .entries_before(room_no, before, read, COUNT_PAGE)
            .await?;
        let Some(oldest) = page.last() else {
            break;
        };
        before = oldest.id;
        for entry in &page {
            let Body::Message(message) = &entry.body else {
                continue;
            };
            if message.user.eq_ignore_ascii_case(reader) {
                own += 1;
                if own == OWN_SKIP_CAP {
                    return Ok((unread, mentions));
                }
                continue;
            }
            unread += 1;
            if rules::mentions(&message.text, reader) {
                mentions += 1;
            }
            if unread == UNREAD_CAP {
                return Ok((unread, mentions));
            }
        }
        if page.len() < COUNT_PAGE {
            break;
        }
    }
    Ok((unread, mentions))
}

fn parse(value: &str) -> Result<Membership, ClusterError> {
    let corrupt = || ClusterError::Corrupt(format!("membership {value:?}"));
    let (read, left) = value.split_once(':').ok_or_else(corrupt)?;
    Ok(Membership {
        read: read.parse().map_err(|_| corrupt())?,
        left_at: match left {
            "" => None,
            left => Some(left.parse().map_err(|_| corrupt())?),
        },
    })
}
