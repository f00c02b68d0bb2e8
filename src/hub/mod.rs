//! Rooms, presence and fan-out: who is in which room, and getting each message to each member
//! in id order exactly once.
//!
//! Every room has one lock. Three things happen under it, and that is what makes the protocol's
//! ordering promises hold:
//! - `send`: check the cid, take the next id and queue the message with its announcement in the
//!   committer's message log (memory work and a read, no disk write). Ids therefore reach the
//!   committer in id order per room.
//! - announcement (on the delivery thread, after the batch holding the message was written and
//!   flushed): raise the room's `published` id and push the frame to every member's outbox.
//! - `join`: add the member, queue `joined` and a [`Replay`] of the messages up to `published`,
//!   which the member's writer reads from sled a page at a time, outside the lock.
//!
//! Conversations (protocol 1.1: edits and deletions, read markers, the list, notifications,
//! typing) build on the same paths and live in [`conversations`]: an edit or deletion is an
//! append like a message, under the same lock, so it takes its place in the room's id order.
//!
//! Rooms nobody is in and nothing happened in for `--room-unload-after` are dropped from
//! memory ([`Hub::unload_idle_rooms`]); their data stays on disk and the next join loads them.
//! An unloaded room object is marked so that a join or append that raced with the unloading
//! finds out under the room lock and starts over with a freshly loaded one: there is never more
//! than one live object per room. Creating rooms is limited per account ([`RoomLimits`]), so
//! one account cannot fill memory and disk with empty rooms.
//!
//! A joining connection thus gets every message up to `published` from the replay and every
//! later one live, with no gap and no duplicate, and never sees a message before it is durable.
//! Nothing under a room lock waits on a client: outboxes never block, and sections that fan out
//! run [`corked`], so the socket writes themselves happen after the lock is released.

mod cluster;
mod conversations;

pub(crate) use cluster::WRITE_FAILED;
use conversations::Notices;
pub use conversations::SYSTEM_AUTHOR;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster::{Cluster, ClusterError};
use crate::heartbeat::mono_ms;
use crate::log_reader::{LogReader, ReadError};
use crate::metrics::Metrics;
use crate::outbox::{corked, CloseRequest, Outbox};
use crate::protocol::{
    encode, Encoded, ErrorCode, HistoryPage, MessageEvent, Rejection, ServerFrame,
};
use crate::replay::Replay;
use crate::store::commit::Committer;
use crate::store::{
    Appended, Change, Event, LogWrite, Message, PresenceSnapshot, RoomPresence, RoomRef, Store,
    StoreError,
};
use crate::sync::lock;

/// Messages a `history` request reads from the database at a time.
const HISTORY_READ: usize = 8;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `message` event for a stored message (the protocol knows nothing of the store's types).
pub(crate) fn message_event<'a>(room: &'a str, id: u64, message: &'a Message) -> MessageEvent<'a> {
    MessageEvent::new(
        room,
        id,
        &message.user,
        &message.text,
        message.ts,
        message.cid.as_deref(),
    )
    .edited(message.edited_ts)
}

/// One authenticated connection, as the hub knows it: a shared handle, because the connection,
/// the hub's registry and every room it joined each hold it (one allocation per connection).
#[derive(Clone)]
pub struct Member(Arc<MemberInfo>);

impl std::ops::Deref for Member {
    type Target = MemberInfo;

    fn deref(&self) -> &MemberInfo {
        &self.0
    }
}

impl From<MemberInfo> for Member {
    fn from(info: MemberInfo) -> Member {
        Member(Arc::new(info))
    }
}

/// What the hub knows of an authenticated connection.
pub struct MemberInfo {
    /// Connection id (unique for the server's life).
    pub conn: u64,
    /// Lower-cased user name.
    pub user_key: Arc<str>,
    /// User name as displayed.
    pub name: Arc<str>,
    /// Where the connection comes from.
    pub peer: SocketAddr,
    /// When it authenticated, ms since the Unix epoch.
    pub since_ms: u64,
    /// When the account was created, ms since the Unix epoch: messages older than that were
    /// written by an earlier account of the same name.
    pub account_created_ms: u64,
    /// Its outbound queue.
    pub outbox: Arc<Outbox>,
}

struct Presence {
    name: Arc<str>,
    /// Connections of this user that have joined the room.
    conns: u32,
    /// Set while the user has no connection but is inside the grace period; the number tells
    /// one grace period from the next.
    grace: Option<u64>,
}

struct RoomState {
    /// Highest id announced; replays read up to it.
    published: u64,
    /// Each joined connection's outbox beside its member record: fan-out reaches the socket
    /// without a detour through the record.
    members: HashMap<u64, (Arc<Outbox>, Member)>,
    presence: BTreeMap<Arc<str>, Presence>,
    grace_epoch: u64,
    /// Cluster mode: users online here through other nodes, by user key (see `cluster`).
    remote: BTreeMap<Arc<str>, cluster::RemotePresence>,
    /// Cluster mode: the connections that left most recently, each with the highest id it had
    /// been delivered (at most [`DEPARTED_KEPT`]). A notification comes from another node on
    /// its own channel, possibly after a connection that saw the message left the room; it
    /// must not reach that connection as news.
    departed: VecDeque<(u64, u64)>,
    /// Cluster mode: connections that joined with a `since` beyond `published` (they saw those
    /// messages through another node, which delivered them first), each with its `since`:
    /// entries up to it are not delivered to them again. Empty unless such a join happened.
    ahead: Vec<(u64, u64)>,
}

/// How many recent departures a room remembers in cluster mode (see `RoomState::departed`):
/// notifications arrive within milliseconds of their message.
const DEPARTED_KEPT: usize = 64;

/// A room loaded in memory.
pub struct Room {
    name: String,
    no: u32,
    /// How the message log addresses the room (name and number, shared by every append).
    log_ref: RoomRef,
    state: Mutex<RoomState>,
    /// Set when an admin deleted the room: connections holding this object must drop it, and
    /// a join loads a fresh one.
    retired: AtomicBool,
    /// Set (under the room lock) when the room was unloaded for idleness: a join or append
    /// that got this object just before must load the room again.
    unloaded: AtomicBool,
    /// When someone last joined, left or posted ([`mono_ms`]).
    last_active_ms: AtomicU64,
}

/// Errors from room operations.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The room was deleted while the connection held it.
    #[error("the room was deleted")]
    RoomGone,
    /// The room was unloaded for idleness just before: load it again and retry.
    #[error("the room was unloaded")]
    Unloaded,
    /// The account created its allowance of rooms for now.
    #[error("at most {per_hour} new rooms per hour per account")]
    TooManyRooms {
        /// The limit.
        per_hour: u32,
    },
    /// No such message (or not one this caller may see).
    #[error("no such message")]
    NotFound,
    /// Only the message's author may change it.
    #[error("only its author may change a message")]
    Forbidden,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cluster's Redis failed or is unreachable.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl Room {
    /// Whether an admin deleted the room since this object was loaded.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The room's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn touch(&self) {
        self.last_active_ms.store(mono_ms(), Ordering::Relaxed);
    }

    /// Under the room lock: why this object may not take a join or message, if it may not.
    fn check_live(&self) -> Result<(), HubError> {
        if self.is_retired() {
            Err(HubError::RoomGone)
        } else if self.unloaded.load(Ordering::Acquire) {
            Err(HubError::Unloaded)
        } else {
            Ok(())
        }
    }

    fn member_names(state: &RoomState) -> Vec<&str> {
        let local = state.presence.values().map(|p| &*p.name);
        let remote = (state.remote.iter())
            .filter(|(key, _)| !state.presence.contains_key(*key))
            .map(|(_, r)| &*r.name);
        let mut names: Vec<&str> = local.chain(remote).collect();
        names.sort_unstable_by_key(|n| n.to_ascii_lowercase());
        names
    }

    /// Pushes `frame` to every member except connections of `except_user`.
    fn fan_out(
        &self,
        state: &RoomState,
        frame: &Encoded,
        except_user: Option<&str>,
        metrics: &Metrics,
    ) {
        self.fan_out_except(state, frame, metrics, |_, member| {
            except_user.is_some_and(|user| user == &*member.user_key)
        });
    }

    /// Pushes `frame` to every member for which `skip(conn, member)` is false.
    fn fan_out_except(
        &self,
        state: &RoomState,
        frame: &Encoded,
        metrics: &Metrics,
        skip: impl Fn(u64, &Member) -> bool,
    ) {
        for (&conn, (outbox, member)) in &state.members {
            if skip(conn, member) {
                continue;
            }
            if outbox.broadcast(frame).is_err() {
                metrics.slow_consumer_closes.inc();
                tracing::info!(peer = %member.peer, user = %member.name, "closing slow consumer (4008)");
            }
        }
    }
}

/// Limits on rooms: how fast an account may create them, when idle ones leave memory.
#[derive(Debug, Clone)]
pub struct RoomLimits {
    /// New rooms an account may create per hour (also the burst).
    pub creations_per_hour: u32,
    /// A room with nobody in it and no activity for this long is unloaded from memory.
    pub unload_after: Duration,
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits {
            creations_per_hour: 60,
            unload_after: Duration::from_secs(600),
        }
    }
}

/// Accounts whose room creations are tracked at once. Full allowances are forgotten first;
/// beyond this many accounts still spending theirs, creations wait for some to refill.
const MAX_TRACKED_CREATORS: usize = 65_536;

/// An account's room-creation allowance: a token bucket of `creations_per_hour`.
struct Allowance {
    tokens: f64,
    updated_ms: u64,
}

/// Every authenticated connection, by id and by user: notifications and read markers reach all
/// of a user's connections without a scan of everyone's.
#[derive(Default)]
struct Connections {
    by_conn: HashMap<u64, Member>,
    by_user: HashMap<Arc<str>, Vec<Member>>,
}

impl Connections {
    fn of_user(&self, user_key: &str) -> &[Member] {
        self.by_user.get(user_key).map_or(&[], Vec::as_slice)
    }
}

/// Who is connected and which rooms exist in memory.
pub struct Hub {
    store: Arc<Store>,
    committer: Arc<Committer>,
    /// Where replays and history read: the committer's store, or the cluster's logs.
    log: LogReader,
    /// In cluster mode, the node: rooms are loaded from and appended to Redis, and the feed
    /// delivers their messages.
    cluster: Option<Arc<Cluster>>,
    metrics: Arc<Metrics>,
    executor: Arc<smol::Executor<'static>>,
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    connections: Arc<Mutex<Connections>>,
    presence_grace: Duration,
    replay_limit: usize,
    room_limits: RoomLimits,
    /// Room-creation allowances by user key, bounded by [`MAX_TRACKED_CREATORS`].
    creations: Mutex<HashMap<Arc<str>, Allowance>>,
    /// Permits to build a conversation list (see [`Hub::conversations_off_thread`]).
    list_builds: async_lock::Semaphore,
    /// Shared by every announcement: one reference count per message, not three.
    notices: Arc<Notices>,
}

impl Hub {
    /// A hub over `store`, announcing through `committer`; grace timers run on `executor`.
    pub fn new(
        store: Arc<Store>,
        committer: Arc<Committer>,
        metrics: Arc<Metrics>,
        executor: Arc<smol::Executor<'static>>,
        presence_grace: Duration,
        replay_limit: usize,
    ) -> Hub {
        let connections = Arc::new(Mutex::new(Connections::default()));
        Hub {
            notices: Hub::new_notices(metrics.clone(), store.clone(), connections.clone()),
            store,
            log: LogReader::Local(committer.clone()),
            cluster: None,
            committer,
            metrics,
            executor,
            rooms: Mutex::new(HashMap::new()),
            connections,
            presence_grace,
            replay_limit,
            room_limits: RoomLimits::default(),
            creations: Mutex::new(HashMap::new()),
            list_builds: async_lock::Semaphore::new(conversations::LIST_BUILDS),
        }
    }

    /// The same hub as one node of `cluster`: rooms live in its Redis. Start the cluster's feed
    /// with the hub once it is shared.
    pub(crate) fn with_cluster(mut self, cluster: Arc<Cluster>) -> Hub {
        self.log = LogReader::Cluster(cluster.logs.clone());
        self.cluster = Some(cluster);
        self
    }

    /// The node, in cluster mode.
    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The same hub with these room limits instead of the defaults.
    pub fn with_room_limits(mut self, room_limits: RoomLimits) -> Hub {
        self.room_limits = room_limits;
        self
    }

    /// The room named `name` for a member's join: loaded, or read from the store, or created
    /// there if `creator`'s allowance permits.
    pub fn room_for_join(&self, name: &str, creator: &str) -> Result<Arc<Room>, HubError> {
        let mut rooms = lock(&self.rooms);
        if let Some(room) = rooms.get(name) {
            return Ok(room.clone());
        }
        if self.cluster.is_some() {
            // Loaded by `load_cluster_room` first; unloaded since: the caller loads it again.
            return Err(HubError::Unloaded);
        }
        let record = match self.store.room(name)? {
            Some(record) => record,
            None => {
                self.spend_creation(creator)?;
                self.store.ensure_room(name, now_ms())?
            }
        };
        Ok(self.load(&mut rooms, record))
    }

    /// Takes one room creation from `creator`'s allowance.
    fn spend_creation(&self, creator: &str) -> Result<(), HubError> {
        let per_hour = self.room_limits.creations_per_hour;
        let refused = HubError::TooManyRooms { per_hour };
        let burst = f64::from(per_hour);
        let now = mono_ms();
        let refill = |allowance: &Allowance| {
            let hours = now.saturating_sub(allowance.updated_ms) as f64 / 3_600_000.0;
            (allowance.tokens + hours * burst).min(burst)
        };
        let mut creations = lock(&self.creations);
        if creations.len() >= MAX_TRACKED_CREATORS && !creations.contains_key(creator) {
            creations.retain(|_, allowance| refill(allowance) < burst);
            if creations.len() >= MAX_TRACKED_CREATORS {
                return Err(refused);
            }
        }
        let allowance = creations.entry(Arc::from(creator)).or_insert(Allowance {
            tokens: burst,
            updated_ms: now,
        });
        allowance.tokens = refill(allowance);
        allowance.updated_ms = now;
        if allowance.tokens < 1.0 {
            return Err(refused);
        }
        allowance.tokens -= 1.0;
        Ok(())
    }

    /// Unloads rooms nobody is in (nor within a presence grace period) and nothing happened in
    /// for `unload_after`; forgets room-creation allowances that are full again. Returns how
    /// many rooms were unloaded.
    pub fn unload_idle_rooms(&self) -> usize {
        let idle_since = mono_ms().saturating_sub(self.room_limits.unload_after.as_millis() as u64);
        let unloaded = {
            let mut rooms = lock(&self.rooms);
            let before = rooms.len();
            rooms.retain(|_, room| {
                let state = lock(&room.state);
                let idle = state.members.is_empty()
                    && state.presence.is_empty()
                    && room.last_active_ms.load(Ordering::Relaxed) <= idle_since;
                if idle {
                    room.unloaded.store(true, Ordering::Release);
                    self.stop_watching(&room.name);
                }
                !idle
            });
            let unloaded = before - rooms.len();
            self.metrics.rooms_loaded.set(rooms.len() as i64);
            if unloaded > 0 && rooms.capacity() > 2 * rooms.len() + 64 {
                // A flood's worth of slots would otherwise stay allocated.
                rooms.shrink_to_fit();
            }
            unloaded
        };
        let now = mono_ms();
        let burst = f64::from(self.room_limits.creations_per_hour);
        let mut creations = lock(&self.creations);
        creations.retain(|_, a| {
            a.tokens + now.saturating_sub(a.updated_ms) as f64 / 3_600_000.0 * burst < burst
        });
        creations.shrink_to_fit();
        unloaded
    }

    /// The committer behind the hub.
    pub fn committer(&self) -> &Arc<Committer> {
        &self.committer
    }

    /// The room named `name`, loaded from the store or created there.
    pub fn room(&self, name: &str) -> Result<Arc<Room>, StoreError> {
        let mut rooms = lock(&self.rooms);
        if let Some(room) = rooms.get(name) {
            return Ok(room.clone());
        }
        // Creating the room may write; never under this lock to a disk that does not answer.
        self.committer.gate().admit_flush_waiter()?;
        let record = self.store.ensure_room(name, now_ms())?;
        Ok(self.load(&mut rooms, record))
    }

    /// The existing room named `name`, loaded if need be; `None` if there is no such room.
    fn existing_room(&self, name: &str) -> Result<Option<Arc<Room>>, StoreError> {
        let mut rooms = lock(&self.rooms);
        if let Some(room) = rooms.get(name) {
            return Ok(Some(room.clone()));
        }
        Ok(self
            .store
            .room(name)?
            .map(|record| self.load(&mut rooms, record)))
    }

    fn load(
        &self,
        rooms: &mut HashMap<String, Arc<Room>>,
        record: crate::store::Room,
    ) -> Arc<Room> {
        let room = Arc::new(Room {
            log_ref: RoomRef {
                name: Arc::from(record.name.as_str()),
                no: record.no,
            },
            name: record.name,
            no: record.no,
            state: Mutex::new(RoomState {
                published: record.last_id,
                members: HashMap::new(),
                presence: BTreeMap::new(),
                grace_epoch: 0,
                remote: BTreeMap::new(),
                departed: VecDeque::new(),
                ahead: Vec::new(),
            }),
            retired: AtomicBool::new(false),
            unloaded: AtomicBool::new(false),
            last_active_ms: AtomicU64::new(mono_ms()),
        });
        rooms.insert(room.name.clone(), room.clone());
        self.metrics.rooms_loaded.set(rooms.len() as i64);
        room
    }

    /// Whether someone is in room `name` (or within its presence grace period).
    pub fn room_in_use(&self, name: &str) -> bool {
        self.loaded_room(name).is_some_and(|room| {
            let state = lock(&room.state);
            !state.members.is_empty() || !state.presence.is_empty()
        })
    }

    /// The room named `name` if it is loaded.
    pub fn loaded_room(&self, name: &str) -> Option<Arc<Room>> {
        lock(&self.rooms).get(name).cloned()
    }

    /// Forgets a loaded room (after an admin deleted it), telling its members they left.
    pub fn unload_room(&self, name: &str) {
        let room = {
            let mut rooms = lock(&self.rooms);
            let room = rooms.remove(name);
            self.metrics.rooms_loaded.set(rooms.len() as i64);
            room
        };
        let Some(room) = room else {
            return;
        };
        corked(|| Self::retire(&room));
    }

    fn retire(room: &Room) {
        let mut state = lock(&room.state);
        room.retired.store(true, Ordering::Release);
        let left = encode(&ServerFrame::Left { room: &room.name });
        for (outbox, _) in state.members.values() {
            outbox.reply(left.clone());
        }
        state.members.clear();
        state.presence.clear();
    }

    // ----- connections -----

    /// Records an authenticated connection (for `online`, kicks and bans, and whatever goes to
    /// all of a user's connections).
    pub fn register(&self, member: &Member) {
        let mut connections = lock(&self.connections);
        connections.by_conn.insert(member.conn, member.clone());
        connections
            .by_user
            .entry(member.user_key.clone())
            .or_default()
            .push(member.clone());
    }

    /// Forgets a connection.
    pub fn unregister(&self, conn: u64) {
        let mut connections = lock(&self.connections);
        let Some(member) = connections.by_conn.remove(&conn) else {
            return;
        };
        if let Some(of_user) = connections.by_user.get_mut(&member.user_key) {
            of_user.retain(|m| m.conn != conn);
            if of_user.is_empty() {
                connections.by_user.remove(&member.user_key);
            }
        }
    }

    /// Every authenticated connection.
    pub fn online(&self) -> Vec<Member> {
        let mut all: Vec<Member> = lock(&self.connections).by_conn.values().cloned().collect();
        all.sort_by_key(|m| m.since_ms);
        all
    }

    /// Closes every connection of `user_key` with `close`, after queueing `notice` to each.
    /// Returns how many were closed.
    pub fn close_user(
        &self,
        user_key: &str,
        notice: Option<Encoded>,
        close: CloseRequest,
    ) -> usize {
        let connections = lock(&self.connections);
        let mut n = 0;
        for member in connections.of_user(user_key) {
            if let Some(notice) = &notice {
                member.outbox.reply(notice.clone());
            }
            member.outbox.close(close.clone());
            n += 1;
        }
        n
    }

    // ----- room operations -----

    /// Joins `member` to `room` and queues `joined`, the replay and `synced` to it, announcing
    /// the user as online to the others if this is their first connection in the room.
    /// `read` is the user's read marker there, for `joined`.
    pub fn join(
        &self,
        room: &Arc<Room>,
        member: &Member,
        since: Option<u64>,
        read: u64,
    ) -> Result<(), HubError> {
        // Corked: the joiner's replay and everyone's presence event are written after the room
        // lock is released, one write per socket.
        corked(|| self.join_locked(room, member, since, read))
    }

    fn join_locked(
        &self,
        room: &Arc<Room>,
        member: &Member,
        since: Option<u64>,
        read: u64,
    ) -> Result<(), HubError> {
        let mut state = lock(&room.state);
        room.check_live()?;
        room.touch();
        let first_in_room = state
            .members
            .insert(member.conn, (member.outbox.clone(), member.clone()))
            .is_none();
        if first_in_room {
            let presence = state
                .presence
                .entry(member.user_key.clone())
                .or_insert_with(|| Presence {
                    name: member.name.clone(),
                    conns: 0,
                    grace: None,
                });
            let announce = presence.conns == 0 && presence.grace.is_none();
            presence.conns += 1;
            presence.grace = None;
            if announce {
                self.publish_presence(room, &member.user_key, &member.name, true);
            }
            // Online through another node already: nobody here needs telling.
            if announce && !state.remote.contains_key(&member.user_key) {
                let frame = encode(&ServerFrame::Presence {
                    room: &room.name,
                    user: &member.name,
                    state: "online",
                });
                room.fan_out(&state, &frame, Some(&member.user_key), &self.metrics);
            }
        }
        let mut upto = state.published;
        if let Some(since) = since.filter(|&since| since > upto && self.cluster.is_some()) {
            // Resumed from another node that had delivered more: what follows `since` comes
            // live, the rest is not sent twice (`RoomState::ahead`), and `synced` says `since`.
            state.ahead.push((member.conn, since));
            upto = since;
        }
        let joined = encode(&ServerFrame::Joined {
            room: &room.name,
            members: Room::member_names(&state),
            read,
        });
        let replay = Replay::new(
            self.log.clone(),
            room.log_ref.name.clone(),
            room.no,
            since,
            upto,
            self.replay_limit,
        );
        match &self.cluster {
            // The joiner hears `joined` only once its `online` is in Redis: whoever joins after
            // that, on any node, finds the joiner among the members, as on one server.
            Some(cluster) => {
                let cluster = cluster.clone();
                let ready = Box::pin(async move { cluster.presence_sent().await });
                member
                    .outbox
                    .reply_paged_after(ready, joined, Box::new(replay));
            }
            None => member.outbox.reply_paged(joined, Box::new(replay)),
        }
        Ok(())
    }

    /// Removes a connection from a room. With `graceful` (an explicit `leave`) the user goes
    /// offline at once when this was their last connection there; otherwise after the grace
    /// period, unless they come back.
    pub fn part(self: &Arc<Self>, room: &Arc<Room>, conn: u64, graceful: bool) {
        corked(|| self.part_locked(room, conn, graceful));
    }

    fn part_locked(self: &Arc<Self>, room: &Arc<Room>, conn: u64, graceful: bool) {
        let mut state = lock(&room.state);
        let Some((_, member)) = state.members.remove(&conn) else {
            return;
        };
        if self.cluster.is_some() {
            state.ahead.retain(|&(ahead, _)| ahead != conn);
            if state.departed.len() == DEPARTED_KEPT {
                state.departed.pop_front();
            }
            let published = state.published;
            state.departed.push_back((conn, published));
        }
        room.touch();
        state.grace_epoch += 1;
        let epoch = state.grace_epoch;
        let Some(presence) = state.presence.get_mut(&member.user_key) else {
            return;
        };
        presence.conns = presence.conns.saturating_sub(1);
        if presence.conns > 0 {
            return;
        }
        if graceful || self.presence_grace.is_zero() {
            state.presence.remove(&member.user_key);
            self.announce_offline(room, &state, &member.user_key, &member.name);
            return;
        }
        presence.grace = Some(epoch);
        drop(state);
        let hub = self.clone();
        let room = room.clone();
        let grace = self.presence_grace;
        self.executor
            .spawn(async move {
                smol::Timer::after(grace).await;
                hub.end_grace(&room, &member.user_key, epoch);
            })
            .detach();
    }

    fn end_grace(&self, room: &Room, user_key: &str, epoch: u64) {
        corked(|| self.end_grace_locked(room, user_key, epoch));
    }

    fn end_grace_locked(&self, room: &Room, user_key: &str, epoch: u64) {
        let mut state = lock(&room.state);
        let expired = state
            .presence
            .get(user_key)
            .is_some_and(|p| p.conns == 0 && p.grace == Some(epoch));
        if expired {
            if let Some(presence) = state.presence.remove(user_key) {
                self.announce_offline(room, &state, user_key, &presence.name);
            }
        }
    }

    /// Who counts as online in each loaded room (connected, or within the grace period), for
    /// the next start. Taken at shutdown, after the connections are gone.
    pub fn presence_snapshot(&self) -> PresenceSnapshot {
        let rooms: Vec<Arc<Room>> = lock(&self.rooms).values().cloned().collect();
        let mut snapshot = PresenceSnapshot {
            taken_ms: now_ms(),
            rooms: Vec::new(),
        };
        for room in rooms {
            let state = lock(&room.state);
            if state.presence.is_empty() {
                continue;
            }
            snapshot.rooms.push(RoomPresence {
                room: room.name.clone(),
                users: state
                    .presence
                    .iter()
                    .map(|(key, p)| (key.to_string(), p.name.to_string()))
                    .collect(),
            });
        }
        snapshot
    }

    /// Continues the presence grace period of the users a graceful shutdown dropped: those who
    /// rejoin within what is left of it cause no event, the others go `offline` when it ends,
    /// exactly as if their connections had dropped without the restart. Nothing is restored
    /// once the grace period has passed. Returns how many users were restored.
    pub fn restore_presence(self: &Arc<Self>, snapshot: PresenceSnapshot) -> usize {
        let since_drop = Duration::from_millis(now_ms().saturating_sub(snapshot.taken_ms));
        let left = match self.presence_grace.checked_sub(since_drop) {
            Some(left) if !left.is_zero() => left,
            _ => return 0,
        };
        let mut restored = 0;
        for saved in snapshot.rooms {
            let room = match self.existing_room(&saved.room) {
                Ok(Some(room)) => room,
                // Deleted since, or unreadable: nobody can be told about it anyway.
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(room = %saved.room, error = %e, "presence not restored");
                    continue;
                }
            };
            let mut state = lock(&room.state);
            state.grace_epoch += 1;
            let epoch = state.grace_epoch;
            for (key, name) in saved.users {
                state.presence.entry(key.into()).or_insert_with(|| {
                    restored += 1;
                    Presence {
                        name: name.into(),
                        conns: 0,
                        grace: Some(epoch),
                    }
                });
            }
            drop(state);
            let hub = self.clone();
            self.executor
                .spawn(async move {
                    smol::Timer::after(left).await;
                    corked(|| hub.end_restored_grace(&room, epoch));
                })
                .detach();
        }
        restored
    }

    fn end_restored_grace(&self, room: &Room, epoch: u64) {
        let mut state = lock(&room.state);
        let expired: Vec<Arc<str>> = state
            .presence
            .iter()
            .filter(|(_, p)| p.conns == 0 && p.grace == Some(epoch))
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            if let Some(presence) = state.presence.remove(&key) {
                self.announce_offline(room, &state, &key, &presence.name);
            }
        }
    }

    /// This node's last connection of `user_key` in `room` is gone (after any grace).
    fn announce_offline(&self, room: &Room, state: &RoomState, user_key: &str, name: &str) {
        self.publish_presence(room, user_key, name, false);
        if state.remote.contains_key(user_key) {
            return;
        }
        let frame = encode(&ServerFrame::Presence {
            room: &room.name,
            user: name,
            state: "offline",
        });
        room.fan_out(state, &frame, None, &self.metrics);
    }

    /// Users online in `room`.
    pub fn members(&self, room: &Room) -> Encoded {
        let state = lock(&room.state);
        encode(&ServerFrame::Members {
            room: &room.name,
            users: Room::member_names(&state),
        })
    }

    /// Stores a message from `member` and, once it is durable, acks it to the sender and
    /// broadcasts it to the room. A repeated cid gets the original ack (also after the flush,
    /// since the original may not be durable yet) and nothing else.
    pub fn send(
        &self,
        room: &Arc<Room>,
        member: &Member,
        text: String,
        cid: Option<String>,
    ) -> Result<(), HubError> {
        let message = Message::new(member.name.to_string(), text, now_ms(), cid);
        self.append(
            room,
            &member.user_key,
            LogWrite::Message(message),
            Some(member.outbox.clone()),
        )
        .map(drop)
    }

    /// The one way messages and events enter a room. Under the room lock: check the cid, take
    /// the next id and queue the write with the committer (no disk write here). Once the batch
    /// holding it is durable, on the delivery thread: ack it to `sender` (if any), raise the
    /// room's published id, and broadcast it. Because announcements are queued under the room
    /// lock, they run in id order. A repeated cid stores nothing; the sender gets the original
    /// ack once the original is durable.
    fn append(
        &self,
        room: &Arc<Room>,
        user_key: &str,
        write: LogWrite,
        sender: Option<Arc<Outbox>>,
    ) -> Result<Appended, HubError> {
        let _state = lock(&room.state);
        room.check_live()?;
        self.append_locked(room, user_key, write, sender)
    }

    /// [`Hub::append`] for a caller that holds the room lock (and checked the room is live).
    fn append_locked(
        &self,
        room: &Arc<Room>,
        user_key: &str,
        write: LogWrite,
        sender: Option<Arc<Outbox>>,
    ) -> Result<Appended, HubError> {
        room.touch();
        let announced = room.clone();
        let notices = self.notices.clone();
        // The log keeps one copy to write, the announcement the other to build the frame.
        let appended = self.committer.append(
            &room.log_ref,
            user_key,
            write.clone(),
            Box::new(move |appended, result| {
                announce(&announced, appended, write, result, sender, &notices)
            }),
        )?;
        Ok(appended)
    }

    /// A page of `room`'s history, as the `history` reply: at most `limit` messages, and no
    /// more than `max_bytes` of them (at least one), so one reply cannot hold megabytes. A page
    /// cut short says `more`, and the client pages on from where it ends.
    pub(crate) async fn history(
        &self,
        room: &Room,
        page: HistoryPage,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Encoded, ReadError> {
        let published = lock(&room.state).published;
        let (mut cursor, forward) = match page {
            HistoryPage::Newest => (u64::MAX, false),
            HistoryPage::Before(id) => (id, false),
            HistoryPage::After(id) => (id, true),
        };
        // Read a few at a time, nearest to the cursor first, so a page of large messages is
        // never in memory whole.
        let mut messages = Vec::new();
        let mut bytes = 0;
        let more = 'read: loop {
            let want = (limit - messages.len()).min(HISTORY_READ);
            let page = if forward {
                self.log
                    .messages_after(room.no, cursor, published, want)
                    .await?
            } else {
                self.log
                    .messages_before(room.no, cursor, published, want)
                    .await?
            };
            let read = page.messages.len();
            let nearest_first: Box<dyn Iterator<Item = _>> = if forward {
                Box::new(page.messages.into_iter())
            } else {
                Box::new(page.messages.into_iter().rev())
            };
            for m in nearest_first {
                let size = message_event(&room.name, m.id, &m.message).encoded_len();
                if !messages.is_empty() && bytes + size > max_bytes {
                    break 'read true;
                }
                bytes += size;
                cursor = m.id;
                messages.push(m);
            }
            if !page.more || read < want || messages.len() == limit {
                break page.more;
            }
        };
        if !forward {
            messages.reverse();
        }
        Ok(encode(&ServerFrame::History {
            room: &room.name,
            messages: messages
                .iter()
                .map(|m| message_event(&room.name, m.id, &m.message))
                .collect(),
            more,
        }))
    }
}

/// What happens to an appended message or event once the batch holding it is durable, or
/// failed: runs on the committer's delivery thread, in queue order.
fn announce(
    room: &Room,
    appended: Appended,
    write: LogWrite,
    result: Result<(), Arc<StoreError>>,
    sender: Option<Arc<Outbox>>,
    notices: &Notices,
) {
    let metrics = &notices.metrics;
    if let Err(e) = result {
        let Some(sender) = sender else {
            return;
        };
        // No ack: the write is not (known to be) on disk.
        let error = match &*e {
            StoreError::RoomGone { .. } => Rejection::new(
                ErrorCode::NotJoined,
                format!("`{}` was deleted; join it again", room.name),
            ),
            StoreError::MessageGone { .. } => {
                Rejection::new(ErrorCode::NotFound, "that message was deleted")
            }
            StoreError::Unavailable { condition } => {
                metrics.error(ErrorCode::Internal);
                Rejection::new(ErrorCode::Internal, condition.refusal())
            }
            // The batch may have reached the disk before its flush failed (docs/PROTOCOL.md,
            // section 9): only a resend with the same cid can tell.
            _ => {
                metrics.error(ErrorCode::Internal);
                Rejection::new(
                    ErrorCode::Internal,
                    "the write to disk failed; the message may still be stored: resend it with the same cid",
                )
            }
        };
        let fallback = match &write {
            LogWrite::Message(_) => "send",
            LogWrite::Event { event, .. } => match event.change {
                Change::Edited { .. } => "edit",
                Change::Deleted => "delete",
            },
        };
        sender.reply(error.with_ref(write.cid().or(Some(fallback))).encode());
        return;
    }
    match appended {
        Appended::New(id) => {
            let frame = match &write {
                LogWrite::Message(message) => {
                    metrics.messages_stored.inc();
                    encode(&message_event(&room.name, id, message))
                }
                LogWrite::Event { event, .. } => encode(&event_frame(&room.name, id, event)),
            };
            let mut state = lock(&room.state);
            state.published = state.published.max(id);
            if let Some(sender) = &sender {
                sender.reply(encode(&ServerFrame::Ack {
                    room: &room.name,
                    cid: write.cid(),
                    id,
                    ts: write.ts(),
                }));
            }
            room.fan_out(&state, &frame, None, metrics);
            drop(state);
            if let LogWrite::Message(message) = &write {
                notices.notify(room, id, message);
            }
        }
        Appended::Duplicate(original) => {
            if let Some(sender) = sender {
                sender.reply(encode(&ServerFrame::Ack {
                    room: &original.room,
                    cid: write.cid(),
                    id: original.id,
                    ts: original.ts,
                }));
            }
        }
    }
}

/// The `edited` or `deleted` frame of an event; `None` text (an edit scrubbed by a deletion)
/// is never broadcast, only skipped in replays.
pub(crate) fn event_frame<'a>(room: &'a str, seq: u64, event: &'a Event) -> ServerFrame<'a> {
    match &event.change {
        Change::Edited { text, .. } => ServerFrame::Edited {
            room,
            id: event.target,
            seq,
            user: &event.user,
            text: text.as_deref().unwrap_or_default(),
            ts: event.ts,
        },
        Change::Deleted => ServerFrame::Deleted {
            room,
            id: event.target,
            seq,
            user: &event.user,
            ts: event.ts,
        },
    }
}

// ----- administration (used by `chatd admin` through the admin socket) -----

impl Hub {
    /// Stores a message from `author` (a name no account can have) in the existing room `name`
    /// through the same path as every send: durable before it is published, in id order with
    /// everyone else's messages. Returns its id; it is announced once the committer has flushed
    /// it (await [`Committer::barrier`] to know it was).
    pub fn post_system_message(
        &self,
        name: &str,
        author: &str,
        text: String,
    ) -> Result<u64, HubError> {
        let message = LogWrite::Message(Message::new(author.to_owned(), text, now_ms(), None));
        let appended = match self.append(&self.room(name)?, "", message.clone(), None) {
            // Unloaded for idleness just now: the next lookup loads it afresh.
            Err(HubError::Unloaded) => self.append(&self.room(name)?, "", message, None),
            other => other,
        };
        Ok(match appended? {
            Appended::New(id) => id,
            // Only a cid makes a duplicate, and announcements have none.
            Appended::Duplicate(original) => original.id,
        })
    }

    /// Deletes room `name` from the store and from memory. The room record goes first, under
    /// the room's lock, so no message can be stored in it afterwards (writes already queued for
    /// it find no record when their batch is applied, and are dropped with an error to their
    /// senders); its members get `left`.
    /// The messages, events and memberships (read markers) are removed after that, outside the
    /// lock. Returns the removed record and how many messages went.
    pub fn delete_room(
        &self,
        name: &str,
        between_chunks: &mut dyn FnMut(),
    ) -> Result<Option<(crate::store::Room, u64)>, StoreError> {
        let removed = match self.loaded_room(name) {
            Some(room) => {
                let _state = lock(&room.state);
                self.store.remove_room_record(name)?
            }
            None => self.store.remove_room_record(name)?,
        };
        self.unload_room(name);
        let Some(record) = removed else {
            return Ok(None);
        };
        let n = self.store.purge_room_messages(record.no, between_chunks)?;
        self.store.remove_room_memberships(name)?;
        Ok(Some((record, n)))
    }

    /// Every authenticated connection with the rooms it has joined.
    pub fn connections(&self) -> Vec<(Member, Vec<String>)> {
        let rooms: Vec<Arc<Room>> = lock(&self.rooms).values().cloned().collect();
        let mut joined: HashMap<u64, Vec<String>> = HashMap::new();
        for room in rooms {
            let state = lock(&room.state);
            for conn in state.members.keys() {
                joined.entry(*conn).or_default().push(room.name.clone());
            }
        }
        self.online()
            .into_iter()
            .map(|m| {
                let mut rooms = joined.remove(&m.conn).unwrap_or_default();
                rooms.sort();
                (m, rooms)
            })
            .collect()
    }

    /// After messages with ids up to `last_id` were written into room `name` behind the hub's
    /// back (an import), lets replays and history include them once they are durable: the
    /// raise is queued with the committer under the room lock, like a send's announcement.
    pub fn publish_up_to(&self, name: &str, last_id: u64) {
        if let Some(room) = self.loaded_room(name) {
            let state = lock(&room.state);
            let published = room.clone();
            self.committer.after_flush(Box::new(move |flushed| {
                if flushed.is_ok() {
                    let mut state = lock(&published.state);
                    state.published = state.published.max(last_id);
                }
            }));
            drop(state);
        }
    }
}
