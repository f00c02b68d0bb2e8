//! `users …` on a cluster: accounts, bans, deletion and read markers, in Redis; what concerns
//! live connections (a ban's or deletion's closing, a reset marker) reaches every node through
//! the notices channel.

use super::{done, failed, ClusterAdmin};
use crate::admin::conversations::{no_marker, reset_summary, ReadMarker, ReadMarkers};
use crate::admin::{
    check_hash, check_user_name, room_name_or_usage, user_info, AdminError, ErrorKind, Reply,
    UserDeleted,
};
use crate::cluster::keys;
use crate::cluster::memberships::read_state;
use crate::cluster::notices::Closing;
use crate::hub::now_ms;
use crate::rules;
use crate::store::{user_key, Membership, NewUser, User};

impl ClusterAdmin {
    /// `users list`.
    pub async fn users_list(&self) -> Result<Reply, AdminError> {
        let mut users = Vec::new();
        for key in self.scan(&keys::user("")).await? {
            if let Some(user) = self.accounts.user(&key).await.map_err(failed)? {
                users.push(user_info(&user));
            }
        }
        Ok(Reply::Users(users))
    }

    /// `users show`.
    pub async fn users_show(&self, name: &str) -> Result<Reply, AdminError> {
        Ok(Reply::User(user_info(&self.user_or_404(name).await?)))
    }

    /// `users add` (the CLI hashed the password).
    pub async fn users_add(&self, name: &str, password_hash: String) -> Result<Reply, AdminError> {
        check_user_name(name)?;
        check_hash(&password_hash)?;
        let user = User {
            name: name.to_string(),
            password_hash,
            created_ms: now_ms(),
            banned: false,
            token_epoch: 0,
        };
        if self.accounts.add_user(&user, false).await.map_err(failed)? != NewUser::Created {
            return Err(AdminError::new(
                ErrorKind::Conflict,
                format!("user `{name}` already exists; change the password with `chatd admin users passwd {name} --cluster …`"),
            ));
        }
        Ok(done(
            format!("created user {name}"),
            serde_json::json!({"user": name}),
        ))
    }

    /// `users passwd`: a new password; the user's tokens are revoked.
    pub async fn users_passwd(
        &self,
        name: &str,
        password_hash: String,
    ) -> Result<Reply, AdminError> {
        check_hash(&password_hash)?;
        let mut user = self.user_or_404(name).await?;
        user.password_hash = password_hash;
        user.token_epoch = user.token_epoch.wrapping_add(1);
        self.accounts.put_user(&user).await.map_err(failed)?;
        Ok(done(
            format!(
                "set the password of {}; their session tokens are revoked (connected clients stay connected until they reconnect)",
                user.name
            ),
            serde_json::json!({"user": user.name, "tokens_revoked": true}),
        ))
    }

    /// `users ban`: the account can neither log in nor resume, on any node; its tokens are
    /// revoked and its connections everywhere closed with 1008.
    pub async fn ban(&self, name: &str) -> Result<Reply, AdminError> {
        let mut user = self.user_or_404(name).await?;
        user.banned = true;
        user.token_epoch = user.token_epoch.wrapping_add(1);
        self.accounts.put_user(&user).await.map_err(failed)?;
        let closed = self
            .close_everywhere(&user_key(&user.name), Closing::Ban)
            .await?;
        Ok(done(
            format!(
                "banned {}: tokens revoked, {closed} live connection(s) closed across the cluster",
                user.name
            ),
            serde_json::json!({"user": user.name, "banned": true, "closed_connections": closed}),
        ))
    }

    /// `users unban`.
    pub async fn unban(&self, name: &str) -> Result<Reply, AdminError> {
        let mut user = self.user_or_404(name).await?;
        user.banned = false;
        self.accounts.put_user(&user).await.map_err(failed)?;
        Ok(done(
            format!(
                "unbanned {}; they can log in again with their password",
                user.name
            ),
            serde_json::json!({"user": user.name, "banned": false}),
        ))
    }

    /// `users delete`: the account, its sessions and cids, its read markers and list, its
    /// direct-message rooms, and with `delete_messages` every message it wrote (`deleted`
    /// events by `[system]`); its connections on every node are closed with 1008.
    pub async fn users_delete(
        &self,
        name: &str,
        delete_messages: bool,
    ) -> Result<Reply, AdminError> {
        let user = self.user_or_404(name).await?;
        let key = user_key(&user.name);
        if !self.accounts.delete_user(&user).await.map_err(failed)? {
            return Err(AdminError::new(
                ErrorKind::NotFound,
                format!("user `{}` was deleted meanwhile", user.name),
            ));
        }
        let closed = self.close_everywhere(&key, Closing::Delete).await?;
        // After the connections are closed: a login that read the record before it went has
        // issued its token by then.
        let sessions = self
            .accounts
            .remove_user_sessions(&key)
            .await
            .map_err(failed)?;
        let markers = self.memberships.remove_all(&key).await.map_err(failed)?;
        let mut removed = 0;
        if delete_messages {
            for (room, ids) in self.user_message_ids(&user.name).await? {
                removed += self.delete_as_admin(&room, &ids).await?.len();
            }
        }
        // A later account of the same name would otherwise be a participant of these
        // conversations and read them.
        let mut dm_rooms = Vec::new();
        for room in self.logs.room_names().await.map_err(failed)? {
            if let Ok(Some((a, b))) = rules::dm_participants(&room) {
                if [a, b].contains(&key.as_str()) {
                    dm_rooms.push(room);
                }
            }
        }
        for room in &dm_rooms {
            self.delete_room(room).await?;
        }
        Ok(UserDeleted {
            name: user.name,
            sessions,
            closed,
            messages_deleted: delete_messages.then_some(removed as u64),
            markers,
            dm_rooms,
        }
        .reply(" across the cluster"))
    }

    /// The rooms `user_key` has a marker in (only `room` if given: an error if it has none
    /// there), with the memberships.
    async fn markers_of(
        &self,
        user: &User,
        room: Option<&str>,
    ) -> Result<Vec<(String, Membership)>, AdminError> {
        let key = user_key(&user.name);
        match room {
            Some(room) => {
                room_name_or_usage(room)?;
                match self
                    .memberships
                    .membership(&key, room)
                    .await
                    .map_err(failed)?
                {
                    Some(m) => Ok(vec![(room.to_owned(), m)]),
                    None => Err(no_marker(&user.name, room)),
                }
            }
            None => {
                let mut all = self.memberships.memberships(&key).await.map_err(failed)?;
                all.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(all)
            }
        }
    }

    /// `users reads USER [--room ROOM]`.
    pub async fn users_reads(&self, name: &str, room: Option<&str>) -> Result<Reply, AdminError> {
        let user = self.user_or_404(name).await?;
        let key = user_key(&user.name);
        let mut rooms = Vec::new();
        for (room, membership) in self.markers_of(&user, room).await? {
            let marker = match self.logs.room_record(&room).await.map_err(failed)? {
                Some((no, _, newest, _)) => {
                    let (unread, listed) =
                        read_state(&self.logs, &key, &room, no, &membership, newest)
                            .await
                            .map_err(failed)?;
                    ReadMarker {
                        room,
                        read: membership.read,
                        newest: Some(newest),
                        unread: Some(unread),
                        listed,
                    }
                }
                None => ReadMarker::in_deleted_room(room, membership.read),
            };
            rooms.push(marker);
        }
        Ok(Reply::ReadMarkers(ReadMarkers {
            user: user.name,
            rooms,
        }))
    }

    /// `users reads reset USER [--room ROOM] [--to ID]`: sets markers to `to` (lowered to each
    /// room's newest id), backwards too; the user's connections on every node get the new
    /// marker.
    pub async fn users_reads_reset(
        &self,
        name: &str,
        room: Option<&str>,
        to: u64,
    ) -> Result<Reply, AdminError> {
        let user = self.user_or_404(name).await?;
        let key = user_key(&user.name);
        let mut reset = Vec::new();
        for (room, _) in self.markers_of(&user, room).await? {
            let newest = self
                .logs
                .room_record(&room)
                .await
                .map_err(failed)?
                .map_or(0, |(_, _, newest, _)| newest);
            let id = to.min(newest);
            if self
                .memberships
                .reset_read(&key, &room, id)
                .await
                .map_err(failed)?
            {
                reset.push(serde_json::json!({"room": room, "read": id}));
            }
        }
        Ok(done(
            format!(
                "{}; their connections on every node get the new marker(s)",
                reset_summary(&user.name, room, to, reset.len())
            ),
            serde_json::json!({"user": user.name, "to": to, "reset": reset}),
        ))
    }
}
