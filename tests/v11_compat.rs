//! PROTOCOL-1.1.md, first paragraph: version 1 stays in force. A v1 client that sends none of
//! the new frames sees `welcome` gain only `protocol` and `joined` gain only `read`, its flows
//! unchanged, and no new frame types but the documented 1.1 events.
mod common;
use common::*;
use serde_json::{json, Value};

fn assert_keys(v: &Value, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(keys_of(v), want, "fields of {v}");
}

/// Every frame is a v1 frame type or one of the documented 1.1 events, with its documented
/// fields. Returns the 1.1 event types seen.
fn check_only_documented(frames: &[Value], who: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for f in frames {
        let ty = f["type"]
            .as_str()
            .unwrap_or_else(|| panic!("{who}: no type: {f}"));
        assert!(
            V1_FRAME_TYPES.contains(&ty) || V11_EVENT_TYPES.contains(&ty),
            "{who} received an undocumented frame type: {f}"
        );
        match ty {
            "typing" => assert_keys(f, &["type", "room", "user"]),
            "edited" => {
                check_edited_shape(f);
                assert_keys(f, &["type", "room", "id", "seq", "user", "text", "ts"]);
            }
            "deleted" => {
                check_deleted_shape(f);
                assert_keys(f, &["type", "room", "id", "seq", "user", "ts"]);
            }
            "notify" => assert_keys(f, &["type", "room", "id", "user", "text", "ts"]),
            "read" => assert_keys(f, &["type", "room", "id"]),
            _ => continue,
        }
        if !seen.contains(&ty.to_string()) {
            seen.push(ty.to_string());
        }
    }
    seen
}

#[test]
fn welcome_gains_only_protocol() {
    let s = TestServer::start(&[]);
    let c = s.register("alice");
    assert_keys(
        &c.welcome,
        &["type", "user", "token", "server_time", "limits", "protocol"],
    );
    assert_eq!(c.welcome["protocol"], "1.1", "{}", c.welcome);
    assert_keys(
        &c.welcome["limits"],
        &["max_text", "max_frame", "rate_per_sec", "rate_burst"],
    );
    for w in [
        s.login("alice", PASSWORD).welcome,
        s.resume(&c.token).welcome,
    ] {
        assert_keys(
            &w,
            &["type", "user", "token", "server_time", "limits", "protocol"],
        );
        assert_eq!(w["protocol"], "1.1");
    }
}

#[test]
fn joined_gains_only_read_and_the_other_v1_replies_keep_their_fields() {
    let s = TestServer::start(&[]);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    alice.send_json(&json!({"type":"join","room":"general"}));
    let joined = alice.expect("joined");
    assert_keys(&joined, &["type", "room", "members", "read"]);
    assert_eq!(joined["read"], 0);
    let synced = alice.expect("synced");
    assert_keys(&synced, &["type", "room", "last_id", "more"]);
    bob.join11("general");
    let p = alice.expect("presence");
    assert_keys(&p, &["type", "room", "user", "state"]);

    alice.send_json(&json!({"type":"send","room":"general","text":"hi","cid":"c1"}));
    let ack = alice.expect("ack");
    assert_keys(&ack, &["type", "room", "cid", "id", "ts"]);
    let m = alice.expect("message");
    assert_keys(&m, &["type", "room", "id", "user", "text", "ts", "cid"]);
    assert_eq!(bob.expect("message"), m);
    let (_, m2) = alice.say("general", "no cid");
    assert_keys(&m2, &["type", "room", "id", "user", "text", "ts"]);
    bob.expect("message");

    let h = alice.history(json!({"type":"history","room":"general"}));
    assert_keys(&h, &["type", "room", "messages", "more"]);
    assert_eq!(
        h["messages"],
        json!([m, m2]),
        "history entries are unchanged"
    );
    alice.send_json(&json!({"type":"who","room":"general"}));
    assert_keys(&alice.expect("members"), &["type", "room", "users"]);
    alice.send_json(&json!({"type":"ping","t":{"any":[1]}}));
    assert_eq!(alice.expect("pong"), json!({"type":"pong","t":{"any":[1]}}));
    let e = alice.refused(json!({"type":"who","room":"elsewhere"}), "not_joined");
    assert_keys(&e, &["type", "code", "message", "ref"]);
    alice.send_json(&json!({"type":"leave","room":"general"}));
    assert_eq!(
        alice.expect("left"),
        json!({"type":"left","room":"general"})
    );
    // A rejoin replays the messages unchanged, and `read` is still the only new field.
    let j = alice.join11("general");
    assert_keys(&j.joined, &["type", "room", "members", "read"]);
    assert_eq!(j.items, [m, m2]);
}

#[test]
fn v1_flows_are_unchanged() {
    let s = TestServer::start(&[]);
    let mut alice = s.register("alice");
    let mut bob = s.register("bob");
    let j = alice.join11("general");
    assert_eq!(j.members(), names(&["alice"]));
    assert_eq!((j.last_id(), j.more()), (0, false));
    bob.join11("general");
    assert_eq!(
        alice.expect("presence"),
        json!({"type":"presence","room":"general","user":"bob","state":"online"})
    );
    // Send, ack, broadcast; mentions between joined v1 clients are plain messages.
    alice.send_json(&json!({"type":"send","room":"general","text":"@bob hello","cid":"k1"}));
    let ack = alice.expect("ack");
    let want = json!({"type":"message","room":"general","id":ack["id"],"user":"alice",
        "text":"@bob hello","ts":ack["ts"],"cid":"k1"});
    assert_eq!(alice.expect("message"), want);
    assert_eq!(bob.expect("message"), want);
    // A repeated cid: the original ack only.
    alice.send_json(&json!({"type":"send","room":"general","text":"@bob hello","cid":"k1"}));
    assert_eq!(alice.expect("ack"), ack);
    let (ack2, m2) = bob.say("general", "@alice hi");
    assert_eq!(alice.expect("message"), m2);
    // History, who, since, leave: as in v1.
    let h = bob.history(json!({"type":"history","room":"general","before":id_of(&ack2)}));
    assert_eq!(
        h,
        json!({"type":"history","room":"general","messages":[want],"more":false})
    );
    assert_eq!(bob.who("general"), names(&["alice", "bob"]));
    let j = bob.join11_since("general", id_of(&ack));
    assert_eq!(j.items, std::slice::from_ref(&m2));
    assert_eq!(j.last_id(), id_of(&ack2));
    bob.leave("general");
    assert_eq!(
        alice.expect("presence"),
        json!({"type":"presence","room":"general","user":"bob","state":"offline"})
    );
    bob.refused(
        json!({"type":"send","room":"general","text":"x"}),
        "not_joined",
    );
    // Errors as before.
    alice.refused(json!({"type":"nonsense"}), "bad_request");
    alice.refused(json!({"type":"join","room":"Upper"}), "bad_request");
    alice.refused(
        json!({"type":"send","room":"general","text":" "}),
        "bad_request",
    );
    // Nothing else reached either v1 client.
    alice.assert_quiet("v1 flow");
    bob.assert_quiet("v1 flow");
}

#[test]
fn a_v1_client_receives_no_new_frame_types_but_the_documented_1_1_events() {
    let s = TestServer::start(V11_FAST);
    // bob's v1 client: joins general, sends and reads history, never sends a 1.1 frame.
    let mut v1 = s.register("bob");
    // bob's 1.1 client on another device.
    let mut bob11 = s.login("bob", PASSWORD);
    let mut alice = s.register("alice");
    let dm = "dm:alice+bob";
    v1.join11("general");
    alice.join11("general");
    alice.join11(dm);
    bob11.join11("general");
    let mut frames = Vec::new();

    // Everything 1.1 around the v1 client.
    alice.typing("general");
    let (_, m) = alice.say("general", "@bob look");
    let (_, m_dm) = alice.say(dm, "@bob private");
    let (_, _) = alice.edit_and_echo("general", id_of(&m), "@bob look again");
    let (_, _) = alice.delete_and_echo("general", id_of(&m));
    alice.mark_read("general", id_of(&m));
    alice.rooms();
    bob11.mark_read(dm, id_of(&m_dm));
    bob11.typing("general");
    bob11.rooms();
    // The v1 client's own v1 requests in between: replies as in v1.
    v1.send_json(&json!({"type":"send","room":"general","text":"v1 speaking","cid":"v1-1"}));
    let (ack, before) = v1.wait_type("ack");
    frames.extend(before);
    assert_eq!(ack["cid"], "v1-1");
    let (m, before) = v1.wait_for(T, |v| v["type"] == "message" && v["id"] == ack["id"]);
    frames.extend(before);
    assert_eq!(m["text"], "v1 speaking");
    v1.send_json(&json!({"type":"history","room":"general"}));
    let (h, before) = v1.wait_type("history");
    frames.extend(before);
    assert_keys(&h, &["type", "room", "messages", "more"]);
    frames.extend(v1.barrier());
    // A resume with since replays events too: documented 1.1 events as well.
    v1.send_json(&json!({"type":"join","room":"general","since":0}));
    let (_, before) = v1.wait_for(T, |v| v["type"] == "synced");
    frames.extend(before);
    frames.extend(v1.barrier());

    let seen = check_only_documented(&frames, "the v1 client");
    for ty in ["typing", "edited", "deleted", "notify", "read"] {
        assert!(
            seen.contains(&ty.to_string()),
            "the scenario delivers a `{ty}` to the v1 client: {frames:?}"
        );
    }
    // And only the documented ones reached the others.
    check_only_documented(&alice.barrier(), "alice");
    check_only_documented(&bob11.barrier(), "bob's 1.1 client");
}

#[test]
fn clients_that_use_none_of_1_1_see_no_1_1_frames() {
    let s = TestServer::start(V11_FAST);
    let mut clients = register_all(&s, &["alice", "bob", "carol"]);
    for c in clients.iter_mut() {
        c.join11("general");
        c.join11("random");
    }
    let mut frames: Vec<Vec<Value>> = vec![Vec::new(), Vec::new(), Vec::new()];
    let mut last = Value::Null;
    for (i, text) in [
        "@bob hi",
        "@carol @alice",
        "plain",
        "@ALICE!",
        "@bob. @carol,",
    ]
    .iter()
    .enumerate()
    {
        let room = if i % 2 == 0 { "general" } else { "random" };
        let c = &mut clients[i % 3];
        c.send_json(&json!({"type":"send","room":room,"text":text,"cid":format!("q{i}")}));
        let (ack, before) = c.wait_type("ack");
        frames[i % 3].extend(before);
        last = ack;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        // Everyone is in both rooms: wait for the last message, then ask for history.
        let (_, before) = c.wait_for(T, |v| v["type"] == "message" && v["id"] == last["id"]);
        frames[i].extend(before);
        c.send_json(&json!({"type":"history","room":"general"}));
        frames[i].extend(c.wait_type("history").1);
        frames[i].extend(c.barrier());
        assert!(
            frames[i].iter().filter(|f| f["type"] == "message").count() >= 4,
            "[{}] received the messages: {:?}",
            c.user,
            frames[i]
        );
        for f in &frames[i] {
            assert!(
                V1_FRAME_TYPES.contains(&f["type"].as_str().unwrap_or("")),
                "[{}] a v1-only world produces v1 frames only: {f}",
                c.user
            );
        }
    }
}

#[test]
fn the_new_frames_follow_v1_session_rules() {
    let s = TestServer::start(&[]);
    let mut c = s.connect();
    // Before auth: unauthorized, the connection stays open.
    for f in [
        json!({"type":"rooms"}),
        json!({"type":"read","room":"r","id":1}),
        json!({"type":"typing","room":"r"}),
        json!({"type":"edit","room":"r","id":1,"text":"x"}),
        json!({"type":"delete","room":"r","id":1}),
        json!({"type":"join","room":"dm:alice+bob"}),
    ] {
        c.refused(f, "unauthorized");
    }
    c.auth_ok(json!({"type":"auth","user":"alice","password":PASSWORD,"register":true}));
    // Unknown fields are ignored and null counts as absent, on new frames too.
    c.send_json(&json!({"type":"rooms","extra":{"x":1},"room":null}));
    assert_eq!(c.expect("rooms"), json!({"type":"rooms","rooms":[]}));
    c.join11("r");
    let (_, m) = c.say("r", "hello");
    let ack = c.edit_msg("r", id_of(&m), "hello!", None);
    c.expect("edited");
    c.send_json(
        &json!({"type":"edit","room":"r","id":id_of(&m),"text":"hello!!","cid":null,"x":[]}),
    );
    let ack2 = c.expect("ack");
    assert!(ack2.get("cid").is_none(), "a null cid is no cid: {ack2}");
    assert!(id_of(&ack2) > id_of(&ack));
    c.expect("edited");
    c.send_json(&json!({"type":"read","room":"r","id":id_of(&m),"unknown":true}));
    assert_eq!(
        c.expect("read"),
        json!({"type":"read","room":"r","id":id_of(&m)})
    );
    c.send_json(&json!({"type":"typing","room":"r","text":"ignored"}));
    c.assert_quiet("typing alone in a room: nothing to anyone");
}
