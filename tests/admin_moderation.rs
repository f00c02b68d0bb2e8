//! Moderation through a running server: what connected clients see.

mod admin_common;
mod common;

use admin_common::*;
use common::{id_of, message_ids, Client, TestServer, PASSWORD, T};
use serde_json::json;

/// Sends `auth` with a token on a fresh connection; returns the reply frame.
fn try_resume(server: &TestServer, token: &str) -> (serde_json::Value, Client) {
    let mut c = server.connect();
    let reply = c.auth(json!({"type":"auth","token":token}));
    (reply, c)
}

#[test]
fn ban_closes_live_connections_with_1008_and_blocks_token_resume() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir();
    let mut a1 = server.register("alice");
    let token = a1.token.clone();
    a1.join("general");
    let mut a2 = server.resume(&token);
    let mut bob = server.register("bob");
    bob.join("general");

    let out = admin(dir, &["users", "ban", "ALICE"]).ok().to_owned();
    assert!(out.contains("2 live connection(s) closed"), "{out}");
    for c in [&mut a1, &mut a2] {
        let (frames, end) = c.read_until_end(T);
        assert!(
            frames
                .iter()
                .any(|f| f["type"] == "error" && f["code"] == "banned"),
            "a banned connection is told why before the close: {frames:?}"
        );
        assert!(
            matches!(end, common::Event::Closed(Some(1008))),
            "banned connections close with 1008, got {end:?}"
        );
    }
    // Others are untouched.
    bob.who("general");

    // The token no longer resumes, and the password no longer logs in.
    let (reply, mut c) = try_resume(&server, &token);
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "banned", "{reply}");
    c.expect_close_code(1008, T);
    let mut c = server.connect();
    let reply = c.auth(json!({"type":"auth","user":"alice","password":PASSWORD}));
    assert_eq!(reply["code"], "banned", "{reply}");

    // Unban: the password works again, the old token stays revoked.
    admin(dir, &["users", "unban", "alice"]).ok();
    server.login("alice", PASSWORD);
    let (reply, _c) = try_resume(&server, &token);
    assert_eq!(reply["code"], "auth_failed", "revoked token: {reply}");

    // Same through a restart: the ban is durable.
    admin(dir, &["users", "ban", "alice"]).ok();
    let mut server = server;
    server.sigterm();
    assert!(server.wait_exit(T).success());
    server.restart();
    let mut c = server.connect();
    let reply = c.auth(json!({"type":"auth","user":"alice","password":PASSWORD}));
    assert_eq!(reply["code"], "banned", "{reply}");
}

#[test]
fn kick_closes_with_1008_but_the_token_still_works() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir();
    let mut c = server.register("mallory");
    let token = c.token.clone();
    let out = admin(dir, &["kick", "mallory"]).ok().to_owned();
    assert!(out.contains("closed 1 connection"), "{out}");
    let (_, end) = c.read_until_end(T);
    assert!(matches!(end, common::Event::Closed(Some(1008))), "{end:?}");
    server.resume(&token);
    admin(dir, &["kick", "nobody"]).fails(1);
}

#[test]
fn deleted_messages_disappear_from_live_screens_and_history() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir();
    let mut alice = server.register("alice");
    alice.join("general");
    let mut bob = server.register("bob");
    bob.join("general");
    alice.expect("presence");
    let (ack1, _) = alice.say("general", "keep me");
    let (ack2, _) = alice.say("general", "spam");
    bob.expect("message");
    bob.expect("message");
    let spam = id_of(&ack2);
    admin(dir, &["messages", "delete", &spam.to_string()]).ok();
    let mut seqs = Vec::new();
    for c in [&mut alice, &mut bob] {
        let (ev, _) = c.wait_for(T, |v| v["type"] == "deleted");
        // A sequenced event of protocol 1.1: its own seq after the message, by [system].
        assert_eq!(
            (&ev["room"], &ev["id"], &ev["user"]),
            (&json!("general"), &json!(spam), &json!("[system]")),
            "{ev}"
        );
        assert!(ev["seq"].as_u64().unwrap() > spam, "{ev}");
        assert!(ev["ts"].as_u64().is_some(), "{ev}");
        seqs.push(ev["seq"].clone());
    }
    assert_eq!(seqs[0], seqs[1], "one event, seen by both");
    let h = alice.history(json!({"type":"history","room":"general"}));
    let ids = message_ids(&h);
    assert_eq!(ids, [id_of(&ack1)]);
    // A fresh join does not replay it either.
    let mut carol = server.register("carol");
    assert_eq!(carol.join("general").ids(), [id_of(&ack1)]);

    // Deleting a user with --delete-messages does the same for all their messages.
    admin(dir, &["users", "delete", "alice", "--delete-messages"]).ok();
    let (ev, _) = bob.wait_for(T, |v| v["type"] == "deleted");
    assert_eq!(ev["id"], id_of(&ack1));
    let (_, end) = alice.read_until_end(T);
    assert!(matches!(end, common::Event::Closed(Some(1008))), "{end:?}");
}

#[test]
fn announcements_are_ordinary_durable_messages_from_system() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir();
    let mut alice = server.register("alice");
    alice.join("general");
    alice.join("random");
    let (ack, _) = alice.say("general", "before");
    admin(
        dir,
        &["announce", "--room", "general", "restart", "at", "noon"],
    )
    .ok();
    let m = alice.expect("message");
    assert_eq!(m["room"], "general");
    assert_eq!(m["user"], "[system]");
    assert_eq!(m["text"], "restart at noon");
    assert!(id_of(&m) > id_of(&ack));
    // To every room.
    admin(dir, &["announce", "all", "rooms"]).ok();
    let mut rooms = vec![
        alice.expect("message")["room"].as_str().unwrap().to_owned(),
        alice.expect("message")["room"].as_str().unwrap().to_owned(),
    ];
    rooms.sort();
    assert_eq!(rooms, ["general", "random"]);
    // Replayed to late joiners.
    let mut bob = server.register("bob");
    let j = bob.join("general");
    assert_eq!(j.messages.len(), 3);
    admin(dir, &["announce", "--room", "nope", "x"]).fails(1);
    admin(dir, &["announce", "--room", "general", "   "]).fails(2);
}

#[test]
fn online_lists_connections_with_peer_and_rooms() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir();
    let mut alice = server.register("alice");
    alice.join("general");
    alice.join("random");
    let _bob = server.register("bob");
    let online = admin_json(dir, &["online"]);
    let list = online.as_array().unwrap();
    assert_eq!(list.len(), 2, "{online}");
    let a = list.iter().find(|c| c["user"] == "alice").unwrap();
    assert_eq!(a["rooms"], json!(["general", "random"]));
    assert!(a["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(a["since"].as_str().unwrap().ends_with('Z'));
    let table = admin(dir, &["online"]).ok().to_owned();
    assert!(
        table.contains("alice") && table.contains("general,random"),
        "{table}"
    );
    let s = admin_json(dir, &["stats"]);
    assert_eq!(s["server"]["connections"], 2);
    assert_eq!(s["server"]["online_users"], 2);
    let show = admin_json(dir, &["rooms", "show", "general"]);
    assert_eq!(show["online"], json!(["alice"]));
    assert_eq!(
        admin_json(dir, &["users", "show", "alice"])["connections"],
        1
    );
}

#[test]
fn deleting_a_room_tells_its_members_and_keeps_ids_retired() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir();
    let mut alice = server.register("alice");
    alice.join("doomed");
    let (ack, _) = alice.say("doomed", "last words");
    admin(dir, &["rooms", "delete", "doomed"]).ok();
    let left = alice.expect("left");
    assert_eq!(left["room"], "doomed");
    admin(dir, &["rooms", "show", "doomed"]).fails(1);
    // A new room of the same name starts empty and never reuses an id.
    let mut bob = server.register("bob");
    let j = bob.join("doomed");
    assert!(j.messages.is_empty());
    let (ack2, _) = bob.say("doomed", "fresh start");
    assert!(id_of(&ack2) > id_of(&ack));
}

#[test]
fn a_member_of_a_deleted_room_can_join_it_again_on_the_same_connection() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir();
    let mut alice = server.register("alice");
    alice.join("doomed");
    let (old, _) = alice.say("doomed", "before the delete");
    admin(dir, &["rooms", "delete", "doomed"]).ok();
    alice.expect("left");
    // The old room is gone for this connection: its frames are not_joined until it joins again.
    alice.send_json(&json!({"type":"send","room":"doomed","text":"into the void"}));
    alice.expect_error("not_joined");
    let j = alice.join("doomed");
    assert!(
        j.messages.is_empty(),
        "a recreated room starts empty: {:?}",
        j.messages
    );
    assert_eq!(
        j.synced["last_id"], 0,
        "the new room has no messages yet: {}",
        j.synced
    );
    let (ack, message) = alice.say("doomed", "after the delete");
    assert!(id_of(&ack) > id_of(&old), "ids stay retired: {ack}");
    assert_eq!(message["text"], "after the delete");
}

#[test]
fn a_client_resuming_from_a_pruned_id_gets_what_remains_in_order() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir();
    let mut alice = server.register("alice");
    alice.join("general");
    let mut ids = vec![];
    for i in 0..10 {
        ids.push(id_of(&alice.say("general", &format!("m{i}")).0));
    }
    let r = admin_json(dir, &["prune", "--keep-last", "4"]);
    assert_eq!(r["removed"], 6);
    let mut bob = server.register("bob");
    let j = bob.join_since("general", ids[1]);
    assert_eq!(j.ids(), ids[6..]);
    assert_eq!(j.last_id(), ids[9]);
    alice.expect("presence");
    // New messages continue after the kept ones.
    let (ack, _) = alice.say("general", "after prune");
    assert!(id_of(&ack) > ids[9]);
}
