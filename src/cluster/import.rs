//! `chatd admin import --cluster URL`: a `chatd admin export` file loaded into a cluster's Redis,
//! the way to move a single-node database into a cluster (and to load accounts for benchmarks).
//!
//! The same rules as an import into the embedded store: existing users and sessions are kept
//! (the file's are skipped), rooms are created or their `last_id` raised, a message whose id a
//! room already holds (or is below its newest) is skipped, and the id counter ends above every
//! id the file names, so new messages never reuse one. Each chunk of one room's messages goes
//! in with one script: a chunk is stored whole or not at all.

use std::sync::OnceLock;

use redis::Script;

use super::accounts::ClusterAccounts;
use super::log::RoomLogs;
use super::{keys, ClusterError, Link};
use crate::config::Durability;
use crate::store::maintenance::{imported_session, imported_user, Imported, Line};
use crate::store::NewUser;

/// Messages of one room written by one script at most.
const CHUNK: usize = 500;

/// How long imported cids are remembered (as by a running node).
const CID_TTL_SECS: u64 = 48 * 3600;

/// Raises a counter to at least ARGV[1]. KEYS: the counter.
const RAISE: &str = r"
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
";

/// Raises a room's `last_id` and the id counter to at least ARGV[1]. KEYS: room record, id
/// counter.
const RAISE_ROOM: &str = r"
if tonumber(redis.call('HGET', KEYS[1], 'last_id') or '0') < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'last_id', ARGV[1])
end
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[1])
end
";

/// Stores a chunk of one room's messages, ascending by id. KEYS: room record, log, id counter,
/// overlay. ARGV: room no, cid ttl, room name, then six per message: id, author, text, ts, cid,
/// edited ts ('' for none). Replies how many were stored.
const MESSAGES: &str = r"
if redis.call('HGET', KEYS[1], 'no') ~= ARGV[1] then
  return redis.error_reply('the room changed during the import')
end
local top = tonumber(redis.call('HGET', KEYS[1], 'last_id') or '0')
local stored = 0
for i = 4, #ARGV, 6 do
  local id, user, text, ts, cid, edited = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local added = redis.pcall('XADD', KEYS[2], id .. '-0', 'k', 'm', 'u', user, 't', text, 'ts', ts, 'c', cid, 'o', '')
  if not (type(added) == 'table' and added.err) then
    stored = stored + 1
    if tonumber(id) > top then top = tonumber(id) end
    if edited ~= '' then redis.call('HSET', KEYS[4], id, edited .. '\n' .. text) end
    if cid ~= '' then
      redis.call('SET', 'chatd:cid:' .. string.lower(user) .. ':' .. cid, ARGV[3] .. ' ' .. id .. ' ' .. ts, 'NX', 'EX', ARGV[2])
    end
  end
end
redis.call('HSET', KEYS[1], 'last_id', top)
redis.call('HINCRBY', KEYS[1], 'count', stored)
if tonumber(redis.call('GET', KEYS[3]) or '0') < top then redis.call('SET', KEYS[3], top) end
return stored
";

fn script(cell: &'static OnceLock<Script>, code: &str) -> &'static Script {
    cell.get_or_init(|| Script::new(code))
}

/// An import into a cluster's Redis.
pub struct ClusterImport {
    link: Link,
    logs: RoomLogs,
    accounts: ClusterAccounts,
}

impl ClusterImport {
    /// Connects to the cluster's Redis (which must fsync every write, as for `chatd serve`).
    pub async fn connect(url: &str) -> Result<ClusterImport, ClusterError> {
        let link = Link::connect(url, Durability::Strict).await?;
        Ok(ClusterImport {
            logs: RoomLogs::new(link.clone(), CID_TTL_SECS),
            accounts: ClusterAccounts::new(link.clone()),
            link,
        })
    }

    /// Imports `lines` (a part of an export, in the file's order).
    pub async fn import(&self, lines: &[Line]) -> Result<Imported, ClusterError> {
        let mut report = Imported::default();
        let mut i = 0;
        while i < lines.len() {
            match &lines[i] {
                Line::Header { id_floor, .. } => self.raise_next_id(*id_floor).await?,
                line @ Line::User { .. } => {
                    if let Some(user) = imported_user(line) {
                        let created =
                            self.accounts.add_user(&user, false).await? == NewUser::Created;
                        report.count_user(created, line);
                    }
                }
                line @ Line::Session { .. } => {
                    let Some((hash, session)) = imported_session(line) else {
                        return Err(ClusterError::Corrupt(
                            "a session line's hash is not hex".into(),
                        ));
                    };
                    if self.accounts.insert_new_session(&hash, &session).await? {
                        report.sessions += 1;
                    }
                }
                Line::Room {
                    name,
                    created_ms,
                    last_id,
                    ..
                } => {
                    if self.logs.ensure_room(name, *created_ms).await?.created {
                        report.rooms += 1;
                    }
                    self.raise_room(name, *last_id).await?;
                }
                Line::Message { room, .. } => {
                    let start = i;
                    while i < lines.len()
                        && i - start < CHUNK
                        && matches!(&lines[i], Line::Message { room: r, .. } if r == room)
                    {
                        i += 1;
                    }
                    self.messages(room, &lines[start..i], &mut report).await?;
                    continue;
                }
            }
            i += 1;
        }
        Ok(report)
    }

    async fn raise_next_id(&self, floor: u64) -> Result<(), ClusterError> {
        static CELL: OnceLock<Script> = OnceLock::new();
        let () = script(&CELL, RAISE)
            .key(keys::NEXT_ID)
            .arg(floor)
            .invoke_async(&mut self.link.commands())
            .await?;
        Ok(())
    }

    async fn raise_room(&self, name: &str, last_id: u64) -> Result<(), ClusterError> {
        static CELL: OnceLock<Script> = OnceLock::new();
        let () = script(&CELL, RAISE_ROOM)
            .key(keys::room(name))
            .key(keys::NEXT_ID)
            .arg(last_id)
            .invoke_async(&mut self.link.commands())
            .await?;
        Ok(())
    }

    async fn messages(
        &self,
        room: &str,
        lines: &[Line],
        report: &mut Imported,
    ) -> Result<(), ClusterError> {
        let first_ts = lines.iter().find_map(|l| match l {
            Line::Message { ts, .. } => Some(*ts),
            _ => None,
        });
        let record = self.logs.ensure_room(room, first_ts.unwrap_or(0)).await?;
        if record.created {
            report.rooms += 1;
        }
        static CELL: OnceLock<Script> = OnceLock::new();
        let mut invocation = script(&CELL, MESSAGES).prepare_invoke();
        invocation
            .key(keys::room(room))
            .key(keys::log(record.no))
            .key(keys::NEXT_ID)
            .key(keys::overlay(record.no))
            .arg(record.no)
            .arg(CID_TTL_SECS)
            .arg(room);
        let mut sorted: Vec<&Line> = lines.iter().collect();
        sorted.sort_by_key(|l| match l {
            Line::Message { id, .. } => *id,
            _ => 0,
        });
        let mut count = 0;
        for line in sorted {
            if let Line::Message {
                id,
                user,
                text,
                ts,
                cid,
                edited_ts,
                ..
            } = line
            {
                count += 1;
                invocation
                    .arg(id)
                    .arg(user)
                    .arg(text)
                    .arg(ts)
                    .arg(cid.as_deref().unwrap_or(""))
                    .arg(edited_ts.map_or(String::new(), |t| t.to_string()));
            }
        }
        let stored: u64 = invocation.invoke_async(&mut self.link.commands()).await?;
        report.messages += stored;
        report.messages_skipped += count - stored;
        Ok(())
    }
}
