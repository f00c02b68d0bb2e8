//! One connection's outbound queue: bounded, cheap when idle, never blocks the producer.
//!
//! Producers (the commit thread fanning out a message, other connections' presence events, the
//! connection's own replies) push encoded frames and return at once; the connection's writer
//! drains everything queued and writes it with one flush. Broadcasts count against the bound:
//! a client that stops reading overflows it and is closed with 4008 instead of slowing anyone
//! down. Replies do not count (they would make a join's replay look like slowness); instead the
//! connection's reader waits until its earlier replies were handed to the socket before reading
//! the next request, so a client that sends requests without reading the answers stalls itself.
//! An idle outbox holds no allocation (an empty `VecDeque` does not allocate).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Mutex;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

use crate::protocol::Encoded;

/// Why and how a connection is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason (short, for logs and the close frame).
    pub reason: &'static str,
}

struct Queued {
    frame: Encoded,
    broadcast: bool,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Queued>,
    /// Broadcast frames among `frames` (bounded by the capacity).
    broadcasts: usize,
    /// Reply frames among `frames` (bounded by the reader's backpressure).
    replies: usize,
    close: Option<CloseRequest>,
}

/// The queue between producers and one connection's writer.
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer when frames or a close arrive.
    writer: AtomicWaker,
    /// Wakes the reader when the queue drains.
    reader: AtomicWaker,
    capacity: usize,
}

/// What the writer should do next.
pub enum Drained {
    /// Write these frames.
    Frames(Vec<Encoded>),
    /// Write the remaining frames (if any were kept), then close.
    Close(Vec<Encoded>, CloseRequest),
}

/// The queue overflowed: the connection is now closing with 4008.
#[derive(Debug)]
pub struct Overflow;

impl Outbox {
    /// A queue holding at most `capacity` broadcast frames.
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            writer: AtomicWaker::new(),
            reader: AtomicWaker::new(),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Queues a reply to this connection's own request.
    pub fn reply(&self, frame: Encoded) {
        self.reply_all(std::iter::once(frame));
    }

    /// Queues several reply frames, in order, atomically (nothing interleaves).
    pub fn reply_all(&self, frames: impl IntoIterator<Item = Encoded>) {
        let mut state = self.lock();
        if state.close.is_none() {
            let before = state.frames.len();
            state.frames.extend(frames.into_iter().map(|frame| Queued {
                frame,
                broadcast: false,
            }));
            state.replies += state.frames.len() - before;
        }
        drop(state);
        self.writer.wake();
    }

    /// Queues a broadcast frame; on overflow, drops what is queued and starts closing with 4008.
    pub fn broadcast(&self, frame: Encoded) -> Result<(), Overflow> {
        let mut state = self.lock();
        if state.close.is_some() {
            return Ok(());
        }
        if state.broadcasts >= self.capacity {
            state.frames = VecDeque::new();
            state.broadcasts = 0;
            state.replies = 0;
            state.close = Some(CloseRequest {
                code: crate::protocol::close::TOO_SLOW,
                reason: "too slow",
            });
            drop(state);
            self.writer.wake();
            self.reader.wake();
            return Err(Overflow);
        }
        state.frames.push_back(Queued {
            frame,
            broadcast: true,
        });
        state.broadcasts += 1;
        drop(state);
        self.writer.wake();
        Ok(())
    }

    /// Asks the writer to send what is queued, then close. The first request wins.
    pub fn close(&self, request: CloseRequest) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(request);
        }
        drop(state);
        self.writer.wake();
        self.reader.wake();
    }

    /// The close request, once one was made.
    pub fn closing(&self) -> Option<CloseRequest> {
        self.lock().close.clone()
    }

    /// Waits for frames or a close request; takes at most `max_frames` frames.
    pub async fn drain(&self, max_frames: usize) -> Drained {
        poll_fn(|cx| {
            self.writer.register(cx.waker());
            let mut state = self.lock();
            if state.frames.is_empty() && state.close.is_none() {
                return Poll::Pending;
            }
            let n = state.frames.len().min(max_frames);
            let mut frames = Vec::with_capacity(n);
            let (mut broadcasts, mut replies) = (0, 0);
            for queued in state.frames.drain(..n) {
                if queued.broadcast {
                    broadcasts += 1;
                } else {
                    replies += 1;
                }
                frames.push(queued.frame);
            }
            state.broadcasts -= broadcasts;
            state.replies -= replies;
            if state.frames.is_empty() {
                // Give the memory back: a burst should not make an idle connection expensive.
                state.frames = VecDeque::new();
            }
            if state.replies == 0 {
                self.reader.wake();
            }
            match (&state.close, state.frames.is_empty()) {
                (Some(close), true) => Poll::Ready(Drained::Close(frames, close.clone())),
                _ => Poll::Ready(Drained::Frames(frames)),
            }
        })
        .await
    }

    /// Waits until no reply is queued (or the connection is closing): backpressure for the
    /// reader. Broadcasts do not count, or a busy room would keep a member from being read.
    pub async fn replies_drained(&self) {
        poll_fn(|cx| {
            self.reader.register(cx.waker());
            let state = self.lock();
            if state.replies == 0 || state.close.is_some() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Ready with the close request once one is made; wakes the reader half.
    pub fn poll_closing_reader(&self, cx: &mut Context<'_>) -> Poll<CloseRequest> {
        self.reader.register(cx.waker());
        self.closing().map_or(Poll::Pending, Poll::Ready)
    }

    /// Ready with the close request once one is made; wakes the writer half.
    pub fn poll_closing_writer(&self, cx: &mut Context<'_>) -> Poll<CloseRequest> {
        self.writer.register(cx.waker());
        self.closing().map_or(Poll::Pending, Poll::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Encoded {
        Encoded::from(s)
    }

    #[test]
    fn broadcast_overflow_closes_with_4008_and_replies_do_not_count() {
        let outbox = Outbox::new(2);
        outbox.reply_all((0..10).map(|i| frame(&i.to_string())));
        outbox.broadcast(frame("a")).unwrap();
        outbox.broadcast(frame("b")).unwrap();
        assert!(outbox.broadcast(frame("c")).is_err());
        match smol::block_on(outbox.drain(100)) {
            Drained::Close(frames, close) => {
                assert!(frames.is_empty());
                assert_eq!(close.code, 4008);
            }
            Drained::Frames(_) => panic!("expected close"),
        }
    }

    #[test]
    fn reader_waits_for_replies_but_not_for_broadcasts() {
        let outbox = Outbox::new(10);
        outbox.broadcast(frame("b")).unwrap();
        let ready = |outbox: &Outbox| {
            futures_lite::future::block_on(futures_lite::future::poll_once(
                outbox.replies_drained(),
            ))
            .is_some()
        };
        assert!(
            ready(&outbox),
            "a queued broadcast must not hold the reader back"
        );
        outbox.reply(frame("r"));
        assert!(!ready(&outbox), "a queued reply holds the reader back");
        smol::block_on(outbox.drain(10));
        assert!(ready(&outbox));
    }

    #[test]
    fn drains_in_order_and_closes_after_queued_frames() {
        let outbox = Outbox::new(10);
        outbox.reply(frame("1"));
        outbox.broadcast(frame("2")).unwrap();
        outbox.close(CloseRequest {
            code: 1001,
            reason: "bye",
        });
        outbox.reply(frame("ignored after close"));
        match smol::block_on(outbox.drain(1)) {
            Drained::Frames(f) => assert_eq!(f, vec![frame("1")]),
            Drained::Close(..) => panic!("closed too early"),
        }
        match smol::block_on(outbox.drain(10)) {
            Drained::Close(f, c) => {
                assert_eq!(f, vec![frame("2")]);
                assert_eq!(c.code, 1001);
            }
            Drained::Frames(_) => panic!("expected close"),
        }
    }
}
