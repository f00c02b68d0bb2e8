//! Cluster mode (`--cluster redis://…`): several nodes sharing rooms and accounts through one
//! Redis. Each test starts its own Redis (tests/common/redis.rs) and its own nodes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

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
