//! A join's replay, read from the database a page at a time as the connection's writer drains
//! the pages before it (see [`crate::outbox::ReplyPages`]).
//!
//! Building the whole replay at join time kept up to `--replay-limit` messages (500 × 24 KB of
//! escaped text) in memory per joining connection until the client read them; a few dozen
//! sockets that join with `since: 0` and never read held hundreds of MiB. Here a connection
//! holds at most a page beyond its reply budget.
//!
//! Invariants:
//! - The replay never goes beyond `upto`, the room's published id when the member was added
//!   under the room lock: everything up to it is durable, and everything after it reaches the
//!   member live, queued behind this replay. The two meet exactly, as they did when the replay
//!   was read under the lock: messages up to `upto` are never added later (ids only grow), only
//!   removed (admin delete, pruning), and those simply stop appearing, as they would in history.
//! - The frames are the same as before, in the same order: `message` events ascending by id,
//!   then `synced` (`joined` is queued by the hub before the pages). A join with `since` also
//!   replays the room's `edited` and `deleted` events, merged with the messages in id order, and
//!   its limit counts both; messages appear in their current state either way. An edit whose
//!   message was deleted since (its text scrubbed) is skipped: the `deleted` event follows.

use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;

use crate::hub::{event_frame, message_event};
use crate::log_reader::LogReader;
use crate::outbox::ReplyPages;
use crate::protocol::{encode, Encoded, ServerFrame};
use crate::store::{Change, LogItem};

/// Messages read from the database at a time: a page overshoots the budget by at most this many.
const MESSAGES_PER_READ: usize = 4;

/// Messages a join without `since` replays: the newest ones.
pub(crate) const NEWEST_ON_JOIN: usize = 50;

/// Where the replay starts.
enum Start {
    /// After this id (a join with `since`), at most the replay limit.
    After(u64),
    /// The newest [`NEWEST_ON_JOIN`] messages; where they start is found on the first page.
    Newest,
}

/// One join's replay in progress.
pub(crate) struct Replay {
    log: LogReader,
    room: Arc<str>,
    room_no: u32,
    start: Option<Start>,
    /// The last id replayed (or the one to start after).
    after: u64,
    /// The room's published id at join time: the replay's end and `synced`'s `last_id`.
    upto: u64,
    /// Messages still allowed.
    left: usize,
    /// Whether `synced` may say `more` (a `since` replay that stopped at its limit).
    since: bool,
}

impl Replay {
    /// The replay for a join of room `room_no` with `since` (or without), up to `upto`.
    pub(crate) fn new(
        log: LogReader,
        room: Arc<str>,
        room_no: u32,
        since: Option<u64>,
        upto: u64,
        replay_limit: usize,
    ) -> Replay {
        Replay {
            log,
            room,
            room_no,
            start: Some(since.map_or(Start::Newest, Start::After)),
            after: 0,
            upto,
            left: if since.is_some() {
                replay_limit
            } else {
                NEWEST_ON_JOIN
            },
            since: since.is_some(),
        }
    }

    /// Finds the id the newest `left` messages start after, reading back a few at a time so no
    /// more than a read's worth is in memory.
    async fn locate_newest(&mut self) -> Result<(), String> {
        let mut before = u64::MAX;
        let mut found = 0;
        while found < self.left {
            let want = (self.left - found).min(MESSAGES_PER_READ);
            let page = self
                .log
                .messages_before(self.room_no, before, self.upto, want)
                .await
                .map_err(|e| e.to_string())?;
            let Some(oldest) = page.messages.first() else {
                break;
            };
            found += page.messages.len();
            before = oldest.id;
            if !page.more {
                break;
            }
        }
        self.left = found;
        self.after = if found == 0 {
            self.upto
        } else {
            before.saturating_sub(1)
        };
        Ok(())
    }

    fn synced(&self, more: bool) -> Encoded {
        encode(&ServerFrame::Synced {
            room: &self.room,
            last_id: self.upto,
            more,
        })
    }
}

impl ReplyPages for Replay {
    fn next_page<'a>(
        &'a mut self,
        bytes: usize,
        out: &'a mut Vec<Encoded>,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send + 'a>> {
        Box::pin(self.page(bytes, out))
    }
}

impl Replay {
    async fn page(&mut self, bytes: usize, out: &mut Vec<Encoded>) -> Result<bool, String> {
        match self.start.take() {
            Some(Start::After(since)) => self.after = since,
            Some(Start::Newest) => self.locate_newest().await?,
            None => {}
        }
        let mut produced = 0;
        while self.left > 0 {
            let want = self.left.min(MESSAGES_PER_READ);
            let (items, more) = if self.since {
                let page = self
                    .log
                    .entries_after(self.room_no, self.after, self.upto, want)
                    .await
                    .map_err(|e| e.to_string())?;
                (page.items, page.more)
            } else {
                let page = self
                    .log
                    .messages_after(self.room_no, self.after, self.upto, want)
                    .await
                    .map_err(|e| e.to_string())?;
                let items = page.messages.into_iter().map(LogItem::Message).collect();
                (items, page.more)
            };
            for item in &items {
                self.after = item.id();
                let frame = match item {
                    LogItem::Message(m) => encode(&message_event(&self.room, m.id, &m.message)),
                    LogItem::Event { event, .. }
                        if matches!(event.change, Change::Edited { text: None, .. }) =>
                    {
                        continue;
                    }
                    LogItem::Event { seq, event } => encode(&event_frame(&self.room, *seq, event)),
                };
                produced += frame.wire().len();
                out.push(frame);
                self.left -= 1;
            }
            if !more {
                break;
            }
            if self.left == 0 {
                // Only a `since` replay stops at its limit with messages to spare.
                out.push(self.synced(self.since));
                return Ok(false);
            }
            if produced >= bytes {
                return Ok(true);
            }
        }
        out.push(self.synced(false));
        Ok(false)
    }
}
