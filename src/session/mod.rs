//! One WebSocket connection's life: authentication, requests, and closing.
//!
//! It has two phases, each a task of its own: [`login`] until the connection has logged in, on
//! the setup executor, then [`run`] on the live executor (see `executors`), so that a storm of
//! logins queues behind the traffic of users already in.
//!
//! A connection is one task running two halves side by side:
//! - the reader takes frames off the socket (through tungstenite) and handles them in order, so
//!   one connection's sends are accepted in the order sent, and enforces rate limits and the
//!   protocol's size and encoding rules;
//! - the writer ([`Outbox::run_writer`]) only writes backlogs and the Close frame: frames
//!   normally reach the socket directly from whoever produced them (see [`crate::outbox`]).
//!
//! Pings and the auth and idle deadlines come from the server-wide [`crate::heartbeat`] task,
//! which closes a connection by putting a close request in its outbox, as either half can. The
//! writer then sends the Close frame and the reader waits for the peer's reply, each bounded by
//! [`CLOSE_LINGER`]: a peer that vanished cannot keep a connection alive.

mod cluster;
mod conversations;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_lite::{future, StreamExt};
use futures_util::SinkExt;
use smol::Timer;

use crate::admission::Slot;
use crate::auth;
use crate::hub::{now_ms, HubError, Member, MemberInfo, Room};
use crate::outbox::{CloseRequest, Outbox, PEER_CLOSED};
use crate::protocol::{self, close, Auth, ErrorCode, Limits, Rejection, Request, ServerFrame};
use crate::rules;
use crate::state::State;
use crate::store::{user_key, NewUser, Session as StoredSession, StoreError, User};
use crate::transport::ReadHalf;

/// How long closing may take before the socket is dropped regardless.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Rooms one connection may be in at once.
const MAX_ROOMS_PER_CONNECTION: usize = 256;

/// The one message for every failed login or resume, so it cannot tell which part was wrong.
const AUTH_FAILED: &str = "wrong user name, password or token (or the token expired)";

fn peer_closed() -> CloseRequest {
    CloseRequest {
        code: PEER_CLOSED,
        reason: "peer closed",
    }
}

fn closing(code: u16, reason: &'static str) -> CloseRequest {
    CloseRequest { code, reason }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
struct TokenBucket {
    tokens: f32,
    rate: f32,
    burst: f32,
    updated: Instant,
}

impl TokenBucket {
    fn new(rate: f32, burst: f32) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            rate,
            burst,
            updated: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.updated).as_secs_f32();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The reader half's state.
struct Session {
    state: Arc<State>,
    outbox: Arc<Outbox>,
    conn: u64,
    peer: SocketAddr,
    member: Option<Member>,
    /// This connection's place in the connection limits, the account's once logged in.
    slot: Slot,
    rooms: Vec<Arc<Room>>,
    /// When this connection last relayed `typing`, per room (see `conversations`).
    typing: Vec<(Arc<Room>, Instant)>,
    sends: TokenBucket,
    frames: TokenBucket,
    /// Refused frames a connection may accumulate before it counts as abuse (1008).
    strikes: TokenBucket,
    /// Cluster mode: this connection's sends queued in the node's log writer, at most
    /// `cluster::SENDS_IN_FLIGHT` (made on the first send).
    cluster_sends: Option<Arc<async_lock::Semaphore>>,
}

/// What handling a frame came to.
enum Handled {
    /// Answered; maybe the connection must close.
    Done(Option<CloseRequest>),
    /// A login, which waits for password hashing: the reader runs it (with its reference).
    Authenticate(Auth, String),
    /// Work to finish once what the frame wrote is on disk (with the frame's reference).
    AfterFlush(Deferred, String),
    /// `rooms`, built off the executor threads (with the frame's reference).
    Conversations(String),
    /// Cluster mode: a frame naming a room, or `rooms`, answered from Redis (with the
    /// frame's reference).
    Cluster(Request, String),
    /// `history`, read from the room's log (with the frame's reference).
    History {
        room: Arc<Room>,
        page: protocol::HistoryPage,
        limit: usize,
        reference: String,
    },
}

/// What a frame still has to do once its write is durable.
enum Deferred {
    /// Complete a join whose room had to be put on the user's list first: `joined` confirms
    /// the list too, so it survives a crash.
    Join {
        room: Arc<Room>,
        since: Option<u64>,
        /// The user's read marker there.
        read: u64,
    },
    /// Send a reply (`left`, once the room is off the list on disk).
    Reply(protocol::Encoded),
}

impl From<Option<CloseRequest>> for Handled {
    fn from(close: Option<CloseRequest>) -> Handled {
        Handled::Done(close)
    }
}

enum Event {
    Frame(Option<Result<Message, WsError>>),
    Closing(CloseRequest),
}

/// A connection that has logged in, ready for [`run`].
pub struct Established {
    session: Box<Session>,
    ws: Box<WebSocketStream<ReadHalf>>,
}

/// The first phase of a connection, from the upgrade until the login succeeds (or the connection
/// ends). It runs on the setup executor (see `executors`): in a reconnect storm, thousands of
/// logins then queue behind the traffic of users already in, not in front of it. Returns the
/// logged-in connection, to be served on the live executor by [`run`].
pub async fn login(
    ws: Box<WebSocketStream<ReadHalf>>,
    outbox: Arc<Outbox>,
    peer: SocketAddr,
    state: Arc<State>,
    slot: Slot,
) -> Option<Established> {
    let conn = state.next_conn_id();
    let config = &state.config;
    let rate = config.rate_per_sec as f32;
    let burst = config.rate_burst as f32;
    let session = Box::new(Session {
        state: state.clone(),
        outbox: outbox.clone(),
        conn,
        peer,
        member: None,
        slot,
        rooms: Vec::new(),
        typing: Vec::new(),
        sends: TokenBucket::new(rate, burst),
        // Other frames are bounded generously: they are cheap, but not free.
        frames: TokenBucket::new((rate * 5.0).max(50.0), (burst * 5.0).max(200.0)),
        strikes: TokenBucket::new(rate, (burst * 5.0).max(100.0)),
        cluster_sends: None,
    });
    state.track(conn, outbox);
    state.metrics.connections.inc();
    tracing::info!(%peer, conn, "connection opened");
    let mut established = Established { session, ws };
    match serve(&mut established, true).await {
        None => Some(established),
        Some(reason) => {
            established.session.end(reason);
            None
        }
    }
}

/// Serves a logged-in connection to its end. Never panics on client input; errors end this
/// connection only.
pub async fn run(mut established: Established) {
    if let Some(reason) = serve(&mut established, false).await {
        established.session.end(reason);
    }
}

/// Runs the reader and the writer side by side until the connection ends (returns why) or,
/// with `until_login`, until it logs in (returns `None`). The writer only wakes when a backlog
/// forms or a close is requested (frames normally go straight to the socket from whoever
/// produced them), so the reader's socket is polled only when the reader itself is woken.
async fn serve(established: &mut Established, until_login: bool) -> Option<CloseRequest> {
    let Established { session, ws } = established;
    let outbox = session.outbox.clone();
    let reader = async {
        let request = session.read(ws, until_login).await?;
        if request.code == PEER_CLOSED {
            // Hands tungstenite's reply to the peer's Close, if any, to the outbox.
            let _ = ws.flush().await;
        }
        outbox.close(request.clone());
        if request.code != PEER_CLOSED {
            // Our Close is on its way; the peer's reply ends the stream.
            let drain = async { while ws.next().await.is_some() {} };
            Box::pin(future::or(drain, async {
                Timer::after(CLOSE_LINGER).await;
            }))
            .await;
        }
        Some(request)
    };
    let mut reader = std::pin::pin!(reader);
    let mut writer = std::pin::pin!(outbox.run_writer(CLOSE_LINGER));
    let (mut read, mut written) = (None, None);
    let ended = future::poll_fn(|cx| {
        if read.is_none() {
            if let Poll::Ready(end) = reader.as_mut().poll(cx) {
                read = Some(end);
            }
        }
        if let Some(None) = read {
            // Logged in: the writer was only waiting; the next phase starts its own.
            return Poll::Ready(None);
        }
        if written.is_none() {
            if let Poll::Ready(request) = writer.as_mut().poll(cx) {
                written = Some(request);
            }
        }
        match (&read, &written) {
            (Some(Some(request)), Some(_)) => Poll::Ready(Some(request.clone())),
            _ => Poll::Pending,
        }
    })
    .await;
    ended.map(|request| outbox.closing().unwrap_or(request))
}

impl Session {
    /// Reads and handles frames until the connection should close; returns why.
    /// With `until_login`, returns `None` as soon as the connection has logged in.
    async fn read(
        &mut self,
        ws: &mut WebSocketStream<ReadHalf>,
        until_login: bool,
    ) -> Option<CloseRequest> {
        let auth_deadline = Instant::now() + self.state.config.auth_timeout;
        loop {
            let outbox = &self.outbox;
            // `or` prefers its first future: a requested close wins over pending frames.
            let event = future::or(
                async {
                    Event::Closing(future::poll_fn(|cx| outbox.poll_closing_reader(cx)).await)
                },
                async {
                    // Backpressure: read the next request only once our replies went out.
                    outbox.replies_drained().await;
                    Event::Frame(ws.next().await)
                },
            )
            .await;
            let message = match event {
                Event::Closing(request) => return Some(request),
                Event::Frame(None) => return Some(peer_closed()),
                Event::Frame(Some(Err(error))) => return Some(self.read_error(error)),
                Event::Frame(Some(Ok(message))) => message,
            };
            outbox.liveness.received();
            match message {
                Message::Text(text) => {
                    self.state.metrics.frames_in.inc();
                    let handled = match self.handle(&text) {
                        Handled::Done(close) => close,
                        // Boxed, like every once-per-connection path: its state would otherwise
                        // sit in every idle connection's future. Hashing can queue behind a
                        // login flood: the auth deadline still holds.
                        Handled::Authenticate(auth, reference) => {
                            Box::pin(future::or(self.authenticate(auth, &reference), async {
                                Timer::at(auth_deadline).await;
                                Some(closing(close::POLICY, "auth timeout"))
                            }))
                            .await
                        }
                        Handled::AfterFlush(deferred, reference) => {
                            Box::pin(self.after_flush(deferred, &reference)).await;
                            None
                        }
                        Handled::Conversations(reference) => {
                            Box::pin(self.conversations(&reference)).await;
                            None
                        }
                        Handled::History {
                            room,
                            page,
                            limit,
                            reference,
                        } => {
                            Box::pin(self.history(&room, page, limit, &reference)).await;
                            None
                        }
                        Handled::Cluster(request, reference) => {
                            Box::pin(self.cluster_request(request, &reference)).await;
                            None
                        }
                    };
                    if handled.is_some() {
                        return handled;
                    }
                    if until_login && self.member.is_some() {
                        return None;
                    }
                }
                Message::Binary(_) => {
                    self.reject(Rejection::new(
                        ErrorCode::BadRequest,
                        "binary frames are not supported",
                    ));
                    return Some(closing(close::UNSUPPORTED_DATA, "binary frame"));
                }
                Message::Close(_) => return Some(peer_closed()),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    fn read_error(&self, error: WsError) -> CloseRequest {
        match error {
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                closing(close::TOO_BIG, "message too big")
            }
            WsError::Utf8(_) => closing(close::INVALID_PAYLOAD, "invalid UTF-8"),
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
            | WsError::Io(_)
            | WsError::ConnectionClosed
            | WsError::AlreadyClosed => peer_closed(),
            WsError::Protocol(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "protocol error");
                closing(1002, "protocol error")
            }
            other => {
                tracing::debug!(peer = %self.peer, error = %other, "read error");
                peer_closed()
            }
        }
    }

    fn reject(&self, rejection: Rejection) {
        self.state.metrics.error(rejection.code);
        self.outbox.reply(rejection.encode());
    }

    /// Counts a refused frame; a connection that keeps flooding is closed with 1008.
    fn strike(&mut self) -> Option<CloseRequest> {
        (!self.strikes.take()).then(|| closing(close::POLICY, "flooding"))
    }

    /// Handles one text frame without waiting: everything but logging in is answered at once.
    /// Returns a close request if the connection must end.
    fn handle(&mut self, text: &str) -> Handled {
        let envelope = match protocol::envelope(text) {
            Ok(envelope) => envelope,
            Err(rejection) => {
                self.reject(rejection);
                return self.strike().into();
            }
        };
        let reference = Some(envelope.reference());
        if !self.frames.take() {
            self.reject(
                Rejection::new(ErrorCode::RateLimited, "too many frames").with_ref(reference),
            );
            return self.strike().into();
        }
        if self.member.is_none() && envelope.kind() != "auth" {
            self.reject(
                Rejection::new(ErrorCode::Unauthorized, "authenticate first").with_ref(reference),
            );
            return self.strike().into();
        }
        let frame = match envelope.request() {
            Ok(frame) => frame,
            Err(rejection) => {
                self.reject(rejection);
                return self.strike().into();
            }
        };
        let reference = Some(frame.reference.as_str());
        let Some(member) = self.member.clone() else {
            return match frame.request {
                Request::Auth(auth) => Handled::Authenticate(auth, frame.reference),
                // Only `auth` passes the check above; refuse anything else all the same.
                _ => {
                    self.reject(
                        Rejection::new(ErrorCode::Unauthorized, "authenticate first")
                            .with_ref(reference),
                    );
                    self.strike().into()
                }
            };
        };
        if self.state.hub.cluster().is_some() && Self::answered_by_cluster(&frame.request) {
            if let Err(refused) = self.spend_on(&member, &frame.request, reference) {
                return refused;
            }
            return Handled::Cluster(frame.request, frame.reference);
        }
        if let Some(room) = frame.request.room() {
            if let Err(rejection) = self.check_room_access(&member, room) {
                self.reject(rejection.with_ref(reference));
                return Handled::Done(None);
            }
        }
        let result = match frame.request {
            Request::Auth(_) => Err(Rejection::new(
                ErrorCode::BadRequest,
                "already authenticated",
            )),
            Request::Ping { t } => {
                self.outbox
                    .reply(protocol::encode(&ServerFrame::Pong { t: t.as_ref() }));
                Ok(())
            }
            Request::Join { room, since } => match self.join(&member, &room, since) {
                Ok(Some(deferred)) => return Handled::AfterFlush(deferred, frame.reference),
                Ok(None) => Ok(()),
                Err(rejection) => Err(rejection),
            },
            Request::Leave { room } => match self.leave(&member, &room) {
                Ok(left) => return Handled::AfterFlush(Deferred::Reply(left), frame.reference),
                Err(rejection) => Err(rejection),
            },
            Request::Send { room, text, cid } => {
                if let Err(refused) = self.spend_send(&member, text.len(), reference) {
                    return refused;
                }
                self.joined(&room).and_then(|room| {
                    self.state
                        .hub
                        .send(&room, &member, text, cid)
                        .map_err(|e| self.hub_error(e, room.name()))
                })
            }
            Request::History { room, page, limit } => match self.joined(&room) {
                Ok(room) => {
                    return Handled::History {
                        room,
                        page,
                        limit,
                        reference: frame.reference,
                    }
                }
                Err(rejection) => Err(rejection),
            },
            Request::Who { room } => self.joined(&room).map(|room| {
                self.outbox.reply(self.state.hub.members(&room));
            }),
            Request::Read { room, id } => self.mark_read(&member, &room, id),
            Request::Rooms => return Handled::Conversations(frame.reference),
            Request::Typing { room } => self.typing(&member, &room),
            Request::Edit {
                room,
                id,
                text,
                cid,
            } => {
                if let Err(refused) = self.spend_send(&member, text.len(), reference) {
                    return refused;
                }
                let edit = crate::store::Change::Edited {
                    text: Some(text),
                    replaced: None,
                };
                self.change_own(&member, &room, id, edit, cid)
            }
            Request::Delete { room, id, cid } => {
                if let Err(refused) = self.spend_send(&member, 0, reference) {
                    return refused;
                }
                self.change_own(&member, &room, id, crate::store::Change::Deleted, cid)
            }
        };
        if let Err(rejection) = result {
            self.reject(rejection.with_ref(reference));
        }
        Handled::Done(None)
    }

    /// Spends one send from the connection's rate and `bytes` from the account's allowance
    /// (sends, edits and deletions alike); refused, the frame is answered and counted as a
    /// strike.
    fn spend_send(
        &mut self,
        member: &Member,
        bytes: usize,
        reference: Option<&str>,
    ) -> Result<(), Handled> {
        if !self.sends.take() {
            self.reject(
                Rejection::new(ErrorCode::RateLimited, "sending too fast").with_ref(reference),
            );
            return Err(self.strike().into());
        }
        if let Err(refused) = self
            .state
            .account_limits
            .charge(&member.user_key, bytes, now_ms())
        {
            self.reject(
                Rejection::new(ErrorCode::RateLimited, refused.message()).with_ref(reference),
            );
            return Err(self.strike().into());
        }
        Ok(())
    }

    fn internal(&self, error: impl std::fmt::Display) -> Rejection {
        if self.state.healthy() {
            tracing::error!(peer = %self.peer, %error, "request failed");
        } else {
            // The write gate logged the cause once; failures it explains are expected.
            tracing::debug!(peer = %self.peer, %error, "request failed");
        }
        Rejection::new(
            ErrorCode::Internal,
            "the server could not complete the request",
        )
    }

    fn hub_error(&self, error: HubError, room: &str) -> Rejection {
        match error {
            HubError::RoomGone => Rejection::new(
                ErrorCode::NotJoined,
                format!("`{room}` was deleted; join it again"),
            ),
            // Counted and logged once per change of state by the write gate.
            HubError::Store(e @ StoreError::Unavailable { .. }) => {
                Rejection::new(ErrorCode::Internal, e.to_string())
            }
            HubError::TooManyRooms { per_hour } => Rejection::new(
                ErrorCode::RateLimited,
                format!("`{room}` does not exist and this account may create at most {per_hour} rooms per hour; try again later"),
            ),
            HubError::NotFound => Rejection::new(
                ErrorCode::NotFound,
                format!("`{room}` holds no message with that id"),
            ),
            HubError::Forbidden => Rejection::new(
                ErrorCode::Forbidden,
                "only the author may edit or delete a message",
            ),
            error @ HubError::Unloaded => self.internal(error),
            HubError::Cluster(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "cluster request failed");
                Rejection::new(
                    ErrorCode::Internal,
                    "the server cannot reach its shared store right now; retry (resend with the same cid)",
                )
            }
            HubError::Store(e) => self.internal(e),
        }
    }

    /// The joined room named `room`. Rooms an admin deleted are dropped first.
    fn joined(&mut self, room: &str) -> Result<Arc<Room>, Rejection> {
        self.rooms.retain(|r| !r.is_retired());
        self.rooms
            .iter()
            .find(|r| r.name() == room)
            .cloned()
            .ok_or_else(|| Rejection::new(ErrorCode::NotJoined, format!("join `{room}` first")))
    }

    /// Joins room `name`, or, if the room must first go on the user's list, writes that and
    /// returns the rest of the join to do once it is on disk.
    fn join(
        &mut self,
        member: &Member,
        name: &str,
        since: Option<u64>,
    ) -> Result<Option<Deferred>, Rejection> {
        let room = match self.joined(name) {
            Ok(room) => room,
            Err(_) => {
                self.room_allowance()?;
                self.load_room(member, name)?
            }
        };
        let store = &self.state.store;
        match store.membership(&member.user_key, name) {
            Ok(Some(m)) if m.left_at.is_none() => {
                self.enter(member, room, since, m.read).map(|()| None)
            }
            Ok(_) => {
                let listing = self.writes_possible().and_then(|()| {
                    store
                        .list_room(&member.user_key, name)
                        .map_err(|e| self.internal(e))
                });
                match listing {
                    Ok(read) => Ok(Some(Deferred::Join { room, since, read })),
                    Err(rejection) => {
                        self.rooms.retain(|r| !Arc::ptr_eq(r, &room));
                        Err(rejection)
                    }
                }
            }
            Err(e) => {
                self.rooms.retain(|r| !Arc::ptr_eq(r, &room));
                Err(self.internal(e))
            }
        }
    }

    /// Refuses a join of one more room when the connection is in as many as it may be.
    fn room_allowance(&self) -> Result<(), Rejection> {
        if self.rooms.len() >= MAX_ROOMS_PER_CONNECTION {
            return Err(Rejection::new(
                ErrorCode::BadRequest,
                format!("a connection may join at most {MAX_ROOMS_PER_CONNECTION} rooms"),
            ));
        }
        Ok(())
    }

    /// The hub's part of a join: `joined` (with the user's marker `read`), the replay and
    /// `synced`.
    fn enter(
        &mut self,
        member: &Member,
        room: Arc<Room>,
        since: Option<u64>,
        read: u64,
    ) -> Result<(), Rejection> {
        let name = room.name().to_owned();
        match self.state.hub.join(&room, member, since, read) {
            Err(HubError::Unloaded) => {
                // Unloaded for idleness between the lookup and the join (nobody was in it).
                self.rooms.retain(|r| !Arc::ptr_eq(r, &room));
                let room = self.load_room(member, &name)?;
                self.state.hub.join(&room, member, since, read)
            }
            other => other,
        }
        .map_err(|e| self.hub_error(e, &name))
    }

    /// Answers `history` with a page of the room's log.
    async fn history(
        &self,
        room: &Room,
        page: protocol::HistoryPage,
        limit: usize,
        reference: &str,
    ) {
        let hub = &self.state.hub;
        match hub
            .history(room, page, limit, self.state.config.reply_buffer)
            .await
        {
            Ok(reply) => self.outbox.reply(reply),
            Err(e) => self.reject(self.internal(e).with_ref(Some(reference))),
        }
    }

    /// Finishes a frame once the write it made is durable.
    async fn after_flush(&mut self, deferred: Deferred, reference: &str) {
        let durable = self.durable().await;
        let result = match (durable, deferred) {
            (Ok(()), Deferred::Join { room, since, read }) => match self.member.clone() {
                Some(member) if self.rooms.iter().any(|r| Arc::ptr_eq(r, &room)) => {
                    self.enter(&member, room, since, read)
                }
                _ => Ok(()),
            },
            (Err(rejection), Deferred::Join { room, .. }) => {
                self.rooms.retain(|r| !Arc::ptr_eq(r, &room));
                Err(rejection)
            }
            // What the reply confirms happened in memory whatever the disk said.
            (_, Deferred::Reply(frame)) => {
                self.outbox.reply(frame);
                Ok(())
            }
        };
        if let Err(rejection) = result {
            self.reject(rejection.with_ref(Some(reference)));
        }
    }

    /// Loads (or creates, within the account's allowance) room `name` and holds it.
    fn load_room(&mut self, member: &Member, name: &str) -> Result<Arc<Room>, Rejection> {
        let room = self
            .state
            .hub
            .room_for_join(name, &member.user_key)
            .map_err(|e| self.hub_error(e, name))?;
        self.rooms.push(room.clone());
        Ok(room)
    }

    /// Leaves room `name` at once (nothing of it reaches this connection afterwards) and takes
    /// it off the user's list; returns `left`, to send once that is on disk.
    fn leave(&mut self, member: &Member, name: &str) -> Result<protocol::Encoded, Rejection> {
        let room = self.joined(name)?;
        self.rooms.retain(|r| !Arc::ptr_eq(r, &room));
        self.typing.retain(|(r, _)| !Arc::ptr_eq(r, &room));
        // Parted before `left` is queued, so no message of the room can follow it.
        self.state.hub.part(&room, self.conn, true);
        // The leave itself happened; a list that cannot be written stays as it was.
        let unlist = || -> Result<(), StoreError> {
            let newest = self.state.hub.newest_id(name)?.unwrap_or(0);
            self.state.store.unlist_room(&member.user_key, name, newest)
        };
        let unlisted = self
            .writes_possible()
            .map_err(|r| r.message)
            .and_then(|()| unlist().map_err(|e| e.to_string()));
        if let Err(error) = unlisted {
            tracing::warn!(peer = %self.peer, room = name, %error, "left, but the conversation list keeps the room");
        }
        Ok(protocol::encode(&ServerFrame::Left { room: room.name() }))
    }

    /// Handles `auth`; on failure that ends the session returns the close request.
    async fn authenticate(&mut self, auth: Auth, reference: &str) -> Option<CloseRequest> {
        let fail = |session: &Self, code: ErrorCode, message: &str| {
            session.reject(Rejection::new(code, message).with_ref(Some(reference)));
            Some(closing(close::POLICY, "authentication failed"))
        };
        let state = self.state.clone();
        let (user, token) = match auth {
            Auth::Password {
                user,
                password,
                register: true,
            } => {
                let stay_open = |session: &Self, code: ErrorCode, message: &str| {
                    session.reject(Rejection::new(code, message).with_ref(Some(reference)));
                    None
                };
                if state.config.registration == crate::config::Registration::Closed {
                    return stay_open(
                        self,
                        ErrorCode::RegistrationClosed,
                        "registration is closed on this server",
                    );
                }
                if !rules::valid_user_name(&user) {
                    return stay_open(
                        self,
                        ErrorCode::BadRequest,
                        "user names are 1 to 32 characters of A-Z a-z 0-9 _ . -",
                    );
                }
                if let Some(problem) = rules::password_problem(&password) {
                    return stay_open(self, ErrorCode::BadRequest, problem);
                }
                if let Err(throttled) = state.throttle.check_registration(self.peer.ip()) {
                    state.metrics.auth_throttled.inc();
                    return stay_open(self, ErrorCode::RateLimited, &throttled.message());
                }
                match self.register(user, password).await {
                    Ok(Ok(user)) => match self.issue_token(&user).await {
                        Ok(token) => (user, token),
                        Err(rejection) => {
                            return stay_open(self, rejection.code, &rejection.message)
                        }
                    },
                    Ok(Err(NewUser::LookAlike)) => {
                        return stay_open(
                            self,
                            ErrorCode::UserExists,
                            "that name looks too much like an existing one",
                        )
                    }
                    Ok(Err(_)) => {
                        return stay_open(self, ErrorCode::UserExists, "that name is taken")
                    }
                    Err(rejection) => return stay_open(self, rejection.code, &rejection.message),
                }
            }
            Auth::Password { user, password, .. } => {
                let account = rules::valid_user_name(&user).then(|| user_key(&user));
                let account = account.as_deref();
                if let Err(throttled) = state.throttle.check_login(self.peer.ip(), account) {
                    state.metrics.auth_throttled.inc();
                    self.reject(
                        Rejection::new(ErrorCode::RateLimited, throttled.message())
                            .with_ref(Some(reference)),
                    );
                    return None;
                }
                let plausible = rules::valid_user_name(&user) && rules::valid_password(&password);
                let record = if plausible {
                    match state.accounts.user(&user).await {
                        Ok(record) => record,
                        Err(e) => {
                            return fail(self, ErrorCode::Internal, &self.internal(e).message)
                        }
                    }
                } else {
                    None
                };
                let hash = record.as_ref().map(|u| u.password_hash.clone());
                let matches = match state.passwords.verify(self.peer.ip(), password, hash).await {
                    Ok(matches) => {
                        state.metrics.password_hashes.inc();
                        matches
                    }
                    Err(e) => {
                        self.reject(
                            Rejection::new(ErrorCode::RateLimited, e.to_string())
                                .with_ref(Some(reference)),
                        );
                        return None;
                    }
                };
                let Some(user) = record.filter(|_| matches) else {
                    state.throttle.login_failed(self.peer.ip(), account);
                    return fail(self, ErrorCode::AuthFailed, AUTH_FAILED);
                };
                state.throttle.login_succeeded(&user_key(&user.name));
                if user.banned {
                    return fail(self, ErrorCode::Banned, "this account is banned");
                }
                match self.issue_token(&user).await {
                    Ok(token) => (user, token),
                    Err(rejection) => return fail(self, rejection.code, &rejection.message),
                }
            }
            Auth::Token(token) => {
                let session = state.accounts.session(&auth::token_hash(&token)).await;
                let user = match session {
                    Ok(Some(s)) if s.expires_ms > now_ms() => {
                        match state.accounts.user(&s.user_key).await {
                            Ok(user) => user.filter(|u| u.token_epoch == s.epoch || u.banned),
                            Err(e) => {
                                return fail(self, ErrorCode::Internal, &self.internal(e).message)
                            }
                        }
                    }
                    Ok(_) => None,
                    Err(e) => return fail(self, ErrorCode::Internal, &self.internal(e).message),
                };
                match user {
                    Some(user) if user.banned => {
                        return fail(self, ErrorCode::Banned, "this account is banned")
                    }
                    Some(user) => (user, token),
                    None => return fail(self, ErrorCode::AuthFailed, AUTH_FAILED),
                }
            }
        };
        let account: Arc<str> = user_key(&user.name).into();
        if let Err(refusal) = self.slot.authenticate(&account) {
            state.refused(refusal, self.peer);
            self.reject(
                Rejection::new(
                    ErrorCode::RateLimited,
                    format!(
                        "this account already has {} connections open, the most allowed; close one and try again",
                        state.config.max_connections_per_account
                    ),
                )
                .with_ref(Some(reference)),
            );
            return Some(closing(
                close::TRY_AGAIN_LATER,
                "too many connections for this account",
            ));
        }
        let member = Member::from(MemberInfo {
            conn: self.conn,
            user_key: account,
            name: user.name.as_str().into(),
            peer: self.peer,
            since_ms: now_ms(),
            account_created_ms: user.created_ms,
            outbox: self.outbox.clone(),
        });
        state.hub.register(&member);
        // A ban between our check and the registration would have missed this connection.
        if matches!(state.accounts.user(&user.name).await, Ok(Some(u)) if u.banned) {
            state.hub.unregister(self.conn);
            return fail(self, ErrorCode::Banned, "this account is banned");
        }
        self.member = Some(member);
        self.outbox.liveness.authenticated();
        let config = &state.config;
        self.outbox.reply(protocol::encode(&ServerFrame::Welcome {
            user: &user.name,
            token: &token,
            server_time: now_ms(),
            limits: Limits {
                max_text: crate::config::MAX_TEXT,
                max_frame: config.max_frame,
                rate_per_sec: config.rate_per_sec,
                rate_burst: config.rate_burst,
            },
            protocol: protocol::PROTOCOL_VERSION,
        }));
        None
    }

    /// Refuses a request that must write to the database while the write gate says a write
    /// would fail or hang (stuck or failed disk), instead of blocking this executor thread.
    fn writes_possible(&self) -> Result<(), Rejection> {
        let gate = self.state.hub.committer().gate();
        gate.admit_flush_waiter().map_err(|_| {
            Rejection::new(
                ErrorCode::Internal,
                format!(
                    "the server cannot write to its disk right now ({}); retry later",
                    gate.condition().as_str()
                ),
            )
        })
    }

    /// Creates an account, or says why the name cannot have one. Whether the name exists or not,
    /// this hashes the password through the same queue and waits for the same disk barrier, so
    /// the answer takes the same time and costs the same: `user_exists` cannot be probed faster
    /// than accounts can be created.
    async fn register(
        &self,
        name: String,
        password: String,
    ) -> Result<Result<User, NewUser>, Rejection> {
        self.writes_possible()?;
        let password_hash = match self.state.passwords.hash(self.peer.ip(), password).await {
            Ok(hash) => {
                self.state.metrics.password_hashes.inc();
                hash
            }
            Err(e @ auth::AuthError::Busy) => {
                return Err(Rejection::new(ErrorCode::RateLimited, e.to_string()))
            }
            Err(e) => return Err(self.internal(e)),
        };
        let user = User {
            name,
            password_hash,
            created_ms: now_ms(),
            banned: false,
            token_epoch: 0,
        };
        match self
            .state
            .accounts
            .register(&user)
            .await
            .map_err(|e| self.internal(e))?
        {
            NewUser::Created => Ok(Ok(user)),
            refused => {
                // A created account's answer waits for its session to reach the disk.
                self.durable().await?;
                Ok(Err(refused))
            }
        }
    }

    /// Stores a new session for `user` durably and returns its token.
    async fn issue_token(&self, user: &User) -> Result<String, Rejection> {
        self.writes_possible()?;
        let (token, hash) = auth::new_token().map_err(|e| self.internal(e))?;
        let now = now_ms();
        let ttl = self.state.config.token_ttl.as_millis() as u64;
        self.state
            .accounts
            .insert_session(
                &hash,
                &StoredSession {
                    user_key: user_key(&user.name),
                    created_ms: now,
                    expires_ms: now.saturating_add(ttl),
                    epoch: user.token_epoch,
                },
            )
            .await
            .map_err(|e| self.internal(e))?;
        self.durable().await?;
        Ok(token)
    }

    /// Waits until everything written so far is on disk (the next group commit's fsync).
    async fn durable(&self) -> Result<(), Rejection> {
        if self.state.accounts.durable_on_return() {
            return Ok(());
        }
        self.state
            .hub
            .committer()
            .barrier()
            .await
            .map_err(|e| self.internal(e))
    }

    /// The connection ended: leaves every room (presence grace applies), forgets it, logs why.
    fn end(&mut self, reason: CloseRequest) {
        self.typing.clear();
        for room in std::mem::take(&mut self.rooms) {
            self.state.hub.part(&room, self.conn, false);
        }
        if self.member.is_some() {
            self.state.hub.unregister(self.conn);
        }
        self.state.untrack(self.conn);
        self.state.metrics.connections.dec();
        tracing::info!(
            peer = %self.peer,
            conn = self.conn,
            user = self.member.as_ref().map(|m| &*m.name),
            code = reason.code,
            reason = reason.reason,
            "connection closed"
        );
    }
}
