//! PROTOCOL.md "Rooms": joined / replay / synced, since and the replay limit, rejoin, leave,
//! not_joined.
mod common;
use common::*;
use serde_json::json;

const FAST: &[&str] = &["--rate", "100000", "--burst", "100000"];

fn fill(c: &mut Client, room: &str, n: usize) -> Vec<u64> {
    // Pipelined sends in chunks (so acks + echoes never pile up near the send queue size),
    // then the acks and echoes in order.
    let mut ids = Vec::new();
    let mut sent = 0;
    while sent < n {
        let chunk = (n - sent).min(100);
        for i in sent..sent + chunk {
            c.send_json(&json!({"type":"send","room":room,"text":format!("msg {i}")}));
        }
        sent += chunk;
        let mut echoed = 0;
        let mut acked = 0;
        while acked < chunk || echoed < chunk {
            let v = c.recv_json(T);
            match v["type"].as_str() {
                Some("ack") => {
                    ids.push(id_of(&v));
                    acked += 1;
                }
                Some("message") => echoed += 1,
                _ => panic!("unexpected frame while filling {room}: {v}"),
            }
        }
    }
    assert_strictly_increasing(&ids, "acks of one connection");
    ids
}

#[test]
fn joining_an_empty_room_creates_it() {
    let s = TestServer::start(&[]);
    let mut c = s.register("alice");
    let j = c.join("fresh");
    assert_eq!(
        j.members(),
        names(&["alice"]),
        "joined.members includes the caller: {}",
        j.joined
    );
    assert!(j.messages.is_empty());
    assert_eq!(
        j.last_id(),
        0,
        "last_id is 0 for an empty room: {}",
        j.synced
    );
    assert!(!j.more());
}

#[test]
fn join_reply_order_and_members() {
    let s = TestServer::start(FAST);
    let mut a = s.register("alice");
    a.join("general");
    let ids = fill(&mut a, "general", 3);
    let mut b = s.register("bob");
    let j = b.join("general");
    assert_eq!(j.members(), names(&["alice", "bob"]), "{}", j.joined);
    assert_eq!(
        j.ids(),
        ids,
        "replay holds the room's messages oldest first"
    );
    for (m, i) in j.messages.iter().zip(0..) {
        assert_eq!(m["user"], "alice");
        assert_eq!(m["text"], format!("msg {i}"));
    }
    assert_eq!(j.last_id(), *ids.last().unwrap());
    assert!(!j.more());
    // The join reply goes to the joiner only; alice just sees bob come online.
    let p = a.expect("presence");
    assert_eq!(
        p,
        json!({"type":"presence","room":"general","user":"bob","state":"online"})
    );
    let extra = a.barrier();
    assert!(
        extra.is_empty(),
        "alice must not see bob's join reply: {extra:?}"
    );
}

#[test]
fn join_without_since_replays_the_last_50() {
    let s = TestServer::start(FAST);
    let mut a = s.register("alice");
    a.join("r");
    let ids = fill(&mut a, "r", 60);
    let mut b = s.register("bob");
    let j = b.join("r");
    assert_eq!(
        j.ids(),
        ids[10..].to_vec(),
        "without since: the last 50 messages, ascending"
    );
    assert_eq!(j.last_id(), ids[59]);
    assert!(!j.more(), "without since, more is false");
}

#[test]
fn join_with_since_replays_what_was_missed() {
    let s = TestServer::start(FAST);
    let mut a = s.register("alice");
    a.join("r");
    let ids = fill(&mut a, "r", 70);
    let mut b = s.register("bob");
    // since = an id in the middle: everything newer, more than 50 if need be.
    let j = b.join_since("r", ids[5]);
    assert_eq!(
        j.ids(),
        ids[6..].to_vec(),
        "with since: every message with id > since (64 here)"
    );
    assert!(!j.more());
    assert_eq!(j.last_id(), ids[69]);
    // since = 0: all of them (under the default replay limit of 500).
    let j = b.join_since("r", 0);
    assert_eq!(j.ids(), ids);
    // since = the newest id: nothing.
    let j = b.join_since("r", ids[69]);
    assert!(j.messages.is_empty(), "{:?}", j.ids());
    assert_eq!(j.last_id(), ids[69]);
    assert!(!j.more());
    // since beyond the newest id: nothing, no error.
    let j = b.join_since("r", ids[69] + 1000);
    assert!(j.messages.is_empty());
    assert_eq!(j.last_id(), ids[69]);
    // since in an empty room.
    let j = b.join_since("empty", 12345);
    assert!(j.messages.is_empty());
    assert_eq!(j.last_id(), 0);
    assert!(!j.more());
}

#[test]
fn since_replay_stops_at_the_replay_limit_with_more() {
    let mut args = FAST.to_vec();
    args.extend(["--replay-limit", "20"]);
    let s = TestServer::start(&args);
    let mut a = s.register("alice");
    a.join("r");
    let ids = fill(&mut a, "r", 45);
    let mut b = s.register("bob");

    let j = b.join_since("r", 0);
    assert_eq!(
        j.ids(),
        ids[..20].to_vec(),
        "replay stops at the limit, oldest first"
    );
    assert!(j.more(), "newer messages remain: more is true");
    assert_eq!(
        j.last_id(),
        ids[44],
        "last_id is the newest id in the room, not the last replayed"
    );

    // Page on with history after.
    let h = b.history(json!({"type":"history","room":"r","after":ids[19],"limit":200}));
    let got = message_ids(&h);
    assert_eq!(
        got,
        ids[20..].to_vec(),
        "history after the replayed part returns the rest"
    );
    assert_eq!(h["more"], false);

    // Exactly the limit newer than since: everything fits, more is false.
    let j = b.join_since("r", ids[24]);
    assert_eq!(j.ids(), ids[25..45].to_vec());
    assert!(
        !j.more(),
        "exactly replay-limit newer messages: none remain"
    );
    // One more than the limit: more is true.
    let j = b.join_since("r", ids[23]);
    assert_eq!(j.ids(), ids[24..44].to_vec());
    assert!(j.more());

    // Without since: the newest messages, and more is false.
    let j = b.join("r");
    assert!(!j.more(), "without since, more is false");
    assert_eq!(
        *j.ids().last().unwrap(),
        ids[44],
        "without since the newest messages are replayed"
    );
}

#[test]
fn default_replay_limit_is_500() {
    let s = TestServer::start(FAST);
    let mut a = s.register("alice");
    a.join("r");
    let ids = fill(&mut a, "r", 510);
    let mut b = s.register("bob");
    let j = b.join_since("r", 0);
    assert_eq!(j.ids(), ids[..500].to_vec());
    assert!(j.more());
    let j = b.join_since("r", ids[9]);
    assert_eq!(j.ids().len(), 500);
    assert!(!j.more());
}

#[test]
fn rejoin_repeats_the_reply_and_does_not_duplicate_delivery() {
    let s = TestServer::start(FAST);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    a.join("r");
    b.join("r");
    a.expect("presence");
    let ids = fill(&mut a, "r", 3);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let m = b.expect("message");
        seen.push(id_of(&m));
    }
    assert_eq!(seen, ids);

    // Join again on the same connection: the full reply again (a fresh replay).
    let j = b.join("r");
    assert_eq!(j.ids(), ids, "rejoin repeats the replay");
    assert_eq!(j.members(), names(&["alice", "bob"]));
    let j = b.join_since("r", ids[0]);
    assert_eq!(j.ids(), ids[1..].to_vec());

    // Alice does not see bob come online again.
    let extra = a.barrier();
    assert!(
        extra.is_empty(),
        "no presence for a rejoin by an online user: {extra:?}"
    );

    // Live messages still arrive exactly once on bob's connection.
    let (ack1, _) = a.say("r", "after rejoin 1");
    let (ack2, _) = a.say("r", "after rejoin 2");
    let (ack3, _) = a.say("r", "after rejoin 3");
    let (m, skipped) = b.wait_for(T, |v| v["type"] == "message" && v["id"] == ack3["id"]);
    let _ = m;
    let live: Vec<u64> = skipped
        .iter()
        .filter(|v| v["type"] == "message")
        .map(id_of)
        .collect();
    assert_eq!(
        live,
        vec![id_of(&ack1), id_of(&ack2)],
        "each message once per connection, in order: {skipped:?}"
    );
    let extra = b.barrier();
    assert!(
        extra.is_empty(),
        "no duplicate deliveries after a rejoin: {extra:?}"
    );
}

#[test]
fn leave_replies_left_and_stops_delivery() {
    let s = TestServer::start(FAST);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    a.join("r");
    a.join("z");
    b.join("r");
    b.join("z");
    a.expect("presence");
    a.expect("presence");

    b.send_json(&json!({"type":"leave","room":"r"}));
    assert_eq!(b.expect("left"), json!({"type":"left","room":"r"}));
    let p = a.expect("presence");
    assert_eq!(
        p,
        json!({"type":"presence","room":"r","user":"bob","state":"offline"})
    );
    // After leaving, room frames are not_joined.
    b.send_json(&json!({"type":"who","room":"r"}));
    b.expect_error("not_joined");

    // Messages to r no longer reach bob; z still does.
    let (ack_r, _) = a.say("r", "bob is gone");
    let (ack_z, _) = a.say("z", "marker");
    let (_, skipped) = b.wait_for(T, |v| v["type"] == "message" && v["id"] == ack_z["id"]);
    assert!(
        skipped.iter().all(|v| v["id"] != ack_r["id"]),
        "a message to a room bob left must not reach him: {skipped:?}"
    );
    let extra = b.barrier();
    assert!(extra.iter().all(|v| v["id"] != ack_r["id"]), "{extra:?}");

    // Leaving twice: not_joined.
    b.send_json(&json!({"type":"leave","room":"r"}));
    let e = b.expect_error("not_joined");
    assert_eq!(e["ref"], "leave");
}

#[test]
fn room_frames_for_unjoined_rooms_are_not_joined() {
    let s = TestServer::start(&[]);
    let mut a = s.register("alice");
    a.join("mine");
    let mut b = s.register("bob");
    b.join("other");
    for (f, want_ref) in [
        (
            json!({"type":"send","room":"mine","text":"hi","cid":"nj-1"}),
            "nj-1",
        ),
        (json!({"type":"send","room":"mine","text":"hi"}), "send"),
        (json!({"type":"history","room":"mine"}), "history"),
        (json!({"type":"who","room":"mine"}), "who"),
        (json!({"type":"leave","room":"mine"}), "leave"),
        (
            json!({"type":"send","room":"never-created","text":"hi"}),
            "send",
        ),
    ] {
        b.send_json(&f);
        let e = b.expect_error("not_joined");
        assert_eq!(e["ref"], want_ref, "{f}: {e}");
    }
    // Nothing reached alice or got stored.
    let extra = a.barrier();
    assert!(extra.is_empty(), "{extra:?}");
    let j = a.join("mine");
    assert_eq!(j.last_id(), 0);
}

#[test]
fn joins_are_per_connection() {
    let s = TestServer::start(&[]);
    let mut a1 = s.register("alice");
    let mut a2 = s.login("alice", PASSWORD);
    a1.join("r");
    // The same user's other connection has not joined.
    a2.send_json(&json!({"type":"send","room":"r","text":"x"}));
    a2.expect_error("not_joined");
    a2.join("r");
    let (ack, _) = a2.say("r", "from a2");
    let m = a1.expect("message");
    assert_eq!(
        m["id"], ack["id"],
        "both connections of alice receive the room's messages"
    );
    assert_eq!(m["user"], "alice");
}
