//! The protocol 1.1 frames of a connection: access to direct-message rooms, `read`, `rooms`,
//! `typing`, `edit` and `delete`.
//!
//! Every frame that names a room passes [`Session::check_room_access`] first, so the checks run
//! in the order the protocol fixes: the name's syntax (already checked when parsing), then for
//! a DM room whether the caller is one of its two users (`forbidden`) and whether the other one
//! exists (`not_found`), and only then whether the connection joined it (`not_joined`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Session;
use crate::hub::Member;
use crate::protocol::{ErrorCode, Rejection};
use crate::rules::dm_participants;
use crate::store::Change;

/// A connection relays `typing` for a room at most this often; clients send it every 3 s.
const TYPING_INTERVAL: Duration = Duration::from_secs(1);

/// For a DM room `name`, the other user's key (`forbidden` if `member` is not one of its two
/// users); `None` for any other room.
pub(super) fn dm_other<'a>(member: &Member, name: &'a str) -> Result<Option<&'a str>, Rejection> {
    let Ok(Some((a, b))) = dm_participants(name) else {
        return Ok(None);
    };
    if *member.user_key == *a {
        Ok(Some(b))
    } else if *member.user_key == *b {
        Ok(Some(a))
    } else {
        Err(Rejection::new(
            ErrorCode::Forbidden,
            format!("`{name}` is a conversation between two other users"),
        ))
    }
}

/// The answer for a DM room whose other user does not exist.
pub(super) fn no_such_user(other: &str) -> Rejection {
    Rejection::new(ErrorCode::NotFound, format!("there is no user `{other}`"))
}

impl Session {
    /// Whether `member` may name room `name` at all (see the module doc).
    pub(super) fn check_room_access(
        &mut self,
        member: &Member,
        name: &str,
    ) -> Result<(), Rejection> {
        let Some(other) = dm_other(member, name)? else {
            return Ok(());
        };
        match self.state.store.user(other) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(no_such_user(other)),
            Err(e) => Err(self.internal(e)),
        }
    }

    /// `read`: moves the user's marker forward; the echo comes once it is on disk.
    pub(super) fn mark_read(
        &mut self,
        member: &Member,
        room: &str,
        id: u64,
    ) -> Result<(), Rejection> {
        self.writes_possible()?;
        match self.state.hub.mark_read(member, room, id) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Rejection::new(
                ErrorCode::NotFound,
                format!("there is no room `{room}`"),
            )),
            Err(e) => Err(self.internal(e)),
        }
    }

    /// `rooms`: the user's conversation list, built on the blocking pool (it reads up to a
    /// thousand messages per room the user has not read, and must not stall the other
    /// connections of this executor thread meanwhile).
    pub(super) async fn conversations(&mut self, reference: &str) {
        let Some(member) = self.member.clone() else {
            return;
        };
        match self
            .state
            .hub
            .clone()
            .conversations_off_thread(member)
            .await
        {
            Ok(reply) => self.outbox.reply(reply),
            Err(e) => {
                let rejection = self.internal(e);
                self.reject(rejection.with_ref(Some(reference)));
            }
        }
    }

    /// `typing`: relayed to the room's other users, at most once per [`TYPING_INTERVAL`].
    pub(super) fn typing(&mut self, member: &Member, name: &str) -> Result<(), Rejection> {
        let room = self.joined(name)?;
        let now = Instant::now();
        let rooms = &self.rooms;
        self.typing
            .retain(|(r, _)| rooms.iter().any(|joined| Arc::ptr_eq(joined, r)));
        match self.typing.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &room)) {
            Some((_, last)) if now.duration_since(*last) < TYPING_INTERVAL => return Ok(()),
            Some((_, last)) => *last = now,
            None => self.typing.push((room.clone(), now)),
        }
        self.state.hub.typing(&room, member);
        Ok(())
    }

    /// `edit` or `delete` of the user's own message: acked and broadcast once durable.
    pub(super) fn change_own(
        &mut self,
        member: &Member,
        name: &str,
        id: u64,
        change: Change,
        cid: Option<String>,
    ) -> Result<(), Rejection> {
        let room = self.joined(name)?;
        self.state
            .hub
            .change_own(&room, member, id, change, cid)
            .map_err(|e| self.hub_error(e, name))
    }
}
