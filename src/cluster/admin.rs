//! The admin commands that act on a cluster as a whole (`chatd admin … --cluster URL`): bans,
//! kicks and announcements reach the users on every node.
//!
//! They run in the CLI against Redis directly, with no node's admin socket involved. A ban is a
//! change of the user record in Redis (tokens revoked with the record's epoch, as on one server)
//! plus a request on the notices channel that every node answers by closing the user's
//! connections and reporting how many it closed; a kick is only that request; an announcement is
//! an ordinary message by `[system]` appended to each room's log, so every node delivers it in
//! order like any other.

use std::time::{Duration, Instant};

use super::accounts::ClusterAccounts;
use super::log::Changer;
use super::log::{Appended, Origin, RoomLogs};
use super::notices::{Closing, Notice};
use super::{keys, ClusterError, Link};
use crate::admin::{
    check_hash, check_user_name, room_name_or_usage, user_info, AdminError, Connection, Done,
    ErrorKind, Reply, RoomInfo, Stats, SYSTEM_AUTHOR,
};
use crate::config::Durability;
use crate::hub::now_ms;
use crate::rules;
use crate::store::maintenance::{message_line, session_line, unhex, user_line, Line};
use crate::store::{user_key, Message, RoomRef};
use crate::store::{Change, Event, NewUser, User};

/// Deletes a room's record and data if the record still has number ARGV[1]. KEYS: record,
/// log, overlay, edit index, presence. Replies the messages it held, or nil.
const DELETE_ROOM: &str = r"
if redis.call('HGET', KEYS[1], 'no') ~= ARGV[1] then return nil end
local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return count
";

/// How long a kick or ban waits for every node to report its closed connections.
const REPORT_WAIT: Duration = Duration::from_secs(3);

/// Cluster-wide admin commands, over one connection to the cluster's Redis.
pub struct ClusterAdmin {
    link: Link,
    logs: RoomLogs,
    accounts: ClusterAccounts,
}

fn failed(e: ClusterError) -> AdminError {
    AdminError::failed(format!("Redis: {e}"))
}

/// A random id for a request the nodes answer in Redis.
fn request_id() -> Result<String, AdminError> {
    let mut request = [0u8; 8];
    getrandom::fill(&mut request).map_err(|e| AdminError::failed(e.to_string()))?;
    Ok(format!("{:016x}", u64::from_le_bytes(request)))
}

fn no_room(name: &str) -> AdminError {
    AdminError::new(
        ErrorKind::NotFound,
        format!("there is no room `{name}` in the cluster"),
    )
}

fn done(summary: String, details: serde_json::Value) -> Reply {
    Reply::Done(Done { summary, details })
}

impl ClusterAdmin {
    /// Connects to the cluster's Redis.
    pub async fn connect(url: &str) -> Result<ClusterAdmin, AdminError> {
        let link = Link::connect(url, Durability::Strict)
            .await
            .map_err(|e| AdminError::failed(e.to_string()))?;
        Ok(ClusterAdmin {
            logs: RoomLogs::new(link.clone(), 48 * 3600),
            accounts: ClusterAccounts::new(link.clone()),
            link,
        })
    }

    async fn user_or_404(&self, name: &str) -> Result<crate::store::User, AdminError> {
        self.accounts
            .user(name)
            .await
            .map_err(failed)?
            .ok_or_else(|| {
                AdminError::new(
                    ErrorKind::NotFound,
                    format!("there is no user `{name}` in the cluster"),
                )
            })
    }

    /// Every key with `prefix`, without the prefix, sorted.
    async fn scan(&self, prefix: &str) -> Result<Vec<String>, AdminError> {
        let mut found_all = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.link.commands())
                .await
                .map_err(|e| failed(e.into()))?;
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

    /// `users list`.
    pub async fn users_list(&self) -> Result<Reply, AdminError> {
        let mut users = Vec::new();
        for key in self.scan(&keys::user("")).await? {
            if let Some(user) = self.accounts.user(&key).await.map_err(failed)? {
                users.push(user_info(&user));
            }
        }
        Ok(Reply::Users(users))
    }

    /// `users show`.
    pub async fn users_show(&self, name: &str) -> Result<Reply, AdminError> {
        Ok(Reply::User(user_info(&self.user_or_404(name).await?)))
    }

    /// `users add` (the CLI hashed the password).
    pub async fn users_add(&self, name: &str, password_hash: String) -> Result<Reply, AdminError> {
        check_user_name(name)?;
        check_hash(&password_hash)?;
        let user = User {
            name: name.to_string(),
            password_hash,
            created_ms: now_ms(),
            banned: false,
            token_epoch: 0,
        };
        if self.accounts.add_user(&user, false).await.map_err(failed)? != NewUser::Created {
            return Err(AdminError::new(
                ErrorKind::Conflict,
                format!("user `{name}` already exists; change the password with `chatd admin users passwd {name} --cluster …`"),
            ));
        }
        Ok(done(
            format!("created user {name}"),
            serde_json::json!({"user": name}),
        ))
    }

    /// `users passwd`: a new password; the user's tokens are revoked.
    pub async fn users_passwd(
        &self,
        name: &str,
        password_hash: String,
    ) -> Result<Reply, AdminError> {
        check_hash(&password_hash)?;
        let mut user = self.user_or_404(name).await?;
        user.password_hash = password_hash;
        user.token_epoch = user.token_epoch.wrapping_add(1);
        self.accounts.put_user(&user).await.map_err(failed)?;
        Ok(done(
            format!(
                "set the password of {}; their session tokens are revoked (connected clients stay connected until they reconnect)",
                user.name
            ),
            serde_json::json!({"user": user.name, "tokens_revoked": true}),
        ))
    }

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
        for name in self.scan(&keys::room("")).await? {
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
        for name in self.scan(&keys::room("")).await? {
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
        let Some((no, _, _, _)) = self.logs.room_record(name).await.map_err(failed)? else {
            return Err(no_room(name));
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
            .invoke_async(&mut self.link.commands())
            .await
            .map_err(|e| failed(e.into()))?;
        let Some(messages) = deleted else {
            return Err(AdminError::new(
                ErrorKind::NotFound,
                format!("room `{name}` was deleted meanwhile"),
            ));
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
        Ok(done(
            format!("deleted room {name} and its {messages} message(s)"),
            serde_json::json!({"room": name, "messages_deleted": messages}),
        ))
    }

    /// `messages delete --room ROOM IDS`: each a `deleted` event by `[system]`, delivered by
    /// every node to the room's members in order. Nothing is deleted unless every id is a
    /// message of the room.
    pub async fn messages_delete(&self, room: &str, ids: &[u64]) -> Result<Reply, AdminError> {
        if ids.is_empty() {
            return Err(AdminError::usage("name at least one message id"));
        }
        room_name_or_usage(room)?;
        let record = self
            .logs
            .room(room)
            .await
            .map_err(failed)?
            .ok_or_else(|| no_room(room))?;
        let mut missing = Vec::new();
        for &id in ids {
            let (found, _) = self
                .logs
                .entries_after(record.no, id.saturating_sub(1), id, 1)
                .await
                .map_err(failed)?;
            if !found
                .iter()
                .any(|e| e.id == id && matches!(e.body, super::log::Body::Message(_)))
            {
                missing.push(id.to_string());
            }
        }
        if !missing.is_empty() {
            return Err(AdminError::new(
                ErrorKind::NotFound,
                format!(
                    "no message with id {} in `{room}`; nothing was deleted",
                    missing.join(", ")
                ),
            ));
        }
        let room_ref = RoomRef {
            name: room.into(),
            no: record.no,
        };
        let changer = Changer {
            author_key: None,
            account_created_ms: 0,
            origin: Origin { node: 0, conn: 0 },
        };
        let mut deleted = Vec::new();
        for &id in ids {
            let event = Event {
                target: id,
                user: SYSTEM_AUTHOR.into(),
                ts: now_ms(),
                change: Change::Deleted,
            };
            let appended = self
                .logs
                .append_event(&room_ref, &changer, &event, None, u64::MAX)
                .await
                .map_err(failed)?;
            if let Appended::New { .. } = appended {
                deleted.push(serde_json::json!({"room": room, "id": id}));
            }
        }
        Ok(done(
            format!("deleted {} message(s)", deleted.len()),
            serde_json::json!({"deleted": deleted}),
        ))
    }

    /// `export`: everything the nodes share, as export lines (the format of a single node's
    /// export, so `import` takes it into either kind of server). Each room's messages are
    /// those up to its newest id when its record was read; the header's `id_floor` is the id
    /// counter before anything else is read, raised to every room's newest id.
    pub async fn export(
        &self,
        with_secrets: bool,
        sink: &mut dyn FnMut(Line) -> Result<(), AdminError>,
    ) -> Result<Reply, AdminError> {
        let floor: Option<u64> = redis::cmd("GET")
            .arg(keys::NEXT_ID)
            .query_async(&mut self.link.commands())
            .await
            .map_err(|e| failed(e.into()))?;
        let mut rooms = Vec::new();
        for name in self.scan(&keys::room("")).await? {
            if let Some(record) = self.logs.room_record(&name).await.map_err(failed)? {
                rooms.push((name, record));
            }
        }
        let id_floor = rooms
            .iter()
            .map(|(_, (_, _, last, _))| *last)
            .fold(floor.unwrap_or(0), u64::max);
        sink(Line::Header {
            format: "chatd-export".into(),
            version: 1,
            exported_ms: now_ms(),
            id_floor,
        })?;
        let mut counts = [0u64; 4];
        for key in self.scan(&keys::user("")).await? {
            let Some(user) = self.accounts.user(&key).await.map_err(failed)? else {
                continue;
            };
            counts[0] += 1;
            sink(user_line(user, with_secrets))?;
        }
        if with_secrets {
            for hash in self.scan(&keys::session(&[])).await? {
                let Some(bytes) = unhex(&hash) else {
                    continue;
                };
                let Some(session) = self.accounts.session(&bytes).await.map_err(failed)? else {
                    continue; // expired meanwhile
                };
                counts[1] += 1;
                sink(session_line(&bytes, session))?;
            }
        }
        for (name, (_, created_ms, last_id, count)) in &rooms {
            counts[2] += 1;
            sink(Line::Room {
                name: name.clone(),
                created_ms: *created_ms,
                last_id: *last_id,
                count: *count,
            })?;
        }
        for (name, (no, _, last_id, _)) in &rooms {
            let mut after = 0;
            loop {
                let page = self
                    .logs
                    .messages_after(*no, after, *last_id, 500)
                    .await
                    .map_err(failed)?;
                for m in page.messages {
                    after = m.id;
                    counts[3] += 1;
                    sink(message_line(name, m))?;
                }
                if !page.more {
                    break;
                }
            }
        }
        Ok(done(
            format!(
                "exported {} user(s), {} session(s), {} room(s), {} message(s)",
                counts[0], counts[1], counts[2], counts[3]
            ),
            serde_json::json!({"users": counts[0], "sessions": counts[1], "rooms": counts[2], "messages": counts[3], "with_secrets": with_secrets}),
        ))
    }

    /// `users ban`: the account can neither log in nor resume, on any node; its tokens are
    /// revoked and its connections everywhere closed with 1008.
    pub async fn ban(&self, name: &str) -> Result<Reply, AdminError> {
        let mut user = self.user_or_404(name).await?;
        user.banned = true;
        user.token_epoch = user.token_epoch.wrapping_add(1);
        self.accounts.put_user(&user).await.map_err(failed)?;
        let closed = self
            .close_everywhere(&user_key(&user.name), Closing::Ban)
            .await?;
        Ok(done(
            format!(
                "banned {}: tokens revoked, {closed} live connection(s) closed across the cluster",
                user.name
            ),
            serde_json::json!({"user": user.name, "banned": true, "closed_connections": closed}),
        ))
    }

    /// `users unban`.
    pub async fn unban(&self, name: &str) -> Result<Reply, AdminError> {
        let mut user = self.user_or_404(name).await?;
        user.banned = false;
        self.accounts.put_user(&user).await.map_err(failed)?;
        Ok(done(
            format!(
                "unbanned {}; they can log in again with their password",
                user.name
            ),
            serde_json::json!({"user": user.name, "banned": false}),
        ))
    }

    /// `kick`: closes the user's connections on every node with 1008.
    pub async fn kick(&self, name: &str) -> Result<Reply, AdminError> {
        if !rules::valid_user_name(name) {
            return Err(AdminError::usage(format!(
                "`{name}` is not a user name (1 to 32 of A-Z a-z 0-9 _ . -)"
            )));
        }
        let closed = self
            .close_everywhere(&user_key(name), Closing::Kick)
            .await?;
        if closed == 0 {
            return Err(AdminError::new(
                ErrorKind::NotFound,
                format!("`{name}` is not connected to any node"),
            ));
        }
        Ok(done(
            format!("closed {closed} connection(s) of {name} with 1008 across the cluster (they may reconnect; use `users ban` to keep them out)"),
            serde_json::json!({"user": name, "closed_connections": closed}),
        ))
    }

    /// `online`: every node's connections, oldest first (the nodes that answered within
    /// [`REPORT_WAIT`]).
    pub async fn online(&self) -> Result<Reply, AdminError> {
        let request = request_id()?;
        let nodes = self
            .publish(&Notice::Online {
                request: request.clone(),
            })
            .await?;
        let key = keys::online(&request);
        let deadline = Instant::now() + REPORT_WAIT;
        loop {
            let reported: u64 = redis::cmd("LLEN")
                .arg(&key)
                .query_async(&mut self.link.commands())
                .await
                .map_err(|e| failed(e.into()))?;
            if reported >= nodes || Instant::now() >= deadline {
                break;
            }
            // Waiting on other processes' reports in Redis: poll with a deadline.
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        let arrays: Vec<String> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.link.commands())
            .await
            .map_err(|e| failed(e.into()))?;
        let mut all: Vec<Connection> = Vec::new();
        for array in arrays {
            let connections: Vec<Connection> = serde_json::from_str(&array).map_err(|e| {
                AdminError::failed(format!(
                    "a node answered `online` with something unreadable: {e}"
                ))
            })?;
            all.extend(connections);
        }
        all.sort_by_key(|c| c.since_ms);
        Ok(Reply::Online(all))
    }

    /// Publishes `notice`; returns how many nodes received it.
    async fn publish(&self, notice: &Notice) -> Result<u64, AdminError> {
        redis::cmd("PUBLISH")
            .arg(keys::NOTICES)
            .arg(notice.payload())
            .query_async(&mut self.link.commands())
            .await
            .map_err(|e| failed(e.into()))
    }

    /// Asks every node to close `user_key`'s connections; returns how many they closed (those
    /// that reported within [`REPORT_WAIT`]).
    async fn close_everywhere(&self, user_key: &str, how: Closing) -> Result<u64, AdminError> {
        let request = request_id()?;
        let notice = Notice::Close {
            request: request.clone(),
            user_key: user_key.to_string(),
            how,
        };
        let nodes = self.publish(&notice).await?;
        let deadline = Instant::now() + REPORT_WAIT;
        loop {
            let (reported, closed): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
                .arg(keys::closing(&request))
                .arg("nodes")
                .arg("closed")
                .query_async(&mut self.link.commands())
                .await
                .map_err(|e| failed(e.into()))?;
            if reported.unwrap_or(0) >= nodes || Instant::now() >= deadline {
                return Ok(closed.unwrap_or(0));
            }
            // Waiting on other processes' reports in Redis: poll with a deadline.
            smol::Timer::after(Duration::from_millis(20)).await;
        }
    }

    /// `announce`: a message by `[system]` in room `room`, or in every room that is not a
    /// direct-message one.
    pub async fn announce(&self, room: Option<&str>, text: &str) -> Result<Reply, AdminError> {
        if let Err(e) = rules::check_text(text) {
            return Err(AdminError::usage(format!("announcement {}", e.reason())));
        }
        let rooms = match room {
            Some(name) => vec![name.to_string()],
            None => self.room_names().await?,
        };
        let mut posted = Vec::new();
        for name in rooms {
            let Some(record) = self.logs.room(&name).await.map_err(failed)? else {
                return Err(no_room(&name));
            };
            let message = Message::new(SYSTEM_AUTHOR.into(), text.into(), now_ms(), None);
            let room = RoomRef {
                name: name.as_str().into(),
                no: record.no,
            };
            let origin = Origin { node: 0, conn: 0 };
            let appended = self.logs.append(&room, "", &message, origin).await;
            // Anything but a new id: the room was deleted meanwhile, and nobody can see it.
            if let Appended::New { id, .. } = appended.map_err(failed)? {
                posted.push(serde_json::json!({"room": name, "id": id}));
            }
        }
        Ok(done(
            format!("announced in {} room(s)", posted.len()),
            serde_json::json!({"posted": posted}),
        ))
    }

    /// Every room's name but direct-message rooms', sorted.
    async fn room_names(&self) -> Result<Vec<String>, AdminError> {
        let names = self.scan(&keys::room("")).await?;
        Ok(names
            .into_iter()
            .filter(|n| !matches!(rules::dm_participants(n), Ok(Some(_))))
            .collect())
    }
}
