//! Group commits of new messages only (every batch but those holding an edit or a delete):
//! written with ordered plain inserts instead of a transaction, and the repair at open of a
//! batch that a crash cut short.
//!
//! Why not a transaction: with sled 0.34 on these machines, one message and one flush (a
//! throwaway program, then `cargo bench --bench storage`, rows "transaction" and "inserts"): a
//! transaction over the trees costs 30–56 µs of CPU, and the flush after it writes and syncs
//! twice (197–216 µs against 111–117 µs), because a transaction pins the log and seals its
//! buffer; `apply_batch` does the same per tree and is slower still. Plain inserts cost what one
//! insert costs, so a sender in lock-step waits for one sync, not two plus the transaction.
//!
//! Why a crash still leaves the trees agreeing: sled recovers a prefix of its log (what was
//! written after the first write a crash lost is not recovered either; that is how sled keeps
//! a batch whole). So the order of the writes is the order a crash can cut:
//! 1. every message of the batch, room by room, each followed by its cid entry (the order
//!    among them does not matter: none is acknowledged before step 3);
//! 2. then each touched room record (`last_id`, `count`);
//! 3. then the flush, and only after it the acks ([`super::commit`]).
//!
//! A room record therefore never counts a message that is missing, and a cid never points at a
//! missing message. What a crash can leave is messages (with their cids) above their room's
//! `last_id`: a batch nobody was told about. [`Store::remove_unrecorded`], run by `Store::open`
//! before it computes the next id, removes them, so the client's resend with the same cid is
//! stored once, as new.
//!
//! Room records are updated by compare-and-swap, never from a copy read before: admin
//! maintenance changes `count` in its own transactions while the server runs, and an admin may
//! delete the room meanwhile (then the batch's messages for it are taken back and reported as
//! `room_gone`, as the transaction did).

use std::collections::BTreeMap;

use super::log::{Applied, NewEntry};
use super::{cid_key, codec, decode_message, message_key, user_key, CidEntry, EncodedWrite, Room};
use super::{Store, StoreError};

/// Positions of a batch's writes by the room (name, number) they were queued for.
pub(super) type ByRoom<'a> = BTreeMap<(&'a str, u32), Vec<usize>>;

impl Store {
    /// Applies a batch whose writes are all new messages (see the module documentation).
    pub(super) fn apply_messages(
        &self,
        batch: &[&NewEntry],
        encoded: &[EncodedWrite],
        by_room: &ByRoom<'_>,
    ) -> Result<Applied, StoreError> {
        let mut applied = Applied::default();
        let mut live = Vec::with_capacity(by_room.len());
        for (&(name, no), positions) in by_room {
            if self.room_numbered(name, no)?.is_some() {
                live.push((name, no, positions));
            } else {
                // Deleted (and maybe recreated) by an admin while these were queued: storing
                // them would leave messages no room record accounts for.
                applied.room_gone.extend_from_slice(positions);
            }
        }
        let inserted = live
            .iter()
            .flat_map(|(_, _, p)| p.iter())
            .try_for_each(|&i| {
                let (key, value, cid) = &encoded[i];
                self.messages.insert(key, value.as_slice())?;
                if let Some((cid_key, cid_value)) = cid {
                    self.cids.insert(cid_key.as_slice(), cid_value.as_slice())?;
                }
                Ok::<_, StoreError>(())
            });
        if let Err(e) = inserted {
            // Nobody will be told these were stored: take back what went in, as far as the
            // store still lets us, so a later flush does not make them durable.
            for &(_, _, positions) in &live {
                let _ = self.take_back(encoded, positions);
            }
            return Err(e);
        }
        for (k, &(name, no, positions)) in live.iter().enumerate() {
            let newest = positions.iter().map(|&i| batch[i].id).max().unwrap_or(0);
            match self.record_appended(name, no, positions.len() as u64, newest) {
                Ok(true) => {}
                Ok(false) => {
                    self.take_back(encoded, positions)?;
                    applied.room_gone.extend_from_slice(positions);
                }
                Err(e) => {
                    // Rooms recorded so far keep their messages (their cids answer a resend);
                    // the rest are taken back, as above.
                    for &(_, _, unrecorded) in &live[k..] {
                        let _ = self.take_back(encoded, unrecorded);
                    }
                    return Err(e);
                }
            }
        }
        applied.room_gone.sort_unstable();
        Ok(applied)
    }

    /// Removes the messages at `positions` of a batch, and their cid entries.
    fn take_back(&self, encoded: &[EncodedWrite], positions: &[usize]) -> Result<(), StoreError> {
        for &i in positions {
            let (key, _, cid) = &encoded[i];
            self.messages.remove(key)?;
            if let Some((cid_key, _)) = cid {
                self.cids.remove(cid_key.as_slice())?;
            }
        }
        Ok(())
    }

    /// The room record `name` if it still has number `no`.
    fn room_numbered(&self, name: &str, no: u32) -> Result<Option<Room>, StoreError> {
        Ok(self.room(name)?.filter(|record| record.no == no))
    }

    /// Counts `added` messages up to id `newest` in room `name` (number `no`); false if that
    /// room record is gone.
    fn record_appended(
        &self,
        name: &str,
        no: u32,
        added: u64,
        newest: u64,
    ) -> Result<bool, StoreError> {
        loop {
            let current = self.rooms.get(name.as_bytes())?;
            let record = match &current {
                Some(value) => codec::decode::<Room>(value, name.as_bytes())?,
                None => return Ok(false),
            };
            if record.no != no {
                return Ok(false);
            }
            let updated = Room {
                count: record.count + added,
                last_id: record.last_id.max(newest),
                ..record
            };
            let swapped = self.rooms.compare_and_swap(
                name.as_bytes(),
                current.as_ref(),
                Some(codec::encode(&updated)),
            )?;
            if swapped.is_ok() {
                return Ok(true);
            }
        }
    }

    /// Removes messages stored above their room's `last_id`, and their cid entries: the part of
    /// a group commit that a crash cut short, which nobody was told about. Returns how many.
    pub(super) fn remove_unrecorded(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        for room in self.rooms() {
            let room = room?;
            let above = message_key(room.no, room.last_id.saturating_add(1))
                ..=message_key(room.no, u64::MAX);
            for kv in self.messages.range(above) {
                let (key, value) = kv?;
                // A value that does not decode is removed all the same: it is no more
                // acknowledged than the others, and its cid cannot be known.
                if let Ok(stored) = decode_message(&key, &value) {
                    if let Some(cid) = &stored.message.cid {
                        self.remove_cid_of(&room, stored.id, &user_key(&stored.message.user), cid)?;
                    }
                }
                self.messages.remove(&key)?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.flush()?;
            tracing::warn!(
                removed,
                "removed messages of a group commit that a crash cut short (never acknowledged)"
            );
        }
        Ok(removed)
    }

    /// Removes `user_key`'s cid entry `cid` if it names message `id` of `room`.
    fn remove_cid_of(
        &self,
        room: &Room,
        id: u64,
        user_key: &str,
        cid: &str,
    ) -> Result<(), StoreError> {
        let key = cid_key(user_key, cid);
        if let Some(value) = self.cids.get(&key)? {
            let names_it = codec::decode::<CidEntry>(&value, &key)
                .is_ok_and(|entry| entry.room == room.name && entry.id == id);
            if names_it {
                self.cids.remove(&key)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::log::{LogBackend, LogWrite, RoomRef};
    use super::super::{Message, StoreOptions};
    use super::*;

    /// Opens `dir`, also again after a handle to it was dropped.
    fn open(dir: &Path) -> Store {
        Store::reopen(dir, &StoreOptions::default()).unwrap()
    }

    fn write(store: &Store, room: &Room, user_key: &str, text: &str, cid: &str) -> NewEntry {
        NewEntry {
            room: RoomRef {
                name: room.name.as_str().into(),
                no: room.no,
            },
            id: store.take_id(),
            user_key: user_key.into(),
            write: LogWrite::Message(Message::new(
                user_key.to_uppercase(),
                text.into(),
                7,
                Some(cid.into()),
            )),
        }
    }

    /// What the first step of a group commit leaves when a crash stops it before the room
    /// records: the message and its cid, no counter.
    fn write_without_record(store: &Store, entry: &NewEntry) {
        let LogWrite::Message(message) = &entry.write else {
            unreachable!("messages only")
        };
        let cid = message.cid.as_deref().unwrap_or_default();
        store
            .messages
            .insert(message_key(entry.room.no, entry.id), codec::encode(message))
            .unwrap();
        let cid_entry = CidEntry {
            room: entry.room.name.to_string(),
            id: entry.id,
            ts: message.ts,
        };
        store
            .cids
            .insert(cid_key(&entry.user_key, cid), codec::encode(&cid_entry))
            .unwrap();
        store.flush().unwrap();
    }

    #[test]
    fn a_batch_of_messages_updates_each_room_once_with_count_and_newest_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let a = store.ensure_room("a", 0).unwrap();
        let b = store.ensure_room("b", 0).unwrap();
        let writes = [
            write(&store, &a, "ann", "1", "c1"),
            write(&store, &b, "bob", "2", "c2"),
            write(&store, &a, "ann", "3", "c3"),
        ];
        let batch: Vec<&NewEntry> = writes.iter().collect();
        assert_eq!(store.apply(&batch).unwrap(), Applied::default());
        let (a, b) = (
            store.room("a").unwrap().unwrap(),
            store.room("b").unwrap().unwrap(),
        );
        assert_eq!((a.count, a.last_id), (2, writes[2].id));
        assert_eq!((b.count, b.last_id), (1, writes[1].id));
        for w in &writes {
            let cid = w.write.cid().unwrap();
            let entry = store.cid(&w.user_key, cid).unwrap().unwrap();
            assert_eq!((entry.room.as_str(), entry.id), (&*w.room.name, w.id));
            assert!(store.message(w.room.no, w.id).unwrap().is_some());
        }
    }

    #[test]
    fn messages_for_a_room_deleted_or_renumbered_while_queued_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let gone = store.ensure_room("gone", 0).unwrap();
        let renumbered = store.ensure_room("renumbered", 0).unwrap();
        let kept = store.ensure_room("kept", 0).unwrap();
        let writes = [
            write(&store, &gone, "ann", "1", "c1"),
            write(&store, &kept, "ann", "2", "c2"),
            write(&store, &renumbered, "ann", "3", "c3"),
        ];
        store.remove_room_record("gone").unwrap();
        store.remove_room_record("renumbered").unwrap();
        let again = store.ensure_room("renumbered", 0).unwrap();
        assert_ne!(again.no, renumbered.no);
        let batch: Vec<&NewEntry> = writes.iter().collect();
        let applied = store.apply(&batch).unwrap();
        assert_eq!(applied.room_gone, vec![0, 2]);
        assert!(store.message(gone.no, writes[0].id).unwrap().is_none());
        assert!(store
            .message(renumbered.no, writes[2].id)
            .unwrap()
            .is_none());
        assert!(store.cid("ann", "c1").unwrap().is_none());
        assert!(store.cid("ann", "c3").unwrap().is_none());
        assert_eq!(store.room("renumbered").unwrap().unwrap().count, 0);
        assert_eq!(store.cid("ann", "c2").unwrap().unwrap().id, writes[1].id);
    }

    #[test]
    fn messages_a_crash_left_above_their_room_record_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (room, kept, cut) = {
            let store = open(dir.path());
            let room = store.ensure_room("general", 0).unwrap();
            let kept = write(&store, &room, "ann", "stored and counted", "kept");
            store.apply(&[&kept]).unwrap();
            let cut = write(&store, &room, "bob", "cut short", "cut");
            write_without_record(&store, &cut);
            assert!(store.message(room.no, cut.id).unwrap().is_some());
            (room, kept, cut)
        };
        let store = open(dir.path());
        assert!(store.message(room.no, cut.id).unwrap().is_none());
        assert!(store.cid("bob", "cut").unwrap().is_none());
        assert!(store.message(room.no, kept.id).unwrap().is_some());
        assert_eq!(store.cid("ann", "kept").unwrap().unwrap().id, kept.id);
        let record = store.room("general").unwrap().unwrap();
        assert_eq!((record.count, record.last_id), (1, kept.id));
        // The client's resend of the message it never saw acknowledged is stored, once.
        let resend = write(&store, &record, "bob", "cut short", "cut");
        assert!(resend.id > kept.id);
        store.apply(&[&resend]).unwrap();
        assert_eq!(store.cid("bob", "cut").unwrap().unwrap().id, resend.id);
        assert_eq!(store.room("general").unwrap().unwrap().count, 2);
    }

    #[test]
    fn a_cid_entry_that_names_another_message_survives_the_repair() {
        let dir = tempfile::tempdir().unwrap();
        let (room, original) = {
            let store = open(dir.path());
            let room = store.ensure_room("general", 0).unwrap();
            let original = write(&store, &room, "ann", "first", "same");
            store.apply(&[&original]).unwrap();
            // A message above the record whose cid entry names the stored original (the
            // commit path never writes this; the repair must not trust the message's cid).
            let stray = write(&store, &room, "ann", "stray", "same");
            store
                .messages
                .insert(
                    message_key(room.no, stray.id),
                    codec::encode(&Message::new(
                        "ANN".into(),
                        "stray".into(),
                        7,
                        Some("same".into()),
                    )),
                )
                .unwrap();
            store.flush().unwrap();
            (room, original)
        };
        let store = open(dir.path());
        assert_eq!(store.cid("ann", "same").unwrap().unwrap().id, original.id);
        assert!(store.message(room.no, original.id).unwrap().is_some());
    }
}
