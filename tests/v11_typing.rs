//! PROTOCOL-1.1.md "Typing" (and the `typing` rule of "Precise rules"): relayed to the other
//! connections in the room except the typing user's own; joined rooms only; not stored, not
//! replayed, not acked; not counted against the send rate limit.
mod common;
use common::*;
use serde_json::json;

#[test]
fn typing_is_relayed_to_other_users_in_the_room_only() {
    let s = TestServer::start(V11_FAST);
    let mut a1 = s.register("alice");
    let mut a2 = s.login("alice", PASSWORD); // alice's other connection in the room
    let mut a3 = s.login("alice", PASSWORD); // alice's connection outside the room
    let mut b1 = s.register("bob");
    let mut b2 = s.login("bob", PASSWORD);
    let mut carol = s.register("carol"); // in another room only
    a1.join11("r");
    a2.join11("r");
    b1.join11("r");
    b2.join11("r");
    carol.join11("elsewhere");
    a1.expect("presence");
    a2.expect("presence");

    a1.typing("r");
    let want = json!({"type":"typing","room":"r","user":"alice"});
    assert_eq!(b1.expect("typing"), want);
    assert_eq!(b2.expect("typing"), want);
    a1.assert_quiet("typing is not acked or echoed");
    a2.assert_quiet("typing is not sent to the typing user's other connections");
    a3.assert_quiet("typing is not sent outside the room");
    carol.assert_quiet("typing is not sent outside the room");
    b1.assert_quiet("one typing per frame");
    b2.assert_quiet("one typing per frame");

    // From bob's second connection: alice's connections in the room get it, bob's first not.
    b2.typing("r");
    let want = json!({"type":"typing","room":"r","user":"bob"});
    assert_eq!(a1.expect("typing"), want);
    assert_eq!(a2.expect("typing"), want);
    b1.assert_quiet("typing is not sent to the typing user's other connections");
    b2.assert_quiet("typing is not acked");
    a3.assert_quiet("typing is not sent outside the room");
}

#[test]
fn typing_in_a_dm_room() {
    let s = TestServer::start(V11_FAST);
    let dm = "dm:alice+bob";
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    let mut bob_elsewhere = s.login("bob", PASSWORD);
    alice.join11(dm);
    bob.join11(dm);
    alice.expect("presence");
    alice.typing(dm);
    assert_eq!(
        bob.expect("typing"),
        json!({"type":"typing","room":dm,"user":"alice"})
    );
    // typing is no message: no notify for bob's connection outside the DM.
    bob_elsewhere.assert_quiet("typing is not a notification");
    alice.assert_quiet("no ack");
}

#[test]
fn typing_needs_a_join() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    bob.join11("r");
    alice.refused(json!({"type":"typing","room":"r"}), "not_joined");
    alice.refused(
        json!({"type":"typing","room":"never-created"}),
        "not_joined",
    );
    alice.join11("r");
    bob.expect("presence");
    alice.leave("r");
    bob.expect("presence");
    alice.refused(json!({"type":"typing","room":"r"}), "not_joined");
    for f in [
        json!({"type":"typing"}),
        json!({"type":"typing","room":null}),
        json!({"type":"typing","room":"R"}),
        json!({"type":"typing","room":7}),
        json!({"type":"typing","room":""}),
    ] {
        alice.refused(f, "bad_request");
    }
    bob.assert_quiet("refused typing frames are not relayed");
}

#[test]
fn typing_is_not_stored_replayed_or_sequenced() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    alice.join11("r");
    let (ack, _) = alice.say("r", "before");
    let mut bob = s.register("bob");
    bob.join11("r");
    alice.expect("presence");
    alice.typing("r");
    bob.expect("typing");

    // A late joiner, a since-replay and history see only the message; no id was taken.
    let mut carol = s.register("carol");
    let j = carol.join11("r");
    assert_eq!(j.message_ids(), [id_of(&ack)]);
    assert_eq!(j.items.len(), 1, "{:?}", j.items);
    assert_eq!(j.last_id(), id_of(&ack), "typing takes no id");
    let j = carol.join11_since("r", 0);
    assert_eq!(j.items.len(), 1, "{:?}", j.items);
    let h = carol.history(json!({"type":"history","room":"r","after":0}));
    assert_eq!(message_ids(&h), [id_of(&ack)]);
    carol.assert_quiet("typing sent before the join is not replayed");
    // Nor is it a change on the list.
    let e = bob.room_entry("r").unwrap();
    assert_eq!(e["last_id"], ack["id"], "{e}");
    assert_eq!(e["unread"], 1, "{e}");
}

#[test]
fn typing_does_not_count_against_the_send_rate_limit() {
    let s = TestServer::start(&["--rate", "1", "--burst", "3"]);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    alice.join11("r");
    alice.join11("s");
    bob.join11("r");
    bob.join11("s");
    alice.expect("presence");
    alice.expect("presence");
    // Well over the send burst of typing frames (alternating rooms): no error, no close.
    for i in 0..10 {
        alice.typing(if i % 2 == 0 { "r" } else { "s" });
    }
    let extra = alice.barrier();
    assert!(
        extra.is_empty(),
        "typing frames are not rate limited as sends: {extra:?}"
    );
    // The send bucket is still full: three sends pass.
    for i in 0..3 {
        alice.send_json(
            &json!({"type":"send","room":"r","text":format!("m{i}"),"cid":format!("c{i}")}),
        );
    }
    let (mut acks, mut echoes) = (0, 0);
    while acks < 3 || echoes < 3 {
        let v = alice.recv_json(T);
        match v["type"].as_str() {
            Some("ack") => acks += 1,
            Some("message") => echoes += 1,
            _ => panic!("the send burst was not spent by typing: {v}"),
        }
    }
    // Her `offline` follows the typing relayed in r (on a cluster, through the same queue of
    // her node; the typing may come after her messages there).
    alice.leave("r");
    let typing: Vec<_> = bob
        .wait_for(T, |v| {
            v["type"] == "presence" && v["user"] == "alice" && v["state"] == "offline"
        })
        .1
        .into_iter()
        .filter(|v| v["type"] == "typing")
        .collect();
    assert!(!typing.is_empty(), "typing was relayed");
}

#[test]
fn extra_typing_frames_within_a_second_are_dropped_silently() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    alice.join11("r");
    bob.join11("r");
    alice.expect("presence");
    // Three at once: one relayed, the rest dropped without an error.
    alice.typing("r");
    alice.typing("r");
    alice.typing("r");
    let (_, marker) = alice.say("r", "marker");
    alice.assert_quiet("dropped typing frames get no error");
    // Her `offline` follows every typing relayed: on one server in the order things happened;
    // on a cluster, where typing travels apart from messages (PROTOCOL.md section 13), through
    // the same queue of her node as the typing.
    alice.leave("r");
    let (_, mut before) = bob.wait_for(T, |v| {
        v["type"] == "presence" && v["user"] == "alice" && v["state"] == "offline"
    });
    if in_cluster_run() {
        // Alice's `online` reaches bob's node when her node's announcement does, possibly
        // after bob joined; and her typing may come after her message.
        before.retain(|v| v["type"] != "presence");
        before.sort_by_key(|v| v["type"] != "typing");
    }
    assert_eq!(
        before,
        [json!({"type":"typing","room":"r","user":"alice"}), marker],
        "at most one typing per connection per room per second"
    );
}
