//! Where joins' replays and `history` read a room's log: the embedded store (through the
//! committer, which knows what is durable) or, in cluster mode, the room's Redis Stream.
//!
//! Both answer the same pages with the same bounds (`upto` is the room's published id, so a
//! read never shows what was not yet announced). Reads are async because Redis answers over the
//! network; the store's reads complete at the first poll.

use std::sync::Arc;

use crate::cluster::log::{Body, RoomLogs};
use crate::cluster::ClusterError;
use crate::store::commit::Committer;
use crate::store::{EntryPage, LogItem, Page, StoreError, StoredMessage};

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The embedded store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis failed or is unreachable.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// A reader of room logs.
#[derive(Clone)]
pub(crate) enum LogReader {
    /// The embedded store.
    Local(Arc<Committer>),
    /// The cluster's Redis.
    Cluster(RoomLogs),
}

impl LogReader {
    /// Messages of room `room_no` with `after < id <= upto`, oldest first, at most `limit`.
    pub(crate) async fn messages_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, ReadError> {
        Ok(match self {
            LogReader::Local(committer) => committer.messages_after(room_no, after, upto, limit)?,
            LogReader::Cluster(logs) => logs.messages_after(room_no, after, upto, limit).await?,
        })
    }

    /// The newest messages with `id < before` and `id <= upto`, at most `limit`, oldest first.
    pub(crate) async fn messages_before(
        &self,
        room_no: u32,
        before: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, ReadError> {
        Ok(match self {
            LogReader::Local(committer) => {
                committer.messages_before(room_no, before, upto, limit)?
            }
            LogReader::Cluster(logs) => logs.messages_before(room_no, before, upto, limit).await?,
        })
    }

    /// Messages and events with `after < id <= upto`, in id order, at most `limit` items.
    pub(crate) async fn entries_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<EntryPage, ReadError> {
        Ok(match self {
            LogReader::Local(committer) => committer.entries_after(room_no, after, upto, limit)?,
            LogReader::Cluster(logs) => {
                let (entries, more) = logs.entries_after(room_no, after, upto, limit).await?;
                let items = entries
                    .into_iter()
                    .map(|entry| match entry.body {
                        Body::Message(message) => LogItem::Message(StoredMessage {
                            id: entry.id,
                            message,
                        }),
                        Body::Event(event) => LogItem::Event {
                            seq: entry.id,
                            event,
                        },
                    })
                    .collect();
                EntryPage { items, more }
            }
        })
    }
}
