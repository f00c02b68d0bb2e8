//! `chatd admin`: one implementation of every administrative command.
//!
//! A command is a serializable [`Request`]; [`execute`] runs it against a [`Store`] and, when a
//! server is running, its live `State` (hub, committer), and returns a [`Reply`] or an
//! [`AdminError`]. The CLI runs `execute` itself when no server holds the database, and
//! otherwise ships the request as one JSON line over the server's admin socket
//! (`socket`), where the server runs the very same `execute` on its blocking pool.
//!
//! Moderation on a live server goes through the hub, so connected clients see it: deleted
//! messages produce `deleted` events, bans and kicks close connections with 1008, deleted rooms
//! send `left`, announcements are ordinary durable messages.

pub mod conversations;
pub mod format;
pub mod offline;
pub mod progress;
pub(crate) mod socket;

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::progress::{Report, Tick};
use crate::hub::now_ms;
use crate::outbox::CloseRequest;
use crate::protocol::{close, ErrorCode, Rejection};
use crate::rules;
use crate::state::State;
use crate::store::maintenance::{Found, Imported, Line, PruneRule, PrunedRoom, Search};
use crate::store::{user_key, Store, StoreError, User};
use conversations::{MessageHistory, ReadMarkers};

/// The author shown on announcements. It is not a valid user name (brackets), so no account
/// can ever post under it.
pub const SYSTEM_AUTHOR: &str = "[system]";

/// Largest admin request line the server accepts (import batches are the big ones).
pub const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// An administrative command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Counts and server status.
    Stats,
    /// All accounts.
    UsersList,
    /// One account.
    UsersShow {
        /// User name (any case).
        name: String,
    },
    /// Create an account.
    UsersAdd {
        /// User name.
        name: String,
        /// argon2 PHC hash, computed by the CLI (the password never travels).
        password_hash: String,
    },
    /// Set a password (revokes the user's tokens).
    UsersPasswd {
        /// User name.
        name: String,
        /// argon2 PHC hash.
        password_hash: String,
    },
    /// Ban: revoke tokens, refuse logins, close live connections with 1008.
    UsersBan {
        /// User name.
        name: String,
    },
    /// Lift a ban.
    UsersUnban {
        /// User name.
        name: String,
    },
    /// Delete an account.
    UsersDelete {
        /// User name.
        name: String,
        /// Also delete every message the user wrote.
        delete_messages: bool,
    },
    /// All rooms.
    RoomsList {
        /// Only direct-message rooms.
        #[serde(default)]
        dm: bool,
    },
    /// One room.
    RoomsShow {
        /// Room name.
        name: String,
    },
    /// Delete a room and its messages.
    RoomsDelete {
        /// Room name.
        name: String,
    },
    /// Delete, in one go, every room that holds no message, has nobody in it and was created
    /// before `created_before_ms` (cleanup after a room-creation flood).
    RoomsPruneEmpty {
        /// Only rooms created before this time, ms since the Unix epoch.
        created_before_ms: u64,
        /// Only count them.
        dry_run: bool,
        /// Only direct-message rooms.
        #[serde(default)]
        dm: bool,
    },
    /// Search messages.
    MessagesList(Search),
    /// One message's current state and its edit and delete history.
    MessagesShow {
        /// Room name.
        room: String,
        /// Message id.
        id: u64,
    },
    /// A user's read markers.
    UsersReads {
        /// User name (any case).
        name: String,
        /// Only this room.
        room: Option<String>,
    },
    /// Set a user's read markers back (to 0 or `to`); live connections get `read` frames.
    UsersReadsReset {
        /// User name (any case).
        name: String,
        /// Only this room (else every room the user has a marker in).
        room: Option<String>,
        /// The marker to set (lowered to each room's newest id).
        to: u64,
    },
    /// Delete messages by id.
    MessagesDelete {
        /// Message ids.
        ids: Vec<u64>,
        /// Only look in this room.
        room: Option<String>,
    },
    /// Remove old messages.
    Prune {
        /// What to remove.
        rule: PruneRule,
        /// Only this room.
        room: Option<String>,
        /// Only report what would go.
        dry_run: bool,
    },
    /// Connected users (live only).
    Online,
    /// Close a user's connections with 1008 (live only).
    Kick {
        /// User name.
        name: String,
    },
    /// Post a system message (live only).
    Announce {
        /// One room, else every room.
        room: Option<String>,
        /// Text.
        text: String,
    },
    /// Stream the database as export lines.
    Export {
        /// Include password hashes and sessions.
        with_secrets: bool,
    },
    /// Apply a batch of export lines.
    Import {
        /// The lines, in file order.
        lines: Vec<Line>,
    },
}

impl Request {
    /// The command's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Stats => "stats",
            Request::UsersList => "users list",
            Request::UsersShow { .. } => "users show",
            Request::UsersAdd { .. } => "users add",
            Request::UsersPasswd { .. } => "users passwd",
            Request::UsersBan { .. } => "users ban",
            Request::UsersUnban { .. } => "users unban",
            Request::UsersDelete { .. } => "users delete",
            Request::RoomsList { .. } => "rooms list",
            Request::RoomsShow { .. } => "rooms show",
            Request::RoomsDelete { .. } => "rooms delete",
            Request::RoomsPruneEmpty { .. } => "rooms prune",
            Request::MessagesList(_) => "messages list",
            Request::MessagesShow { .. } => "messages show",
            Request::UsersReads { .. } => "users reads",
            Request::UsersReadsReset { .. } => "users reads reset",
            Request::MessagesDelete { .. } => "messages delete",
            Request::Prune { .. } => "prune",
            Request::Online => "online",
            Request::Kick { .. } => "kick",
            Request::Announce { .. } => "announce",
            Request::Export { .. } => "export",
            Request::Import { .. } => "import",
        }
    }
}

/// Database and server figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Accounts.
    pub users: u64,
    /// Rooms (direct-message rooms included).
    pub rooms: u64,
    /// Of those, direct-message rooms.
    #[serde(default)]
    pub dm_rooms: u64,
    /// Messages (sum of the rooms' counters).
    pub messages: u64,
    /// Bytes the database occupies on disk.
    pub db_bytes: u64,
    /// Oldest message time.
    pub oldest_ts: Option<u64>,
    /// Newest message time.
    pub newest_ts: Option<u64>,
    /// Present when a server is running.
    pub server: Option<ServerStats>,
}

/// Figures only a running server has.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerStats {
    /// chatd version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Authenticated connections.
    pub connections: u64,
    /// Distinct users connected.
    pub online_users: u64,
}

/// An account as shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserInfo {
    /// Name as registered.
    pub name: String,
    /// Registration time.
    pub created_ms: u64,
    /// Whether banned.
    pub banned: bool,
    /// Whether the account has a usable password (imported accounts may not).
    pub has_password: bool,
    /// Token epoch (bumped by ban and passwd).
    pub token_epoch: u32,
    /// Valid sessions (only in `users show`).
    pub sessions: Option<u64>,
    /// Live connections (only with a running server).
    pub connections: Option<u64>,
}

/// A room as shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoomInfo {
    /// Name.
    pub name: String,
    /// Creation time.
    pub created_ms: u64,
    /// Messages held.
    pub messages: u64,
    /// Newest id ever assigned in the room.
    pub last_id: u64,
    /// Oldest message time.
    pub oldest_ts: Option<u64>,
    /// Newest message time.
    pub newest_ts: Option<u64>,
    /// Users online in the room (only in `rooms show` with a running server).
    pub online: Option<Vec<String>>,
    /// The two users of a direct-message room, as registered (absent for other rooms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participants: Option<Vec<String>>,
    /// Those of the two whose account no longer exists (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants_deleted: Vec<String>,
}

/// A live connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Connection {
    /// User.
    pub user: String,
    /// Peer address.
    pub peer: String,
    /// Authenticated at.
    pub since_ms: u64,
    /// Rooms joined.
    pub rooms: Vec<String>,
}

/// Result of `prune`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PruneReport {
    /// Nothing was removed.
    pub dry_run: bool,
    /// The rule applied.
    pub rule: PruneRule,
    /// Total removed (or that would be).
    pub removed: u64,
    /// Per room, only rooms with something to remove.
    pub rooms: Vec<PrunedRoom>,
}

/// What `users delete` did, on one server or a cluster.
pub(crate) struct UserDeleted {
    pub(crate) name: String,
    pub(crate) sessions: u64,
    pub(crate) closed: u64,
    /// The messages deleted with the account (`None`: kept).
    pub(crate) messages_deleted: Option<u64>,
    pub(crate) markers: u64,
    pub(crate) dm_rooms: Vec<String>,
}

impl UserDeleted {
    /// The reply; `closed_where` follows the count of closed connections (" across the
    /// cluster").
    pub(crate) fn reply(self, closed_where: &str) -> Reply {
        let UserDeleted {
            name,
            sessions,
            closed,
            messages_deleted,
            markers,
            dm_rooms,
        } = self;
        let what = match messages_deleted {
            Some(n) => format!("{n} message(s) deleted"),
            None => "their messages kept".to_owned(),
        };
        Reply::Done(Done {
            summary: format!(
                "deleted user {name}: {sessions} session(s) revoked, {closed} live connection(s) closed{closed_where}, {what}, {} direct-message room(s) deleted",
                dm_rooms.len()
            ),
            details: serde_json::json!({"user": name, "sessions_revoked": sessions,
                "closed_connections": closed, "messages_deleted": messages_deleted.unwrap_or(0),
                "read_markers_deleted": markers, "dm_rooms_deleted": dm_rooms}),
        })
    }
}

/// Result of a command that changes something.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Done {
    /// One sentence for people.
    pub summary: String,
    /// Figures for scripts.
    pub details: serde_json::Value,
}

/// What a command returns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// `stats`.
    Stats(Stats),
    /// `users list`.
    Users(Vec<UserInfo>),
    /// `users show`.
    User(UserInfo),
    /// `rooms list`.
    Rooms(Vec<RoomInfo>),
    /// `rooms show`.
    Room(RoomInfo),
    /// `messages list`.
    Messages(Vec<Found>),
    /// `messages show`.
    MessageHistory(MessageHistory),
    /// `users reads`.
    ReadMarkers(ReadMarkers),
    /// `online`.
    Online(Vec<Connection>),
    /// `prune`.
    Pruned(PruneReport),
    /// `import` (one batch).
    Imported(Imported),
    /// Everything else.
    Done(Done),
}

/// How a command failed; decides the exit code.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad arguments (exit 2). Nothing was changed.
    Usage,
    /// The named user, room or message does not exist.
    NotFound,
    /// The thing exists already.
    Conflict,
    /// The command needs a running server and there is none.
    NeedsServer,
    /// The command needs the server to be stopped.
    NeedsOffline,
    /// Anything else.
    Failed,
}

/// A failed command: one sentence that says what to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    /// Category.
    pub kind: ErrorKind,
    /// The sentence.
    pub message: String,
}

impl AdminError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> AdminError {
        AdminError {
            kind,
            message: message.into(),
        }
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> AdminError {
        AdminError::new(ErrorKind::Usage, message)
    }

    /// A general failure.
    pub fn failed(message: impl Into<String>) -> AdminError {
        AdminError::new(ErrorKind::Failed, message)
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            ErrorKind::Usage => 2,
            _ => 1,
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> AdminError {
        AdminError::failed(e.to_string())
    }
}

impl From<crate::hub::HubError> for AdminError {
    fn from(e: crate::hub::HubError) -> AdminError {
        match e {
            crate::hub::HubError::RoomGone => {
                AdminError::failed("the room was deleted while the command ran")
            }
            crate::hub::HubError::Store(e) => e.into(),
            e @ crate::hub::HubError::NotFound => {
                AdminError::new(ErrorKind::NotFound, e.to_string())
            }
            e @ (crate::hub::HubError::Unloaded
            | crate::hub::HubError::TooManyRooms { .. }
            | crate::hub::HubError::Forbidden
            | crate::hub::HubError::Cluster(_)) => AdminError::failed(e.to_string()),
        }
    }
}

/// What a command runs against: the store, and the server's state when it runs.
pub struct Context<'a> {
    /// The database.
    pub store: &'a Store,
    /// The running server, when the command arrived over its admin socket.
    pub live: Option<&'a State>,
    /// Receives progress of the long commands (`prune`, `rooms prune`), when someone watches.
    pub progress: Option<Report<'a>>,
}

impl Context<'_> {
    /// Makes everything written so far durable: through the committer when live (so it is
    /// ordered with chat traffic), else by flushing.
    fn sync(&self) -> Result<(), AdminError> {
        match self.live {
            Some(state) => smol::block_on(state.hub.committer().barrier())
                .map_err(|e| AdminError::failed(format!("writing to disk failed: {e}"))),
            None => self.store.flush().map_err(Into::into),
        }
    }

    /// Reports progress, if someone watches.
    fn tick(&self, done: u64, total: Option<u64>, note: impl FnOnce() -> Option<String>) {
        if let Some(report) = self.progress {
            report(&Tick {
                done,
                total,
                note: note(),
            });
        }
    }

    fn live(&self, what: &str) -> Result<&State, AdminError> {
        self.live.ok_or_else(|| {
            AdminError::new(
                ErrorKind::NeedsServer,
                format!("`{what}` needs a running server, and none is running on this data directory; start one with `chatd serve`"),
            )
        })
    }

    /// Pause between chunks of a long job on a live server, so chat is not starved.
    fn breather(&self) -> impl FnMut() {
        let live = self.live.is_some();
        move || {
            if live {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Deletes messages `ids` of `room` as sequenced `deleted` events by `[system]`: through the hub
/// when a server runs (so members see them at once, in order with chat traffic), else straight
/// into the store. Returns how many were deleted; durable after the next [`Context::sync`].
fn delete_messages_as_admin(ctx: &Context, room: &str, ids: &[u64]) -> Result<u64, AdminError> {
    match ctx.live {
        Some(state) => {
            let mut deleted = 0;
            for &id in ids {
                match state.hub.delete_as_admin(room, id) {
                    Ok(_) => deleted += 1,
                    Err(crate::hub::HubError::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(deleted)
        }
        None => Ok(ctx.store.delete_as_events(
            room,
            ids,
            crate::hub::SYSTEM_AUTHOR,
            crate::hub::now_ms(),
            &mut ctx.breather(),
        )?),
    }
}

fn user_or_404(store: &Store, name: &str) -> Result<User, AdminError> {
    store.user(name)?.ok_or_else(|| {
        AdminError::new(
            ErrorKind::NotFound,
            format!("there is no user `{name}`; see `chatd admin users list`"),
        )
    })
}

/// Checks that `name` is a room name: an ordinary one or a direct-message one.
pub(crate) fn room_name_or_usage(name: &str) -> Result<(), AdminError> {
    if rules::valid_any_room_name(name) {
        return Ok(());
    }
    let hint = match name
        .strip_prefix(rules::DM_PREFIX)
        .and_then(|pair| pair.split_once('+'))
    {
        Some((a, b)) if rules::valid_user_name(a) && rules::valid_user_name(b) && a != b => {
            format!("; did you mean `{}`?", rules::dm_room_name(a, b))
        }
        _ => String::new(),
    };
    Err(AdminError::usage(format!(
        "`{name}` is not a room name (1 to 64 of a-z 0-9 _ -, or dm:USER+USER with both names in lower case, sorted){hint}"
    )))
}

fn room_or_404(store: &Store, name: &str) -> Result<crate::store::Room, AdminError> {
    room_name_or_usage(name)?;
    store.room(name)?.ok_or_else(|| {
        AdminError::new(
            ErrorKind::NotFound,
            format!("there is no room `{name}`; see `chatd admin rooms list`"),
        )
    })
}

pub(crate) fn check_user_name(name: &str) -> Result<(), AdminError> {
    if rules::valid_user_name(name) {
        Ok(())
    } else {
        Err(AdminError::usage(format!(
            "`{name}` is not a user name (1 to 32 of A-Z a-z 0-9 _ . -)"
        )))
    }
}

pub(crate) fn check_hash(hash: &str) -> Result<(), AdminError> {
    if hash.starts_with("$argon2") {
        Ok(())
    } else {
        Err(AdminError::usage(
            "password_hash must be an argon2 PHC string (the CLI computes it)",
        ))
    }
}

/// Whether `name` is a direct-message room's.
fn is_dm(name: &str) -> bool {
    matches!(rules::dm_participants(name), Ok(Some(_)))
}

fn done(summary: String, details: serde_json::Value) -> Result<Reply, AdminError> {
    Ok(Reply::Done(Done { summary, details }))
}

pub(crate) fn user_info(u: &User) -> UserInfo {
    UserInfo {
        name: u.name.clone(),
        created_ms: u.created_ms,
        banned: u.banned,
        has_password: u.password_hash.starts_with('$'),
        token_epoch: u.token_epoch,
        sessions: None,
        connections: None,
    }
}

fn room_info(store: &Store, room: &crate::store::Room) -> Result<RoomInfo, AdminError> {
    let (first, last) = store.room_ends(room)?;
    let (mut participants, mut participants_deleted) = (None, Vec::new());
    if let Ok(Some((a, b))) = rules::dm_participants(&room.name) {
        let mut names = Vec::with_capacity(2);
        for key in [a, b] {
            match store.user(key)? {
                Some(user) => names.push(user.name),
                None => {
                    names.push(key.to_owned());
                    participants_deleted.push(key.to_owned());
                }
            }
        }
        participants = Some(names);
    }
    Ok(RoomInfo {
        participants,
        participants_deleted,
        name: room.name.clone(),
        created_ms: room.created_ms,
        messages: room.count,
        last_id: room.last_id,
        oldest_ts: first.map(|m| m.message.ts),
        newest_ts: last.map(|m| m.message.ts),
        online: None,
    })
}

/// Runs one command. `sink` receives the lines of an export (other commands do not use it).
pub fn execute(
    ctx: &Context<'_>,
    request: Request,
    sink: &mut dyn FnMut(Line) -> Result<(), AdminError>,
) -> Result<Reply, AdminError> {
    let store = ctx.store;
    match request {
        Request::Stats => {
            let mut stats = Stats {
                users: store.user_count()?,
                rooms: 0,
                dm_rooms: 0,
                messages: 0,
                db_bytes: store.size_on_disk()?,
                oldest_ts: None,
                newest_ts: None,
                server: None,
            };
            for room in store.rooms() {
                let room = room?;
                stats.rooms += 1;
                stats.dm_rooms += u64::from(is_dm(&room.name));
                stats.messages += room.count;
                if room.count > 0 {
                    let (first, last) = store.room_ends(&room)?;
                    if let Some(first) = first {
                        let ts = first.message.ts;
                        stats.oldest_ts = Some(stats.oldest_ts.map_or(ts, |o| o.min(ts)));
                    }
                    if let Some(last) = last {
                        let ts = last.message.ts;
                        stats.newest_ts = Some(stats.newest_ts.map_or(ts, |n| n.max(ts)));
                    }
                }
            }
            if let Some(state) = ctx.live {
                let online = state.hub.online();
                let users: BTreeSet<&str> = online.iter().map(|m| &*m.user_key).collect();
                stats.server = Some(ServerStats {
                    version: env!("CARGO_PKG_VERSION").into(),
                    uptime_secs: state.uptime().as_secs(),
                    connections: online.len() as u64,
                    online_users: users.len() as u64,
                });
            }
            Ok(Reply::Stats(stats))
        }
        Request::UsersList => {
            let mut users = Vec::new();
            for user in store.users() {
                users.push(user_info(&user?));
            }
            if let Some(state) = ctx.live {
                let online = state.hub.online();
                for u in &mut users {
                    let key = user_key(&u.name);
                    u.connections =
                        Some(online.iter().filter(|m| *m.user_key == *key).count() as u64);
                }
            }
            Ok(Reply::Users(users))
        }
        Request::UsersShow { name } => {
            let user = user_or_404(store, &name)?;
            let mut info = user_info(&user);
            info.sessions = Some(store.session_count(&user, now_ms())?);
            if let Some(state) = ctx.live {
                let key = user_key(&user.name);
                info.connections = Some(
                    state
                        .hub
                        .online()
                        .iter()
                        .filter(|m| *m.user_key == *key)
                        .count() as u64,
                );
            }
            Ok(Reply::User(info))
        }
        Request::UsersAdd {
            name,
            password_hash,
        } => {
            check_user_name(&name)?;
            check_hash(&password_hash)?;
            let user = User {
                name: name.clone(),
                password_hash,
                created_ms: now_ms(),
                banned: false,
                token_epoch: 0,
            };
            if !store.insert_user(&user)? {
                return Err(AdminError::new(
                    ErrorKind::Conflict,
                    format!("user `{name}` already exists; change the password with `chatd admin users passwd {name}`"),
                ));
            }
            ctx.sync()?;
            done(
                format!("created user {name}"),
                serde_json::json!({"user": name}),
            )
        }
        Request::UsersPasswd {
            name,
            password_hash,
        } => {
            check_hash(&password_hash)?;
            let mut user = user_or_404(store, &name)?;
            user.password_hash = password_hash;
            user.token_epoch = user.token_epoch.wrapping_add(1);
            store.update_user(&user)?;
            ctx.sync()?;
            done(
                format!(
                    "set the password of {}; their session tokens are revoked (connected clients stay connected until they reconnect)",
                    user.name
                ),
                serde_json::json!({"user": user.name, "tokens_revoked": true}),
            )
        }
        Request::UsersBan { name } => {
            let mut user = user_or_404(store, &name)?;
            user.banned = true;
            user.token_epoch = user.token_epoch.wrapping_add(1);
            store.update_user(&user)?;
            ctx.sync()?;
            let closed = match ctx.live {
                Some(state) => state.hub.close_user(
                    &user_key(&user.name),
                    Some(
                        Rejection::new(ErrorCode::Banned, "this account was banned by an admin")
                            .encode(),
                    ),
                    CloseRequest {
                        code: close::POLICY,
                        reason: "banned",
                    },
                ),
                None => 0,
            };
            done(
                format!(
                    "banned {}: tokens revoked, {closed} live connection(s) closed",
                    user.name
                ),
                serde_json::json!({"user": user.name, "banned": true, "closed_connections": closed}),
            )
        }
        Request::UsersUnban { name } => {
            let mut user = user_or_404(store, &name)?;
            user.banned = false;
            store.update_user(&user)?;
            ctx.sync()?;
            done(
                format!(
                    "unbanned {}; they can log in again with their password",
                    user.name
                ),
                serde_json::json!({"user": user.name, "banned": false}),
            )
        }
        Request::UsersDelete {
            name,
            delete_messages,
        } => {
            let user = user_or_404(store, &name)?;
            store.delete_user(&user.name)?;
            let sessions = store.remove_user_sessions(&user.name)?;
            let markers = store.remove_user_memberships(&user_key(&user.name))?;
            let closed = match ctx.live {
                Some(state) => state.hub.close_user(
                    &user_key(&user.name),
                    None,
                    CloseRequest {
                        code: close::POLICY,
                        reason: "account deleted",
                    },
                ),
                None => 0,
            };
            let mut removed = 0;
            if delete_messages {
                for (room, ids) in store.user_message_ids(&user.name)? {
                    removed += delete_messages_as_admin(ctx, &room, &ids)?;
                }
            }
            // A later account of the same name would otherwise be a participant of these
            // conversations and read them.
            let mut dm_rooms = Vec::new();
            for room in store.rooms() {
                let room = room?;
                if let Ok(Some((a, b))) = rules::dm_participants(&room.name) {
                    if [a, b].contains(&user_key(&user.name).as_str()) {
                        dm_rooms.push(room.name);
                    }
                }
            }
            for name in &dm_rooms {
                match ctx.live {
                    Some(state) => state.hub.delete_room(name, &mut ctx.breather())?,
                    None => store.delete_room(name, &mut ctx.breather())?,
                };
            }
            ctx.sync()?;
            Ok(UserDeleted {
                name: user.name,
                sessions,
                closed: closed as u64,
                messages_deleted: delete_messages.then_some(removed),
                markers,
                dm_rooms,
            }
            .reply(""))
        }
        Request::RoomsList { dm } => {
            let mut rooms = Vec::new();
            for room in store.rooms() {
                let room = room?;
                if !dm || is_dm(&room.name) {
                    rooms.push(room_info(store, &room)?);
                }
            }
            Ok(Reply::Rooms(rooms))
        }
        Request::RoomsShow { name } => {
            let room = room_or_404(store, &name)?;
            let mut info = room_info(store, &room)?;
            if let Some(state) = ctx.live {
                let mut online: Vec<String> = state
                    .hub
                    .connections()
                    .into_iter()
                    .filter(|(_, rooms)| rooms.contains(&room.name))
                    .map(|(m, _)| m.name.to_string())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                online.sort_by_key(|n| n.to_ascii_lowercase());
                info.online = Some(online);
            }
            Ok(Reply::Room(info))
        }
        Request::RoomsDelete { name } => {
            room_or_404(store, &name)?;
            let removed = match ctx.live {
                Some(state) => state.hub.delete_room(&name, &mut ctx.breather())?,
                None => store.delete_room(&name, &mut || {})?,
            };
            let Some((_, n)) = removed else {
                return Err(AdminError::new(
                    ErrorKind::NotFound,
                    format!("room `{name}` was deleted meanwhile"),
                ));
            };
            ctx.sync()?;
            done(
                format!("deleted room {name} and its {n} message(s)"),
                serde_json::json!({"room": name, "messages_deleted": n}),
            )
        }
        Request::RoomsPruneEmpty {
            created_before_ms,
            dry_run,
            dm,
        } => {
            let mut names = Vec::new();
            for room in store.rooms() {
                let room = room?;
                let in_use = ctx
                    .live
                    .is_some_and(|state| state.hub.room_in_use(&room.name));
                if room.count == 0
                    && room.created_ms < created_before_ms
                    && !in_use
                    && (!dm || is_dm(&room.name))
                {
                    names.push(room.name);
                }
            }
            let mut deleted = 0u64;
            if !dry_run {
                let mut breathe = ctx.breather();
                let total = Some(names.len() as u64);
                ctx.tick(0, total, || None);
                for (i, name) in names.iter().enumerate() {
                    let removed = match ctx.live {
                        Some(state) => state.hub.delete_room(name, &mut breathe)?,
                        None => store.delete_room(name, &mut breathe)?,
                    };
                    deleted += u64::from(removed.is_some());
                    ctx.tick(i as u64 + 1, total, || None);
                }
                ctx.sync()?;
            }
            let (verb, n) = if dry_run {
                ("would delete", names.len() as u64)
            } else {
                ("deleted", deleted)
            };
            let kind = if dm { "empty direct-message" } else { "empty" };
            done(
                format!("{verb} {n} {kind} room(s)"),
                serde_json::json!({"rooms_deleted": deleted, "rooms_matched": names.len(), "dry_run": dry_run}),
            )
        }
        Request::MessagesList(search) => {
            if let Some(room) = &search.room {
                room_or_404(store, room)?;
            }
            Ok(Reply::Messages(store.search(&search)?))
        }
        Request::MessagesShow { room, id } => conversations::message_history(ctx, &room, id),
        Request::UsersReads { name, room } => {
            conversations::read_markers(ctx, &name, room.as_deref())
        }
        Request::UsersReadsReset { name, room, to } => {
            conversations::reset_read_markers(ctx, &name, room.as_deref(), to)
        }
        Request::MessagesDelete { ids, room } => {
            if ids.is_empty() {
                return Err(AdminError::usage("name at least one message id"));
            }
            let room = room.map(|r| room_or_404(store, &r)).transpose()?;
            // Find them all first: a missing id changes nothing.
            let mut targets: Vec<(String, u64)> = Vec::new();
            let mut missing = Vec::new();
            for &id in &ids {
                let found = match &room {
                    Some(room) => store
                        .message(room.no, id)?
                        .map(|m| (room.name.clone(), m.id)),
                    None => store.find_message(id)?.map(|(r, m)| (r.name, m.id)),
                };
                match found {
                    Some(t) => targets.push(t),
                    None => missing.push(id.to_string()),
                }
            }
            if !missing.is_empty() {
                return Err(AdminError::new(
                    ErrorKind::NotFound,
                    format!(
                        "no message with id {}; nothing was deleted (find ids with `chatd admin messages list`)",
                        missing.join(", ")
                    ),
                ));
            }
            let mut removed = 0;
            for (room, id) in &targets {
                removed += delete_messages_as_admin(ctx, room, &[*id])?;
            }
            ctx.sync()?;
            done(
                format!("deleted {removed} message(s)"),
                serde_json::json!({"deleted": targets.iter().map(|(r, id)| serde_json::json!({"room": r, "id": id})).collect::<Vec<_>>()}),
            )
        }
        Request::Prune {
            rule,
            room,
            dry_run,
        } => prune(ctx, rule, room.as_deref(), dry_run).map(Reply::Pruned),
        Request::Online => {
            let state = ctx.live("online")?;
            Ok(Reply::Online(
                state
                    .hub
                    .connections()
                    .into_iter()
                    .map(|(m, rooms)| Connection {
                        user: m.name.to_string(),
                        peer: m.peer.to_string(),
                        since_ms: m.since_ms,
                        rooms,
                    })
                    .collect(),
            ))
        }
        Request::Kick { name } => {
            let state = ctx.live("kick")?;
            check_user_name(&name)?;
            let closed = state.hub.close_user(
                &user_key(&name),
                None,
                CloseRequest {
                    code: close::POLICY,
                    reason: "kicked by an admin",
                },
            );
            if closed == 0 {
                return Err(AdminError::new(
                    ErrorKind::NotFound,
                    format!("`{name}` is not connected; see `chatd admin online`"),
                ));
            }
            done(
                format!("closed {closed} connection(s) of {name} with 1008 (they may reconnect; use `users ban` to keep them out)"),
                serde_json::json!({"user": name, "closed_connections": closed}),
            )
        }
        Request::Announce { room, text } => {
            let state = ctx.live("announce")?;
            if let Err(e) = rules::check_text(&text) {
                return Err(AdminError::usage(format!("announcement {}", e.reason())));
            }
            let rooms: Vec<String> = match room {
                Some(name) => vec![room_or_404(store, &name)?.name],
                // Announcements go to rooms, not into people's private conversations.
                None => store
                    .rooms()
                    .filter(|r| r.as_ref().map_or(true, |r| !is_dm(&r.name)))
                    .map(|r| r.map(|r| r.name))
                    .collect::<Result<_, _>>()?,
            };
            let mut posted = Vec::new();
            for room in &rooms {
                let id = state
                    .hub
                    .post_system_message(room, SYSTEM_AUTHOR, text.clone())?;
                posted.push(serde_json::json!({"room": room, "id": id}));
            }
            ctx.sync()?;
            done(
                format!("announced in {} room(s)", posted.len()),
                serde_json::json!({"posted": posted}),
            )
        }
        Request::Export { with_secrets } => {
            let mut counts = [0u64; 4];
            store.export(with_secrets, now_ms(), &mut |line: Line| {
                match &line {
                    Line::User { .. } => counts[0] += 1,
                    Line::Session { .. } => counts[1] += 1,
                    Line::Room { .. } => counts[2] += 1,
                    Line::Message { .. } => counts[3] += 1,
                    Line::Header { .. } => {}
                }
                sink(line)
            })?;
            done(
                format!(
                    "exported {} user(s), {} session(s), {} room(s), {} message(s)",
                    counts[0], counts[1], counts[2], counts[3]
                ),
                serde_json::json!({"users": counts[0], "sessions": counts[1], "rooms": counts[2], "messages": counts[3], "with_secrets": with_secrets}),
            )
        }
        Request::Import { lines } => {
            for (i, line) in lines.iter().enumerate() {
                crate::store::maintenance::validate_line(line).map_err(|e| {
                    AdminError::usage(format!("import line {} of this batch: {e}", i + 1))
                })?;
            }
            let mut report = Imported::default();
            store.import(&lines, &mut report)?;
            if let Some(state) = ctx.live {
                for (room, last) in &report.touched_rooms {
                    state.hub.publish_up_to(room, *last);
                }
            }
            ctx.sync()?;
            Ok(Reply::Imported(report))
        }
    }
}

/// Refuses a prune with neither rule (it would remove nothing, or be a mistake).
pub(crate) fn rule_given(rule: PruneRule) -> Result<(), AdminError> {
    if rule.before_ms.is_none() && rule.keep_last.is_none() {
        return Err(AdminError::usage(
            "say what to prune with --older-than and/or --keep-last",
        ));
    }
    Ok(())
}

/// Prunes one room or all; shared by `chatd admin prune` and the server's retention timer.
pub fn prune(
    ctx: &Context<'_>,
    rule: PruneRule,
    room: Option<&str>,
    dry_run: bool,
) -> Result<PruneReport, AdminError> {
    rule_given(rule)?;
    let names: Vec<String> = match room {
        Some(name) => vec![room_or_404(ctx.store, name)?.name],
        None => ctx
            .store
            .rooms()
            .map(|r| r.map(|r| r.name))
            .collect::<Result<_, _>>()?,
    };
    let mut report = PruneReport {
        dry_run,
        rule,
        removed: 0,
        rooms: Vec::new(),
    };
    // What will go is known in advance only for --keep-last alone (from the rooms' counters);
    // a time rule needs the scan itself.
    let total = match (ctx.progress, rule.before_ms, rule.keep_last) {
        (Some(_), None, Some(keep)) => {
            let mut excess = 0;
            for name in &names {
                if let Some(record) = ctx.store.room(name)? {
                    excess += record.count.saturating_sub(keep);
                }
            }
            Some(excess)
        }
        _ => None,
    };
    let rooms = names.len();
    let mut breather = ctx.breather();
    ctx.tick(0, total, || None);
    for (i, name) in names.into_iter().enumerate() {
        // Fresh record: the counters and last_id as of now.
        let Some(record) = ctx.store.room(&name)? else {
            continue;
        };
        let note = || (rooms > 1).then(|| format!("room {} of {rooms}", i + 1));
        // `prune_room` calls back after each full chunk of CHUNK messages removed.
        let mut in_room = 0;
        let pruned = ctx.store.prune_room(&record, rule, dry_run, &mut || {
            breather();
            in_room += crate::store::maintenance::CHUNK as u64;
            ctx.tick(report.removed + in_room, total, note);
        })?;
        if pruned.removed > 0 {
            report.removed += pruned.removed;
            report.rooms.push(pruned);
        }
        ctx.tick(report.removed, total, note);
    }
    if !dry_run && report.removed > 0 {
        ctx.sync()?;
    }
    Ok(report)
}

/// What `--retention` / `--retention-per-room` remove now, if either is set.
pub(crate) fn retention_rule(config: &crate::config::Config) -> Option<PruneRule> {
    if config.retention.is_none() && config.retention_per_room.is_none() {
        return None;
    }
    Some(PruneRule {
        before_ms: config
            .retention
            .map(|d| now_ms().saturating_sub(d.as_millis() as u64)),
        keep_last: config.retention_per_room,
    })
}

/// The server's retention chore on its database: prunes by `rule`. Blocking: run it on the
/// blocking pool.
pub(crate) fn retention(state: &State, rule: PruneRule) -> Result<PruneReport, AdminError> {
    let ctx = Context {
        store: &state.store,
        live: Some(state),
        progress: None,
    };
    prune(&ctx, rule, None, false)
}
