//! Protocol 1.1 in the hub: edits and deletions, read markers, the conversation list,
//! notifications and typing.
//!
//! Invariants:
//! - An edit or deletion is validated and queued under the room lock, like a send, so its seq
//!   takes its place in the room's id order and the announcement goes out in that order. The
//!   target must be a message clients can see (at most the published id); the batch that
//!   stores the event checks again that the message is still there, so an edit queued behind a
//!   deletion of the same message is refused, not stored.
//! - A repeated cid is answered from the original before the target is looked at: a repeated
//!   `delete` gets its ack although the message is gone.
//! - A read marker is echoed only after the flush that covers it, and what is echoed is the
//!   marker in force at that moment (read back from the store), so a user's connections never
//!   see it move backwards even when two markers race.
//! - Notifications are work for the delivery thread only when a message is in a DM room or
//!   contains `@`; they never go to the author's connections nor to connections that joined
//!   the room (those have the message itself), and at most one per message and connection.

use std::sync::{Arc, Mutex};

use super::{message_event, now_ms, Connections, Hub, HubError, Member, Room};
use crate::metrics::Metrics;
use crate::outbox::corked;
use crate::protocol::{encode, Encoded, RoomSummary, ServerFrame};
use crate::rules;
use crate::store::{user_key, Appended, Change, Conversation, Event, LogWrite, Store, StoreError};
use crate::sync::lock;

/// Conversation lists built at once; beyond it requests queue (one core's worth each).
pub(super) const LIST_BUILDS: usize = 2;

/// The author shown for admin deletions.
pub const SYSTEM_AUTHOR: &str = "[system]";

/// What the delivery thread needs to send notifications: the registry of connections and the
/// store (for whether a mentioned user has the room on their list).
pub(super) struct Notices {
    pub(super) metrics: Arc<Metrics>,
    store: Arc<Store>,
    connections: Arc<Mutex<Connections>>,
}

impl Notices {
    /// Sends `notify` for message `id` of `room` to every connection that should get one.
    pub(super) fn notify(&self, room: &Room, id: u64, message: &crate::store::Message) {
        let dm = rules::dm_participants(&room.name).ok().flatten();
        if dm.is_none() && !message.text.contains('@') {
            return;
        }
        let author = user_key(&message.user);
        let mut users: Vec<String> = Vec::new();
        if let Some((a, b)) = dm {
            users.extend([a, b].into_iter().map(str::to_owned));
        }
        for name in rules::mentioned_names(&message.text) {
            let key = user_key(name);
            if users.contains(&key) {
                continue;
            }
            // A mention reaches only users who have the room on their list.
            match self.store.membership(&key, &room.name) {
                Ok(Some(m)) if m.left_at.is_none() => users.push(key),
                Ok(_) => {}
                Err(e) => tracing::warn!(room = %room.name, error = %e, "mention not notified"),
            }
        }
        users.retain(|user| *user != author);
        if users.is_empty() {
            return;
        }
        let recipients: Vec<Member> = {
            let connections = lock(&self.connections);
            users
                .iter()
                .flat_map(|user| connections.of_user(user).iter().cloned())
                .collect()
        };
        if recipients.is_empty() {
            return;
        }
        let frame = encode(&ServerFrame::Notify {
            room: &room.name,
            id,
            user: &message.user,
            text: &message.text,
            ts: message.ts,
        });
        let state = lock(&room.state);
        for member in recipients {
            if !state.members.contains_key(&member.conn) {
                member.outbox.reply(frame.clone());
            }
        }
    }
}

/// Sends `{"type":"read"}` with marker `read` of `room` to every connection of `user`.
pub(super) fn send_read(connections: &Mutex<Connections>, user: &str, room: &str, read: u64) {
    let frame = encode(&ServerFrame::Read { room, id: read });
    let targets: Vec<Member> = lock(connections).of_user(user).to_vec();
    corked(|| {
        for member in targets {
            member.outbox.reply(frame.clone());
        }
    });
}

impl Hub {
    /// What the announcement of a message needs to send notifications, built once per hub.
    pub(super) fn new_notices(
        metrics: Arc<Metrics>,
        store: Arc<Store>,
        connections: Arc<Mutex<Connections>>,
    ) -> Arc<Notices> {
        Arc::new(Notices {
            metrics,
            store,
            connections,
        })
    }

    /// Edits or deletes `member`'s message `target` in `room` (`change`); acked and broadcast
    /// once durable, like a send.
    pub fn change_own(
        &self,
        room: &Arc<Room>,
        member: &Member,
        target: u64,
        change: Change,
        cid: Option<String>,
    ) -> Result<(), HubError> {
        let event = Event {
            target,
            user: member.name.to_string(),
            ts: now_ms(),
            change,
        };
        self.change_message(room, Some(member), event, cid)
            .map(drop)
    }

    /// Deletes message `target` of room `name` as an admin: a sequenced `deleted` event by
    /// [`SYSTEM_AUTHOR`]. Returns the event's seq; it is announced once the committer has
    /// flushed it (await [`crate::store::commit::Committer::barrier`] to know it was).
    pub fn delete_as_admin(&self, name: &str, target: u64) -> Result<u64, HubError> {
        let event = Event {
            target,
            user: SYSTEM_AUTHOR.to_owned(),
            ts: now_ms(),
            change: Change::Deleted,
        };
        let appended = match self.change_message(&self.room(name)?, None, event.clone(), None) {
            Err(HubError::Unloaded) => self.change_message(&self.room(name)?, None, event, None),
            other => other,
        }?;
        Ok(match appended {
            Appended::New(seq) => seq,
            Appended::Duplicate(original) => original.id,
        })
    }

    /// Validates and queues an edit or deletion under the room lock. `author` is `None` for an
    /// admin, who may change any message.
    fn change_message(
        &self,
        room: &Arc<Room>,
        author: Option<&Member>,
        event: Event,
        cid: Option<String>,
    ) -> Result<Appended, HubError> {
        let author_key = author.map_or("", |m| &*m.user_key);
        let state = lock(&room.state);
        room.check_live()?;
        let repeated = match &cid {
            Some(cid) => self.committer.used_cid(author_key, cid)?,
            None => false,
        };
        if !repeated {
            let message = (event.target <= state.published)
                .then(|| self.committer.message(room.no, event.target))
                .transpose()?
                .flatten()
                .ok_or(HubError::NotFound)?;
            let by_someone_else = |m: &Member| {
                user_key(&message.user) != *m.user_key || message.ts < m.account_created_ms
            };
            if author.is_some_and(by_someone_else) {
                return Err(HubError::Forbidden);
            }
        }
        let sender = author.map(|m| m.outbox.clone());
        let write = LogWrite::Event { event, cid };
        let appended = self.append_locked(room, author_key, write, sender)?;
        drop(state);
        Ok(appended)
    }

    /// The newest id of room `name` that clients can see: its published id while loaded, else
    /// the stored record's (nothing is in flight for a room that is not loaded). `None` if
    /// there is no such room.
    pub fn newest_id(&self, name: &str) -> Result<Option<u64>, StoreError> {
        if let Some(room) = self.loaded_room(name) {
            return Ok(Some(lock(&room.state).published));
        }
        Ok(self.store.room(name)?.map(|r| r.last_id))
    }

    /// Moves `member`'s read marker in room `name` forward to `id` (lowered to the room's
    /// newest id); once it is durable, every connection of the user gets the marker in force.
    /// `Ok(false)` if there is no such room.
    pub fn mark_read(&self, member: &Member, name: &str, id: u64) -> Result<bool, StoreError> {
        let Some(newest) = self.newest_id(name)? else {
            return Ok(false);
        };
        self.store
            .mark_read(&member.user_key, name, id.min(newest))?;
        let store = self.store.clone();
        let connections = self.connections.clone();
        let user = member.user_key.clone();
        let room: Arc<str> = Arc::from(name);
        let asker = member.outbox.clone();
        self.committer.after_flush(Box::new(move |flushed| {
            let marker = flushed
                .map_err(|e| e.to_string())
                .and_then(|()| store.membership(&user, &room).map_err(|e| e.to_string()));
            let read = match marker {
                Ok(membership) => membership.map_or(0, |m| m.read),
                Err(error) => {
                    tracing::warn!(%user, %room, %error, "read marker not confirmed");
                    asker.reply(
                        crate::protocol::Rejection::new(
                            crate::protocol::ErrorCode::Internal,
                            "the read marker could not be stored; send it again",
                        )
                        .with_ref(Some("read"))
                        .encode(),
                    );
                    return;
                }
            };
            send_read(&connections, &user, &room, read);
        }));
        Ok(true)
    }

    /// Sets `user_key`'s read marker in room `name` to `id` (an admin's reset: also backwards,
    /// the one way a marker ever moves back; `id` is lowered to the room's newest id). Once it
    /// is durable, every connection of the user gets the marker then in force. `Ok(None)` if
    /// the user has no marker there; else the marker set.
    pub fn reset_read(
        &self,
        user_key: &str,
        name: &str,
        id: u64,
    ) -> Result<Option<u64>, StoreError> {
        let id = id.min(self.newest_id(name)?.unwrap_or(0));
        if !self.store.set_read(user_key, name, id)? {
            return Ok(None);
        }
        let store = self.store.clone();
        let connections = self.connections.clone();
        let user: Arc<str> = Arc::from(user_key);
        let room: Arc<str> = Arc::from(name);
        self.committer.after_flush(Box::new(move |flushed| {
            let marker = flushed
                .map_err(|e| e.to_string())
                .and_then(|()| store.membership(&user, &room).map_err(|e| e.to_string()));
            match marker {
                Ok(Some(membership)) => send_read(&connections, &user, &room, membership.read),
                Ok(None) => {} // removed meanwhile (room or account deleted)
                // The admin command's own barrier reports the failure.
                Err(error) => tracing::warn!(%user, %room, %error, "read marker reset not sent"),
            }
        }));
        Ok(Some(id))
    }

    /// Relays `member`'s typing in `room` to every other user's connections there.
    pub fn typing(&self, room: &Room, member: &Member) {
        self.typing_here(room, &member.user_key, &member.name);
        self.relay_typing(room, member);
    }

    /// Tells the connections of `room` on this node, but `user_key`'s, that `name` is typing.
    pub(super) fn typing_here(&self, room: &Room, user_key: &str, name: &str) {
        let frame = encode(&ServerFrame::Typing {
            room: &room.name,
            user: name,
        });
        corked(|| {
            let state = lock(&room.state);
            room.fan_out(&state, &frame, Some(user_key), &self.metrics);
        });
    }

    /// [`Hub::conversations`] on the blocking pool, at most [`LIST_BUILDS`] at a time: the
    /// others wait without holding a thread.
    pub async fn conversations_off_thread(
        self: Arc<Self>,
        member: Member,
    ) -> Result<Encoded, StoreError> {
        let _permit = self.list_builds.acquire().await;
        let hub = self.clone();
        smol::unblock(move || hub.conversations(&member)).await
    }

    /// `member`'s conversation list as the `rooms` reply: every room on it, newest activity
    /// first.
    pub fn conversations(&self, member: &Member) -> Result<Encoded, StoreError> {
        let mut listed: Vec<(String, Conversation)> = Vec::new();
        for (name, membership) in self.store.memberships(&member.user_key)? {
            let Some(record) = self.store.room(&name)? else {
                continue; // deleted by an admin
            };
            let upto = self
                .loaded_room(&name)
                .map_or(record.last_id, |room| lock(&room.state).published);
            if let Some(conversation) =
                self.store
                    .conversation(&member.user_key, &record, &membership, upto)?
            {
                listed.push((name, conversation));
            }
        }
        Ok(rooms_reply(listed))
    }
}

/// The `rooms` reply for these conversations: newest activity first.
pub(super) fn rooms_reply(mut listed: Vec<(String, Conversation)>) -> Encoded {
    listed.sort_by(|a, b| b.1.last_id.cmp(&a.1.last_id).then_with(|| a.0.cmp(&b.0)));
    encode(&ServerFrame::Rooms {
        rooms: listed
            .iter()
            .map(|(name, c)| RoomSummary {
                room: name,
                last_id: c.last_id,
                read: c.read,
                unread: c.unread,
                mentions: c.mentions,
                last: c
                    .last
                    .as_ref()
                    .map(|m| message_event(name, m.id, &m.message)),
            })
            .collect(),
    })
}
