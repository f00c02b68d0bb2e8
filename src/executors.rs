//! Two executors run by the same threads: established connections first, newcomers after.
//!
//! When thousands of clients connect at once (a restart's reconnect storm), their handshakes
//! queue in the same run queue as the frames of users who are already chatting, and with one
//! FIFO queue a live user's ping waits behind every handshake queued before it. Here a
//! connection's first phase (request head, upgrade, login) runs on the `setup` executor and
//! everything after the login on `live`; each thread takes up to [`LIVE_PER_SETUP`] live tasks
//! for every setup task. Live users thus wait behind at most a few logins, and a storm still gets
//! a fixed share of the CPU, so a busy server cannot starve new connections either.

use std::future::Future;
use std::sync::Arc;

use futures_lite::future;
use smol::Executor;

/// Live tasks run, when there are that many, for each setup task.
const LIVE_PER_SETUP: usize = 8;

/// Rounds between two polls of the future the thread is driving (the accept loop on the main
/// thread): often enough to accept promptly, rarely enough not to spend a syscall per task.
const ROUNDS_PER_YIELD: usize = 16;

/// The server's executors.
pub struct Executors {
    /// Established connections, rooms, timers and chores.
    pub live: Arc<Executor<'static>>,
    /// New connections, until they have logged in.
    pub setup: Arc<Executor<'static>>,
}

impl Executors {
    /// Two empty executors.
    pub fn new() -> Executors {
        Executors {
            live: Arc::new(Executor::new()),
            setup: Arc::new(Executor::new()),
        }
    }

    /// Runs both executors' tasks on this thread until `future` completes.
    pub async fn run<T>(&self, future: impl Future<Output = T>) -> T {
        let work = async {
            loop {
                let mut ran = false;
                for _ in 0..ROUNDS_PER_YIELD {
                    let mut round = false;
                    for _ in 0..LIVE_PER_SETUP {
                        if !self.live.try_tick() {
                            break;
                        }
                        round = true;
                    }
                    round |= self.setup.try_tick();
                    if !round {
                        break;
                    }
                    ran = true;
                }
                if ran {
                    future::yield_now().await;
                } else {
                    future::or(self.live.tick(), self.setup.tick()).await;
                }
            }
        };
        future::or(future, work).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn live_tasks_go_first_and_setup_tasks_still_run() {
        let executors = Executors::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..20 {
            let (order, done) = (order.clone(), done.clone());
            executors
                .setup
                .spawn(async move {
                    order.lock().unwrap().push(("setup", i));
                    done.fetch_add(1, Ordering::SeqCst);
                })
                .detach();
        }
        for i in 0..16 {
            let (order, done) = (order.clone(), done.clone());
            executors
                .live
                .spawn(async move {
                    order.lock().unwrap().push(("live", i));
                    done.fetch_add(1, Ordering::SeqCst);
                })
                .detach();
        }
        smol::block_on(executors.run(async {
            while done.load(Ordering::SeqCst) < 36 {
                future::yield_now().await;
            }
        }));
        let order = order.lock().unwrap();
        let first_setup = order.iter().position(|(kind, _)| *kind == "setup").unwrap();
        assert_eq!(
            first_setup, LIVE_PER_SETUP,
            "a setup task runs after every {LIVE_PER_SETUP} live ones: {order:?}"
        );
        assert_eq!(order.len(), 36, "every task ran");
    }
}
