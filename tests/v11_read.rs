//! PROTOCOL-1.1.md "Read markers" (and the `read` rules of "Precise rules"): forward-only markers,
//! the echo to every connection of the user, durability, `joined.read`, errors.
mod common;
use common::*;
use serde_json::json;

/// alice and bob in `room`; bob sends `n` messages; returns their ids. alice has consumed
/// bob's presence and the messages.
fn room_with_messages(s: &TestServer, room: &str, n: usize) -> (Client, Client, Vec<u64>) {
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    alice.join11(room);
    bob.join11(room);
    alice.expect("presence");
    let mut ids = Vec::new();
    for i in 0..n {
        let (ack, _) = bob.say(room, &format!("bob {i}"));
        assert_eq!(alice.expect("message")["id"], ack["id"]);
        ids.push(id_of(&ack));
    }
    (alice, bob, ids)
}

fn read_frame(room: &str, id: u64) -> serde_json::Value {
    json!({"type":"read","room":room,"id":id})
}

#[test]
fn read_records_the_marker_and_echoes_it() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, mut bob, ids) = room_with_messages(&s, "general", 3);
    alice.send_json(&read_frame("general", ids[1]));
    assert_eq!(
        alice.expect("read"),
        read_frame("general", ids[1]),
        "the echo is exactly the marker now in force"
    );
    alice.assert_quiet("one echo per read");
    bob.assert_quiet("read markers are private to their user");
    // The marker is what `joined` and the list report.
    let j = alice.join11("general");
    assert_eq!(j.read(), ids[1], "{}", j.joined);
    let e = alice.room_entry("general").expect("general is on the list");
    assert_eq!(e["read"], ids[1], "{e}");
    assert_eq!(
        e["unread"], 1,
        "one of bob's messages is above the marker: {e}"
    );
    // Bob's own marker is untouched.
    assert_eq!(bob.join11("general").read(), 0);
}

#[test]
fn joined_carries_read_zero_when_never_marked() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, _bob, ids) = room_with_messages(&s, "general", 2);
    let j = alice.join11("general");
    assert_eq!(j.read(), 0, "{}", j.joined);
    let j = alice.join11_since("general", ids[0]);
    assert_eq!(j.read(), 0, "{}", j.joined);
    let j = alice.join11("brand-new");
    assert_eq!(j.read(), 0, "{}", j.joined);
}

#[test]
fn a_marker_only_moves_forward_and_lower_ids_are_answered_with_the_marker_in_force() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, _bob, ids) = room_with_messages(&s, "r", 4);
    assert_eq!(alice.mark_read("r", ids[2]), ids[2]);
    assert_eq!(
        alice.mark_read("r", ids[0]),
        ids[2],
        "a lower id changes nothing"
    );
    assert_eq!(alice.mark_read("r", 0), ids[2], "0 changes nothing");
    assert_eq!(
        alice.mark_read("r", ids[2]),
        ids[2],
        "the same id changes nothing"
    );
    assert_eq!(alice.join11("r").read(), ids[2]);
    // An id between two messages is a valid marker.
    assert_eq!(alice.mark_read("r", ids[3] - 1), ids[3] - 1);
    assert_eq!(alice.mark_read("r", ids[3]), ids[3]);
    assert_eq!(alice.mark_read("r", ids[1]), ids[3]);
    assert_eq!(alice.join11("r").read(), ids[3]);
    let e = alice.room_entry("r").unwrap();
    assert_eq!(
        (e["read"].as_u64(), e["unread"].as_u64()),
        (Some(ids[3]), Some(0)),
        "{e}"
    );
}

#[test]
fn every_connection_of_the_user_gets_the_echo_and_nobody_else_does() {
    let s = TestServer::start(V11_FAST);
    let (mut a1, mut bob, ids) = room_with_messages(&s, "r", 3);
    let mut a2 = s.login("alice", PASSWORD);
    a2.join11("r");
    let mut a3 = s.login("alice", PASSWORD); // joined nothing
    let mut a4 = s.login("alice", PASSWORD);
    a4.join11("elsewhere");
    let mut carol = s.register("carol");
    carol.join11("r");
    // bob and a1 see carol come online (a2 joined after; alice is already online, so no
    // presence for a2's join).
    assert_eq!(a1.expect("presence")["user"], "carol");
    assert_eq!(a2.expect("presence")["user"], "carol");
    assert_eq!(bob.expect("presence")["user"], "carol");

    assert_eq!(a1.mark_read("r", ids[1]), ids[1]);
    for c in [&mut a2, &mut a3, &mut a4] {
        assert_eq!(c.expect("read"), read_frame("r", ids[1]));
        c.assert_quiet("exactly one echo per connection");
    }
    a1.assert_quiet("exactly one echo to the sender");
    bob.assert_quiet("another user's marker");
    carol.assert_quiet("another user's marker");

    // A lower id from another connection: still answered everywhere with the marker in force.
    a3.send_json(&read_frame("r", ids[0]));
    assert_eq!(a3.expect("read"), read_frame("r", ids[1]));
    for c in [&mut a1, &mut a2, &mut a4] {
        assert_eq!(c.expect("read"), read_frame("r", ids[1]));
    }
    // A higher one from a connection that has not joined the room moves it for everyone.
    a4.send_json(&read_frame("r", ids[2]));
    assert_eq!(a4.expect("read"), read_frame("r", ids[2]));
    for c in [&mut a1, &mut a2, &mut a3] {
        assert_eq!(c.expect("read"), read_frame("r", ids[2]));
        c.assert_quiet("exactly one echo per connection");
    }
    bob.assert_quiet("another user's marker");
    assert_eq!(a2.join11("r").read(), ids[2]);
}

#[test]
fn markers_are_per_user_and_per_room() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, mut bob, ids) = room_with_messages(&s, "r1", 2);
    alice.join11("r2");
    bob.join11("r2");
    alice.expect("presence");
    let (ack, _) = bob.say("r2", "in r2");
    alice.expect("message");
    assert_eq!(alice.mark_read("r1", ids[1]), ids[1]);
    assert_eq!(
        alice.join11("r2").read(),
        0,
        "another room's marker is its own"
    );
    assert_eq!(
        bob.join11("r1").read(),
        0,
        "another user's marker is their own"
    );
    assert_eq!(bob.mark_read("r1", ids[0]), ids[0]);
    assert_eq!(
        alice.join11("r1").read(),
        ids[1],
        "bob's marker does not move alice's"
    );
    assert_eq!(alice.mark_read("r2", id_of(&ack)), id_of(&ack));
    assert_eq!(alice.join11("r1").read(), ids[1]);
}

#[test]
fn read_on_a_room_not_joined_works() {
    let s = TestServer::start(V11_FAST);
    let mut bob = s.register("bob");
    bob.join11("news");
    let (ack, _) = bob.say("news", "headline");
    let mut alice = s.register("alice");
    // alice never joined `news` on any connection.
    assert_eq!(alice.mark_read("news", id_of(&ack)), id_of(&ack));
    bob.assert_quiet("alice's marker");
    let j = alice.join11("news");
    assert_eq!(
        j.read(),
        id_of(&ack),
        "the marker set before the join: {}",
        j.joined
    );
}

#[test]
fn read_on_a_missing_room_is_not_found() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut a2 = s.login("alice", PASSWORD);
    alice.refused(read_frame("no-such-room", 1), "not_found");
    alice.refused(read_frame("no-such-room", 0), "not_found");
    a2.assert_quiet("no echo for a refused read");
    // Nor did it create the room.
    let j = alice.join11("no-such-room");
    assert_eq!((j.last_id(), j.read()), (0, 0));
}

#[test]
fn malformed_read_frames_are_bad_request() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, _bob, ids) = room_with_messages(&s, "r", 1);
    let mut a2 = s.login("alice", PASSWORD);
    assert_eq!(alice.mark_read("r", ids[0]), ids[0]);
    assert_eq!(a2.expect("read")["id"], ids[0]);
    for f in [
        json!({"type":"read","room":"r"}),
        json!({"type":"read","room":"r","id":null}),
        json!({"type":"read","room":"r","id":-1}),
        json!({"type":"read","room":"r","id":-100}),
        json!({"type":"read","room":"r","id":1.5}),
        json!({"type":"read","room":"r","id":"1"}),
        json!({"type":"read","room":"r","id":true}),
        json!({"type":"read","room":"r","id":[1]}),
        json!({"type":"read","room":"r","id":{"id":1}}),
        json!({"type":"read","id":1}),
        json!({"type":"read","room":null,"id":1}),
        json!({"type":"read","room":5,"id":1}),
        json!({"type":"read","room":"","id":1}),
        json!({"type":"read","room":"R","id":1}),
        json!({"type":"read","room":"has space","id":1}),
        json!({"type":"read","room":["r"],"id":1}),
    ] {
        alice.refused(f, "bad_request");
    }
    a2.assert_quiet("no echo for a refused read");
    assert_eq!(
        alice.join11("r").read(),
        ids[0],
        "refused reads changed nothing"
    );
}

#[test]
fn an_id_above_the_newest_is_lowered_to_the_newest() {
    let s = TestServer::start(V11_FAST);
    let (mut alice, mut bob, ids) = room_with_messages(&s, "r", 2);
    let newest = ids[1];
    assert_eq!(alice.mark_read("r", newest + 1000), newest);
    assert_eq!(alice.join11("r").read(), newest);
    // Had the marker been stored above the newest id, the next message would not be unread.
    let (ack, _) = bob.say("r", "new one");
    alice.expect("message");
    let e = alice.room_entry("r").unwrap();
    assert_eq!(e["read"], newest, "{e}");
    assert_eq!(e["unread"], 1, "the new message is unread: {e}");
    assert_eq!(alice.mark_read("r", MAX_SAFE_ID), id_of(&ack));
    // An empty room's newest id is 0.
    alice.join11("empty");
    assert_eq!(alice.mark_read("empty", 5), 0);
    assert_eq!(alice.join11("empty").read(), 0);
}

#[test]
fn a_marker_survives_a_graceful_restart() {
    let mut s = TestServer::start(V11_FAST);
    let (mut alice, _bob, ids) = room_with_messages(&s, "r", 3);
    assert_eq!(alice.mark_read("r", ids[1]), ids[1]);
    s.sigterm();
    assert!(s.wait_exit(T).success());
    s.restart();
    let mut alice = s.login("alice", PASSWORD);
    assert_eq!(alice.join11("r").read(), ids[1]);
    let e = alice.room_entry("r").expect("the list survives a restart");
    assert_eq!(
        (e["read"].as_u64(), e["unread"].as_u64()),
        (Some(ids[1]), Some(1)),
        "{e}"
    );
    assert_eq!(alice.mark_read("r", ids[0]), ids[1], "still forward-only");
}

#[test]
fn a_marker_survives_kill_9_once_its_echo_was_received() {
    let mut s = TestServer::start(V11_FAST);
    let (mut alice, _bob, ids) = room_with_messages(&s, "r", 3);
    assert_eq!(alice.mark_read("r", ids[0]), ids[0]);
    // The echo is sent only after the marker is on disk.
    assert_eq!(alice.mark_read("r", ids[2]), ids[2]);
    s.kill9();
    s.restart();
    let mut alice = s.login("alice", PASSWORD);
    assert_eq!(alice.join11("r").read(), ids[2]);
    let e = alice.room_entry("r").unwrap();
    assert_eq!(
        (e["read"].as_u64(), e["unread"].as_u64()),
        (Some(ids[2]), Some(0)),
        "{e}"
    );
}

#[test]
fn two_devices_marking_at_once_never_see_the_marker_move_backwards() {
    let s = TestServer::start(V11_FAST);
    let (a1, mut bob, ids) = room_with_messages(&s, "r", 60);
    let a2 = s.login("alice", PASSWORD);
    let mut a3 = s.login("alice", PASSWORD); // only watches
    let rounds = 60;
    // a1 marks the even messages, a2 the odd ones, both upwards, pipelined, at the same time.
    let run = |mut c: Client, marks: Vec<u64>| {
        std::thread::spawn(move || {
            for id in &marks {
                c.send_json(&json!({"type":"read","room":"r","id":id}));
            }
            // Each connection gets an echo of every read of the user: its own and the other's.
            let mut seen = Vec::new();
            while seen.len() < 2 * marks.len() {
                let v = c.recv_json(T);
                assert_eq!(v["type"], "read", "{v}");
                seen.push(id_of(&v));
            }
            seen
        })
    };
    let even: Vec<u64> = ids.iter().step_by(2).copied().collect();
    let odd: Vec<u64> = ids.iter().skip(1).step_by(2).copied().collect();
    let h1 = run(a1, even);
    let h2 = run(a2, odd);
    let mut watched = Vec::new();
    while watched.len() < rounds {
        let v = a3.recv_json(T);
        assert_eq!(v["type"], "read", "{v}");
        watched.push(id_of(&v));
    }
    for (who, seen) in [
        ("a1", h1.join().expect("a1")),
        ("a2", h2.join().expect("a2")),
        ("a3", watched),
    ] {
        for w in seen.windows(2) {
            assert!(
                w[0] <= w[1],
                "{who} saw the marker move backwards: {} then {} ({seen:?})",
                w[0],
                w[1]
            );
        }
        assert_eq!(*seen.last().unwrap(), ids[rounds - 1], "{who}: {seen:?}");
    }
    bob.assert_quiet("another user's markers");
}
