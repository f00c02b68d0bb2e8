//! A node's view of the rooms' channels: one subscription connection, entries delivered into
//! the node's rooms in log order with no gap and no duplicate.
//!
//! Invariants:
//! - Each room's entries reach [`Rooms::deliver`] in id order. An entry from the channel is
//!   delivered only if it follows the last one delivered (`prev` matches); otherwise the
//!   missing entries are read from the room's log first (a gap: the subscription was down, or
//!   the room was loaded just then).
//! - A room being loaded ([`Feed::watch`] .. [`Feed::release`]) is subscribed before its record
//!   is read; what its channel carries meanwhile is ignored, and the release catches the room up
//!   from its log. An entry appended after that read comes through the channel, one before it is
//!   in what the read saw: nothing falls in between.
//! - When the subscription is lost, the feed reconnects by itself (backing off while Redis is
//!   down), subscribes again, and catches every loaded room up from its log before it delivers
//!   anything newer from the channel.
//! - Only the feed's task delivers, so deliveries never race with each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{future, StreamExt};
use redis::aio::{PubSubSink, PubSubStream};

use super::keys;
use super::log::{LogEntry, Published, RoomLogs};
use super::notices::Notice;
use super::presence::{self, PresenceChange, Typing};
use super::{ClusterError, Link};

/// Entries read from a log at a time while catching up.
const CATCH_UP_PAGE: usize = 256;

/// The highest id a catch-up reads to (ids never exceed 2^53 - 1).
const MAX_ID: u64 = (1 << 53) - 1;

/// Waits between attempts to reach Redis again.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// Pending requests from the node to the feed's task.
const CONTROL_QUEUE: usize = 1024;

/// Messages taken from the subscription at once when it holds several (delivered together).
const BURST: usize = 64;

/// Entries a room is missing before one that came through its channel.
struct Gap {
    room: String,
    room_no: u32,
    after: u64,
    upto: u64,
}

/// Where the feed delivers: the node's loaded rooms.
pub(crate) trait Rooms: Send + Sync + 'static {
    /// Delivers `entry` to room `name` (number `room_no`) if it is the next one there: with
    /// `prev` (from the channel), if the room's last delivered id is `prev`; without (read
    /// from the log, in order), if `entry` is newer than the last delivered. Returns
    /// [`Delivery::Missing`] when entries before it have not been delivered.
    fn deliver(&self, name: &str, room_no: u32, entry: LogEntry, prev: Option<u64>) -> Delivery;

    /// Every loaded room: its name, number and last delivered id.
    fn loaded(&self) -> Vec<(String, u32, u64)>;

    /// A node's user came online in room `name`, or went offline there.
    fn presence_changed(&self, name: &str, change: PresenceChange);

    /// Everyone online in room `name` on any node, read afresh (after a load or a reconnect).
    fn presence_reset(&self, name: &str, online: Vec<PresenceChange>);

    /// Someone on a node is typing in room `name`.
    fn typing(&self, name: &str, typing: Typing);

    /// A notice for a user's connections (on every node).
    fn notice(&self, notice: Notice);

    /// Runs `deliveries`, writing what they send to each connection together when it returns
    /// (a burst of entries costs one write per connection, not one per entry).
    fn together(&self, deliveries: &mut dyn FnMut());
}

/// What [`Rooms::deliver`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Delivered, or nothing to do (already delivered, room not loaded or since replaced).
    Done,
    /// Entries after `after` are missing before this one.
    Missing {
        /// The last id the room delivered.
        after: u64,
    },
}

enum Control {
    Watch {
        room: String,
        subscribed: async_channel::Sender<Result<(), String>>,
    },
    Release {
        room: String,
        room_no: u32,
        published: u64,
        done: async_channel::Sender<()>,
    },
    Unwatch {
        room: String,
    },
}

/// How far a watched room is.
enum Watch {
    /// Subscribed, its record being read: what arrives is ignored until [`Feed::release`].
    Loading,
    /// Loaded: entries are delivered.
    Live,
}

/// The node's handle on its feed task.
#[derive(Clone)]
pub(crate) struct Feed {
    control: async_channel::Sender<Control>,
}

impl Feed {
    /// Starts the feed's task on `executor`, delivering into `rooms`.
    pub(crate) fn start(
        link: Link,
        logs: RoomLogs,
        rooms: Arc<dyn Rooms>,
        executor: &smol::Executor<'static>,
    ) -> Feed {
        let (control, requests) = async_channel::bounded(CONTROL_QUEUE);
        let task = FeedTask {
            link,
            logs,
            rooms,
            requests,
            watches: HashMap::new(),
        };
        executor.spawn(task.run()).detach();
        Feed { control }
    }

    /// Subscribes to `room`'s channel; returns once Redis confirmed it. Read the room's record
    /// after this, then [`Feed::release`] it (or [`Feed::unwatch`] it if loading failed).
    pub(crate) async fn watch(&self, room: &str) -> Result<(), ClusterError> {
        let (subscribed, confirmation) = async_channel::bounded(1);
        let gone = || ClusterError::Corrupt("the feed task ended".into());
        self.control
            .send(Control::Watch {
                room: room.to_string(),
                subscribed,
            })
            .await
            .map_err(|_| gone())?;
        match confirmation.recv().await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClusterError::Unreachable(e)),
            Err(_) => Err(gone()),
        }
    }

    /// `room` is loaded as number `room_no` with entries up to `published` delivered: deliver
    /// the rest of its log and read who is online in it; from now on deliver everything.
    /// Returns once that is done (or the feed lost Redis meanwhile, and will catch up later).
    pub(crate) async fn release(&self, room: &str, room_no: u32, published: u64) {
        let (done, finished) = async_channel::bounded(1);
        let release = Control::Release {
            room: room.to_string(),
            room_no,
            published,
            done,
        };
        if self.control.send(release).await.is_ok() {
            let _ = finished.recv().await;
        }
    }

    /// Unsubscribes from `room` (unloaded, or its load failed).
    pub(crate) fn unwatch(&self, room: &str) {
        let _ = self.control.try_send(Control::Unwatch {
            room: room.to_string(),
        });
    }
}

struct FeedTask {
    link: Link,
    logs: RoomLogs,
    rooms: Arc<dyn Rooms>,
    requests: async_channel::Receiver<Control>,
    watches: HashMap<String, Watch>,
}

/// What woke the feed's task.
enum Event {
    Control(Control),
    Published(redis::Msg),
    /// The subscription connection ended.
    Lost,
    /// The node is shutting down (every [`Feed`] handle is gone).
    Stop,
}

impl FeedTask {
    async fn run(mut self) {
        let mut wait = RECONNECT_FIRST;
        loop {
            let (mut sink, mut stream) = match self.subscribe_all().await {
                Ok(connection) => connection,
                Err(e) => {
                    self.link.health().down(&e);
                    tracing::warn!(error = %e, "cluster feed: Redis unreachable, retrying");
                    if self.refuse_watches_for(wait).await {
                        return;
                    }
                    wait = (wait * 2).min(RECONNECT_MAX);
                    continue;
                }
            };
            if let Err(e) = self.catch_up_all().await {
                self.link.health().down(&e);
                tracing::warn!(error = %e, "cluster feed: catching up failed, reconnecting");
                if self.refuse_watches_for(wait).await {
                    return;
                }
                wait = (wait * 2).min(RECONNECT_MAX);
                continue;
            }
            wait = RECONNECT_FIRST;
            self.link.health().up();
            loop {
                let event = future::or(
                    async {
                        match self.requests.recv().await {
                            Ok(control) => Event::Control(control),
                            Err(_) => Event::Stop,
                        }
                    },
                    async {
                        match stream.next().await {
                            Some(msg) => Event::Published(msg),
                            None => Event::Lost,
                        }
                    },
                )
                .await;
                let result = match event {
                    Event::Control(control) => self.control(control, &mut sink).await,
                    Event::Published(msg) => self.published(msg, &mut stream).await,
                    Event::Lost => Err(ClusterError::Unreachable(
                        "the subscription connection closed".into(),
                    )),
                    Event::Stop => return,
                };
                if let Err(e) = result {
                    self.link.health().down(&e);
                    tracing::warn!(error = %e, "cluster feed: lost Redis, reconnecting");
                    break;
                }
            }
        }
    }

    /// A new subscription connection, subscribed to every watched room.
    async fn subscribe_all(&mut self) -> Result<(PubSubSink, PubSubStream), ClusterError> {
        let pubsub = self.link.client().get_async_pubsub().await?;
        let (mut sink, stream) = pubsub.split();
        sink.subscribe(keys::NOTICES).await?;
        for room in self.watches.keys() {
            sink.subscribe(keys::feed(room)).await?;
        }
        Ok((sink, stream))
    }

    /// While Redis is unreachable for `wait`: answers watch requests with an error (a join
    /// then fails at once rather than hanging). Returns true if the node is shutting down.
    async fn refuse_watches_for(&mut self, wait: Duration) -> bool {
        let deadline = smol::Timer::after(wait);
        let requests = self.requests.clone();
        let refuse = async {
            loop {
                match requests.recv().await {
                    Ok(Control::Watch { subscribed, .. }) => {
                        let _ = subscribed.try_send(Err("Redis is unreachable".into()));
                    }
                    Ok(Control::Release { room, done, .. }) => {
                        // Caught up with the others once Redis is back.
                        if let Some(watch) = self.watches.get_mut(&room) {
                            *watch = Watch::Live;
                        }
                        let _ = done.try_send(());
                    }
                    Ok(Control::Unwatch { room }) => {
                        self.watches.remove(&room);
                    }
                    Err(_) => return true,
                }
            }
        };
        future::or(refuse, async {
            deadline.await;
            false
        })
        .await
    }

    async fn control(
        &mut self,
        control: Control,
        sink: &mut PubSubSink,
    ) -> Result<(), ClusterError> {
        match control {
            Control::Watch { room, subscribed } => {
                let result = sink.subscribe(keys::feed(&room)).await;
                let answer = result.as_ref().map(drop).map_err(ToString::to_string);
                if result.is_ok() {
                    self.watches.entry(room).or_insert(Watch::Loading);
                }
                let _ = subscribed.try_send(answer);
                result?;
            }
            Control::Release {
                room,
                room_no,
                published,
                done,
            } => {
                let Some(watch) = self.watches.get_mut(&room) else {
                    return Ok(());
                };
                *watch = Watch::Live;
                let result = self.catch_up_room(&room, room_no, published).await;
                let _ = done.try_send(());
                result?;
            }
            Control::Unwatch { room } => {
                if self.watches.remove(&room).is_some() {
                    sink.unsubscribe(keys::feed(&room)).await?;
                }
            }
        }
        Ok(())
    }

    /// Handles `first` and what else the subscription holds already (at most [`BURST`]), in
    /// order, their deliveries written together; a gap is filled from the log before the
    /// messages after it.
    async fn published(
        &mut self,
        first: redis::Msg,
        stream: &mut PubSubStream,
    ) -> Result<(), ClusterError> {
        let mut burst = vec![first];
        let mut lost = false;
        while burst.len() < BURST {
            match future::poll_once(stream.next()).await {
                Some(Some(msg)) => burst.push(msg),
                Some(None) => {
                    lost = true;
                    break;
                }
                None => break,
            }
        }
        let mut pending = burst.iter();
        loop {
            let mut gap = None;
            self.rooms.together(&mut || {
                for msg in pending.by_ref() {
                    gap = self.handle(msg);
                    if gap.is_some() {
                        return;
                    }
                }
            });
            let Some(gap) = gap else {
                break;
            };
            self.catch_up(&gap.room, gap.room_no, gap.after, gap.upto)
                .await?;
        }
        if lost {
            return Err(ClusterError::Unreachable(
                "the subscription connection closed".into(),
            ));
        }
        Ok(())
    }

    /// Hands one message from the subscription to the node; an entry that does not follow the
    /// last one its room delivered is the end of a [`Gap`].
    fn handle(&self, msg: &redis::Msg) -> Option<Gap> {
        let channel = msg.get_channel_name();
        if channel == keys::NOTICES {
            match Notice::parse(msg.get_payload_bytes()) {
                Some(notice) => self.rooms.notice(notice),
                None => tracing::warn!("cluster feed: a notice chatd cannot read, ignored"),
            }
            return None;
        }
        let room = channel.strip_prefix(keys::feed("").as_str())?;
        if !matches!(self.watches.get(room), Some(Watch::Live)) {
            return None;
        }
        let payload = msg.get_payload_bytes();
        if let Some(published) = Published::parse(payload) {
            let (room_no, upto) = (published.room_no, published.entry.id);
            let delivered =
                self.rooms
                    .deliver(room, room_no, published.entry, Some(published.prev));
            if let Delivery::Missing { after } = delivered {
                return Some(Gap {
                    room: room.to_string(),
                    room_no,
                    after,
                    upto,
                });
            }
        } else if let Some(change) = PresenceChange::parse(payload) {
            self.rooms.presence_changed(room, change);
        } else if let Some(typing) = Typing::parse(payload) {
            self.rooms.typing(room, typing);
        } else {
            tracing::warn!(
                channel,
                "cluster feed: a payload chatd cannot read, ignored"
            );
        }
        None
    }

    /// Delivers room `room`'s entries after `after` up to `upto` from its log.
    async fn catch_up(
        &self,
        room: &str,
        room_no: u32,
        mut after: u64,
        upto: u64,
    ) -> Result<(), ClusterError> {
        loop {
            let (entries, more) = self
                .logs
                .entries_after(room_no, after, upto, CATCH_UP_PAGE)
                .await?;
            for entry in entries {
                after = entry.id;
                self.rooms.deliver(room, room_no, entry, None);
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// A room's whole catch-up: its log after `published`, and who is online in it.
    async fn catch_up_room(
        &self,
        room: &str,
        room_no: u32,
        published: u64,
    ) -> Result<(), ClusterError> {
        self.catch_up(room, room_no, published, MAX_ID).await?;
        let online = presence::read_room(&self.link, room).await?;
        self.rooms.presence_reset(room, online);
        Ok(())
    }

    /// After (re)connecting: every loaded room catches up.
    async fn catch_up_all(&self) -> Result<(), ClusterError> {
        for (room, room_no, published) in self.rooms.loaded() {
            if matches!(self.watches.get(&room), Some(Watch::Live)) {
                self.catch_up_room(&room, room_no, published).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::super::log::{Appended, Origin};
    use super::super::testing::Redis as TestRedis;
    use super::*;
    use crate::config::Durability;
    use crate::store::{Message, RoomRef};

    /// Rooms that record what they are given, by the rules [`Rooms::deliver`] states.
    #[derive(Default)]
    struct Recorder {
        rooms: Mutex<HashMap<String, Recorded>>,
    }

    struct Recorded {
        no: u32,
        published: u64,
        delivered: Vec<u64>,
        /// Pretend the next entry from the channel was lost on the way.
        drop_next: bool,
    }

    impl Rooms for Recorder {
        fn deliver(
            &self,
            name: &str,
            room_no: u32,
            entry: LogEntry,
            prev: Option<u64>,
        ) -> Delivery {
            let mut rooms = self.rooms.lock().unwrap();
            let Some(room) = rooms.get_mut(name).filter(|r| r.no == room_no) else {
                return Delivery::Done;
            };
            if entry.id <= room.published {
                return Delivery::Done;
            }
            if prev.is_some() && std::mem::take(&mut room.drop_next) {
                return Delivery::Done;
            }
            match prev {
                Some(prev) if prev != room.published => Delivery::Missing {
                    after: room.published,
                },
                _ => {
                    room.published = entry.id;
                    room.delivered.push(entry.id);
                    Delivery::Done
                }
            }
        }

        fn loaded(&self) -> Vec<(String, u32, u64)> {
            let rooms = self.rooms.lock().unwrap();
            rooms
                .iter()
                .map(|(name, r)| (name.clone(), r.no, r.published))
                .collect()
        }

        fn presence_changed(&self, _: &str, _: PresenceChange) {}

        fn presence_reset(&self, _: &str, _: Vec<PresenceChange>) {}

        fn typing(&self, _: &str, _: Typing) {}

        fn notice(&self, _: Notice) {}

        fn together(&self, deliveries: &mut dyn FnMut()) {
            deliveries();
        }
    }

    impl Recorder {
        fn delivered(&self, room: &str) -> Vec<u64> {
            let rooms = self.rooms.lock().unwrap();
            rooms
                .get(room)
                .map(|r| r.delivered.clone())
                .unwrap_or_default()
        }

        fn wait_for(&self, room: &str, count: usize) -> Vec<u64> {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let delivered = self.delivered(room);
                if delivered.len() >= count {
                    return delivered;
                }
                assert!(
                    Instant::now() < deadline,
                    "{room}: {} of {count} delivered",
                    delivered.len()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    struct Node {
        feed: Feed,
        logs: RoomLogs,
        rooms: Arc<Recorder>,
    }

    fn executor() -> &'static smol::Executor<'static> {
        static EXECUTOR: std::sync::OnceLock<&'static smol::Executor<'static>> =
            std::sync::OnceLock::new();
        EXECUTOR.get_or_init(|| {
            let executor: &'static smol::Executor<'static> =
                Box::leak(Box::new(smol::Executor::new()));
            for _ in 0..2 {
                std::thread::spawn(|| smol::block_on(executor.run(future::pending::<()>())));
            }
            executor
        })
    }

    fn node(redis: &TestRedis) -> Node {
        let logs = logs(redis);
        let rooms = Arc::new(Recorder::default());
        let feed = Feed::start(link(redis), logs.clone(), rooms.clone(), executor());
        Node { feed, logs, rooms }
    }

    fn link(redis: &TestRedis) -> Link {
        smol::block_on(Link::connect(&redis.url(), Durability::Strict)).expect("link")
    }

    fn logs(redis: &TestRedis) -> RoomLogs {
        RoomLogs::new(link(redis), 3600)
    }

    /// Loads `room` on `node` the way a hub does: watch, read the record, release. Returns the
    /// room and the last id its record had.
    fn load_at(node: &Node, room: &str) -> (RoomRef, u64) {
        smol::block_on(async {
            node.feed.watch(room).await.expect("subscribed");
            let record = node.logs.ensure_room(room, 1).await.expect("record");
            node.rooms.rooms.lock().unwrap().insert(
                room.to_string(),
                Recorded {
                    no: record.no,
                    published: record.last_id,
                    delivered: Vec::new(),
                    drop_next: false,
                },
            );
            node.feed.release(room, record.no, record.last_id).await;
            let loaded = RoomRef {
                name: Arc::from(room),
                no: record.no,
            };
            (loaded, record.last_id)
        })
    }

    fn load(node: &Node, room: &str) -> RoomRef {
        load_at(node, room).0
    }

    fn send(logs: &RoomLogs, room: &RoomRef, text: &str) -> u64 {
        let message = Message::new("alice".into(), text.into(), 1, None);
        let origin = Origin { node: 1, conn: 1 };
        match smol::block_on(logs.append(room, "alice", &message, origin)).expect("appended") {
            Appended::New { id, .. } => id,
            other => panic!("not stored: {other:?}"),
        }
    }

    fn sends_in_threads(writers: Vec<(RoomLogs, RoomRef)>, each: usize) -> Vec<u64> {
        let threads: Vec<_> = writers
            .into_iter()
            .map(|(logs, room)| {
                std::thread::spawn(move || {
                    (0..each)
                        .map(|i| send(&logs, &room, &format!("m{i}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ids: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("writer"))
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn entries_from_two_writers_arrive_in_id_order_exactly_once() {
        let redis = TestRedis::start();
        let node = node(&redis);
        let room = load(&node, "general");
        let writers = vec![(logs(&redis), room.clone()), (logs(&redis), room)];
        let sent = sends_in_threads(writers, 200);
        assert_eq!(node.rooms.wait_for("general", 400), sent);
    }

    #[test]
    fn a_room_loaded_while_others_write_misses_nothing_and_repeats_nothing() {
        let redis = TestRedis::start();
        let writer = logs(&redis);
        let room = smol::block_on(writer.ensure_room("busy", 1)).unwrap();
        let room = RoomRef {
            name: Arc::from("busy"),
            no: room.no,
        };
        let node = node(&redis);
        let sending = std::thread::spawn({
            let room = room.clone();
            let writer = writer.clone();
            move || sends_in_threads(vec![(writer.clone(), room.clone()), (writer, room)], 1000)
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while smol::block_on(writer.ensure_room("busy", 1))
            .unwrap()
            .last_id
            < 50
        {
            assert!(Instant::now() < deadline, "the writers did not start");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Load mid-stream: everything after what the record said, once, in order.
        let (loaded, last_id) = load_at(&node, "busy");
        assert_eq!(loaded.no, room.no);
        let sent = sending.join().unwrap();
        assert!(
            last_id > 0 && last_id < *sent.last().unwrap(),
            "loaded mid-stream (at {last_id} of {})",
            sent.len()
        );
        let after_load: Vec<u64> = sent.iter().copied().filter(|&id| id > last_id).collect();
        assert_eq!(node.rooms.wait_for("busy", after_load.len()), after_load);
    }

    #[test]
    fn an_entry_lost_on_the_channel_is_read_from_the_log_before_the_next() {
        let redis = TestRedis::start();
        let node = node(&redis);
        let room = load(&node, "gappy");
        let first = send(&node.logs, &room, "one");
        assert_eq!(node.rooms.wait_for("gappy", 1), [first]);
        node.rooms
            .rooms
            .lock()
            .unwrap()
            .get_mut("gappy")
            .unwrap()
            .drop_next = true;
        let lost = send(&node.logs, &room, "lost on the way");
        let next = send(&node.logs, &room, "three");
        assert_eq!(node.rooms.wait_for("gappy", 3), [first, lost, next]);
    }

    #[test]
    fn after_redis_is_killed_and_restarted_the_feed_resubscribes_and_catches_up() {
        let mut redis = TestRedis::start();
        let node = node(&redis);
        let room = load(&node, "phoenix");
        let before: Vec<u64> = (0..3)
            .map(|i| send(&node.logs, &room, &format!("b{i}")))
            .collect();
        assert_eq!(node.rooms.wait_for("phoenix", 3), before);
        redis.kill_and_restart();
        // The commands connection died with Redis; a writer on a fresh link appends while the
        // feed is still reconnecting, and after.
        let writer = logs(&redis);
        let after: Vec<u64> = (0..5)
            .map(|i| send(&writer, &room, &format!("a{i}")))
            .collect();
        assert!(
            after[0] > before[2],
            "ids go on after the restart: {after:?}"
        );
        let delivered = node.rooms.wait_for("phoenix", 8);
        assert_eq!(delivered, [before, after].concat());
        // Every acknowledged entry survived SIGKILL.
        let (entries, _) = smol::block_on(writer.entries_after(room.no, 0, MAX_ID, 100)).unwrap();
        assert_eq!(entries.len(), 8);
    }
}
