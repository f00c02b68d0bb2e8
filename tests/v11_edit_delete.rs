//! PROTOCOL-1.1.md "Editing and deleting one's own messages" and the edit, delete and replay
//! rules of "Precise rules": author only, not_found, sequenced events acked after fsync, the
//! shared cid namespace, the rate limit, history and replays in current state, admin deletions.
mod admin_common;
mod common;
use common::*;
use serde_json::{json, Value};

/// alice and bob in room `r`, presence consumed.
fn pair(s: &TestServer) -> (Client, Client) {
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    alice.join11("r");
    bob.join11("r");
    alice.expect("presence");
    (alice, bob)
}

/// alice says `text` in `r`; bob receives it. Returns the message frame.
fn say(alice: &mut Client, bob: &mut Client, text: &str) -> Value {
    let (_, m) = alice.say("r", text);
    assert_eq!(bob.expect("message"), m);
    m
}

fn ts_of(v: &Value) -> u64 {
    v["ts"].as_u64().unwrap_or_else(|| panic!("ts: {v}"))
}

#[test]
fn edit_is_acked_with_its_own_seq_then_broadcast_to_every_member() {
    let s = TestServer::start(V11_FAST);
    let (mut a1, mut bob) = pair(&s);
    let mut a2 = s.login("alice", PASSWORD);
    a2.join11("r");
    let m = say(&mut a1, &mut bob, "fixed tpyo");
    assert_eq!(a2.expect("message"), m);
    let id = id_of(&m);

    a1.send_json(&json!({"type":"edit","room":"r","id":id,"text":"fixed typo","cid":"e1"}));
    let ack = a1.expect("ack");
    check_ack_shape(&ack);
    assert_eq!(keys_of(&ack), ["cid", "id", "room", "ts", "type"], "{ack}");
    assert_eq!(
        (ack["room"].as_str(), ack["cid"].as_str()),
        (Some("r"), Some("e1"))
    );
    let seq = id_of(&ack);
    assert!(seq > id, "the edit takes the next id of the room: {ack}");
    let want = json!({"type":"edited","room":"r","id":id,"seq":seq,"user":"alice",
        "text":"fixed typo","ts":ack["ts"]});
    assert_eq!(
        a1.expect("edited"),
        want,
        "the editor's copy after its ack; ts = ack ts"
    );
    assert_eq!(a2.expect("edited"), want, "the author's other connections");
    assert_eq!(bob.expect("edited"), want, "every member");
    for c in [&mut a1, &mut a2, &mut bob] {
        c.assert_quiet("one edited per connection");
    }
    // The room's sequence goes on above the edit.
    let (next, _) = a1.say("r", "next");
    assert!(id_of(&next) > seq);
    // Without a cid the ack has none.
    let ack = a1.edit_msg("r", id, "again", None);
    assert!(ack.get("cid").is_none(), "{ack}");
    assert!(id_of(&ack) > id_of(&next));
    assert_eq!(bob.wait_type("edited").0["text"], "again");
}

#[test]
fn delete_is_acked_with_its_own_seq_then_broadcast_to_every_member() {
    let s = TestServer::start(V11_FAST);
    let (mut a1, mut bob) = pair(&s);
    let mut a2 = s.login("alice", PASSWORD);
    a2.join11("r");
    let m = say(&mut a1, &mut bob, "oops");
    a2.expect("message");
    let id = id_of(&m);

    a1.send_json(&json!({"type":"delete","room":"r","id":id,"cid":"d1"}));
    let ack = a1.expect("ack");
    check_ack_shape(&ack);
    assert_eq!(keys_of(&ack), ["cid", "id", "room", "ts", "type"], "{ack}");
    assert_eq!(ack["cid"], "d1");
    let seq = id_of(&ack);
    assert!(seq > id, "{ack}");
    let ev = a1.expect("deleted");
    assert_eq!(
        keys_of(&ev),
        ["id", "room", "seq", "ts", "type", "user"],
        "{ev}"
    );
    assert_eq!(
        (
            ev["room"].as_str(),
            id_of(&ev),
            seq_of(&ev),
            ev["user"].as_str()
        ),
        (Some("r"), id, seq, Some("alice")),
        "{ev}"
    );
    check_time(&ev["ts"], "deleted.ts");
    assert_eq!(a2.expect("deleted"), ev);
    assert_eq!(bob.expect("deleted"), ev);
    for c in [&mut a1, &mut a2, &mut bob] {
        c.assert_quiet("one deleted per connection");
    }
    let (next, _) = a1.say("r", "next");
    assert!(id_of(&next) > seq);
    assert_eq!(bob.expect("message")["id"], next["id"]);
    // Gone from history.
    let h = bob.history(json!({"type":"history","room":"r"}));
    assert_eq!(message_ids(&h), [id_of(&next)]);
}

#[test]
fn only_the_author_may_edit_or_delete() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("Alice");
    let mut bob = s.register("bob");
    alice.join11("r");
    bob.join11("r");
    alice.expect("presence");
    let (_, m) = alice.say("r", "mine");
    bob.expect("message");
    let id = id_of(&m);
    bob.refused(
        json!({"type":"edit","room":"r","id":id,"text":"bob's now"}),
        "forbidden",
    );
    bob.refused(
        json!({"type":"edit","room":"r","id":id,"text":"bob's now","cid":"b-e"}),
        "forbidden",
    );
    bob.refused(json!({"type":"delete","room":"r","id":id}), "forbidden");
    bob.refused(
        json!({"type":"delete","room":"r","id":id,"cid":"b-d"}),
        "forbidden",
    );
    alice.assert_quiet("refused edits are not broadcast");
    bob.assert_quiet("refused edits are not broadcast");
    let h = bob.history(json!({"type":"history","room":"r"}));
    assert_eq!(h["messages"], json!([m]), "unchanged");
    // The refused cids were not used up.
    bob.send_json(&json!({"type":"send","room":"r","text":"cid reuse","cid":"b-e"}));
    let ack = bob.expect("ack");
    assert_eq!(bob.expect("message")["text"], "cid reuse", "{ack}");

    // The author, logged in with her name in another case, may.
    let mut alice2 = s.login("ALICE", PASSWORD);
    alice2.join11("r");
    let (ack, ev) = alice2.edit_and_echo("r", id, "still mine");
    assert_eq!(ev["user"], "Alice", "the name as first registered: {ev}");
    assert_eq!(ev["ts"], ack["ts"]);
    alice2.delete_and_echo("r", id);
}

#[test]
fn targets_that_are_no_visible_message_of_the_room_are_not_found() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, mut bob) = pair(&s);
    alice.join11("other");
    let (_, in_other) = alice.say("other", "in another room");
    let m1 = say(&mut alice, &mut bob, "one");
    let m2 = say(&mut alice, &mut bob, "two");
    let (edit_ack, _) = alice.edit_and_echo("r", id_of(&m1), "one, edited");
    bob.expect("edited");
    let (del_ack, _) = alice.delete_and_echo("r", id_of(&m2));
    bob.expect("deleted");

    let targets = [
        (id_of(&m2), "a deleted message"),
        (id_of(&edit_ack), "the seq of an edited event"),
        (id_of(&del_ack), "the seq of a deleted event"),
        (id_of(&in_other), "a message of another room"),
        (id_of(&del_ack) + 1000, "an id never used"),
        (MAX_SAFE_ID, "an id never used"),
    ];
    for (id, what) in targets {
        for f in [
            json!({"type":"edit","room":"r","id":id,"text":"x"}),
            json!({"type":"edit","room":"r","id":id,"text":"x","cid":format!("nf-e-{id}")}),
            json!({"type":"delete","room":"r","id":id}),
            json!({"type":"delete","room":"r","id":id,"cid":format!("nf-d-{id}")}),
        ] {
            alice.send_json(&f);
            let e = alice.recv_json(T);
            assert!(
                e["type"] == "error" && e["code"] == "not_found",
                "{what}: {f} should be not_found, got {e}"
            );
            let want_ref = f.get("cid").cloned().unwrap_or_else(|| f["type"].clone());
            assert_eq!(e["ref"], want_ref, "{e}");
        }
        // A deleted message is not_found for anybody, not forbidden.
        bob.refused(json!({"type":"delete","room":"r","id":id}), "not_found");
    }
    alice.assert_quiet("nothing broadcast");
    bob.assert_quiet("nothing broadcast");

    // Pruned messages are gone too.
    let m3 = say(&mut alice, &mut bob, "three");
    admin_common::admin(s.data_dir(), &["prune", "--keep-last", "1", "--room", "r"]).ok();
    let h = alice.history(json!({"type":"history","room":"r"}));
    assert_eq!(message_ids(&h), [id_of(&m3)], "pruned to the newest: {h}");
    alice.refused(
        json!({"type":"edit","room":"r","id":id_of(&m1),"text":"x"}),
        "not_found",
    );
    alice.refused(
        json!({"type":"delete","room":"r","id":id_of(&m1)}),
        "not_found",
    );
}

#[test]
fn malformed_edits_and_deletes_are_refused() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, mut bob) = pair(&s);
    let m = say(&mut alice, &mut bob, "target");
    let id = id_of(&m);
    for f in [
        json!({"type":"edit","room":"r","text":"x"}),
        json!({"type":"edit","room":"r","id":null,"text":"x"}),
        json!({"type":"edit","room":"r","id":-1,"text":"x"}),
        json!({"type":"edit","room":"r","id":1.5,"text":"x"}),
        json!({"type":"edit","room":"r","id":id.to_string(),"text":"x"}),
        json!({"type":"edit","room":"r","id":id}),
        json!({"type":"edit","room":"r","id":id,"text":null}),
        json!({"type":"edit","room":"r","id":id,"text":5}),
        json!({"type":"edit","room":"r","id":id,"text":""}),
        json!({"type":"edit","room":"r","id":id,"text":" \n\t\u{3000}"}),
        json!({"type":"edit","id":id,"text":"x"}),
        json!({"type":"edit","room":"R","id":id,"text":"x"}),
        json!({"type":"delete","room":"r"}),
        json!({"type":"delete","room":"r","id":null}),
        json!({"type":"delete","room":"r","id":-5}),
        json!({"type":"delete","room":"r","id":"1"}),
        json!({"type":"delete","room":"r","id":[id]}),
        json!({"type":"delete","id":id}),
    ] {
        alice.refused(f, "bad_request");
    }
    for f in [
        json!({"type":"edit","room":"r","id":id,"text":"x","cid":""}),
        json!({"type":"edit","room":"r","id":id,"text":"x","cid":"has space"}),
        json!({"type":"edit","room":"r","id":id,"text":"x","cid":"c".repeat(65)}),
        json!({"type":"edit","room":"r","id":id,"text":"x","cid":7}),
        json!({"type":"delete","room":"r","id":id,"cid":"é"}),
        json!({"type":"delete","room":"r","id":id,"cid":""}),
    ] {
        alice.send_json(&f);
        alice.expect_error("bad_request");
    }
    // Text rules are v1's: at most 4000 scalar values.
    alice.refused(
        json!({"type":"edit","room":"r","id":id,"text":"é".repeat(4001),"cid":"long"}),
        "too_long",
    );
    alice.assert_quiet("refused frames change nothing");
    bob.assert_quiet("refused frames change nothing");
    let h = bob.history(json!({"type":"history","room":"r"}));
    assert_eq!(h["messages"], json!([m]));
    // 4000 is fine, and stored exactly.
    let text = format!("  {}\n", "é".repeat(3997));
    let (ack, ev) = alice.edit_and_echo("r", id, &text);
    assert_eq!(ev["text"], text.as_str());
    assert_eq!(bob.expect("edited"), ev);
    let h = bob.history(json!({"type":"history","room":"r"}));
    assert_eq!(h["messages"][0], current(&m, &text, Some(ts_of(&ack))));
}

#[test]
fn edit_and_delete_need_a_join() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, mut bob) = pair(&s);
    let m = say(&mut alice, &mut bob, "target");
    let mut a2 = s.login("alice", PASSWORD);
    let id = id_of(&m);
    a2.refused(
        json!({"type":"edit","room":"r","id":id,"text":"x"}),
        "not_joined",
    );
    a2.refused(
        json!({"type":"delete","room":"r","id":id,"cid":"nj"}),
        "not_joined",
    );
    a2.refused(
        json!({"type":"edit","room":"nowhere","id":id,"text":"x"}),
        "not_joined",
    );
    alice.leave("r");
    bob.expect("presence");
    alice.refused(
        json!({"type":"edit","room":"r","id":id,"text":"x"}),
        "not_joined",
    );
    alice.refused(json!({"type":"delete","room":"r","id":id}), "not_joined");
    bob.assert_quiet("nothing broadcast");
}

#[test]
fn history_shows_current_text_with_edited_ts_and_omits_deleted_messages() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, mut bob) = pair(&s);
    let m1 = say(&mut alice, &mut bob, "one");
    let m2 = say(&mut alice, &mut bob, "two");
    let m3 = say(&mut alice, &mut bob, "three");
    let (e1, _) = alice.edit_and_echo("r", id_of(&m1), "one v2");
    let (e2, _) = alice.edit_and_echo("r", id_of(&m1), "one v3");
    alice.delete_and_echo("r", id_of(&m2));
    let (_, m4) = alice.say("r", "four");
    // bob has the events and m4 queued: the history requests below come from alice.
    assert!(ts_of(&e1) <= ts_of(&e2));

    let one_now = current(&m1, "one v3", Some(ts_of(&e2)));
    let h = alice.history(json!({"type":"history","room":"r"}));
    assert_eq!(h["messages"], json!([one_now, m3, m4]), "{h}");
    assert_eq!(h["more"], false);
    assert!(
        h["messages"][1].get("edited_ts").is_none(),
        "unedited: no edited_ts"
    );
    // Paging keeps the same view.
    let h = alice.history(json!({"type":"history","room":"r","before":id_of(&m4),"limit":1}));
    assert_eq!(h["messages"], json!([m3]), "{h}");
    assert_eq!(h["more"], true);
    let h = alice.history(json!({"type":"history","room":"r","after":0,"limit":2}));
    assert_eq!(h["messages"], json!([one_now, m3]), "{h}");
    assert_eq!(h["more"], true);
    let h = alice.history(json!({"type":"history","room":"r","after":id_of(&m3)}));
    assert_eq!(
        h["messages"],
        json!([m4]),
        "history holds messages only, no events: {h}"
    );
}

/// The scenario of the replay tests: returns (the frames alice's connection saw live, in order:
/// messages and events; the current state of the visible messages).
struct Story {
    /// Every message and event frame, as broadcast, in id/seq order.
    live: Vec<Value>,
    /// The visible messages in their current state, ascending.
    now: Vec<Value>,
    /// Seqs/ids by name.
    m1: u64,
    m2: u64,
    m3: u64,
    e4: u64,
    e5: u64,
    d6: u64,
    m7: u64,
    e8: u64,
    e9: u64,
}

fn story(alice: &mut Client) -> Story {
    fn say(c: &mut Client, live: &mut Vec<Value>, t: &str) -> Value {
        let (_, m) = c.say("r", t);
        live.push(m.clone());
        m
    }
    let mut live = Vec::new();
    let m1 = say(alice, &mut live, "one");
    let m2 = say(alice, &mut live, "two");
    let m3 = say(alice, &mut live, "three");
    let (e4, ev) = alice.edit_and_echo("r", id_of(&m1), "one v2");
    live.push(ev);
    let (e5, ev) = alice.edit_and_echo("r", id_of(&m2), "two v2");
    live.push(ev);
    let (d6, ev) = alice.delete_and_echo("r", id_of(&m2));
    live.push(ev);
    let m7 = say(alice, &mut live, "seven");
    let (e8, ev) = alice.edit_and_echo("r", id_of(&m3), "three v2");
    live.push(ev);
    let (e9, ev) = alice.edit_and_echo("r", id_of(&m1), "one v3");
    live.push(ev);
    let now = vec![
        current(&m1, "one v3", Some(ts_of(&e9))),
        current(&m3, "three v2", Some(ts_of(&e8))),
        m7.clone(),
    ];
    Story {
        live,
        now,
        m1: id_of(&m1),
        m2: id_of(&m2),
        m3: id_of(&m3),
        e4: id_of(&e4),
        e5: id_of(&e5),
        d6: id_of(&d6),
        m7: id_of(&m7),
        e8: id_of(&e8),
        e9: id_of(&e9),
    }
}

impl Story {
    /// What a join with `since` replays, without a limit: the current state of the visible
    /// messages above `since`, and the events above `since` except edits of the deleted m2.
    fn replay_after(&self, since: u64) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        for m in &self.now {
            if id_of(m) > since {
                out.push(m.clone());
            }
        }
        for ev in &self.live {
            if ev["type"] == "message" {
                continue;
            }
            if seq_of(ev) > since && !(ev["type"] == "edited" && id_of(ev) == self.m2) {
                out.push(ev.clone());
            }
        }
        out.sort_by_key(position_of);
        out
    }
}

#[test]
fn join_since_replays_messages_and_events_in_seq_order() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    alice.join11("r");
    let st = story(&mut alice);
    assert!(st.m1 < st.m2 && st.m2 < st.m3 && st.m3 < st.e4 && st.e4 < st.e5);
    assert!(st.e5 < st.d6 && st.d6 < st.m7 && st.m7 < st.e8 && st.e8 < st.e9);

    let mut bob = s.register("bob");
    let j = bob.join11_since("r", 0);
    let want = st.replay_after(0);
    assert_eq!(
        j.outline(),
        [
            ("message".to_string(), st.m1, 0),
            ("message".to_string(), st.m3, 0),
            ("edited".to_string(), st.m1, st.e4),
            ("deleted".to_string(), st.m2, st.d6),
            ("message".to_string(), st.m7, 0),
            ("edited".to_string(), st.m3, st.e8),
            ("edited".to_string(), st.m1, st.e9),
        ],
        "messages in current state by id, events by seq; the deleted message and the edit \
         of it are not replayed"
    );
    assert_eq!(
        j.items, want,
        "replayed frames are the live frames / the current state"
    );
    assert_eq!(j.last_id(), st.e9, "synced.last_id is the newest id or seq");
    assert!(!j.more());
    for since in [
        st.m1,
        st.m3,
        st.e4,
        st.e5,
        st.d6,
        st.m7,
        st.e8,
        st.e9,
        st.e9 + 100,
    ] {
        let j = bob.join11_since("r", since);
        assert_eq!(j.items, st.replay_after(since), "join since {since}");
        assert_eq!(j.last_id(), st.e9);
        assert!(!j.more());
    }
    let j = bob.join11_since("r", st.d6);
    assert_eq!(
        j.outline(),
        [
            ("message".to_string(), st.m7, 0),
            ("edited".to_string(), st.m3, st.e8),
            ("edited".to_string(), st.m1, st.e9),
        ]
    );
}

#[test]
fn join_without_since_shows_messages_in_current_state_and_no_events() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    alice.join11("r");
    let st = story(&mut alice);
    let mut bob = s.register("bob");
    let j = bob.join11("r");
    assert_eq!(j.items, st.now, "the current state, messages only");
    assert_eq!(j.last_id(), st.e9, "synced.last_id is the newest id or seq");
    assert!(!j.more());
}

#[test]
fn join_without_since_replays_the_last_50_remaining_messages() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    alice.join11("r");
    let mut msgs = Vec::new();
    for i in 0..56 {
        msgs.push(alice.say("r", &format!("m{i}")).1);
    }
    // Delete the newest two and one in the middle, edit three.
    for i in [55, 54, 30] {
        alice.delete_and_echo("r", id_of(&msgs[i]));
    }
    let mut now: Vec<Value> = msgs.clone();
    for i in [53, 20, 3] {
        let (ack, _) = alice.edit_and_echo("r", id_of(&msgs[i]), &format!("m{i} edited"));
        now[i] = current(&msgs[i], &format!("m{i} edited"), Some(ts_of(&ack)));
    }
    let visible: Vec<Value> = now
        .into_iter()
        .enumerate()
        .filter(|(i, _)| ![55, 54, 30].contains(i))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(visible.len(), 53);
    let mut bob = s.register("bob");
    let j = bob.join11("r");
    assert_eq!(
        j.items,
        visible[3..].to_vec(),
        "the newest 50 remaining messages"
    );
    assert!(!j.more());
}

#[test]
fn the_replay_limit_counts_messages_and_events() {
    let s = TestServer::start(&[
        "--rate",
        "100000",
        "--burst",
        "100000",
        "--replay-limit",
        "4",
    ]);
    let mut alice = s.register("alice");
    alice.join11("r");
    let st = story(&mut alice);
    let mut bob = s.register("bob");
    let j = bob.join11_since("r", 0);
    assert_eq!(
        j.items,
        st.replay_after(0)[..4].to_vec(),
        "the first 4 items in seq order"
    );
    assert_eq!(
        j.outline().iter().map(|o| o.0.as_str()).collect::<Vec<_>>(),
        ["message", "message", "edited", "deleted"]
    );
    assert!(j.more(), "more remain");
    assert_eq!(j.last_id(), st.e9);
    // 5 items above m3: 4 of them, more.
    let j = bob.join11_since("r", st.m3);
    assert_eq!(j.items, st.replay_after(st.m3)[..4].to_vec());
    assert!(j.more());
    // Exactly 4 above e4 (e5 is not replayed): all, no more.
    let j = bob.join11_since("r", st.e4);
    assert_eq!(j.items, st.replay_after(st.e4));
    assert_eq!(j.items.len(), 4);
    assert!(!j.more(), "exactly the limit: nothing remains");
    // Without since, the limit does not apply the same way: the current messages, no more.
    let j = bob.join11("r");
    assert_eq!(j.items, st.now);
    assert!(!j.more());
}

#[test]
fn the_cid_namespace_is_shared_by_send_edit_and_delete() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, mut bob) = pair(&s);
    alice.join11("other");

    // send "x" first: an edit or delete with "x" gets the send's ack and does nothing.
    let (send_ack, m) = alice.say_cid("r", "original", "x");
    bob.expect("message");
    alice.send_json(&json!({"type":"edit","room":"r","id":id_of(&m),"text":"changed","cid":"x"}));
    assert_eq!(alice.expect("ack"), send_ack);
    alice.send_json(&json!({"type":"delete","room":"r","id":id_of(&m),"cid":"x"}));
    assert_eq!(alice.expect("ack"), send_ack);

    // edit "e" first: a send, edit or delete with "e" gets the edit's ack.
    let edit_ack = alice.edit_msg("r", id_of(&m), "edited once", Some("e"));
    alice.expect("edited");
    bob.expect("edited");
    alice.send_json(&json!({"type":"send","room":"r","text":"new message?","cid":"e"}));
    assert_eq!(alice.expect("ack"), edit_ack);
    alice.send_json(
        &json!({"type":"edit","room":"r","id":id_of(&m),"text":"edited twice","cid":"e"}),
    );
    assert_eq!(alice.expect("ack"), edit_ack);
    alice.send_json(&json!({"type":"delete","room":"r","id":id_of(&m),"cid":"e"}));
    assert_eq!(alice.expect("ack"), edit_ack);
    // In another joined room too.
    alice.send_json(&json!({"type":"send","room":"other","text":"x","cid":"e"}));
    assert_eq!(alice.expect("ack"), edit_ack);

    // delete "d": repeating it gets the original ack although the message is gone.
    let (_, m2) = alice.say("r", "to delete");
    bob.expect("message");
    let del_ack = alice.delete_msg("r", id_of(&m2), Some("d"));
    alice.expect("deleted");
    bob.expect("deleted");
    alice.send_json(&json!({"type":"delete","room":"r","id":id_of(&m2),"cid":"d"}));
    assert_eq!(
        alice.expect("ack"),
        del_ack,
        "a repeated delete: its original ack"
    );
    alice.send_json(&json!({"type":"edit","room":"r","id":id_of(&m),"text":"nope","cid":"d"}));
    assert_eq!(alice.expect("ack"), del_ack);
    alice.send_json(&json!({"type":"send","room":"r","text":"nope","cid":"d"}));
    assert_eq!(alice.expect("ack"), del_ack);
    // From another connection of the same user, after a reconnect.
    let mut a2 = s.login("alice", PASSWORD);
    a2.join11("r");
    a2.send_json(&json!({"type":"delete","room":"r","id":id_of(&m2),"cid":"d"}));
    assert_eq!(a2.expect("ack"), del_ack);
    a2.send_json(&json!({"type":"edit","room":"r","id":id_of(&m),"text":"nope","cid":"x"}));
    assert_eq!(a2.expect("ack"), send_ack);
    // The repeat still needs the named room to be joined.
    a2.refused(
        json!({"type":"delete","room":"other","id":id_of(&m2),"cid":"d"}),
        "not_joined",
    );

    // None of the repeats was stored or broadcast: the next thing bob sees is a fresh message.
    let (fresh, _) = alice.say("r", "fresh");
    let (_, skipped) = bob.wait_for(T, |v| v["id"] == fresh["id"]);
    assert!(skipped.is_empty(), "repeats are not broadcast: {skipped:?}");
    let h = bob.history(json!({"type":"history","room":"r"}));
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["edited once", "fresh"], "{h}");
    // cids are per user: bob may use "x" for his own message.
    let (bob_ack, _) = bob.say_cid("r", "bob's x", "x");
    assert_ne!(bob_ack["id"], send_ack["id"]);
}

#[test]
fn edit_and_delete_count_against_the_send_rate_limit() {
    let s = TestServer::start(&["--rate", "1", "--burst", "4"]);
    let mut alice = s.register("alice");
    alice.join11("r");
    let (_, m) = alice.say("r", "target"); // 3 tokens left
    let id = id_of(&m);
    let n = 6;
    for i in 0..n {
        alice.send_json(
            &json!({"type":"edit","room":"r","id":id,"text":format!("v{i}"),"cid":format!("e{i}")}),
        );
    }
    alice.send_json(&json!({"type":"delete","room":"r","id":id,"cid":"del"}));
    let mut acked = Vec::new();
    let mut limited = Vec::new();
    let mut echoes = 0;
    while acked.len() + limited.len() < n + 1 || echoes < acked.len() {
        let v = alice.recv_json(T);
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("ack"), _) => acked.push(v["cid"].as_str().unwrap().to_string()),
            (Some("edited"), _) | (Some("deleted"), _) => echoes += 1,
            (Some("error"), Some("rate_limited")) => {
                limited.push(v["ref"].as_str().unwrap_or_default().to_string())
            }
            _ => panic!("unexpected {v}"),
        }
    }
    // 3 tokens were left; at 1 token/s at most one more can have been earned meanwhile.
    assert!(
        (3..=4).contains(&acked.len()),
        "acked {acked:?}, limited {limited:?}"
    );
    assert_eq!(&acked[..3], ["e0", "e1", "e2"]);
    assert!(
        limited.contains(&"del".to_string()),
        "the delete is limited: {limited:?}"
    );
    // The limited ones changed nothing.
    let h = alice.history(json!({"type":"history","room":"r"}));
    let last = acked.last().unwrap().trim_start_matches('e').to_string();
    assert_eq!(h["messages"][0]["text"], format!("v{last}"), "{h}");
}

#[test]
fn edits_and_deletes_survive_kill_9_once_acked() {
    let mut s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    alice.join11("r");
    let st = story(&mut alice);
    s.kill9();
    s.restart();
    let mut bob = s.register("bob");
    let j = bob.join11_since("r", 0);
    assert_eq!(j.items, st.replay_after(0));
    assert_eq!(j.last_id(), st.e9);
    let h = bob.history(json!({"type":"history","room":"r"}));
    assert_eq!(h["messages"], json!(st.now));
    // The room's sequence continues above the events.
    let mut alice = s.login("alice", PASSWORD);
    alice.join11("r");
    let (ack, _) = alice.say("r", "after the crash");
    assert!(id_of(&ack) > st.e9);
}

#[test]
fn edits_and_deletes_survive_a_graceful_restart() {
    let mut s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    alice.join11("r");
    let st = story(&mut alice);
    s.sigterm();
    assert!(s.wait_exit(T).success());
    s.restart();
    let mut alice = s.login("alice", PASSWORD);
    let j = alice.join11_since("r", st.m3);
    assert_eq!(j.items, st.replay_after(st.m3));
    let j = alice.join11("r");
    assert_eq!(j.items, st.now);
    // Still editable, still the author's.
    let (ack, _) = alice.edit_and_echo("r", st.m1, "one v4");
    assert!(id_of(&ack) > st.e9);
    alice.refused(
        json!({"type":"edit","room":"r","id":st.m2,"text":"x"}),
        "not_found",
    );
}

#[test]
fn admin_deletion_is_a_sequenced_deleted_event_from_system() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, mut bob) = pair(&s);
    let m1 = say(&mut alice, &mut bob, "keep");
    let m2 = say(&mut alice, &mut bob, "spam");
    let (e3, edited) = alice.edit_and_echo("r", id_of(&m2), "more spam");
    bob.expect("edited");

    admin_common::admin(
        s.data_dir(),
        &["messages", "delete", &id_of(&m2).to_string()],
    )
    .ok();
    let ev = alice.expect("deleted");
    assert_eq!(
        bob.expect("deleted"),
        ev,
        "every member gets the same event"
    );
    assert_eq!(
        keys_of(&ev),
        ["id", "room", "seq", "ts", "type", "user"],
        "{ev}"
    );
    assert_eq!(ev["user"], "[system]", "{ev}");
    assert_eq!(
        (ev["room"].as_str(), id_of(&ev)),
        (Some("r"), id_of(&m2)),
        "{ev}"
    );
    let d = seq_of(&ev);
    assert!(
        d > id_of(&e3),
        "the admin deletion takes the next seq: {ev}"
    );
    check_time(&ev["ts"], "deleted.ts");

    // Replays and history: the message and its edit are gone, the deletion is replayed.
    let mut carol = s.register("carol");
    let j = carol.join11_since("r", 0);
    alice.expect("presence");
    assert_eq!(
        j.items,
        [m1.clone(), ev.clone()],
        "edited {edited} is scrubbed with it"
    );
    assert_eq!(j.last_id(), d);
    let j = carol.join11_since("r", id_of(&e3));
    assert_eq!(j.items, std::slice::from_ref(&ev));
    let h = carol.history(json!({"type":"history","room":"r"}));
    assert_eq!(h["messages"], json!([m1]));
    // It is gone for its author too, and the sequence goes on above it.
    alice.refused(
        json!({"type":"edit","room":"r","id":id_of(&m2),"text":"x"}),
        "not_found",
    );
    let (ack, _) = alice.say("r", "after");
    assert!(id_of(&ack) > d);
}

#[test]
fn edit_and_delete_in_a_dm_room() {
    let s = TestServer::start(V11_FAST);
    let dm = "dm:alice+bob";
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    alice.join11(dm);
    bob.join11(dm);
    alice.expect("presence");
    let (_, m) = alice.say(dm, "dm text");
    bob.expect("message");
    bob.refused(
        json!({"type":"edit","room":dm,"id":id_of(&m),"text":"x"}),
        "forbidden",
    );
    let (_, ev) = alice.edit_and_echo(dm, id_of(&m), "dm text, edited");
    assert_eq!(bob.expect("edited"), ev);
    let (_, ev) = alice.delete_and_echo(dm, id_of(&m));
    assert_eq!(bob.expect("deleted"), ev);
    let j = bob.join11_since(dm, 0);
    assert_eq!(
        j.outline().len(),
        1,
        "only the deletion remains: {:?}",
        j.items
    );
    assert_eq!(j.items[0], ev);
}

#[test]
fn a_change_queued_behind_the_deletion_of_its_message_is_not_found() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, mut bob) = pair(&s);
    let m1 = say(&mut alice, &mut bob, "one");
    let m2 = say(&mut alice, &mut bob, "two");
    // delete then edit, back to back: the edit is refused and stored nowhere.
    alice.send_json(&json!({"type":"delete","room":"r","id":id_of(&m1),"cid":"q-d"}));
    alice.send_json(&json!({"type":"edit","room":"r","id":id_of(&m1),"text":"late","cid":"q-e"}));
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(alice.recv_json(T));
    }
    let ack = got
        .iter()
        .find(|v| v["type"] == "ack")
        .unwrap_or_else(|| panic!("the delete is acked: {got:?}"))
        .clone();
    assert_eq!(ack["cid"], "q-d", "{got:?}");
    assert!(
        got.iter()
            .any(|v| v["type"] == "deleted" && v["seq"] == ack["id"]),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|v| v["type"] == "error" && v["code"] == "not_found" && v["ref"] == "q-e"),
        "the edit behind the deletion is not_found: {got:?}"
    );
    alice.assert_quiet("no edited event");
    let ev = bob.expect("deleted");
    assert_eq!(seq_of(&ev), id_of(&ack));
    bob.assert_quiet("only the deletion is broadcast");
    // edit then delete, back to back: both acked, and a replay shows only the deletion.
    alice.send_json(&json!({"type":"edit","room":"r","id":id_of(&m2),"text":"two v2"}));
    alice.send_json(&json!({"type":"delete","room":"r","id":id_of(&m2)}));
    let (mut acks, mut events) = (Vec::new(), Vec::new());
    while acks.len() < 2 || events.len() < 2 {
        let v = alice.recv_json(T);
        match v["type"].as_str() {
            Some("ack") => acks.push(v),
            Some("edited") | Some("deleted") => events.push(v),
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(events[0]["type"], "edited");
    assert_eq!(events[1]["type"], "deleted");
    let mut carol = s.register("carol");
    let j = carol.join11_since("r", 0);
    let outline = j.outline();
    assert_eq!(
        outline,
        [
            ("deleted".to_string(), id_of(&m1), id_of(&ack)),
            ("deleted".to_string(), id_of(&m2), seq_of(&events[1])),
        ],
        "the edit of a message deleted since is not replayed"
    );
}

#[test]
fn every_member_sees_messages_and_events_in_one_increasing_order() {
    let s = TestServer::start(V11_FAST);
    let (mut a1, mut bob) = pair(&s);
    let mut a2 = s.login("alice", PASSWORD);
    a2.join11("r");
    let mut targets = Vec::new();
    for i in 0..20 {
        targets.push(id_of(&say(&mut a1, &mut bob, &format!("target {i}"))));
        assert_eq!(a2.expect("message")["id"], *targets.last().unwrap());
    }
    let n = 100;
    // a1 sends messages while a2 edits the targets, both pipelined.
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            a1.send_json(&json!({"type":"send","room":"r","text":format!("new {i}")}));
        }
        let mut acks = 0;
        while acks < n {
            if a1.recv_json(T)["type"] == "ack" {
                acks += 1;
            }
        }
        a1
    });
    let t2 = targets.clone();
    let editor = std::thread::spawn(move || {
        for i in 0..n {
            a2.send_json(&json!({"type":"edit","room":"r","id":t2[i % t2.len()],
                "text":format!("edit {i}")}));
        }
        let mut acks = 0;
        while acks < n {
            let v = a2.recv_json(T);
            if v["type"] == "ack" {
                acks += 1;
            } else if v["type"] == "error" {
                panic!("edit refused: {v}");
            }
        }
        a2
    });
    let mut live = Vec::new();
    while live.len() < 2 * n {
        let v = bob.recv_json(T);
        match v["type"].as_str() {
            Some("message") | Some("edited") => live.push(v),
            _ => panic!("unexpected {v}"),
        }
    }
    let _a1 = sender.join().expect("sender");
    let _a2 = editor.join().expect("editor");
    let positions: Vec<u64> = live.iter().map(position_of).collect();
    assert_strictly_increasing(&positions, "bob's live stream of messages and events");
    // A replay gives the same order.
    let mut carol = s.register("carol");
    let j = carol.join11_since("r", targets[19]);
    let replayed: Vec<(String, u64, u64)> = j.outline();
    let live_outline: Vec<(String, u64, u64)> = live
        .iter()
        .map(|v| {
            (
                v["type"].as_str().unwrap().to_string(),
                id_of(v),
                v["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(replayed, live_outline, "a replay is the order members saw");
}

#[test]
fn a_join_with_since_meets_the_live_stream_of_messages_and_events_exactly() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    alice.join11("r");
    let (first, _) = alice.say("r", "first");
    let first = id_of(&first);
    let n = 150;
    let writer = std::thread::spawn(move || {
        // The next frame of type `ty`; bob's presence may come in between.
        fn next(c: &mut Client, ty: &str) -> Value {
            let (v, skipped) = c.wait_type(ty);
            assert!(
                skipped.iter().all(|f| f["type"] == "presence"),
                "{skipped:?}"
            );
            v
        }
        // Pairs of a message and an edit of it, then an end marker.
        for i in 0..n {
            alice.send_json(&json!({"type":"send","room":"r","text":format!("m{i}")}));
            let ack = next(&mut alice, "ack");
            next(&mut alice, "message");
            alice.send_json(
                &json!({"type":"edit","room":"r","id":id_of(&ack),"text":format!("m{i}!")}),
            );
            next(&mut alice, "ack");
            next(&mut alice, "edited");
        }
        alice.send_json(&json!({"type":"send","room":"r","text":"end"}));
        let end = next(&mut alice, "ack");
        (alice, end)
    });
    let mut bob = s.register("bob");
    // Join while the writer is busy, from the first message.
    let j = bob.join11_since("r", first);
    let mut seen: Vec<(String, u64, u64)> = j.outline();
    loop {
        let v = bob.recv_json(T);
        match v["type"].as_str() {
            Some("message") | Some("edited") => {
                seen.push((
                    v["type"].as_str().unwrap().to_string(),
                    id_of(&v),
                    v["seq"].as_u64().unwrap_or(0),
                ));
                if v["text"] == "end" {
                    break;
                }
            }
            _ => panic!("unexpected {v}"),
        }
    }
    let (_alice, end) = writer.join().expect("writer");
    let pos: Vec<u64> = seen
        .iter()
        .map(|(_, id, seq)| if *seq == 0 { *id } else { *seq })
        .collect();
    assert_strictly_increasing(&pos, "replay then live: each item once, in order");
    let mut carol = s.register("carol");
    let all = carol.join11_since("r", first);
    assert_eq!(all.outline(), seen, "nothing missed, nothing doubled");
    assert_eq!(all.last_id(), id_of(&end));
}

#[test]
fn deleting_a_user_with_their_messages_gives_sequenced_system_deletions() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, mut bob) = pair(&s);
    let m1 = say(&mut alice, &mut bob, "alice one");
    let (_, b1) = bob.say("r", "bob one");
    alice.expect("message");
    let m2 = say(&mut alice, &mut bob, "alice two");
    admin_common::admin(
        s.data_dir(),
        &["users", "delete", "alice", "--delete-messages"],
    )
    .ok();
    let mut events = Vec::new();
    while events.len() < 2 {
        let (ev, _) = bob.wait_type("deleted");
        events.push(ev);
    }
    events.sort_by_key(seq_of);
    let mut deleted_ids: Vec<u64> = events.iter().map(id_of).collect();
    deleted_ids.sort();
    assert_eq!(deleted_ids, [id_of(&m1), id_of(&m2)]);
    for ev in &events {
        assert_eq!(
            keys_of(ev),
            ["id", "room", "seq", "ts", "type", "user"],
            "{ev}"
        );
        assert_eq!(ev["user"], "[system]", "{ev}");
        assert!(seq_of(ev) > id_of(&m2), "{ev}");
    }
    let j = bob.join11_since("r", 0);
    let mut want = vec![b1.clone()];
    want.extend(events.iter().cloned());
    assert_eq!(j.items, want, "bob's message and the two deletions remain");
    assert_eq!(j.last_id(), seq_of(&events[1]));
}

#[test]
fn an_admin_deletion_while_the_server_is_stopped_is_a_sequenced_event_too() {
    let mut s = TestServer::start(V11_FAST);
    let (mut alice, mut bob) = pair(&s);
    let m1 = say(&mut alice, &mut bob, "keep");
    let m2 = say(&mut alice, &mut bob, "remove offline");
    s.sigterm();
    assert!(s.wait_exit(T).success());
    admin_common::admin(
        s.data_dir(),
        &["messages", "delete", &id_of(&m2).to_string()],
    )
    .ok();
    s.restart();
    let mut bob = s.login("bob", PASSWORD);
    // A client resuming from the last id it saw learns of the deletion.
    let j = bob.join11_since("r", id_of(&m2));
    assert_eq!(j.items.len(), 1, "{:?}", j.items);
    let ev = &j.items[0];
    assert_eq!(ev["type"], "deleted", "{ev}");
    assert_eq!(ev["user"], "[system]", "{ev}");
    assert_eq!(id_of(ev), id_of(&m2));
    assert!(seq_of(ev) > id_of(&m2));
    assert_eq!(j.last_id(), seq_of(ev));
    let j = bob.join11("r");
    assert_eq!(j.items, [m1]);
    // (alice is still online from before the graceful restart: no presence for her join.)
    let mut alice = s.login("alice", PASSWORD);
    alice.join11("r");
    let (ack, _) = alice.say("r", "after");
    assert!(id_of(&ack) > seq_of(ev));
}

#[test]
fn announcements_are_nobody_s_to_edit_or_delete() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, mut bob) = pair(&s);
    admin_common::admin(
        s.data_dir(),
        &["announce", "--room", "r", "maintenance", "at", "noon"],
    )
    .ok();
    let m = alice.expect("message");
    assert_eq!(m["user"], "[system]", "{m}");
    bob.expect("message");
    alice.refused(
        json!({"type":"edit","room":"r","id":id_of(&m),"text":"no maintenance"}),
        "forbidden",
    );
    alice.refused(
        json!({"type":"delete","room":"r","id":id_of(&m)}),
        "forbidden",
    );
    bob.assert_quiet("nothing changed");
}

#[test]
fn repeated_edit_and_delete_cids_get_their_acks_after_a_crash() {
    let mut s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    alice.join11("r");
    let (_, m1) = alice.say("r", "one");
    let (_, m2) = alice.say("r", "two");
    let edit_ack = alice.edit_msg("r", id_of(&m1), "one v2", Some("crash-e"));
    alice.expect("edited");
    let del_ack = alice.delete_msg("r", id_of(&m2), Some("crash-d"));
    alice.expect("deleted");
    s.kill9();
    s.restart();
    let mut alice = s.login("alice", PASSWORD);
    alice.join11("r");
    alice.send_json(
        &json!({"type":"edit","room":"r","id":id_of(&m1),"text":"one v2","cid":"crash-e"}),
    );
    assert_eq!(
        alice.expect("ack"),
        edit_ack,
        "the edit's cid survives a crash"
    );
    alice.send_json(&json!({"type":"delete","room":"r","id":id_of(&m2),"cid":"crash-d"}));
    assert_eq!(
        alice.expect("ack"),
        del_ack,
        "the delete's cid survives a crash"
    );
    alice.assert_quiet("repeats are not broadcast");
    let j = alice.join11_since("r", 0);
    assert_eq!(
        j.outline(),
        [
            ("message".to_string(), id_of(&m1), 0),
            ("edited".to_string(), id_of(&m1), id_of(&edit_ack)),
            ("deleted".to_string(), id_of(&m2), id_of(&del_ack)),
        ],
        "stored once"
    );
}

/// Replays are read from the database page by page (`--reply-buffer`); events must come out
/// in order across page boundaries as messages do.
#[test]
fn replays_with_events_are_complete_across_small_reply_pages() {
    let s = TestServer::start(&[
        "--rate",
        "100000",
        "--burst",
        "100000",
        "--reply-buffer",
        "16384",
    ]);
    let mut alice = s.register("alice");
    alice.join11("r");
    let filler = "x".repeat(600);
    let mut msgs: Vec<Value> = Vec::new();
    let mut events: Vec<Value> = Vec::new();
    let mut deleted = Vec::new();
    for i in 0..120 {
        msgs.push(alice.say("r", &format!("{i} {filler}")).1);
        if i % 3 == 2 {
            let target = id_of(&msgs[i - 1]);
            events.push(
                alice
                    .edit_and_echo("r", target, &format!("{i} edited {filler}"))
                    .1,
            );
        }
        if i % 5 == 4 {
            let target = id_of(&msgs[i - 3]);
            if !deleted.contains(&target) {
                events.push(alice.delete_and_echo("r", target).1);
                deleted.push(target);
            }
        }
    }
    // The model: visible messages in their current state, events except edits of deleted ones.
    let mut now: Vec<Value> = Vec::new();
    for m in &msgs {
        let id = id_of(m);
        if deleted.contains(&id) {
            continue;
        }
        let last_edit = events
            .iter()
            .rfind(|e| e["type"] == "edited" && id_of(e) == id);
        now.push(match last_edit {
            Some(e) => current(m, e["text"].as_str().unwrap(), Some(ts_of(e))),
            None => m.clone(),
        });
    }
    let mut want: Vec<Value> = now.clone();
    want.extend(
        events
            .iter()
            .filter(|e| !(e["type"] == "edited" && deleted.contains(&id_of(e))))
            .cloned(),
    );
    want.sort_by_key(position_of);
    assert!(want.len() > 100);

    let mut bob = s.register("bob");
    let j = bob.join11_since("r", 0);
    assert_eq!(j.items.len(), want.len());
    assert_eq!(j.items, want, "the whole replay, in order, across pages");
    let mid = position_of(&want[want.len() / 2]);
    let j = bob.join11_since("r", mid);
    let tail: Vec<Value> = want
        .iter()
        .filter(|v| position_of(v) > mid)
        .cloned()
        .collect();
    assert_eq!(j.items, tail);
    let j = bob.join11("r");
    assert_eq!(
        j.items,
        now[now.len() - 50..].to_vec(),
        "the newest 50, current state"
    );
}

#[test]
fn an_unloaded_room_comes_back_with_its_events_and_sequence() {
    let s = TestServer::start(&[
        "--rate",
        "100000",
        "--burst",
        "100000",
        "--room-unload-after",
        "300ms",
        "--presence-grace",
        "100ms",
    ]);
    let mut alice = s.register("alice");
    alice.join11("r");
    let st = story(&mut alice);
    alice.close();
    poll_until(
        std::time::Duration::from_secs(20),
        "the idle room unloaded",
        || (s.metric("chatd_rooms_loaded") == 0.0).then_some(()),
    );
    let mut alice = s.login("alice", PASSWORD);
    let e = alice.room_entry("r").expect("still on the list");
    assert_eq!(e["last_id"], st.e9, "{e}");
    assert_eq!(e["last"], st.now[2], "{e}");
    let j = alice.join11_since("r", 0);
    assert_eq!(
        j.items,
        st.replay_after(0),
        "events replay after the reload"
    );
    assert_eq!(j.last_id(), st.e9);
    let (ack, _) = alice.edit_and_echo("r", st.m3, "three v3");
    assert!(
        id_of(&ack) > st.e9,
        "the sequence continues after the reload"
    );
    alice.refused(
        json!({"type":"edit","room":"r","id":st.m2,"text":"x"}),
        "not_found",
    );
    alice.refused(json!({"type":"delete","room":"r","id":st.e4}), "not_found");
}

#[test]
fn an_edited_message_keeps_its_cid_user_and_ts_in_history_and_replays() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, mut bob) = pair(&s);
    let (_, m) = alice.say_cid("r", "with cid", "keep-cid");
    bob.expect("message");
    let (ack, _) = alice.edit_and_echo("r", id_of(&m), "with cid, edited");
    bob.expect("edited");
    let want = current(&m, "with cid, edited", Some(ts_of(&ack)));
    assert_eq!(want["cid"], "keep-cid");
    let h = bob.history(json!({"type":"history","room":"r"}));
    assert_eq!(
        h["messages"],
        json!([want]),
        "id, user, ts and cid are the original's"
    );
    assert_eq!(bob.join11("r").items, std::slice::from_ref(&want));
    assert_eq!(bob.join11_since("r", 0).items[0], want);
}

#[test]
fn seqs_share_the_server_wide_id_space_with_messages() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    alice.join11("r1");
    alice.join11("r2");
    let mut all = Vec::new();
    let mut per_room: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut last: [u64; 2] = [0, 0];
    // Alternating rooms; in each room a cycle of send, edit it, delete it.
    for i in 0..30 {
        let k = i % 2;
        let room = ["r1", "r2"][k];
        let id = match (i / 2) % 3 {
            0 => {
                let (ack, _) = alice.say(room, &format!("m{i}"));
                last[k] = id_of(&ack);
                last[k]
            }
            1 => id_of(&alice.edit_and_echo(room, last[k], &format!("e{i}")).0),
            _ => id_of(&alice.delete_and_echo(room, last[k]).0),
        };
        all.push(id);
        per_room[k].push(id);
    }
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        all.len(),
        "ids and seqs are unique across the server: {all:?}"
    );
    for ids in &per_room {
        assert_strictly_increasing(ids, "a room's ids and seqs");
    }
}

/// "Only the message's author may edit or delete it": an account deleted (its messages kept)
/// and registered again under the same name is another author.
#[test]
fn a_new_account_of_a_deleted_name_may_not_change_the_old_accounts_messages() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, mut bob) = pair(&s);
    let old = id_of(&say(&mut alice, &mut bob, "written by the first alice"));
    admin_common::admin(
        s.data_dir(),
        &["users", "delete", "alice", "--keep-messages"],
    )
    .ok();
    let mut again = s.register("alice");
    again.join11("r");
    for frame in [
        json!({"type":"edit","room":"r","id":old,"text":"rewritten","cid":"n1"}),
        json!({"type":"delete","room":"r","id":old,"cid":"n2"}),
    ] {
        again.send_json(&frame);
        let (error, _) = again.wait_for(T, |v| v["type"] == "error");
        assert_eq!(error["code"], "forbidden", "{frame} -> {error}");
    }
    // Its own messages it may change.
    let (ack, _) = again.say("r", "mine");
    again.send_json(&json!({"type":"delete","room":"r","id":id_of(&ack),"cid":"n3"}));
    let (done, _) = again.wait_for(T, |v| v["type"] == "ack" || v["type"] == "error");
    assert_eq!(done["type"], "ack", "{done}");
}
