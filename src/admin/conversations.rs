//! Admin commands for protocol 1.1's conversations: a message's edit and delete history
//! (`messages show`) and users' read markers (`users reads`, `users reads reset`).
//!
//! Both work with the server running (through its admin socket, where a reset reaches the
//! user's connections as `read` frames) and without it (straight on the database).

use serde::{Deserialize, Serialize};

use super::{room_name_or_usage, user_or_404, AdminError, Context, ErrorKind, Reply};
use crate::hub::SYSTEM_AUTHOR;
use crate::store::{user_key, Change, Room};

/// What became of a message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    /// Stored: clients see it (with its current text).
    Stored,
    /// Deleted by its author or an admin: a `deleted` event says so.
    Deleted,
    /// Not stored and no `deleted` event: pruned, or deleted by a chatd from before
    /// protocol 1.1 (which kept no events).
    Gone,
}

impl MessageState {
    /// The state of a message that is (or is not) `stored`, and whose events include (or not)
    /// its deletion.
    pub(crate) fn of(stored: bool, deleted: bool) -> MessageState {
        match (stored, deleted) {
            (true, _) => MessageState::Stored,
            (false, true) => MessageState::Deleted,
            (false, false) => MessageState::Gone,
        }
    }
}

/// A message as it stands now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageNow {
    /// Author as displayed.
    pub user: String,
    /// The text in force (as sent or as last edited).
    pub text: String,
    /// Acceptance time, ms since the Unix epoch.
    pub ts: u64,
    /// The sender's idempotency key, if any.
    pub cid: Option<String>,
    /// When it was last edited, if ever.
    pub edited_ts: Option<u64>,
}

/// Which change an event made.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The text was replaced.
    Edited,
    /// The message was deleted.
    Deleted,
}

/// One event in a message's history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryEvent {
    /// The event's own id in the room (`seq` on the wire).
    pub seq: u64,
    /// When, ms since the Unix epoch.
    pub ts: u64,
    /// Who: the author, or `[system]` for an admin.
    pub user: String,
    /// Edited or deleted.
    pub change: ChangeKind,
    /// An edit's new text (`null` once a deletion scrubbed it, and for a deletion).
    pub text: Option<String>,
    /// The text an edit replaced (`null` once a deletion scrubbed it, and for a deletion).
    pub replaced: Option<String>,
    /// An edit whose texts the message's deletion removed.
    pub scrubbed: bool,
    /// Made by an admin (`user` is `[system]`).
    pub by_admin: bool,
}

/// `messages show ROOM ID`: a message's current state and the events that changed it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageHistory {
    /// Room name.
    pub room: String,
    /// Message id.
    pub id: u64,
    /// Stored, deleted or gone.
    pub state: MessageState,
    /// Its author, when known: from the message, else from its edits or its author's own
    /// deletion (an admin's deletion of an unedited message leaves no trace of the author).
    pub author: Option<String>,
    /// The message now (`null` unless stored).
    pub message: Option<MessageNow>,
    /// Its edits and deletion, oldest first.
    pub events: Vec<HistoryEvent>,
}

/// One of a user's read markers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReadMarker {
    /// Room name.
    pub room: String,
    /// Everything up to this id is read (0: nothing).
    pub read: u64,
    /// The room's newest id or seq clients can see (`null` if the room no longer exists).
    pub newest: Option<u64>,
    /// Other users' messages above the marker, at most 1000 (`null` if the room is gone).
    pub unread: Option<u64>,
    /// Whether the room is on the user's conversation list (the `rooms` reply).
    pub listed: bool,
}

impl ReadMarker {
    /// A marker left in a room that no longer exists.
    pub(crate) fn in_deleted_room(room: String, read: u64) -> ReadMarker {
        ReadMarker {
            room,
            read,
            newest: None,
            unread: None,
            listed: false,
        }
    }
}

/// `users reads USER`: a user's read markers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReadMarkers {
    /// The user, as registered.
    pub user: String,
    /// One per room the user has a marker in, by room name.
    pub rooms: Vec<ReadMarker>,
}

fn room_or_404(ctx: &Context, name: &str) -> Result<Room, AdminError> {
    room_name_or_usage(name)?;
    ctx.store.room(name)?.ok_or_else(|| {
        AdminError::new(
            ErrorKind::NotFound,
            format!("there is no room `{name}`; see `chatd admin rooms list`"),
        )
    })
}

/// The newest id of `room` that clients can see: the live hub's published id, else the
/// stored one.
fn newest(ctx: &Context, room: &Room) -> Result<u64, AdminError> {
    Ok(match ctx.live {
        Some(state) => state.hub.newest_id(&room.name)?.unwrap_or(room.last_id),
        None => room.last_id,
    })
}

/// `messages show ROOM ID`.
pub fn message_history(ctx: &Context, room: &str, id: u64) -> Result<Reply, AdminError> {
    let store = ctx.store;
    let record = room_or_404(ctx, room)?;
    let stored = store.message(record.no, id)?;
    let events = store.events_of(record.no, id)?;
    if stored.is_none() && events.is_empty() {
        let hint = if let Some(event) = store.event(record.no, id)? {
            format!(
                "; {id} is the seq of a change to message {}: try `chatd admin messages show {room} {}`",
                event.target, event.target
            )
        } else if let Some((other, _)) = store.find_message(id)? {
            format!(
                "; it is in room `{}`: try `chatd admin messages show {} {id}`",
                other.name, other.name
            )
        } else {
            "; find ids with `chatd admin messages list`".into()
        };
        return Err(AdminError::new(
            ErrorKind::NotFound,
            format!("room `{room}` has no message {id} and no history of one{hint}"),
        ));
    }
    let mut author = stored.as_ref().map(|m| m.message.user.clone());
    let mut deleted = false;
    let events: Vec<HistoryEvent> = events
        .into_iter()
        .map(|(seq, event)| {
            let by_admin = event.user == SYSTEM_AUTHOR;
            let (change, text, replaced, scrubbed) = match event.change {
                Change::Edited { text, replaced } => {
                    let scrubbed = text.is_none() && replaced.is_none();
                    (ChangeKind::Edited, text, replaced, scrubbed)
                }
                Change::Deleted => {
                    deleted = true;
                    (ChangeKind::Deleted, None, None, false)
                }
            };
            // Only authors edit, and a deletion not by an admin is the author's own.
            if author.is_none() && !by_admin {
                author = Some(event.user.clone());
            }
            HistoryEvent {
                seq,
                ts: event.ts,
                user: event.user,
                change,
                text,
                replaced,
                scrubbed,
                by_admin,
            }
        })
        .collect();
    let state = MessageState::of(stored.is_some(), deleted);
    Ok(Reply::MessageHistory(MessageHistory {
        room: record.name,
        id,
        state,
        author,
        message: stored.map(|m| MessageNow {
            user: m.message.user,
            text: m.message.text,
            ts: m.message.ts,
            cid: m.message.cid,
            edited_ts: m.message.edited_ts,
        }),
        events,
    }))
}

/// `users reads USER [--room ROOM]`.
pub fn read_markers(ctx: &Context, name: &str, room: Option<&str>) -> Result<Reply, AdminError> {
    let store = ctx.store;
    let user = user_or_404(store, name)?;
    let key = user_key(&user.name);
    let memberships = match room {
        Some(room) => {
            room_name_or_usage(room)?;
            match store.membership(&key, room)? {
                Some(m) => vec![(room.to_owned(), m)],
                None => return Err(no_marker(&user.name, room)),
            }
        }
        None => store.memberships(&key)?,
    };
    let mut rooms = Vec::with_capacity(memberships.len());
    for (name, membership) in memberships {
        let marker = match store.room(&name)? {
            Some(record) => {
                let newest = newest(ctx, &record)?;
                let state = store.read_state(&key, &record, &membership, newest)?;
                ReadMarker {
                    room: name,
                    read: membership.read,
                    newest: Some(newest),
                    unread: Some(state.unread),
                    listed: state.listed,
                }
            }
            // A marker left behind by a room deleted before deletions removed them.
            None => ReadMarker::in_deleted_room(name, membership.read),
        };
        rooms.push(marker);
    }
    Ok(Reply::ReadMarkers(ReadMarkers {
        user: user.name,
        rooms,
    }))
}

/// The error for a user without a marker in `room`.
pub(crate) fn no_marker(user: &str, room: &str) -> AdminError {
    AdminError::new(
        ErrorKind::NotFound,
        format!(
            "{user} has no read marker in `{room}` (never joined or marked it); see `chatd admin users reads {user}`"
        ),
    )
}

/// `users reads reset USER [--room ROOM] [--to ID]`: sets markers to `to` (lowered to each
/// room's newest id), backwards too. Live, every connection of the user gets a `read` frame
/// with the marker in force once it is durable.
pub fn reset_read_markers(
    ctx: &Context,
    name: &str,
    room: Option<&str>,
    to: u64,
) -> Result<Reply, AdminError> {
    let store = ctx.store;
    let user = user_or_404(store, name)?;
    let key = user_key(&user.name);
    let rooms: Vec<String> = match room {
        Some(room) => {
            room_name_or_usage(room)?;
            if store.membership(&key, room)?.is_none() {
                return Err(no_marker(&user.name, room));
            }
            vec![room.to_owned()]
        }
        None => store
            .memberships(&key)?
            .into_iter()
            .map(|(room, _)| room)
            .collect(),
    };
    let mut reset = Vec::new();
    for room in &rooms {
        let set = match ctx.live {
            Some(state) => state.hub.reset_read(&key, room, to)?,
            None => {
                let id = to.min(store.room(room)?.map_or(0, |r| r.last_id));
                store.set_read(&key, room, id)?.then_some(id)
            }
        };
        if let Some(id) = set {
            reset.push(serde_json::json!({"room": room, "read": id}));
        }
    }
    ctx.sync()?;
    let connections = ctx.live.map_or(0, |state| {
        state
            .hub
            .online()
            .iter()
            .filter(|m| *m.user_key == *key)
            .count()
    });
    let told = if ctx.live.is_some() {
        format!("; {connections} live connection(s) got the new marker(s)")
    } else {
        String::new()
    };
    super::done(
        format!("{}{told}", reset_summary(&user.name, room, to, reset.len())),
        serde_json::json!({"user": user.name, "to": to, "reset": reset,
            "live_connections": ctx.live.map(|_| connections)}),
    )
}

/// What `users reads reset` did, for people: `count` markers of `user` (in `room`) set to `to`.
pub(crate) fn reset_summary(user: &str, room: Option<&str>, to: u64, count: usize) -> String {
    let target = match room {
        Some(room) => format!(" in {room}"),
        None => String::new(),
    };
    let lowered = if to > 0 {
        " (or the room's newest id if lower)"
    } else {
        ""
    };
    format!("set {count} read marker(s) of {user}{target} to {to}{lowered}")
}
