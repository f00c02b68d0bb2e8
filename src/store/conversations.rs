//! Each user's standing in rooms: read markers and the conversation list (protocol 1.1).
//!
//! One [`Membership`] per user and room, keyed by user first so a user's whole list is one
//! prefix scan: the list costs what the user's rooms cost, never a scan of every room or user.
//!
//! Invariants:
//! - A read marker only moves forward ([`Store::mark_read`]); only an admin may lower it.
//! - Updates are compare-and-swap loops over the stored value, so two connections of one user
//!   (or a connection and an admin) never lose each other's change; a damaged value is an
//!   error, never silently replaced.
//! - Unread counts read at most [`UNREAD_CAP`] of another user's messages per room, newest
//!   first, with a borrowed decode of each value's author and text: the cost of a `rooms`
//!   request is bounded by the user's number of rooms, not by the length of their histories.
//!   A room read up to its newest id costs one record read and one seek.
//! - Counts are cached per room and reader ([`UnreadCache`]) with the marker and the newest id
//!   they cover. The messages up to that id cannot change except through events (edits and
//!   deletions, which have higher ids) or admin removals (which empty the cache), so the next
//!   request with the same marker only reads what arrived since, and recounts from scratch if an
//!   event arrived or the cap is reached.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{codec, message_key, rules, Membership, Room, StoreError, StoredMessage};
use crate::store::Store;
use crate::sync::lock;

/// Most unread messages counted per room: a room with more shows this number.
pub const UNREAD_CAP: u64 = 1000;

/// Most of the user's own messages skipped while counting one room's unread ones, so a user who
/// wrote thousands of messages without reading cannot make the count scan them all.
const OWN_SKIP_CAP: u64 = 4 * UNREAD_CAP;

/// How a room stands for one user, as an admin sees it (`chatd admin users reads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    /// Whether the room is on the user's conversation list.
    pub listed: bool,
    /// Other users' messages above the marker, at most [`UNREAD_CAP`].
    pub unread: u64,
}

/// Cached counts kept at most: beyond it the cache starts afresh (a few MiB at most).
const CACHED_COUNTS: usize = 100_000;

/// An unread count as last made for one reader in one room.
#[derive(Debug, Clone, Copy)]
struct Counted {
    read: u64,
    upto: u64,
    unread: u64,
    mentions: u64,
    own: u64,
}

/// Unread counts by room number and reader (see the module doc).
#[derive(Default)]
pub(super) struct UnreadCache(Mutex<HashMap<(u32, Box<str>), Counted>>);

impl UnreadCache {
    /// Forgets every count: messages were removed without an event (pruning, room deletion).
    pub(super) fn forget_all(&self) {
        lock(&self.0).clear();
    }

    fn get(&self, room_no: u32, reader: &str) -> Option<Counted> {
        lock(&self.0).get(&(room_no, reader.into())).copied()
    }

    fn put(&self, room_no: u32, reader: &str, counted: Counted) {
        let mut counts = lock(&self.0);
        if counts.len() >= CACHED_COUNTS {
            counts.clear();
        }
        counts.insert((room_no, reader.into()), counted);
    }
}

/// One entry of a user's conversation list.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// The room's newest id or seq that clients can see.
    pub last_id: u64,
    /// The user's read marker.
    pub read: u64,
    /// Other users' messages above the marker, at most [`UNREAD_CAP`].
    pub unread: u64,
    /// Those of them that mention the user.
    pub mentions: u64,
    /// The newest message still in the room, in its current state.
    pub last: Option<StoredMessage>,
}

/// Whether `room` is on its user's list, given the user's `membership` and the room's newest
/// message: joined and not left since; or a direct-message room with a message newer than the
/// user's `leave` (or any message, if the user never joined it).
pub(crate) fn listed(room: &str, membership: &Membership, last: Option<&StoredMessage>) -> bool {
    match membership.left_at {
        None => true,
        Some(left) => {
            matches!(rules::dm_participants(room), Ok(Some(_)))
                && last.is_some_and(|last| last.id > left)
        }
    }
}

fn membership_key(user_key: &str, room: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(user_key.len() + 1 + room.len());
    key.extend_from_slice(user_key.as_bytes());
    key.push(0);
    key.extend_from_slice(room.as_bytes());
    key
}

impl Store {
    /// `user_key`'s membership of `room`, if the user ever joined or marked it (or it is one
    /// of the user's direct-message rooms).
    pub fn membership(&self, user_key: &str, room: &str) -> Result<Option<Membership>, StoreError> {
        let key = membership_key(user_key, room);
        self.memberships
            .get(&key)?
            .map(|v| codec::decode(&v, &key))
            .transpose()
    }

    /// Every membership of `user_key`, by room name.
    pub fn memberships(&self, user_key: &str) -> Result<Vec<(String, Membership)>, StoreError> {
        let prefix = membership_key(user_key, "");
        let mut all = Vec::new();
        for kv in self.memberships.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let room = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            all.push((room, codec::decode(&v, &k)?));
        }
        Ok(all)
    }

    /// Changes `user_key`'s membership of `room` with `change`, which gets the current value and
    /// returns the new one, or `None` to leave it as it is. Returns the membership in force.
    fn change_membership(
        &self,
        user_key: &str,
        room: &str,
        change: impl Fn(Option<&Membership>) -> Option<Membership>,
    ) -> Result<Option<Membership>, StoreError> {
        let key = membership_key(user_key, room);
        loop {
            let stored = self.memberships.get(&key)?;
            let current: Option<Membership> = stored
                .as_ref()
                .map(|v| codec::decode(v, &key))
                .transpose()?;
            let Some(new) = change(current.as_ref()) else {
                return Ok(current);
            };
            let swapped = self.memberships.compare_and_swap(
                &key,
                stored.as_ref(),
                Some(codec::encode(&new)),
            )?;
            if swapped.is_ok() {
                return Ok(Some(new));
            }
        }
    }

    /// Puts `room` on `user_key`'s list (a join); returns the user's read marker there.
    pub fn list_room(&self, user_key: &str, room: &str) -> Result<u64, StoreError> {
        let membership = self.change_membership(user_key, room, |current| match current {
            Some(m) if m.left_at.is_none() => None,
            other => Some(Membership {
                read: other.map_or(0, |m| m.read),
                left_at: None,
            }),
        })?;
        Ok(membership.map_or(0, |m| m.read))
    }

    /// Takes `room` off `user_key`'s list (a `leave`); `last_id` is the room's newest id now.
    pub fn unlist_room(&self, user_key: &str, room: &str, last_id: u64) -> Result<(), StoreError> {
        self.change_membership(user_key, room, |current| match current {
            Some(m) if m.left_at.is_none() => Some(Membership {
                read: m.read,
                left_at: Some(last_id),
            }),
            _ => None,
        })?;
        Ok(())
    }

    /// Moves `user_key`'s read marker in `room` forward to `id` (never back); returns the marker
    /// now in force. A room never joined gets a marker without being listed.
    pub fn mark_read(&self, user_key: &str, room: &str, id: u64) -> Result<u64, StoreError> {
        let membership = self.change_membership(user_key, room, |current| match current {
            Some(m) if m.read >= id => None,
            Some(m) => Some(Membership {
                read: id,
                left_at: m.left_at,
            }),
            None => Some(Membership {
                read: id,
                left_at: Some(0),
            }),
        })?;
        Ok(membership.map_or(0, |m| m.read))
    }

    /// Sets `user_key`'s read marker in `room` to `id`, also backwards (an admin's reset).
    /// Returns whether the user had a membership there.
    pub fn set_read(&self, user_key: &str, room: &str, id: u64) -> Result<bool, StoreError> {
        let before = self.membership(user_key, room)?;
        self.change_membership(user_key, room, |current| {
            current.map(|m| Membership {
                read: id,
                left_at: m.left_at,
            })
        })?;
        Ok(before.is_some())
    }

    /// Removes every user's membership of `room` (read markers and list entries), after an
    /// admin deleted the room, so a room created later under the same name starts with none.
    /// Keys start with the user, so this scans the whole tree: admins only. Returns how many
    /// went.
    pub fn remove_room_memberships(&self, room: &str) -> Result<u64, StoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.memberships.iter() {
            let (k, _) = kv?;
            // User keys never contain 0x00: the first one ends the user.
            let of_room = k
                .iter()
                .position(|&b| b == 0)
                .is_some_and(|at| &k[at + 1..] == room.as_bytes());
            if of_room {
                batch.remove(k);
                n += 1;
            }
        }
        self.memberships.apply_batch(batch)?;
        Ok(n)
    }

    /// Removes every membership of `user_key` (a deleted account). Returns how many went.
    pub fn remove_user_memberships(&self, user_key: &str) -> Result<u64, StoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.memberships.scan_prefix(membership_key(user_key, "")) {
            batch.remove(kv?.0);
            n += 1;
        }
        self.memberships.apply_batch(batch)?;
        Ok(n)
    }

    /// Whether `room` is on `user_key`'s list and how many messages there are unread, for
    /// `membership` and the room's newest visible id `upto` (see [`Store::conversation`]).
    pub fn read_state(
        &self,
        user_key: &str,
        room: &Room,
        membership: &Membership,
        upto: u64,
    ) -> Result<ReadState, StoreError> {
        Ok(match self.conversation(user_key, room, membership, upto)? {
            Some(c) => ReadState {
                listed: true,
                unread: c.unread,
            },
            None => ReadState {
                listed: false,
                unread: self
                    .count_unread(user_key, room.no, membership.read, upto)?
                    .0,
            },
        })
    }

    /// Gives both users of a new direct-message room a membership (not joined: `left_at` 0), so
    /// it shows on their lists once it holds a message. Does nothing for other rooms.
    pub(super) fn add_dm_memberships(&self, room: &str) -> Result<(), StoreError> {
        let Ok(Some((a, b))) = rules::dm_participants(room) else {
            return Ok(());
        };
        for user in [a, b] {
            self.change_membership(user, room, |current| {
                current.is_none().then_some(Membership {
                    read: 0,
                    left_at: Some(0),
                })
            })?;
        }
        Ok(())
    }

    /// `room` as an entry of `user_key`'s list, or `None` if it is not on the list: a room
    /// joined and not left since; also a direct-message room with a message newer than the
    /// user's `leave` (or any message, if the user never joined it). `upto` is the room's newest id clients
    /// can see (its published id while it is loaded).
    pub fn conversation(
        &self,
        user_key_of_reader: &str,
        room: &Room,
        membership: &Membership,
        upto: u64,
    ) -> Result<Option<Conversation>, StoreError> {
        let last = self
            .messages_before(room.no, u64::MAX, upto, 1)?
            .messages
            .pop();
        if !listed(&room.name, membership, last.as_ref()) {
            return Ok(None);
        }
        let (unread, mentions) =
            self.count_unread(user_key_of_reader, room.no, membership.read, upto)?;
        Ok(Some(Conversation {
            last_id: upto,
            read: membership.read,
            unread,
            mentions,
            last,
        }))
    }

    /// Other users' messages in `(read, upto]` and how many of them mention the reader, newest
    /// first, up to [`UNREAD_CAP`] of them; from the cache where it still holds.
    fn count_unread(
        &self,
        reader: &str,
        room_no: u32,
        read: u64,
        upto: u64,
    ) -> Result<(u64, u64), StoreError> {
        if read >= upto {
            return Ok((0, 0));
        }
        let cached = self
            .unread
            .get(room_no, reader)
            .filter(|c| c.read == read && c.upto <= upto);
        if let Some(c) = cached.filter(|c| c.upto == upto) {
            return Ok((c.unread, c.mentions));
        }
        let counted = match cached {
            Some(c)
                if c.unread < UNREAD_CAP
                    && c.own < OWN_SKIP_CAP
                    && self.events_after(room_no, c.upto, upto, 1)?.is_empty() =>
            {
                let since = self.scan_unread(reader, room_no, c.upto, upto)?;
                let sum = Counted {
                    read,
                    upto,
                    unread: c.unread + since.unread,
                    mentions: c.mentions + since.mentions,
                    own: c.own + since.own,
                };
                if sum.unread >= UNREAD_CAP || sum.own >= OWN_SKIP_CAP {
                    // Past a cap, only the newest count: count them afresh.
                    self.scan_unread(reader, room_no, read, upto)?
                } else {
                    sum
                }
            }
            _ => self.scan_unread(reader, room_no, read, upto)?,
        };
        self.unread.put(room_no, reader, counted);
        Ok((counted.unread, counted.mentions))
    }

    /// Counts `(after, upto]` newest first, stopping at either cap.
    fn scan_unread(
        &self,
        reader: &str,
        room_no: u32,
        after: u64,
        upto: u64,
    ) -> Result<Counted, StoreError> {
        let mut counted = Counted {
            read: after,
            upto,
            unread: 0,
            mentions: 0,
            own: 0,
        };
        let range = message_key(room_no, after + 1)..=message_key(room_no, upto);
        for kv in self.messages.range(range).rev() {
            let (k, v) = kv?;
            let (author, text) = codec::decode_head(&v).ok_or_else(|| StoreError::Corrupt {
                kind: "message",
                key: format!("{k:?}"),
                detail: "its author and text do not decode".into(),
            })?;
            if author.eq_ignore_ascii_case(reader) {
                counted.own += 1;
                if counted.own == OWN_SKIP_CAP {
                    break;
                }
                continue;
            }
            counted.unread += 1;
            if rules::mentions(text, reader) {
                counted.mentions += 1;
            }
            if counted.unread == UNREAD_CAP {
                break;
            }
        }
        Ok(counted)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{
        Change, Event, LogBackend, LogWrite, Message, NewEntry, RoomRef, StoreOptions,
    };

    fn write(store: &Store, room: &Room, write: LogWrite) -> u64 {
        let entry = NewEntry {
            room: RoomRef {
                name: Arc::from(room.name.as_str()),
                no: room.no,
            },
            id: store.take_id(),
            user_key: "".into(),
            write,
        };
        let applied = store.apply(&[&entry]).unwrap();
        assert!(applied.target_gone.is_empty() && applied.room_gone.is_empty());
        entry.id
    }

    fn say(store: &Store, room: &Room, user: &str, text: &str) -> u64 {
        let message = Message::new(user.into(), text.into(), 1, None);
        write(store, room, LogWrite::Message(message))
    }

    fn change(store: &Store, room: &Room, target: u64, change: Change) -> u64 {
        let event = Event {
            target,
            user: "Bob".into(),
            ts: 2,
            change,
        };
        write(store, room, LogWrite::Event { event, cid: None })
    }

    fn counts(store: &Store, room: &str, read: u64) -> (u64, u64) {
        let record = store.room(room).unwrap().unwrap();
        let membership = Membership {
            read,
            left_at: None,
        };
        let c = store
            .conversation("alice", &record, &membership, record.last_id)
            .unwrap()
            .unwrap();
        (c.unread, c.mentions)
    }

    #[test]
    fn unread_counts_follow_new_messages_edits_deletions_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let room = store.ensure_room("general", 0).unwrap();
        let first = say(&store, &room, "Bob", "hi @alice");
        say(&store, &room, "Alice", "my own @alice never counts");
        let plain = say(&store, &room, "Bob", "plain");
        assert_eq!(counts(&store, "general", 0), (2, 1));
        // Cached, then extended by what arrives.
        say(&store, &room, "carol", "@ALICE!");
        assert_eq!(counts(&store, "general", 0), (3, 2));
        // Events make the next count start afresh: an edit that adds a mention, a deletion.
        change(
            &store,
            &room,
            plain,
            Change::Edited {
                text: Some("now @alice".into()),
                replaced: None,
            },
        );
        assert_eq!(counts(&store, "general", 0), (3, 3));
        change(&store, &room, first, Change::Deleted);
        assert_eq!(counts(&store, "general", 0), (2, 2));
        // Removals without events (pruning) empty the cache.
        store.remove_messages("general", &[plain]).unwrap();
        assert_eq!(counts(&store, "general", 0), (1, 1));
        // Pruning a message takes its edits (and the texts they hold) with it.
        assert!(store.events_of(room.no, plain).unwrap().is_empty());
        // Another marker is another count.
        assert_eq!(counts(&store, "general", plain), (1, 1));
        let last = store.room("general").unwrap().unwrap().last_id;
        assert_eq!(counts(&store, "general", last), (0, 0));
    }

    #[test]
    fn unread_stops_at_the_cap_and_counts_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let room = store.ensure_room("busy", 0).unwrap();
        say(
            &store,
            &room,
            "Bob",
            "@alice old mention, beyond the newest 1000",
        );
        for i in 0..UNREAD_CAP {
            say(&store, &room, "Bob", &format!("m{i}"));
        }
        assert_eq!(counts(&store, "busy", 0), (UNREAD_CAP, 0));
        say(&store, &room, "Bob", "@alice new");
        assert_eq!(counts(&store, "busy", 0), (UNREAD_CAP, 1));
    }

    #[test]
    fn markers_only_move_forward_and_leaving_unlists() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(store.list_room("alice", "general").unwrap(), 0);
        assert_eq!(store.mark_read("alice", "general", 7).unwrap(), 7);
        assert_eq!(store.mark_read("alice", "general", 3).unwrap(), 7);
        store.unlist_room("alice", "general", 9).unwrap();
        let m = store.membership("alice", "general").unwrap().unwrap();
        assert_eq!((m.read, m.left_at), (7, Some(9)));
        assert_eq!(store.list_room("alice", "general").unwrap(), 7);
        assert_eq!(
            store
                .membership("alice", "general")
                .unwrap()
                .unwrap()
                .left_at,
            None
        );
        // A marker without a join does not list the room.
        assert_eq!(store.mark_read("alice", "other", 2).unwrap(), 2);
        assert_eq!(
            store.membership("alice", "other").unwrap().unwrap().left_at,
            Some(0)
        );
        // Only an admin moves it back.
        assert!(store.set_read("alice", "general", 0).unwrap());
        assert_eq!(
            store.membership("alice", "general").unwrap().unwrap().read,
            0
        );
    }
}
