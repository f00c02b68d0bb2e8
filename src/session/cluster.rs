//! Cluster mode's answers to a connection's room frames and `rooms`: the same frames, the same
//! checks in the same order as in single-node mode, with rooms, memberships and accounts read
//! from and written to Redis. Each is awaited before the connection's next frame is read, but
//! for a `send`, which only waits for its place in the node's log writer (`cluster::writer`):
//! the writer runs appends in queue order, so a connection's sends are still accepted in the
//! order it sent them, and their refusals come in that order too.
//!
//! Acks and broadcasts of sends, edits and deletions come from the node's feed, in log order
//! (see `hub::cluster`); what is answered here is only what the writer's node alone decides:
//! errors, a repeated cid's original ack, `joined` and its replay, `left`, `history`,
//! `members`, `rooms`.

use std::sync::Arc;

use super::conversations::{dm_other, no_such_user};
use super::{Handled, Session};
use crate::cluster::Cluster;
use crate::hub::{HubError, Member, Room, WRITE_FAILED};
use crate::protocol::{self, ErrorCode, Rejection, Request, ServerFrame};
use crate::store::Change;

/// A connection's sends that may wait in the node's log writer at once: the connection's next
/// frames are read meanwhile, so a client with several sends in flight has them in one
/// pipeline, not one per round trip to Redis.
pub(super) const SENDS_IN_FLIGHT: usize = 32;

impl Session {
    /// The permits for this connection's sends in the node's log writer.
    fn sends_in_flight(&mut self) -> Arc<async_lock::Semaphore> {
        self.cluster_sends
            .get_or_insert_with(|| Arc::new(async_lock::Semaphore::new(SENDS_IN_FLIGHT)))
            .clone()
    }

    /// Whether cluster mode answers `request` here (everything but `auth` and `ping`).
    pub(super) fn answered_by_cluster(request: &Request) -> bool {
        request.room().is_some() || matches!(request, Request::Rooms)
    }

    /// Charges a send, edit or deletion to the connection's and the account's rates, as
    /// single-node mode does before anything else.
    pub(super) fn spend_on(
        &mut self,
        member: &Member,
        request: &Request,
        reference: Option<&str>,
    ) -> Result<(), Handled> {
        match request {
            Request::Send { text, .. } | Request::Edit { text, .. } => {
                self.spend_send(member, text.len(), reference)
            }
            Request::Delete { .. } => self.spend_send(member, 0, reference),
            _ => Ok(()),
        }
    }

    /// Answers a frame that cluster mode handles (see [`Session::answered_by_cluster`]).
    pub(super) async fn cluster_request(&mut self, request: Request, reference: &str) {
        let (Some(member), Some(cluster)) =
            (self.member.clone(), self.state.hub.cluster().cloned())
        else {
            return;
        };
        let result = match request.room() {
            Some(room) => self.cluster_access(&member, &cluster, room).await,
            None => Ok(()),
        };
        let result = match result {
            Ok(()) => self.cluster_answer(&member, &cluster, request).await,
            Err(rejection) => Err(rejection),
        };
        if let Err(rejection) = result {
            self.reject(rejection.with_ref(Some(reference)));
        }
    }

    async fn cluster_answer(
        &mut self,
        member: &Member,
        cluster: &Arc<Cluster>,
        request: Request,
    ) -> Result<(), Rejection> {
        let hub = self.state.hub.clone();
        match request {
            Request::Join { room, since } => self.cluster_join(member, cluster, &room, since).await,
            Request::Leave { room } => self.cluster_leave(member, cluster, &room).await,
            Request::Send { room, text, cid } => {
                let room = self.joined(&room)?;
                // Answered once Redis replied; meanwhile the next frames are read, up to
                // [`SENDS_IN_FLIGHT`] sends of this connection in the node's writer.
                let permit = self.sends_in_flight().acquire_arc().await;
                hub.send_to_cluster(cluster, &room, member, text, cid, move || drop(permit))
                    .await
                    .map_err(|e| self.write_error(e, room.name()))
            }
            Request::History { room, page, limit } => {
                let room = self.joined(&room)?;
                let reply = hub
                    .history(&room, page, limit, self.state.config.reply_buffer)
                    .await
                    .map_err(|e| self.internal(e))?;
                self.outbox.reply(reply);
                Ok(())
            }
            Request::Who { room } => {
                let room = self.joined(&room)?;
                self.outbox.reply(hub.members(&room));
                Ok(())
            }
            Request::Read { room, id } => {
                match hub.mark_read_in_cluster(cluster, member, &room, id).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(Rejection::new(
                        ErrorCode::NotFound,
                        format!("there is no room `{room}`"),
                    )),
                    Err(e) => Err(self.hub_error(e, &room)),
                }
            }
            Request::Rooms => {
                let reply = hub
                    .conversations_in_cluster(cluster, member)
                    .await
                    .map_err(|e| self.hub_error(e, ""))?;
                self.outbox.reply(reply);
                Ok(())
            }
            Request::Typing { room } => self.typing(member, &room),
            Request::Edit {
                room,
                id,
                text,
                cid,
            } => {
                let edit = Change::Edited {
                    text: Some(text),
                    replaced: None,
                };
                self.cluster_change(member, cluster, &room, id, edit, cid)
                    .await
            }
            Request::Delete { room, id, cid } => {
                self.cluster_change(member, cluster, &room, id, Change::Deleted, cid)
                    .await
            }
            // Never routed here (see `answered_by_cluster`).
            Request::Auth(_) | Request::Ping { .. } => Ok(()),
        }
    }

    /// [`Session::check_room_access`] with the other user of a DM room looked up in Redis.
    async fn cluster_access(
        &self,
        member: &Member,
        cluster: &Cluster,
        name: &str,
    ) -> Result<(), Rejection> {
        let Some(other) = dm_other(member, name)? else {
            return Ok(());
        };
        match cluster.accounts.user(other).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(no_such_user(other)),
            Err(e) => Err(self.hub_error(e.into(), name)),
        }
    }

    /// Joins room `name`: loaded from Redis unless this node has it, put on the user's list
    /// (in Redis: durable when it answers), then `joined`, the replay and `synced`; a `since`
    /// beyond what this node delivered is checked against Redis first.
    async fn cluster_join(
        &mut self,
        member: &Member,
        cluster: &Cluster,
        name: &str,
        since: Option<u64>,
    ) -> Result<(), Rejection> {
        let room = match self.joined(name) {
            Ok(room) => room,
            Err(_) => {
                self.room_allowance()?;
                let room = self
                    .state
                    .hub
                    .load_cluster_room(cluster, name, &member.user_key)
                    .await
                    .map_err(|e| self.hub_error(e, name))?;
                self.rooms.push(room.clone());
                room
            }
        };
        let ready = async {
            let read = cluster
                .memberships
                .list_room(&member.user_key, name)
                .await?;
            let since = (self.state.hub)
                .since_in_cluster(cluster, &room, since)
                .await?;
            Ok::<_, HubError>((since, read))
        };
        match ready.await {
            Ok((since, read)) => self.enter(member, room, since, read),
            Err(e) => {
                self.rooms.retain(|r| !Arc::ptr_eq(r, &room));
                Err(self.hub_error(e, name))
            }
        }
    }

    /// Leaves room `name` at once and takes it off the user's list; `left` once Redis has
    /// that (a list that cannot be written stays as it was, as in single-node mode) and the
    /// user's `offline`, if this was their last connection there.
    async fn cluster_leave(
        &mut self,
        member: &Member,
        cluster: &Cluster,
        name: &str,
    ) -> Result<(), Rejection> {
        let room = self.joined(name)?;
        self.rooms.retain(|r| !Arc::ptr_eq(r, &room));
        self.typing.retain(|(r, _)| !Arc::ptr_eq(r, &room));
        let hub = self.state.hub.clone();
        hub.part(&room, self.conn, true);
        let unlisted = match hub.newest_in_cluster(cluster, name).await {
            Ok(newest) => cluster
                .memberships
                .unlist_room(&member.user_key, name, newest.unwrap_or(0))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = unlisted {
            tracing::warn!(peer = %self.peer, room = name, %error, "left, but the conversation list keeps the room");
        }
        // As a join's `joined`: once `left` arrives, no node that loads the room lists the user.
        cluster.presence_sent().await;
        self.outbox
            .reply(protocol::encode(&ServerFrame::Left { room: room.name() }));
        Ok(())
    }

    /// Edits or deletes the member's message `target` of joined room `name`.
    async fn cluster_change(
        &mut self,
        member: &Member,
        cluster: &Cluster,
        name: &str,
        target: u64,
        change: Change,
        cid: Option<String>,
    ) -> Result<(), Rejection> {
        let room: Arc<Room> = self.joined(name)?;
        let hub = self.state.hub.clone();
        hub.change_in_cluster(cluster, &room, member, target, change, cid)
            .await
            .map_err(|e| self.write_error(e, name))
    }

    /// The refusal of a send, edit or deletion whose append failed ([`WRITE_FAILED`] for a Redis
    /// error: it may have been stored).
    fn write_error(&self, error: HubError, room: &str) -> Rejection {
        match error {
            HubError::Cluster(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "cluster write failed");
                Rejection::new(ErrorCode::Internal, WRITE_FAILED)
            }
            other => self.hub_error(other, room),
        }
    }
}
