//! PROTOCOL.md "Sending": ack then message, broadcast, cid handling and idempotency, ordering.
mod common;
use common::*;
use serde_json::json;
use std::collections::HashSet;

const FAST: &[&str] = &["--rate", "100000", "--burst", "100000"];

/// Two users in `room`, alice's presence event about bob consumed.
fn pair(s: &TestServer, room: &str) -> (Client, Client) {
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    a.join(room);
    b.join(room);
    let p = a.expect("presence");
    assert_eq!(p["user"], "bob");
    (a, b)
}

#[test]
fn ack_then_message_to_sender_and_message_to_others() {
    let s = TestServer::start(&[]);
    let (mut a, mut b) = pair(&s, "general");
    let before = now_ms();
    a.send_json(&json!({"type":"send","room":"general","text":"hello","cid":"b5f2c1"}));
    let ack = a.expect("ack");
    let after = now_ms();
    check_ack_shape(&ack);
    assert_eq!(ack["room"], "general");
    assert_eq!(ack["cid"], "b5f2c1");
    let ts = ack["ts"].as_u64().unwrap();
    assert!(
        ts + 2000 >= before && ts <= after + 2000,
        "ack.ts {ts} not within [{before}, {after}]"
    );
    let id = id_of(&ack);
    assert!((1..=MAX_SAFE_ID).contains(&id));

    let expected = json!({"type":"message","room":"general","id":id,"user":"alice","text":"hello","ts":ts,"cid":"b5f2c1"});
    let mine = a.expect("message");
    assert_eq!(
        mine, expected,
        "the sender's copy comes after its ack and matches it"
    );
    let theirs = b.expect("message");
    assert_eq!(theirs, expected, "every member gets the same message");
}

#[test]
fn without_cid_the_field_is_absent() {
    let s = TestServer::start(&[]);
    let (mut a, mut b) = pair(&s, "general");
    let (ack, m) = a.say("general", "no cid here");
    assert!(
        ack.get("cid").is_none(),
        "ack without cid must not carry the field: {ack}"
    );
    assert!(
        m.get("cid").is_none(),
        "message without cid must not carry the field: {m}"
    );
    let mb = b.expect("message");
    assert!(mb.get("cid").is_none(), "{mb}");
    let h = b.history(json!({"type":"history","room":"general"}));
    let hm = &h["messages"][0];
    assert_eq!(hm["id"], ack["id"]);
    assert!(hm.get("cid").is_none(), "history entry without cid: {hm}");
}

#[test]
fn ids_are_unique_across_rooms_and_increase_within_a_room() {
    let s = TestServer::start(FAST);
    let mut a = s.register("alice");
    for r in ["r1", "r2", "r3"] {
        a.join(r);
    }
    let mut all = HashSet::new();
    let mut per_room: std::collections::HashMap<&str, Vec<u64>> = Default::default();
    for i in 0..30 {
        let r = ["r1", "r2", "r3"][i % 3];
        let (ack, _) = a.say(r, &format!("m{i}"));
        let id = id_of(&ack);
        assert!(all.insert(id), "id {id} reused across rooms");
        per_room.entry(r).or_default().push(id);
    }
    for (r, ids) in per_room {
        assert_strictly_increasing(&ids, r);
    }
}

#[test]
fn pipelined_sends_are_accepted_in_order() {
    let s = TestServer::start(FAST);
    let (mut a, mut b) = pair(&s, "r");
    let n = 60;
    for i in 0..n {
        a.send_json(
            &json!({"type":"send","room":"r","text":format!("seq {i}"),"cid":format!("p{i}")}),
        );
    }
    let mut acks = Vec::new();
    let mut echoes = Vec::new();
    while acks.len() < n || echoes.len() < n {
        let v = a.recv_json(T);
        match v["type"].as_str() {
            Some("ack") => {
                // The sender's copy of a message always comes after its ack.
                assert!(
                    !echoes
                        .iter()
                        .any(|e: &serde_json::Value| e["id"] == v["id"]),
                    "message arrived before its ack: {v}"
                );
                acks.push(v)
            }
            Some("message") => {
                assert!(
                    acks.iter().any(|x| x["id"] == v["id"]),
                    "message before its ack: {v}"
                );
                echoes.push(v)
            }
            _ => panic!("unexpected {v}"),
        }
    }
    let cids: Vec<String> = acks
        .iter()
        .map(|x| x["cid"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    assert_eq!(cids, want, "acks come in the order the sends were made");
    let ids: Vec<u64> = acks.iter().map(id_of).collect();
    assert_strictly_increasing(&ids, "ids follow the order of one connection's sends");
    let got: Vec<u64> = (0..n).map(|_| id_of(&b.expect("message"))).collect();
    assert_eq!(got, ids, "others receive the messages in id order");
    for (i, e) in echoes.iter().enumerate() {
        assert_eq!(e["text"], format!("seq {i}"));
    }
}

#[test]
fn repeated_cid_returns_the_original_ack_and_stores_nothing() {
    let s = TestServer::start(FAST);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    a.join("one");
    a.join("two");
    b.join("one");
    b.join("two");
    a.expect("presence");
    a.expect("presence");

    let (orig, _) = a.say_cid("one", "first text", "dup-1");
    assert_eq!(b.expect("message")["id"], orig["id"]);

    // Same cid, same room, same text.
    a.send_json(&json!({"type":"send","room":"one","text":"first text","cid":"dup-1"}));
    assert_eq!(
        a.expect("ack"),
        orig,
        "a repeated cid gets the original ack"
    );
    // Same cid, another room, another text.
    a.send_json(&json!({"type":"send","room":"two","text":"different","cid":"dup-1"}));
    assert_eq!(
        a.expect("ack"),
        orig,
        "same cid in another room with other text: the original ack"
    );
    // Neither repeat is echoed to the sender: the next frames belong to a fresh send.
    let (fresh, _) = a.say_cid("two", "fresh", "dup-2");
    assert!(id_of(&fresh) > id_of(&orig));

    // Bob saw nothing but the fresh message.
    let (m, skipped) = b.wait_for(T, |v| v["type"] == "message" && v["id"] == fresh["id"]);
    assert_eq!(m["text"], "fresh");
    assert!(
        skipped.is_empty(),
        "repeats must not be broadcast: {skipped:?}"
    );
    // And nothing extra was stored.
    let h1 = b.history(json!({"type":"history","room":"one"}));
    let h2 = b.history(json!({"type":"history","room":"two"}));
    let t1: Vec<&str> = h1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    let t2: Vec<&str> = h2["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(t1, vec!["first text"]);
    assert_eq!(t2, vec!["fresh"]);
}

#[test]
fn repeated_cid_from_another_connection_of_the_same_user() {
    let s = TestServer::start(FAST);
    let (mut a, mut b) = pair(&s, "r");
    let (orig, _) = a.say_cid("r", "before reconnect", "lost-ack-1");
    b.expect("message");
    let token = a.token.clone();
    a.drop_tcp();

    // Reconnect (token), rejoin, re-send the unacked send with the same cid.
    let mut a2 = s.resume(&token);
    let j = a2.join_since("r", 0);
    assert_eq!(j.ids(), vec![id_of(&orig)]);
    a2.send_json(&json!({"type":"send","room":"r","text":"before reconnect","cid":"lost-ack-1"}));
    assert_eq!(
        a2.expect("ack"),
        orig,
        "the original ack, from any connection of the same user"
    );
    let extra = a2.barrier();
    assert!(extra.is_empty(), "no echo for a repeat: {extra:?}");

    // A different user may use the same cid: that is a new message.
    let (bob_ack, _) = b.say_cid("r", "bob's own", "lost-ack-1");
    assert_ne!(bob_ack["id"], orig["id"], "cids are per user");
    let m = a2.expect("message");
    assert_eq!(m["user"], "bob");
    assert_eq!(m["cid"], "lost-ack-1");
}

#[test]
fn repeated_cid_still_requires_membership_of_the_named_room() {
    let s = TestServer::start(FAST);
    let mut a = s.register("alice");
    a.join("r");
    let (orig, _) = a.say_cid("r", "x", "m-1");
    a.send_json(&json!({"type":"send","room":"elsewhere","text":"x","cid":"m-1"}));
    let e = a.expect_error("not_joined");
    assert_eq!(e["ref"], "m-1", "{e}");
    a.send_json(&json!({"type":"send","room":"r","text":"x","cid":"m-1"}));
    assert_eq!(a.expect("ack"), orig);
}

#[test]
fn a_refused_send_does_not_consume_its_cid() {
    // An error never stores anything, so a cid used in a refused send is still fresh.
    let s = TestServer::start(FAST);
    let mut a = s.register("alice");
    a.join("r");
    a.send_json(&json!({"type":"send","room":"r","text":"   ","cid":"retry-1"}));
    a.expect_error("bad_request");
    a.send_json(&json!({"type":"send","room":"nope","text":"x","cid":"retry-1"}));
    a.expect_error("not_joined");
    let (ack, m) = a.say_cid("r", "now valid", "retry-1");
    assert_eq!(
        m["text"], "now valid",
        "the refused sends did not register the cid: {ack}"
    );
}

#[test]
fn sender_receives_its_own_message_once_per_connection() {
    let s = TestServer::start(FAST);
    let mut a1 = s.register("alice");
    let mut a2 = s.login("alice", PASSWORD);
    a1.join("r");
    a2.join("r");
    let (ack, _) = a1.say("r", "hi");
    let m = a2.expect("message");
    assert_eq!(m["id"], ack["id"]);
    let e1 = a1.barrier();
    let e2 = a2.barrier();
    assert!(
        e1.is_empty() && e2.is_empty(),
        "exactly one copy per connection: {e1:?} {e2:?}"
    );
}
