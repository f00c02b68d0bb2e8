//! Where cluster mode keeps things in Redis (also in docs/STORAGE.md). Every key starts with
//! `chatd:`, so a Redis database can be shared with other programs; two clusters need two
//! databases (`redis://HOST:PORT/DB`).
//!
//! | key | type | holds |
//! |-----|------|-------|
//! | `chatd:next_id` | string (counter) | the last message id handed out, for all rooms |
//! | `chatd:next_room_no` | string (counter) | the last room number handed out |
//! | `chatd:room:{name}` | hash | `no`, `created_ms`, `last_id`, `count` |
//! | `chatd:log:{no}` | stream | the room's messages and events, entry id `{id}-0` |
//! | `chatd:overlay:{no}` | hash | message id → `{edited ts}\n{text}`: the current text of edited messages |
//! | `chatd:edits:{no}` | hash | message id → its edit events' ids, comma-separated (removed with it) |
//! | `chatd:cid:{user key}:{cid}` | string, expires | `{room} {id} {ts}` of the cid's first use |
//! | `chatd:user:{user key}` | string | the user record (the store's versioned bincode) |
//! | `chatd:skeleton:{skeleton}` | set | user keys whose names look alike (`rules::name_skeleton`) |
//! | `chatd:users` | string (counter) | accounts created |
//! | `chatd:session:{hex SHA-256 of the token}` | string, expires at `expires_ms` | the session record |
//! | `chatd:memberships:{user key}` | hash | room → `{read}:{left_at}` (`left_at` empty while listed) |
//! | `chatd:presence:{room}` | hash | `{node}:{user key}` → name, for every user online there on a node |
//! | `chatd:nodes` | set | node ids (hex) that have been alive and not yet reaped |
//! | `chatd:node:{node}` | string, expires | present while node `{node}` is alive (renewed by its heartbeat) |
//! | `chatd:node-rooms:{node}` | set | rooms where node `{node}` has written presence |
//! | `chatd:online:{request}` | list, expires | an admin's `online`: one JSON array of connections per node |
//! | `chatd:closing:{request}` | hash, expires | an admin's kick or ban: `nodes` that answered, `closed` connections |
//!
//! The room's log is keyed by its number, not its name, so a room deleted and created again
//! starts an empty log and a write queued for the old one cannot land in the new one.
//! Channels: `chatd:feed:{name}` carries every entry appended to the room's log ([`super::log`])
//! and every change of presence in it ([`super::presence`]); `chatd:notices` carries read markers
//! and notifications for a user's connections on every node ([`super::notices`]).

/// The counter message ids are taken from.
pub(crate) const NEXT_ID: &str = "chatd:next_id";

/// The counter room numbers are taken from.
pub(crate) const NEXT_ROOM_NO: &str = "chatd:next_room_no";

/// The channel of notices for users' connections on every node (`super::notices`).
pub(crate) const NOTICES: &str = "chatd:notices";

/// Where nodes report what they closed for an admin's request (expires).
pub(crate) fn closing(request: &str) -> String {
    format!("chatd:closing:{request}")
}

/// Where nodes put their connections for an admin's `online` request (expires).
pub(crate) fn online(request: &str) -> String {
    format!("chatd:online:{request}")
}

/// The node ids that have been alive.
pub(crate) const NODES: &str = "chatd:nodes";

/// Present while `node` is alive.
pub(crate) fn node_alive(node: u64) -> String {
    format!("chatd:node:{node:x}")
}

/// The rooms where `node` has written presence.
pub(crate) fn node_rooms(node: u64) -> String {
    format!("chatd:node-rooms:{node:x}")
}

/// A user's memberships (read markers, the conversation list).
pub(crate) fn memberships(user_key: &str) -> String {
    format!("chatd:memberships:{user_key}")
}

/// Who is online in `room`, per node.
pub(crate) fn presence(room: &str) -> String {
    format!("chatd:presence:{room}")
}

/// The number of accounts.
pub(crate) const USER_COUNT: &str = "chatd:users";

/// A user's record.
pub(crate) fn user(user_key: &str) -> String {
    format!("chatd:user:{user_key}")
}

/// The users whose names have this skeleton.
pub(crate) fn skeleton(skeleton: &str) -> String {
    format!("chatd:skeleton:{skeleton}")
}

/// A session, by its token's hash.
pub(crate) fn session(token_hash: &[u8]) -> String {
    let mut key = String::with_capacity(14 + 2 * token_hash.len());
    key.push_str("chatd:session:");
    for byte in token_hash {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

/// A room's record.
pub(crate) fn room(name: &str) -> String {
    format!("chatd:room:{name}")
}

/// A room's log.
pub(crate) fn log(no: u32) -> String {
    format!("chatd:log:{no}")
}

/// The current texts of a room's edited messages.
pub(crate) fn overlay(no: u32) -> String {
    format!("chatd:overlay:{no}")
}

/// The ids of each edited message's edit events.
pub(crate) fn edits(no: u32) -> String {
    format!("chatd:edits:{no}")
}

/// What a user's cid was first used for.
pub(crate) fn cid(user_key: &str, cid: &str) -> String {
    format!("chatd:cid:{user_key}:{cid}")
}

/// The channel a room's new entries are published on.
pub(crate) fn feed(name: &str) -> String {
    format!("chatd:feed:{name}")
}

/// The stream entry id of message `id`.
pub(crate) fn entry_id(id: u64) -> String {
    format!("{id}-0")
}
