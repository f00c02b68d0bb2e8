//! Maintenance operations for `chatd admin`: statistics, searching, pruning, export/import, bulk
//! loading (the test-data generator) and the raw copy behind `compact`.
//!
//! Everything here works on a live store as well as an offline one. Operations that touch many
//! messages work in small transactional chunks (never one huge transaction) so that a live
//! server keeps accepting messages in between, and so that an interrupted run leaves a
//! consistent database (every room's counters match its messages after each chunk).

use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::{
    abort, be_u64, cid_key, codec, message_key, split_message_key, tx_error, user_key, Change,
    CidEntry, Event, LogBackend, LogWrite, Message, NewEntry, Record, Room, RoomRef, Session,
    Store, StoreError, StoredMessage, User, META_ID_FLOOR,
};

/// A message ready for writing: id, value, and its cid key and value if it has one.
type EncodedMessage = (u64, Vec<u8>, Option<(Vec<u8>, Vec<u8>)>);

/// Messages removed (or inserted) per transaction.
pub const CHUNK: usize = 1000;

/// Slack allowed between a message's id order and its timestamp order when a time filter stops
/// a scan early: timestamps are taken just before the id, so neighbours can be out of order by
/// a few milliseconds; a clock stepped back by more than this may make a filter miss messages.
pub const CLOCK_SLACK_MS: u64 = 10 * 60 * 1000;

/// What to remove from a room when pruning.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct PruneRule {
    /// Remove messages with `ts` strictly below this (ms since the Unix epoch).
    pub before_ms: Option<u64>,
    /// Keep at most this many of the newest messages per room.
    pub keep_last: Option<u64>,
}

/// What pruning did (or would do) to one room.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PrunedRoom {
    /// Room name.
    pub room: String,
    /// Messages removed (or that would be removed).
    pub removed: u64,
    /// Lowest id removed.
    pub first_id: Option<u64>,
    /// Highest id removed.
    pub last_id: Option<u64>,
    /// Oldest timestamp removed.
    pub oldest_ts: Option<u64>,
    /// Newest timestamp removed.
    pub newest_ts: Option<u64>,
    /// Messages left in the room afterwards.
    pub remaining: u64,
}

/// Filters for [`Store::search`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Search {
    /// Only this room.
    pub room: Option<String>,
    /// Only messages by this user (any case).
    pub user: Option<String>,
    /// Only messages with `ts >= since_ms`.
    pub since_ms: Option<u64>,
    /// Only messages with `ts <= until_ms`.
    pub until_ms: Option<u64>,
    /// Only messages whose text contains this (case-insensitive).
    pub grep: Option<String>,
    /// At most this many (0: no limit).
    pub limit: usize,
    /// Oldest first instead of newest first.
    pub asc: bool,
}

/// A message found by [`Store::search`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Found {
    /// Room name.
    pub room: String,
    /// Message id.
    pub id: u64,
    /// The message.
    #[serde(flatten)]
    pub message: Message,
}

/// One line of an export file (JSON Lines). The first line is a [`Line::Header`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// Format and provenance.
    Header {
        /// Always `chatd-export`.
        format: String,
        /// Export format version (1).
        version: u32,
        /// When the export started, ms since the Unix epoch.
        exported_ms: u64,
        /// Every id at or below this was ever handed out: an import keeps new ids above it.
        id_floor: u64,
    },
    /// An account (the password hash only with `--with-secrets`).
    User {
        /// Name as registered.
        name: String,
        /// Registration time.
        created_ms: u64,
        /// Whether banned.
        banned: bool,
        /// Token epoch.
        token_epoch: u32,
        /// PHC hash, only in exports with secrets.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_hash: Option<String>,
    },
    /// A session (only with `--with-secrets`): the SHA-256 of its token, hex.
    Session {
        /// Hex SHA-256 of the token.
        token_sha256: String,
        /// Lower-cased user name.
        user: String,
        /// Issue time.
        created_ms: u64,
        /// Expiry.
        expires_ms: u64,
        /// Token epoch at issue.
        epoch: u32,
    },
    /// A room, with the newest id it had handed out when the export started.
    Room {
        /// Name.
        name: String,
        /// Creation time.
        created_ms: u64,
        /// Newest id assigned in the room at export start.
        last_id: u64,
        /// Messages in the room at export start.
        count: u64,
    },
    /// A message.
    Message {
        /// Room name.
        room: String,
        /// Id.
        id: u64,
        /// Author as displayed.
        user: String,
        /// Text.
        text: String,
        /// Acceptance time.
        ts: u64,
        /// Client idempotency key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
        /// When it was last edited (`text` is then the edited text). The edits themselves
        /// (`events`) are not exported.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edited_ts: Option<u64>,
    },
}

/// What an import changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Imported {
    /// Users created.
    pub users: u64,
    /// Users created without a password (they must get one with `users passwd`).
    pub users_without_password: Vec<String>,
    /// Users skipped because the name exists.
    pub users_skipped: u64,
    /// Sessions created.
    pub sessions: u64,
    /// Rooms created.
    pub rooms: u64,
    /// Messages stored.
    pub messages: u64,
    /// Messages skipped because their id exists in the room.
    pub messages_skipped: u64,
    /// Rooms that received messages, with the newest id now in each (to publish on a live hub).
    pub touched_rooms: Vec<(String, u64)>,
}

impl Imported {
    /// Counts a `user` line: created, or skipped because the name exists.
    pub(crate) fn count_user(&mut self, created: bool, line: &Line) {
        let Line::User {
            name,
            password_hash,
            ..
        } = line
        else {
            return;
        };
        if !created {
            self.users_skipped += 1;
            return;
        }
        self.users += 1;
        if password_hash.is_none() {
            self.users_without_password.push(name.clone());
        }
    }
}

/// The account a `user` line makes (an unusable password hash when the export had none).
pub(crate) fn imported_user(line: &Line) -> Option<User> {
    let Line::User {
        name,
        created_ms,
        banned,
        token_epoch,
        password_hash,
    } = line
    else {
        return None;
    };
    Some(User {
        name: name.clone(),
        password_hash: password_hash.clone().unwrap_or_else(|| "!".into()),
        created_ms: *created_ms,
        banned: *banned,
        token_epoch: *token_epoch,
    })
}

/// The token hash and session a `session` line makes (`None` for a hash that is not hex:
/// [`validate_line`] refuses those).
pub(crate) fn imported_session(line: &Line) -> Option<(Vec<u8>, Session)> {
    let Line::Session {
        token_sha256,
        user,
        created_ms,
        expires_ms,
        epoch,
    } = line
    else {
        return None;
    };
    Some((
        unhex(token_sha256)?,
        Session {
            user_key: user.clone(),
            created_ms: *created_ms,
            expires_ms: *expires_ms,
            epoch: *epoch,
        },
    ))
}

/// The `user` line of an account (its password hash only `with_secrets`).
pub(crate) fn user_line(user: User, with_secrets: bool) -> Line {
    Line::User {
        name: user.name,
        created_ms: user.created_ms,
        banned: user.banned,
        token_epoch: user.token_epoch,
        password_hash: with_secrets.then_some(user.password_hash),
    }
}

/// The `session` line of a session stored under `token_hash`.
pub(crate) fn session_line(token_hash: &[u8], session: Session) -> Line {
    Line::Session {
        token_sha256: hex(token_hash),
        user: session.user_key,
        created_ms: session.created_ms,
        expires_ms: session.expires_ms,
        epoch: session.epoch,
    }
}

/// The `message` line of message `m` of `room`, in its current state.
pub(crate) fn message_line(room: &str, m: StoredMessage) -> Line {
    Line::Message {
        room: room.to_string(),
        id: m.id,
        user: m.message.user,
        text: m.message.text,
        ts: m.message.ts,
        cid: m.message.cid,
        edited_ts: m.message.edited_ts,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A peekable per-room cursor for merging rooms by id.
struct Cursor<'a> {
    room: String,
    head: StoredMessage,
    rest: Box<dyn Iterator<Item = Result<StoredMessage, StoreError>> + 'a>,
    asc: bool,
}

impl PartialEq for Cursor<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.head.id == other.head.id
    }
}
impl Eq for Cursor<'_> {}
impl PartialOrd for Cursor<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cursor<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // BinaryHeap pops the greatest: newest first, or oldest first when ascending.
        if self.asc {
            other.head.id.cmp(&self.head.id)
        } else {
            self.head.id.cmp(&other.head.id)
        }
    }
}

impl Store {
    /// Messages in all rooms: the sum of the rooms' maintained counters.
    pub fn message_count(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for room in self.rooms() {
            total += room?.count;
        }
        Ok(total)
    }

    /// The oldest and newest message of a room.
    pub fn room_ends(
        &self,
        room: &Room,
    ) -> Result<(Option<StoredMessage>, Option<StoredMessage>), StoreError> {
        let mut it = self.room_messages(room.no);
        let first = it.next().transpose()?;
        let last = it.next_back().transpose()?;
        let last = last.or_else(|| first.clone());
        Ok((first, last))
    }

    /// The room holding message `id`, and the message. Ids are unique across rooms.
    pub fn find_message(&self, id: u64) -> Result<Option<(Room, StoredMessage)>, StoreError> {
        for room in self.rooms() {
            let room = room?;
            if let Some(found) = self.message(room.no, id)? {
                return Ok(Some((room, found)));
            }
        }
        Ok(None)
    }

    /// Live sessions of a user (valid token epoch, not expired at `now_ms`).
    pub fn session_count(&self, user: &User, now_ms: u64) -> Result<u64, StoreError> {
        let key = user_key(&user.name);
        let mut n = 0;
        for kv in self.sessions.iter() {
            let (k, v) = kv?;
            let s: Session = codec::decode(&v, &k)?;
            if s.user_key == key && s.epoch == user.token_epoch && s.expires_ms > now_ms {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Messages matching `search`, newest first (or oldest first with `asc`), at most `limit`.
    /// Rooms are merged by id, so the order is the server's acceptance order.
    pub fn search(&self, search: &Search) -> Result<Vec<Found>, StoreError> {
        let rooms: Vec<Room> = match &search.room {
            Some(name) => self.room(name)?.into_iter().collect(),
            None => self.rooms().collect::<Result<_, _>>()?,
        };
        let user = search.user.as_deref().map(user_key);
        let grep = search.grep.as_deref().map(str::to_lowercase);
        let mut heap = BinaryHeap::new();
        for room in &rooms {
            let it = self.room_messages(room.no);
            let mut rest: Box<dyn Iterator<Item = _>> = if search.asc {
                Box::new(it)
            } else {
                Box::new(it.rev())
            };
            if let Some(head) = rest.next().transpose()? {
                heap.push(Cursor {
                    room: room.name.clone(),
                    head,
                    rest,
                    asc: search.asc,
                });
            }
        }
        let mut found = Vec::new();
        while let Some(mut cursor) = heap.pop() {
            let m = &cursor.head;
            // Time bounds in the direction of the scan end this room's cursor.
            let past_end = if search.asc {
                search
                    .until_ms
                    .is_some_and(|u| m.message.ts > u.saturating_add(CLOCK_SLACK_MS))
            } else {
                search
                    .since_ms
                    .is_some_and(|s| m.message.ts.saturating_add(CLOCK_SLACK_MS) < s)
            };
            if past_end {
                continue;
            }
            let matches = search.since_ms.is_none_or(|s| m.message.ts >= s)
                && search.until_ms.is_none_or(|u| m.message.ts <= u)
                && user
                    .as_deref()
                    .is_none_or(|u| user_key(&m.message.user) == u)
                && grep
                    .as_deref()
                    .is_none_or(|g| m.message.text.to_lowercase().contains(g));
            if matches {
                found.push(Found {
                    room: cursor.room.clone(),
                    id: m.id,
                    message: m.message.clone(),
                });
                if search.limit != 0 && found.len() >= search.limit {
                    break;
                }
            }
            if let Some(next) = cursor.rest.next().transpose()? {
                cursor.head = next;
                heap.push(cursor);
            }
        }
        Ok(found)
    }

    /// Removes what `rule` selects from `room` (or, with `dry_run`, only counts it). Works in
    /// chunks of [`CHUNK`] messages, calling `between_chunks` after each so a live server can
    /// breathe. A room's `last_id` is never lowered: ids are not reused.
    pub fn prune_room(
        &self,
        room: &Room,
        rule: PruneRule,
        dry_run: bool,
        between_chunks: &mut dyn FnMut(),
    ) -> Result<PrunedRoom, StoreError> {
        let mut report = PrunedRoom {
            room: room.name.clone(),
            ..PrunedRoom::default()
        };
        // Messages beyond the newest `keep_last`, counted from the oldest. Concurrent appends
        // only add newer messages, so removing this many oldest ones still keeps `keep_last`.
        let mut excess = rule
            .keep_last
            .map_or(0, |keep| room.count.saturating_sub(keep));
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut removed = 0;
        for kv in self.messages.scan_prefix(room.no.to_be_bytes()) {
            let (k, v) = kv?;
            let Some((_, id)) = split_message_key(&k) else {
                continue;
            };
            if id > room.last_id {
                break; // appended after we started: never a candidate
            }
            let over_count = excess > 0;
            let ts = super::decode_message(&k, &v)?.message.ts;
            let too_old = rule.before_ms.is_some_and(|b| ts < b);
            if !over_count && !too_old {
                if rule
                    .before_ms
                    .is_none_or(|b| ts >= b.saturating_add(CLOCK_SLACK_MS))
                {
                    break; // nothing newer can qualify
                }
                continue;
            }
            excess = excess.saturating_sub(1);
            report.removed += 1;
            report.first_id.get_or_insert(id);
            report.last_id = Some(id);
            report.oldest_ts = Some(report.oldest_ts.map_or(ts, |o: u64| o.min(ts)));
            report.newest_ts = Some(report.newest_ts.map_or(ts, |n: u64| n.max(ts)));
            if !dry_run {
                chunk.push(id);
                if chunk.len() == CHUNK {
                    removed += self.remove_messages(&room.name, &chunk)?;
                    chunk.clear();
                    between_chunks();
                }
            }
        }
        if !chunk.is_empty() {
            removed += self.remove_messages(&room.name, &chunk)?;
        }
        let now = self.room(&room.name)?.map_or(0, |r| r.count);
        if dry_run {
            report.remaining = now.saturating_sub(report.removed);
        } else {
            report.removed = removed;
            report.remaining = now;
        }
        Ok(report)
    }

    /// The ids of every message `user` wrote (matched by name, any case), per room.
    pub fn user_message_ids(&self, user: &str) -> Result<Vec<(String, Vec<u64>)>, StoreError> {
        let mut out = Vec::new();
        let rooms: Vec<Room> = self.rooms().collect::<Result<_, _>>()?;
        for room in rooms {
            let mut ids = Vec::new();
            for kv in self.messages.scan_prefix(room.no.to_be_bytes()) {
                let (k, v) = kv?;
                let author = codec::decode_head(&v).map(|(author, _)| author);
                match author {
                    Some(author) if author.eq_ignore_ascii_case(user) => {
                        ids.push(super::decode_message(&k, &v)?.id)
                    }
                    Some(_) => {}
                    // Decoding it whole names the damaged value.
                    None => drop(super::decode_message(&k, &v)?),
                }
            }
            if !ids.is_empty() {
                out.push((room.name, ids));
            }
        }
        Ok(out)
    }

    /// Deletes messages `ids` of `room` as sequenced `deleted` events by `user` (an admin's
    /// deletions while no server runs; a running server's go through its hub). Ids that are not
    /// messages of the room are skipped. Returns how many were deleted; durable with the next
    /// flush.
    pub fn delete_as_events(
        &self,
        room: &str,
        ids: &[u64],
        user: &str,
        ts: u64,
        between_chunks: &mut dyn FnMut(),
    ) -> Result<u64, StoreError> {
        let Some(record) = self.room(room)? else {
            return Ok(0);
        };
        let room_ref = RoomRef {
            name: room.into(),
            no: record.no,
        };
        let mut deleted = 0;
        for chunk in ids.chunks(CHUNK) {
            let entries: Vec<NewEntry> = chunk
                .iter()
                .map(|&target| NewEntry {
                    room: room_ref.clone(),
                    id: self.take_id(),
                    user_key: "".into(),
                    write: LogWrite::Event {
                        event: Event {
                            target,
                            user: user.to_owned(),
                            ts,
                            change: Change::Deleted,
                        },
                        cid: None,
                    },
                })
                .collect();
            let batch: Vec<&NewEntry> = entries.iter().collect();
            let applied = self.apply(&batch)?;
            deleted += (chunk.len() - applied.target_gone.len() - applied.room_gone.len()) as u64;
            between_chunks();
        }
        Ok(deleted)
    }

    /// Deletes a room's record first (so no new message can be stored in it and its name is
    /// free again), retiring its ids, then its messages. Returns the removed record.
    pub fn remove_room_record(&self, name: &str) -> Result<Option<Room>, StoreError> {
        let Some(room) = self.room(name)? else {
            return Ok(None);
        };
        self.raise_id_floor(room.last_id)?;
        self.rooms.remove(name.as_bytes())?;
        Ok(Some(room))
    }

    /// Removes the messages and events stored under room number `no` (after
    /// [`Store::remove_room_record`]). Returns how many messages went.
    pub fn purge_room_messages(
        &self,
        no: u32,
        between_chunks: &mut dyn FnMut(),
    ) -> Result<u64, StoreError> {
        self.unread.forget_all();
        let mut n = 0;
        for (tree, counted) in [(&self.messages, true), (&self.events, false)] {
            loop {
                let mut batch = sled::Batch::default();
                let mut pending = 0;
                for kv in tree.scan_prefix(no.to_be_bytes()).take(CHUNK * 10) {
                    batch.remove(kv?.0);
                    pending += 1;
                }
                if pending == 0 {
                    break;
                }
                tree.apply_batch(batch)?;
                if counted {
                    n += pending;
                }
                between_chunks();
            }
        }
        Ok(n)
    }

    /// Deletes room `name` without a server: its record (retiring its ids), then its messages,
    /// events and memberships. Returns the removed record and how many messages went. A running
    /// server deletes rooms through its hub instead.
    pub fn delete_room(
        &self,
        name: &str,
        between_chunks: &mut dyn FnMut(),
    ) -> Result<Option<(Room, u64)>, StoreError> {
        let Some(room) = self.remove_room_record(name)? else {
            return Ok(None);
        };
        let n = self.purge_room_messages(room.no, between_chunks)?;
        self.remove_room_memberships(name)?;
        Ok(Some((room, n)))
    }

    /// Removes every session of `user` (any case) and the cids the user sent; returns how
    /// many sessions went. Used when an account is deleted, so a later account of the same
    /// name cannot resume the old sessions or collide with the old cids.
    pub fn remove_user_sessions(&self, user: &str) -> Result<u64, StoreError> {
        let key = user_key(user);
        let mut n = 0;
        for kv in self.sessions.iter() {
            let (k, v) = kv?;
            let s: Session = codec::decode(&v, &k)?;
            if s.user_key == key {
                self.sessions.remove(&k)?;
                n += 1;
            }
        }
        let mut prefix = key.into_bytes();
        prefix.push(0);
        let mut batch = sled::Batch::default();
        for kv in self.cids.scan_prefix(&prefix) {
            batch.remove(kv?.0);
        }
        self.cids.apply_batch(batch)?;
        Ok(n)
    }

    /// Reserves `n` consecutive new ids and returns the first (for bulk loading).
    pub fn reserve_ids(&self, n: u64) -> u64 {
        self.next_id.fetch_add(n, Ordering::SeqCst)
    }

    /// The highest id ever handed out (every future id is above it).
    pub fn id_floor(&self) -> u64 {
        self.next_id.load(Ordering::SeqCst).saturating_sub(1)
    }

    fn raise_next_id(&self, id: u64) {
        self.next_id.fetch_max(id + 1, Ordering::SeqCst);
    }

    /// Writes the database as export [`Line`]s to `sink`.
    ///
    /// Consistency while a server runs: the room list and each room's `last_id` are read first;
    /// each room then contributes its messages with ids up to that `last_id`. Stored messages
    /// never change, so the export is the database as of its start, minus messages deleted
    /// (pruned, moderated) while it ran; messages sent meanwhile are left out. Chat messages and
    /// their room's `last_id` are applied in one transaction per group commit, so every id up to
    /// a `last_id` read here is either stored or deleted, never still on its way. Users are read
    /// after rooms (accounts created meanwhile may appear; authors of exported messages do).
    pub fn export<E: From<StoreError>>(
        &self,
        with_secrets: bool,
        now_ms: u64,
        sink: &mut dyn FnMut(Line) -> Result<(), E>,
    ) -> Result<(), E> {
        let id_floor = self.id_floor();
        let rooms: Vec<Room> = self.rooms().collect::<Result<_, _>>().map_err(E::from)?;
        sink(Line::Header {
            format: "chatd-export".into(),
            version: 1,
            exported_ms: now_ms,
            id_floor,
        })?;
        for user in self.users() {
            sink(user_line(user.map_err(E::from)?, with_secrets))?;
        }
        if with_secrets {
            for kv in self.sessions.iter() {
                let (k, v) = kv.map_err(|e| E::from(e.into()))?;
                let s: Session = codec::decode(&v, &k).map_err(E::from)?;
                sink(session_line(&k, s))?;
            }
        }
        for room in &rooms {
            sink(Line::Room {
                name: room.name.clone(),
                created_ms: room.created_ms,
                last_id: room.last_id,
                count: room.count,
            })?;
        }
        for room in &rooms {
            let range = message_key(room.no, 0)..=message_key(room.no, room.last_id);
            for kv in self.messages.range(range) {
                let (k, v) = kv.map_err(|e| E::from(e.into()))?;
                let m = super::decode_message(&k, &v).map_err(E::from)?;
                sink(message_line(&room.name, m))?;
            }
        }
        Ok(())
    }

    /// Applies export lines idempotently: existing users, sessions and messages (same room and
    /// id) are kept as they are; rooms are created as needed and their `last_id` raised to the
    /// exported one; new ids stay above every imported id. Users exported without a password
    /// hash get an unusable one. The lines must have been validated ([`validate_line`]).
    pub fn import(&self, lines: &[Line], report: &mut Imported) -> Result<(), StoreError> {
        let mut i = 0;
        while i < lines.len() {
            match &lines[i] {
                Line::Header { id_floor, .. } => {
                    self.raise_id_floor(*id_floor)?;
                    self.raise_next_id(*id_floor);
                }
                line @ Line::User { .. } => {
                    if let Some(user) = imported_user(line) {
                        let created = self.insert_user(&user)?;
                        report.count_user(created, line);
                    }
                }
                line @ Line::Session { .. } => {
                    // Validated lines hold hex hashes: `None` never happens here.
                    if let Some((key, session)) = imported_session(line) {
                        let value = codec::encode(&session);
                        let stored = self.sessions.compare_and_swap(
                            key,
                            None as Option<&[u8]>,
                            Some(value),
                        )?;
                        report.sessions += u64::from(stored.is_ok());
                    }
                }
                Line::Room {
                    name,
                    created_ms,
                    last_id,
                    ..
                } => {
                    if self.room(name)?.is_none() {
                        report.rooms += 1;
                    }
                    self.ensure_room(name, *created_ms)?;
                    self.raise_room_last_id(name, *last_id)?;
                }
                Line::Message { room, .. } => {
                    // A run of messages of one room goes in as chunks.
                    let start = i;
                    while i < lines.len()
                        && i - start < CHUNK
                        && matches!(&lines[i], Line::Message { room: r, .. } if r == room)
                    {
                        i += 1;
                    }
                    let batch: Vec<(u64, Message)> = lines[start..i]
                        .iter()
                        .filter_map(|l| match l {
                            Line::Message {
                                id,
                                user,
                                text,
                                ts,
                                cid,
                                edited_ts,
                                ..
                            } => Some((
                                *id,
                                Message {
                                    edited_ts: *edited_ts,
                                    ..Message::new(user.clone(), text.clone(), *ts, cid.clone())
                                },
                            )),
                            _ => None,
                        })
                        .collect();
                    if self.room(room)?.is_none() {
                        report.rooms += 1;
                        let created = batch.first().map_or(0, |(_, m)| m.ts);
                        self.ensure_room(room, created)?;
                    }
                    let stored = self.insert_messages(room, &batch)?;
                    report.messages += stored;
                    report.messages_skipped += batch.len() as u64 - stored;
                    let last = self.room(room)?.map_or(0, |r| r.last_id);
                    match report.touched_rooms.iter_mut().find(|(r, _)| r == room) {
                        Some(entry) => entry.1 = entry.1.max(last),
                        None => report.touched_rooms.push((room.clone(), last)),
                    }
                    continue;
                }
            }
            i += 1;
        }
        Ok(())
    }

    fn raise_room_last_id(&self, name: &str, last_id: u64) -> Result<(), StoreError> {
        self.raise_next_id(last_id);
        self.rooms
            .transaction(|rooms| {
                let Some(current) = rooms.get(name.as_bytes())? else {
                    return Ok(());
                };
                let mut record: Room = match codec::decode(&current, name.as_bytes()) {
                    Ok(r) => r,
                    Err(e) => return abort(e),
                };
                if record.last_id < last_id {
                    record.last_id = last_id;
                    rooms.insert(name.as_bytes(), codec::encode(&record))?;
                }
                Ok(())
            })
            .map_err(tx_error)
    }

    /// Stores messages with the given ids in an existing room, skipping ids already present, in
    /// one transaction per [`CHUNK`]; keeps the room's counters and `last_id` (raised, never
    /// lowered) right, records cids not yet known, and keeps future ids above these. Returns
    /// how many were stored.
    pub fn insert_messages(&self, room: &str, batch: &[(u64, Message)]) -> Result<u64, StoreError> {
        // Imported ids may fall below what unread counts already covered.
        self.unread.forget_all();
        let mut stored = 0;
        for chunk in batch.chunks(CHUNK) {
            if let Some(max) = chunk.iter().map(|(id, _)| *id).max() {
                self.raise_next_id(max);
            }
            let encoded: Vec<EncodedMessage> = chunk
                .iter()
                .map(|(id, m)| {
                    let cid = m.cid.as_deref().map(|c| {
                        (
                            cid_key(&user_key(&m.user), c),
                            codec::encode(&CidEntry {
                                room: room.to_owned(),
                                id: *id,
                                ts: m.ts,
                            }),
                        )
                    });
                    (*id, codec::encode(m), cid)
                })
                .collect();
            stored += (&self.messages, &self.cids, &self.rooms)
                .transaction(|(messages, cids, rooms)| {
                    let Some(current) = rooms.get(room.as_bytes())? else {
                        return abort(StoreError::Corrupt {
                            kind: Room::KIND,
                            key: room.to_owned(),
                            detail: "room record missing while importing".into(),
                        });
                    };
                    let mut record: Room = match codec::decode(&current, room.as_bytes()) {
                        Ok(r) => r,
                        Err(e) => return abort(e),
                    };
                    let mut n = 0;
                    for (id, value, cid) in &encoded {
                        let key = message_key(record.no, *id);
                        if messages.get(key)?.is_some() {
                            continue;
                        }
                        messages.insert(&key, value.as_slice())?;
                        if let Some((cid_key, cid_value)) = cid {
                            if cids.get(cid_key)?.is_none() {
                                cids.insert(cid_key.as_slice(), cid_value.as_slice())?;
                            }
                        }
                        record.last_id = record.last_id.max(*id);
                        record.count += 1;
                        n += 1;
                    }
                    rooms.insert(room.as_bytes(), codec::encode(&record))?;
                    Ok(n)
                })
                .map_err(tx_error)?;
        }
        Ok(stored)
    }

    /// Copies every tree, key for key, into `target` (a fresh database): the heart of
    /// `compact`. Returns the number of entries copied; `copied` is told the running total
    /// after each batch.
    pub fn copy_into(
        &self,
        target: &Store,
        copied: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError> {
        let pairs = [
            (&self.users, &target.users),
            (&self.sessions, &target.sessions),
            (&self.rooms, &target.rooms),
            (&self.messages, &target.messages),
            (&self.events, &target.events),
            (&self.cids, &target.cids),
            (&self.meta, &target.meta),
            (&self.skeletons, &target.skeletons),
            (&self.memberships, &target.memberships),
        ];
        let mut n = 0;
        for (from, to) in pairs {
            let mut batch = sled::Batch::default();
            let mut pending = 0;
            for kv in from.iter() {
                let (k, v) = kv?;
                batch.insert(k, v);
                pending += 1;
                if pending == 10_000 {
                    to.apply_batch(std::mem::take(&mut batch))?;
                    n += pending;
                    pending = 0;
                    copied(n);
                }
            }
            to.apply_batch(batch)?;
            n += pending;
            copied(n);
        }
        // Keep the id floor: the fresh store derived its next id from rooms only.
        let floor = be_u64(&self.meta.get(META_ID_FLOOR)?.unwrap_or_default());
        target.raise_id_floor(floor.max(self.id_floor()))?;
        target.flush()?;
        Ok(n)
    }
}

/// Checks one parsed export line; the error says what is wrong with it.
pub fn validate_line(line: &Line) -> Result<(), String> {
    use crate::rules::{valid_any_room_name, valid_user_name, MAX_ID};
    match line {
        Line::Header {
            format, version, ..
        } if format != "chatd-export" || *version != 1 => {
            return Err(format!(
                "unsupported export format `{format}` version {version} (this chatd reads chatd-export version 1)"
            ));
        }
        Line::User { name, .. } if !valid_user_name(name) => {
            return Err(format!("invalid user name `{name}`"))
        }
        Line::Session {
            token_sha256, user, ..
        } => {
            if unhex(token_sha256).is_none_or(|k| k.len() != 32) {
                return Err("token_sha256 must be 64 hex digits".into());
            }
            if !valid_user_name(user) {
                return Err(format!("invalid user name `{user}`"));
            }
        }
        Line::Room { name, last_id, .. } => {
            if !valid_any_room_name(name) {
                return Err(format!("invalid room name `{name}`"));
            }
            if *last_id > MAX_ID {
                return Err(format!("last_id {last_id} exceeds 2^53-1"));
            }
        }
        Line::Message { room, id, text, .. } => {
            if !valid_any_room_name(room) {
                return Err(format!("invalid room name `{room}`"));
            }
            if *id == 0 || *id > MAX_ID {
                return Err(format!("message id {id} is outside 1..2^53-1"));
            }
            if text.is_empty() {
                return Err(format!("message {id} has empty text"));
            }
        }
        _ => {}
    }
    Ok(())
}
