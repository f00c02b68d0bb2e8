//! Group commit: many writers, one fsync, then every writer's continuation in write order.
//!
//! A synced write costs ~130 µs on these disks; flushing once per message would cap a server at a
//! few thousand messages a second. Instead, writers queue a continuation after writing to sled;
//! one thread takes everything queued, flushes once, and runs the continuations in queue order.
//! The continuations are where acks and broadcasts happen, so nothing is announced before it is
//! on disk, and because a room's writes are queued under the room's lock, a room's messages are
//! announced in id order.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Store, StoreError};

/// What a continuation learns: whether the flush that covered its write succeeded.
pub type FlushResult = Result<(), Arc<StoreError>>;

/// Work to do once the writes queued before it are durable.
pub type Continuation = Box<dyn FnOnce(FlushResult) + Send>;

/// Called after every flush with its duration and whether it succeeded (for metrics and health).
pub type FlushObserver = Box<dyn Fn(Duration, bool) + Send + Sync>;

#[derive(Default)]
struct Queue {
    pending: Vec<Continuation>,
    stopping: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// The commit thread. Dropping it without [`Committer::shutdown`] leaves the thread running.
pub struct Committer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Committer {
    /// Starts the commit thread. With `flush` false (relaxed durability) continuations run
    /// without waiting for the disk; sled's background flush then bounds the loss window.
    pub fn start(store: Arc<Store>, flush: bool, observe: FlushObserver) -> Committer {
        Committer::with_flush(Box::new(move || store.flush()), flush, observe)
    }

    /// A committer around any flush function (the store's, or a failing one in tests).
    fn with_flush(store_flush: FlushFn, flush: bool, observe: FlushObserver) -> Committer {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("chatd-commit".into())
            .spawn(move || run(&worker, &*store_flush, flush, &observe))
            .expect("spawning the commit thread");
        Committer {
            shared,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Runs `continuation` after the next flush that covers every write made before this call.
    pub fn after_flush(&self, continuation: Continuation) {
        let mut queue = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if queue.stopping {
            drop(queue);
            // Shutdown already flushed for the last time: say so rather than wait forever.
            continuation(Err(Arc::new(StoreError::Sled(sled::Error::ReportableBug(
                "write after the committer stopped".into(),
            )))));
            return;
        }
        queue.pending.push(continuation);
        drop(queue);
        self.shared.wake.notify_one();
    }

    /// Waits until every write made before this call is durable.
    pub async fn barrier(&self) -> FlushResult {
        let (tx, rx) = async_channel::bounded(1);
        self.after_flush(Box::new(move |result| {
            let _ = tx.try_send(result);
        }));
        rx.recv().await.unwrap_or(Ok(()))
    }

    /// Runs what is queued after a last flush, then stops the thread.
    pub fn shutdown(&self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stopping = true;
        self.shared.wake.notify_one();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

type FlushFn = Box<dyn Fn() -> Result<(), StoreError> + Send>;

fn run(
    shared: &Shared,
    store_flush: &dyn Fn() -> Result<(), StoreError>,
    flush: bool,
    observe: &FlushObserver,
) {
    loop {
        let (batch, stopping) = {
            let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            while queue.pending.is_empty() && !queue.stopping {
                queue = shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            (std::mem::take(&mut queue.pending), queue.stopping)
        };
        let result = if flush || stopping {
            let started = Instant::now();
            let result = store_flush().map_err(Arc::new);
            observe(started.elapsed(), result.is_ok());
            if let Err(e) = &result {
                tracing::error!(error = %e, "flushing the database failed; writes are not acknowledged");
            }
            result
        } else {
            Ok(())
        };
        // Corked: every frame this batch sends to one socket goes out in one write.
        crate::outbox::corked(|| {
            for continuation in batch {
                // One faulty continuation must not stop every later ack: the thread is shared.
                let run = std::panic::AssertUnwindSafe(|| continuation(result.clone()));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!("a commit continuation panicked; continuing with the next");
                }
            }
        });
        if stopping {
            let queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            if queue.pending.is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    #[test]
    fn continuations_run_in_queue_order_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), &StoreOptions::default()).unwrap());
        let flushes = Arc::new(Mutex::new(0u32));
        let counter = flushes.clone();
        let committer = Committer::start(
            store,
            true,
            Box::new(move |_, ok| {
                assert!(ok);
                *counter.lock().unwrap() += 1
            }),
        );
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let order = order.clone();
            committer.after_flush(Box::new(move |r| {
                assert!(r.is_ok());
                order.lock().unwrap().push(i);
            }));
        }
        committer.after_flush(Box::new(|_| panic!("a faulty continuation")));
        smol::block_on(committer.barrier()).unwrap();
        assert_eq!(*order.lock().unwrap(), (0..100).collect::<Vec<_>>());
        let n = *flushes.lock().unwrap();
        assert!((1..=101).contains(&n));
        committer.shutdown();
    }

    #[test]
    fn a_failed_flush_reaches_every_waiter_and_the_observer() {
        let failures = Arc::new(Mutex::new(0u32));
        let counter = failures.clone();
        let committer = Committer::with_flush(
            Box::new(|| {
                Err(StoreError::Sled(sled::Error::Unsupported(
                    "disk on fire".into(),
                )))
            }),
            true,
            Box::new(move |_, ok| {
                if !ok {
                    *counter.lock().unwrap() += 1;
                }
            }),
        );
        let failed = Arc::new(Mutex::new(0u32));
        for _ in 0..10 {
            let failed = failed.clone();
            committer.after_flush(Box::new(move |r| {
                if r.is_err() {
                    *failed.lock().unwrap() += 1;
                }
            }));
        }
        assert!(smol::block_on(committer.barrier()).is_err());
        assert_eq!(
            *failed.lock().unwrap(),
            10,
            "no write is acknowledged as durable"
        );
        assert!(*failures.lock().unwrap() >= 1);
        committer.shutdown();
    }
}
