//! Cluster mode in the hub: rooms loaded from Redis, sends appended there, and what the feed
//! delivers (each room's entries in log order, other nodes' presence) handed to the members
//! connected here.
//!
//! Invariants:
//! - A room is subscribed before its record is read and released (caught up, presence read)
//!   before anyone joins it, so its first joiner's replay and member list are complete.
//! - An entry is announced here only if it follows the last one announced (`published`); the
//!   sender's ack, when the sender is connected here, goes out just before the broadcast.
//! - A user is online in a room while this node or any other has them; only the change of that
//!   is announced (this node's own changes are published for the others to see, and ignored
//!   when they come back).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{now_ms, Hub, HubError, Member, Room, RoomState};
use crate::cluster::feed::{Delivery, Rooms};
use crate::cluster::log::{Appended, Body, Changer, LogEntry, Origin};
use crate::cluster::notices::{Closing, Notice};
use crate::cluster::presence::{PresenceChange, Typing};
use crate::cluster::{Cluster, ClusterError};
use crate::hub::{event_frame, message_event};
use crate::metrics::Metrics;
use crate::outbox::corked;
use crate::outbox::{CloseRequest, Outbox};
use crate::protocol::{close, Encoded, ErrorCode, Rejection};
use crate::protocol::{encode, ServerFrame};
use crate::rules;
use crate::store::{user_key, Change, Event, Message};
use crate::sync::lock;

/// What a send, edit or deletion refused for a Redis error is told. A Redis error may come after
/// Redis ran the script (the link broke, or Redis died, before its answer arrived): the write
/// may then be stored, and is broadcast once the feed delivers it. So, as for a flush that fails
/// mid-write on one server (PROTOCOL.md 9), the client is told it may still be stored, and to
/// resend with the same cid.
pub(crate) const WRITE_FAILED: &str = "the shared store (Redis) failed during the write; it may \
     still be stored: resend it with the same cid";

/// A user online in a room through other nodes.
pub(super) struct RemotePresence {
    /// The name as displayed.
    pub(super) name: Arc<str>,
    /// The nodes that have them.
    pub(super) nodes: BTreeSet<u64>,
}

impl Hub {
    /// Cluster mode: loads room `name` from Redis (creating it if `creator`'s allowance
    /// permits), subscribed to its channel before its record is read, so that the feed
    /// delivers every entry after the id it starts from (see `cluster::feed`).
    pub(crate) async fn load_cluster_room(
        &self,
        cluster: &Cluster,
        name: &str,
        creator: &str,
    ) -> Result<Arc<Room>, HubError> {
        if let Some(room) = self.loaded_room(name) {
            return Ok(room);
        }
        let feed = cluster.feed()?;
        feed.watch(name).await?;
        let loaded = async {
            let record = match cluster.logs.room(name).await? {
                Some(record) => record,
                None => {
                    self.spend_creation(creator)?;
                    let record = cluster.logs.ensure_room(name, now_ms()).await?;
                    if record.created {
                        cluster.memberships.add_dm_memberships(name).await?;
                    }
                    record
                }
            };
            let mut rooms = lock(&self.rooms);
            if let Some(room) = rooms.get(name) {
                return Ok::<_, HubError>(room.clone());
            }
            let record = crate::store::Room {
                name: name.to_string(),
                no: record.no,
                created_ms: 0,
                last_id: record.last_id,
                count: 0,
            };
            Ok(self.load(&mut rooms, record))
        }
        .await;
        match loaded {
            Ok(room) => {
                let published = lock(&room.state).published;
                feed.release(name, room.no, published).await;
                Ok(room)
            }
            Err(e) => {
                if self.loaded_room(name).is_none() {
                    feed.unwatch(name);
                }
                Err(e)
            }
        }
    }

    /// Cluster mode's `send`: queues the message's append with the node's log writer (waiting
    /// only while its queue is full). The ack and the broadcast come from the feed, in log
    /// order, when the entry reaches this node ([`Rooms::deliver`]); what only the sender hears
    /// (a repeated cid's original ack, a refusal) goes out once Redis answered, and then `done`
    /// runs.
    pub(crate) async fn send_to_cluster(
        self: &Arc<Self>,
        cluster: &Cluster,
        room: &Arc<Room>,
        member: &Member,
        text: String,
        cid: Option<String>,
        done: impl FnOnce() + Send + 'static,
    ) -> Result<(), HubError> {
        room.check_live()?;
        room.touch();
        let message = Message::new(member.name.to_string(), text, now_ms(), cid);
        let origin = Origin {
            node: cluster.node,
            conn: member.conn,
        };
        let script = cluster
            .logs
            .message_append(&room.log_ref, &member.user_key, &message, origin);
        let (hub, room, outbox) = (self.clone(), room.clone(), member.outbox.clone());
        let cid = message.cid;
        let answer = Box::new(move |outcome| {
            if let Some(refusal) = hub.refusal_of_send(&room, &outbox, cid.as_deref(), outcome) {
                hub.metrics.error(refusal.code);
                outbox.reply(refusal.with_ref(cid.as_deref().or(Some("send"))).encode());
            }
            done();
        });
        cluster.writer()?.append(script, answer).await?;
        Ok(())
    }

    /// What Redis's answer to a send in `room` means for its sender: nothing more for a new
    /// message (the feed acks it), the original ack for a repeated cid (sent here), or a
    /// refusal.
    fn refusal_of_send(
        &self,
        room: &Arc<Room>,
        sender: &Arc<Outbox>,
        cid: Option<&str>,
        outcome: Result<Appended, ClusterError>,
    ) -> Option<Rejection> {
        match outcome {
            Ok(Appended::New { .. }) => {
                self.metrics.messages_stored.inc();
                None
            }
            Ok(Appended::RoomGone) => {
                self.drop_deleted(room);
                Some(Rejection::new(
                    ErrorCode::NotJoined,
                    format!("`{}` was deleted; join it again", room.name),
                ))
            }
            Ok(appended) => answer_append(appended, sender, cid).err().map(|e| {
                tracing::error!(room = %room.name, error = %e, "unexpected answer to a send");
                Rejection::new(
                    ErrorCode::Internal,
                    "the server could not complete the request",
                )
            }),
            Err(e) => {
                tracing::warn!(room = %room.name, error = %e, "cluster write failed");
                Some(Rejection::new(ErrorCode::Internal, WRITE_FAILED))
            }
        }
    }

    /// Cluster mode: unsubscribes from room `name`'s channel (it left this node's memory).
    pub(super) fn stop_watching(&self, name: &str) {
        if let Some(feed) = self.cluster.as_ref().and_then(|c| c.feed().ok()) {
            feed.unwatch(name);
        }
    }

    /// `room` was deleted in Redis while this node held it (the node missed the admin's notice,
    /// its link being down): drop it, so the next join loads the room anew.
    fn drop_deleted(&self, room: &Arc<Room>) {
        if self
            .loaded_room(&room.name)
            .is_some_and(|loaded| Arc::ptr_eq(&loaded, room))
        {
            self.unload_room(&room.name);
            self.stop_watching(&room.name);
        }
    }

    /// Cluster mode's `edit` and `delete` of `member`'s message `target`: checked and appended
    /// in one script; acked and broadcast by the feed like a send.
    pub(crate) async fn change_in_cluster(
        &self,
        cluster: &Cluster,
        room: &Arc<Room>,
        member: &Member,
        target: u64,
        change: Change,
        cid: Option<String>,
    ) -> Result<(), HubError> {
        room.check_live()?;
        room.touch();
        let event = Event {
            target,
            user: member.name.to_string(),
            ts: now_ms(),
            change,
        };
        let published = lock(&room.state).published;
        let changer = Changer {
            author_key: Some(&member.user_key),
            account_created_ms: member.account_created_ms,
            origin: Origin {
                node: cluster.node,
                conn: member.conn,
            },
        };
        let appended = cluster
            .logs
            .append_event(&room.log_ref, &changer, &event, cid.as_deref(), published)
            .await?;
        if matches!(appended, Appended::RoomGone) {
            self.drop_deleted(room);
        }
        answer_append(appended, &member.outbox, cid.as_deref())
    }

    /// Cluster mode: tells the other nodes that `user_key` is online in `room` here, or no
    /// longer (nothing in single-node mode).
    pub(super) fn publish_presence(&self, room: &Room, user_key: &str, name: &str, online: bool) {
        if let Some(cluster) = &self.cluster {
            cluster.publish_presence(&room.name, user_key, name, online);
        }
    }
}

/// Cluster mode: the feed delivers each room's entries here, in log order.
impl Rooms for Hub {
    fn deliver(&self, name: &str, room_no: u32, entry: LogEntry, prev: Option<u64>) -> Delivery {
        let Some(room) = self.loaded_room(name).filter(|room| room.no == room_no) else {
            return Delivery::Done;
        };
        let node = self.cluster.as_ref().map(|c| c.node);
        // The sender's connection, if it is on this node: its ack goes out just before the
        // broadcast, so it always precedes the sender's own copy.
        let sender = entry
            .origin
            .filter(|origin| Some(origin.node) == node)
            .and_then(|origin| lock(&self.connections).by_conn.get(&origin.conn).cloned());
        corked(|| {
            let mut state = lock(&room.state);
            if entry.id <= state.published {
                return Delivery::Done;
            }
            if prev.is_some_and(|prev| prev != state.published) {
                return Delivery::Missing {
                    after: state.published,
                };
            }
            state.published = entry.id;
            let (frame, ts) = match &entry.body {
                Body::Message(message) => (
                    encode(&message_event(&room.name, entry.id, message)),
                    message.ts,
                ),
                Body::Event(event) => (encode(&event_frame(&room.name, entry.id, event)), event.ts),
            };
            if let Some(sender) = &sender {
                sender.outbox.reply(encode(&ServerFrame::Ack {
                    room: &room.name,
                    cid: entry.cid.as_deref(),
                    id: entry.id,
                    ts,
                }));
            }
            if state.ahead.is_empty() {
                room.fan_out(&state, &frame, None, &self.metrics);
            } else {
                // Not to connections that resumed with a `since` at or past this entry.
                let id = entry.id;
                room.fan_out_except(&state, &frame, &self.metrics, |conn, _| {
                    state
                        .ahead
                        .iter()
                        .any(|&(c, since)| c == conn && since >= id)
                });
                state.ahead.retain(|&(_, since)| since > id);
            }
            let taken_here = entry.origin.is_some_and(|o| Some(o.node) == node);
            if let (Body::Message(message), true) = (&entry.body, taken_here) {
                self.notify_in_cluster(&room, entry.id, message);
            }
            Delivery::Done
        })
    }

    fn loaded(&self) -> Vec<(String, u32, u64)> {
        let rooms: Vec<Arc<Room>> = lock(&self.rooms).values().cloned().collect();
        rooms
            .iter()
            .map(|room| (room.name.clone(), room.no, lock(&room.state).published))
            .collect()
    }

    fn presence_changed(&self, name: &str, change: PresenceChange) {
        if self.cluster.as_ref().is_some_and(|c| c.node == change.node) {
            return;
        }
        let Some(room) = self.loaded_room(name) else {
            return;
        };
        corked(|| {
            let mut state = lock(&room.state);
            let key: Arc<str> = Arc::from(change.user_key.as_str());
            let flipped = if change.online {
                let remote = state
                    .remote
                    .entry(key.clone())
                    .or_insert_with(|| RemotePresence {
                        name: Arc::from(change.name.as_str()),
                        nodes: BTreeSet::new(),
                    });
                remote.nodes.insert(change.node) && remote.nodes.len() == 1
            } else {
                let gone = state.remote.get_mut(&key).is_some_and(|remote| {
                    remote.nodes.remove(&change.node) && remote.nodes.is_empty()
                });
                if gone {
                    state.remote.remove(&key);
                }
                gone
            };
            if flipped && !state.presence.contains_key(&key) {
                announce(&room, &state, &change.name, change.online, &self.metrics);
            }
        });
    }

    fn notice(&self, notice: Notice) {
        match notice {
            Notice::RoomDeleted { room } => {
                if let Some(loaded) = self.loaded_room(&room) {
                    self.drop_deleted(&loaded);
                }
            }
            Notice::Online { request } => {
                let connections: Vec<crate::admin::Connection> = self
                    .connections()
                    .into_iter()
                    .map(|(m, rooms)| crate::admin::Connection {
                        user: m.name.to_string(),
                        peer: m.peer.to_string(),
                        since_ms: m.since_ms,
                        rooms,
                    })
                    .collect();
                let json = serde_json::to_string(&connections).unwrap_or_else(|_| "[]".into());
                if let Some(cluster) = self.cluster.clone() {
                    self.executor
                        .spawn(async move { cluster.report_online(&request, json).await })
                        .detach();
                }
            }
            Notice::Close {
                request,
                user_key,
                how,
            } => {
                let (frame, reason) = match how {
                    Closing::Ban => (
                        Some(
                            Rejection::new(
                                ErrorCode::Banned,
                                "this account was banned by an admin",
                            )
                            .encode(),
                        ),
                        "banned",
                    ),
                    Closing::Kick => (None, "kicked by an admin"),
                    Closing::Delete => (None, "account deleted"),
                };
                let closed = self.close_user(
                    &user_key,
                    frame,
                    CloseRequest {
                        code: close::POLICY,
                        reason,
                    },
                );
                if let Some(cluster) = self.cluster.clone() {
                    self.executor
                        .spawn(async move { cluster.report_closed(&request, closed).await })
                        .detach();
                }
            }
            Notice::Read {
                user_key,
                room,
                read,
            } => super::conversations::send_read(&self.connections, &user_key, &room, read),
            Notice::Notify {
                user_key,
                room,
                id,
                author,
                ts,
                text,
            } => {
                let recipients: Vec<Member> = lock(&self.connections).of_user(&user_key).to_vec();
                if recipients.is_empty() {
                    return;
                }
                // Connections in the room, and those that left it after it delivered `id`:
                // they have the message.
                let has_it: Vec<u64> = self.loaded_room(&room).map_or_else(Vec::new, |room| {
                    let state = lock(&room.state);
                    let departed = state.departed.iter().filter(|(_, seen)| *seen >= id);
                    let departed = departed.map(|(conn, _)| *conn);
                    state.members.keys().copied().chain(departed).collect()
                });
                let frame = encode(&ServerFrame::Notify {
                    room: &room,
                    id,
                    user: &author,
                    text: &text,
                    ts,
                });
                corked(|| {
                    for member in recipients.iter().filter(|m| !has_it.contains(&m.conn)) {
                        member.outbox.reply(frame.clone());
                    }
                });
            }
        }
    }

    fn typing(&self, name: &str, typing: Typing) {
        if self.cluster.as_ref().is_some_and(|c| c.node == typing.node) {
            return;
        }
        if let Some(room) = self.loaded_room(name) {
            self.typing_here(&room, &typing.user_key, &typing.name);
        }
    }

    fn presence_reset(&self, name: &str, online: Vec<PresenceChange>) {
        let Some(room) = self.loaded_room(name) else {
            return;
        };
        let own = self.cluster.as_ref().map(|c| c.node);
        let mut remote: BTreeMap<Arc<str>, RemotePresence> = BTreeMap::new();
        for change in online.into_iter().filter(|c| Some(c.node) != own) {
            remote
                .entry(Arc::from(change.user_key.as_str()))
                .or_insert_with(|| RemotePresence {
                    name: Arc::from(change.name.as_str()),
                    nodes: BTreeSet::new(),
                })
                .nodes
                .insert(change.node);
        }
        corked(|| {
            let mut state = lock(&room.state);
            let before = std::mem::replace(&mut state.remote, remote);
            let local = |key: &Arc<str>| state.presence.contains_key(key);
            let came: Vec<&RemotePresence> = (state.remote.iter())
                .filter(|(key, _)| !before.contains_key(*key) && !local(key))
                .map(|(_, r)| r)
                .collect();
            for r in came {
                announce(&room, &state, &r.name, true, &self.metrics);
            }
            for (key, r) in &before {
                if !state.remote.contains_key(key) && !local(key) {
                    announce(&room, &state, &r.name, false, &self.metrics);
                }
            }
        });
    }

    fn together(&self, deliveries: &mut dyn FnMut()) {
        corked(deliveries);
    }
}

impl Hub {
    /// Cluster mode: the notifications of message `id` of `room`, stored through this node
    /// (each message is notified by the node that took it): to both users of a DM room, and to
    /// users it mentions who have the room on their list, except its author. The membership
    /// checks read Redis, so they run on a task of their own; each user's nodes hand the notice
    /// to the connections that have not joined the room.
    fn notify_in_cluster(&self, room: &Room, id: u64, message: &Message) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let dm = rules::dm_participants(&room.name).ok().flatten();
        if dm.is_none() && !message.text.contains('@') {
            return;
        }
        let mut direct: Vec<String> = Vec::new();
        if let Some((a, b)) = dm {
            direct.extend([a, b].into_iter().map(str::to_owned));
        }
        let mentioned: Vec<String> = rules::mentioned_names(&message.text)
            .map(user_key)
            .filter(|key| !direct.contains(key))
            .collect();
        let author = user_key(&message.user);
        let room = room.name.clone();
        let message = message.clone();
        self.executor
            .spawn(async move {
                let mut users = direct;
                for key in mentioned {
                    match cluster.memberships.membership(&key, &room).await {
                        Ok(Some(m)) if m.left_at.is_none() && !users.contains(&key) => {
                            users.push(key);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(%room, error = %e, "mention not notified"),
                    }
                }
                for user_key in users.into_iter().filter(|u| *u != author) {
                    cluster.send_notice(Notice::Notify {
                        user_key,
                        room: room.clone(),
                        id,
                        author: message.user.clone(),
                        ts: message.ts,
                        text: message.text.clone(),
                    });
                }
            })
            .detach();
    }

    /// The newest id of room `name` clients can see: its published id while loaded, else its
    /// record's. `None` if there is no such room.
    pub(crate) async fn newest_in_cluster(
        &self,
        cluster: &Cluster,
        name: &str,
    ) -> Result<Option<u64>, HubError> {
        if let Some(room) = self.loaded_room(name) {
            return Ok(Some(lock(&room.state).published));
        }
        Ok(cluster.logs.room(name).await?.map(|r| r.last_id))
    }

    /// Cluster mode: the `since` a join of `room` goes on with. Within what this node has
    /// delivered, as given; beyond it (the client saw more through another node), at most the
    /// room's newest id in Redis: a `since` past everything stored is answered as on one server.
    pub(crate) async fn since_in_cluster(
        &self,
        cluster: &Cluster,
        room: &Room,
        since: Option<u64>,
    ) -> Result<Option<u64>, HubError> {
        let Some(since) = since else {
            return Ok(None);
        };
        if since <= lock(&room.state).published {
            return Ok(Some(since));
        }
        let newest = cluster
            .logs
            .room(&room.name)
            .await?
            .map_or(0, |r| r.last_id);
        Ok(Some(since.min(newest)))
    }

    /// Cluster mode's `read`: moves `member`'s marker in room `name` forward (to at most its
    /// newest id); every connection of the user, on every node, gets the marker in force, in
    /// the order the markers took effect.
    /// `Ok(false)` if there is no such room.
    pub(crate) async fn mark_read_in_cluster(
        &self,
        cluster: &Cluster,
        member: &Member,
        name: &str,
        id: u64,
    ) -> Result<bool, HubError> {
        let Some(newest) = self.newest_in_cluster(cluster, name).await? else {
            return Ok(false);
        };
        // The marker in force reaches the user's connections from the script itself.
        cluster
            .memberships
            .mark_read(&member.user_key, name, id.min(newest))
            .await?;
        Ok(true)
    }

    /// Cluster mode's `rooms`: `member`'s conversation list.
    pub(crate) async fn conversations_in_cluster(
        &self,
        cluster: &Cluster,
        member: &Member,
    ) -> Result<Encoded, HubError> {
        let mut listed = Vec::new();
        for (name, membership) in cluster.memberships.memberships(&member.user_key).await? {
            let Some(record) = cluster.logs.room(&name).await? else {
                continue; // deleted by an admin
            };
            let upto = self
                .loaded_room(&name)
                .map_or(record.last_id, |room| lock(&room.state).published);
            let conversation = cluster
                .memberships
                .conversation(
                    &cluster.logs,
                    &member.user_key,
                    &name,
                    record.no,
                    &membership,
                    upto,
                )
                .await?;
            if let Some(conversation) = conversation {
                listed.push((name, conversation));
            }
        }
        Ok(super::conversations::rooms_reply(listed))
    }

    /// Cluster mode: relays `typing` to the other nodes (nothing in single-node mode).
    pub(super) fn relay_typing(&self, room: &Room, member: &Member) {
        if let Some(cluster) = &self.cluster {
            cluster.relay_typing(&room.name, &member.user_key, &member.name);
        }
    }
}

/// What the writer hears of an append made for `member` (with `cid`): nothing yet if it was
/// stored (the feed acks it in log order), the original's ack for a repeated cid, or why not.
fn answer_append(
    appended: Appended,
    sender: &Arc<Outbox>,
    cid: Option<&str>,
) -> Result<(), HubError> {
    match appended {
        Appended::New { .. } => Ok(()),
        Appended::Duplicate(original) => {
            sender.reply(encode(&ServerFrame::Ack {
                room: &original.room,
                cid,
                id: original.id,
                ts: original.ts,
            }));
            Ok(())
        }
        Appended::RoomGone => Err(HubError::RoomGone),
        Appended::NotFound => Err(HubError::NotFound),
        Appended::Forbidden => Err(HubError::Forbidden),
    }
}

/// Tells the room's members here that `name` came online or went offline (on another node).
fn announce(room: &Room, state: &RoomState, name: &str, online: bool, metrics: &Metrics) {
    let frame = encode(&ServerFrame::Presence {
        room: &room.name,
        user: name,
        state: if online { "online" } else { "offline" },
    });
    room.fan_out(state, &frame, None, metrics);
}
