//! `rooms …` and `stats` on a cluster: room records and logs in Redis; a deleted room is
//! dropped by every node (its members there get `left`).

use super::{done, failed, no_room, ClusterAdmin};
use crate::admin::{room_name_or_usage, AdminError, Reply, RoomInfo, Stats};
use crate::cluster::keys;
use crate::cluster::notices::Notice;
use crate::rules;

/// Deletes a room's record and data if the record still has number ARGV[1] and, with ARGV[2]
/// = '1', the room holds no message and nobody is online in it. KEYS: record, log, overlay,
/// edit index, presence. Replies the messages it held, or nil.
const DELETE_ROOM: &str = r"
if redis.call('HGET', KEYS[1], 'no') ~= ARGV[1] then return nil end
local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
if ARGV[2] == '1' and (count > 0 or redis.call('HLEN', KEYS[5]) > 0) then return nil end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return count
";

impl ClusterAdmin {
    async fn room_info(&self, name: &str) -> Result<Option<RoomInfo>, AdminError> {
        let Some((no, created_ms, last_id, count)) =
            self.logs.room_record(name).await.map_err(failed)?
        else {
            return Ok(None);
        };
        let (oldest_ts, newest_ts) = self.logs.ends(no).await.map_err(failed)?;
        let (mut participants, mut participants_deleted) = (None, Vec::new());
        if let Ok(Some((a, b))) = rules::dm_participants(name) {
            let mut names = Vec::with_capacity(2);
            for key in [a, b] {
                match self.accounts.user(key).await.map_err(failed)? {
                    Some(user) => names.push(user.name),
                    None => {
                        names.push(key.to_owned());
                        participants_deleted.push(key.to_owned());
                    }
                }
            }
            participants = Some(names);
        }
        Ok(Some(RoomInfo {
            name: name.to_string(),
            created_ms,
            messages: count,
            last_id,
            oldest_ts,
            newest_ts,
            online: None,
            participants,
            participants_deleted,
        }))
    }

    /// `rooms list` (`dm`: direct-message rooms only).
    pub async fn rooms_list(&self, dm: bool) -> Result<Reply, AdminError> {
        let mut rooms = Vec::new();
        for name in self.logs.room_names().await.map_err(failed)? {
            if dm && !matches!(rules::dm_participants(&name), Ok(Some(_))) {
                continue;
            }
            rooms.extend(self.room_info(&name).await?);
        }
        Ok(Reply::Rooms(rooms))
    }

    /// `rooms show`.
    pub async fn rooms_show(&self, name: &str) -> Result<Reply, AdminError> {
        room_name_or_usage(name)?;
        self.room_info(name)
            .await?
            .map(Reply::Room)
            .ok_or_else(|| no_room(name))
    }

    /// `stats`: what the cluster's Redis holds (no per-node figures).
    pub async fn stats(&self) -> Result<Reply, AdminError> {
        let users: Option<u64> = redis::cmd("GET")
            .arg(keys::USER_COUNT)
            .query_async(&mut self.link.commands())
            .await
            .map_err(|e| failed(e.into()))?;
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut self.link.commands())
            .await
            .map_err(|e| failed(e.into()))?;
        let aof_bytes = info
            .lines()
            .find_map(|l| l.strip_prefix("aof_current_size:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut stats = Stats {
            users: users.unwrap_or(0),
            rooms: 0,
            dm_rooms: 0,
            messages: 0,
            db_bytes: aof_bytes,
            oldest_ts: None,
            newest_ts: None,
            server: None,
        };
        for name in self.logs.room_names().await.map_err(failed)? {
            let Some(room) = self.room_info(&name).await? else {
                continue;
            };
            stats.rooms += 1;
            stats.dm_rooms += u64::from(room.participants.is_some());
            stats.messages += room.messages;
            if let Some(ts) = room.oldest_ts {
                stats.oldest_ts = Some(stats.oldest_ts.map_or(ts, |o| o.min(ts)));
            }
            if let Some(ts) = room.newest_ts {
                stats.newest_ts = Some(stats.newest_ts.map_or(ts, |n| n.max(ts)));
            }
        }
        Ok(Reply::Stats(stats))
    }

    /// `rooms delete`: the room, its log and everyone's marker and list entry for it; its
    /// members on every node get `left`, and a later join creates a new, empty room.
    pub async fn rooms_delete(&self, name: &str) -> Result<Reply, AdminError> {
        room_name_or_usage(name)?;
        let Some(messages) = self.delete_room(name).await? else {
            return Err(no_room(name));
        };
        Ok(done(
            format!("deleted room {name} and its {messages} message(s)"),
            serde_json::json!({"room": name, "messages_deleted": messages}),
        ))
    }

    /// Deletes room `name` (see `rooms delete`); returns the messages it held, or `None` if
    /// there is no such room.
    pub(super) async fn delete_room(&self, name: &str) -> Result<Option<u64>, AdminError> {
        self.delete_room_if(name, false).await
    }

    /// Deletes room `name`, with `only_unused` only if it holds no message and nobody is online
    /// in it on any node (checked in the same step as the deletion).
    async fn delete_room_if(
        &self,
        name: &str,
        only_unused: bool,
    ) -> Result<Option<u64>, AdminError> {
        let Some((no, _, _, _)) = self.logs.room_record(name).await.map_err(failed)? else {
            return Ok(None);
        };
        // One step: a send racing with it finds the room gone (the record's number is checked
        // by every append) or lands before, and goes with the log.
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let deleted: Option<u64> = SCRIPT
            .get_or_init(|| redis::Script::new(DELETE_ROOM))
            .key(keys::room(name))
            .key(keys::log(no))
            .key(keys::overlay(no))
            .key(keys::edits(no))
            .key(keys::presence(name))
            .arg(no)
            .arg(if only_unused { "1" } else { "0" })
            .invoke_async(&mut self.link.commands())
            .await
            .map_err(|e| failed(e.into()))?;
        let Some(messages) = deleted else {
            return Ok(None);
        };
        for user in self.scan(&keys::memberships("")).await? {
            let () = redis::cmd("HDEL")
                .arg(keys::memberships(&user))
                .arg(name)
                .query_async(&mut self.link.commands())
                .await
                .map_err(|e| failed(e.into()))?;
        }
        self.publish(&Notice::RoomDeleted {
            room: name.to_string(),
        })
        .await?;
        Ok(Some(messages))
    }

    /// `rooms prune --empty --older-than T [--dm] [--dry-run]`: deletes every room created
    /// before `created_before_ms` that holds no message and has nobody online on any node.
    pub async fn rooms_prune_empty(
        &self,
        created_before_ms: u64,
        dry_run: bool,
        dm: bool,
    ) -> Result<Reply, AdminError> {
        let mut names = Vec::new();
        for name in self.logs.room_names().await.map_err(failed)? {
            let is_dm = matches!(rules::dm_participants(&name), Ok(Some(_)));
            if dm && !is_dm {
                continue;
            }
            let Some((_, created_ms, _, count)) =
                self.logs.room_record(&name).await.map_err(failed)?
            else {
                continue;
            };
            let online: u64 = redis::cmd("HLEN")
                .arg(keys::presence(&name))
                .query_async(&mut self.link.commands())
                .await
                .map_err(|e| failed(e.into()))?;
            if count == 0 && created_ms < created_before_ms && online == 0 {
                names.push(name);
            }
        }
        let mut deleted = 0u64;
        if !dry_run {
            for name in &names {
                deleted += u64::from(self.delete_room_if(name, true).await?.is_some());
            }
        }
        let (verb, n) = if dry_run {
            ("would delete", names.len() as u64)
        } else {
            ("deleted", deleted)
        };
        let kind = if dm { "empty direct-message" } else { "empty" };
        Ok(done(
            format!("{verb} {n} {kind} room(s)"),
            serde_json::json!({"rooms_deleted": deleted, "rooms_matched": names.len(), "dry_run": dry_run}),
        ))
    }
}
