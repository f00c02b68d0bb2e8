//! Group commit: writers queue messages, one thread writes and fsyncs them as one batch, another
//! runs every writer's continuation in queue order.
//!
//! A synced write costs 0.1–0.5 ms on these disks, and a sled transaction per message costs
//! ~440 µs of CPU; either caps a server at a few thousand messages a second. So:
//!
//! - **Callers** ([`Committer::append`], under the hub's room lock) do only memory work and reads:
//!   check the cid, take an id, queue the message with its continuation. No sled write.
//! - **The commit thread** takes everything queued, applies it as ONE backend operation
//!   ([`LogBackend::apply`]: for sled, ordered plain inserts of the messages and their cids and
//!   one update per touched room record, or one transaction when the batch holds an edit or a
//!   delete; see `message_batch`), flushes once, and hands the batch to the delivery thread. It
//!   then starts on the next batch while the last one is delivered: the next fsync never waits
//!   behind acks and fan-out.
//! - **The delivery thread** runs each batch's continuations in queue order ([`deliver`]). That is
//!   where acks and broadcasts happen, so nothing is announced before it is on disk; and because
//!   a room's messages are queued under the room's lock, they are announced in id order.
//!
//! A batch is all or nothing on disk as far as anyone was told: a crash can cut a batch of new
//! messages short, but only before its room records (sled recovers a prefix of its log), and
//! `Store::open` removes what such a cut left above its room's `last_id`. So after a crash a
//! message, its cid entry and its room's counters agree, `Store::open` can trust room records
//! for the next id, and an export that reads a room's `last_id` finds all its messages. Measured
//! costs of the shapes considered: `message_batch`'s module documentation and
//! `cargo bench --bench storage` (a).
//!
//! Invariants:
//! - **cids stay unique** across rooms and restarts: [`Committer::append`] looks a cid up in the
//!   queue's in-flight set and then in the backend, both under the queue's mutex, and records it
//!   in flight in the same critical section. The commit thread removes in-flight entries only
//!   after `apply` returned (so they are visible in the backend, or failed and never will be).
//! - A repeated cid gets the original's outcome: its continuation runs after the original's
//!   (it is queued later), and if the original was still in flight when the repeat came, the
//!   commit thread checks, after the flush, that the original really was stored.
//! - A failed apply or flush reaches every waiter of that batch as an error: no ack.
//! - `published` is the hub's business, raised by continuations, so it only rises after the
//!   flush that covered the message.
//! - **Nothing here waits for a disk that does not answer.** The [`WriteGate`] refuses writes
//!   before they are queued (low space, a stuck or failed write); a third thread, the watch
//!   thread, reads free space, notices a group commit that overran `--flush-timeout` and then
//!   fails everything queued behind it at once (those writes were never applied, so nothing of
//!   them is stored), and queues probes after a failure. Shutdown waits for the commit thread
//!   at most the flush timeout, then reports how many writes may not be on disk.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::gate::{Condition, WriteGate, CHECK_INTERVAL};
use super::log::{Applied, LogBackend, LogWrite, NewEntry, RoomRef};
use super::{cid_key, Appended, CidEntry, EntryPage, Message, Page, StoreError};

/// What a continuation learns: whether its write (and the flush that covered it) succeeded.
pub type FlushResult = Result<(), Arc<StoreError>>;

/// Work to do once the writes queued before it are durable.
pub type Continuation = Box<dyn FnOnce(FlushResult) + Send>;

/// Work to do once an appended message is durable (or its write failed): it learns what
/// [`Committer::append`] decided (a new id, or the original of a repeated cid) and the outcome.
pub type AppendContinuation = Box<dyn FnOnce(Appended, FlushResult) + Send>;

/// Called after every flush with its duration and whether it succeeded (for metrics and health).
pub type FlushObserver = Box<dyn Fn(Duration, bool) + Send + Sync>;

/// Batches the commit thread may run ahead of delivery. Beyond this it waits, and the queue
/// grows into a bigger next batch instead of memory growing without bound.
const DELIVERY_BACKLOG: usize = 2;

enum Work {
    /// A message or event to store, with its key in the in-flight cid set.
    Write {
        entry: NewEntry,
        cid_key: Option<Vec<u8>>,
    },
    /// A repeated cid whose original was still in flight when the repeat came: acknowledge
    /// only if the original turns out stored.
    Repeat {
        user_key: Arc<str>,
        cid: String,
        original: u64,
    },
    /// Nothing to write: run after the next flush (barriers, a repeat of a stored cid,
    /// publishing an import).
    Wait,
    /// After a failed write: a small write of the backend's own, then the flush, to learn
    /// whether writes work again (the write gate's `Failed` state).
    Probe,
}

struct Item {
    work: Work,
    then: Continuation,
}

#[derive(Default)]
struct Queue {
    items: Vec<Item>,
    /// cids of queued writes not yet applied, by cid key: what a repeat must see before the
    /// backend can show it.
    in_flight: HashMap<Vec<u8>, CidEntry>,
    stopping: bool,
    /// The commit thread is asleep on the condvar. Waking costs a syscall, so writers wake it
    /// only then: while it is busy, what they queue goes into its next batch by itself.
    idle: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    gate: Arc<WriteGate>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item` and wakes the commit thread if it sleeps.
    fn push(&self, mut queue: MutexGuard<'_, Queue>, item: Item) {
        queue.items.push(item);
        let idle = queue.idle;
        drop(queue);
        if idle {
            self.wake.notify_one();
        }
    }
}

/// One group commit, on its way from the commit thread to [`deliver`]: each continuation with the
/// outcome of its own write, in queue order.
pub struct Delivery {
    items: Vec<(Continuation, FlushResult)>,
}

/// Runs one batch's continuations in order. A panicking continuation is logged and skipped: the
/// thread is shared by every room, and one fault must not stop every later ack.
pub fn deliver(batch: Delivery) {
    // Corked: every frame this batch sends to one socket goes out in one write.
    crate::outbox::corked(|| {
        for (continuation, result) in batch.items {
            let run = std::panic::AssertUnwindSafe(|| continuation(result));
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!("a commit continuation panicked; continuing with the next");
            }
        }
    })
}

/// The message log's write side: the commit and delivery threads and their queue. Dropping it
/// without [`Committer::shutdown`] leaves the threads running.
pub struct Committer {
    backend: Arc<dyn LogBackend>,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Disconnected when the commit thread has returned.
    commit_done: Mutex<mpsc::Receiver<()>>,
    /// Dropped to stop the watch thread.
    stop_watch: Mutex<Option<mpsc::Sender<()>>>,
}

/// What [`Committer::shutdown`] could not finish: the commit thread was still inside a write
/// when the flush timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unfinished {
    /// Messages queued or being written, none of them acknowledged, that may not be on disk.
    pub messages: usize,
}

impl Committer {
    /// Starts the commit and delivery threads over `backend`. With `fsync` false (relaxed
    /// durability) batches are applied but not flushed, except the last one at shutdown; sled's
    /// background flush then bounds the loss window.
    /// `gate` decides whether writes are taken (see [`WriteGate`]); the watch thread keeps it
    /// up to date.
    pub fn start(
        backend: Arc<dyn LogBackend>,
        fsync: bool,
        observe: FlushObserver,
        gate: Arc<WriteGate>,
    ) -> Committer {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            gate,
        });
        let (handoff, batches) = mpsc::sync_channel::<Delivery>(DELIVERY_BACKLOG);
        let (done, commit_done) = mpsc::channel::<()>();
        let worker = shared.clone();
        let writer = backend.clone();
        let commit = std::thread::Builder::new()
            .name("chatd-commit".into())
            .spawn(move || {
                let _done = done;
                commit_loop(&*writer, &worker, fsync, &observe, handoff)
            })
            .expect("spawning the commit thread");
        let (stop_watch, stopped) = mpsc::channel::<()>();
        let watched = shared.clone();
        let watch = std::thread::Builder::new()
            .name("chatd-watch".into())
            .spawn(move || watch_loop(&watched, &stopped))
            .expect("spawning the watch thread");
        let delivery = std::thread::Builder::new()
            .name("chatd-deliver".into())
            .spawn(move || {
                // Ends when the commit thread, the only sender, has returned.
                for batch in batches {
                    deliver(batch);
                }
            })
            .expect("spawning the delivery thread");
        Committer {
            backend,
            shared,
            threads: Mutex::new(vec![commit, delivery, watch]),
            commit_done: Mutex::new(commit_done),
            stop_watch: Mutex::new(Some(stop_watch)),
        }
    }

    /// The gate this committer writes through.
    pub fn gate(&self) -> &WriteGate {
        &self.shared.gate
    }

    /// Queues `write` for `room` and returns at once what happens to it: a new id, or, if
    /// `user_key` already used its cid (in any room, queued or stored), the original. `then`
    /// runs on the delivery thread after the batch holding the write is durable, or failed.
    ///
    /// Callers must serialize appends to one room (the hub's room lock): ids are taken here in
    /// call order, and continuations run in queue order, so a room's messages are announced in
    /// id order. Only the cid lookup touches the backend (a read).
    pub fn append(
        &self,
        room: &RoomRef,
        user_key: &str,
        write: LogWrite,
        then: AppendContinuation,
    ) -> Result<Appended, StoreError> {
        let cid_key = write.cid().map(|c| cid_key(user_key, c));
        let user_key: Arc<str> = Arc::from(user_key);
        // Before the cid lookup: a backend that failed a write may fail reads too.
        self.shared.gate.admit_flush_waiter()?;
        let mut queue = self.shared.lock();
        if queue.stopping {
            return Err(StoreError::Stopped);
        }
        if let (Some(key), Some(cid)) = (&cid_key, write.cid()) {
            // Both lookups under the queue's mutex: two rooms cannot both accept one cid, and an
            // entry leaves the in-flight set only once the backend shows it.
            let repeat = match queue.in_flight.get(key) {
                Some(original) => Some((original.clone(), true)),
                None => match self.backend.cid(&user_key, cid) {
                    Ok(stored) => stored.map(|e| (e, false)),
                    Err(e @ StoreError::Sled(_)) => return Err(self.shared.gate.read_failed(&e)),
                    Err(e) => return Err(e),
                },
            };
            if let Some((original, in_flight)) = repeat {
                let appended = Appended::Duplicate(original.clone());
                let work = if in_flight {
                    Work::Repeat {
                        user_key,
                        cid: cid.to_owned(),
                        original: original.id,
                    }
                } else {
                    Work::Wait
                };
                let outcome = appended.clone();
                self.shared.push(
                    queue,
                    Item {
                        work,
                        then: Box::new(move |result| then(outcome, result)),
                    },
                );
                return Ok(appended);
            }
        }
        self.shared.gate.admit_message(write.text_len())?;
        let id = self.backend.take_id();
        let ts = write.ts();
        if let Some(key) = &cid_key {
            queue.in_flight.insert(
                key.clone(),
                CidEntry {
                    room: room.name.to_string(),
                    id,
                    ts,
                },
            );
        }
        self.shared.push(
            queue,
            Item {
                work: Work::Write {
                    entry: NewEntry {
                        room: room.clone(),
                        id,
                        user_key,
                        write,
                    },
                    cid_key,
                },
                then: Box::new(move |result| then(Appended::New(id), result)),
            },
        );
        Ok(Appended::New(id))
    }

    /// Whether `user_key` already used `cid` (in a write queued or stored).
    pub fn used_cid(&self, user_key: &str, cid: &str) -> Result<bool, StoreError> {
        let queue = self.shared.lock();
        if queue.in_flight.contains_key(&cid_key(user_key, cid)) {
            return Ok(true);
        }
        drop(queue);
        Ok(self.backend.cid(user_key, cid)?.is_some())
    }

    /// Runs `continuation` after the next flush that covers every write made before this call
    /// (also writes made to the store directly, such as users and sessions), in queue order.
    pub fn after_flush(&self, continuation: Continuation) {
        let queue = self.shared.lock();
        if queue.stopping {
            drop(queue);
            // Shutdown already flushed for the last time: say so rather than wait forever.
            continuation(Err(Arc::new(StoreError::Stopped)));
            return;
        }
        if let Err(refused) = self.shared.gate.admit_flush_waiter() {
            drop(queue);
            continuation(Err(Arc::new(refused)));
            return;
        }
        self.shared.push(
            queue,
            Item {
                work: Work::Wait,
                then: continuation,
            },
        );
    }

    /// Waits until every write made before this call is durable and every continuation queued
    /// before it has run.
    pub async fn barrier(&self) -> FlushResult {
        let (tx, rx) = async_channel::bounded(1);
        self.after_flush(Box::new(move |result| {
            let _ = tx.try_send(result);
        }));
        rx.recv()
            .await
            .unwrap_or(Err(Arc::new(StoreError::Stopped)))
    }

    /// A page of `room_no` after `after`, up to `upto` (see [`LogBackend::messages_after`]).
    pub fn messages_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.backend.messages_after(room_no, after, upto, limit)
    }

    /// A page of `room_no` before `before`, up to `upto` (see [`LogBackend::messages_before`]).
    pub fn messages_before(
        &self,
        room_no: u32,
        before: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.backend.messages_before(room_no, before, upto, limit)
    }

    /// Messages and events of `room_no` after `after`, up to `upto` (see
    /// [`LogBackend::entries_after`]).
    pub fn entries_after(
        &self,
        room_no: u32,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<EntryPage, StoreError> {
        self.backend.entries_after(room_no, after, upto, limit)
    }

    /// Message `id` of `room_no` if the room holds it (see [`LogBackend::message`]).
    pub fn message(&self, room_no: u32, id: u64) -> Result<Option<Message>, StoreError> {
        self.backend.message(room_no, id)
    }

    /// Applies and flushes what is queued, runs the remaining continuations, and stops the
    /// threads. Later appends get [`StoreError::Stopped`]. Waits for the commit thread at most
    /// `limit`: a write that does not return by then is stuck in the disk, and the threads are
    /// left behind (the process is about to exit) with what they hold reported.
    pub fn shutdown(&self, limit: Duration) -> Result<(), Unfinished> {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_all();
        drop(
            self.stop_watch
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let done = self
            .commit_done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv_timeout(limit);
        if done == Err(mpsc::RecvTimeoutError::Timeout) {
            let queue = self.shared.lock();
            let queued = queue
                .items
                .iter()
                .filter(|item| matches!(item.work, Work::Write { .. }))
                .count();
            return Err(Unfinished {
                messages: queued + self.shared.gate.writes_running(),
            });
        }
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        // The commit thread has returned: its end of the hand-off is closed and the delivery
        // thread ends after the last batch.
        for thread in threads {
            let _ = thread.join();
        }
        Ok(())
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.shared.lock().in_flight.len()
    }
}

fn commit_loop(
    backend: &dyn LogBackend,
    shared: &Shared,
    fsync: bool,
    observe: &FlushObserver,
    handoff: mpsc::SyncSender<Delivery>,
) {
    loop {
        let (items, stopping) = {
            let mut queue = shared.lock();
            while queue.items.is_empty() && !queue.stopping {
                queue.idle = true;
                queue = shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
                queue.idle = false;
            }
            (std::mem::take(&mut queue.items), queue.stopping)
        };
        if items.is_empty() {
            return; // stopping, and everything queued before is delivered or on its way
        }
        let writes: Vec<&NewEntry> = items
            .iter()
            .filter_map(|item| match &item.work {
                Work::Write { entry, .. } => Some(entry),
                _ => None,
            })
            .collect();
        let probing = items.iter().any(|item| matches!(item.work, Work::Probe));
        shared.gate.write_began(writes.len());
        let applied: Result<Applied, Arc<StoreError>> = if writes.is_empty() {
            Ok(Applied::default())
        } else {
            backend.apply(&writes).map_err(Arc::new)
        };
        drop(writes);
        let probed = if probing {
            backend.probe().map_err(Arc::new)
        } else {
            Ok(())
        };
        release_cids(shared, &items);
        let flushed = if fsync || stopping || probing {
            let started = Instant::now();
            let result = backend.flush().map_err(Arc::new);
            observe(started.elapsed(), result.is_ok());
            result
        } else {
            Ok(())
        };
        // Logged and counted by the gate once per change of state, not once per batch: a full
        // disk fails every batch.
        let failed = (applied.as_ref().err())
            .or(probed.as_ref().err())
            .or(flushed.as_ref().err());
        shared
            .gate
            .write_ended(failed.map_or(Ok(()), |e| Err(&**e)));
        if probing {
            shared.gate.probe_ended();
        }
        let batch = outcomes(backend, items, &applied, &flushed);
        if let Err(mpsc::SendError(batch)) = handoff.send(batch) {
            // The delivery thread is gone (it cannot panic, but never drop an ack silently).
            deliver(batch);
        }
    }
}

/// Every [`CHECK_INTERVAL`] until `stop` closes: updates the gate; while a write is stuck,
/// fails what is queued behind it; after a failure, queues a probe now and then.
fn watch_loop(shared: &Shared, stop: &mpsc::Receiver<()>) {
    while stop.recv_timeout(CHECK_INTERVAL) == Err(mpsc::RecvTimeoutError::Timeout) {
        shared.gate.check();
        match shared.gate.condition() {
            Condition::FlushStalled => fail_queued(shared, Condition::FlushStalled),
            Condition::Failed if shared.gate.probe_due() => {
                let queue = shared.lock();
                if queue.stopping {
                    return;
                }
                shared.push(
                    queue,
                    Item {
                        work: Work::Probe,
                        then: Box::new(drop),
                    },
                );
            }
            _ => {}
        }
    }
}

/// Answers everything queued (not the batch being written) with a refusal, now: none of it was
/// applied, so none of it is stored, and its cids are free for a retry.
fn fail_queued(shared: &Shared, condition: Condition) {
    let items = {
        let mut queue = shared.lock();
        if queue.items.is_empty() {
            return;
        }
        let items = std::mem::take(&mut queue.items);
        for item in &items {
            if let Work::Write {
                cid_key: Some(key), ..
            } = &item.work
            {
                queue.in_flight.remove(key);
            }
        }
        items
    };
    let refused = Arc::new(StoreError::Unavailable { condition });
    deliver(Delivery {
        items: items
            .into_iter()
            .map(|item| {
                match item.work {
                    Work::Write { .. } => shared.gate.count_refusal(condition),
                    Work::Probe => shared.gate.probe_ended(),
                    Work::Repeat { .. } | Work::Wait => {}
                }
                (item.then, Err(refused.clone()))
            })
            .collect(),
    });
}

/// Forgets the in-flight cids of a batch whose apply has returned: they are now visible in the
/// backend, or the write failed and a retry may use them.
fn release_cids(shared: &Shared, items: &[Item]) {
    let mut keys = items
        .iter()
        .filter_map(|item| match &item.work {
            Work::Write {
                cid_key: Some(key), ..
            } => Some(key),
            _ => None,
        })
        .peekable();
    if keys.peek().is_none() {
        return;
    }
    let mut queue = shared.lock();
    for key in keys {
        queue.in_flight.remove(key);
    }
}

/// Pairs each continuation with the outcome of its own write.
fn outcomes(
    backend: &dyn LogBackend,
    items: Vec<Item>,
    applied: &Result<Applied, Arc<StoreError>>,
    flushed: &FlushResult,
) -> Delivery {
    let mut position = 0;
    let items = items
        .into_iter()
        .map(|item| {
            let result = match item.work {
                Work::Write { entry, .. } => {
                    let at = position;
                    position += 1;
                    match applied {
                        Err(e) => Err(e.clone()),
                        Ok(a) if a.room_gone.binary_search(&at).is_ok() => {
                            Err(Arc::new(StoreError::RoomGone {
                                room: entry.room.name.to_string(),
                            }))
                        }
                        Ok(a) if a.target_gone.binary_search(&at).is_ok() => {
                            Err(Arc::new(StoreError::MessageGone {
                                room: entry.room.name.to_string(),
                            }))
                        }
                        Ok(_) => flushed.clone(),
                    }
                }
                Work::Repeat {
                    user_key,
                    cid,
                    original,
                } => flushed.clone().and_then(|()| {
                    // The original's batch came before this one, so its apply has returned.
                    match backend.cid(&user_key, &cid) {
                        Ok(Some(entry)) if entry.id == original => Ok(()),
                        Ok(_) => Err(Arc::new(StoreError::OriginalNotStored { cid })),
                        Err(e) => Err(Arc::new(e)),
                    }
                }),
                Work::Wait | Work::Probe => flushed.clone(),
            };
            (item.then, result)
        })
        .collect();
    Delivery { items }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::{Store, StoreOptions};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    const WAIT: Duration = Duration::from_secs(20);

    /// The real store behind switches: failing flushes or applies, and an apply that can be
    /// held (it says when it started, then waits to be released) so writes pile up in the queue.
    struct Faulty {
        store: Arc<Store>,
        fail_flush: AtomicBool,
        fail_apply: AtomicBool,
        /// cid lookups fail, as every sled operation does after a failed background write.
        fail_reads: AtomicBool,
        hold: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
        hold_flush: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    }

    impl Faulty {
        fn new(store: Arc<Store>) -> Arc<Faulty> {
            Arc::new(Faulty {
                store,
                fail_flush: AtomicBool::new(false),
                fail_apply: AtomicBool::new(false),
                fail_reads: AtomicBool::new(false),
                hold: Mutex::new(None),
                hold_flush: Mutex::new(None),
            })
        }

        /// Makes the next flush wait, as a flush to a full disk may; returns (started, release).
        fn hold_next_flush(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
            let (started_tx, started) = mpsc::channel();
            let (release, release_rx) = mpsc::channel();
            *self.hold_flush.lock().unwrap() = Some((started_tx, release_rx));
            (started, release)
        }

        /// Makes the next apply wait; returns (started, release).
        fn hold_next_apply(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
            let (started_tx, started) = mpsc::channel();
            let (release, release_rx) = mpsc::channel();
            *self.hold.lock().unwrap() = Some((started_tx, release_rx));
            (started, release)
        }
    }

    fn failure(what: &str) -> StoreError {
        StoreError::Sled(sled::Error::Unsupported(what.into()))
    }

    impl LogBackend for Faulty {
        fn take_id(&self) -> u64 {
            self.store.take_id()
        }
        fn cid(&self, user_key: &str, cid: &str) -> Result<Option<CidEntry>, StoreError> {
            if self.fail_reads.load(Ordering::SeqCst) {
                return Err(failure("read after a failed background write"));
            }
            LogBackend::cid(&*self.store, user_key, cid)
        }
        fn apply(&self, batch: &[&NewEntry]) -> Result<Applied, StoreError> {
            let hold = self.hold.lock().unwrap().take();
            if let Some((started, release)) = hold {
                started.send(()).unwrap();
                release.recv_timeout(WAIT).unwrap();
            }
            if self.fail_apply.load(Ordering::SeqCst) {
                return Err(failure("apply on fire"));
            }
            self.store.apply(batch)
        }
        fn flush(&self) -> Result<(), StoreError> {
            let hold = self.hold_flush.lock().unwrap().take();
            if let Some((started, release)) = hold {
                started.send(()).unwrap();
                let _ = release.recv_timeout(WAIT);
            }
            if self.fail_flush.load(Ordering::SeqCst) {
                return Err(failure("disk on fire"));
            }
            LogBackend::flush(&*self.store)
        }
        fn probe(&self) -> Result<(), StoreError> {
            if self.fail_flush.load(Ordering::SeqCst) {
                return Err(failure("disk still on fire"));
            }
            LogBackend::probe(&*self.store)
        }
        fn messages_after(&self, n: u32, a: u64, u: u64, l: usize) -> Result<Page, StoreError> {
            LogBackend::messages_after(&*self.store, n, a, u, l)
        }
        fn messages_before(&self, n: u32, b: u64, u: u64, l: usize) -> Result<Page, StoreError> {
            LogBackend::messages_before(&*self.store, n, b, u, l)
        }
        fn entries_after(&self, n: u32, a: u64, u: u64, l: usize) -> Result<EntryPage, StoreError> {
            LogBackend::entries_after(&*self.store, n, a, u, l)
        }
        fn message(&self, n: u32, id: u64) -> Result<Option<Message>, StoreError> {
            LogBackend::message(&*self.store, n, id)
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        faulty: Arc<Faulty>,
        committer: Committer,
        flush_failures: Arc<AtomicU32>,
    }

    /// A gate with no free-space check and a flush timeout long enough never to matter.
    fn lenient_gate() -> Arc<WriteGate> {
        WriteGate::new(Arc::new(Metrics::new()), WAIT, None)
    }

    fn fixture() -> Fixture {
        fixture_with(lenient_gate())
    }

    fn fixture_with(gate: Arc<WriteGate>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), &StoreOptions::default()).unwrap());
        let faulty = Faulty::new(store.clone());
        let flush_failures = Arc::new(AtomicU32::new(0));
        let counter = flush_failures.clone();
        let committer = Committer::start(
            faulty.clone(),
            true,
            Box::new(move |_, ok| {
                if !ok {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            }),
            gate,
        );
        Fixture {
            _dir: dir,
            store,
            faulty,
            committer,
            flush_failures,
        }
    }

    type Outcome = (Appended, FlushResult);

    impl Fixture {
        fn room(&self, name: &str) -> RoomRef {
            let room = self.store.ensure_room(name, 0).unwrap();
            RoomRef {
                name: Arc::from(name),
                no: room.no,
            }
        }

        /// Queues a message; the receiver gets its outcome once delivered.
        fn send(
            &self,
            room: &str,
            user: &str,
            text: &str,
            cid: Option<&str>,
        ) -> (Appended, mpsc::Receiver<Outcome>) {
            let (tx, rx) = mpsc::channel();
            let message = LogWrite::Message(Message::new(
                user.into(),
                text.into(),
                7,
                cid.map(Into::into),
            ));
            let appended = self
                .committer
                .append(
                    &self.room(room),
                    &user.to_lowercase(),
                    message,
                    Box::new(move |a, r| {
                        let _ = tx.send((a, r));
                    }),
                )
                .unwrap();
            (appended, rx)
        }
    }

    fn new_id(appended: &Appended) -> u64 {
        match appended {
            Appended::New(id) => *id,
            other => panic!("expected a new message, got {other:?}"),
        }
    }

    fn outcome(rx: &mpsc::Receiver<Outcome>) -> Outcome {
        rx.recv_timeout(WAIT).expect("a continuation within 20 s")
    }

    /// Polls (the watch thread changes the gate on its own clock) until `condition` holds.
    fn wait_for_condition(committer: &Committer, condition: Condition) {
        let deadline = Instant::now() + WAIT;
        while committer.gate().condition() != condition {
            assert!(
                Instant::now() < deadline,
                "the gate never became {condition:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn refused_for(result: &FlushResult) -> Option<Condition> {
        match result.as_ref().map_err(|e| &**e) {
            Err(StoreError::Unavailable { condition }) => Some(*condition),
            _ => None,
        }
    }

    fn append_now(f: &Fixture, text: &str, cid: Option<&str>) -> Result<Appended, StoreError> {
        f.committer.append(
            &f.room("a"),
            "alice",
            LogWrite::Message(Message::new(
                "alice".into(),
                text.into(),
                7,
                cid.map(Into::into),
            )),
            Box::new(|_, _| {}),
        )
    }

    #[test]
    fn continuations_run_in_queue_order_after_flush() {
        let f = fixture();
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let order = order.clone();
            f.committer.after_flush(Box::new(move |r| {
                assert!(r.is_ok());
                order.lock().unwrap().push(i);
            }));
        }
        f.committer
            .after_flush(Box::new(|_| panic!("a faulty continuation")));
        smol::block_on(f.committer.barrier()).unwrap();
        assert_eq!(*order.lock().unwrap(), (0..100).collect::<Vec<_>>());
        f.committer.shutdown(WAIT).unwrap();
    }

    #[test]
    fn a_batch_is_applied_at_once_with_counters_cids_and_ids_in_order() {
        let f = fixture();
        let (started, release) = f.faulty.hold_next_apply();
        let (_, first) = f.send("a", "Alice", "first", None);
        started.recv_timeout(WAIT).unwrap();
        // The first batch is being applied: these 60 queue up as the next batch.
        let mut sent = Vec::new();
        for i in 0..60 {
            let room = ["a", "b", "c"][i % 3];
            let cid = format!("c{i}");
            let (appended, rx) = f.send(room, "Alice", &format!("m{i}"), Some(&cid));
            sent.push((room, new_id(&appended), cid, rx));
        }
        // Nothing of the queued batch is in sled yet.
        assert_eq!(f.store.room("b").unwrap().unwrap().count, 0);
        release.send(()).unwrap();
        assert!(outcome(&first).1.is_ok());
        let mut last = 0;
        for (room, id, cid, rx) in &sent {
            let (appended, result) = outcome(rx);
            assert_eq!(appended, Appended::New(*id));
            assert!(result.is_ok(), "{result:?}");
            assert!(*id > last, "ids rise in queue order");
            last = *id;
            let entry = f.store.cid("alice", cid).unwrap().unwrap();
            assert_eq!((entry.room.as_str(), entry.id), (*room, *id));
        }
        let a = f.store.room("a").unwrap().unwrap();
        assert_eq!(a.count, 21);
        let b = f.store.room("b").unwrap().unwrap();
        assert_eq!((b.count, b.last_id), (20, sent[58].1));
        let page = f.store.messages_after(b.no, 0, u64::MAX, 100).unwrap();
        assert_eq!(page.messages.len(), 20);
        assert_eq!(page.messages[0].message.text, "m1");
        assert_eq!(f.committer.in_flight(), 0);
        f.committer.shutdown(WAIT).unwrap();
    }

    #[test]
    fn a_cid_is_taken_once_across_rooms_while_queued_and_after_apply() {
        let f = fixture();
        let (started, release) = f.faulty.hold_next_apply();
        let (held, held_rx) = f.send("a", "Alice", "in apply", Some("x"));
        started.recv_timeout(WAIT).unwrap();
        // Still being applied: the repeat is found in flight, in another room.
        let (repeat_of_held, repeat_of_held_rx) = f.send("b", "Alice", "again", Some("x"));
        // Only queued: likewise.
        let (queued, queued_rx) = f.send("a", "Alice", "queued", Some("y"));
        let (repeat_of_queued, repeat_of_queued_rx) = f.send("b", "ALICE", "again", Some("y"));
        // Another user may use the same cid.
        let (bobs, bobs_rx) = f.send("b", "Bob", "bob's", Some("y"));
        new_id(&bobs);
        let original = |id| CidEntry {
            room: "a".into(),
            id,
            ts: 7,
        };
        assert_eq!(repeat_of_held, Appended::Duplicate(original(new_id(&held))));
        assert_eq!(
            repeat_of_queued,
            Appended::Duplicate(original(new_id(&queued)))
        );
        assert_eq!(f.committer.in_flight(), 3);
        release.send(()).unwrap();
        for rx in [
            &held_rx,
            &repeat_of_held_rx,
            &queued_rx,
            &repeat_of_queued_rx,
            &bobs_rx,
        ] {
            assert!(outcome(rx).1.is_ok());
        }
        assert_eq!(f.committer.in_flight(), 0);
        // Applied: found in sled now, from any room.
        let (after, after_rx) = f.send("c", "alice", "later", Some("y"));
        assert_eq!(after, Appended::Duplicate(original(new_id(&queued))));
        assert!(outcome(&after_rx).1.is_ok());
        assert_eq!(f.store.room("b").unwrap().unwrap().count, 1, "bob's only");
        assert_eq!(f.store.room("c").unwrap().unwrap().count, 0);
        f.committer.shutdown(WAIT).unwrap();
    }

    #[test]
    fn a_cid_is_remembered_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let store = Arc::new(Store::open(dir.path(), &StoreOptions::default()).unwrap());
            let f = Fixture {
                faulty: Faulty::new(store.clone()),
                committer: Committer::start(
                    store.clone(),
                    true,
                    Box::new(|_, _| {}),
                    lenient_gate(),
                ),
                store,
                _dir: tempfile::tempdir().unwrap(),
                flush_failures: Arc::default(),
            };
            let (appended, rx) = f.send("a", "alice", "once", Some("k"));
            assert!(outcome(&rx).1.is_ok());
            f.committer.shutdown(WAIT).unwrap();
            new_id(&appended)
        };
        let store = Arc::new(Store::reopen(dir.path(), &StoreOptions::default()).unwrap());
        let f = Fixture {
            faulty: Faulty::new(store.clone()),
            committer: Committer::start(store.clone(), true, Box::new(|_, _| {}), lenient_gate()),
            store,
            _dir: tempfile::tempdir().unwrap(),
            flush_failures: Arc::default(),
        };
        let (again, rx) = f.send("b", "alice", "twice", Some("k"));
        assert_eq!(
            again,
            Appended::Duplicate(CidEntry {
                room: "a".into(),
                id: first,
                ts: 7
            })
        );
        assert!(outcome(&rx).1.is_ok());
        let (next, _) = f.send("b", "alice", "new", None);
        assert!(new_id(&next) > first, "ids continue above the last stored");
        f.committer.shutdown(WAIT).unwrap();
    }

    #[test]
    fn a_failed_flush_acks_nothing_and_releases_the_cids() {
        let f = fixture();
        f.faulty.fail_flush.store(true, Ordering::SeqCst);
        let mut waiting = Vec::new();
        for i in 0..10 {
            waiting.push(f.send("a", "alice", "x", Some(&format!("f{i}"))).1);
        }
        for rx in &waiting {
            assert!(
                outcome(rx).1.is_err(),
                "no write is acknowledged as durable"
            );
        }
        assert!(smol::block_on(f.committer.barrier()).is_err());
        assert!(f.flush_failures.load(Ordering::SeqCst) >= 1);
        assert_eq!(f.committer.in_flight(), 0);
        f.committer.shutdown(WAIT).unwrap();
    }

    #[test]
    fn a_stuck_flush_refuses_writes_answers_the_queue_at_once_and_recovers_when_it_returns() {
        let gate = WriteGate::new(Arc::new(Metrics::new()), Duration::from_secs(1), None);
        let f = fixture_with(gate);
        let (started, release) = f.faulty.hold_next_flush();
        let (_, stuck) = f.send("a", "alice", "stuck", Some("s"));
        started.recv_timeout(WAIT).unwrap();
        let (_, queued) = f.send("a", "alice", "queued", Some("q"));
        // Once the flush overran its timeout, the write queued behind it is answered without
        // waiting for that flush.
        let (_, result) = outcome(&queued);
        assert_eq!(
            refused_for(&result),
            Some(Condition::FlushStalled),
            "{result:?}"
        );
        assert_eq!(f.committer.gate().condition(), Condition::FlushStalled);
        let refused = append_now(&f, "new", Some("n"));
        assert!(
            matches!(
                refused,
                Err(StoreError::Unavailable {
                    condition: Condition::FlushStalled
                })
            ),
            "{refused:?}"
        );
        let barrier = smol::block_on(f.committer.barrier());
        assert_eq!(refused_for(&barrier), Some(Condition::FlushStalled));
        assert!(
            stuck.try_recv().is_err(),
            "the stuck write waits for its own flush"
        );
        release.send(()).unwrap();
        assert!(
            outcome(&stuck).1.is_ok(),
            "acknowledged once its flush returned"
        );
        wait_for_condition(&f.committer, Condition::Writable);
        // The refused cid was never stored: sending it again stores it now, once.
        let (again, again_rx) = f.send("a", "alice", "queued", Some("q"));
        new_id(&again);
        assert!(outcome(&again_rx).1.is_ok());
        assert_eq!(f.store.room("a").unwrap().unwrap().count, 2);
        assert_eq!(f.committer.in_flight(), 0);
        f.committer.shutdown(WAIT).unwrap();
    }

    #[test]
    fn shutdown_gives_up_on_a_stuck_flush_and_counts_what_may_not_be_on_disk() {
        let f = fixture();
        let (started, release) = f.faulty.hold_next_flush();
        let (_, _stuck) = f.send("a", "alice", "stuck", None);
        started.recv_timeout(WAIT).unwrap();
        let (_, _queued) = f.send("a", "alice", "queued", None);
        let began = Instant::now();
        let result = f.committer.shutdown(Duration::from_millis(300));
        assert_eq!(result, Err(Unfinished { messages: 2 }));
        assert!(
            began.elapsed() < WAIT,
            "bounded by the limit, not the flush"
        );
        release.send(()).unwrap();
    }

    #[test]
    fn after_a_failed_flush_writes_are_refused_until_a_probe_succeeds_and_a_resend_gets_the_stored_id(
    ) {
        let f = fixture();
        f.faulty.fail_flush.store(true, Ordering::SeqCst);
        let (first, first_rx) = f.send("a", "alice", "x", Some("p"));
        assert!(outcome(&first_rx).1.is_err(), "no ack without a flush");
        wait_for_condition(&f.committer, Condition::Failed);
        let refused = append_now(&f, "y", Some("other"));
        assert!(
            matches!(
                refused,
                Err(StoreError::Unavailable {
                    condition: Condition::Failed
                })
            ),
            "{refused:?}"
        );
        f.faulty.fail_flush.store(false, Ordering::SeqCst);
        // No write is needed to leave the state: the watch thread's probe finds the disk works.
        wait_for_condition(&f.committer, Condition::Writable);
        // The batch was applied before its flush failed, so it is stored: the resend with the
        // same cid gets the stored message's id, and nothing is stored twice.
        let (again, again_rx) = f.send("a", "alice", "x", Some("p"));
        assert_eq!(
            again,
            Appended::Duplicate(CidEntry {
                room: "a".into(),
                id: new_id(&first),
                ts: 7
            })
        );
        assert!(outcome(&again_rx).1.is_ok());
        assert_eq!(f.store.room("a").unwrap().unwrap().count, 1);
        f.committer.shutdown(WAIT).unwrap();
    }

    #[test]
    fn a_failed_cid_lookup_refuses_the_write_and_puts_the_gate_in_failed_until_a_probe() {
        let f = fixture();
        f.faulty.fail_reads.store(true, Ordering::SeqCst);
        let refused = append_now(&f, "y", Some("c1"));
        assert!(
            matches!(
                refused,
                Err(StoreError::Unavailable {
                    condition: Condition::Failed
                })
            ),
            "{refused:?}"
        );
        wait_for_condition(&f.committer, Condition::Failed);
        assert!(f
            .committer
            .gate()
            .reason()
            .is_some_and(|r| r.contains("read after a failed background write")));
        f.faulty.fail_reads.store(false, Ordering::SeqCst);
        wait_for_condition(&f.committer, Condition::Writable);
        assert!(matches!(
            append_now(&f, "y", Some("c1")),
            Ok(Appended::New(_))
        ));
        f.committer.shutdown(WAIT).unwrap();
    }

    #[test]
    fn a_failed_apply_acks_nothing_and_a_retry_of_its_cid_is_stored() {
        let f = fixture();
        f.faulty.fail_apply.store(true, Ordering::SeqCst);
        let (started, release) = f.faulty.hold_next_apply();
        let (first, first_rx) = f.send("a", "alice", "x", Some("r"));
        started.recv_timeout(WAIT).unwrap();
        // A repeat while the original is in flight: its original will not be stored.
        let (repeat, repeat_rx) = f.send("b", "alice", "x", Some("r"));
        assert!(matches!(repeat, Appended::Duplicate(_)));
        release.send(()).unwrap();
        assert!(outcome(&first_rx).1.is_err());
        f.faulty.fail_apply.store(false, Ordering::SeqCst);
        let (_, result) = outcome(&repeat_rx);
        assert!(
            matches!(
                result.as_ref().map_err(|e| &**e),
                Err(StoreError::OriginalNotStored { .. })
            ),
            "{result:?}"
        );
        assert_eq!(f.committer.in_flight(), 0);
        // The failure closed the gate (or will at the watch thread's next look); a probe opens it.
        wait_for_condition(&f.committer, Condition::Writable);
        let (retry, retry_rx) = f.send("a", "alice", "x", Some("r"));
        assert!(new_id(&retry) > new_id(&first));
        assert!(outcome(&retry_rx).1.is_ok());
        assert_eq!(f.store.room("a").unwrap().unwrap().count, 1);
        f.committer.shutdown(WAIT).unwrap();
    }

    #[test]
    fn room_counters_survive_maintenance_between_and_during_batches() {
        let f = fixture();
        let mut ids = Vec::new();
        for i in 0..10 {
            let (a, rx) = f.send("a", "alice", &i.to_string(), None);
            assert!(outcome(&rx).1.is_ok());
            ids.push(new_id(&a));
        }
        assert_eq!(f.store.remove_messages("a", &ids[..3]).unwrap(), 3);
        // Maintenance while a batch is queued: the batch must add to the record as it is then.
        let (started, release) = f.faulty.hold_next_apply();
        let (_, rx) = f.send("a", "alice", "held", None);
        started.recv_timeout(WAIT).unwrap();
        let mut queued = Vec::new();
        for i in 0..5 {
            queued.push(f.send("a", "alice", &format!("q{i}"), None));
        }
        assert_eq!(f.store.remove_messages("a", &ids[3..5]).unwrap(), 2);
        release.send(()).unwrap();
        assert!(outcome(&rx).1.is_ok());
        for (_, rx) in &queued {
            assert!(outcome(rx).1.is_ok());
        }
        let room = f.store.room("a").unwrap().unwrap();
        assert_eq!(room.count, 10 - 3 - 2 + 1 + 5);
        assert_eq!(room.last_id, new_id(&queued[4].0));
        assert_eq!(
            f.store.room_messages(room.no).count() as u64,
            room.count,
            "the counter matches the messages"
        );
        f.committer.shutdown(WAIT).unwrap();
    }

    #[test]
    fn a_room_deleted_while_its_writes_are_queued_gets_none_of_them() {
        let f = fixture();
        f.room("a");
        let (started, release) = f.faulty.hold_next_apply();
        let (_, first) = f.send("b", "alice", "other room", None);
        started.recv_timeout(WAIT).unwrap();
        let (_, doomed) = f.send("a", "alice", "too late", Some("d"));
        let (_, kept) = f.send("b", "alice", "kept", None);
        let record = f.store.remove_room_record("a").unwrap().unwrap();
        release.send(()).unwrap();
        assert!(outcome(&first).1.is_ok());
        let (_, result) = outcome(&doomed);
        assert!(
            matches!(
                result.as_ref().map_err(|e| &**e),
                Err(StoreError::RoomGone { .. })
            ),
            "{result:?}"
        );
        assert!(outcome(&kept).1.is_ok());
        assert_eq!(f.store.room_messages(record.no).count(), 0, "no orphans");
        assert_eq!(f.store.cid("alice", "d").unwrap(), None);
        f.committer.shutdown(WAIT).unwrap();
    }

    #[test]
    fn shutdown_writes_what_is_queued_and_refuses_later_writes() {
        let f = fixture();
        let (started, release) = f.faulty.hold_next_apply();
        let (_, first) = f.send("a", "alice", "first", None);
        started.recv_timeout(WAIT).unwrap();
        let queued: Vec<_> = (0..5)
            .map(|i| f.send("a", "alice", &i.to_string(), None))
            .collect();
        let stopper = std::thread::scope(|s| {
            let stopping = s.spawn(|| f.committer.shutdown(WAIT));
            // Shutdown must not be done while the apply is still held.
            let deadline = Instant::now() + WAIT;
            while !f.committer.shared.lock().stopping {
                assert!(Instant::now() < deadline, "shutdown did not begin");
                std::thread::yield_now();
            }
            release.send(()).unwrap();
            stopping.join()
        });
        assert_eq!(stopper.unwrap(), Ok(()));
        assert!(outcome(&first).1.is_ok());
        for (_, rx) in &queued {
            assert!(outcome(rx).1.is_ok(), "queued before shutdown: written");
        }
        assert_eq!(f.store.room("a").unwrap().unwrap().count, 6);
        let late = f.committer.append(
            &f.room("a"),
            "alice",
            LogWrite::Message(Message::new("alice".into(), "late".into(), 1, None)),
            Box::new(|_, _| panic!("never runs")),
        );
        assert!(matches!(late, Err(StoreError::Stopped)), "{late:?}");
        assert!(smol::block_on(f.committer.barrier()).is_err());
    }
}
