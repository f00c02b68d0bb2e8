//! PROTOCOL-1.1.md "Notifications outside joined rooms" and the `notify` rules of "Precise
//! rules": DMs and mentions, only to connections that have not joined the room, never to the
//! author, one per message per connection.
mod common;
use common::*;
use serde_json::{json, Value};

const DM: &str = "dm:alice+bob";

/// The `notify` expected for the message acknowledged by `ack`.
fn notify_for(ack: &Value, user: &str, text: &str) -> Value {
    json!({"type":"notify","room":ack["room"],"id":ack["id"],"user":user,"text":text,
        "ts":ack["ts"]})
}

/// `send` and return the ack; the sender's own echo is consumed when it has joined the room.
fn send(c: &mut Client, room: &str, text: &str) -> Value {
    let (ack, _) = c.say(room, text);
    ack
}

#[test]
fn a_dm_notifies_every_connection_of_the_other_user_that_has_not_joined_it() {
    let s = TestServer::start(V11_FAST);
    let mut a1 = s.register("alice");
    let mut a2 = s.login("alice", PASSWORD); // joined nothing
    let mut a3 = s.login("alice", PASSWORD); // joined another room
    let mut b1 = s.register("bob");
    let mut b2 = s.login("bob", PASSWORD); // the author's other connection, joined nothing
    a1.join11(DM);
    a3.join11("general");
    b1.join11(DM);
    a1.expect("presence");

    b1.send_json(&json!({"type":"send","room":DM,"text":"hello","cid":"n-1"}));
    let ack = b1.expect("ack");
    let m = b1.expect("message");
    let want = notify_for(&ack, "bob", "hello");
    assert_eq!(a2.expect("notify"), want, "exactly these fields, no cid");
    assert_eq!(a3.expect("notify"), want);
    // The connection that joined the DM gets the message, and no notify.
    assert_eq!(a1.expect("message"), m);
    a1.assert_quiet("a joined connection gets the message, not a notify");
    a2.assert_quiet("one notify per message");
    a3.assert_quiet("one notify per message");
    b1.assert_quiet("never a notify to the author");
    b2.assert_quiet("never a notify to the author's other connections");
}

#[test]
fn a_dm_notifies_a_user_who_never_joined_it() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    bob.join11(DM);
    let ack = send(&mut bob, DM, "are you there?");
    assert_eq!(
        alice.expect("notify"),
        notify_for(&ack, "bob", "are you there?")
    );
    // Joining (with its replay) is the way to read it.
    let j = alice.join11_since(DM, 0);
    assert_eq!(j.message_ids(), [id_of(&ack)]);
    alice.assert_quiet("the notify is not repeated by the join");
    bob.expect("presence");
    let ack2 = send(&mut bob, DM, "now joined");
    assert_eq!(alice.expect("message")["id"], ack2["id"]);
    alice.assert_quiet("a joined connection gets no notify");
}

#[test]
fn a_mention_notifies_connections_outside_a_room_on_the_users_list() {
    let s = TestServer::start(V11_FAST);
    let mut a1 = s.register("alice");
    let mut a2 = s.login("alice", PASSWORD);
    let mut bob = s.register("bob");
    let mut carol = s.register("carol");
    let mut carol2 = s.login("carol", PASSWORD);
    a1.join11("general");
    bob.join11("general");
    carol.join11("general");
    a1.expect("presence");
    a1.expect("presence");
    bob.expect("presence");

    let ack = send(&mut bob, "general", "@alice look at this");
    assert_eq!(
        a2.expect("notify"),
        notify_for(&ack, "bob", "@alice look at this")
    );
    assert_eq!(a1.expect("message")["id"], ack["id"]);
    assert_eq!(carol.expect("message")["id"], ack["id"]);

    // No mention: no notify. The next mention is the next frame a2 sees.
    let plain = send(&mut bob, "general", "hello everyone, alice too");
    let not_whole = send(&mut bob, "general", "@alicex is someone else");
    let upper = send(&mut bob, "general", "@ALICE, case does not matter");
    assert_eq!(
        a2.expect("notify"),
        notify_for(&upper, "bob", "@ALICE, case does not matter"),
        "no notify for {} or {}",
        plain["id"],
        not_whole["id"]
    );
    // Several users mentioned: each is notified on their connections outside the room.
    let both = send(&mut bob, "general", "@carol and @alice");
    assert_eq!(
        a2.expect("notify"),
        notify_for(&both, "bob", "@carol and @alice")
    );
    assert_eq!(
        carol2.expect("notify"),
        notify_for(&both, "bob", "@carol and @alice")
    );
    a2.assert_quiet("one notify per message");
    carol2.assert_quiet("one notify per message");
    for c in [&mut a1, &mut carol] {
        let (_, skipped) = c.wait_for(T, |v| v["type"] == "message" && v["id"] == both["id"]);
        assert!(
            skipped.iter().all(|v| v["type"] == "message"),
            "connections in the room get messages only: {skipped:?}"
        );
        c.assert_quiet("no notify in a joined room");
    }
}

#[test]
fn no_notify_for_a_mention_in_a_room_not_on_the_users_list() {
    let s = TestServer::start(V11_FAST);
    let mut a1 = s.register("alice");
    let mut a2 = s.login("alice", PASSWORD);
    let mut bob = s.register("bob");
    let mut carol = s.register("carol");
    bob.join11("secret");
    bob.join11("general");
    bob.join11(DM);
    a1.join11("general");
    bob.expect("presence");

    // Never joined by alice.
    send(&mut bob, "secret", "@alice cannot see this");
    // Left by alice: off her list.
    a1.leave("general");
    bob.expect("presence");
    send(&mut bob, "general", "@alice has left");
    // Carol is mentioned in a DM that is not hers.
    send(&mut bob, DM, "@carol is not in this conversation");
    // The DM itself notifies alice; that notify is the first thing her connections see.
    let ack = send(&mut bob, DM, "marker");
    let want = notify_for(&ack, "bob", "marker");
    // (alice's list has the DM now, so the previous DM message notified her too.)
    for c in [&mut a1, &mut a2] {
        let first = c.expect("notify");
        assert_eq!(
            first["text"], "@carol is not in this conversation",
            "{first}"
        );
        assert_eq!(c.expect("notify"), want);
        c.assert_quiet("no notify for rooms off the list");
    }
    carol.assert_quiet("no notify for a DM between others");

    // Joining again puts general back on the list: mentions there notify again.
    a1.join11("general");
    bob.expect("presence");
    let ack = send(&mut bob, "general", "@alice welcome back");
    assert_eq!(
        a2.expect("notify"),
        notify_for(&ack, "bob", "@alice welcome back")
    );
    assert_eq!(a1.expect("message")["id"], ack["id"]);
    a1.assert_quiet("joined: no notify");
}

#[test]
fn never_to_the_authors_own_connections() {
    let s = TestServer::start(V11_FAST);
    let mut a1 = s.register("alice");
    let mut a2 = s.login("alice", PASSWORD);
    let mut bob = s.register("bob");
    a1.join11("general");
    a1.join11(DM);
    // alice mentions herself in a room on her list, and writes in her DM.
    send(&mut a1, "general", "@alice remember the milk");
    send(&mut a1, DM, "@alice @bob note to both of us");
    // bob is notified of the DM message (once: it is a DM and mentions him).
    let (n, _) = bob.wait_type("notify");
    assert_eq!(n["text"], "@alice @bob note to both of us");
    bob.assert_quiet("one notify per message");
    // A message from bob is the first thing a2 sees: nothing came for alice's own messages.
    bob.join11(DM);
    a1.expect("presence");
    let ack = send(&mut bob, DM, "reply");
    assert_eq!(a2.expect("notify"), notify_for(&ack, "bob", "reply"));
    a2.assert_quiet("author's connections get no notify");
}

#[test]
fn one_notify_per_message_per_connection_even_when_it_is_a_dm_and_a_mention() {
    let s = TestServer::start(V11_FAST);
    let mut a1 = s.register("alice");
    let mut a2 = s.login("alice", PASSWORD);
    let mut bob = s.register("bob");
    a1.join11(DM); // on alice's list, joined on a1 only
    a2.join11("general");
    bob.join11(DM);
    a1.expect("presence");
    let first = send(&mut bob, DM, "@alice, @ALICE: @alice!");
    let second = send(&mut bob, DM, "second");
    assert_eq!(
        a2.expect("notify"),
        notify_for(&first, "bob", "@alice, @ALICE: @alice!")
    );
    assert_eq!(
        a2.expect("notify"),
        notify_for(&second, "bob", "second"),
        "exactly one notify for the first message"
    );
    a2.assert_quiet("one notify per message");
    assert_eq!(a1.expect("message")["id"], first["id"]);
    assert_eq!(a1.expect("message")["id"], second["id"]);
    a1.assert_quiet("a joined connection gets no notify");
}

#[test]
fn notify_is_not_replayed_and_the_message_is_durable_when_it_arrives() {
    let mut s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    bob.join11(DM);
    bob.join11("general");
    alice.join11("general");
    bob.expect("presence");
    let dm_ack = bob.send_msg(DM, "durable dm", None);
    bob.expect("message");
    let mention_ack = bob.send_msg("general", "@alice durable mention", None);
    bob.expect("message");
    // alice's only connection has joined general: she sees the DM as a notify, the mention
    // as a message. One server sends them in that order; a cluster keeps order within a room
    // only, and the notify comes from the node that took the DM once it delivered it (PROTOCOL.md
    // section 13).
    let (mut notify, mut message) = (None, None);
    while notify.is_none() || message.is_none() {
        let v = alice.recv_json(T);
        match v["type"].as_str() {
            Some("presence") if s.is_cluster() => {}
            Some("notify") if notify.is_none() => notify = Some(v),
            Some("message") if message.is_none() => {
                assert!(
                    notify.is_some() || s.is_cluster(),
                    "the mention before the DM's notify: {v}"
                );
                message = Some(v);
            }
            _ => panic!("[alice] unexpected {v}"),
        }
    }
    assert_eq!(notify, Some(notify_for(&dm_ack, "bob", "durable dm")));
    assert_eq!(
        message.map(|m| m["id"].clone()),
        Some(mention_ack["id"].clone())
    );

    // A fresh connection is not told again.
    let mut again = s.login("alice", PASSWORD);
    again.assert_quiet("notify is a hint and is not replayed");
    // Crash right after: the notified message is on disk.
    s.kill9();
    s.restart();
    let mut alice = s.login("alice", PASSWORD);
    alice.assert_quiet("no notify replayed after a restart");
    let j = alice.join11_since(DM, 0);
    assert_eq!(j.message_ids(), [id_of(&dm_ack)]);
    assert_eq!(j.items[0]["text"], "durable dm");
    let e = alice.room_entry(DM).expect("the DM is on alice's list");
    assert_eq!(e["unread"], 1, "{e}");
}

#[test]
fn a_dm_left_with_leave_still_notifies_its_next_message() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    alice.join11(DM);
    bob.join11(DM);
    alice.expect("presence");
    send(&mut alice, DM, "first");
    bob.expect("message");
    bob.leave(DM);
    alice.expect("presence");
    // Any message stored in a DM notifies the other user's connections outside it.
    let ack = send(&mut alice, DM, "are you still there?");
    assert_eq!(
        bob.expect("notify"),
        notify_for(&ack, "alice", "are you still there?")
    );
    bob.assert_quiet("one notify");
}

#[test]
fn a_room_left_on_one_connection_no_longer_notifies_the_others() {
    let s = TestServer::start(V11_FAST);
    let mut a1 = s.register("alice");
    let mut a2 = s.login("alice", PASSWORD);
    let mut a3 = s.login("alice", PASSWORD); // never joins anything
    let mut bob = s.register("bob");
    a1.join11("general");
    a2.join11("general");
    bob.join11("general");
    bob.join11(DM);
    a1.expect("presence");
    a2.expect("presence");
    let ack = send(&mut bob, "general", "@alice one");
    assert_eq!(a3.expect("notify"), notify_for(&ack, "bob", "@alice one"));
    assert_eq!(a1.expect("message")["id"], ack["id"]);
    // a1 leaves: general is off alice's list, though a2 stays joined.
    a1.leave("general");
    let ack = send(&mut bob, "general", "@alice two");
    let marker = send(&mut bob, DM, "marker");
    assert_eq!(
        a3.expect("notify"),
        notify_for(&marker, "bob", "marker"),
        "no notify for a mention in a room off the list ({})",
        ack["id"]
    );
    // (Whether a1 still gets a general message after its `left` is v11_rooms' business.)
    let (n, before) = a1.wait_for(T, |v| v["type"] == "notify");
    assert_eq!(n, notify_for(&marker, "bob", "marker"), "{before:?}");
    // a2 is still joined: it gets the message itself.
    let (_, before) = a2.wait_for(T, |v| v["type"] == "message" && v["id"] == ack["id"]);
    assert!(before.iter().all(|v| v["type"] == "message"), "{before:?}");
}
