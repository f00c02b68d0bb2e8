//! The admin commands that act on a cluster as a whole (`chatd admin … --cluster URL`): bans,
//! kicks and announcements reach the users on every node.
//!
//! They run in the CLI against Redis directly, with no node's admin socket involved. A ban is a
//! change of the user record in Redis (tokens revoked with the record's epoch, as on one server)
//! plus a request on the notices channel that every node answers by closing the user's
//! connections and reporting how many it closed; a kick is only that request; an announcement is
//! an ordinary message by `[system]` appended to each room's log, so every node delivers it in
//! order like any other.

mod export;
mod live;
mod messages;
mod rooms;
mod users;

use std::time::{Duration, Instant};

use super::accounts::ClusterAccounts;
use super::log::RoomLogs;
use super::memberships::ClusterMemberships;
use super::notices::{Closing, Notice};
use super::{keys, ClusterError, Link};
use crate::admin::{AdminError, Done, ErrorKind, Reply};
use crate::config::Durability;

/// How long a kick or ban waits for every node to report its closed connections.
const REPORT_WAIT: Duration = Duration::from_secs(3);

/// Cluster-wide admin commands, over one connection to the cluster's Redis.
pub struct ClusterAdmin {
    link: Link,
    logs: RoomLogs,
    accounts: ClusterAccounts,
    memberships: ClusterMemberships,
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

fn no_room(name: &str) -> AdminError {
    AdminError::new(
        ErrorKind::NotFound,
        format!("there is no room `{name}` in the cluster"),
    )
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
            memberships: ClusterMemberships::new(link.clone()),
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

    /// Every key with `prefix`, without the prefix, sorted.
    async fn scan(&self, prefix: &str) -> Result<Vec<String>, AdminError> {
        self.link.keys_with_prefix(prefix).await.map_err(failed)
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
}
