//! PROTOCOL.md "History": before / after / neither, limit bounds, the `more` flag.
mod common;
use common::*;
use serde_json::{json, Value};

/// A server with room `r` holding `n` messages from alice (texts "h0".."h{n-1}"); returns the
/// client (joined) and the ids in order.
fn setup(n: usize) -> (TestServer, Client, Vec<u64>) {
    let s = TestServer::start(&["--rate", "100000", "--burst", "100000"]);
    let mut a = s.register("alice");
    a.join("r");
    a.join("other");
    let mut ids = Vec::new();
    for i in 0..n {
        let (ack, _) = a.say("r", &format!("h{i}"));
        ids.push(id_of(&ack));
        if i % 10 == 0 {
            // Interleave messages in another room: history is per room.
            a.say("other", &format!("noise {i}"));
        }
    }
    (s, a, ids)
}

fn hist(c: &mut Client, req: Value) -> (Vec<u64>, bool, Value) {
    let h = c.history(req.clone());
    assert_eq!(h["type"], "history", "{req} -> {h}");
    assert_eq!(h["room"], req["room"], "{h}");
    let msgs = h["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("history.messages must be an array: {h}"));
    for m in msgs {
        assert_eq!(
            m["room"], req["room"],
            "history message of another room: {m}"
        );
        assert!(
            m["id"].is_u64() && m["user"].is_string() && m["text"].is_string() && m["ts"].is_u64(),
            "message fields: {m}"
        );
    }
    let ids: Vec<u64> = msgs.iter().map(id_of).collect();
    assert_strictly_increasing(&ids, "history messages ascend by id");
    let more = h["more"]
        .as_bool()
        .unwrap_or_else(|| panic!("history.more must be a bool: {h}"));
    (ids, more, h)
}

#[test]
fn neither_before_nor_after_returns_the_newest() {
    let (_s, mut a, ids) = setup(30);
    let (got, more, h) = hist(&mut a, json!({"type":"history","room":"r"}));
    assert_eq!(got, ids, "default limit 50 covers all 30");
    assert!(!more);
    for (m, i) in h["messages"].as_array().unwrap().iter().zip(0..) {
        assert_eq!(m["text"], format!("h{i}"));
        assert_eq!(m["user"], "alice");
    }
    let (got, more, _) = hist(&mut a, json!({"type":"history","room":"r","limit":10}));
    assert_eq!(got, ids[20..].to_vec(), "newest 10, ascending");
    assert!(more, "older messages exist");
    let (got, more, _) = hist(&mut a, json!({"type":"history","room":"r","limit":30}));
    assert_eq!(got, ids);
    assert!(!more, "exactly all messages: no more");
}

#[test]
fn default_limit_is_50() {
    let (_s, mut a, ids) = setup(60);
    let (got, more, _) = hist(&mut a, json!({"type":"history","room":"r"}));
    assert_eq!(got, ids[10..].to_vec());
    assert!(more);
}

#[test]
fn before_pages_backwards() {
    let (_s, mut a, ids) = setup(30);
    let (got, more, _) = hist(
        &mut a,
        json!({"type":"history","room":"r","before":ids[10],"limit":5}),
    );
    assert_eq!(
        got,
        ids[5..10].to_vec(),
        "the 5 messages just before, ascending"
    );
    assert!(more);
    let (got, more, _) = hist(
        &mut a,
        json!({"type":"history","room":"r","before":ids[5],"limit":5}),
    );
    assert_eq!(got, ids[..5].to_vec());
    assert!(!more, "nothing older than the first message");
    let (got, more, _) = hist(
        &mut a,
        json!({"type":"history","room":"r","before":ids[3],"limit":5}),
    );
    assert_eq!(got, ids[..3].to_vec());
    assert!(!more);
    let (got, more, _) = hist(&mut a, json!({"type":"history","room":"r","before":ids[0]}));
    assert!(got.is_empty());
    assert!(!more);
    // `before` need not be an existing id.
    let (got, _, _) = hist(
        &mut a,
        json!({"type":"history","room":"r","before":ids[29] + 1_000_000,"limit":2}),
    );
    assert_eq!(got, ids[28..].to_vec());
    // Page through everything backwards.
    let mut all = Vec::new();
    let mut cursor = None::<u64>;
    loop {
        let mut req = json!({"type":"history","room":"r","limit":7});
        if let Some(c) = cursor {
            req["before"] = json!(c);
        }
        let (got, more, _) = hist(&mut a, req);
        let mut page = got.clone();
        page.extend(all);
        all = page;
        if !more {
            break;
        }
        cursor = Some(got[0]);
    }
    assert_eq!(all, ids, "paging with before visits every message once");
}

#[test]
fn after_pages_forwards() {
    let (_s, mut a, ids) = setup(30);
    let (got, more, _) = hist(
        &mut a,
        json!({"type":"history","room":"r","after":ids[20],"limit":5}),
    );
    assert_eq!(
        got,
        ids[21..26].to_vec(),
        "the 5 messages just after, ascending"
    );
    assert!(more);
    let (got, more, _) = hist(
        &mut a,
        json!({"type":"history","room":"r","after":ids[24],"limit":5}),
    );
    assert_eq!(got, ids[25..].to_vec());
    assert!(!more, "exactly the rest: no more");
    let (got, more, _) = hist(&mut a, json!({"type":"history","room":"r","after":ids[29]}));
    assert!(got.is_empty());
    assert!(!more);
    let (got, more, _) = hist(
        &mut a,
        json!({"type":"history","room":"r","after":0,"limit":10}),
    );
    assert_eq!(got, ids[..10].to_vec(), "after 0: the oldest first");
    assert!(more);
    let mut all: Vec<u64> = Vec::new();
    let mut cursor = 0;
    loop {
        let (got, more, _) = hist(
            &mut a,
            json!({"type":"history","room":"r","after":cursor,"limit":7}),
        );
        all.extend(&got);
        if !more {
            break;
        }
        cursor = *got.last().unwrap();
    }
    assert_eq!(all, ids, "paging with after visits every message once");
}

#[test]
fn both_before_and_after_is_bad_request() {
    let (_s, mut a, ids) = setup(3);
    a.send_json(&json!({"type":"history","room":"r","before":ids[2],"after":ids[0]}));
    let e = a.expect_error("bad_request");
    assert_eq!(e["ref"], "history", "{e}");
}

#[test]
fn limit_bounds() {
    let (_s, mut a, ids) = setup(3);
    for bad in [
        json!(0),
        json!(201),
        json!(-1),
        json!(1000),
        json!(2.5),
        json!("10"),
        json!(true),
    ] {
        a.send_json(&json!({"type":"history","room":"r","limit":bad}));
        let e = a.expect_error("bad_request");
        assert_eq!(e["ref"], "history", "limit {bad}: {e}");
    }
    let (got, more, _) = hist(&mut a, json!({"type":"history","room":"r","limit":1}));
    assert_eq!(got, vec![ids[2]]);
    assert!(more);
    let (got, more, _) = hist(&mut a, json!({"type":"history","room":"r","limit":200}));
    assert_eq!(got, ids);
    assert!(!more);
}

#[test]
fn limit_200_returns_200() {
    let (_s, mut a, ids) = setup(210);
    let (got, more, _) = hist(&mut a, json!({"type":"history","room":"r","limit":200}));
    assert_eq!(got, ids[10..].to_vec());
    assert!(more);
    let (got, more, _) = hist(
        &mut a,
        json!({"type":"history","room":"r","after":0,"limit":200}),
    );
    assert_eq!(got, ids[..200].to_vec());
    assert!(more);
}

#[test]
fn history_of_an_empty_room_and_not_joined() {
    let s = TestServer::start(&[]);
    let mut a = s.register("alice");
    a.join("empty");
    let (got, more, _) = hist(&mut a, json!({"type":"history","room":"empty"}));
    assert!(got.is_empty());
    assert!(!more);
    a.send_json(&json!({"type":"history","room":"notmine"}));
    let e = a.expect_error("not_joined");
    assert_eq!(e["ref"], "history");
}

#[test]
fn history_carries_cid_and_full_message_fields() {
    let s = TestServer::start(&[]);
    let mut a = s.register("alice");
    a.join("r");
    let (ack, live) = a.say_cid("r", "with cid", "hc-1");
    let (_, more, h) = hist(&mut a, json!({"type":"history","room":"r"}));
    assert!(!more);
    let m = &h["messages"][0];
    assert_eq!(m["id"], ack["id"]);
    assert_eq!(m["ts"], ack["ts"]);
    assert_eq!(m["cid"], "hc-1");
    assert_eq!(m["text"], live["text"]);
    assert_eq!(m["user"], live["user"]);
}
