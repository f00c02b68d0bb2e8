//! `messages …` and `prune` on a cluster: reads of the room logs, and changes to them that
//! every node delivers in log order (deletions are `deleted` events by `[system]`).
//!
//! What differs from one server: a deleted message's edits are not listed by `messages show`
//! (their entries go with the message, texts and all); `messages list` reads every room's log
//! from its newest (or oldest) end, at most `--limit` matches per room.

use super::{done, failed, no_room, ClusterAdmin};
use crate::admin::conversations::{
    ChangeKind, HistoryEvent, MessageHistory, MessageNow, MessageState,
};
use crate::admin::{
    room_name_or_usage, rule_given, AdminError, ErrorKind, PruneReport, Reply, SYSTEM_AUTHOR,
};
use crate::cluster::log::{Appended, Body, Changer, LogEntry, Origin};
use crate::hub::now_ms;
use crate::store::maintenance::{Found, PruneRule, Search, CLOCK_SLACK_MS};
use crate::store::{user_key, Change, Event, Message, RoomRef};

/// Log entries read at a time by searches.
const PAGE: usize = 500;

impl ClusterAdmin {
    /// `messages delete [--room ROOM] IDS`: each a `deleted` event by `[system]`, delivered by
    /// every node to the room's members in order. Without `room`, every room's log is searched
    /// for each id. Nothing is deleted unless every id is found.
    pub async fn messages_delete(
        &self,
        room: Option<&str>,
        ids: &[u64],
    ) -> Result<Reply, AdminError> {
        if ids.is_empty() {
            return Err(AdminError::usage("name at least one message id"));
        }
        let named = match room {
            Some(room) => {
                room_name_or_usage(room)?;
                let record = self.logs.room(room).await.map_err(failed)?;
                Some(RoomRef {
                    name: room.into(),
                    no: record.ok_or_else(|| no_room(room))?.no,
                })
            }
            None => None,
        };
        // Find them all first: a missing id changes nothing.
        let mut targets: Vec<(RoomRef, u64)> = Vec::new();
        let mut missing = Vec::new();
        for &id in ids {
            let holder = match &named {
                Some(room) => Some(room.clone()),
                None => self.room_holding(id).await?,
            };
            let found = match holder {
                Some(room) => match self.entry(room.no, id).await? {
                    Some(LogEntry {
                        body: Body::Message(_),
                        ..
                    }) => Some(room),
                    _ => None,
                },
                None => None,
            };
            match found {
                Some(room) => targets.push((room, id)),
                None => missing.push(id.to_string()),
            }
        }
        if !missing.is_empty() {
            let place = room.map_or_else(String::new, |r| format!(" in `{r}`"));
            return Err(AdminError::new(
                ErrorKind::NotFound,
                format!(
                    "no message with id {}{place}; nothing was deleted (find ids with `chatd admin messages list --cluster …`)",
                    missing.join(", ")
                ),
            ));
        }
        let mut deleted = Vec::new();
        for (room, id) in &targets {
            for id in self.delete_as_admin(room, &[*id]).await? {
                deleted.push(serde_json::json!({"room": &*room.name, "id": id}));
            }
        }
        Ok(done(
            format!("deleted {} message(s)", deleted.len()),
            serde_json::json!({"deleted": deleted}),
        ))
    }

    /// Appends a `deleted` event by `[system]` for each of `ids` in `room`; returns the ids it
    /// deleted (not those already gone).
    pub(super) async fn delete_as_admin(
        &self,
        room: &RoomRef,
        ids: &[u64],
    ) -> Result<Vec<u64>, AdminError> {
        let changer = Changer {
            author_key: None,
            account_created_ms: 0,
            origin: Origin { node: 0, conn: 0 },
        };
        let mut deleted = Vec::new();
        for &id in ids {
            let event = Event {
                target: id,
                user: SYSTEM_AUTHOR.into(),
                ts: now_ms(),
                change: Change::Deleted,
            };
            let appended = self
                .logs
                .append_event(room, &changer, &event, None, u64::MAX)
                .await
                .map_err(failed)?;
            if let Appended::New { .. } = appended {
                deleted.push(id);
            }
        }
        Ok(deleted)
    }

    /// The entry with id `id` of room `room_no` as written, if it is in the log.
    async fn entry(&self, room_no: u32, id: u64) -> Result<Option<LogEntry>, AdminError> {
        let (found, _) = self
            .logs
            .written_entries_after(room_no, id.saturating_sub(1), id, 1)
            .await
            .map_err(failed)?;
        Ok(found.into_iter().find(|e| e.id == id))
    }

    /// The ids of the messages `name` wrote (any case), per room.
    pub(super) async fn user_message_ids(
        &self,
        name: &str,
    ) -> Result<Vec<(RoomRef, Vec<u64>)>, AdminError> {
        let mut out = Vec::new();
        for room in self.logs.room_names().await.map_err(failed)? {
            let Some((no, _, last_id, _)) = self.logs.room_record(&room).await.map_err(failed)?
            else {
                continue;
            };
            let mut ids = Vec::new();
            self.logs
                .scan_written(no, 0, last_id, |entry| {
                    if matches!(&entry.body, Body::Message(m) if m.user.eq_ignore_ascii_case(name))
                    {
                        ids.push(entry.id);
                    }
                    true
                })
                .await
                .map_err(failed)?;
            if !ids.is_empty() {
                out.push((
                    RoomRef {
                        name: room.into(),
                        no,
                    },
                    ids,
                ));
            }
        }
        Ok(out)
    }

    /// `messages list`: the messages matching `search`, newest first (or oldest first), across
    /// rooms in id order.
    pub async fn messages_list(&self, search: &Search) -> Result<Reply, AdminError> {
        let rooms = match &search.room {
            Some(room) => {
                room_name_or_usage(room)?;
                if self.logs.room(room).await.map_err(failed)?.is_none() {
                    return Err(no_room(room));
                }
                vec![room.clone()]
            }
            None => self.logs.room_names().await.map_err(failed)?,
        };
        let mut found = Vec::new();
        for room in rooms {
            found.extend(self.search_room(&room, search).await?);
        }
        if search.asc {
            found.sort_by_key(|f: &Found| f.id);
        } else {
            found.sort_by_key(|f: &Found| std::cmp::Reverse(f.id));
        }
        if search.limit != 0 {
            found.truncate(search.limit);
        }
        Ok(Reply::Messages(found))
    }

    /// The first `search.limit` matches of one room, in the search's direction.
    async fn search_room(&self, room: &str, search: &Search) -> Result<Vec<Found>, AdminError> {
        let Some((no, _, last_id, _)) = self.logs.room_record(room).await.map_err(failed)? else {
            return Ok(Vec::new());
        };
        let user = search.user.as_deref().map(user_key);
        let grep = search.grep.as_deref().map(str::to_lowercase);
        let matches = |m: &Message| {
            search.since_ms.is_none_or(|s| m.ts >= s)
                && search.until_ms.is_none_or(|u| m.ts <= u)
                && user.as_deref().is_none_or(|u| user_key(&m.user) == u)
                && grep
                    .as_deref()
                    .is_none_or(|g| m.text.to_lowercase().contains(g))
        };
        // Time bounds in the direction of the scan end it (with the clock's slack).
        let past_end = |m: &Message| {
            if search.asc {
                search
                    .until_ms
                    .is_some_and(|u| m.ts > u.saturating_add(CLOCK_SLACK_MS))
            } else {
                search
                    .since_ms
                    .is_some_and(|s| m.ts.saturating_add(CLOCK_SLACK_MS) < s)
            }
        };
        let mut found = Vec::new();
        let (mut after, mut before) = (0, last_id.saturating_add(1));
        loop {
            let (entries, more) = if search.asc {
                self.logs.entries_after(no, after, last_id, PAGE).await
            } else {
                let page = self.logs.entries_before(no, before, 0, PAGE).await;
                page.map(|p| {
                    let more = p.len() == PAGE;
                    (p, more)
                })
            }
            .map_err(failed)?;
            for entry in entries {
                (after, before) = (entry.id, entry.id);
                let Body::Message(message) = entry.body else {
                    continue;
                };
                if past_end(&message) {
                    return Ok(found);
                }
                if matches(&message) {
                    found.push(Found {
                        room: room.to_string(),
                        id: entry.id,
                        message,
                    });
                    if search.limit != 0 && found.len() >= search.limit {
                        return Ok(found);
                    }
                }
            }
            if !more {
                return Ok(found);
            }
        }
    }

    /// `messages show ROOM ID`: the message now and the events that changed it.
    pub async fn messages_show(&self, room: &str, id: u64) -> Result<Reply, AdminError> {
        room_name_or_usage(room)?;
        let Some((no, _, last_id, _)) = self.logs.room_record(room).await.map_err(failed)? else {
            return Err(no_room(room));
        };
        let written = self.entry(no, id).await?;
        let original = match written.map(|e| e.body) {
            Some(Body::Message(m)) => Some(m),
            Some(Body::Event(event)) => {
                return Err(AdminError::new(
                    ErrorKind::NotFound,
                    format!(
                        "room `{room}` has no message {id}; {id} is the seq of a change to message {}: try `chatd admin messages show {room} {}`",
                        event.target, event.target
                    ),
                ))
            }
            None => None,
        };
        let events = match &original {
            Some(_) => {
                let mut events = Vec::new();
                for seq in self.logs.edit_ids(no, id).await.map_err(failed)? {
                    if let Some(LogEntry {
                        body: Body::Event(event),
                        ..
                    }) = self.entry(no, seq).await?
                    {
                        events.push((seq, event));
                    }
                }
                events
            }
            None => self
                .deletion_of(no, id, last_id)
                .await?
                .into_iter()
                .collect(),
        };
        if original.is_none() && events.is_empty() {
            let hint = match self.room_holding(id).await? {
                Some(RoomRef { name: other, .. }) => format!(
                    "; it is in room `{other}`: try `chatd admin messages show {other} {id}`"
                ),
                None => "; find ids with `chatd admin messages list`".into(),
            };
            return Err(AdminError::new(
                ErrorKind::NotFound,
                format!("room `{room}` has no message {id} and no history of one{hint}"),
            ));
        }
        Ok(Reply::MessageHistory(history(room, id, original, events)))
    }

    /// The `deleted` event of message `id` in room `room_no`, if its log has one (read from the
    /// message's id on: events come after what they change).
    async fn deletion_of(
        &self,
        room_no: u32,
        id: u64,
        last_id: u64,
    ) -> Result<Option<(u64, Event)>, AdminError> {
        let mut deletion = None;
        self.logs
            .scan_written(room_no, id, last_id, |entry| match entry.body {
                Body::Event(event) if event.target == id && event.change == Change::Deleted => {
                    deletion = Some((entry.id, event));
                    false
                }
                _ => true,
            })
            .await
            .map_err(failed)?;
        Ok(deletion)
    }

    /// The room whose log holds entry `id`, if any.
    async fn room_holding(&self, id: u64) -> Result<Option<RoomRef>, AdminError> {
        for room in self.logs.room_names().await.map_err(failed)? {
            if let Some((no, _, _, _)) = self.logs.room_record(&room).await.map_err(failed)? {
                if self.entry(no, id).await?.is_some() {
                    return Ok(Some(RoomRef {
                        name: room.into(),
                        no,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// `prune --cluster`: removes old messages from every room's log (or `room`'s).
    pub async fn prune(
        &self,
        rule: PruneRule,
        room: Option<&str>,
        dry_run: bool,
    ) -> Result<Reply, AdminError> {
        rule_given(rule)?;
        let rooms = match room {
            Some(room) => {
                room_name_or_usage(room)?;
                if self.logs.room(room).await.map_err(failed)?.is_none() {
                    return Err(no_room(room));
                }
                vec![room.to_string()]
            }
            None => self.logs.room_names().await.map_err(failed)?,
        };
        let report: PruneReport = self
            .logs
            .prune(&rooms, rule, dry_run)
            .await
            .map_err(failed)?;
        Ok(Reply::Pruned(report))
    }
}

/// A message's history from its entry as written (if stored) and its events, oldest first.
fn history(
    room: &str,
    id: u64,
    original: Option<Message>,
    events: Vec<(u64, Event)>,
) -> MessageHistory {
    let mut author = original.as_ref().map(|m| m.user.clone());
    let mut text_before = original.as_ref().map(|m| m.text.clone());
    let mut now = original.map(|m| MessageNow {
        user: m.user,
        text: m.text,
        ts: m.ts,
        cid: m.cid,
        edited_ts: None,
    });
    let mut deleted = false;
    let events = events
        .into_iter()
        .map(|(seq, event)| {
            let by_admin = event.user == SYSTEM_AUTHOR;
            if author.is_none() && !by_admin {
                author = Some(event.user.clone());
            }
            let (change, text, replaced) = match event.change {
                Change::Edited { text, .. } => {
                    let replaced = std::mem::replace(&mut text_before, text.clone());
                    if let (Some(now), Some(text)) = (&mut now, &text) {
                        now.text = text.clone();
                        now.edited_ts = Some(event.ts);
                    }
                    (ChangeKind::Edited, text, replaced)
                }
                Change::Deleted => {
                    deleted = true;
                    (ChangeKind::Deleted, None, None)
                }
            };
            HistoryEvent {
                seq,
                ts: event.ts,
                user: event.user,
                change,
                text,
                replaced,
                scrubbed: false,
                by_admin,
            }
        })
        .collect();
    let state = MessageState::of(now.is_some(), deleted);
    MessageHistory {
        room: room.to_string(),
        id,
        state,
        author,
        message: now,
        events,
    }
}
