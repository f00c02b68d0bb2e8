//! The durable store: users, sessions, rooms, messages and cids in one embedded sled database.
//!
//! Key layout (also in docs/STORAGE.md):
//!
//! | tree       | key                                   | value            |
//! |------------|---------------------------------------|------------------|
//! | `users`    | lower-cased user name                 | [`User`]         |
//! | `sessions` | SHA-256 of the token (32 bytes)       | [`Session`]      |
//! | `rooms`    | room name                             | [`Room`]         |
//! | `messages` | room no (u32 BE) ++ message id (u64 BE) | [`Message`]    |
//! | `events`   | room no (u32 BE) ++ seq (u64 BE)      | [`Event`]        |
//! | `memberships` | user key ++ 0x00 ++ room name      | [`Membership`]   |
//! | `cids`     | user key ++ 0x00 ++ cid               | [`CidEntry`]     |
//! | `meta`     | `schema`, `next_room_no`, `id_floor`, `users` | u32/u64 BE |
//! | `meta`     | `presence` (only between a shutdown and the next start) | [`PresenceSnapshot`] |
//! | `meta`     | `write_probe` (written only after a failed write, to test the disk) | u64 BE |
//! | `meta`     | `skeletons`: format of the `skeletons` tree it was built with | u8 |
//! | `skeletons`| [`rules::name_skeleton`] of a user's name | 1 ++ user keys joined by `\n` |
//!
//! The `skeletons` tree is an index of `users`, kept in the same transactions, so registration
//! can refuse a name that looks like an existing one in one lookup. A database from before the
//! index (no `meta` `skeletons`) gets it built on open.
//!
//! Big-endian ids make sled's byte order the id order, so a room's history is one range scan.
//! Writes that must agree (messages, their cids and their rooms' counters) go in one sled
//! transaction: chat messages as one transaction per group commit ([`LogBackend::apply`], driven
//! by the `commit::Committer`), admin imports and removals in transactional chunks. Room
//! records are always read and written inside those transactions, never from a cached copy.
//! Nothing here waits for the disk: durability is the committer's job.

pub(crate) mod codec;
pub mod commit;
mod conversations;
pub mod gate;
pub mod log;
pub mod maintenance;
mod message_batch;
pub mod permissions;
mod records;

use std::collections::BTreeMap;

use crate::rules;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

pub use codec::Record;
pub(crate) use conversations::listed;
pub use conversations::{Conversation, ReadState, UNREAD_CAP};
pub use log::{Applied, EntryPage, LogBackend, LogItem, LogWrite, NewEntry, RoomRef};
use records::MessageV1;
pub use records::{
    Change, CidEntry, Event, Membership, Message, PresenceSnapshot, Room, RoomPresence, Session,
    User,
};

/// The on-disk schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

const META_SCHEMA: &[u8] = b"schema";
const META_NEXT_ROOM_NO: &[u8] = b"next_room_no";
const META_ID_FLOOR: &[u8] = b"id_floor";
const META_USERS: &[u8] = b"users";
const META_PRESENCE: &[u8] = b"presence";
const META_WRITE_PROBE: &[u8] = b"write_probe";
const META_SKELETONS: &[u8] = b"skeletons";

/// The format byte in front of every `skeletons` value, also stored as `meta` `skeletons` once
/// the index is complete.
const SKELETON_FORMAT: u8 = 1;

/// A file chatd writes beside sled's own once a database is initialised. sled treats unreadable
/// log data as a torn write and may open a damaged database as an empty one; the marker tells
/// that apart from a new database.
const MARKER_FILE: &str = "chatd.format";

/// Errors from the store. Messages name the path or record so an operator can act on them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds sled's exclusive lock.
    #[error("the database at {path} is locked by another process (is `chatd serve` already running on this data directory?)")]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// Opening failed for another reason (permissions, corruption detected by sled, …).
    #[error("cannot open the database at {path}: {source}")]
    Open {
        /// The database directory.
        path: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// The database was written by an incompatible chatd.
    #[error("the database at {path} has schema version {found}, this chatd supports version {supported}; use a matching chatd release")]
    Schema {
        /// The database directory.
        path: PathBuf,
        /// Version found on disk.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// chatd created a database here, but sled now finds it empty: its files were damaged or
    /// replaced. Starting over would silently lose everything, so chatd refuses.
    #[error("the database at {path} was created by chatd but now reads as empty (its files are damaged or were replaced); refusing to start over it: restore it from a backup, or move the directory away to start with an empty database")]
    Damaged {
        /// The database directory.
        path: PathBuf,
    },
    /// A stored value does not decode.
    #[error("corrupt {kind} record (key {key:?}): {detail}")]
    Corrupt {
        /// Record kind.
        kind: &'static str,
        /// Key, lossily as text.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A read or write failed.
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    /// A message was queued for a room that an admin deleted before the write was applied.
    #[error("room `{room}` was deleted before the message was stored")]
    RoomGone {
        /// The room's name.
        room: String,
    },
    /// An edit or deletion was queued for a message that an earlier write deleted.
    #[error("the message in `{room}` was deleted before the change was stored")]
    MessageGone {
        /// The room's name.
        room: String,
    },
    /// A repeated cid refers to a message whose own write failed, so there is no original to
    /// acknowledge.
    #[error("the original message of cid `{cid}` was not stored")]
    OriginalNotStored {
        /// The cid.
        cid: String,
    },
    /// The committer has shut down; nothing more is written.
    #[error("the store is shutting down; the write was refused")]
    Stopped,
    /// The write gate refuses writes (low disk space, a stuck or failed write): nothing was
    /// queued, nothing is stored.
    #[error("{}", condition.refusal())]
    Unavailable {
        /// Why.
        condition: gate::Condition,
    },
    /// The database's files cannot be made private to their owner.
    #[error(transparent)]
    Private(#[from] permissions::DataDirError),
}

/// Outcome of [`Store::register_user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewUser {
    /// The account was created.
    Created,
    /// The name is taken (in any case).
    Taken,
    /// Another account's name looks the same ([`rules::name_skeleton`]).
    LookAlike,
}

/// Outcome of [`commit::Committer::append`].
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// Stored under this id.
    New(u64),
    /// The user already used this cid: nothing was stored; here is the original.
    Duplicate(CidEntry),
}

/// Options for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache size in bytes.
    pub cache_bytes: u64,
    /// Let sled flush in the background every 500 ms (only for relaxed durability; in strict
    /// mode the committer flushes and a background flush would only add disk traffic).
    pub background_flush: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 128 * 1024 * 1024,
            background_flush: false,
        }
    }
}

/// A message with its id, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Message id.
    pub id: u64,
    /// The message.
    pub message: Message,
}

/// A page of messages, ascending by id, and whether more exist in the direction read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    /// Messages, ascending by id.
    pub messages: Vec<StoredMessage>,
    /// Whether more messages exist beyond this page in the direction read.
    pub more: bool,
}

/// The open database.
pub struct Store {
    db: sled::Db,
    users: sled::Tree,
    sessions: sled::Tree,
    rooms: sled::Tree,
    messages: sled::Tree,
    events: sled::Tree,
    cids: sled::Tree,
    meta: sled::Tree,
    skeletons: sled::Tree,
    memberships: sled::Tree,
    path: PathBuf,
    /// sled's log file, opened a second time for [`Store::flush`]: sled's own flush ends with
    /// `sync_file_range`, which neither commits the file's metadata (its new size when the log
    /// grows into a new segment) nor flushes the disk's write cache. That survives `kill -9`, not
    /// a power loss or a kernel crash; `fdatasync` on this descriptor does (it syncs the file,
    /// whichever descriptor asks).
    log_file: std::fs::File,
    next_id: AtomicU64,
    /// Unread counts already made, so a `rooms` request only reads what arrived since.
    unread: conversations::UnreadCache,
}

/// sled 0.34's log file inside the database directory (`Config::db_path`).
const SLED_LOG_FILE: &str = "db";

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

/// A write of a batch, encoded: its key, its value (for an event, the event's), and its cid key
/// and value if it has one.
type EncodedWrite = ([u8; 12], Vec<u8>, Option<(Vec<u8>, Vec<u8>)>);

/// The `messages` key of a message.
pub fn message_key(room_no: u32, id: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&room_no.to_be_bytes());
    key[4..].copy_from_slice(&id.to_be_bytes());
    key
}

fn split_message_key(key: &[u8]) -> Option<(u32, u64)> {
    let room: [u8; 4] = key.get(..4)?.try_into().ok()?;
    let id: [u8; 8] = key.get(4..12)?.try_into().ok()?;
    Some((u32::from_be_bytes(room), u64::from_be_bytes(id)))
}

fn cid_key(user_key: &str, cid: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(user_key.len() + 1 + cid.len());
    key.extend_from_slice(user_key.as_bytes());
    key.push(0);
    key.extend_from_slice(cid.as_bytes());
    key
}

fn be_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// The case-insensitive key of a user name.
pub fn user_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn encode_skeleton_holders(holders: &[String]) -> Vec<u8> {
    let mut value = vec![SKELETON_FORMAT];
    value.extend_from_slice(holders.join("\n").as_bytes());
    value
}

fn decode_skeleton_holders(value: &[u8], skeleton: &str) -> Result<Vec<String>, StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt {
        kind: "skeleton",
        key: skeleton.to_owned(),
        detail: detail.to_owned(),
    };
    match value.split_first() {
        Some((&SKELETON_FORMAT, rest)) => std::str::from_utf8(rest)
            .map(|text| text.split('\n').map(str::to_owned).collect())
            .map_err(|_| corrupt("user keys are not UTF-8")),
        Some((format, _)) => Err(corrupt(&format!("unknown format {format}"))),
        None => Err(corrupt("empty value")),
    }
}

fn decode_message(key: &[u8], value: &[u8]) -> Result<StoredMessage, StoreError> {
    let (_, id) = split_message_key(key).ok_or_else(|| StoreError::Corrupt {
        kind: Message::KIND,
        key: format!("{key:?}"),
        detail: "key is not room no + id".into(),
    })?;
    Ok(StoredMessage {
        id,
        message: codec::decode_upgrading::<Message, MessageV1>(value, key)?,
    })
}

fn decode_event(key: &[u8], value: &[u8]) -> Result<(u64, Event), StoreError> {
    let (_, seq) = split_message_key(key).ok_or_else(|| StoreError::Corrupt {
        kind: Event::KIND,
        key: format!("{key:?}"),
        detail: "key is not room no + seq".into(),
    })?;
    Ok((seq, codec::decode(value, key)?))
}

/// Decodes `bytes` as every kind of stored value, and as a message under a key taken from its
/// first 16 bytes; for the fuzz targets, which check that no stored value can make a read panic.
#[cfg(feature = "fuzzing")]
pub(crate) fn decode_any(bytes: &[u8]) {
    let key = b"fuzz";
    let _ = codec::decode::<User>(bytes, key);
    let _ = codec::decode::<Session>(bytes, key);
    let _ = codec::decode::<Room>(bytes, key);
    let _ = codec::decode::<Message>(bytes, key);
    let _ = codec::decode::<CidEntry>(bytes, key);
    let _ = codec::decode::<Event>(bytes, key);
    let _ = codec::decode::<Membership>(bytes, key);
    let _ = codec::decode_head(bytes);
    let _ = codec::decode::<PresenceSnapshot>(bytes, key);
    if let Some((key, value)) = bytes.split_at_checked(16) {
        let _ = decode_message(key, value);
        let _ = decode_event(key, value);
    }
}

impl Store {
    /// Opens (creating if needed) the database in `dir`. Never resets an existing database: a
    /// lock held by another process, corruption or a foreign schema is an error naming the path.
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let path = dir.to_path_buf();
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(options.cache_bytes)
            .flush_every_ms(options.background_flush.then_some(500))
            .open()
            .map_err(|source| match &source {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::Locked { path: path.clone() }
                }
                _ => StoreError::Open {
                    path: path.clone(),
                    source,
                },
            })?;
        let log_file =
            std::fs::File::open(path.join(SLED_LOG_FILE)).map_err(|e| StoreError::Open {
                path: path.clone(),
                source: sled::Error::Io(e),
            })?;
        let open = |name: &str| db.open_tree(name);
        let store = Store {
            users: open("users")?,
            sessions: open("sessions")?,
            rooms: open("rooms")?,
            messages: open("messages")?,
            events: open("events")?,
            cids: open("cids")?,
            meta: open("meta")?,
            skeletons: open("skeletons")?,
            memberships: open("memberships")?,
            db,
            path,
            log_file,
            next_id: AtomicU64::new(1),
            unread: conversations::UnreadCache::default(),
        };
        store.check_schema()?;
        // sled's files follow the umask; whatever it was, nobody else may read them.
        permissions::restrict_tree(&store.path)?;
        store.index_skeletons()?;
        store.remove_unrecorded()?;
        let mut max_id = be_u64(&store.meta.get(META_ID_FLOOR)?.unwrap_or_default());
        for room in store.rooms() {
            max_id = max_id.max(room?.last_id);
        }
        store.next_id.store(max_id + 1, Ordering::SeqCst);
        Ok(store)
    }

    /// [`Store::open`] for a database this process has just closed. sled releases its file
    /// lock from its own threads a moment after the last handle is dropped, so `Locked` is
    /// retried for a few seconds; any other outcome is returned at once.
    pub(crate) fn reopen(dir: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Store::open(dir, options) {
                Err(StoreError::Locked { .. }) if Instant::now() < deadline => {
                    // Polling with a deadline: sled offers no event for its lock's release.
                    std::thread::sleep(Duration::from_millis(10));
                }
                opened => return opened,
            }
        }
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let marker = self.path.join(MARKER_FILE);
        let write_marker = || {
            std::fs::write(
                &marker,
                format!("chatd database, schema {SCHEMA_VERSION}\n"),
            )
            .map_err(|e| StoreError::Open {
                path: self.path.clone(),
                source: sled::Error::Io(e),
            })
        };
        match self.meta.get(META_SCHEMA)? {
            Some(v) => {
                let found = v
                    .as_ref()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .unwrap_or(u32::MAX);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema {
                        path: self.path.clone(),
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                if !marker.exists() {
                    write_marker()?;
                }
            }
            None => {
                let populated =
                    !self.users.is_empty() || !self.rooms.is_empty() || !self.messages.is_empty();
                if populated {
                    return Err(StoreError::Schema {
                        path: self.path.clone(),
                        found: 0,
                        supported: SCHEMA_VERSION,
                    });
                }
                if marker.exists() {
                    return Err(StoreError::Damaged {
                        path: self.path.clone(),
                    });
                }
                self.meta
                    .insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                // The schema must be on disk before the marker claims the database exists.
                self.flush()?;
                write_marker()?;
            }
        }
        Ok(())
    }

    /// Writes everything so far to disk and makes it survive a power loss: sled's flush, then
    /// `fdatasync` of its log (see `log_file`). Slow (hundreds of µs): the server calls it only
    /// through the committer, once per batch.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.log_file
            .sync_data()
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    // ----- users -----

    /// The user named `name` (any case).
    pub fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let key = user_key(name);
        self.users
            .get(key.as_bytes())?
            .map(|v| codec::decode(&v, key.as_bytes()))
            .transpose()
    }

    /// Creates `user` unless the name (any case) is taken; returns whether it was created. Names
    /// that look like an existing one are allowed: this is for admins and imports, which must be
    /// able to restore any database. Clients register through [`Store::register_user`].
    pub fn insert_user(&self, user: &User) -> Result<bool, StoreError> {
        Ok(self.add_user(user, false)? == NewUser::Created)
    }

    /// Creates `user` unless the name (any case) is taken or looks like an existing one.
    pub fn register_user(&self, user: &User) -> Result<NewUser, StoreError> {
        self.add_user(user, true)
    }

    fn add_user(&self, user: &User, refuse_look_alikes: bool) -> Result<NewUser, StoreError> {
        let key = user_key(&user.name);
        let value = codec::encode(user);
        let skeleton = rules::name_skeleton(&user.name);
        (&self.users, &self.meta, &self.skeletons)
            .transaction(|(users, meta, skeletons)| {
                if users.get(key.as_bytes())?.is_some() {
                    return Ok(NewUser::Taken);
                }
                let holders = skeletons.get(skeleton.as_bytes())?;
                let holders = match holders {
                    Some(v) => decode_skeleton_holders(&v, &skeleton).or_else(abort)?,
                    None => Vec::new(),
                };
                if refuse_look_alikes && !holders.is_empty() {
                    return Ok(NewUser::LookAlike);
                }
                users.insert(key.as_bytes(), value.as_slice())?;
                let n = be_u64(&meta.get(META_USERS)?.unwrap_or_default());
                meta.insert(META_USERS, &(n + 1).to_be_bytes())?;
                let mut holders = holders;
                holders.push(key.clone());
                skeletons.insert(skeleton.as_bytes(), encode_skeleton_holders(&holders))?;
                Ok(NewUser::Created)
            })
            .map_err(tx_error)
    }

    /// Builds the `skeletons` index from `users` unless a complete one of this format exists.
    fn index_skeletons(&self) -> Result<(), StoreError> {
        if self.meta.get(META_SKELETONS)?.as_deref() == Some(&[SKELETON_FORMAT]) {
            return Ok(());
        }
        self.skeletons.clear()?;
        let mut index: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for user in self.users() {
            let user = user?;
            index
                .entry(rules::name_skeleton(&user.name))
                .or_default()
                .push(user_key(&user.name));
        }
        let mut batch = sled::Batch::default();
        for (skeleton, holders) in &index {
            batch.insert(skeleton.as_bytes(), encode_skeleton_holders(holders));
        }
        self.skeletons.apply_batch(batch)?;
        self.meta.insert(META_SKELETONS, &[SKELETON_FORMAT])?;
        // The index must be on disk before a registration relies on it.
        self.flush()?;
        if !index.is_empty() {
            tracing::info!(
                users = index.values().map(Vec::len).sum::<usize>(),
                "built the look-alike name index"
            );
        }
        Ok(())
    }

    /// Replaces an existing user's record (password, ban, token epoch).
    pub fn update_user(&self, user: &User) -> Result<(), StoreError> {
        let key = user_key(&user.name);
        self.users.insert(key.as_bytes(), codec::encode(user))?;
        Ok(())
    }

    /// Removes a user; returns the removed record.
    pub fn delete_user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let key = user_key(name);
        let removed = (&self.users, &self.meta, &self.skeletons)
            .transaction(|(users, meta, skeletons)| {
                let old = users.remove(key.as_bytes())?;
                if let Some(old) = &old {
                    let n = be_u64(&meta.get(META_USERS)?.unwrap_or_default());
                    meta.insert(META_USERS, &n.saturating_sub(1).to_be_bytes())?;
                    let user: User = codec::decode(old, key.as_bytes()).or_else(abort)?;
                    let skeleton = rules::name_skeleton(&user.name);
                    if let Some(v) = skeletons.get(skeleton.as_bytes())? {
                        let mut holders = decode_skeleton_holders(&v, &skeleton).or_else(abort)?;
                        holders.retain(|k| *k != key);
                        if holders.is_empty() {
                            skeletons.remove(skeleton.as_bytes())?;
                        } else {
                            skeletons
                                .insert(skeleton.as_bytes(), encode_skeleton_holders(&holders))?;
                        }
                    }
                }
                Ok(old)
            })
            .map_err(tx_error)?;
        removed
            .map(|v| codec::decode(&v, key.as_bytes()))
            .transpose()
    }

    /// All users, ordered by key.
    pub fn users(&self) -> impl Iterator<Item = Result<User, StoreError>> + '_ {
        self.users.iter().map(|kv| {
            let (k, v) = kv?;
            codec::decode(&v, &k)
        })
    }

    /// Number of users (a maintained counter, not a scan).
    pub fn user_count(&self) -> Result<u64, StoreError> {
        Ok(be_u64(&self.meta.get(META_USERS)?.unwrap_or_default()))
    }

    // ----- sessions -----

    /// Stores a session under the hash of its token.
    pub fn insert_session(&self, token_hash: &[u8], session: &Session) -> Result<(), StoreError> {
        self.sessions.insert(token_hash, codec::encode(session))?;
        Ok(())
    }

    /// The session whose token hashes to `token_hash`.
    pub fn session(&self, token_hash: &[u8]) -> Result<Option<Session>, StoreError> {
        self.sessions
            .get(token_hash)?
            .map(|v| codec::decode(&v, token_hash))
            .transpose()
    }

    /// Removes sessions that can no longer be used: expired at `now_ms`, or whose user is gone
    /// or has had its tokens revoked. Returns how many were removed.
    pub fn remove_dead_sessions(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for kv in self.sessions.iter() {
            let (k, v) = kv?;
            let session: Session = codec::decode(&v, &k)?;
            let alive = session.expires_ms > now_ms
                && self
                    .user(&session.user_key)?
                    .is_some_and(|u| u.token_epoch == session.epoch);
            if !alive {
                self.sessions.remove(&k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    // ----- rooms -----

    /// The room named `name`.
    pub fn room(&self, name: &str) -> Result<Option<Room>, StoreError> {
        self.rooms
            .get(name.as_bytes())?
            .map(|v| codec::decode(&v, name.as_bytes()))
            .transpose()
    }

    /// Keeps who is online where until the next start (see [`PresenceSnapshot`]). Durable with
    /// the next flush.
    pub fn save_presence(&self, snapshot: &PresenceSnapshot) -> Result<(), StoreError> {
        self.meta.insert(META_PRESENCE, codec::encode(snapshot))?;
        Ok(())
    }

    /// Reads and removes the presence kept by the last graceful shutdown, if any.
    pub fn take_presence(&self) -> Result<Option<PresenceSnapshot>, StoreError> {
        self.meta
            .remove(META_PRESENCE)?
            .map(|v| codec::decode(&v, META_PRESENCE))
            .transpose()
    }

    /// The room named `name`, created (empty) if it does not exist.
    pub fn ensure_room(&self, name: &str, now_ms: u64) -> Result<Room, StoreError> {
        if let Some(room) = self.room(name)? {
            return Ok(room);
        }
        let no = self
            .meta
            .update_and_fetch(META_NEXT_ROOM_NO, |old| {
                let n = old
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes)
                    .unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })?
            .and_then(|b| b.as_ref().try_into().ok())
            .map(u32::from_be_bytes)
            .unwrap_or(1);
        let room = Room {
            name: name.to_owned(),
            no,
            created_ms: now_ms,
            last_id: 0,
            count: 0,
        };
        match self.rooms.compare_and_swap(
            name.as_bytes(),
            None as Option<&[u8]>,
            Some(codec::encode(&room)),
        )? {
            Ok(()) => {
                self.add_dm_memberships(name)?;
                Ok(room)
            }
            // Created concurrently: the other one wins, our number stays unused.
            Err(current) => codec::decode(&current.current.unwrap_or_default(), name.as_bytes()),
        }
    }

    /// All rooms, ordered by name.
    pub fn rooms(&self) -> impl Iterator<Item = Result<Room, StoreError>> + '_ {
        self.rooms.iter().map(|kv| {
            let (k, v) = kv?;
            codec::decode(&v, &k)
        })
    }

    fn raise_id_floor(&self, id: u64) -> Result<(), StoreError> {
        self.meta.update_and_fetch(META_ID_FLOOR, |old| {
            let floor = be_u64(old.unwrap_or_default());
            Some(floor.max(id).to_be_bytes().to_vec())
        })?;
        Ok(())
    }

    // ----- messages -----

    /// Applies one durable batch (see [`LogBackend::apply`]). New messages only (the common
    /// case): ordered plain inserts ([`message_batch`]). With an edit or a delete: one sled
    /// transaction over `messages`, `events`, `cids` and `rooms` (one `apply_batch` for the new
    /// messages and one for the cids, a read-modify-write per message an event changes, and one
    /// per touched room record), since an event rewrites the message it targets. Either way a
    /// crash leaves messages, events, cids and counters agreeing.
    fn apply_entries(&self, batch: &[&NewEntry]) -> Result<Applied, StoreError> {
        // Encode outside the transaction: sled may run its body more than once.
        let encoded: Vec<EncodedWrite> = batch
            .iter()
            .map(|w| {
                let cid = w.write.cid().map(|c| {
                    let entry = CidEntry {
                        room: w.room.name.to_string(),
                        id: w.id,
                        ts: w.write.ts(),
                    };
                    (cid_key(&w.user_key, c), codec::encode(&entry))
                });
                let value = match &w.write {
                    LogWrite::Message(message) => codec::encode(message),
                    LogWrite::Event { event, .. } => codec::encode(event),
                };
                (message_key(w.room.no, w.id), value, cid)
            })
            .collect();
        // Per room (name and number as the writes know them): positions in queue order. A name
        // can come with two numbers if an admin deleted and recreated the room while writes
        // were queued; only the group matching the current record is stored.
        let mut touched = message_batch::ByRoom::new();
        for (i, w) in batch.iter().enumerate() {
            touched
                .entry((&w.room.name, w.room.no))
                .or_default()
                .push(i);
        }
        if batch
            .iter()
            .all(|w| matches!(w.write, LogWrite::Message(_)))
        {
            return self.apply_messages(batch, &encoded, &touched);
        }
        (&self.messages, &self.events, &self.cids, &self.rooms)
            .transaction(|(messages, events, cids, rooms)| {
                let mut applied = Applied::default();
                let mut message_batch = sled::Batch::default();
                let mut cid_batch = sled::Batch::default();
                for ((name, no), positions) in &touched {
                    let current = rooms.get(name.as_bytes())?;
                    let record = match current.map(|v| codec::decode::<Room>(&v, name.as_bytes())) {
                        Some(Ok(record)) if record.no == *no => Some(record),
                        Some(Ok(_)) | None => None,
                        Some(Err(e)) => return abort(e),
                    };
                    let Some(mut record) = record else {
                        // Deleted (and maybe recreated) by an admin while these were queued:
                        // storing them would leave messages no room record accounts for.
                        applied.room_gone.extend_from_slice(positions);
                        continue;
                    };
                    for &i in positions {
                        let (key, value, cid) = &encoded[i];
                        match &batch[i].write {
                            LogWrite::Message(_) => {
                                message_batch.insert(&key[..], value.as_slice());
                                record.count += 1;
                            }
                            LogWrite::Event { event, .. } => {
                                let target = message_key(*no, event.target);
                                let Some(stored) = messages.get(target)? else {
                                    applied.target_gone.push(i);
                                    continue;
                                };
                                let mut message = match decode_message(&target, &stored) {
                                    Ok(m) => m.message,
                                    Err(e) => return abort(e),
                                };
                                match &event.change {
                                    Change::Edited { text, .. } => {
                                        // The text replaced is the one in force when the batch
                                        // is applied, not when the edit was queued.
                                        let stored_event = Event {
                                            change: Change::Edited {
                                                text: text.clone(),
                                                replaced: Some(std::mem::replace(
                                                    &mut message.text,
                                                    text.clone().unwrap_or_default(),
                                                )),
                                            },
                                            ..event.clone()
                                        };
                                        message.edited_ts = Some(event.ts);
                                        message.edits.push(batch[i].id);
                                        messages.insert(&target[..], codec::encode(&message))?;
                                        events.insert(&key[..], codec::encode(&stored_event))?;
                                    }
                                    Change::Deleted => {
                                        for &seq in &message.edits {
                                            let edit_key = message_key(*no, seq);
                                            let Some(edit) = events.get(edit_key)? else {
                                                continue;
                                            };
                                            let mut edit: Event =
                                                match codec::decode(&edit, &edit_key) {
                                                    Ok(edit) => edit,
                                                    Err(e) => return abort(e),
                                                };
                                            edit.change = Change::Edited {
                                                text: None,
                                                replaced: None,
                                            };
                                            events.insert(&edit_key[..], codec::encode(&edit))?;
                                        }
                                        messages.remove(&target[..])?;
                                        record.count = record.count.saturating_sub(1);
                                        events.insert(&key[..], value.as_slice())?;
                                    }
                                }
                            }
                        }
                        if let Some((key, value)) = cid {
                            cid_batch.insert(key.as_slice(), value.as_slice());
                        }
                        // Never from an in-memory copy: admin maintenance changes `count` in
                        // its own transactions while the server runs.
                        record.last_id = record.last_id.max(batch[i].id);
                    }
                    rooms.insert(name.as_bytes(), codec::encode(&record))?;
                }
                messages.apply_batch(&message_batch)?;
                cids.apply_batch(&cid_batch)?;
                applied.room_gone.sort_unstable();
                applied.target_gone.sort_unstable();
                Ok(applied)
            })
            .map_err(tx_error)
    }

    /// Forgets cids first used before `before_ms`; returns how many.
    pub fn remove_cids_before(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for kv in self.cids.iter() {
            let (k, v) = kv?;
            let entry: CidEntry = codec::decode(&v, &k)?;
            if entry.ts < before_ms {
                self.cids.remove(&k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Messages of room `room_no` with `after < id <= upto`, oldest first, at most `limit`;
    /// `more` says whether messages remain in that range past the page.
    pub fn messages_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        if after >= upto {
            return Ok(Page::default());
        }
        let range = message_key(room_no, after + 1)..=message_key(room_no, upto);
        let mut page = Page::default();
        for kv in self.messages.range(range) {
            let (k, v) = kv?;
            if page.messages.len() == limit {
                page.more = true;
                break;
            }
            page.messages.push(decode_message(&k, &v)?);
        }
        Ok(page)
    }

    /// The newest messages of room `room_no` with `id < before` and `id <= upto`, at most
    /// `limit`, returned oldest first; `more` says whether older ones remain.
    pub fn messages_before(
        &self,
        room_no: u32,
        before: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let end = before.min(upto.saturating_add(1));
        if end == 0 {
            return Ok(Page::default());
        }
        let range = message_key(room_no, 0)..message_key(room_no, end);
        let mut page = Page::default();
        for kv in self.messages.range(range).rev() {
            let (k, v) = kv?;
            if page.messages.len() == limit {
                page.more = true;
                break;
            }
            page.messages.push(decode_message(&k, &v)?);
        }
        page.messages.reverse();
        Ok(page)
    }

    /// Events of room `room_no` with `after < seq <= upto`, oldest first, at most `limit`.
    pub fn events_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Event)>, StoreError> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let range = message_key(room_no, after + 1)..=message_key(room_no, upto);
        self.events
            .range(range)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                decode_event(&k, &v)
            })
            .collect()
    }

    /// The event with seq `seq` in room `room_no`, if that id is an event's.
    pub fn event(&self, room_no: u32, seq: u64) -> Result<Option<Event>, StoreError> {
        let key = message_key(room_no, seq);
        self.events
            .get(key)?
            .map(|v| decode_event(&key, &v).map(|(_, event)| event))
            .transpose()
    }

    /// Every event of room `room_no` that changed message `target`, oldest first. Events are
    /// few, so this scans the room's events.
    pub fn events_of(&self, room_no: u32, target: u64) -> Result<Vec<(u64, Event)>, StoreError> {
        let mut found = Vec::new();
        for kv in self
            .events
            .range(message_key(room_no, target)..=message_key(room_no, u64::MAX))
        {
            let (k, v) = kv?;
            let (seq, event) = decode_event(&k, &v)?;
            if event.target == target {
                found.push((seq, event));
            }
        }
        Ok(found)
    }

    /// Messages and events of room `room_no` with `after < id <= upto`, merged in id order, at
    /// most `limit` items (see [`LogBackend::entries_after`]).
    pub fn entries_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<EntryPage, StoreError> {
        // One more of each than asked: if either source has more, one of them is left over.
        let read = limit.saturating_add(1);
        let messages = self.messages_after(room_no, after, upto, read)?.messages;
        let events = self.events_after(room_no, after, upto, read)?;
        let mut messages = messages.into_iter().peekable();
        let mut events = events.into_iter().peekable();
        let mut page = EntryPage::default();
        loop {
            let next_is_message = match (messages.peek(), events.peek()) {
                (None, None) => break,
                (Some(m), Some((seq, _))) => m.id < *seq,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if page.items.len() == limit {
                page.more = true;
                break;
            }
            page.items.push(
                match (next_is_message, messages.next_if(|_| next_is_message)) {
                    (true, Some(message)) => LogItem::Message(message),
                    _ => match events.next() {
                        Some((seq, event)) => LogItem::Event { seq, event },
                        None => break,
                    },
                },
            );
        }
        Ok(page)
    }

    /// One message by room and id.
    pub fn message(&self, room_no: u32, id: u64) -> Result<Option<StoredMessage>, StoreError> {
        let key = message_key(room_no, id);
        self.messages
            .get(key)?
            .map(|v| decode_message(&key, &v))
            .transpose()
    }

    /// All messages of one room, oldest first.
    pub fn room_messages(
        &self,
        room_no: u32,
    ) -> impl DoubleEndedIterator<Item = Result<StoredMessage, StoreError>> + '_ {
        self.messages.scan_prefix(room_no.to_be_bytes()).map(|kv| {
            let (k, v) = kv?;
            decode_message(&k, &v)
        })
    }

    /// Removes the given message ids from `room` with their `edited` events (pruning), keeping
    /// its counters right. Ids that do not exist are skipped. Returns how many were removed.
    pub fn remove_messages(&self, room: &str, ids: &[u64]) -> Result<u64, StoreError> {
        self.unread.forget_all();
        let mut removed = 0;
        for chunk in ids.chunks(1000) {
            removed += (&self.messages, &self.events, &self.rooms)
                .transaction(|(messages, events, rooms)| {
                    let Some(current) = rooms.get(room.as_bytes())? else {
                        return Ok(0);
                    };
                    let mut record: Room = match codec::decode(&current, room.as_bytes()) {
                        Ok(r) => r,
                        Err(e) => return abort(e),
                    };
                    let mut n = 0;
                    for &id in chunk {
                        let key = message_key(record.no, id);
                        let Some(value) = messages.remove(&key)? else {
                            continue;
                        };
                        n += 1;
                        // Its edits (which hold its earlier texts) go with it.
                        let edits = match decode_message(&key, &value) {
                            Ok(m) => m.message.edits,
                            Err(e) => return abort(e),
                        };
                        for seq in edits {
                            events.remove(&message_key(record.no, seq))?;
                        }
                    }
                    record.count = record.count.saturating_sub(n);
                    rooms.insert(room.as_bytes(), codec::encode(&record))?;
                    Ok(n)
                })
                .map_err(tx_error)?;
        }
        Ok(removed)
    }
}

impl LogBackend for Store {
    fn take_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    fn cid(&self, user_key: &str, cid: &str) -> Result<Option<CidEntry>, StoreError> {
        let key = cid_key(user_key, cid);
        self.cids
            .get(&key)?
            .map(|v| codec::decode(&v, &key))
            .transpose()
    }

    fn apply(&self, batch: &[&NewEntry]) -> Result<Applied, StoreError> {
        self.apply_entries(batch)
    }

    fn flush(&self) -> Result<(), StoreError> {
        Store::flush(self)
    }

    fn probe(&self) -> Result<(), StoreError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.meta.insert(META_WRITE_PROBE, &nanos.to_be_bytes())?;
        Ok(())
    }

    fn messages_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        Store::messages_after(self, room_no, after, upto, limit)
    }

    fn messages_before(
        &self,
        room_no: u32,
        before: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        Store::messages_before(self, room_no, before, upto, limit)
    }

    fn entries_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<EntryPage, StoreError> {
        Store::entries_after(self, room_no, after, upto, limit)
    }

    fn message(&self, room_no: u32, id: u64) -> Result<Option<Message>, StoreError> {
        Ok(Store::message(self, room_no, id)?.map(|m| m.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens `dir`, also again after a handle to it was dropped.
    fn open(dir: &Path) -> Store {
        Store::reopen(dir, &StoreOptions::default()).unwrap()
    }

    /// One message through the log's write path without a committer: cid check, id, apply.
    fn append(store: &Store, room: &str, user_key: &str, message: &Message) -> Appended {
        if let Some(cid) = &message.cid {
            if let Some(original) = store.cid(user_key, cid).unwrap() {
                return Appended::Duplicate(original);
            }
        }
        let record = store.room(room).unwrap().unwrap();
        let id = store.take_id();
        let write = NewEntry {
            room: RoomRef {
                name: room.into(),
                no: record.no,
            },
            id,
            user_key: user_key.into(),
            write: LogWrite::Message(message.clone()),
        };
        assert_eq!(store.apply(&[&write]).unwrap(), Applied::default());
        Appended::New(id)
    }

    fn msg(text: &str, cid: Option<&str>) -> Message {
        Message::new("Alice".into(), text.into(), 1, cid.map(Into::into))
    }

    #[test]
    fn flush_syncs_the_file_sled_writes_its_log_to() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let synced = store.log_file.metadata().unwrap();
        let log = std::fs::metadata(dir.path().join(SLED_LOG_FILE)).unwrap();
        assert_eq!((synced.dev(), synced.ino()), (log.dev(), log.ino()));
        store.ensure_room("general", 0).unwrap();
        let before = store.log_file.metadata().unwrap().len();
        for i in 0..200 {
            append(&store, "general", "alice", &msg(&"x".repeat(i), None));
        }
        store.flush().unwrap();
        assert!(store.log_file.metadata().unwrap().len() > before);
    }

    #[test]
    fn append_assigns_increasing_ids_and_pages_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let room = store.ensure_room("general", 0).unwrap();
        let mut ids = vec![];
        for i in 0..10 {
            match append(&store, "general", "alice", &msg(&i.to_string(), None)) {
                Appended::New(id) => ids.push(id),
                other => panic!("{other:?}"),
            }
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let last = *ids.last().unwrap();
        let page = store.messages_after(room.no, ids[2], last, 3).unwrap();
        assert_eq!(
            page.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            ids[3..6]
        );
        assert!(page.more);
        let page = store.messages_before(room.no, ids[4], last, 10).unwrap();
        assert_eq!(
            page.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            ids[..4]
        );
        assert!(!page.more);
        // The upper bound hides ids beyond it (not yet published).
        let page = store.messages_before(room.no, u64::MAX, ids[5], 2).unwrap();
        assert_eq!(
            page.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            ids[4..6]
        );
        assert_eq!(store.room("general").unwrap().unwrap().count, 10);
    }

    #[test]
    fn duplicate_cid_returns_original_in_any_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.ensure_room("a", 0).unwrap();
        store.ensure_room("b", 0).unwrap();
        let Appended::New(id) = append(&store, "a", "alice", &msg("x", Some("c1"))) else {
            panic!()
        };
        let again = append(&store, "b", "alice", &msg("other", Some("c1")));
        assert_eq!(
            again,
            Appended::Duplicate(CidEntry {
                room: "a".into(),
                id,
                ts: 1
            })
        );
        assert_eq!(store.room("b").unwrap().unwrap().count, 0);
        // Another user may use the same cid.
        assert!(matches!(
            append(&store, "a", "bob", &msg("x", Some("c1"))),
            Appended::New(_)
        ));
    }

    #[test]
    fn ids_are_never_reused_after_pruning_or_room_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let last = {
            let store = open(dir.path());
            store.ensure_room("a", 0).unwrap();
            let mut last = 0;
            for _ in 0..3 {
                if let Appended::New(id) = append(&store, "a", "u", &msg("x", None)) {
                    last = id;
                }
            }
            let room = store.remove_room_record("a").unwrap().unwrap();
            store.purge_room_messages(room.no, &mut || {}).unwrap();
            store.flush().unwrap();
            last
        };
        let store = open(dir.path());
        store.ensure_room("a", 0).unwrap();
        let Appended::New(id) = append(&store, "a", "u", &msg("x", None)) else {
            panic!()
        };
        assert!(id > last, "{id} should exceed {last}");
    }

    #[test]
    fn users_are_case_insensitive_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let user = User {
            name: "Alice".into(),
            password_hash: "h".into(),
            created_ms: 0,
            banned: false,
            token_epoch: 0,
        };
        assert!(store.insert_user(&user).unwrap());
        let mut other = user.clone();
        other.name = "ALICE".into();
        assert!(!store.insert_user(&other).unwrap());
        assert_eq!(store.user("alice").unwrap().unwrap().name, "Alice");
        assert_eq!(store.user_count().unwrap(), 1);
        store.delete_user("aLiCe").unwrap();
        assert_eq!(store.user_count().unwrap(), 0);
    }

    fn named(name: &str) -> User {
        User {
            name: name.into(),
            password_hash: "h".into(),
            created_ms: 0,
            banned: false,
            token_epoch: 0,
        }
    }

    #[test]
    fn registration_refuses_look_alikes_until_the_original_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert_eq!(
            store.register_user(&named("alice")).unwrap(),
            NewUser::Created
        );
        assert_eq!(
            store.register_user(&named("ALICE")).unwrap(),
            NewUser::Taken
        );
        assert_eq!(
            store.register_user(&named("a1ice")).unwrap(),
            NewUser::LookAlike
        );
        // Admins and imports may create look-alikes; registration then refuses the name until
        // every account with that skeleton is gone.
        assert!(store.insert_user(&named("al.ice")).unwrap());
        store.delete_user("alice").unwrap();
        assert_eq!(
            store.register_user(&named("aIice")).unwrap(),
            NewUser::LookAlike
        );
        store.delete_user("al.ice").unwrap();
        assert_eq!(
            store.register_user(&named("aIice")).unwrap(),
            NewUser::Created
        );
        assert_eq!(store.user_count().unwrap(), 1);
    }

    #[test]
    fn a_database_from_before_the_skeleton_index_gets_it_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            assert!(store.insert_user(&named("alice")).unwrap());
            // What a database written before the index looks like.
            store.skeletons.clear().unwrap();
            store.meta.remove(META_SKELETONS).unwrap();
            store.flush().unwrap();
        }
        let store = open(dir.path());
        assert_eq!(
            store.register_user(&named("alice_")).unwrap(),
            NewUser::LookAlike
        );
        assert_eq!(
            store.register_user(&named("bob")).unwrap(),
            NewUser::Created
        );
    }

    #[test]
    fn second_open_reports_lock_and_foreign_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let err = Store::open(dir.path(), &StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        store
            .meta
            .insert(META_SCHEMA, &99u32.to_be_bytes())
            .unwrap();
        store.flush().unwrap();
        drop(store);
        let err = Store::reopen(dir.path(), &StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::Schema { found: 99, .. }), "{err}");
    }

    #[test]
    fn a_database_that_lost_its_data_is_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        assert!(dir.path().join(MARKER_FILE).exists());
        // What sled does with a log it cannot read: it opens empty.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap() != MARKER_FILE {
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).unwrap();
                } else {
                    std::fs::remove_file(&path).unwrap();
                }
            }
        }
        let err = Store::reopen(dir.path(), &StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }
}
