//! `export --cluster`: what the nodes share, in the export format of a single server.

use super::{done, failed, ClusterAdmin};
use crate::admin::{AdminError, Reply};
use crate::cluster::keys;
use crate::hub::now_ms;
use crate::store::maintenance::{message_line, session_line, unhex, user_line, Line};

impl ClusterAdmin {
    /// `export`: everything the nodes share, as export lines (the format of a single node's
    /// export, so `import` takes it into either kind of server). Each room's messages are
    /// those up to its newest id when its record was read; the header's `id_floor` is the id
    /// counter before anything else is read, raised to every room's newest id.
    pub async fn export(
        &self,
        with_secrets: bool,
        sink: &mut dyn FnMut(Line) -> Result<(), AdminError>,
    ) -> Result<Reply, AdminError> {
        let floor: Option<u64> = redis::cmd("GET")
            .arg(keys::NEXT_ID)
            .query_async(&mut self.link.commands())
            .await
            .map_err(|e| failed(e.into()))?;
        let mut rooms = Vec::new();
        for name in self.logs.room_names().await.map_err(failed)? {
            if let Some(record) = self.logs.room_record(&name).await.map_err(failed)? {
                rooms.push((name, record));
            }
        }
        let id_floor = rooms
            .iter()
            .map(|(_, (_, _, last, _))| *last)
            .fold(floor.unwrap_or(0), u64::max);
        sink(Line::Header {
            format: "chatd-export".into(),
            version: 1,
            exported_ms: now_ms(),
            id_floor,
        })?;
        let mut counts = [0u64; 4];
        for key in self.scan(&keys::user("")).await? {
            let Some(user) = self.accounts.user(&key).await.map_err(failed)? else {
                continue;
            };
            counts[0] += 1;
            sink(user_line(user, with_secrets))?;
        }
        if with_secrets {
            for hash in self.scan(&keys::session(&[])).await? {
                let Some(bytes) = unhex(&hash) else {
                    continue;
                };
                let Some(session) = self.accounts.session(&bytes).await.map_err(failed)? else {
                    continue; // expired meanwhile
                };
                counts[1] += 1;
                sink(session_line(&bytes, session))?;
            }
        }
        for (name, (_, created_ms, last_id, count)) in &rooms {
            counts[2] += 1;
            sink(Line::Room {
                name: name.clone(),
                created_ms: *created_ms,
                last_id: *last_id,
                count: *count,
            })?;
        }
        for (name, (no, _, last_id, _)) in &rooms {
            let mut after = 0;
            loop {
                let page = self
                    .logs
                    .messages_after(*no, after, *last_id, 500)
                    .await
                    .map_err(failed)?;
                for m in page.messages {
                    after = m.id;
                    counts[3] += 1;
                    sink(message_line(name, m))?;
                }
                if !page.more {
                    break;
                }
            }
        }
        Ok(done(
            format!(
                "exported {} user(s), {} session(s), {} room(s), {} message(s)",
                counts[0], counts[1], counts[2], counts[3]
            ),
            serde_json::json!({"users": counts[0], "sessions": counts[1], "rooms": counts[2], "messages": counts[3], "with_secrets": with_secrets}),
        ))
    }
}
