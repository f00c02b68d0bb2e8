//! The admin commands that act on a cluster as a whole (`chatd admin … --cluster URL`): bans,
//! kicks and announcements reach the users on every node.
//!
//! They run in the CLI against Redis directly, with no node's admin socket involved. A ban is a
//! change of the user record in Redis (tokens revoked with the record's epoch, as on one server)
//! plus a request on the notices channel that every node answers by closing the user's
//! connections and reporting how many it closed; a kick is only that request; an announcement is
//! an ordinary message by `[system]` appended to each room's log, so every node delivers it in
//! order like any other.

use std::time::{Duration, Instant};

use super::accounts::ClusterAccounts;
use super::log::{Appended, Origin, RoomLogs};
use super::notices::{Closing, Notice};
use super::{keys, ClusterError, Link};
use crate::admin::{AdminError, Connection, Done, ErrorKind, Reply, SYSTEM_AUTHOR};
use crate::config::Durability;
use crate::hub::now_ms;
use crate::rules;
use crate::store::{user_key, Message, RoomRef};

/// How long a kick or ban waits for every node to report its closed connections.
const REPORT_WAIT: Duration = Duration::from_secs(3);

/// Cluster-wide admin commands, over one connection to the cluster's Redis.
pub struct ClusterAdmin {
    link: Link,
    logs: RoomLogs,
    accounts: ClusterAccounts,
}

fn failed(e: ClusterError) -> AdminError {
    AdminError::failed(format!("Redis: {e}"))
}

/// A random id for a request the nodes answer in Redis.
fn request_id() -> Result<String, AdminError> {
    let mut request = [0u8; 8];
    getrandom::fill(&mut request).map_err(|e| AdminError::failed(e.to_string()))?;
    Ok(format!("{:016x}", u64::from_le_bytes(request)))
}

fn done(summary: String, details: serde_json::Value) -> Reply {
    Reply::Done(Done { summary, details })
}

impl ClusterAdmin {
    /// Connects to the cluster's Redis.
    pub async fn connect(url: &str) -> Result<ClusterAdmin, AdminError> {
        let link = Link::connect(url, Durability::Strict)
            .await
            .map_err(|e| AdminError::failed(e.to_string()))?;
        Ok(ClusterAdmin {
            logs: RoomLogs::new(link.clone(), 48 * 3600),
            accounts: ClusterAccounts::new(link.clone()),
            link,
        })
    }

    async fn user_or_404(&self, name: &str) -> Result<crate::store::User, AdminError> {
        self.accounts
            .user(name)
            .await
            .map_err(failed)?
            .ok_or_else(|| {
                AdminError::new(
                    ErrorKind::NotFound,
                    format!("there is no user `{name}` in the cluster"),
                )
            })
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

    /// Publishes `notice`; returns how many nodes received it.
    async fn publish(&self, notice: &Notice) -> Result<u64, AdminError> {
        redis::cmd("PUBLISH")
            .arg(keys::NOTICES)
            .arg(notice.payload())
            .query_async(&mut self.link.commands())
            .await
            .map_err(|e| failed(e.into()))
    }

    /// Asks every node to close `user_key`'s connections; returns how many they closed (those
    /// that reported within [`REPORT_WAIT`]).
    async fn close_everywhere(&self, user_key: &str, how: Closing) -> Result<u64, AdminError> {
        let request = request_id()?;
        let notice = Notice::Close {
            request: request.clone(),
            user_key: user_key.to_string(),
            how,
        };
        let nodes = self.publish(&notice).await?;
        let deadline = Instant::now() + REPORT_WAIT;
        loop {
            let (reported, closed): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
                .arg(keys::closing(&request))
                .arg("nodes")
                .arg("closed")
                .query_async(&mut self.link.commands())
                .await
                .map_err(|e| failed(e.into()))?;
            if reported.unwrap_or(0) >= nodes || Instant::now() >= deadline {
                return Ok(closed.unwrap_or(0));
            }
            // Waiting on other processes' reports in Redis: poll with a deadline.
            smol::Timer::after(Duration::from_millis(20)).await;
        }
    }

    /// `announce`: a message by `[system]` in room `room`, or in every room that is not a
    /// direct-message one.
    pub async fn announce(&self, room: Option<&str>, text: &str) -> Result<Reply, AdminError> {
        if let Err(e) = rules::check_text(text) {
            return Err(AdminError::usage(format!("announcement {}", e.reason())));
        }
        let rooms = match room {
            Some(name) => vec![name.to_string()],
            None => self.room_names().await?,
        };
        let mut posted = Vec::new();
        for name in rooms {
            let Some(record) = self.logs.room(&name).await.map_err(failed)? else {
                return Err(AdminError::new(
                    ErrorKind::NotFound,
                    format!("there is no room `{name}` in the cluster"),
                ));
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
    async fn room_names(&self) -> Result<Vec<String>, AdminError> {
        let prefix = keys::room("");
        let mut names = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.link.commands())
                .await
                .map_err(|e| failed(e.into()))?;
            names.extend(
                found
                    .into_iter()
                    .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
                    .filter(|n| !matches!(rules::dm_participants(n), Ok(Some(_)))),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}
