//! The storage upgrade guard: a database written by the release of protocol 1.0 (storage schema
//! 1, every stored value at layout version 1) must open and work unchanged in later releases.
//!
//! `tests/fixtures/db-v1.tar.gz` is such a database, made through the WebSocket protocol and
//! `chatd admin` only by `tests/fixtures/make-v1-db.sh`; `tests/fixtures/db-v1.json` lists what
//! it holds (users and passwords, tokens, rooms, every message). Never regenerate it to make this
//! test pass: it is the old format on purpose.
//!
//! Three things about it follow from today's release, not from this test:
//! - Its tokens were issued with `--token-ttl 36500d`, so they stay valid for 100 years.
//! - cids are remembered for 48 hours (PROTOCOL.md, section 5; there is no flag), and the
//!   janitor's first pass, right after start, forgets older ones. Within 48 h of the fixture's
//!   making, a repeated old cid must get the original ack; after that, the janitor must have
//!   read and removed every old cid entry (and the repeat is stored as a new message).
//! - The same pass removes the banned user's session (the ban revoked it), so its token gets
//!   `auth_failed` afterwards, `banned` before. That session also means the pass always logs
//!   `removed expired sessions and cids`: the test waits for that line, so what follows does not
//!   depend on when the pass runs.
mod admin_common;
mod common;

use admin_common::admin_json;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/db-v1.tar.gz");
const LISTING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/db-v1.json");
/// How long a cid is remembered (`Config::cid_ttl`; PROTOCOL.md, section 5).
const CID_TTL_MS: u64 = 48 * 3600 * 1000;

/// What db-v1.json says the fixture holds.
struct Listing {
    users: Vec<(String, String, bool)>,
    tokens: Vec<(String, String)>,
    /// name → (last_id, count)
    rooms: BTreeMap<String, (u64, u64)>,
    messages: Vec<Value>,
    max_id: u64,
}

impl Listing {
    fn load() -> Listing {
        let text = std::fs::read_to_string(LISTING).expect("read db-v1.json");
        let v: Value = serde_json::from_str(&text).expect("db-v1.json is JSON");
        let s = |v: &Value| v.as_str().expect("a string").to_string();
        let listing = Listing {
            users: v["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| (s(&u["name"]), s(&u["password"]), u["banned"] == true))
                .collect(),
            tokens: v["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| (s(&t["user"]), s(&t["token"])))
                .collect(),
            rooms: v["rooms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let n = |k: &str| r[k].as_u64().unwrap();
                    (s(&r["name"]), (n("last_id"), n("count")))
                })
                .collect(),
            messages: v["messages"].as_array().unwrap().clone(),
            max_id: v["max_id"].as_u64().unwrap(),
        };
        assert_eq!(listing.users.len(), 3, "db-v1.json lists three users");
        assert!(
            listing.messages.len() >= 20,
            "db-v1.json lists the messages"
        );
        listing
    }

    fn banned(&self, user: &str) -> bool {
        self.users.iter().any(|(n, _, b)| n == user && *b)
    }

    fn in_room(&self, room: &str) -> Vec<Value> {
        self.messages
            .iter()
            .filter(|m| m["room"] == room)
            .cloned()
            .collect()
    }
}

/// The fixture unpacked into a fresh data directory, made private (0700 directories, 0600
/// files) as chatd requires of a directory that holds a database: tar applies the umask when
/// not run as root.
fn unpack() -> TempDir {
    let dir = TempDir::new().expect("tempdir");
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(FIXTURE)
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("run tar");
    assert!(st.success(), "tar -xzf {FIXTURE} failed: {st}");
    assert!(dir.path().join("db").is_dir(), "the fixture holds db/");
    restrict(dir.path());
    dir
}

fn restrict(path: &Path) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    let mode = if meta.is_dir() { 0o700 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            restrict(&entry.unwrap().path());
        }
    }
}

/// The fields a stored message is made of; `cid` null when the message has none.
fn fields(m: &Value) -> Value {
    json!({"room": m["room"], "id": m["id"], "user": m["user"], "text": m["text"],
           "ts": m["ts"], "cid": m.get("cid").cloned().unwrap_or(Value::Null)})
}

/// `messages` (message events) hold exactly `want`, in order; events without a cid have no
/// `cid` field.
fn assert_same_messages(got: &[Value], want: &[Value], what: &str) {
    for m in got {
        assert_eq!(m["type"], "message", "{what}: {m}");
        if let Some(cid) = m.get("cid") {
            assert!(cid.is_string(), "{what}: a cid is a string or absent: {m}");
        }
    }
    let got: Vec<Value> = got.iter().map(fields).collect();
    let want: Vec<Value> = want.iter().map(fields).collect();
    assert_eq!(got, want, "{what}: the stored messages");
}

/// The next frame of type `ty`, skipping presence events and broadcasts (the other client's
/// users come and go, and its sends reach this one too).
fn reply(c: &mut Client, ty: &str) -> Value {
    let (v, _) = c.wait_for(T, |v| v["type"] != "presence" && v["type"] != "message");
    assert_eq!(v["type"], ty, "[{}] expected `{ty}`, got {v}", c.user);
    v
}

/// `join` (from `since`, or the newest page): the replayed messages and `synced`.
fn join(c: &mut Client, room: &str, since: Option<u64>) -> (Vec<Value>, Value) {
    let mut frame = json!({"type":"join","room":room});
    if let Some(since) = since {
        frame["since"] = json!(since);
    }
    c.send_json(&frame);
    let joined = reply(c, "joined");
    assert_eq!(joined["room"], room, "{joined}");
    let mut messages = Vec::new();
    loop {
        let v = c.recv_json(T);
        match v["type"].as_str() {
            Some("message") => {
                assert_eq!(v["room"], room, "replayed into the wrong room: {v}");
                check_message_shape(&v);
                messages.push(v);
            }
            Some("presence") => {}
            Some("synced") => {
                assert_eq!(v["room"], room, "{v}");
                return (messages, v);
            }
            _ => panic!("[{}] between `joined` and `synced`: {v}", c.user),
        }
    }
}

/// `send`; returns the ack and, unless the send was a repeat, the sender's own message.
fn send(c: &mut Client, room: &str, text: &str, cid: &str, repeat: bool) -> (Value, Option<Value>) {
    c.send_json(&json!({"type":"send","room":room,"text":text,"cid":cid}));
    let ack = reply(c, "ack");
    assert_eq!(ack["cid"], cid, "{ack}");
    if repeat {
        // The original's ack: its time may be long past.
        assert_eq!(ack["room"], room, "{ack}");
        id_of(&ack);
        check_stored_time(&ack["ts"], "the ack of a repeated cid");
        let extra = c.barrier();
        assert!(
            !extra
                .iter()
                .any(|v| v["type"] == "message" && v["cid"] == cid),
            "a repeated cid stores and broadcasts nothing: {extra:?}"
        );
        return (ack, None);
    }
    check_ack_shape(&ack);
    let (msg, _) = c.wait_for(T, |v| v["type"] == "message" && v["id"] == ack["id"]);
    assert_eq!(
        (&msg["room"], &msg["text"], &msg["cid"], &msg["ts"]),
        (&json!(room), &json!(text), &json!(cid), &ack["ts"]),
        "the sender's own message: {msg}"
    );
    (ack, Some(msg))
}

/// Waits for the janitor's first pass, which runs right after start, and returns how many
/// sessions and cids it removed.
fn janitor_first_pass(server: &TestServer) -> (u64, u64) {
    const DONE: &str = "removed expired sessions and cids";
    poll_until(Duration::from_secs(10), "the janitor's first pass", || {
        let log = server.stderr();
        assert!(
            !log.contains("cleaning up sessions and cids failed"),
            "the janitor could not read the old sessions or cids:\n{log}"
        );
        let line = log.lines().find(|l| l.contains(DONE))?;
        let count = |key: &str| -> u64 {
            let rest =
                &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a number after {key} in {line}"))
        };
        Some((count("sessions="), count("cids=")))
    })
}

fn admin_counts(dir: &Path) -> (Value, Value, Value) {
    (
        admin_json(dir, &["stats"]),
        admin_json(dir, &["users", "list"]),
        admin_json(dir, &["rooms", "list"]),
    )
}

/// `stats`, `users list` and `rooms list` agree with the listing plus what the test added.
fn check_admin(dir: &Path, fx: &Listing, users: &[(&str, bool)], added: &[Value]) {
    let (stats, user_list, room_list) = admin_counts(dir);
    let messages = fx.messages.len() + added.len();
    assert_eq!(stats["users"], users.len(), "stats: {stats}");
    assert_eq!(stats["rooms"], fx.rooms.len(), "stats: {stats}");
    assert_eq!(stats["messages"], messages, "stats: {stats}");
    let all: Vec<&Value> = fx.messages.iter().chain(added).collect();
    let ts = |m: &&Value| m["ts"].as_u64().unwrap();
    assert_eq!(stats["oldest_ts"], all.iter().map(ts).min().unwrap());
    assert_eq!(stats["newest_ts"], all.iter().map(ts).max().unwrap());

    let mut listed: Vec<(String, bool)> = user_list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["name"].as_str().unwrap().to_string(), u["banned"] == true))
        .collect();
    listed.sort();
    let mut want: Vec<(String, bool)> = users.iter().map(|(n, b)| (n.to_string(), *b)).collect();
    want.sort();
    assert_eq!(listed, want, "users list: {user_list}");

    let listed: BTreeMap<String, (u64, u64)> = room_list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap();
            (
                r["name"].as_str().unwrap().to_string(),
                (n("last_id"), n("messages")),
            )
        })
        .collect();
    let mut want = fx.rooms.clone();
    for m in added {
        let room = want.get_mut(m["room"].as_str().unwrap()).unwrap();
        room.0 = room.0.max(id_of(m));
        room.1 += 1;
    }
    assert_eq!(listed, want, "rooms list (last_id, messages): {room_list}");
}

/// A login or resume that must be refused: `code`, then close 1008, no welcome.
fn refused(server: &TestServer, frame: Value, codes: &[&str]) {
    let mut c = server.connect();
    let v = c.auth(frame.clone());
    assert!(
        v["type"] == "error" && codes.iter().any(|code| v["code"] == *code),
        "{frame} should get one of {codes:?}, got {v}"
    );
    c.expect_close_code(1008, T);
}

#[test]
fn a_database_written_by_the_first_release_opens_and_works() {
    let fx = Listing::load();
    let old_users: Vec<(&str, bool)> = fx.users.iter().map(|(n, _, b)| (n.as_str(), *b)).collect();

    // Offline admin on an untouched copy, before any server opened it.
    let pristine = unpack();
    check_admin(pristine.path(), &fx, &old_users, &[]);

    let before = now_ms();
    // At `info`, whatever CHATD_LOG says: the janitor's first pass is read from the log.
    let mut server = TestServer::start_in(unpack(), &["--log", "info"]);
    let (sessions_removed, cids_removed) = janitor_first_pass(&server);
    let after = now_ms();
    // The only dead session is the banned user's (the ban revoked it).
    assert_eq!(sessions_removed, 1, "sessions the janitor removed");

    // Passwords: each user logs in (any case of the name); the banned one gets `banned`.
    for (name, password, banned) in &fx.users {
        if *banned {
            refused(
                &server,
                json!({"type":"auth","user":name,"password":password}),
                &["banned"],
            );
            continue;
        }
        let c = server.login(&name.to_uppercase(), password);
        assert_eq!(&c.user, name, "welcome names the user as registered");
        c.close();
    }
    refused(
        &server,
        json!({"type":"auth","user":fx.users[0].0,"password":"not-the-password-1"}),
        &["auth_failed"],
    );

    // Tokens: every token issued by the old release resumes; the banned user's is refused
    // (`banned` while the revoked session is stored, `auth_failed` once the janitor removed it).
    let mut clients: BTreeMap<String, Client> = BTreeMap::new();
    for (user, token) in &fx.tokens {
        if fx.banned(user) {
            refused(
                &server,
                json!({"type":"auth","token":token}),
                &["banned", "auth_failed"],
            );
            continue;
        }
        let c = server.resume(token);
        assert_eq!(&c.user, user, "resume of {user}'s token");
        assert_eq!(&c.token, token, "a resume returns the same token");
        clients.insert(user.clone(), c);
    }
    assert_eq!(clients.len(), 2, "two users are not banned");

    // The look-alike index written by the old release still refuses look-alikes; new accounts
    // can be registered beside the old ones.
    let mut lookalike = server.connect();
    let v =
        lookalike.auth(json!({"type":"auth","user":"AIice","password":PASSWORD,"register":true}));
    assert_eq!(v["code"], "user_exists", "AIice looks like alice: {v}");
    lookalike.close();
    server.register("dave").close();

    // Replays from 0, the newest page, and history: every message with its id, user, text, ts
    // and cid.
    for c in clients.values_mut() {
        for (room, (last_id, count)) in &fx.rooms {
            let want = fx.in_room(room);
            assert_eq!(want.len() as u64, *count, "db-v1.json: {room}");
            let (got, synced) = join(c, room, Some(0));
            assert_same_messages(&got, &want, &format!("{room}: join since 0"));
            assert_eq!(synced["last_id"], *last_id, "{room}: {synced}");
            assert_eq!(
                synced["more"], false,
                "{room}: the replay is complete: {synced}"
            );
            let (got, _) = join(c, room, None);
            assert_same_messages(&got, &want, &format!("{room}: join"));
            for req in [
                json!({"type":"history","room":room,"after":0,"limit":200}),
                json!({"type":"history","room":room,"before":fx.max_id + 1,"limit":200}),
                json!({"type":"history","room":room}),
            ] {
                c.send_json(&req);
                let h = reply(c, "history");
                assert_eq!(h["room"], room.as_str(), "{req}: {h}");
                assert_eq!(h["more"], false, "{req}: {h}");
                let got = h["messages"].as_array().unwrap();
                assert_same_messages(got, &want, &format!("{req}"));
            }
        }
    }

    // Old cids: within 48 h of the fixture's making a repeat gets the original ack and stores
    // nothing; later the janitor has forgotten them and the repeat is a new message. A cid
    // whose age crossed 48 h while the janitor ran is not tried.
    let mut added: Vec<Value> = Vec::new();
    let mut newest = fx.max_id;
    let (mut kept, mut expired, mut unsure) = (0, 0, 0);
    for m in &fx.messages {
        let (Some(cid), Some(user)) = (m["cid"].as_str(), m["user"].as_str()) else {
            continue;
        };
        let age_at = |t: u64| t.saturating_sub(m["ts"].as_u64().unwrap());
        let state = if age_at(after) <= CID_TTL_MS {
            kept += 1;
            "kept"
        } else if age_at(before) > CID_TTL_MS {
            expired += 1;
            "expired"
        } else {
            unsure += 1;
            "unsure"
        };
        // The banned user's entries count for the janitor, but she cannot send.
        let Some(c) = clients.get_mut(user) else {
            continue;
        };
        let room = m["room"].as_str().unwrap();
        match state {
            "kept" => {
                let (ack, _) = send(c, room, "a resend after the upgrade", cid, true);
                assert_eq!(
                    (&ack["room"], &ack["id"], &ack["ts"]),
                    (&m["room"], &m["id"], &m["ts"]),
                    "{user}'s repeated cid {cid} gets the original ack"
                );
            }
            "expired" => {
                let (ack, msg) = send(c, room, "a resend after the upgrade", cid, false);
                assert!(
                    id_of(&ack) > newest,
                    "a forgotten cid is a new message with a new id: {ack}"
                );
                newest = id_of(&ack);
                added.push(msg.unwrap());
            }
            _ => {}
        }
    }
    eprintln!(
        "old cids: {kept} still remembered, {expired} forgotten (older than 48 h), {unsure} \
         crossed 48 h during the start; the janitor removed {cids_removed}"
    );
    assert!(kept + expired > 0, "db-v1.json has messages with cids");
    assert!(
        cids_removed >= expired && cids_removed <= expired + unsure,
        "the janitor removed {cids_removed} old cids; {expired} were older than 48 h and \
         {unsure} crossed 48 h while it ran"
    );

    // New sends get ids above every old one, in every room (also the one the old release
    // created but never wrote to), and reach the other members.
    let names: Vec<String> = clients.keys().cloned().collect();
    for room in fx.rooms.keys() {
        let cid = format!("after-upgrade-{room}");
        let c = clients.get_mut(&names[0]).unwrap();
        let (ack, msg) = send(c, room, "written after the upgrade", &cid, false);
        assert!(id_of(&ack) > newest, "{room}: new id {ack} above {newest}");
        newest = id_of(&ack);
        // A repeat of the new cid gets its ack too.
        let (again, _) = send(c, room, "again", &cid, true);
        assert_eq!((&again["id"], &again["ts"]), (&ack["id"], &ack["ts"]));
        let other = clients.get_mut(&names[1]).unwrap();
        let (seen, _) = other.wait_for(T, |v| v["type"] == "message" && v["id"] == ack["id"]);
        let msg = msg.unwrap();
        assert_eq!(fields(&seen), fields(&msg), "{room}: the broadcast");
        added.push(msg);
    }
    for c in clients.into_values() {
        c.close();
    }

    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).success());

    // Offline admin: the same users (and dave), rooms and counts.
    let mut users = old_users.clone();
    users.push(("dave", false));
    check_admin(server.data_dir(), &fx, &users, &added);

    // What the new release wrote beside the old values reads back after a restart.
    server.restart();
    let (_, token) = fx.tokens.iter().find(|(u, _)| !fx.banned(u)).unwrap();
    let mut c = server.resume(token);
    for room in fx.rooms.keys() {
        let mut want = fx.in_room(room);
        want.extend(added.iter().filter(|m| m["room"] == room.as_str()).cloned());
        let (got, _) = join(&mut c, room, Some(0));
        assert_same_messages(&got, &want, &format!("{room}: after a restart"));
    }
    c.close();
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}
