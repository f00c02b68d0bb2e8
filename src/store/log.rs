//! The message log: what the hub's append path needs from storage, as domain operations.
//!
//! The hub never sees sled trees. It appends through the [`Committer`](super::commit::Committer)
//! (which takes ids, keeps cids unique and batches writes per group commit) and reads pages; the
//! committer in turn needs only this trait from a backend. [`Store`](super::Store) implements it
//! over sled; an in-memory fake or a second backend implements the same seven methods.
//!
//! Invariants a backend must keep:
//! - [`LogBackend::take_id`] never returns an id twice, also across restarts.
//! - [`LogBackend::apply`] is all or nothing for the whole batch: either every message, its cid
//!   entry and its room's counters become visible together, or nothing does. Once it returns,
//!   everything it stored is visible to [`LogBackend::cid`] and the page reads.
//! - [`LogBackend::flush`] makes every write applied before it durable.
//! - Pages never return ids above `upto`, so a caller can hide what is applied but not yet
//!   durable.

use std::sync::Arc;

use super::{CidEntry, Message, Page, StoreError};

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

/// One message on its way to disk: one element of a durable batch.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// Where it goes.
    pub room: RoomRef,
    /// Its id, already taken.
    pub id: u64,
    /// The author's user key (for the cid index).
    pub user_key: Arc<str>,
    /// The message.
    pub message: Message,
}

/// What [`LogBackend::apply`] did with each message of a batch, by position.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Applied {
    /// Positions (in the batch) of messages not stored because their room is gone.
    pub room_gone: Vec<usize>,
}

/// The storage a [`Committer`](super::commit::Committer) writes through.
pub trait LogBackend: Send + Sync {
    /// A new message id, above every id handed out before (also before a restart).
    fn take_id(&self) -> u64;
    /// What `user_key` first used `cid` for, among applied writes.
    fn cid(&self, user_key: &str, cid: &str) -> Result<Option<CidEntry>, StoreError>;
    /// Stores a batch atomically (see the module doc): messages, cid entries, and per room
    /// `last_id = max(last_id, ids)` and `count += stored` read and written once.
    fn apply(&self, batch: &[&NewMessage]) -> Result<Applied, StoreError>;
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
}
