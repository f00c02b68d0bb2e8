//! Output of admin replies: aligned tables for people, JSON for scripts. Times are ISO 8601
//! (RFC 3339, UTC, milliseconds).

use std::time::{Duration, UNIX_EPOCH};

use super::conversations::{ChangeKind, MessageHistory, MessageState, ReadMarkers};
use super::{PruneReport, Reply, RoomInfo};

/// An ISO 8601 UTC time for `ms` since the Unix epoch.
pub fn iso(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn opt_iso(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".into(), iso)
}

/// Bytes as B, KiB, MiB or GiB.
pub fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

fn duration(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Lays out rows under headers, columns separated by two spaces; columns whose header starts
/// with `#` (the `#` is dropped) are right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let right: Vec<bool> = headers.iter().map(|h| h.starts_with('#')).collect();
    let headers: Vec<String> = headers
        .iter()
        .map(|h| h.trim_start_matches('#').to_owned())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = widths[i] - cell.chars().count();
            if right[i] {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if i + 1 < cells.len() {
                    text.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&headers);
    for row in rows {
        line(row);
    }
    out
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| {
            if c == '\n' || c == '\r' || c == '\t' {
                ' '
            } else {
                c
            }
        })
        .collect();
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

fn pairs(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

fn prune_text(p: &PruneReport) -> String {
    let mut out = String::new();
    if !p.rooms.is_empty() {
        let rows: Vec<Vec<String>> = p
            .rooms
            .iter()
            .map(|r| {
                vec![
                    r.room.clone(),
                    r.removed.to_string(),
                    r.remaining.to_string(),
                    format!(
                        "{}..{}",
                        r.first_id.map_or("-".into(), |i| i.to_string()),
                        r.last_id.map_or("-".into(), |i| i.to_string())
                    ),
                    opt_iso(r.oldest_ts),
                    opt_iso(r.newest_ts),
                ]
            })
            .collect();
        let removed = if p.dry_run {
            "#WOULD REMOVE"
        } else {
            "#REMOVED"
        };
        out.push_str(&table(
            &["ROOM", removed, "#REMAINING", "IDS", "OLDEST", "NEWEST"],
            &rows,
        ));
    }
    out.push_str(&if p.dry_run {
        format!(
            "dry run: {} message(s) would be removed from {} room(s); nothing was changed\n",
            p.removed,
            p.rooms.len()
        )
    } else {
        format!(
            "removed {} message(s) from {} room(s)\n",
            p.removed,
            p.rooms.len()
        )
    });
    out
}

/// A direct-message room's two users (`bob (deleted)` for an account that is gone).
fn participants(r: &RoomInfo) -> Option<String> {
    let names = r.participants.as_ref()?;
    Some(
        names
            .iter()
            .map(|n| {
                if r.participants_deleted.contains(n) {
                    format!("{n} (deleted)")
                } else {
                    n.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn quoted(text: &Option<String>, max: usize) -> String {
    match text {
        Some(text) => format!("\"{}\"", one_line(text, max)),
        None => "-".into(),
    }
}

fn history_text(h: &MessageHistory) -> String {
    let mut rows = vec![
        ("room", h.room.clone()),
        ("id", h.id.to_string()),
        (
            "author",
            h.author
                .clone()
                .unwrap_or_else(|| "unknown (deleted by an admin, never edited)".into()),
        ),
    ];
    match (&h.message, h.state) {
        (Some(m), _) => {
            rows.push(("time", iso(m.ts)));
            rows.push((
                "state",
                match m.edited_ts {
                    Some(_) => "stored, edited".into(),
                    None => "stored".into(),
                },
            ));
            if let Some(edited) = m.edited_ts {
                rows.push(("edited", iso(edited)));
            }
            if let Some(cid) = &m.cid {
                rows.push(("cid", cid.clone()));
            }
            rows.push(("text", m.text.clone()));
        }
        (None, MessageState::Deleted) => {
            rows.push((
                "state",
                "deleted: its text and the texts of its edits are gone".into(),
            ));
        }
        (None, _) => {
            rows.push((
                "state",
                "no longer stored and no deletion recorded (pruned, or deleted before chatd kept events)"
                    .into(),
            ));
        }
    }
    let mut out = pairs(&rows);
    let edits = h
        .events
        .iter()
        .filter(|e| e.change == ChangeKind::Edited)
        .count();
    if h.message.as_ref().is_some_and(|m| m.edited_ts.is_some()) && edits == 0 {
        out.push_str("(edited, but no edit is recorded here: imported from an export, which carries no history)\n");
    }
    if h.events.is_empty() {
        out.push_str("no edits or deletion\n");
        return out;
    }
    let rows: Vec<Vec<String>> = h
        .events
        .iter()
        .map(|e| {
            let (change, replaced, text) = match e.change {
                ChangeKind::Edited if e.scrubbed => (
                    "edited",
                    "(removed by the deletion)".into(),
                    "(removed by the deletion)".into(),
                ),
                ChangeKind::Edited => ("edited", quoted(&e.replaced, 40), quoted(&e.text, 40)),
                ChangeKind::Deleted => ("deleted", String::new(), String::new()),
            };
            vec![
                e.seq.to_string(),
                iso(e.ts),
                e.user.clone(),
                change.into(),
                replaced,
                text,
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &["#SEQ", "TIME", "BY", "CHANGE", "REPLACED", "NEW TEXT"],
        &rows,
    ));
    out.push_str(&format!("{} event(s)\n", h.events.len()));
    out
}

fn reads_text(m: &ReadMarkers) -> String {
    let rows: Vec<Vec<String>> = m
        .rooms
        .iter()
        .map(|r| {
            vec![
                r.room.clone(),
                r.read.to_string(),
                r.newest.map_or("-".into(), |n| n.to_string()),
                match r.unread {
                    Some(n) if n >= crate::store::UNREAD_CAP => format!("{n}+"),
                    Some(n) => n.to_string(),
                    None => "-".into(),
                },
                match (r.newest, r.listed) {
                    (None, _) => "room deleted".into(),
                    (_, true) => "yes".into(),
                    (_, false) => "no".into(),
                },
            ]
        })
        .collect();
    format!(
        "{}{} read marker(s) of {}\n",
        table(&["ROOM", "#READ", "#NEWEST", "#UNREAD", "LISTED"], &rows),
        m.rooms.len(),
        m.user
    )
}

/// The reply for people.
pub fn human(reply: &Reply) -> String {
    match reply {
        Reply::Stats(s) => {
            let mut rows = vec![
                ("users", s.users.to_string()),
                ("rooms", s.rooms.to_string()),
                ("DM rooms", s.dm_rooms.to_string()),
                ("messages", s.messages.to_string()),
                ("database size", bytes(s.db_bytes)),
                ("oldest message", opt_iso(s.oldest_ts)),
                ("newest message", opt_iso(s.newest_ts)),
            ];
            match &s.server {
                Some(server) => {
                    rows.push(("server", format!("running (chatd {})", server.version)));
                    rows.push(("uptime", duration(server.uptime_secs)));
                    rows.push(("connections", server.connections.to_string()));
                    rows.push(("online users", server.online_users.to_string()));
                }
                None => rows.push(("server", "not running".into())),
            }
            pairs(&rows)
        }
        Reply::Users(users) => {
            let live = users.iter().any(|u| u.connections.is_some());
            let rows: Vec<Vec<String>> = users
                .iter()
                .map(|u| {
                    let mut row = vec![
                        u.name.clone(),
                        iso(u.created_ms),
                        if u.banned { "banned" } else { "active" }.to_owned(),
                        if u.has_password { "yes" } else { "NO" }.to_owned(),
                    ];
                    if live {
                        row.push(u.connections.unwrap_or(0).to_string());
                    }
                    row
                })
                .collect();
            let mut headers = vec!["NAME", "CREATED", "STATUS", "PASSWORD"];
            if live {
                headers.push("#CONNECTIONS");
            }
            format!("{}{} user(s)\n", table(&headers, &rows), users.len())
        }
        Reply::User(u) => {
            let mut rows = vec![
                ("name", u.name.clone()),
                ("created", iso(u.created_ms)),
                (
                    "status",
                    if u.banned { "banned" } else { "active" }.to_owned(),
                ),
                (
                    "password",
                    if u.has_password {
                        "set".to_owned()
                    } else {
                        "none (set one with `chatd admin users passwd`)".to_owned()
                    },
                ),
                ("token epoch", u.token_epoch.to_string()),
            ];
            if let Some(n) = u.sessions {
                rows.push(("valid sessions", n.to_string()));
            }
            if let Some(n) = u.connections {
                rows.push(("connections", n.to_string()));
            }
            pairs(&rows)
        }
        Reply::Rooms(rooms) => {
            // The participants column only when a direct-message room is listed; it is the
            // last one and empty for other rooms, so their lines read as they always did.
            let dm = rooms.iter().any(|r| r.participants.is_some());
            let rows: Vec<Vec<String>> = rooms
                .iter()
                .map(|r| {
                    let mut row = vec![
                        r.name.clone(),
                        r.messages.to_string(),
                        r.last_id.to_string(),
                        opt_iso(r.oldest_ts),
                        opt_iso(r.newest_ts),
                        iso(r.created_ms),
                    ];
                    if dm {
                        row.push(participants(r).unwrap_or_default());
                    }
                    row
                })
                .collect();
            let mut headers = vec!["NAME", "#MESSAGES", "#LAST ID", "OLDEST", "NEWEST", "CREATED"];
            if dm {
                headers.push("PARTICIPANTS");
            }
            format!("{}{} room(s)\n", table(&headers, &rows), rooms.len())
        }
        Reply::Room(r) => {
            let mut rows = vec![
                ("name", r.name.clone()),
                ("created", iso(r.created_ms)),
                ("messages", r.messages.to_string()),
                ("last id", r.last_id.to_string()),
                ("oldest message", opt_iso(r.oldest_ts)),
                ("newest message", opt_iso(r.newest_ts)),
            ];
            if let Some(participants) = participants(r) {
                rows.insert(1, ("participants", participants));
            }
            if let Some(online) = &r.online {
                rows.push((
                    "online",
                    if online.is_empty() {
                        "-".into()
                    } else {
                        online.join(", ")
                    },
                ));
            }
            pairs(&rows)
        }
        Reply::Messages(found) => {
            let rows: Vec<Vec<String>> = found
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        iso(m.message.ts),
                        m.room.clone(),
                        m.message.user.clone(),
                        one_line(&m.message.text, 72),
                    ]
                })
                .collect();
            format!(
                "{}{} message(s)\n",
                table(&["#ID", "TIME", "ROOM", "USER", "TEXT"], &rows),
                found.len()
            )
        }
        Reply::Online(conns) => {
            let rows: Vec<Vec<String>> = conns
                .iter()
                .map(|c| {
                    vec![
                        c.user.clone(),
                        c.peer.clone(),
                        iso(c.since_ms),
                        if c.rooms.is_empty() {
                            "-".into()
                        } else {
                            c.rooms.join(",")
                        },
                    ]
                })
                .collect();
            format!(
                "{}{} connection(s)\n",
                table(&["USER", "FROM", "SINCE", "ROOMS"], &rows),
                conns.len()
            )
        }
        Reply::MessageHistory(h) => history_text(h),
        Reply::ReadMarkers(m) => reads_text(m),
        Reply::Pruned(p) => prune_text(p),
        Reply::Imported(i) => format!(
            "imported {} user(s) ({} existed), {} session(s), {} new room(s), {} message(s) ({} existed)\n",
            i.users, i.users_skipped, i.sessions, i.rooms, i.messages, i.messages_skipped
        ),
        Reply::Done(d) => format!("{}\n", d.summary),
    }
}

/// The reply for scripts: the payload alone, pretty-printed JSON.
pub fn json(reply: &Reply) -> String {
    let value = match reply {
        Reply::Stats(v) => serde_json::to_value(v),
        Reply::Users(v) => serde_json::to_value(v),
        Reply::User(v) => serde_json::to_value(v),
        Reply::Rooms(v) => serde_json::to_value(v),
        Reply::Room(v) => serde_json::to_value(v),
        Reply::Messages(v) => serde_json::to_value(v),
        Reply::MessageHistory(v) => serde_json::to_value(v),
        Reply::ReadMarkers(v) => serde_json::to_value(v),
        Reply::Online(v) => serde_json::to_value(v),
        Reply::Pruned(v) => serde_json::to_value(v),
        Reply::Imported(v) => serde_json::to_value(v),
        Reply::Done(d) => Ok(d.details.clone()),
    }
    .unwrap_or(serde_json::Value::Null);
    let value = with_iso_times(value);
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_else(|_| "null".into());
    text.push('\n');
    text
}

/// Adds an ISO 8601 twin next to every time field: `created_ms` → `created`, `ts` → `time`,
/// `oldest_ts` → `oldest`. The millisecond fields stay (they are what the protocol uses).
fn with_iso_times(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Array(items) => Value::Array(items.into_iter().map(with_iso_times).collect()),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, v) in map {
                let twin = match key.as_str() {
                    "ts" => Some("time".to_owned()),
                    k => k
                        .strip_suffix("_ms")
                        .or_else(|| k.strip_suffix("_ts"))
                        .map(str::to_owned),
                };
                if let (Some(twin), Some(ms)) = (twin, v.as_u64()) {
                    out.insert(twin, Value::String(iso(ms)));
                }
                out.insert(key, with_iso_times(v));
            }
            Value::Object(out)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_right_align_numbers() {
        let t = table(
            &["NAME", "#N"],
            &[
                vec!["a".into(), "1".into()],
                vec!["long".into(), "100".into()],
            ],
        );
        assert_eq!(t, "NAME    N\na       1\nlong  100\n");
    }

    #[test]
    fn times_are_iso_8601_utc() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_764_255_000_123), "2025-11-27T14:50:00.123Z");
    }
}
