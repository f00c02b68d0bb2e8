//! Removing old messages from the room logs in Redis: `chatd admin prune --cluster` and every
//! node's `--retention` / `--retention-per-room`.
//!
//! The rules are the embedded store's (`Store::prune_room`): a message goes if it is older than
//! the time rule or beyond the newest `keep_last` of its room, with its edits' entries, its
//! current text and its edit index entry, and the room's count drops; `deleted` events stay,
//! so `messages show` can still say what became of an id.
//!
//! Invariants:
//! - Only ids up to the room's newest when its scan began are candidates: what is appended
//!   meanwhile is never removed by this pass.
//! - Each chunk is removed by one script that checks the room's number (a room deleted and
//!   created again is left alone) and removes a message chosen only for `keep_last` while the
//!   room still holds more than `keep_last`. Every node runs retention, so several may prune a
//!   room at once: none of them removes more than the rule says.

use std::sync::OnceLock;

use redis::Script;

use super::log::{Body, RoomLogs, REMOVE_MESSAGE};
use super::{keys, ClusterError};
use crate::admin::PruneReport;
use crate::store::maintenance::{PruneRule, PrunedRoom, CHUNK, CLOCK_SLACK_MS};

/// Removes messages of one room. KEYS: record, log, overlay, edit index. ARGV: the room's number,
/// `keep_last` ('' for none), then pairs of an id and '1' if it is old enough to go whatever
/// the count, '0' if it goes only while the room holds more than `keep_last`. Replies how many
/// it removed (ids that are no longer messages are skipped).
const PRUNE: &str = r"
if redis.call('HGET', KEYS[1], 'no') ~= ARGV[1] then return 0 end
local keep = tonumber(ARGV[2])
local removed = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
  if ARGV[i + 1] == '1' or (keep and count > keep) then
    local found = redis.call('XRANGE', KEYS[2], id .. '-0', id .. '-0')
    if #found == 1 then
      local raw, kind = found[1][2], nil
      for j = 1, #raw, 2 do
        if raw[j] == 'k' then kind = raw[j + 1] end
      end
      if kind == 'm' then
        remove_message(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id)
        removed = removed + 1
      end
    end
  end
end
return removed
";

fn prune_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(&format!("{REMOVE_MESSAGE}{PRUNE}")))
}

/// Log entries read at a time while looking for what to remove.
const SCAN_PAGE: usize = 500;

impl RoomLogs {
    /// Applies `rule` to each of `rooms` (names; rooms that do not exist are skipped), or with
    /// `dry_run` only counts what would go.
    pub(crate) async fn prune(
        &self,
        rooms: &[String],
        rule: PruneRule,
        dry_run: bool,
    ) -> Result<PruneReport, ClusterError> {
        let mut report = PruneReport {
            dry_run,
            rule,
            removed: 0,
            rooms: Vec::new(),
        };
        for name in rooms {
            if let Some(pruned) = self.prune_room(name, rule, dry_run).await? {
                if pruned.removed > 0 {
                    report.removed += pruned.removed;
                    report.rooms.push(pruned);
                }
            }
        }
        Ok(report)
    }

    /// Applies `rule` to room `name`; `None` if there is no such room.
    async fn prune_room(
        &self,
        name: &str,
        rule: PruneRule,
        dry_run: bool,
    ) -> Result<Option<PrunedRoom>, ClusterError> {
        let Some((no, _, last_id, count)) = self.room_record(name).await? else {
            return Ok(None);
        };
        let mut report = PrunedRoom {
            room: name.to_string(),
            ..PrunedRoom::default()
        };
        // Beyond the newest `keep_last`, counted from the oldest: appends meanwhile only add
        // newer messages.
        let mut excess = rule.keep_last.map_or(0, |keep| count.saturating_sub(keep));
        let mut chunk: Vec<(u64, bool)> = Vec::new();
        let mut removed = 0;
        let mut after = 0;
        'scan: loop {
            let (entries, more) = self
                .written_entries_after(no, after, last_id, SCAN_PAGE)
                .await?;
            for entry in entries {
                after = entry.id;
                let Body::Message(message) = &entry.body else {
                    continue;
                };
                let ts = message.ts;
                let over_count = excess > 0;
                let too_old = rule.before_ms.is_some_and(|b| ts < b);
                if !over_count && !too_old {
                    if rule
                        .before_ms
                        .is_none_or(|b| ts >= b.saturating_add(CLOCK_SLACK_MS))
                    {
                        break 'scan; // nothing newer can qualify
                    }
                    continue;
                }
                excess = excess.saturating_sub(1);
                report.removed += 1;
                report.first_id.get_or_insert(entry.id);
                report.last_id = Some(entry.id);
                report.oldest_ts = Some(report.oldest_ts.map_or(ts, |o| o.min(ts)));
                report.newest_ts = Some(report.newest_ts.map_or(ts, |n| n.max(ts)));
                if !dry_run {
                    chunk.push((entry.id, too_old));
                    if chunk.len() == CHUNK {
                        removed += self.remove(name, no, rule.keep_last, &chunk).await?;
                        chunk.clear();
                    }
                }
            }
            if !more {
                break;
            }
        }
        if !chunk.is_empty() {
            removed += self.remove(name, no, rule.keep_last, &chunk).await?;
        }
        let now = self.room_record(name).await?.map_or(0, |(_, _, _, c)| c);
        if dry_run {
            report.remaining = now.saturating_sub(report.removed);
        } else {
            report.removed = removed;
            report.remaining = now;
        }
        Ok(Some(report))
    }

    /// Removes `chunk` (ids, and whether each is old enough to go whatever the count).
    async fn remove(
        &self,
        name: &str,
        no: u32,
        keep_last: Option<u64>,
        chunk: &[(u64, bool)],
    ) -> Result<u64, ClusterError> {
        let mut script = prune_script().prepare_invoke();
        script
            .key(keys::room(name))
            .key(keys::log(no))
            .key(keys::overlay(no))
            .key(keys::edits(no))
            .arg(no)
            .arg(keep_last.map(|k| k.to_string()).unwrap_or_default());
        for &(id, old) in chunk {
            script.arg(id).arg(if old { "1" } else { "0" });
        }
        Ok(script.invoke_async(&mut self.link().commands()).await?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::log::{Appended, Changer, Origin};
    use super::super::testing::Redis as TestRedis;
    use super::super::Link;
    use super::*;
    use crate::config::Durability;
    use crate::store::{Change, Event, Message, RoomRef};

    const ORIGIN: Origin = Origin { node: 1, conn: 1 };

    fn logs(redis: &TestRedis) -> RoomLogs {
        let link = smol::block_on(Link::connect(&redis.url(), Durability::Strict)).expect("link");
        RoomLogs::new(link, 3600)
    }

    /// Room `name` with one message per timestamp of `times`; returns it and the ids.
    async fn room_with(logs: &RoomLogs, name: &str, times: &[u64]) -> (RoomRef, Vec<u64>) {
        let state = logs.ensure_room(name, 0).await.expect("room");
        let room = RoomRef {
            name: Arc::from(name),
            no: state.no,
        };
        let mut ids = Vec::new();
        for (i, &ts) in times.iter().enumerate() {
            let message = Message::new("alice".into(), format!("m{i}"), ts, None);
            match logs.append(&room, "alice", &message, ORIGIN).await {
                Ok(Appended::New { id, .. }) => ids.push(id),
                other => panic!("append: {other:?}"),
            }
        }
        (room, ids)
    }

    async fn stored_ids(logs: &RoomLogs, room: &RoomRef) -> Vec<u64> {
        let page = logs
            .messages_after(room.no, 0, u64::MAX >> 11, 1000)
            .await
            .expect("page");
        page.messages.iter().map(|m| m.id).collect()
    }

    #[test]
    fn nodes_pruning_one_room_at_once_never_keep_fewer_than_the_rule() {
        let redis = TestRedis::start();
        let (a, b) = (logs(&redis), logs(&redis));
        smol::block_on(async {
            let (room, ids) = room_with(&a, "busy", &[1_000; 60]).await;
            let rule = PruneRule {
                before_ms: None,
                keep_last: Some(5),
            };
            let names = vec!["busy".to_string()];
            let (one, two) = futures_lite::future::zip(
                a.prune(&names, rule, false),
                b.prune(&names, rule, false),
            )
            .await;
            let removed = one.expect("a").removed + two.expect("b").removed;
            assert_eq!(removed, 55, "each message removed once, by one of them");
            assert_eq!(stored_ids(&a, &room).await, ids[55..]);
            let record = a.room_record("busy").await.expect("record").expect("room");
            assert_eq!(record.3, 5, "the count follows");
            // A node that chose the next oldest from a count read before the others removed
            // theirs: the script refuses, the room already holds only `keep_last`.
            let stale = [(ids[55], false), (ids[56], false)];
            let removed = b.remove("busy", room.no, Some(5), &stale).await;
            assert_eq!(removed.expect("remove"), 0);
            assert_eq!(stored_ids(&a, &room).await, ids[55..]);
        });
    }

    #[test]
    fn the_time_rule_removes_older_messages_with_their_edits_and_keeps_deletions() {
        let redis = TestRedis::start();
        let logs = logs(&redis);
        smol::block_on(async {
            let (room, ids) = room_with(&logs, "r", &[100, 200, 300, 400]).await;
            let changer = Changer {
                author_key: Some("alice"),
                account_created_ms: 0,
                origin: ORIGIN,
            };
            let edit = Event {
                target: ids[0],
                user: "alice".into(),
                ts: 500,
                change: Change::Edited {
                    text: Some("m0 edited".into()),
                    replaced: None,
                },
            };
            let Ok(Appended::New { id: edit_id, .. }) = logs
                .append_event(&room, &changer, &edit, None, u64::MAX)
                .await
            else {
                panic!("edit")
            };
            let deletion = Event {
                target: ids[1],
                user: "alice".into(),
                ts: 600,
                change: Change::Deleted,
            };
            let Ok(Appended::New {
                id: deletion_id, ..
            }) = logs
                .append_event(&room, &changer, &deletion, None, u64::MAX)
                .await
            else {
                panic!("deletion")
            };
            let rule = PruneRule {
                before_ms: Some(300),
                keep_last: None,
            };
            let dry = logs
                .prune(&["r".into()], rule, true)
                .await
                .expect("dry run");
            assert_eq!(dry.removed, 1, "m1 is deleted already: {dry:?}");
            assert_eq!(stored_ids(&logs, &room).await, [ids[0], ids[2], ids[3]]);
            let report = logs.prune(&["r".into()], rule, false).await.expect("prune");
            assert_eq!(report.removed, 1, "{report:?}");
            assert_eq!(report.rooms[0].remaining, 2, "{report:?}");
            assert_eq!(stored_ids(&logs, &room).await, [ids[2], ids[3]]);
            // The edit's entry went with its message; the deletion stays.
            let (left, _) = logs
                .written_entries_after(room.no, 0, u64::MAX >> 11, 100)
                .await
                .expect("entries");
            let left: Vec<u64> = left.iter().map(|e| e.id).collect();
            assert!(!left.contains(&edit_id), "{left:?}");
            assert!(left.contains(&deletion_id), "{left:?}");
            assert!(logs
                .edit_ids(room.no, ids[0])
                .await
                .expect("index")
                .is_empty());
        });
    }
}
