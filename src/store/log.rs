//! The message log: what the hub's append path needs from storage, as domain operations.
//!
//! The hub never sees sled trees. It appends through the [`Committer`](super::commit::Committer)
//! (which takes ids, keeps cids unique and batches writes per group commit) and reads pages; the
//! committer in turn needs only this trait from a backend. [`Store`](super::Store) implements it
//! over sled; an in-memory fake or a second backend implements the same methods.
//!
//! A room's log holds messages and events (edits and deletions of its messages), all numbered
//! from the same id sequence: an event's id is its seq. Replays read both in id order; history
//! reads messages only, in their current state.
//!
//! Invariants a backend must keep:
//! - [`LogBackend::take_id`] never returns an id twice, also across restarts.
//! - [`LogBackend::apply`] is all or nothing for the whole batch: either every message and event,
//!   its cid entry, the messages its events change and its room's counters become visible
//!   together, or nothing does. Once it returns, everything it stored is visible to
//!   [`LogBackend::cid`] and the page reads. An event whose message is gone by then (deleted
//!   by an earlier write) is not stored.
//! - [`LogBackend::flush`] makes every write applied before it durable.
//! - Pages never return ids above `upto`, so a caller can hide what is applied but not yet
//!   durable.

use std::sync::Arc;

use super::{Change, CidEntry, Event, Message, Page, StoreError, StoredMessage};

/// A room as the log addresses it: the name (for the room record and cid entries) and the
/// number its message keys are stored under. A write whose room no longer exists under that
/// name and number (deleted by an admin while the write was queued) is not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRef {
    /// The room's name.
    pub name: Arc<str>,
    /// Its number.
    pub no: u32,
}

/// What a log write stores: a message, or an event changing one of the room's messages.
#[derive(Debug, Clone, PartialEq)]
pub enum LogWrite {
    /// A new message.
    Message(Message),
    /// An edit or deletion, with the author's idempotency key.
    Event {
        /// The event (its `target` must be a message of the same room).
        event: Event,
        /// The cid of the `edit` or `delete` frame, if any.
        cid: Option<String>,
    },
}

impl LogWrite {
    /// The idempotency key the write was sent with.
    pub fn cid(&self) -> Option<&str> {
        match self {
            LogWrite::Message(message) => message.cid.as_deref(),
            LogWrite::Event { cid, .. } => cid.as_deref(),
        }
    }

    /// Acceptance time, ms since the Unix epoch.
    pub fn ts(&self) -> u64 {
        match self {
            LogWrite::Message(message) => message.ts,
            LogWrite::Event { event, .. } => event.ts,
        }
    }

    /// Bytes of text it adds (for the write gate's space budget).
    pub fn text_len(&self) -> usize {
        match self {
            LogWrite::Message(message) => message.text.len(),
            LogWrite::Event { event, .. } => match &event.change {
                Change::Edited { text, .. } => text.as_ref().map_or(0, String::len) * 2,
                Change::Deleted => 0,
            },
        }
    }
}

/// One message or event on its way to disk: one element of a durable batch.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    /// Where it goes.
    pub room: RoomRef,
    /// Its id (an event's seq), already taken.
    pub id: u64,
    /// The author's user key (for the cid index).
    pub user_key: Arc<str>,
    /// What it stores.
    pub write: LogWrite,
}

/// What [`LogBackend::apply`] did with each write of a batch, by position.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Applied {
    /// Positions (in the batch) of writes not stored because their room is gone.
    pub room_gone: Vec<usize>,
    /// Positions of events not stored because the message they change is gone.
    pub target_gone: Vec<usize>,
}

/// A message or an event, as a replay reads them.
#[derive(Debug, Clone, PartialEq)]
pub enum LogItem {
    /// A message, in its current state.
    Message(StoredMessage),
    /// An event and its seq.
    Event {
        /// The event's own id.
        seq: u64,
        /// The event.
        event: Event,
    },
}

impl LogItem {
    /// The item's id (a message's id, an event's seq).
    pub fn id(&self) -> u64 {
        match self {
            LogItem::Message(m) => m.id,
            LogItem::Event { seq, .. } => *seq,
        }
    }
}

/// A page of a room's log, ascending by id, and whether more follows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EntryPage {
    /// Messages and events, ascending by id.
    pub items: Vec<LogItem>,
    /// Whether more exist beyond this page.
    pub more: bool,
}

/// The storage a [`Committer`](super::commit::Committer) writes through.
pub trait LogBackend: Send + Sync {
    /// A new message id, above every id handed out before (also before a restart).
    fn take_id(&self) -> u64;
    /// What `user_key` first used `cid` for, among applied writes.
    fn cid(&self, user_key: &str, cid: &str) -> Result<Option<CidEntry>, StoreError>;
    /// Stores a batch atomically (see the module doc): messages, events and the messages they
    /// change, cid entries, and per room `last_id = max(last_id, ids)` and `count` (messages
    /// held) read and written once.
    fn apply(&self, batch: &[&NewEntry]) -> Result<Applied, StoreError>;
    /// Makes everything applied so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// A small write of the backend's own, made after a failed write to learn (with the flush
    /// that follows) whether writing works again. It must really write: a flush with nothing
    /// new to write may succeed on a backend that can no longer write.
    fn probe(&self) -> Result<(), StoreError>;
    /// Messages of room `room_no` with `after < id <= upto`, oldest first, at most `limit`.
    fn messages_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, StoreError>;
    /// The newest messages with `id < before` and `id <= upto`, at most `limit`, oldest first.
    fn messages_before(
        &self,
        room_no: u32,
        before: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, StoreError>;
    /// Messages and events of room `room_no` with `after < id <= upto`, in id order, at most
    /// `limit` items.
    fn entries_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<EntryPage, StoreError>;
    /// The message `id` of room `room_no`, if the room holds it (not an event, not deleted).
    fn message(&self, room_no: u32, id: u64) -> Result<Option<Message>, StoreError>;
}
