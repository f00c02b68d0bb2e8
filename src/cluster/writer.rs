//! A node's message appends, pipelined: every connection's sends go through one queue, and a
//! single task sends what has gathered as one Redis pipeline and waits for its replies before
//! sending the next. With `appendfsync always` Redis fsyncs once per pass over its clients'
//! input, so the appends of one pipeline share their fsyncs: the node's group commit.
//!
//! Why it is needed: a connection waited for each append's reply before reading its next
//! frame, so a client with eight sends in flight had one in Redis at a time, and a busy node
//! paid a round trip and an fsync per message.
//!
//! Invariants:
//! - Appends run in Redis in the order they were queued (one pipeline at a time, its commands in
//!   queue order), so a connection's sends are accepted in the order it sent them.
//! - Each queued append's continuation runs exactly once, in queue order, with the script's
//!   reply or the error that kept it from one. A pipeline whose link failed may have run in
//!   Redis: its appends are answered as "may still be stored" by the caller (only a resend with
//!   the same cid can tell).
//! - The queue is bounded ([`QUEUE`]): a full queue makes senders wait, nothing is dropped.

use redis::{ErrorKind, ScriptInvocation, ServerErrorKind, Value};
use smol::channel::{self, Receiver, Sender};

use super::log::{append_message_script, appended, Appended};
use super::{ClusterError, Link};

/// Appends queued on a node at most (beyond it, senders wait).
const QUEUE: usize = 4096;

/// Appends sent in one pipeline at most.
const BATCH: usize = 256;

/// What runs once an append's reply (or the error that kept it from one) is known.
pub(crate) type AppendContinuation = Box<dyn FnOnce(Result<Appended, ClusterError>) + Send>;

struct Queued {
    script: ScriptInvocation<'static>,
    then: AppendContinuation,
}

/// The queue of a node's message appends (see the module doc).
pub(crate) struct LogWriter {
    queue: Sender<Queued>,
}

impl LogWriter {
    /// Starts the writer's task on `executor`; it ends when the writer is dropped.
    pub(crate) fn start(link: Link, executor: &smol::Executor<'static>) -> LogWriter {
        let (queue, queued) = channel::bounded(QUEUE);
        executor.spawn(write(link, queued)).detach();
        LogWriter { queue }
    }

    /// Queues the append `script` (waiting while the queue is full); `then` runs with its
    /// outcome. Fails only if the writer has stopped.
    pub(crate) async fn append(
        &self,
        script: ScriptInvocation<'static>,
        then: AppendContinuation,
    ) -> Result<(), ClusterError> {
        self.queue
            .send(Queued { script, then })
            .await
            .map_err(|_| ClusterError::Unreachable("the node's log writer has stopped".into()))
    }
}

/// The writer's task: one pipeline at a time, of what has gathered meanwhile.
async fn write(link: Link, queued: Receiver<Queued>) {
    while let Ok(first) = queued.recv().await {
        let (mut scripts, mut thens) = (vec![first.script], vec![first.then]);
        while scripts.len() < BATCH {
            match queued.try_recv() {
                Ok(next) => {
                    scripts.push(next.script);
                    thens.push(next.then);
                }
                Err(_) => break,
            }
        }
        let outcomes = run(&link, &scripts).await;
        for (then, outcome) in thens.into_iter().zip(outcomes) {
            then(outcome);
        }
    }
}

/// Runs `scripts` as one pipeline; one outcome per append, in order.
async fn run(
    link: &Link,
    scripts: &[ScriptInvocation<'static>],
) -> Vec<Result<Appended, ClusterError>> {
    let failed = |e: redis::RedisError| scripts.iter().map(|_| Err(e.clone().into())).collect();
    let mut replies = match pipeline(link, scripts).await {
        Ok(replies) => replies,
        Err(e) => return failed(e),
    };
    // Redis restarted since the script was last sent: it ran none of them.
    if replies
        .iter()
        .any(|r| matches!(r, Err(e) if is_no_script(e)))
    {
        let loaded = append_message_script()
            .prepare_invoke()
            .load_async(&mut link.commands())
            .await;
        replies = match loaded {
            Ok(_) => match pipeline(link, scripts).await {
                Ok(replies) => replies,
                Err(e) => return failed(e),
            },
            Err(e) => return failed(e),
        };
    }
    replies
        .into_iter()
        .map(|reply| {
            let reply: Vec<String> = redis::from_redis_value(reply?)
                .map_err(|e| ClusterError::Corrupt(format!("append reply: {e}")))?;
            appended(reply)
        })
        .collect()
}

/// Sends `scripts` as one pipeline; per append, Redis's reply or its error.
async fn pipeline(
    link: &Link,
    scripts: &[ScriptInvocation<'static>],
) -> Result<Vec<redis::RedisResult<Value>>, redis::RedisError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for script in scripts {
        pipe.invoke_script(script);
    }
    pipe.query_async(&mut link.commands()).await
}

fn is_no_script(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::super::log::{Origin, RoomLogs};
    use super::super::testing::Redis as TestRedis;
    use super::*;
    use crate::config::Durability;
    use crate::store::{Message, RoomRef};

    /// Queues `texts` as one connection's sends to `room`; returns their outcomes in the order
    /// the continuations ran.
    fn send_all(
        writer: &LogWriter,
        logs: &RoomLogs,
        room: &RoomRef,
        texts: &[String],
    ) -> Vec<(String, Result<Appended, String>)> {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let (done, finished) = channel::bounded(texts.len());
        smol::block_on(async {
            for text in texts {
                let message = Message::new("alice".into(), text.clone(), 1, Some(text.clone()));
                let origin = Origin { node: 1, conn: 1 };
                let script = logs.message_append(room, "alice", &message, origin);
                let (outcomes, done, text) = (outcomes.clone(), done.clone(), text.clone());
                let then: AppendContinuation = Box::new(move |outcome| {
                    let outcome = outcome.map_err(|e| e.to_string());
                    outcomes.lock().unwrap().push((text, outcome));
                    let _ = done.try_send(());
                });
                writer.append(script, then).await.expect("queued");
            }
            for _ in texts {
                finished.recv().await.expect("every continuation runs");
            }
        });
        let outcomes = outcomes.lock().unwrap().clone();
        outcomes
    }

    fn new_ids(outcomes: &[(String, Result<Appended, String>)]) -> Vec<u64> {
        outcomes
            .iter()
            .map(|(text, outcome)| match outcome {
                Ok(Appended::New { id, .. }) => *id,
                other => panic!("{text}: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn pipelined_sends_are_stored_and_answered_in_queue_order_also_after_redis_forgot_the_script() {
        let redis = TestRedis::start();
        let executor: &'static smol::Executor<'static> = Box::leak(Box::new(smol::Executor::new()));
        let _driver =
            std::thread::spawn(|| smol::block_on(executor.run(smol::future::pending::<()>())));
        let link = smol::block_on(Link::connect(&redis.url(), Durability::Strict)).expect("link");
        let logs = RoomLogs::new(link.clone(), 3600);
        let writer = LogWriter::start(link.clone(), executor);
        let state = smol::block_on(logs.ensure_room("r", 0)).expect("room");
        let room = RoomRef {
            name: Arc::from("r"),
            no: state.no,
        };
        // More than one pipeline's worth.
        let texts: Vec<String> = (0..BATCH * 2 + 10).map(|i| format!("m{i}")).collect();
        let outcomes = send_all(&writer, &logs, &room, &texts);
        let answered: Vec<&str> = outcomes.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(answered, texts, "continuations run in queue order");
        let ids = new_ids(&outcomes);
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids follow the queue order"
        );
        let stored =
            smol::block_on(logs.messages_after(room.no, 0, u64::MAX >> 11, 10_000)).expect("log");
        let stored: Vec<&str> = stored
            .messages
            .iter()
            .map(|m| m.message.text.as_str())
            .collect();
        assert_eq!(stored, texts);

        // As after a Redis restart: the script cache is empty.
        let () = smol::block_on(
            redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut link.commands()),
        )
        .expect("flush scripts");
        let more: Vec<String> = (0..5).map(|i| format!("after{i}")).collect();
        let outcomes = send_all(&writer, &logs, &room, &more);
        assert!(new_ids(&outcomes)[0] > ids[ids.len() - 1]);
        // A repeated cid gets the original, in its place in the queue.
        let outcomes = send_all(&writer, &logs, &room, &texts[..2]);
        for ((_, outcome), id) in outcomes.iter().zip(&ids) {
            match outcome {
                Ok(Appended::Duplicate(original)) => assert_eq!(original.id, *id),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn with_redis_gone_every_queued_send_is_answered_with_the_error() {
        let mut redis = TestRedis::start();
        let executor: &'static smol::Executor<'static> = Box::leak(Box::new(smol::Executor::new()));
        let _driver =
            std::thread::spawn(|| smol::block_on(executor.run(smol::future::pending::<()>())));
        let link = smol::block_on(Link::connect(&redis.url(), Durability::Strict)).expect("link");
        let logs = RoomLogs::new(link.clone(), 3600);
        let writer = LogWriter::start(link, executor);
        let state = smol::block_on(logs.ensure_room("r", 0)).expect("room");
        let room = RoomRef {
            name: Arc::from("r"),
            no: state.no,
        };
        redis.kill();
        let texts: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        let outcomes = send_all(&writer, &logs, &room, &texts);
        assert_eq!(outcomes.len(), texts.len());
        assert!(outcomes.iter().all(|(_, o)| o.is_err()), "{outcomes:?}");
    }
}
