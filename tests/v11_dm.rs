//! PROTOCOL-1.1.md "Direct messages" (and the check order of "Precise rules"): the reserved
//! `dm:a+b` room names, who may use them, and DM rooms behaving as ordinary rooms.
mod admin_common;
mod common;
use common::*;
use serde_json::{json, Value};

/// Every kind of frame that names a room, with otherwise valid fields (no cid, so an error's
/// `ref` is the frame's type).
fn frames_naming(room: &str) -> Vec<Value> {
    vec![
        json!({"type":"join","room":room}),
        json!({"type":"join","room":room,"since":0}),
        json!({"type":"send","room":room,"text":"hi"}),
        json!({"type":"history","room":room}),
        json!({"type":"history","room":room,"before":1000,"limit":10}),
        json!({"type":"who","room":room}),
        json!({"type":"leave","room":room}),
        json!({"type":"read","room":room,"id":1}),
        json!({"type":"typing","room":room}),
        json!({"type":"edit","room":room,"id":1,"text":"changed"}),
        json!({"type":"delete","room":room,"id":1}),
    ]
}

/// The same frames with a cid where the frame takes one: the error's `ref` is then the cid.
fn frames_with_cid(room: &str) -> Vec<Value> {
    vec![
        json!({"type":"send","room":room,"text":"hi","cid":format!("s-{}", unique())}),
        json!({"type":"edit","room":room,"id":1,"text":"x","cid":format!("e-{}", unique())}),
        json!({"type":"delete","room":room,"id":1,"cid":format!("d-{}", unique())}),
    ]
}

/// Sends every frame naming `room` and requires error `code` for each.
fn all_refused(c: &mut Client, room: &str, code: &str) {
    for f in frames_naming(room).into_iter().chain(frames_with_cid(room)) {
        c.refused(f, code);
    }
}

#[test]
fn the_dm_name_is_both_names_in_lower_case_sorted_by_byte_order() {
    let s = TestServer::start(V11_FAST);
    // Upper case registered names: the room uses them in lower case, sorted in lower case
    // ("Zed" < "amy" in bytes, but "amy" < "zed").
    let mut zed = s.register("Zed");
    let mut amy = s.register("amy");
    let room = "dm:amy+zed";
    assert_eq!(dm_room("Zed", "amy"), room);
    let j = zed.join11(room);
    assert_eq!(j.members(), names(&["Zed"]), "{}", j.joined);
    assert_eq!(j.read(), 0, "never marked: {}", j.joined);
    assert_eq!(j.last_id(), 0);
    amy.join11(room);
    assert_eq!(
        zed.expect("presence"),
        json!({"type":"presence","room":room,"user":"amy","state":"online"})
    );
    for bad in ["dm:zed+amy", "dm:Zed+amy", "dm:amy+Zed", "dm:AMY+ZED"] {
        amy.refused(json!({"type":"join","room":bad}), "bad_request");
    }

    // `_` (0x5F) sorts before `a` (0x61); digits before letters.
    let _u = s.register("x_y");
    let mut v = s.register("xay");
    v.join11("dm:x_y+xay");
    v.refused(json!({"type":"join","room":"dm:xay+x_y"}), "bad_request");
    let mut b2 = s.register("b2");
    let _ba = s.register("ba");
    b2.join11("dm:b2+ba");
    b2.refused(json!({"type":"join","room":"dm:ba+b2"}), "bad_request");
    // A prefix sorts first.
    let mut al = s.register("al");
    let _alice = s.register("alice");
    al.join11("dm:al+alice");
    al.refused(json!({"type":"join","room":"dm:alice+al"}), "bad_request");
    // Names with `.` and `-` are valid user names, so valid in DM names.
    let mut jd = s.register("J.Doe-2");
    jd.join11("dm:al+j.doe-2");
}

#[test]
fn dm_names_may_be_longer_than_ordinary_room_names() {
    let s = TestServer::start(V11_FAST);
    let long_a = "a".repeat(32);
    let long_b = "b".repeat(32);
    let mut a = s.register(&long_a);
    let mut b = s.register(&long_b);
    let room = format!("dm:{long_a}+{long_b}");
    assert_eq!(room.len(), 4 + 2 * 32);
    a.join11(&room);
    b.join11(&room);
    a.expect("presence");
    let (ack, _) = a.say(&room, "long names");
    assert_eq!(ack["room"], room.as_str());
    assert_eq!(b.expect("message")["id"], ack["id"]);
    // The 64-character limit still holds for ordinary rooms.
    a.refused(json!({"type":"join","room":"r".repeat(65)}), "bad_request");
    // And a DM name with a user name over 32 characters is no valid DM name.
    let too_long = format!("dm:{}+{long_b}", "a".repeat(33));
    a.refused(json!({"type":"join","room":too_long}), "bad_request");
}

#[test]
fn every_other_name_starting_with_dm_is_bad_request_for_every_frame() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    let _carol = s.register("carol");
    let dm = "dm:alice+bob";
    alice.join11(dm);
    bob.join11(dm);
    alice.expect("presence");
    let (ack, _) = alice.say(dm, "the only message");
    bob.expect("message");

    let thirty_three = "b".repeat(33);
    let invalid = [
        "dm:bob+alice",       // wrong order
        "dm:Alice+bob",       // upper case
        "dm:alice+Bob",       // upper case
        "dm:ALICE+BOB",       // upper case
        "dm:alice",           // one name
        "dm:bob",             // one name
        "dm:alice+alice",     // the same name twice
        "dm:",                // no names
        "dm:+",               // two empty names
        "dm:+bob",            // an empty name
        "dm:alice+",          // an empty name
        "dm:alice++bob",      // an empty name between
        "dm:alice+bob+carol", // three names
        "dm:alice+bob+",      // trailing separator
        "dm: alice+bob",      // white space
        "dm:alice+bob ",      // white space
        "dm:alice +bob",      // white space
        "dm:alice+b!b",       // not a user name character
        "dm:alice+böb",       // not a user name character
        "dm:alice+bob:x",     // not a user name character
        "dm:alice,bob",       // wrong separator
        "dm:alice+bob\n",     // control character
        "dm:alice+bob\u{0}",  // control character
        "dm:alice%2bbob",     // not a user name character
        "DM:alice+bob",       // not the reserved prefix, and no valid room name either
        "dm;alice+bob",       // not the reserved prefix, and no valid room name either
    ];
    for name in invalid
        .iter()
        .copied()
        .chain([&*format!("dm:alice+{thirty_three}")])
    {
        for f in frames_naming(name).into_iter().chain(frames_with_cid(name)) {
            alice.refused(f, "bad_request");
        }
    }
    // The valid name still works and nothing was stored or announced.
    bob.assert_quiet("refused frames of alice");
    let h = alice.history(json!({"type":"history","room":dm}));
    assert_eq!(message_ids(&h), [id_of(&ack)], "{h}");
    assert_eq!(alice.who(dm), names(&["alice", "bob"]));
}

#[test]
fn a_third_user_is_forbidden_on_every_frame_naming_the_dm() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    let mut carol = s.register("carol");
    let dm = "dm:alice+bob";
    alice.join11(dm);
    bob.join11(dm);
    alice.expect("presence");
    let (ack, _) = alice.say(dm, "private");
    bob.expect("message");
    let m = id_of(&ack);

    for f in frames_naming(dm).into_iter().chain(frames_with_cid(dm)) {
        carol.refused(f, "forbidden");
    }
    // With the real message id too: carol may not read, edit or delete it.
    for f in [
        json!({"type":"read","room":dm,"id":m}),
        json!({"type":"edit","room":dm,"id":m,"text":"carol was here"}),
        json!({"type":"delete","room":dm,"id":m}),
        json!({"type":"join","room":dm,"since":m - 1}),
        json!({"type":"history","room":dm,"after":0}),
    ] {
        carol.refused(f, "forbidden");
    }
    // Forbidden is checked before the other user's existence: carol is not in `dm:alice+ghost`.
    all_refused(&mut carol, "dm:alice+ghost", "forbidden");
    all_refused(&mut carol, "dm:aaron+zelda", "forbidden");

    // Nothing happened: no presence, typing or message reached alice or bob, nothing changed.
    alice.assert_quiet("carol's refused frames");
    bob.assert_quiet("carol's refused frames");
    let h = bob.history(json!({"type":"history","room":dm}));
    assert_eq!(h["messages"][0]["text"], "private", "{h}");
    assert_eq!(message_ids(&h), [m]);
    assert_eq!(bob.who(dm), names(&["alice", "bob"]));
    assert!(
        !carol.room_names().iter().any(|r| r == dm),
        "a forbidden DM is not on carol's list"
    );
    // Carol's refused join did not create the room between alice and a third user either.
    let _dave = s.register("dave");
    let mut carol2 = s.register("erin");
    carol2.refused(json!({"type":"join","room":"dm:alice+dave"}), "forbidden");
    alice.refused(
        json!({"type":"read","room":"dm:alice+dave","id":0}),
        "not_found",
    );
}

#[test]
fn a_dm_whose_other_user_does_not_exist_is_not_found_for_every_frame() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    // Before and after alice in the sort order.
    all_refused(&mut alice, "dm:alice+nobody", "not_found");
    all_refused(&mut alice, "dm:aaron+alice", "not_found");
    // Nothing was created: alice's list is empty.
    assert!(alice.rooms().is_empty(), "nothing joined, nothing listed");
    // Once the user exists, the same name works.
    let mut nobody = s.register("nobody");
    let j = alice.join11("dm:alice+nobody");
    assert_eq!(j.members(), names(&["alice"]));
    assert_eq!(j.last_id(), 0);
    let j = nobody.join11("dm:alice+nobody");
    assert_eq!(j.members(), names(&["alice", "nobody"]));
}

#[test]
fn check_order_syntax_then_forbidden_then_not_found_then_not_joined() {
    let s = TestServer::start(V11_FAST);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    let mut carol = s.register("carol");
    let _dave = s.register("dave");
    bob.join11("dm:alice+bob");

    // 1. Syntax first, even for a caller who is not in it and a user who does not exist.
    carol.refused(
        json!({"type":"send","room":"dm:bob+alice","text":"x"}),
        "bad_request",
    );
    carol.refused(json!({"type":"who","room":"dm:ghost+alice"}), "bad_request");
    alice.refused(
        json!({"type":"read","room":"dm:ghost+alice","id":0}),
        "bad_request",
    );
    // 2. Forbidden before not_found.
    carol.refused(json!({"type":"who","room":"dm:alice+ghost"}), "forbidden");
    // 3. not_found before not_joined, for the frames that need a join.
    for f in [
        json!({"type":"send","room":"dm:alice+ghost","text":"x"}),
        json!({"type":"history","room":"dm:alice+ghost"}),
        json!({"type":"who","room":"dm:alice+ghost"}),
        json!({"type":"leave","room":"dm:alice+ghost"}),
        json!({"type":"typing","room":"dm:alice+ghost"}),
        json!({"type":"edit","room":"dm:alice+ghost","id":1,"text":"x"}),
        json!({"type":"delete","room":"dm:alice+ghost","id":1}),
    ] {
        alice.refused(f, "not_found");
    }
    // 4. Then not_joined: alice is one of the two, bob exists, alice has not joined.
    for f in [
        json!({"type":"send","room":"dm:alice+bob","text":"x"}),
        json!({"type":"history","room":"dm:alice+bob"}),
        json!({"type":"who","room":"dm:alice+bob"}),
        json!({"type":"leave","room":"dm:alice+bob"}),
        json!({"type":"typing","room":"dm:alice+bob"}),
        json!({"type":"edit","room":"dm:alice+bob","id":1,"text":"x"}),
        json!({"type":"delete","room":"dm:alice+bob","id":1}),
    ] {
        alice.refused(f, "not_joined");
    }
    // `read` needs no join, only an existing room: the DM bob created exists...
    assert_eq!(alice.mark_read("dm:alice+bob", 0), 0);
    // ...and one that was never joined by anyone does not.
    alice.refused(
        json!({"type":"read","room":"dm:alice+dave","id":0}),
        "not_found",
    );
    // Bob saw none of it.
    bob.assert_quiet("alice's refused frames");
}

#[test]
fn joining_a_new_dm_creates_it_and_counts_against_rooms_per_hour() {
    let s = TestServer::start(&["--rooms-per-hour", "1"]);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    alice.join11("first"); // alice's one creation this hour
    alice.refused(json!({"type":"join","room":"dm:alice+bob"}), "rate_limited");
    alice.refused(
        json!({"type":"read","room":"dm:alice+bob","id":0}),
        "not_found",
    );
    // Bob has a creation left: the DM now exists and alice may join it.
    let j = bob.join11("dm:alice+bob");
    assert_eq!(j.members(), names(&["bob"]));
    let j = alice.join11("dm:alice+bob");
    assert_eq!(j.members(), names(&["alice", "bob"]));
}

#[test]
fn dm_rooms_behave_as_ordinary_rooms() {
    let mut s = TestServer::start(V11_FAST);
    let dm = "dm:alice+bob";
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");

    // join: creates, members, read, empty replay.
    let j = alice.join11(dm);
    assert_eq!(j.members(), names(&["alice"]));
    assert!(j.items.is_empty());
    assert_eq!((j.last_id(), j.more()), (0, false));
    // presence and who.
    bob.join11(dm);
    assert_eq!(
        alice.expect("presence"),
        json!({"type":"presence","room":dm,"user":"bob","state":"online"})
    );
    assert_eq!(alice.who(dm), names(&["alice", "bob"]));
    assert_eq!(bob.who(dm), names(&["alice", "bob"]));

    // send with a cid: ack, then the message to both, the same frame.
    alice.send_json(&json!({"type":"send","room":dm,"text":"hi bob","cid":"dm-1"}));
    let ack = alice.expect("ack");
    check_ack_shape(&ack);
    assert_eq!(ack["cid"], "dm-1");
    let id1 = id_of(&ack);
    let expected = json!({"type":"message","room":dm,"id":id1,"user":"alice","text":"hi bob",
        "ts":ack["ts"],"cid":"dm-1"});
    assert_eq!(alice.expect("message"), expected);
    assert_eq!(bob.expect("message"), expected);
    // A repeated cid: the original ack, nothing stored or broadcast.
    alice.send_json(&json!({"type":"send","room":dm,"text":"hi bob","cid":"dm-1"}));
    assert_eq!(alice.expect("ack"), ack);
    let (ack2, _) = bob.say(dm, "hi alice");
    let m2 = alice.expect("message");
    assert_eq!(m2["user"], "bob");
    let id2 = id_of(&ack2);
    assert!(id2 > id1);
    alice.assert_quiet("no duplicate of the repeated cid");

    // history: both, ascending.
    let h = bob.history(json!({"type":"history","room":dm}));
    assert_eq!(h["type"], "history", "{h}");
    assert_eq!(message_ids(&h), [id1, id2]);
    assert_eq!(h["messages"][0], expected);
    let h = bob.history(json!({"type":"history","room":dm,"before":id2}));
    assert_eq!(message_ids(&h), [id1]);
    assert_eq!(h["more"], false);

    // join with since.
    let j = bob.join11_since(dm, id1);
    assert_eq!(j.message_ids(), [id2]);
    assert_eq!(j.last_id(), id2);
    let j = bob.join11_since(dm, 0);
    assert_eq!(j.message_ids(), [id1, id2]);

    // leave: left, presence offline, not_joined afterwards.
    bob.leave(dm);
    assert_eq!(
        alice.expect("presence"),
        json!({"type":"presence","room":dm,"user":"bob","state":"offline"})
    );
    bob.refused(json!({"type":"who","room":dm}), "not_joined");
    bob.refused(json!({"type":"leave","room":dm}), "not_joined");

    // Durability: everything acked survives kill -9.
    s.kill9();
    s.restart();
    let mut bob = s.login("bob", PASSWORD);
    let j = bob.join11_since(dm, 0);
    assert_eq!(j.message_ids(), [id1, id2]);
    assert_eq!(j.items[0], expected);
    let mut alice = s.login("alice", PASSWORD);
    alice.join11(dm);
    // Ids continue above the old ones after the restart.
    let (ack3, _) = alice.say(dm, "after restart");
    assert!(id_of(&ack3) > id2);
    assert_eq!(bob.wait_type("message").0["id"], ack3["id"]);
}

/// A DM room with three messages by alice; returns their ids.
fn dm_with_three_messages(s: &TestServer, dm: &str) -> (Client, Vec<u64>) {
    let mut alice = s.register("alice");
    let _bob = s.register("bob");
    alice.join11(dm);
    let ids = (0..3)
        .map(|i| id_of(&alice.say(dm, &format!("dm {i}")).0))
        .collect();
    (alice, ids)
}

#[test]
fn admin_commands_list_dm_rooms_like_any_room() {
    use admin_common::admin_json;
    let s = TestServer::start(V11_FAST);
    let dm = "dm:alice+bob";
    let (_alice, ids) = dm_with_three_messages(&s, dm);
    let rooms = admin_json(s.data_dir(), &["rooms", "list"]);
    let entry = rooms
        .as_array()
        .unwrap_or_else(|| panic!("rooms list --json is an array: {rooms}"))
        .iter()
        .find(|r| r["name"] == dm)
        .unwrap_or_else(|| panic!("the DM room is listed: {rooms}"))
        .clone();
    assert_eq!(entry["messages"], 3, "{entry}");
    assert_eq!(entry["last_id"], ids[2], "{entry}");
    let listed = admin_json(s.data_dir(), &["messages", "list", "--room", dm]);
    let listed: Vec<u64> = listed
        .as_array()
        .unwrap_or_else(|| panic!("messages list --json is an array: {listed}"))
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(listed, [ids[2], ids[1], ids[0]], "newest first");
}

#[test]
fn admin_commands_prune_dm_rooms_like_any_room() {
    use admin_common::admin;
    let s = TestServer::start(V11_FAST);
    let dm = "dm:alice+bob";
    let (mut alice, ids) = dm_with_three_messages(&s, dm);
    admin(s.data_dir(), &["prune", "--keep-last", "1", "--room", dm]).ok();
    let h = alice.history(json!({"type":"history","room":dm}));
    assert_eq!(
        message_ids(&h),
        [ids[2]],
        "prune --keep-last 1 on the DM: {h}"
    );
}

#[test]
fn once_the_other_user_is_deleted_frames_naming_the_dm_are_not_found() {
    use admin_common::admin;
    let s = TestServer::start(V11_FAST);
    let dm = "dm:alice+bob";
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    alice.join11(dm);
    bob.join11(dm);
    alice.expect("presence");
    let (ack, _) = alice.say(dm, "bye bob");
    bob.expect("message");
    admin(s.data_dir(), &["users", "delete", "bob", "--keep-messages"]).ok();
    let (_, end) = bob.read_until_end(T);
    assert!(matches!(end, Event::Closed(Some(1008))), "{end:?}");
    // The name's other user no longer exists: not_found, before not_joined, for every frame.
    let mut wrong = Vec::new();
    for f in [
        json!({"type":"send","room":dm,"text":"hello?","cid":"gone-1"}),
        json!({"type":"history","room":dm}),
        json!({"type":"who","room":dm}),
        json!({"type":"typing","room":dm}),
        json!({"type":"read","room":dm,"id":id_of(&ack)}),
        json!({"type":"edit","room":dm,"id":id_of(&ack),"text":"x","cid":"gone-2"}),
        json!({"type":"delete","room":dm,"id":id_of(&ack),"cid":"gone-3"}),
        json!({"type":"join","room":dm}),
        json!({"type":"leave","room":dm}),
    ] {
        alice.send_json(&f);
        // The reply: an error, or what the frame gets when it is accepted.
        let accepted = match f["type"].as_str().unwrap() {
            "send" | "edit" | "delete" => "ack",
            "history" => "history",
            "who" => "members",
            "read" => "read",
            "join" => "synced",
            "leave" => "left",
            _ => "",
        };
        let got = if accepted.is_empty() {
            alice.barrier() // typing: no reply when accepted
        } else {
            let (v, mut before) =
                alice.wait_for(T, |v| v["type"] == "error" || v["type"] == accepted);
            before.push(v);
            before
        };
        let last = got.last().cloned().unwrap_or_default();
        if !(last["type"] == "error" && last["code"] == "not_found") {
            wrong.push(format!("{f} -> {got:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "frames naming a DM whose other user was deleted must get not_found:\n{}",
        wrong.join("\n")
    );
}
