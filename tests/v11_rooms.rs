//! PROTOCOL-1.1.md "The conversation list" (`rooms`) and the list and mention rules of "Precise
//! rules": contents, order, unread and mentions, leave and join, DM rooms, `last`, the cap.
mod admin_common;
mod common;
use common::*;
use serde_json::{json, Value};

/// The entry expected for a room whose newest message is `last` (a `message` frame).
fn entry(room: &str, last_id: u64, read: u64, unread: u64, mentions: u64, last: &Value) -> Value {
    json!({"room":room,"last_id":last_id,"read":read,"unread":unread,"mentions":mentions,
        "last":last})
}

/// Checks an entry of a room that holds no message: `last` is null or absent.
fn assert_empty_entry(e: &Value, room: &str, last_id: u64) {
    assert_eq!(e["room"], room, "{e}");
    assert_eq!(e["last_id"], last_id, "{e}");
    assert_eq!(e["unread"], 0, "{e}");
    assert_eq!(e["mentions"], 0, "{e}");
    assert!(
        e["last"].is_null(),
        "no message: `last` is null or absent: {e}"
    );
}

/// Pipelined sends from `c` (which has joined `room`), in chunks; returns the acked ids.
fn fill(c: &mut Client, room: &str, texts: &[String]) -> Vec<u64> {
    let mut ids = Vec::new();
    for chunk in texts.chunks(100) {
        for t in chunk {
            c.send_json(&json!({"type":"send","room":room,"text":t}));
        }
        let (mut acked, mut echoed) = (0, 0);
        while acked < chunk.len() || echoed < chunk.len() {
            let v = c.recv_json(T);
            match v["type"].as_str() {
                Some("ack") => {
                    ids.push(id_of(&v));
                    acked += 1;
                }
                Some("message") => echoed += 1,
                Some("presence") => {}
                _ => panic!("unexpected frame while filling {room}: {v}"),
            }
        }
    }
    ids
}

#[test]
fn the_list_holds_every_joined_room_newest_first_with_its_counts() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    // A user who joined nothing has an empty list.
    alice.send_json(&json!({"type":"rooms"}));
    assert_eq!(alice.expect("rooms"), json!({"type":"rooms","rooms":[]}));

    for r in ["r1", "r2", "r3", "quiet"] {
        alice.join11(r);
    }
    for r in ["r1", "r2", "r3"] {
        bob.join11(r);
    }
    let mut msgs = std::collections::HashMap::new();
    for r in ["r2", "r3", "r1"] {
        let (_, m) = bob.say(r, &format!("hello {r}"));
        msgs.insert(r, m);
    }
    let list = alice.rooms();
    assert_eq!(list.len(), 4, "{list:?}");
    for (e, r) in list.iter().zip(["r1", "r3", "r2"]) {
        let m = &msgs[r];
        assert_eq!(
            *e,
            entry(r, id_of(m), 0, 1, 0, m),
            "newest last_id first: {list:?}"
        );
    }
    assert_empty_entry(&list[3], "quiet", 0);

    // A new message moves its room to the top.
    let (_, m) = bob.say("r2", "again");
    assert_eq!(alice.room_names(), ["r2", "r1", "r3", "quiet"]);
    let e = alice.room_entry("r2").unwrap();
    assert_eq!(e, entry("r2", id_of(&m), 0, 2, 0, &m));
    // Bob's own messages are never unread for him.
    for e in bob.rooms() {
        assert_eq!(
            (e["unread"].as_u64(), e["mentions"].as_u64()),
            (Some(0), Some(0)),
            "{e}"
        );
    }
    assert_eq!(
        bob.room_names(),
        ["r2", "r1", "r3"],
        "only the rooms bob joined"
    );
    // A user sees only their own list.
    let mut carol = s.register("carol");
    assert!(carol.rooms().is_empty());
}

#[test]
fn unread_and_mentions_count_only_other_users_messages() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    alice.join11("r");
    bob.join11("r");
    alice.expect("presence");
    let mut ids = Vec::new();
    for (who, text) in [
        ("alice", "note to self @alice"),
        ("bob", "hi @alice"),
        ("alice", "@bob are you there"),
        ("bob", "talking to myself @bob"),
        ("bob", "plain"),
        ("alice", "@alice @bob"),
    ] {
        let (sender, other) = if who == "alice" {
            (&mut alice, &mut bob)
        } else {
            (&mut bob, &mut alice)
        };
        let (ack, _) = sender.say("r", text);
        other.expect("message");
        ids.push(id_of(&ack));
    }
    let e = alice.room_entry("r").unwrap();
    assert_eq!(
        (e["unread"].as_u64(), e["mentions"].as_u64()),
        (Some(3), Some(1)),
        "{e}"
    );
    let e = bob.room_entry("r").unwrap();
    assert_eq!(
        (e["unread"].as_u64(), e["mentions"].as_u64()),
        (Some(3), Some(2)),
        "{e}"
    );
    assert_eq!(e["last_id"], ids[5]);
    // Unread counts messages above the marker.
    alice.mark_read("r", ids[1]);
    let e = alice.room_entry("r").unwrap();
    assert_eq!(
        (e["unread"].as_u64(), e["mentions"].as_u64()),
        (Some(2), Some(0)),
        "{e}"
    );
    bob.mark_read("r", ids[2]);
    let e = bob.room_entry("r").unwrap();
    assert_eq!(
        (e["unread"].as_u64(), e["mentions"].as_u64()),
        (Some(1), Some(1)),
        "{e}"
    );
    bob.mark_read("r", ids[5]);
    let e = bob.room_entry("r").unwrap();
    assert_eq!(
        (e["unread"].as_u64(), e["mentions"].as_u64()),
        (Some(0), Some(0)),
        "{e}"
    );
}

/// `@` + name, case-insensitive, at the start or after a character that is not a letter, digit,
/// `_`, `-` or `.`, followed by the end or a character that is not a letter, digit, `_` or `-`
/// (a `.` ends the mention unless a letter or digit follows it).
#[test]
fn mention_rules_whole_word_case_insensitive() {
    let s = TestServer::start(V11_FAST);
    // Observers whose names exercise the rules: a prefix of another name, `.` and `-` inside.
    let observers = ["alice", "al", "J.Doe", "x-y"];
    let mut obs: Vec<Client> = observers.iter().map(|u| s.register(u)).collect();
    let mut bob = s.register("bob");
    for c in obs.iter_mut() {
        c.join11("r");
    }
    bob.join11("r");
    let cases: &[(&str, &[&str])] = &[
        // Positive, for alice.
        ("@alice", &["alice"]),
        ("hi @alice", &["alice"]),
        ("@alice hi", &["alice"]),
        ("@ALICE", &["alice"]),
        ("@Alice, look", &["alice"]),
        ("@aLiCe", &["alice"]),
        ("@alice.", &["alice"]),
        ("@alice. Next sentence", &["alice"]),
        ("@alice..", &["alice"]),
        ("@alice._", &["alice"]),
        ("@alice.-", &["alice"]),
        ("@alice.\nmore", &["alice"]),
        ("see (@alice)", &["alice"]),
        ("x,@alice", &["alice"]),
        ("@alice!", &["alice"]),
        ("@alice?", &["alice"]),
        ("@alice:", &["alice"]),
        ("@alice's idea", &["alice"]),
        ("@alice/@bob", &["alice"]),
        ("@alice+1", &["alice"]),
        ("@alice@", &["alice"]),
        ("@@alice", &["alice"]),
        ("first line\n@alice", &["alice"]),
        ("@alice\nsecond line", &["alice"]),
        ("tab\t@alice\tx", &["alice"]),
        ("«@alice»", &["alice"]),
        ("\"@alice\"", &["alice"]),
        ("@alice @alice @alice", &["alice"]),
        // Negative, for alice.
        ("alice", &[]),
        ("@alic", &[]),
        ("@alicex", &[]),
        ("@alice2", &[]),
        ("@alice_", &[]),
        ("@alice_bob", &[]),
        ("@alice-", &[]),
        ("@alice-x", &[]),
        ("@alice.x", &[]),
        ("@alice.X", &[]),
        ("@alice.5", &[]),
        ("email@alice", &[]),
        ("x@alice", &[]),
        ("5@alice", &[]),
        ("_@alice", &[]),
        ("-@alice", &[]),
        (".@alice", &[]),
        ("a.@alice", &[]),
        ("@ alice", &[]),
        ("@\u{430}lice", &[]), // Cyrillic а
        ("@bob", &[]),
        // A name that is a prefix of another.
        ("@al", &["al"]),
        ("@AL", &["al"]),
        ("@al.", &["al"]),
        ("@al ice", &["al"]),
        ("@al, @alice", &["al", "alice"]),
        ("@al.ice", &[]),
        ("@al-ice", &[]),
        ("@al_ice", &[]),
        ("@al1", &[]),
        // Names with `.` and `-` in them.
        ("@j.doe", &["J.Doe"]),
        ("@J.DOE!", &["J.Doe"]),
        ("@J.Doe.", &["J.Doe"]),
        ("(@j.doe)", &["J.Doe"]),
        ("@j.do", &[]),
        ("@j.does", &[]),
        ("@j.doe.x", &[]),
        ("@j.doe-", &[]),
        ("@jdoe", &[]),
        ("@j", &[]),
        ("@x-y", &["x-y"]),
        ("@X-Y, hi", &["x-y"]),
        ("@x-y.", &["x-y"]),
        ("@x-y-z", &[]),
        ("@x-yz", &[]),
        ("@x-y_", &[]),
        ("@xy", &[]),
        ("@x", &[]),
        ("@x-y @j.doe @al @alice", &["x-y", "J.Doe", "al", "alice"]),
    ];
    let mut counts = vec![0u64; observers.len()];
    let mut unread = 0u64;
    for (text, mentioned) in cases {
        bob.say("r", text);
        unread += 1;
        for (i, c) in obs.iter_mut().enumerate() {
            if mentioned.contains(&observers[i]) {
                counts[i] += 1;
            }
            let e = c.room_entry("r").unwrap();
            assert_eq!(e["unread"], unread, "{e}");
            assert_eq!(
                e["mentions"], counts[i],
                "after {text:?} (mentions {mentioned:?}), {} has {} mentions: {e}",
                observers[i], counts[i]
            );
        }
    }
}

#[test]
fn leave_removes_the_room_from_the_list_and_join_adds_it_back() {
    let s = TestServer::start(V11_FAST);
    let mut a1 = s.register("alice");
    let mut a2 = s.login("alice", PASSWORD);
    let mut bob = s.register("bob");
    a1.join11("r");
    a1.join11("other");
    a2.join11("r");
    bob.join11("r");
    a1.expect("presence");
    a2.expect("presence");
    let (ack, _) = bob.say("r", "one");
    a1.expect("message");
    a2.expect("message");
    assert_eq!(a1.room_names(), ["r", "other"]);

    // Leave on one connection: off the list for the user, though a2 stays joined.
    a1.leave("r");
    assert_eq!(a1.room_names(), ["other"]);
    assert_eq!(a2.room_names(), ["other"]);
    let (ack2, _) = bob.say("r", "two");
    assert_eq!(a2.expect("message")["id"], ack2["id"], "a2 is still joined");
    assert_eq!(
        a2.room_names(),
        ["other"],
        "a new message does not bring a room back"
    );

    // Joining again on any connection (here: the one still joined) puts it back.
    let j = a2.join11("r");
    assert_eq!(j.message_ids(), [id_of(&ack), id_of(&ack2)]);
    let e = a1.room_entry("r").expect("back on the list");
    assert_eq!(e["last_id"], ack2["id"]);
    assert_eq!(a1.room_names(), ["r", "other"]);

    // Leaving the other room on its only connection, then joining on another connection.
    a1.leave("other");
    assert_eq!(a2.room_names(), ["r"]);
    a2.join11("other");
    assert_eq!(a1.room_names(), ["r", "other"]);
}

#[test]
fn a_dm_is_on_the_other_users_list_only_once_it_holds_a_message() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    let dm = "dm:alice+bob";
    alice.join11(dm);
    // bob never joined it and it holds no message: not on his list.
    assert!(bob.rooms().is_empty());

    let (_, m) = alice.say(dm, "psst");
    let list = bob.rooms();
    assert_eq!(
        list,
        [entry(dm, id_of(&m), 0, 1, 0, &m)],
        "with a message, bob's list has it"
    );
    let e = alice.room_entry(dm).unwrap();
    assert_eq!(e["last_id"], m["id"], "{e}");
    assert_eq!(e["last"], m, "{e}");
    assert_eq!(
        (e["unread"].as_u64(), e["mentions"].as_u64()),
        (Some(0), Some(0)),
        "alice's own message is not unread: {e}"
    );

    // Nobody else's list has it.
    let mut carol = s.register("carol");
    assert!(carol.rooms().is_empty());
}

/// "every room this user has ever joined and not since left": a DM room is a room, so the user
/// who joined it has it on the list before anything was said in it.
#[test]
fn an_empty_dm_room_the_user_joined_is_on_their_list() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    let dm = "dm:alice+bob";
    alice.join11(dm);
    alice.join11("general");
    let list = alice.rooms();
    assert_eq!(list.len(), 2, "both joined rooms are listed: {list:?}");
    // Both have last_id 0: their order is not specified.
    for room in [dm, "general"] {
        let e = list
            .iter()
            .find(|e| e["room"] == room)
            .unwrap_or_else(|| panic!("{room} is listed: {list:?}"));
        assert_empty_entry(e, room, 0);
    }
    assert!(bob.rooms().is_empty(), "bob joined nothing");
}

#[test]
fn a_dm_comes_back_after_leave_when_a_new_message_arrives() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    let dm = "dm:alice+bob";
    alice.join11(dm);
    alice.join11("general");
    bob.join11(dm);
    bob.join11("general");
    alice.expect("presence");
    alice.expect("presence");
    let (_, m1) = alice.say(dm, "first");
    bob.expect("message");
    alice.say("general", "in general");
    bob.expect("message");
    assert_eq!(bob.room_names(), ["general", dm]);

    // Leave removes the DM although it holds a message.
    bob.leave(dm);
    alice.expect("presence");
    bob.leave("general");
    alice.expect("presence");
    assert!(bob.rooms().is_empty(), "both left");

    // A new message in an ordinary room does not bring it back; one in the DM does.
    alice.say("general", "still here");
    assert!(bob.rooms().is_empty());
    let (_, m2) = alice.say(dm, "second");
    let list = bob.rooms();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0], entry(dm, id_of(&m2), 0, 2, 0, &m2));
    assert!(id_of(&m1) < id_of(&m2));
}

#[test]
fn last_is_the_newest_message_in_its_current_state() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    alice.join11("r");
    bob.join11("r");
    alice.expect("presence");
    let (_, m1) = alice.say("r", "first");
    let (_, m2) = alice.say("r", "second");
    bob.expect("message");
    bob.expect("message");
    assert_eq!(
        bob.room_entry("r").unwrap(),
        entry("r", id_of(&m2), 0, 2, 0, &m2)
    );

    // Edit the newest: `last` shows the new text and edited_ts; last_id is the edit's seq.
    let (ack, _) = alice.edit_and_echo("r", id_of(&m2), "second, fixed");
    bob.expect("edited");
    let e = bob.room_entry("r").unwrap();
    let edited = current(&m2, "second, fixed", Some(ack["ts"].as_u64().unwrap()));
    assert_eq!(
        e,
        entry("r", id_of(&ack), 0, 2, 0, &edited),
        "edits are no unread messages"
    );
    // Edit an older one: `last` is still the newest message.
    let (ack, _) = alice.edit_and_echo("r", id_of(&m1), "first, fixed");
    bob.expect("edited");
    let e = bob.room_entry("r").unwrap();
    assert_eq!(e["last"], edited, "{e}");
    assert_eq!(e["last_id"], ack["id"], "{e}");

    // Delete the newest: `last` is the one before it, in its current state.
    let (ack, _) = alice.delete_and_echo("r", id_of(&m2));
    bob.expect("deleted");
    let e = bob.room_entry("r").unwrap();
    assert_eq!(e["last_id"], ack["id"], "{e}");
    assert_eq!(e["last"]["id"], m1["id"], "{e}");
    assert_eq!(e["last"]["text"], "first, fixed", "{e}");
    assert_eq!(e["unread"], 1, "a deleted message is no longer unread: {e}");
    // Delete the last one: no message left.
    let (ack, _) = alice.delete_and_echo("r", id_of(&m1));
    bob.expect("deleted");
    let e = bob.room_entry("r").unwrap();
    assert_empty_entry(&e, "r", id_of(&ack));
}

#[test]
fn order_follows_last_id_including_events() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    alice.join11("a");
    alice.join11("b");
    let (_, ma) = alice.say("a", "in a");
    alice.say("b", "in b");
    assert_eq!(alice.room_names(), ["b", "a"]);
    // An edit in `a` takes a newer seq than anything in `b`.
    let (ack, _) = alice.edit_and_echo("a", id_of(&ma), "in a, edited");
    assert_eq!(alice.room_names(), ["a", "b"]);
    assert_eq!(alice.room_entry("a").unwrap()["last_id"], ack["id"]);
}

#[test]
fn unread_is_capped_at_1000_and_mentions_are_counted_within_the_cap() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    alice.join11("big");
    // alice's connection goes away without a `leave`: `big` stays on her list, and nothing
    // piles up in her send queue while bob fills the room.
    alice.close();
    let mut bob = s.register("bob");
    bob.join11("big");
    let n = 1003;
    let texts: Vec<String> = (0..n)
        .map(|i| match i {
            0 => "oldest @alice".to_string(),
            1002 => "newest @alice".to_string(),
            _ => format!("filler {i}"),
        })
        .collect();
    let ids = fill(&mut bob, "big", &texts);
    assert_eq!(ids.len(), n);

    let mut alice = s.login("alice", PASSWORD);
    let counts = |c: &mut Client| {
        let e = c.room_entry("big").unwrap();
        (
            e["unread"].as_u64().unwrap(),
            e["mentions"].as_u64().unwrap(),
        )
    };
    assert_eq!(
        counts(&mut alice),
        (1000, 1),
        "1003 unread shown as the cap, mentions within it"
    );
    alice.mark_read("big", ids[2]);
    assert_eq!(counts(&mut alice), (1000, 1), "exactly 1000 unread");
    alice.mark_read("big", ids[3]);
    assert_eq!(counts(&mut alice), (999, 1));
    alice.mark_read("big", ids[1001]);
    assert_eq!(counts(&mut alice), (1, 1));
    alice.mark_read("big", ids[1002]);
    assert_eq!(counts(&mut alice), (0, 0));
}

#[test]
fn the_list_survives_a_restart() {
    let mut s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    for r in ["x", "y", "z"] {
        alice.join11(r);
        bob.join11(r);
        alice.expect("presence");
    }
    bob.join11("dm:alice+bob");
    let mut ids = Vec::new();
    for r in ["z", "dm:alice+bob", "x", "y"] {
        ids.push(id_of(&bob.say(r, &format!("@alice in {r}")).0));
    }
    bob.leave("y");
    alice.mark_read("x", ids[2]);
    let before = alice.rooms();
    assert_eq!(before.len(), 4, "{before:?}");
    s.sigterm();
    assert!(s.wait_exit(T).success());
    s.restart();
    let mut alice = s.login("alice", PASSWORD);
    assert_eq!(alice.rooms(), before, "the list and its counts are durable");
    let mut bob = s.login("bob", PASSWORD);
    assert_eq!(bob.room_names(), ["x", "dm:alice+bob", "z"], "bob left y");
}

#[test]
fn last_carries_the_message_fields_including_its_cid() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    let dm = "dm:alice+bob";
    alice.join11(dm);
    let (ack, m) = alice.say_cid(dm, "with a cid", "last-1");
    assert_eq!(m["cid"], "last-1");
    let e = bob.room_entry(dm).expect("the DM holds a message");
    assert_eq!(
        e,
        entry(dm, id_of(&ack), 0, 1, 0, &m),
        "`last` is the message as broadcast"
    );
}

/// (unread, mentions) of `room` on `c`'s list.
fn counts(c: &mut Client, room: &str) -> (u64, u64) {
    let e = c
        .room_entry(room)
        .unwrap_or_else(|| panic!("{room} is on the list"));
    (
        e["unread"].as_u64().unwrap(),
        e["mentions"].as_u64().unwrap(),
    )
}

#[test]
fn counts_follow_deletions_by_the_author_by_an_admin_and_by_pruning() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    let mut carol = s.register("carol");
    alice.join11("r");
    bob.join11("r");
    carol.join11("r");
    bob.expect("presence");
    let mut ids = Vec::new();
    for i in 0..8 {
        let text = if i % 2 == 0 {
            format!("@alice {i}")
        } else {
            format!("{i}")
        };
        ids.push(id_of(&bob.say("r", &text).0));
    }
    // Asked repeatedly: the same answer.
    assert_eq!(counts(&mut alice, "r"), (8, 4));
    assert_eq!(counts(&mut alice, "r"), (8, 4));
    assert_eq!(counts(&mut carol, "r"), (8, 0));
    // The author deletes one mention.
    bob.delete_msg("r", ids[0], None);
    assert_eq!(
        counts(&mut alice, "r"),
        (7, 3),
        "after bob deleted a mention"
    );
    assert_eq!(counts(&mut carol, "r"), (7, 0));
    // An admin deletes one mention and one plain message.
    admin_common::admin(
        s.data_dir(),
        &[
            "messages",
            "delete",
            &ids[2].to_string(),
            &ids[3].to_string(),
        ],
    )
    .ok();
    assert_eq!(counts(&mut alice, "r"), (5, 2), "after an admin deletion");
    assert_eq!(counts(&mut carol, "r"), (5, 0));
    // Pruning keeps the newest 3: ids[5] (plain), ids[6] (mention), ids[7] (plain).
    admin_common::admin(s.data_dir(), &["prune", "--keep-last", "3", "--room", "r"]).ok();
    assert_eq!(counts(&mut alice, "r"), (3, 1), "after pruning");
    assert_eq!(counts(&mut carol, "r"), (3, 0));
    // Deleting the author's account with its messages leaves nothing unread.
    admin_common::admin(
        s.data_dir(),
        &["users", "delete", "bob", "--delete-messages"],
    )
    .ok();
    assert_eq!(
        counts(&mut alice, "r"),
        (0, 0),
        "after bob's messages were removed"
    );
    assert_eq!(counts(&mut carol, "r"), (0, 0));
}

/// `mentions` counts messages whose text contains the mention: the text a message has now.
#[test]
fn mentions_follow_edits() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    alice.join11("r");
    bob.join11("r");
    let (ack, _) = bob.say("r", "@alice look");
    assert_eq!(counts(&mut alice, "r"), (1, 1));
    bob.edit_and_echo("r", id_of(&ack), "never mind");
    assert_eq!(
        counts(&mut alice, "r"),
        (1, 0),
        "the mention was edited away"
    );
    let (ack2, _) = bob.say("r", "plain");
    assert_eq!(counts(&mut alice, "r"), (2, 0));
    bob.edit_and_echo("r", id_of(&ack2), "plain, @ALICE");
    assert_eq!(counts(&mut alice, "r"), (2, 1), "a mention edited in");
}

#[test]
fn the_capped_window_follows_deletions() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    alice.join11("big");
    alice.close(); // no leave: `big` stays on the list
    let mut bob = s.register("bob");
    bob.join11("big");
    let texts: Vec<String> = (0..1001)
        .map(|i| match i {
            0 => "@alice oldest".to_string(),
            1000 => "@alice newest".to_string(),
            _ => format!("filler {i}"),
        })
        .collect();
    let ids = fill(&mut bob, "big", &texts);
    let mut alice = s.login("alice", PASSWORD);
    // 1001 unread: the newest 1000 are counted, and only the newest mention is among them.
    assert_eq!(counts(&mut alice, "big"), (1000, 1));
    let mut delete = |id: u64| {
        bob.send_json(&json!({"type":"delete","room":"big","id":id}));
        let (ack, _) = bob.wait_type("ack");
        assert_eq!(ack["room"], "big", "{ack}");
    };
    // Without the newest, exactly 1000 remain: the oldest mention is counted now.
    delete(ids[1000]);
    assert_eq!(counts(&mut alice, "big"), (1000, 1));
    delete(ids[500]);
    assert_eq!(counts(&mut alice, "big"), (999, 1));
    delete(ids[0]);
    assert_eq!(counts(&mut alice, "big"), (998, 0));
}

/// "a room leaves the user's list when the user sends leave for it on any connection (other
/// connections stay joined)": the connection that left is out of the room at once, even though
/// the user is still in it elsewhere (so no presence marks the moment).
#[test]
fn a_connection_that_left_gets_nothing_more_while_another_of_the_user_stays() {
    let s = TestServer::start(V11_FAST);
    let mut a1 = s.register("alice");
    let mut a2 = s.login("alice", PASSWORD);
    let mut bob = s.register("bob");
    bob.join11("general");
    bob.join11("dm:alice+bob");
    a2.join11("general");
    bob.expect("presence");
    let mut leaks = Vec::new();
    for i in 0..100 {
        a1.join11("general");
        let (before, _) = bob.say("general", &format!("before {i}"));
        assert_eq!(a1.expect("message")["id"], before["id"]);
        a1.leave("general");
        // Sent after a1 received `left`.
        let (after, _) = bob.say("general", &format!("after {i}"));
        let (marker, _) = bob.say("dm:alice+bob", &format!("marker {i}"));
        let (_, got) = a1.wait_for(T, |v| v["type"] == "notify" && v["id"] == marker["id"]);
        if !got.is_empty() {
            leaks.push(format!(
                "round {i}: message {} after left: {got:?}",
                after["id"]
            ));
        }
    }
    assert!(
        leaks.is_empty(),
        "{} of 100 rounds delivered a message to a connection that had left:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    // a2 got everything.
    let (_, got) = a2.wait_for(T, |v| v["text"] == "after 99");
    let general = got
        .iter()
        .filter(|v| v["type"] == "message" && v["room"] == "general")
        .count();
    assert_eq!(
        general, 199,
        "a2 stayed joined (it also got the DM markers as notify)"
    );
}

/// The list is server state the user changed with acknowledged frames (`joined`, `left`): like
/// the read markers it shares its records with, it must not roll back in a crash.
#[test]
fn a_leave_on_the_list_survives_kill_9() {
    let mut s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    for r in ["a", "b", "c"] {
        alice.join11(r);
        alice.say(r, &format!("in {r}"));
    }
    alice.leave("b");
    let before = alice.room_names();
    assert_eq!(before, ["c", "a"]);
    s.kill9();
    s.restart();
    let mut alice = s.login("alice", PASSWORD);
    assert_eq!(
        alice.room_names(),
        before,
        "the list as it was when `left` was received"
    );
}

#[test]
fn a_join_on_the_list_survives_kill_9() {
    let mut s = TestServer::start(V11_FAST);
    let mut bob = s.register("bob");
    bob.join11("busy");
    bob.say("busy", "something");
    let mut alice = s.register("alice");
    alice.join11("quiet"); // a new, empty room
    alice.join11("busy"); // an existing one
    let before = alice.room_names();
    assert_eq!(before, ["busy", "quiet"]);
    s.kill9();
    s.restart();
    let mut alice = s.login("alice", PASSWORD);
    assert_eq!(
        alice.room_names(),
        before,
        "the list as it was when `joined` was received"
    );
}
