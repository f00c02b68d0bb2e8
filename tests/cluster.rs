//! Cluster mode (`--cluster redis://…`): several nodes sharing rooms and accounts through one
//! Redis. Each test starts its own Redis (tests/common/redis.rs) and its own nodes.

mod admin_common;
mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use admin_common::admin;
use common::redis::Redis;
use common::*;
use serde_json::{json, Value};

fn node(redis: &Redis) -> TestServer {
    TestServer::start(&["--cluster", &redis.url()])
}

/// Reads frames until `n` messages of `room` arrived; checks each of the reader's own sends
/// was acked just before its own copy. Returns the messages' ids and texts in arrival order.
fn read_messages(c: &mut Client, room: &str, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    let mut acked: HashMap<u64, Value> = HashMap::new();
    while got.len() < n {
        let v = c.recv_json(Duration::from_secs(20));
        match v["type"].as_str() {
            Some("ack") => {
                acked.insert(id_of(&v), v);
            }
            Some("message") if v["room"] == room => {
                if v["user"] == c.user.as_str() {
                    assert!(
                        acked.contains_key(&id_of(&v)),
                        "[{}] own message {v} before its ack",
                        c.user
                    );
                }
                got.push((id_of(&v), v["text"].as_str().unwrap().to_string()));
            }
            Some("presence") => {}
            _ => panic!("[{}] unexpected {v}", c.user),
        }
    }
    got
}

#[test]
fn a_room_shared_by_two_nodes_delivers_every_message_to_every_member_in_one_order() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut alice = a.register("alice");
    let mut bob = b.register("bob");
    alice.join("general");
    bob.join("general");
    for i in 0..20 {
        alice.send_json(
            &json!({"type":"send","room":"general","text":format!("a{i}"),"cid":format!("a{i}")}),
        );
        bob.send_json(
            &json!({"type":"send","room":"general","text":format!("b{i}"),"cid":format!("b{i}")}),
        );
    }
    let seen_by_alice = read_messages(&mut alice, "general", 40);
    let seen_by_bob = read_messages(&mut bob, "general", 40);
    assert_eq!(seen_by_alice, seen_by_bob, "both nodes deliver one order");
    let ids: Vec<u64> = seen_by_alice.iter().map(|(id, _)| *id).collect();
    assert_strictly_increasing(&ids, "ids across nodes");
    // Each sender's messages in the order it sent them.
    for sender in ["a", "b"] {
        let texts: Vec<&str> = seen_by_alice
            .iter()
            .map(|(_, t)| t.as_str())
            .filter(|t| t.starts_with(sender))
            .collect();
        let sent: Vec<String> = (0..20).map(|i| format!("{sender}{i}")).collect();
        assert_eq!(texts, sent);
    }
}

#[test]
fn an_account_made_on_one_node_logs_in_and_resumes_on_another() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let alice = a.register("alice");
    let again = b.login("alice", PASSWORD);
    assert_eq!(again.welcome["user"], "alice");
    let resumed = b.resume(&alice.token);
    assert_eq!(resumed.welcome["token"], alice.token.as_str());
    let mut taken = b.connect();
    taken.send_json(&json!({"type":"auth","user":"ALICE","password":PASSWORD,"register":true}));
    taken.expect_error("user_exists");
}

#[test]
fn a_client_moving_from_a_killed_node_resumes_with_since_and_nothing_acked_is_lost() {
    let redis = Redis::start();
    let (mut a, b) = (node(&redis), node(&redis));
    let mut alice = a.register("alice");
    alice.join("general");
    let mut acked = Vec::new();
    for i in 0..10 {
        let (ack, _) = alice.say_cid("general", &format!("m{i}"), &format!("c{i}"));
        acked.push(id_of(&ack));
    }
    let token = alice.token.clone();
    a.kill9();
    let mut moved = b.resume(&token);
    let replay = moved.join_since("general", acked[2]);
    assert_eq!(
        replay.ids(),
        acked[3..].to_vec(),
        "everything after since, once"
    );
    assert_eq!(replay.last_id(), acked[9]);
    // A resend of an acked cid is answered with the original, not stored again.
    let ack = moved.send_msg("general", "m9 again", Some("c9"));
    assert_eq!(id_of(&ack), acked[9]);
    moved.assert_quiet("after the original ack of a resent cid");
    let history = moved.history(json!({"type":"history","room":"general","limit":50}));
    assert_eq!(message_ids(&history), acked);
}

#[test]
fn strict_durability_refuses_a_redis_that_does_not_fsync_every_write() {
    let redis = Redis::start_with(&["--appendonly", "no"]);
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            &redis.url(),
        ])
        .arg("--data-dir")
        .arg(tempfile::TempDir::new().unwrap().path())
        .output()
        .expect("runs");
    assert!(!out.status.success(), "must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("appendfsync always") && stderr.contains("--durability relaxed"),
        "says what to change: {stderr}"
    );
}

fn is_presence(user: &'static str, state: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["type"] == "presence" && v["user"] == user && v["state"] == state
}

/// `leave`, skipping presence events that arrive first.
fn leave(c: &mut Client, room: &str) {
    c.send_json(&json!({"type":"leave","room":room}));
    c.wait_for(T, |v| v["type"] == "left");
}

fn mentions(frames: &[Value], user: &str) -> bool {
    frames
        .iter()
        .any(|v| v["type"] == "presence" && v["user"] == user)
}

#[test]
fn presence_is_the_same_on_every_node_and_changes_only_when_a_users_last_node_lets_go() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut alice = a.register("alice");
    alice.join("general");
    let mut carol_a = a.register("carol");
    carol_a.join("general");
    alice.wait_for(T, is_presence("carol", "online"));

    // Carol on a second node: already online, so nobody hears of it.
    let mut carol_b = b.login("carol", PASSWORD);
    let joined = carol_b.join("general");
    assert_eq!(joined.members(), names(&["alice", "carol"]));
    let mut dave = b.register("dave");
    assert_eq!(
        dave.join("general").members(),
        names(&["alice", "carol", "dave"])
    );
    let (_, skipped) = alice.wait_for(T, is_presence("dave", "online"));
    assert!(!mentions(&skipped, "carol"), "{skipped:?}");
    assert_eq!(alice.who("general"), names(&["alice", "carol", "dave"]));

    // Carol leaves node A but is still on node B: still online.
    leave(&mut carol_a, "general");
    leave(&mut dave, "general");
    let (_, skipped) = alice.wait_for(T, is_presence("dave", "offline"));
    assert!(!mentions(&skipped, "carol"), "{skipped:?}");
    // Her last node lets go: offline everywhere.
    leave(&mut carol_b, "general");
    alice.wait_for(T, is_presence("carol", "offline"));
    assert_eq!(alice.who("general"), names(&["alice"]));
}

/// Which side of a node's link to Redis is slow.
#[derive(Clone, Copy, PartialEq)]
enum Slow {
    /// What the node sends (its commands and scripts).
    Commands,
    /// What its subscription connection receives (the feed of entries and announcements).
    Feed,
}

/// A TCP proxy in front of Redis that holds each chunk on the `slow` side for `delay` before
/// passing it on: a node with a slow link to Redis. Returns the URL to give the node.
fn slow_link_to(redis: &Redis, slow: Slow, delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("bound").port();
    let redis_port = redis.port;
    thread::spawn(move || {
        for node in listener.incoming() {
            let (Ok(node), Ok(redis)) = (node, TcpStream::connect(("127.0.0.1", redis_port)))
            else {
                continue;
            };
            let (Ok(node_in), Ok(redis_out)) = (node.try_clone(), redis.try_clone()) else {
                continue;
            };
            let subscriber = Arc::new(AtomicBool::new(false));
            let subscribed = subscriber.clone();
            thread::spawn(move || {
                pump(node_in, redis_out, delay, |chunk| {
                    if chunk.windows(9).any(|w| w == b"SUBSCRIBE") {
                        subscribed.store(true, Ordering::SeqCst);
                    }
                    slow == Slow::Commands
                })
            });
            thread::spawn(move || {
                pump(redis, node, delay, |_| {
                    slow == Slow::Feed && subscriber.load(Ordering::SeqCst)
                })
            });
        }
    });
    format!("redis://127.0.0.1:{port}")
}

/// Copies `from` to `to`, holding each chunk for `delay` when `held(chunk)` says so.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration, held: impl Fn(&[u8]) -> bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).unwrap_or(0);
        if n == 0 {
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        if held(&buf[..n]) {
            // Latency injected on purpose: this proxy is a slow network.
            thread::sleep(delay);
        }
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// PROTOCOL.md 13: a join is in Redis before its `joined`, so a user who joins afterwards on
/// another node finds the first among the members, however slow the first node's link to Redis;
/// and a leave before its `left`.
#[test]
fn a_user_who_joins_after_another_got_joined_finds_them_in_the_members_on_any_node() {
    let redis = Redis::start();
    let slow = slow_link_to(&redis, Slow::Commands, Duration::from_millis(200));
    let a = TestServer::start(&["--cluster", &slow]);
    let b = node(&redis);
    let mut alice = a.register("alice");
    let mut bob = b.register("bob");
    alice.join("general");
    assert_eq!(bob.join("general").members(), names(&["alice", "bob"]));
    // Leaving is written before `left` the same way: a node loading the room then has bob only.
    leave(&mut alice, "general");
    let c = node(&redis);
    let mut carol = c.register("carol");
    assert_eq!(carol.join("general").members(), names(&["bob", "carol"]));
}

/// PROTOCOL.md 10 and 13: a client that resumes with `since` on a node that has not yet
/// delivered what the client saw through another node gets none of it again, and `synced` says
/// the `since` it gave.
#[test]
fn resuming_on_a_node_behind_the_one_left_sends_nothing_twice() {
    let redis = Redis::start();
    let a = node(&redis);
    let lagging = slow_link_to(&redis, Slow::Feed, Duration::from_millis(500));
    let b = TestServer::start(&["--cluster", &lagging]);
    let mut carol = b.register("carol");
    carol.join("general");
    let mut alice = a.register("alice");
    alice.join("general");
    let (ack, _) = alice.say("general", "seen on node A");
    let seen = id_of(&ack);

    let mut again = b.resume(&alice.token);
    let j = again.join_since("general", seen);
    assert!(j.messages.is_empty(), "{:?}", j.messages);
    assert_eq!(j.last_id(), seen, "synced says what the client has");
    let (ack, copy) = again.say("general", "sent through node B");
    assert!(id_of(&copy) > seen, "{ack}");
    again.assert_quiet("nothing seen before comes again");
    // Node B's other members get everything, once.
    let (m, _) = carol.wait_for(T, |v| v["type"] == "message" && v["id"] == seen);
    assert_eq!(m["text"], "seen on node A");
    let (m, skipped) = carol.wait_for(T, |v| v["type"] == "message" && v["id"] == ack["id"]);
    assert_eq!(m["text"], "sent through node B");
    assert!(
        !skipped.iter().any(|v| v["type"] == "message"),
        "{skipped:?}"
    );
}

#[test]
fn the_users_of_a_killed_node_go_offline_after_the_grace_period() {
    let redis = Redis::start();
    let grace = ["--cluster", &redis.url(), "--presence-grace", "1s"];
    let (a, mut b) = (TestServer::start(&grace), TestServer::start(&grace));
    let mut alice = a.register("alice");
    alice.join("general");
    let mut bob = b.register("bob");
    bob.join("general");
    alice.wait_for(T, is_presence("bob", "online"));
    b.kill9();
    // One grace period for bob's node to count as dead, a heartbeat of node A to notice.
    alice.wait_for(Duration::from_secs(10), is_presence("bob", "offline"));
    assert_eq!(alice.who("general"), names(&["alice"]));
}

#[test]
fn while_redis_is_down_sends_are_refused_not_acked_and_everything_recovers_when_it_returns() {
    let mut redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut alice = a.register("alice");
    alice.join("general");
    let mut bob = b.register("bob");
    bob.join("general");
    alice.wait_for(T, is_presence("bob", "online"));
    assert_eq!(a.healthz()["cluster"]["redis"], "ok");
    redis.kill();
    alice.send_json(&json!({"type":"send","room":"general","text":"lost?","cid":"down-1"}));
    let refused = alice.expect_error("internal");
    assert_eq!(refused["ref"], "down-1");
    let down = poll_until(
        Duration::from_secs(10),
        "/healthz to report Redis down",
        || {
            let r = a.get("/healthz");
            (r.status == 503).then(|| r.json())
        },
    );
    assert_eq!(down["cluster"]["redis"], "unreachable", "{down}");
    assert_eq!(down["ok"], false);
    redis.kill_and_restart();
    // The client resends with the same cid, as the error says, until Redis takes it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ack = loop {
        alice.send_json(&json!({"type":"send","room":"general","text":"lost?","cid":"down-1"}));
        let v = alice.recv_json(Duration::from_secs(10));
        if v["type"] == "ack" {
            break v;
        }
        assert_eq!(v["type"], "error", "{v}");
        assert!(
            std::time::Instant::now() < deadline,
            "Redis never came back: {v}"
        );
    };
    // Both nodes' feeds came back too: bob gets it, once.
    let (msg, _) = bob.wait_for(Duration::from_secs(20), |v| v["type"] == "message");
    assert_eq!(
        (id_of(&msg), msg["text"].as_str()),
        (id_of(&ack), Some("lost?"))
    );
    let history = bob.history(json!({"type":"history","room":"general","limit":50}));
    assert_eq!(message_ids(&history), vec![id_of(&ack)]);
    poll_until(
        Duration::from_secs(10),
        "/healthz to report Redis back",
        || (a.get("/healthz").status == 200).then_some(()),
    );
}

#[test]
fn typing_reaches_the_members_on_other_nodes_and_not_the_typist() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut alice = a.register("alice");
    alice.join("general");
    let mut bob = b.register("bob");
    bob.join("general");
    alice.wait_for(T, is_presence("bob", "online"));
    alice.send_json(&json!({"type":"typing","room":"general"}));
    let (typing, _) = bob.wait_for(T, |v| v["type"] == "typing");
    assert_eq!(
        typing,
        json!({"type":"typing","room":"general","user":"alice"})
    );
    // Bob's own typing comes back to alice, never to bob.
    bob.send_json(&json!({"type":"typing","room":"general"}));
    let (typing, skipped) = alice.wait_for(T, |v| v["type"] == "typing");
    assert_eq!(typing["user"], "bob");
    assert!(skipped.iter().all(|v| v["type"] != "typing"), "{skipped:?}");
    bob.assert_quiet("after relaying his own typing");
}

#[test]
fn edits_and_deletions_reach_every_node_in_log_order_and_replay_in_their_current_state() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut alice = a.register("alice");
    alice.join("general");
    let mut bob = b.register("bob");
    bob.join("general");
    alice.wait_for(T, is_presence("bob", "online"));
    let (ack, _) = alice.say("general", "frist");
    let id = id_of(&ack);
    bob.wait_for(T, |v| v["type"] == "message");

    let (edit_ack, edited) = alice.edit_and_echo("general", id, "first");
    let (seen, _) = bob.wait_for(T, |v| v["type"] == "edited");
    assert_eq!(seen, edited);
    assert_eq!(
        (seen["id"].as_u64(), seq_of(&seen)),
        (Some(id), id_of(&edit_ack))
    );
    // Only the author may change it, whichever node they are on.
    bob.send_json(&json!({"type":"edit","room":"general","id":id,"text":"mine now"}));
    bob.expect_error("forbidden");
    let history = bob.history(json!({"type":"history","room":"general","limit":50}));
    assert_eq!(history["messages"][0]["text"], "first", "{history}");

    let (delete_ack, deleted) = alice.delete_and_echo("general", id);
    let (seen, _) = bob.wait_for(T, |v| v["type"] == "deleted");
    assert_eq!(seen, deleted);
    alice.send_json(&json!({"type":"delete","room":"general","id":id}));
    alice.expect_error("not_found");

    // A client of node B resuming from before all of it: the deletion, not the text.
    let mut again = b.resume(&bob.token);
    let replay = again.join11_since("general", 0);
    let kinds: Vec<(String, u64)> = replay
        .items
        .iter()
        .map(|v| (v["type"].as_str().unwrap().to_string(), seq_of_or_id(v)))
        .collect();
    assert_eq!(kinds, [("deleted".to_string(), id_of(&delete_ack))]);
    let history = again.history(json!({"type":"history","room":"general","limit":50}));
    assert_eq!(message_ids(&history), Vec::<u64>::new());
}

fn seq_of_or_id(v: &Value) -> u64 {
    v.get("seq")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| id_of(v))
}

#[test]
fn read_markers_and_the_conversation_list_follow_a_user_across_nodes() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut alice_a = a.register("alice");
    alice_a.join11("general");
    let mut alice_b = b.login("alice", PASSWORD);
    alice_b.join11("general");
    let mut bob = b.register("bob");
    bob.join11("general");
    let mut ids = Vec::new();
    for text in ["hi", "@alice look", "bye"] {
        let (ack, _) = bob.say("general", text);
        ids.push(id_of(&ack));
    }
    let entry = alice_a.room_entry("general").expect("on alice's list");
    assert_eq!(
        (entry["unread"].as_u64(), entry["mentions"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(entry["last"]["text"], "bye");

    // Read on node A: both of alice's connections hear the marker, node B's too.
    assert_eq!(alice_a.mark_read("general", ids[1]), ids[1]);
    let (echo, _) = alice_b.wait_for(T, |v| v["type"] == "read");
    assert_eq!(
        (echo["room"].as_str(), id_of(&echo)),
        (Some("general"), ids[1])
    );
    let entry = alice_b.room_entry("general").expect("listed");
    assert_eq!(
        (entry["read"].as_u64(), entry["unread"].as_u64()),
        (Some(ids[1]), Some(1))
    );
    // Markers only move forward.
    assert_eq!(alice_b.mark_read("general", ids[0]), ids[1]);
    // A new connection's `joined` carries it.
    let mut third = a.login("alice", PASSWORD);
    assert_eq!(third.join11("general").read(), ids[1]);

    // `leave` takes the room off the list on every node.
    leave(&mut alice_a, "general");
    assert!(alice_b.room_entry("general").is_none());
}

#[test]
fn direct_messages_across_nodes_with_notifications_for_the_user_not_in_the_room() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut alice = a.register("alice");
    let mut bob = b.register("bob");
    let mut carol = a.register("carol");
    let dm = dm_room("alice", "bob");
    alice.join11(&dm);
    let (ack, _) = alice.say(&dm, "psst");
    // Bob is on the other node and has not joined: a notification.
    let (notify, _) = bob.wait_for(T, |v| v["type"] == "notify");
    assert_eq!(
        (
            notify["room"].as_str(),
            id_of(&notify),
            notify["user"].as_str(),
            notify["text"].as_str()
        ),
        (Some(dm.as_str()), id_of(&ack), Some("alice"), Some("psst"))
    );
    let entry = bob.room_entry(&dm).expect("the DM is on bob's list");
    assert_eq!(entry["unread"].as_u64(), Some(1));
    // Others are kept out; a DM with nobody is not found.
    carol.send_json(&json!({"type":"join","room":dm}));
    carol.expect_error("forbidden");
    carol.send_json(&json!({"type":"join","room":dm_room("carol", "nobody")}));
    carol.expect_error("not_found");
    // Bob joins from node B and answers.
    let replay = bob.join11(&dm);
    assert_eq!(replay.items.len(), 1);
    bob.say(&dm, "hello");
    alice.wait_for(T, |v| v["type"] == "message" && v["text"] == "hello");
    alice.assert_quiet("no notification for a room alice has joined");
}

#[test]
fn a_single_node_database_moves_into_a_cluster_with_its_ids_tokens_and_cids() {
    // A single server with history: rooms, a DM, an edit, cids, a session.
    let mut single = TestServer::start(&[]);
    let mut alice = single.register("alice");
    let mut bob = single.register("bob");
    alice.join("general");
    bob.join("general");
    alice.expect("presence");
    let mut acked = Vec::new();
    for i in 0..3 {
        let (ack, _) = alice.say_cid("general", &format!("m{i}"), &format!("c{i}"));
        acked.push(id_of(&ack));
    }
    alice.edit_and_echo("general", acked[0], "m0, edited");
    let dm = dm_room("alice", "bob");
    alice.join(&dm);
    let (dm_ack, _) = alice.say(&dm, "psst");
    let token = alice.token.clone();
    drop((alice, bob));
    single.sigterm();
    single.wait_exit(T);
    let export = tempfile::tempdir().unwrap();
    let file = export.path().join("all.jsonl");
    let file = file.to_str().unwrap();
    admin(
        single.data_dir(),
        &["export", "--with-secrets", "--out", file],
    )
    .ok();

    let redis = Redis::start();
    let empty = tempfile::tempdir().unwrap();
    let imported = admin(empty.path(), &["import", file, "--cluster", &redis.url()]);
    assert!(imported.ok().contains("2 user"), "{}", imported.stdout);
    // Importing again changes nothing.
    let again = admin(
        empty.path(),
        &["import", file, "--cluster", &redis.url(), "--json"],
    );
    let again: Value = serde_json::from_str(again.ok()).unwrap();
    assert_eq!(
        (again["users"].as_u64(), again["messages"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );

    let (a, b) = (node(&redis), node(&redis));
    let mut alice = a.resume(&token);
    let replay = alice.join_since("general", 0);
    assert_eq!(replay.ids(), acked);
    assert_eq!(replay.messages[0]["text"], "m0, edited");
    assert!(
        replay.messages[0]["edited_ts"].is_u64(),
        "{:?}",
        replay.messages[0]
    );
    // New ids go on above the imported ones; a resent cid is still the original.
    let (next, _) = alice.say("general", "after the move");
    assert!(id_of(&next) > id_of(&dm_ack), "{next}");
    let ack = alice.send_msg("general", "m1 again", Some("c1"));
    assert_eq!(id_of(&ack), acked[1]);
    let mut bob = b.login("bob", PASSWORD);
    assert_eq!(bob.join_since(&dm, 0).ids(), vec![id_of(&dm_ack)]);
    assert!(bob.room_entry(&dm).is_some(), "the DM is on bob's list");

    // And back: the cluster's export restores into a single server.
    let back = export.path().join("back.jsonl");
    let back = back.to_str().unwrap();
    let out = admin(
        empty.path(),
        &[
            "export",
            "--with-secrets",
            "--out",
            back,
            "--cluster",
            &redis.url(),
        ],
    );
    assert!(out.ok().contains("exported 2 user(s)"), "{}", out.stdout);
    let restored = tempfile::tempdir().unwrap();
    admin(restored.path(), &["import", back]).ok();
    let single = TestServer::start_in(restored, &[]);
    let mut alice = single.resume(&token);
    let mut ids = acked.clone();
    ids.push(id_of(&next));
    assert_eq!(alice.join_since("general", 0).ids(), ids);
}
