//! One connection's outbound side: frames go straight to the socket when they can, and wait in
//! a bounded queue only when the kernel will not take them.
//!
//! Whoever produces a frame (the delivery thread fanning out a message, another connection's
//! presence change, this connection's own replies, the heartbeat) writes it to the socket
//! itself with a non-blocking `writev`, under this outbox's lock. The lock is what keeps frames
//! in order: a frame is written directly only when nothing is queued ahead of it; otherwise it
//! joins the queue, and the connection's writer task (which waits for the socket to become
//! writable, and so costs nothing while there is no backlog) writes the queue out.
//!
//! Corking ([`corked`]): a thread about to produce many frames (a group commit's worth of
//! messages, a join under a room lock) runs inside `corked`; frames it pushes are only queued,
//! and each touched outbox is written once when the corked section ends, all its frames in one
//! `writev`. That turns "one syscall per frame" into "one syscall per socket per batch", and
//! keeps syscalls out of room-lock sections.
//!
//! Bounds: broadcasts count against the capacity; a client that stops reading overflows it and
//! is closed with 4008 instead of slowing anyone down. Replies do not count (a join's replay
//! would look like slowness); instead the connection's reader waits until its earlier replies
//! were written before reading the next request, so a client that sends requests without reading
//! the answers stalls itself. Control frames (pings, pongs) are small and rare. An idle outbox
//! holds no allocation beyond itself.
//!
//! Paged replies ([`ReplyPages`], a join's replay): they are produced a page at a time by the
//! writer task, only while fewer than [`ReplyBounds::budget`] bytes of replies are queued, so a
//! replay of hundreds of large messages never sits in memory whole. While a paged reply is being
//! produced, every other reply and broadcast waits behind it (`held`), which keeps the order the
//! frames were pushed in. A paged reply may wait for something before its first frame
//! ([`Outbox::reply_paged_after`]: cluster mode's `joined` waits until the joiner's presence is
//! in Redis), holding the rest behind it just the same. A connection whose replies wait longer
//! than [`ReplyBounds::stall_timeout`] without the socket taking a byte is closed with 4008,
//! like a slow consumer.
//!
//! Closing with 4008 drops everything queued and keeps the socket, with only the Close frame
//! pending, for [`ReplyBounds::slow_linger`] (the idle timeout): a client that was merely stalled
//! and reads again still learns why it was closed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use futures_lite::future;
use prometheus_client::metrics::counter::Counter;

use crate::heartbeat::Liveness;
use crate::protocol::Encoded;
use crate::transport::Transport;

/// Slices handed to one `writev`.
const MAX_IOVECS: usize = 64;

/// Replies produced a page at a time as the writer drains the ones before them.
pub trait ReplyPages: Send {
    /// Appends the next frames to `out`, about `bytes` worth but at least one frame. Returns
    /// whether frames remain after these; an error ends the connection (1011). A future,
    /// because a page may be read over the network (cluster mode).
    fn next_page<'a>(
        &'a mut self,
        bytes: usize,
        out: &'a mut Vec<Encoded>,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send + 'a>>;
}

/// A paged reply that starts, with `first`, once `ready` is done ([`Outbox::reply_paged_after`]).
struct AfterReady {
    ready: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    first: Option<Encoded>,
    rest: Box<dyn ReplyPages>,
}

impl ReplyPages for AfterReady {
    fn next_page<'a>(
        &'a mut self,
        bytes: usize,
        out: &'a mut Vec<Encoded>,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send + 'a>> {
        Box::pin(async move {
            if let Some(ready) = self.ready.take() {
                ready.await;
            }
            match self.first.take() {
                Some(first) => {
                    out.push(first);
                    Ok(true)
                }
                None => self.rest.next_page(bytes, out).await,
            }
        })
    }
}

/// How much of a connection's own replies may wait in memory, and for how long.
#[derive(Debug, Clone)]
pub struct ReplyBounds {
    /// Reply bytes queued before a paged reply waits for the socket to drain.
    pub budget: usize,
    /// Replies waiting this long without the socket taking any: close with 4008.
    pub stall_timeout: Duration,
    /// How long a connection closed with 4008 keeps its socket for the Close frame.
    pub slow_linger: Duration,
    /// Counts 4008 closes made here (fan-out counts its own).
    pub slow_closes: Counter,
}

impl Default for ReplyBounds {
    fn default() -> Self {
        ReplyBounds {
            budget: 256 * 1024,
            stall_timeout: Duration::from_secs(30),
            slow_linger: Duration::from_secs(60),
            slow_closes: Counter::default(),
        }
    }
}

/// Why and how a connection is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// WebSocket close code; [`PEER_CLOSED`] when none is to be sent.
    pub code: u16,
    /// Close reason (short, for logs and the close frame).
    pub reason: &'static str,
}

/// Close "code" for a connection whose peer closed first or vanished: no Close frame is sent.
pub const PEER_CLOSED: u16 = 0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Broadcast,
    Reply,
    Control,
}

/// Frames waiting for the socket, in order. The first lives inline: a socket that gets a frame
/// at a time (the common case) never touches a second allocation, and an idle one holds none.
#[derive(Default)]
struct Frames {
    first: Option<(Bytes, Kind)>,
    rest: VecDeque<(Bytes, Kind)>,
}

impl Frames {
    fn push_back(&mut self, frame: (Bytes, Kind)) {
        if self.first.is_none() {
            self.first = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    fn front(&self) -> Option<&(Bytes, Kind)> {
        self.first.as_ref()
    }

    fn pop_front(&mut self) -> Option<(Bytes, Kind)> {
        let first = self.first.take();
        self.first = self.rest.pop_front();
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            // Give the memory back: a burst should not make an idle connection expensive.
            self.rest = VecDeque::new();
        }
        first
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn iter(&self) -> impl Iterator<Item = &(Bytes, Kind)> {
        self.first.iter().chain(self.rest.iter())
    }
}

/// A paged reply in progress.
struct Paging {
    /// Produces the pages; `None` while the writer has it out to produce one.
    pages: Option<Box<dyn ReplyPages>>,
    /// Frames pushed meanwhile: they follow the paged reply.
    held: Frames,
}

#[derive(Default)]
struct State {
    queue: Frames,
    /// The paged reply in progress, if any (boxed: most connections never have one).
    paging: Option<Box<Paging>>,
    /// Bytes of reply frames in `queue` (what the paged reply's budget is measured against).
    reply_bytes: usize,
    /// Bytes of the front frame already written.
    written: usize,
    /// Broadcast frames in `queue` (bounded by the capacity).
    broadcasts: usize,
    /// Reply frames in `queue` (bounded by the reader's backpressure).
    replies: usize,
    close: Option<CloseRequest>,
    /// In some thread's cork list: that thread writes the queue when its section ends.
    corked: bool,
    /// The reader is waiting for `replies` to reach 0.
    reader_waiting: bool,
    /// Our Close frame is queued or written: it goes out once, even if closing starts over
    /// (a connection that logs in while closing moves to its next task mid-close).
    close_queued: bool,
    /// The transport holds bytes it accepted but could not send yet (TLS records): the writer
    /// sends them when the socket drains, even with nothing queued.
    unsent: bool,
    /// The server is shutting down: a 4008 Close waiting for a stalled client stops waiting.
    linger_cut: bool,
}

impl State {
    /// Queues a frame, behind a paged reply in progress if there is one.
    fn enqueue(&mut self, bytes: Bytes, kind: Kind) {
        match kind {
            Kind::Broadcast => self.broadcasts += 1,
            Kind::Reply => self.replies += 1,
            Kind::Control => {}
        }
        match &mut self.paging {
            // Pings may go between whole frames of a paged reply; the rest keeps its order.
            Some(paging) if kind != Kind::Control => paging.held.push_back((bytes, kind)),
            _ => {
                if kind == Kind::Reply {
                    self.reply_bytes += bytes.len();
                }
                self.queue.push_back((bytes, kind));
            }
        }
    }

    /// The paged reply is complete: what was held behind it follows.
    fn end_paging(&mut self) {
        let Some(mut paging) = self.paging.take() else {
            return;
        };
        while let Some((bytes, kind)) = paging.held.pop_front() {
            if kind == Kind::Reply {
                self.reply_bytes += bytes.len();
            }
            self.queue.push_back((bytes, kind));
        }
    }

    /// Whether the paged reply in progress is due its next page.
    fn page_due(&self, budget: usize) -> bool {
        self.paging.as_ref().is_some_and(|p| p.pages.is_some()) && self.reply_bytes <= budget / 2
    }

    /// Drops every queued frame except one already partly on the wire, whose rest must follow
    /// or the peer's framing breaks.
    fn discard(&mut self) {
        let partial = (self.written > 0).then(|| self.queue.pop_front()).flatten();
        self.queue = Frames::default();
        self.paging = None;
        self.reply_bytes = 0;
        self.broadcasts = 0;
        self.replies = 0;
        if let Some((bytes, _)) = partial {
            self.queue.push_back((bytes, Kind::Control));
        } else {
            self.written = 0;
        }
    }
}

/// The outbound side of one connection.
pub struct Outbox {
    state: Mutex<State>,
    /// The socket, inline: every write reaches it without another pointer to follow.
    transport: Transport,
    /// Wakes the writer task when a backlog forms or a close is requested.
    writer: AtomicWaker,
    /// Wakes the reader when its replies are written or a close is requested.
    reader: AtomicWaker,
    capacity: usize,
    /// Shared by every connection of the server.
    bounds: Arc<ReplyBounds>,
    frames_out: Counter,
    /// Deadlines and pings (see [`crate::heartbeat`]).
    pub liveness: Liveness,
}

/// What the writer task is woken for.
enum Work {
    Close(CloseRequest),
    NextPage,
    /// A backlog to write; whether replies of ours are in it.
    Backlog(bool),
}

/// How waiting for the socket to take a backlog ended.
enum Writable {
    Yes,
    Failed,
    Closing,
    Stalled,
}

/// The queue overflowed: the connection is now closing with 4008.
#[derive(Debug)]
pub struct Overflow;

thread_local! {
    static CORKED: RefCell<Option<Vec<Arc<Outbox>>>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's writes corked: frames `f` pushes are written when it returns,
/// one `writev` per connection. Nested calls join the outer section.
pub fn corked<R>(f: impl FnOnce() -> R) -> R {
    let outer = CORKED.with(|c| {
        let mut c = c.borrow_mut();
        let outer = c.is_some();
        if !outer {
            *c = Some(Vec::new());
        }
        outer
    });
    if outer {
        return f();
    }
    /// Writes the corked outboxes also when `f` panics, so none stays corked for ever.
    struct Uncork;
    impl Drop for Uncork {
        fn drop(&mut self) {
            let touched = CORKED.with(|c| c.borrow_mut().take()).unwrap_or_default();
            for outbox in touched {
                let mut state = outbox.lock();
                state.corked = false;
                outbox.write_now(&mut state);
            }
        }
    }
    let _uncork = Uncork;
    f()
}

impl Outbox {
    /// The outbound side of `transport`, holding at most `capacity` broadcast frames.
    pub fn new(transport: Transport, capacity: usize, frames_out: Counter) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            transport,
            writer: AtomicWaker::new(),
            reader: AtomicWaker::new(),
            capacity,
            bounds: Arc::default(),
            frames_out,
            liveness: Liveness::default(),
        }
    }

    /// The same outbox with these reply bounds instead of the defaults.
    pub fn with_reply_bounds(mut self, bounds: Arc<ReplyBounds>) -> Outbox {
        self.bounds = bounds;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Sends a reply to this connection's own request.
    pub fn reply(self: &Arc<Self>, frame: Encoded) {
        self.reply_all(std::iter::once(frame));
    }

    /// Sends several replies, in order, with nothing in between.
    pub fn reply_all(self: &Arc<Self>, frames: impl IntoIterator<Item = Encoded>) {
        let mut state = self.lock();
        if state.close.is_some() {
            return;
        }
        for frame in frames {
            state.enqueue(frame.wire_bytes(), Kind::Reply);
        }
        self.pushed(state);
    }

    /// Sends `first`, then the frames `pages` produces as the socket drains, with nothing in
    /// between; frames pushed meanwhile follow them.
    pub fn reply_paged(self: &Arc<Self>, first: Encoded, pages: Box<dyn ReplyPages>) {
        self.start_paging(Some(first), pages);
    }

    /// As [`Outbox::reply_paged`], but `first` and the pages go out only once `ready` is done;
    /// what is pushed meanwhile (but pings) waits behind them, and the reader reads the next
    /// request only after them. Cluster mode's `joined`: sent once the other nodes can know of
    /// the joiner.
    pub fn reply_paged_after(
        self: &Arc<Self>,
        ready: Pin<Box<dyn Future<Output = ()> + Send>>,
        first: Encoded,
        pages: Box<dyn ReplyPages>,
    ) {
        let pages = AfterReady {
            ready: Some(ready),
            first: Some(first),
            rest: pages,
        };
        self.start_paging(None, Box::new(pages));
    }

    fn start_paging(self: &Arc<Self>, first: Option<Encoded>, pages: Box<dyn ReplyPages>) {
        let mut state = self.lock();
        if state.close.is_some() {
            return;
        }
        if state.paging.is_some() {
            // The reader reads the next request only once paged replies are done, so this is
            // a bug; ending the connection keeps the replies it did get whole and in order.
            tracing::error!("a paged reply while another is in progress");
            drop(state);
            self.close(CloseRequest {
                code: crate::protocol::close::INTERNAL,
                reason: "internal error",
            });
            return;
        }
        if let Some(first) = first {
            state.enqueue(first.wire_bytes(), Kind::Reply);
        }
        state.paging = Some(Box::new(Paging {
            pages: Some(pages),
            held: Frames::default(),
        }));
        self.writer.wake();
        self.pushed(state);
    }

    /// Sends bytes that are not counted against any bound (pings, tungstenite's pongs).
    pub fn control(self: &Arc<Self>, bytes: Bytes) {
        let mut state = self.lock();
        if state.close.is_some() {
            return;
        }
        state.enqueue(bytes, Kind::Control);
        self.pushed(state);
    }

    /// Sends a broadcast frame; on overflow, drops what is queued and starts closing with 4008.
    pub fn broadcast(self: &Arc<Self>, frame: &Encoded) -> Result<(), Overflow> {
        let mut state = self.lock();
        if state.close.is_some() {
            return Ok(());
        }
        if state.broadcasts >= self.capacity {
            self.close_too_slow(state);
            return Err(Overflow);
        }
        state.enqueue(frame.wire_bytes(), Kind::Broadcast);
        self.pushed(state);
        Ok(())
    }

    /// Drops what is queued and starts closing with 4008.
    fn close_too_slow(&self, mut state: MutexGuard<'_, State>) {
        state.discard();
        state.close = Some(CloseRequest {
            code: crate::protocol::close::TOO_SLOW,
            reason: "too slow",
        });
        drop(state);
        self.writer.wake();
        self.reader.wake();
    }

    /// After a push: write now, or leave it to the cork owner or the writer task.
    fn pushed(self: &Arc<Self>, mut state: MutexGuard<'_, State>) {
        if state.corked {
            return;
        }
        let corking = CORKED.with(|c| match c.borrow_mut().as_mut() {
            Some(touched) => {
                touched.push(self.clone());
                true
            }
            None => false,
        });
        if corking {
            state.corked = true;
            return;
        }
        // Only the frame just pushed can be new here: anything queued before it is the writer
        // task's backlog, which this write also advances.
        self.write_now(&mut state);
    }

    /// Writes as much of the queue as the socket takes now; a remainder goes to the writer task.
    fn write_now(&self, state: &mut State) {
        match self.write_queue(state) {
            Ok(true) => {}
            Ok(false) => self.writer.wake(),
            Err(_) => {
                // The peer is gone: nothing queued can reach it.
                state.discard();
                if state.close.is_none() {
                    state.close = Some(CloseRequest {
                        code: PEER_CLOSED,
                        reason: "write failed",
                    });
                }
                self.writer.wake();
                self.reader.wake();
            }
        }
    }

    /// Writes queued frames until the queue is empty (`Ok(true)`) or the socket is full
    /// (`Ok(false)`).
    fn write_queue(&self, state: &mut State) -> io::Result<bool> {
        let mut finished = 0u64;
        let result = loop {
            if state.queue.is_empty() {
                break self
                    .transport
                    .flush_unsent()
                    .inspect(|&all| state.unsent = !all);
            }
            let attempt = if let (1, Some((bytes, _))) = (state.queue.len(), state.queue.front()) {
                // The common case (one frame for this socket): no iovec array to fill.
                self.transport.try_write(&bytes[state.written..])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut n = 0;
                for (i, (bytes, _)) in state.queue.iter().take(MAX_IOVECS).enumerate() {
                    let skip = if i == 0 { state.written } else { 0 };
                    slices[i] = IoSlice::new(&bytes[skip..]);
                    n += 1;
                }
                self.transport.try_write_vectored(&slices[..n])
            };
            match attempt {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(mut written) => {
                    while let Some((bytes, kind)) = state.queue.front() {
                        let left = bytes.len() - state.written;
                        if written < left {
                            state.written += written;
                            break;
                        }
                        written -= left;
                        state.written = 0;
                        match kind {
                            Kind::Broadcast => state.broadcasts -= 1,
                            Kind::Reply => {
                                state.replies -= 1;
                                state.reply_bytes -= bytes.len();
                            }
                            Kind::Control => {}
                        }
                        state.queue.pop_front();
                        finished += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            }
        };
        self.frames_out.inc_by(finished);
        if state.page_due(self.bounds.budget) {
            // Time for the next page, which the writer task produces.
            self.writer.wake();
        }
        if state.replies == 0 && state.paging.is_none() && state.reader_waiting {
            state.reader_waiting = false;
            self.reader.wake();
        }
        result
    }

    /// Asks the writer to send what is queued, then close. The first request wins; a shutdown
    /// (1001) still cuts short the wait of a 4008 Close for a stalled client.
    pub fn close(&self, request: CloseRequest) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(request);
        } else if request.code == crate::protocol::close::GOING_AWAY {
            state.linger_cut = true;
        }
        drop(state);
        self.writer.wake();
        self.reader.wake();
    }

    /// The close request, once one was made.
    pub fn closing(&self) -> Option<CloseRequest> {
        self.lock().close.clone()
    }

    /// Waits until no reply is queued (or the connection is closing): backpressure for the
    /// reader. Broadcasts do not count, or a busy room would keep a member from being read.
    pub async fn replies_drained(&self) {
        poll_fn(|cx| {
            let mut state = self.lock();
            if (state.replies == 0 && state.paging.is_none()) || state.close.is_some() {
                return Poll::Ready(());
            }
            self.reader.register(cx.waker());
            state.reader_waiting = true;
            Poll::Pending
        })
        .await
    }

    /// The socket under this outbox (the reader reads from it).
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Ready with the close request once one is made.
    pub fn poll_closing_reader(&self, cx: &mut Context<'_>) -> Poll<CloseRequest> {
        self.reader.register(cx.waker());
        self.closing().map_or(Poll::Pending, Poll::Ready)
    }

    /// The connection's writer task: writes backlogs when the socket drains, produces paged
    /// replies as their budget allows, and on a close request writes what is left plus the
    /// Close frame, bounded by `linger` (by [`ReplyBounds::slow_linger`] for 4008). Returns then.
    pub async fn run_writer(&self, linger: Duration) -> CloseRequest {
        loop {
            let work = poll_fn(|cx| {
                self.writer.register(cx.waker());
                let state = self.lock();
                match &state.close {
                    Some(request) => Poll::Ready(Work::Close(request.clone())),
                    None if state.corked => Poll::Pending,
                    None if state.page_due(self.bounds.budget) => Poll::Ready(Work::NextPage),
                    None if !state.queue.is_empty() || state.unsent => {
                        Poll::Ready(Work::Backlog(state.replies > 0 || state.paging.is_some()))
                    }
                    None => Poll::Pending,
                }
            })
            .await;
            let replies_waiting = match work {
                Work::Close(request) => {
                    let linger = if request.code == crate::protocol::close::TOO_SLOW {
                        self.bounds.slow_linger
                    } else {
                        linger
                    };
                    // Boxed: closing happens once, but its state would sit in every idle
                    // connection.
                    Box::pin(self.finish(&request, linger)).await;
                    return request;
                }
                Work::NextPage => {
                    // Boxed: paging is rare, and its state would sit in every idle connection.
                    Box::pin(self.next_page()).await;
                    continue;
                }
                Work::Backlog(replies_waiting) => replies_waiting,
            };
            let closing = async {
                poll_fn(|cx| {
                    self.writer.register(cx.waker());
                    if self.lock().close.is_some() {
                        Poll::Ready(Writable::Closing)
                    } else {
                        Poll::Pending
                    }
                })
                .await
            };
            let writable = async {
                match self.transport.writable().await {
                    Ok(()) => Writable::Yes,
                    Err(_) => Writable::Failed,
                }
            };
            // Only a backlog holding our own replies has a deadline: broadcasts have the
            // capacity as their bound, and the timer is paid only while a backlog waits.
            let writable = if replies_waiting {
                let stall = self.bounds.stall_timeout;
                // Boxed: the timer's state would otherwise sit in every idle connection.
                Box::pin(future::or(future::or(writable, closing), async {
                    smol::Timer::after(stall).await;
                    Writable::Stalled
                }))
                .await
            } else {
                future::or(writable, closing).await
            };
            match writable {
                Writable::Yes => {
                    let mut state = self.lock();
                    if !state.corked {
                        self.write_now(&mut state);
                    }
                }
                Writable::Failed => self.close(CloseRequest {
                    code: PEER_CLOSED,
                    reason: "socket error",
                }),
                Writable::Stalled => {
                    let state = self.lock();
                    if state.close.is_none() {
                        self.bounds.slow_closes.inc();
                        tracing::info!("closing a client that does not read its replies (4008)");
                        self.close_too_slow(state);
                    }
                }
                Writable::Closing => {}
            }
        }
    }

    /// Produces the next page of the paged reply in progress, outside the lock (it reads the
    /// database), and queues it.
    async fn next_page(&self) {
        let (mut pages, budget) = {
            let mut state = self.lock();
            let Some(pages) = state.paging.as_mut().and_then(|p| p.pages.take()) else {
                return;
            };
            (pages, self.bounds.budget.saturating_sub(state.reply_bytes))
        };
        let mut frames = Vec::new();
        let result = pages.next_page(budget, &mut frames).await;
        let mut state = self.lock();
        if state.close.is_some() || state.paging.is_none() {
            return;
        }
        for frame in frames {
            let bytes = frame.wire_bytes();
            state.replies += 1;
            state.reply_bytes += bytes.len();
            state.queue.push_back((bytes, Kind::Reply));
        }
        match result {
            Ok(true) => {
                if let Some(paging) = &mut state.paging {
                    paging.pages = Some(pages);
                }
            }
            Ok(false) => state.end_paging(),
            Err(error) => {
                tracing::error!(%error, "reply failed");
                state.discard();
                state.close = Some(CloseRequest {
                    code: crate::protocol::close::INTERNAL,
                    reason: "internal error",
                });
                drop(state);
                self.reader.wake();
                return;
            }
        }
        if !state.corked {
            self.write_now(&mut state);
        }
    }

    /// Writes the remaining queue and, unless the peer closed first, our Close frame.
    async fn finish(&self, request: &CloseRequest, linger: Duration) {
        {
            let mut state = self.lock();
            if request.code != PEER_CLOSED && !state.close_queued {
                state.close_queued = true;
                let frame = Encoded::close(request.code, request.reason);
                state.queue.push_back((frame.wire_bytes(), Kind::Control));
            }
        }
        let drain = async {
            loop {
                let done = {
                    let mut state = self.lock();
                    !matches!(self.write_queue(&mut state), Ok(false))
                };
                if done || self.transport.writable().await.is_err() {
                    return;
                }
            }
        };
        let cut = poll_fn(|cx| {
            self.writer.register(cx.waker());
            if self.lock().linger_cut {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let timeout = async {
            smol::Timer::after(linger).await;
        };
        future::or(drain, future::or(timeout, cut)).await;
        self.transport.shutdown_write();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Socket;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// An outbox over one end of a loopback connection, and the other end.
    fn pair(capacity: usize) -> (Arc<Outbox>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let transport = Transport::new(Socket::Plain(smol::Async::new(server).unwrap()));
        let outbox = Outbox::new(transport, capacity, Counter::default());
        (Arc::new(outbox), client)
    }

    fn read_exactly(peer: &mut TcpStream, n: usize) -> Vec<u8> {
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0; n];
        peer.read_exact(&mut buf).unwrap();
        buf
    }

    #[test]
    fn frames_keep_their_order_across_the_inline_slot() {
        let mut frames = Frames::default();
        for i in 0..5u8 {
            frames.push_back((Bytes::from(vec![i]), Kind::Broadcast));
        }
        assert_eq!(frames.len(), 5);
        let order: Vec<u8> = frames.iter().map(|(b, _)| b[0]).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
        for i in 0..5u8 {
            assert_eq!(frames.pop_front().unwrap().0[0], i);
        }
        assert!(frames.is_empty() && frames.pop_front().is_none());
    }

    #[test]
    fn direct_and_corked_writes_reach_the_peer_in_order() {
        let (outbox, mut peer) = pair(16);
        let (a, b, c) = (Encoded::text("a"), Encoded::text("b"), Encoded::text("c"));
        outbox.reply(a.clone());
        corked(|| {
            outbox.broadcast(&b).unwrap();
            outbox.broadcast(&c).unwrap();
        });
        let expected: Vec<u8> = [a.wire(), b.wire(), c.wire()].concat();
        assert_eq!(read_exactly(&mut peer, expected.len()), expected);
    }

    #[test]
    fn a_peer_that_does_not_read_overflows_into_4008() {
        let (outbox, _peer) = pair(256);
        let big = Encoded::text(&"x".repeat(64 * 1024));
        let overflowed = (0..10_000).any(|_| outbox.broadcast(&big).is_err());
        assert!(
            overflowed,
            "the socket buffer and 256 queued frames must fill"
        );
        assert_eq!(outbox.closing().map(|c| c.code), Some(4008));
        // Once closing, nothing more is queued, and a reply does not panic.
        outbox.reply(Encoded::text("late"));
        assert!(outbox.broadcast(&big).is_ok());
    }
}
