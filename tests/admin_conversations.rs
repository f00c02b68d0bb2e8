//! `chatd admin` and protocol 1.1's conversations: direct-message rooms in `rooms list/show`,
//! pruning and deleting them (with their read markers), a message's edit and delete history
//! (`messages show`), users' read markers (`users reads`, `users reads reset`) and edited
//! messages through export and import. Real server, real clients; live and offline.

mod admin_common;
mod common;

use admin_common::*;
use common::{id_of, Client, TestServer, T};
use serde_json::{json, Value};

const DM: &str = "dm:alice+bob";

/// Sends `frame` and returns its `ack` (frames that arrived before it are skipped).
fn acked(c: &mut Client, frame: Value) -> Value {
    c.send_json(&frame);
    let (ack, _) = c.wait_for(T, |v| v["type"] == "ack" || v["type"] == "error");
    assert_eq!(ack["type"], "ack", "{frame} was refused: {ack}");
    ack
}

/// Sends a message; returns its id once the sender's own broadcast of it arrived.
fn say(c: &mut Client, room: &str, text: &str) -> u64 {
    let id = id_of(&acked(c, json!({"type":"send","room":room,"text":text})));
    c.wait_for(T, |v| v["type"] == "message" && v["id"] == id);
    id
}

/// Edits message `id`; returns the edit's seq once its broadcast arrived.
fn edit(c: &mut Client, room: &str, id: u64, text: &str) -> u64 {
    let cid = format!("e{}", common::unique());
    let seq = id_of(&acked(
        c,
        json!({"type":"edit","room":room,"id":id,"text":text,"cid":cid}),
    ));
    c.wait_for(T, |v| v["type"] == "edited" && v["seq"] == seq);
    seq
}

/// Deletes message `id`; returns the deletion's seq once its broadcast arrived.
fn delete(c: &mut Client, room: &str, id: u64) -> u64 {
    let cid = format!("d{}", common::unique());
    let seq = id_of(&acked(
        c,
        json!({"type":"delete","room":room,"id":id,"cid":cid}),
    ));
    c.wait_for(T, |v| v["type"] == "deleted" && v["seq"] == seq);
    seq
}

/// Joins after reading whatever arrived before (presence of earlier joins).
fn join(c: &mut Client, room: &str) -> common::Joined {
    c.barrier();
    c.join(room)
}

fn leave(c: &mut Client, room: &str) {
    c.send_json(&json!({"type":"leave","room":room}));
    c.wait_for(T, |v| v["type"] == "left" && v["room"] == room);
}

/// Sends `read` and returns the marker echoed to this connection.
fn read(c: &mut Client, room: &str, id: u64) -> u64 {
    c.send_json(&json!({"type":"read","room":room,"id":id}));
    let (v, _) = c.wait_for(T, |v| v["type"] == "read" && v["room"] == room);
    id_of(&v)
}

fn room<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no room {name} in {list}"))
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect()
}

fn stop(mut server: TestServer) -> TestServer {
    server.sigterm();
    assert!(server.wait_exit(T).success());
    server
}

#[test]
fn dm_rooms_are_listed_with_their_users_and_deleted_with_their_read_markers() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir();
    let mut alice = server.register("Alice");
    let mut bob = server.register("bob");
    join(&mut alice, "general");
    say(&mut alice, "general", "hello room");
    join(&mut alice, DM);
    let newest = say(&mut alice, DM, "hi bob");
    assert_eq!(read(&mut bob, DM, newest), newest);

    // rooms list: a participants column only because a DM room is listed; JSON only for it.
    let table = admin(dir, &["rooms", "list"]).ok().to_owned();
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(header.ends_with("PARTICIPANTS"), "{table}");
    let dm_line = table.lines().find(|l| l.starts_with(DM)).unwrap();
    assert!(dm_line.ends_with("Alice, bob"), "{table}");
    let general = table.lines().find(|l| l.starts_with("general")).unwrap();
    assert!(
        general.ends_with('Z'),
        "no participants for general: {table}"
    );
    let list = admin_json(dir, &["rooms", "list"]);
    assert_eq!(names(&list), [DM, "general"]);
    assert_eq!(room(&list, DM)["participants"], json!(["Alice", "bob"]));
    assert!(
        room(&list, "general").get("participants").is_none(),
        "ordinary rooms keep their JSON: {list}"
    );
    assert_eq!(names(&admin_json(dir, &["rooms", "list", "--dm"])), [DM]);

    // rooms show
    let shown = admin_json(dir, &["rooms", "show", DM]);
    assert_eq!(shown["participants"], json!(["Alice", "bob"]));
    assert_eq!(shown["online"], json!(["Alice"]), "{shown}");
    let text = admin(dir, &["rooms", "show", DM]).ok().to_owned();
    assert!(text.contains("participants    Alice, bob"), "{text}");
    let e = admin(dir, &["rooms", "show", "dm:bob+alice"])
        .fails(2)
        .to_owned();
    assert!(e.contains("did you mean `dm:alice+bob`"), "{e}");
    let s = admin_json(dir, &["stats"]);
    assert_eq!(
        (s["rooms"].as_u64(), s["dm_rooms"].as_u64()),
        (Some(2), Some(1))
    );

    // The marker is there; deleting the room takes it away (and tells who is in it).
    let reads = admin_json(dir, &["users", "reads", "bob"]);
    assert_eq!(reads["rooms"][0]["room"], DM, "{reads}");
    assert_eq!(reads["rooms"][0]["read"], newest);
    admin(dir, &["rooms", "delete", DM]).ok();
    let (left, _) = alice.wait_for(T, |v| v["type"] == "left");
    assert_eq!(left["room"], DM);
    assert_eq!(
        admin_json(dir, &["users", "reads", "bob"])["rooms"],
        json!([])
    );
    assert_eq!(admin_json(dir, &["stats"])["dm_rooms"], 0);
    // A new conversation of the two starts with no marker, and not above the old ids.
    let joined = join(&mut bob, DM);
    assert_eq!(joined.joined["read"], 0, "{}", joined.joined);
    assert!(say(&mut bob, DM, "again") > newest);

    // Offline: the same listing, and deletion also removes the markers.
    let server = stop(server);
    let dir = server.data_dir();
    assert_eq!(
        admin_json(dir, &["rooms", "show", DM])["participants"],
        json!(["Alice", "bob"])
    );
    assert_eq!(
        admin_json(dir, &["users", "reads", "bob"])["rooms"][0]["room"],
        DM
    );
    admin(dir, &["rooms", "delete", DM]).ok();
    assert_eq!(
        admin_json(dir, &["users", "reads", "bob"])["rooms"],
        json!([])
    );
    assert_eq!(
        admin_json(dir, &["users", "reads", "alice"])["rooms"][0]["room"],
        "general"
    );
    assert_eq!(names(&admin_json(dir, &["rooms", "list"])), ["general"]);
    let table = admin(dir, &["rooms", "list"]).ok().to_owned();
    assert!(
        !table.contains("PARTICIPANTS"),
        "only ordinary rooms: {table}"
    );
}

#[test]
fn rooms_prune_dm_removes_only_empty_dm_rooms_live_and_offline() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir();
    let mut alice = server.register("alice");
    server.register("bob");
    server.register("carol");
    join(&mut alice, "lobby");
    join(&mut alice, "dm:alice+bob");
    join(&mut alice, "dm:alice+carol");
    say(&mut alice, "dm:alice+carol", "not empty");
    leave(&mut alice, "lobby");
    leave(&mut alice, "dm:alice+bob");
    leave(&mut alice, "dm:alice+carol");

    let r = admin_json(
        dir,
        &[
            "rooms",
            "prune",
            "--empty",
            "--dm",
            "--older-than",
            "0s",
            "--dry-run",
        ],
    );
    assert_eq!(
        (r["rooms_matched"].as_u64(), r["dry_run"].as_bool()),
        (Some(1), Some(true))
    );
    // Live: the empty DM room goes, the empty ordinary room and the DM room with a message stay.
    let out = admin(
        dir,
        &["rooms", "prune", "--empty", "--dm", "--older-than", "0s"],
    )
    .ok()
    .to_owned();
    assert_eq!(out, "deleted 1 empty direct-message room(s)\n");
    assert_eq!(
        names(&admin_json(dir, &["rooms", "list"])),
        ["dm:alice+carol", "lobby"]
    );
    let reads = admin_json(dir, &["users", "reads", "alice"]);
    let rooms: Vec<&str> = reads["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room"].as_str().unwrap())
        .collect();
    assert_eq!(rooms, ["dm:alice+carol", "lobby"], "{reads}");

    // Offline: an empty DM room whose only message was deleted (events, no messages) goes too,
    // with its events and markers.
    join(&mut alice, "dm:alice+bob");
    let oops = say(&mut alice, "dm:alice+bob", "oops");
    delete(&mut alice, "dm:alice+bob", oops);
    leave(&mut alice, "dm:alice+bob");
    drop(alice);
    let server = stop(server);
    let dir = server.data_dir();
    let r = admin_json(
        dir,
        &["rooms", "prune", "--empty", "--dm", "--older-than", "0s"],
    );
    assert_eq!(r["rooms_deleted"], 1, "{r}");
    assert_eq!(
        names(&admin_json(dir, &["rooms", "list", "--dm"])),
        ["dm:alice+carol"]
    );
    admin(dir, &["users", "reads", "alice", "--room", "dm:alice+bob"]).fails(1);
    admin(
        dir,
        &["messages", "show", "dm:alice+bob", &oops.to_string()],
    )
    .fails(1);
    // Without --dm the empty ordinary room goes as before.
    let r = admin_json(dir, &["rooms", "prune", "--empty", "--older-than", "0s"]);
    assert_eq!(r["rooms_deleted"], 1, "{r}");
}

/// The history of three messages: one edited twice, one edited then deleted by its author,
/// one deleted by an admin. Returns their ids and the seqs of the first one's edits.
struct Story {
    edited: u64,
    edits: [u64; 2],
    deleted: u64,
    deleted_edit: u64,
    deletion: u64,
    moderated: u64,
}

fn tell_story(server: &TestServer) -> Story {
    let dir = server.data_dir();
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    join(&mut alice, "general");
    join(&mut bob, "general");
    let edited = say(&mut alice, "general", "helo");
    let edits = [
        edit(&mut alice, "general", edited, "hello"),
        edit(&mut alice, "general", edited, "hello all"),
    ];
    let deleted = say(&mut alice, "general", "secret");
    let deleted_edit = edit(&mut alice, "general", deleted, "more secret");
    let deletion = delete(&mut alice, "general", deleted);
    let moderated = say(&mut bob, "general", "spam");
    admin(dir, &["messages", "delete", &moderated.to_string()]).ok();
    let (ev, _) = bob.wait_for(T, |v| v["type"] == "deleted" && v["id"] == moderated);
    assert_eq!(ev["user"], "[system]", "{ev}");
    Story {
        edited,
        edits,
        deleted,
        deleted_edit,
        deletion,
        moderated,
    }
}

fn check_history(dir: &std::path::Path, s: &Story) -> [Value; 3] {
    let h = admin_json(dir, &["messages", "show", "general", &s.edited.to_string()]);
    assert_eq!(h["state"], "stored", "{h}");
    assert_eq!(h["author"], "alice");
    assert_eq!(h["message"]["text"], "hello all");
    let edited_ts = h["message"]["edited_ts"].as_u64().expect("edited_ts");
    assert_eq!(h["events"][1]["ts"], edited_ts, "last edit's time: {h}");
    let events = h["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{h}");
    for (e, (seq, replaced, text)) in events.iter().zip([
        (s.edits[0], "helo", "hello"),
        (s.edits[1], "hello", "hello all"),
    ]) {
        assert_eq!(e["seq"], seq, "{h}");
        assert_eq!(e["change"], "edited");
        assert_eq!(e["user"], "alice");
        assert_eq!(
            (e["replaced"].as_str(), e["text"].as_str()),
            (Some(replaced), Some(text))
        );
        assert_eq!(e["scrubbed"], false);
        assert!(e["time"].as_str().unwrap().ends_with('Z'), "ISO twin: {e}");
    }

    let d = admin_json(
        dir,
        &["messages", "show", "general", &s.deleted.to_string()],
    );
    assert_eq!(d["state"], "deleted", "{d}");
    assert_eq!(d["message"], Value::Null);
    assert_eq!(d["author"], "alice");
    assert_eq!(d["events"][0]["seq"], s.deleted_edit);
    assert_eq!(d["events"][0]["change"], "edited");
    assert_eq!(d["events"][0]["scrubbed"], true);
    assert_eq!(
        d["events"][0]["text"],
        Value::Null,
        "a deletion scrubs its edits: {d}"
    );
    assert_eq!(d["events"][0]["replaced"], Value::Null);
    assert_eq!(d["events"][1]["seq"], s.deletion);
    assert_eq!(d["events"][1]["change"], "deleted");
    assert_eq!(d["events"][1]["user"], "alice");
    assert_eq!(d["events"][1]["by_admin"], false);
    let text = admin(
        dir,
        &["messages", "show", "general", &s.deleted.to_string()],
    )
    .ok()
    .to_owned();
    assert!(text.contains("(removed by the deletion)"), "{text}");
    assert!(!text.contains("secret"), "{text}");

    let m = admin_json(
        dir,
        &["messages", "show", "general", &s.moderated.to_string()],
    );
    assert_eq!(m["state"], "deleted", "{m}");
    assert_eq!(
        m["author"],
        Value::Null,
        "an admin deletion does not record the author"
    );
    assert_eq!(m["events"][0]["user"], "[system]");
    assert_eq!(m["events"][0]["by_admin"], true);
    let text = admin(
        dir,
        &["messages", "show", "general", &s.moderated.to_string()],
    )
    .ok()
    .to_owned();
    assert!(
        text.contains("[system]") && text.contains("deleted"),
        "{text}"
    );

    // An event's seq, an id of another room and an unknown id are not found, with a hint.
    let e = admin(
        dir,
        &["messages", "show", "general", &s.edits[0].to_string()],
    )
    .fails(1)
    .to_owned();
    assert!(
        e.contains(&format!("change to message {}", s.edited)),
        "{e}"
    );
    admin(dir, &["messages", "show", "general", "999999"]).fails(1);
    admin(dir, &["messages", "show", "nowhere", "1"]).fails(1);
    admin(dir, &["messages", "show", "dm:b+a", "1"]).fails(2);
    [h, d, m]
}

#[test]
fn messages_show_gives_edit_and_delete_history_live_and_offline() {
    let server = TestServer::start(&[]);
    let story = tell_story(&server);
    let text = admin(
        server.data_dir(),
        &["messages", "show", "general", &story.edited.to_string()],
    )
    .ok()
    .to_owned();
    assert!(text.contains("state   stored, edited"), "{text}");
    let first = text
        .lines()
        .find(|l| l.trim_start().starts_with(&story.edits[0].to_string()))
        .unwrap_or_else(|| panic!("no line for the first edit: {text}"));
    assert!(
        first.contains("\"helo\"") && first.contains("\"hello\""),
        "{text}"
    );
    let live = check_history(server.data_dir(), &story);
    let server = stop(server);
    let offline = check_history(server.data_dir(), &story);
    assert_eq!(live, offline, "the same history with and without a server");
}

#[test]
fn read_markers_are_shown_and_a_reset_reaches_every_connection() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir();
    let mut a1 = server.register("alice");
    let mut a2 = server.resume(&a1.token.clone());
    let mut bob = server.register("bob");
    join(&mut bob, "general");
    let mut last = 0;
    for text in ["one", "two", "@alice three"] {
        last = say(&mut bob, "general", text);
    }
    join(&mut a1, "general");
    assert_eq!(read(&mut a1, "general", last), last);
    let (echo, _) = a2.wait_for(T, |v| v["type"] == "read");
    assert_eq!(id_of(&echo), last);

    let r = admin_json(dir, &["users", "reads", "ALICE"]);
    assert_eq!(r["user"], "alice");
    assert_eq!(
        r["rooms"],
        json!([{"room":"general","read":last,"newest":last,"unread":0,"listed":true}])
    );
    let table = admin(dir, &["users", "reads", "alice"]).ok().to_owned();
    assert!(table.starts_with("ROOM"), "{table}");
    assert!(table.contains("1 read marker(s) of alice"), "{table}");

    // Reset one room: both connections get the marker in force, 0.
    let out = admin(
        dir,
        &["users", "reads", "reset", "alice", "--room", "general"],
    )
    .ok()
    .to_owned();
    assert!(
        out.contains("set 1 read marker(s) of alice in general to 0"),
        "{out}"
    );
    assert!(out.contains("2 live connection(s)"), "{out}");
    for c in [&mut a1, &mut a2] {
        let (v, _) = c.wait_for(T, |v| v["type"] == "read");
        assert_eq!(v, json!({"type":"read","room":"general","id":0}));
    }
    let r = admin_json(dir, &["users", "reads", "alice", "--room", "general"]);
    assert_eq!(
        (
            r["rooms"][0]["read"].as_u64(),
            r["rooms"][0]["unread"].as_u64()
        ),
        (Some(0), Some(3))
    );
    // The conversation list agrees.
    a1.send_json(&json!({"type":"rooms"}));
    let (rooms, _) = a1.wait_for(T, |v| v["type"] == "rooms");
    assert_eq!(rooms["rooms"][0]["read"], 0, "{rooms}");
    assert_eq!(rooms["rooms"][0]["unread"], 3);
    assert_eq!(rooms["rooms"][0]["mentions"], 1);

    // --to above the newest id is lowered to it; every room when --room is left out.
    join(&mut bob, "dm:alice+bob");
    let dm_last = say(&mut bob, "dm:alice+bob", "psst");
    let r = admin_json(
        dir,
        &["users", "reads", "reset", "alice", "--to", "999999999"],
    );
    let reset = r["reset"].as_array().unwrap();
    assert_eq!(reset.len(), 2, "{r}");
    assert_eq!(reset[0], json!({"room":"dm:alice+bob","read":dm_last}));
    assert_eq!(reset[1], json!({"room":"general","read":last}));
    assert_eq!(r["live_connections"], 2);
    for c in [&mut a1, &mut a2] {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let (v, _) = c.wait_for(T, |v| v["type"] == "read");
            seen.push((v["room"].as_str().unwrap().to_owned(), id_of(&v)));
        }
        seen.sort();
        assert_eq!(
            seen,
            [("dm:alice+bob".into(), dm_last), ("general".into(), last)]
        );
    }
    let r = admin_json(dir, &["users", "reads", "alice", "--room", "dm:alice+bob"]);
    assert_eq!(
        r["rooms"][0]["listed"], true,
        "a DM room with a message is listed: {r}"
    );

    // Errors: no marker there, no such user, a bad room name.
    admin(
        dir,
        &["users", "reads", "reset", "alice", "--room", "random"],
    )
    .fails(1);
    admin(dir, &["users", "reads", "nobody"]).fails(1);
    admin(dir, &["users", "reads", "alice", "--room", "Bad Name"]).fails(2);
    admin(dir, &["users", "reads"]).fails(2);
    admin(dir, &["users", "reads", "reset"]).fails(2);

    // Offline: the markers are durable, and a reset works without a server.
    drop((a1, a2, bob));
    let server = stop(server);
    let dir = server.data_dir();
    let r = admin_json(dir, &["users", "reads", "alice", "--room", "general"]);
    assert_eq!(r["rooms"][0]["read"], last);
    let r = admin_json(dir, &["users", "reads", "reset", "alice"]);
    assert_eq!(r["reset"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["live_connections"], Value::Null);
    let r = admin_json(dir, &["users", "reads", "alice"]);
    assert!(
        r["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["read"] == 0),
        "{r}"
    );

    // Deleting the account removes its markers: a new account of that name has none.
    let out = admin_json(dir, &["users", "delete", "alice", "--keep-messages"]);
    assert_eq!(out["read_markers_deleted"], 2, "{out}");
    add_user(dir, "alice", "another-password");
    assert_eq!(
        admin_json(dir, &["users", "reads", "alice"])["rooms"],
        json!([])
    );
}

#[test]
fn deleting_a_user_live_removes_their_read_markers_and_direct_messages() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir();
    let mut bob = server.register("bob");
    join(&mut bob, "general");
    let last = say(&mut bob, "general", "hi");
    let mut alice = server.register("alice");
    join(&mut alice, "general");
    read(&mut alice, "general", last);
    join(&mut bob, DM);
    say(&mut bob, DM, "a secret for alice");
    let out = admin_json(dir, &["users", "delete", "alice", "--keep-messages"]);
    assert_eq!(out["dm_rooms_deleted"], json!([DM]), "{out}");
    // (Her connection got the DM as a `notify` first: it had not joined the room.)
    let (_, end) = alice.read_until_end(T);
    assert!(matches!(end, common::Event::Closed(Some(1008))), "{end:?}");
    bob.wait_for(T, |v| v["type"] == "left" && v["room"] == DM);
    let mut again = server.register("alice");
    let joined = join(&mut again, "general");
    assert_eq!(joined.joined["read"], 0, "{}", joined.joined);
    // A new account of the same name does not inherit the conversation.
    let dm = join(&mut again, DM);
    assert!(dm.ids().is_empty(), "{:?}", dm.ids());
}

#[test]
fn export_and_import_keep_edited_state_and_dm_rooms() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir();
    let mut alice = server.register("alice");
    server.register("bob");
    join(&mut alice, DM);
    let id = say(&mut alice, DM, "draft");
    edit(&mut alice, DM, id, "final");
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap();
    admin(dir, &["export", "--out", path]).ok();
    let text = std::fs::read_to_string(path).unwrap();
    let line: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["type"] == "message")
        .unwrap();
    assert_eq!(line["text"], "final");
    let edited_ts = line["edited_ts"].as_u64().expect("edited_ts exported");

    let target = tempfile::tempdir().unwrap();
    let r = admin_json(target.path(), &["import", path]);
    assert_eq!(r["messages"], 1, "{r}");
    let h = admin_json(target.path(), &["messages", "show", DM, &id.to_string()]);
    assert_eq!(h["message"]["text"], "final");
    assert_eq!(h["message"]["edited_ts"], edited_ts);
    assert_eq!(h["events"], json!([]), "events are not exported");
    let text = admin(target.path(), &["messages", "show", DM, &id.to_string()])
        .ok()
        .to_owned();
    assert!(text.contains("imported from an export"), "{text}");
    assert_eq!(
        admin_json(target.path(), &["rooms", "show", DM])["participants"],
        json!(["alice", "bob"])
    );
    // A message never edited exports no edited_ts.
    let id2 = say(&mut alice, DM, "plain");
    let out = admin(dir, &["export"]);
    let plain = out
        .ok()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["id"] == id2)
        .unwrap();
    assert!(plain.get("edited_ts").is_none(), "{plain}");
}
