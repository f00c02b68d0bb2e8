//! The values kept in each tree. Every struct here is part of the on-disk format: changing a
//! field means a new `VERSION` and a conversion from the old layout (see `codec`).

use serde::{Deserialize, Serialize};

use super::codec::Record;

/// An account. Keyed by the lower-cased name in the `users` tree.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct User {
    /// The name as first registered (case preserved for display).
    pub name: String,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    /// Registration time, ms since the Unix epoch.
    pub created_ms: u64,
    /// A banned user can neither log in nor resume.
    pub banned: bool,
    /// Tokens carry the epoch they were issued in; bumping it revokes them all at once.
    pub token_epoch: u32,
}
impl Record for User {
    const KIND: &'static str = "user";
    const VERSION: u8 = 1;
}

/// A session token. Keyed by the SHA-256 of the token in the `tokens` tree: the token itself is
/// never stored, so a copy of the database does not hand out sessions.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Session {
    /// Lower-cased user name (the `users` key).
    pub user_key: String,
    /// Issue time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Expiry, ms since the Unix epoch.
    pub expires_ms: u64,
    /// The user's `token_epoch` at issue time.
    pub epoch: u32,
}
impl Record for Session {
    const KIND: &'static str = "session";
    const VERSION: u8 = 1;
}

/// A room. Keyed by its name in the `rooms` tree.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Room {
    /// The room's name.
    pub name: String,
    /// Short number used as the prefix of the room's message keys.
    pub no: u32,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// The newest id ever assigned in this room (kept when messages are pruned, so ids are
    /// never reused and a client resuming with `since` misses nothing).
    pub last_id: u64,
    /// How many messages the room holds now (maintained on append and removal).
    pub count: u64,
}
impl Record for Room {
    const KIND: &'static str = "room";
    const VERSION: u8 = 1;
}

/// A chat message. Keyed by room number (u32 big-endian) + id (u64 big-endian) in `messages`.
/// Layout 2 added `edited_ts` and `edits`; layout-1 values ([`MessageV1`]) are read as unedited
/// messages, so databases from before protocol 1.1 need no rewrite.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Message {
    /// The author's name as displayed.
    pub user: String,
    /// The text now in force: as sent, or as last edited.
    pub text: String,
    /// Acceptance time, ms since the Unix epoch.
    pub ts: u64,
    /// The sender's idempotency key, if any.
    pub cid: Option<String>,
    /// When it was last edited, if ever.
    pub edited_ts: Option<u64>,
    /// The seqs of its `edited` events, oldest first: a deletion scrubs their texts.
    pub edits: Vec<u64>,
}
impl Record for Message {
    const KIND: &'static str = "message";
    const VERSION: u8 = 2;
}

impl Message {
    /// A message as sent, never edited.
    pub fn new(user: String, text: String, ts: u64, cid: Option<String>) -> Message {
        Message {
            user,
            text,
            ts,
            cid,
            edited_ts: None,
            edits: Vec::new(),
        }
    }
}

/// Layout 1 of [`Message`], written before protocol 1.1. Only read.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MessageV1 {
    user: String,
    text: String,
    ts: u64,
    cid: Option<String>,
}
impl Record for MessageV1 {
    const KIND: &'static str = "message";
    const VERSION: u8 = 1;
}

impl From<MessageV1> for Message {
    fn from(old: MessageV1) -> Message {
        Message::new(old.user, old.text, old.ts, old.cid)
    }
}

/// A change to a message, sequenced in its room like a message: keyed by room number + the
/// event's own id (its seq) in `events`, so a resuming client replays changes in order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Event {
    /// The id of the message changed.
    pub target: u64,
    /// Who changed it, as displayed (`[system]` for an admin).
    pub user: String,
    /// When, ms since the Unix epoch.
    pub ts: u64,
    /// What changed.
    pub change: Change,
}
impl Record for Event {
    const KIND: &'static str = "event";
    const VERSION: u8 = 1;
}

/// What an [`Event`] did.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Change {
    /// The text was replaced. Both texts are `None` once the message was deleted: a deletion
    /// takes back every version of what was written.
    Edited {
        /// The new text.
        text: Option<String>,
        /// The text it replaced.
        replaced: Option<String>,
    },
    /// The message was removed.
    Deleted,
}

/// A user's standing in one room: the read marker and whether the room is on the user's
/// conversation list. Keyed by user key + 0x00 + room name in `memberships`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Membership {
    /// Everything up to this id is read (0: nothing).
    pub read: u64,
    /// Set by `leave` (or a `read` of a room never joined): the room's newest id then. A room
    /// with it set is off the list until joined again; a direct-message room comes back with
    /// the first message after it.
    pub left_at: Option<u64>,
}
impl Record for Membership {
    const KIND: &'static str = "membership";
    const VERSION: u8 = 1;
}

/// What a `cid` was first used for. Keyed by user key + 0x00 + cid in the `cids` tree.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CidEntry {
    /// Room the original message went to.
    pub room: String,
    /// Id of the original message.
    pub id: u64,
    /// Its acceptance time, ms since the Unix epoch.
    pub ts: u64,
}
impl Record for CidEntry {
    const KIND: &'static str = "cid";
    const VERSION: u8 = 1;
}

/// Who was online in which room when the server last shut down gracefully, under the `meta` key
/// `presence`. A restart lets these users' presence grace period run on instead of announcing
/// everyone as new: a reconnect storm would otherwise send every member an `online` event for
/// every other member. Taken (read and removed) at startup.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct PresenceSnapshot {
    /// When the connections were dropped, ms since the Unix epoch.
    pub taken_ms: u64,
    /// Each room with presence at that moment.
    pub rooms: Vec<RoomPresence>,
}

impl Record for PresenceSnapshot {
    const KIND: &'static str = "presence snapshot";
    const VERSION: u8 = 1;
}

/// The users counted online in one room.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RoomPresence {
    /// Room name.
    pub room: String,
    /// Each user's lower-cased key and display name.
    pub users: Vec<(String, String)>,
}
