//! `online`, `kick` and `announce` on a cluster: requests every node answers through Redis
//! (its connections, how many it closed), and announcements appended to the room logs like any
//! message.

use std::time::{Duration, Instant};

use super::{done, failed, no_room, request_id, ClusterAdmin, REPORT_WAIT};
use crate::admin::{AdminError, Connection, ErrorKind, Reply, SYSTEM_AUTHOR};
use crate::cluster::keys;
use crate::cluster::log::{Appended, Origin};
use crate::cluster::notices::{Closing, Notice};
use crate::hub::now_ms;
use crate::rules;
use crate::store::{user_key, Message, RoomRef};

impl ClusterAdmin {
    /// `kick`: closes the user's connections on every node with 1008.
    pub async fn kick(&self, name: &str) -> Result<Reply, AdminError> {
        if !rules::valid_user_name(name) {
            return Err(AdminError::usage(format!(
                "`{name}` is not a user name (1 to 32 of A-Z a-z 0-9 _ . -)"
            )));
        }
        let closed = self
            .close_everywhere(&user_key(name), Closing::Kick)
            .await?;
        if closed == 0 {
            return Err(AdminError::new(
                ErrorKind::NotFound,
                format!("`{name}` is not connected to any node"),
            ));
        }
        Ok(done(
            format!("closed {closed} connection(s) of {name} with 1008 across the cluster (they may reconnect; use `users ban` to keep them out)"),
            serde_json::json!({"user": name, "closed_connections": closed}),
        ))
    }

    /// `online`: every node's connections, oldest first (the nodes that answered within
    /// [`REPORT_WAIT`]).
    pub async fn online(&self) -> Result<Reply, AdminError> {
        let request = request_id()?;
        let nodes = self
            .publish(&Notice::Online {
                request: request.clone(),
            })
            .await?;
        let key = keys::online(&request);
        let deadline = Instant::now() + REPORT_WAIT;
        loop {
            let reported: u64 = redis::cmd("LLEN")
                .arg(&key)
                .query_async(&mut self.link.commands())
                .await
                .map_err(|e| failed(e.into()))?;
            if reported >= nodes || Instant::now() >= deadline {
                break;
            }
            // Waiting on other processes' reports in Redis: poll with a deadline.
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        let arrays: Vec<String> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.link.commands())
            .await
            .map_err(|e| failed(e.into()))?;
        let mut all: Vec<Connection> = Vec::new();
        for array in arrays {
            let connections: Vec<Connection> = serde_json::from_str(&array).map_err(|e| {
                AdminError::failed(format!(
                    "a node answered `online` with something unreadable: {e}"
                ))
            })?;
            all.extend(connections);
        }
        all.sort_by_key(|c| c.since_ms);
        Ok(Reply::Online(all))
    }

    /// `announce`: a message by `[system]` in room `room`, or in every room that is not a
    /// direct-message one.
    pub async fn announce(&self, room: Option<&str>, text: &str) -> Result<Reply, AdminError> {
        if let Err(e) = rules::check_text(text) {
            return Err(AdminError::usage(format!("announcement {}", e.reason())));
        }
        let rooms = match room {
            Some(name) => vec![name.to_string()],
            None => self.announced_rooms().await?,
        };
        let mut posted = Vec::new();
        for name in rooms {
            let Some(record) = self.logs.room(&name).await.map_err(failed)? else {
                return Err(no_room(&name));
            };
            let message = Message::new(SYSTEM_AUTHOR.into(), text.into(), now_ms(), None);
            let room = RoomRef {
                name: name.as_str().into(),
                no: record.no,
            };
            let origin = Origin { node: 0, conn: 0 };
            let appended = self.logs.append(&room, "", &message, origin).await;
            // Anything but a new id: the room was deleted meanwhile, and nobody can see it.
            if let Appended::New { id, .. } = appended.map_err(failed)? {
                posted.push(serde_json::json!({"room": name, "id": id}));
            }
        }
        Ok(done(
            format!("announced in {} room(s)", posted.len()),
            serde_json::json!({"posted": posted}),
        ))
    }

    /// Every room's name but direct-message rooms', sorted.
    async fn announced_rooms(&self) -> Result<Vec<String>, AdminError> {
        let names = self.logs.room_names().await.map_err(failed)?;
        Ok(names
            .into_iter()
            .filter(|n| !matches!(rules::dm_participants(n), Ok(Some(_))))
            .collect())
    }
}
