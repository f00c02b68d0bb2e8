//! PROTOCOL.md "Transport": frame kinds, size limit, UTF-8, JSON shape, unknown types and
//! fields, null = absent, no compression.
mod common;
use common::*;
use serde_json::json;
use tungstenite::protocol::frame::coding::Data as OpData;
use tungstenite::Message;

#[test]
fn binary_frame_gets_bad_request_then_close_1003() {
    let s = TestServer::start(&[]);
    let mut c = s.register("alice");
    c.try_send(Message::binary(br#"{"type":"ping","t":1}"#.to_vec()))
        .unwrap();
    let e = c.expect_error("bad_request");
    // A binary frame is not a JSON object, so `ref` is absent.
    assert!(
        e.get("ref").map(|r| r.is_null()).unwrap_or(true),
        "ref must be absent for a binary frame: {e}"
    );
    c.expect_close_code(1003, T);
}

#[test]
fn binary_frame_before_auth_also_closes_1003() {
    let s = TestServer::start(&[]);
    let mut c = s.connect();
    c.try_send(Message::binary(vec![1u8, 2, 3])).unwrap();
    let (frames, end) = c.read_until_end(T);
    assert_eq!(
        end,
        Event::Closed(Some(1003)),
        "binary frame closes with 1003 (frames before: {frames:?})"
    );
    assert!(
        frames.iter().all(|f| f["type"] == "error"),
        "only error frames may precede the close: {frames:?}"
    );
}

#[test]
fn message_over_max_frame_closes_1009_and_at_limit_is_fine() {
    let max = 4096usize;
    let s = TestServer::start(&["--max-frame", "4096"]);
    let mut c = s.register("alice");
    assert_eq!(
        c.welcome["limits"]["max_frame"], max as u64,
        "welcome.limits.max_frame reflects --max-frame: {}",
        c.welcome
    );

    // Exactly max bytes: accepted (an app ping whose `t` pads the frame to the limit).
    let skeleton = json!({"type":"ping","t":""}).to_string();
    let pad = "p".repeat(max - skeleton.len());
    let frame = json!({"type":"ping","t":pad}).to_string();
    assert_eq!(frame.len(), max);
    c.send_text(&frame);
    let pong = c.expect("pong");
    assert_eq!(pong["t"], pad.as_str());

    // One byte more: 1009.
    let pad = "p".repeat(max + 1 - skeleton.len());
    let frame = json!({"type":"ping","t":pad}).to_string();
    assert_eq!(frame.len(), max + 1);
    let _ = c.try_send(Message::text(frame)); // the server may close while we write
    let (frames, end) = c.read_until_end(T);
    assert_eq!(
        end,
        Event::Closed(Some(1009)),
        "a message over --max-frame closes with 1009 (frames: {frames:?})"
    );
    assert!(
        frames.iter().all(|f| f["type"] != "pong"),
        "the oversized ping must not be answered: {frames:?}"
    );
}

#[test]
fn default_max_frame_is_64_kib() {
    let s = TestServer::start(&[]);
    let mut c = s.register("alice");
    assert_eq!(c.welcome["limits"]["max_frame"], 65536, "{}", c.welcome);
    let pad = "q".repeat(70_000);
    let _ = c.try_send(Message::text(json!({"type":"ping","t":pad}).to_string()));
    let (frames, end) = c.read_until_end(T);
    assert_eq!(
        end,
        Event::Closed(Some(1009)),
        "a 70 kB message closes with 1009 by default (frames: {frames:?})"
    );
}

#[test]
fn fragmented_message_is_reassembled_and_the_limit_applies_to_the_whole() {
    let s = TestServer::start(&["--max-frame", "4096"]);
    let mut raw = s.raw();
    raw.auth_register("alice");

    // Three fragments, 3000 bytes in all: reassembled and answered.
    let msg = json!({"type":"ping","t":"f".repeat(3000 - 22)}).to_string();
    let b = msg.as_bytes();
    raw.send_frame(false, OP_TEXT, &b[..1000]).unwrap();
    raw.send_frame(false, OP_CONT, &b[1000..2000]).unwrap();
    raw.send_frame(true, OP_CONT, &b[2000..]).unwrap();
    let pong = raw.read_json(T);
    assert_eq!(pong["type"], "pong", "fragmented ping is answered: {pong}");
    assert_eq!(pong["t"].as_str().map(|t| t.len()), Some(3000 - 22));

    // Three fragments of 2000 bytes each (each under the limit, 6000 together): 1009.
    let big = json!({"type":"ping","t":"g".repeat(6000 - 22)}).to_string();
    let b = big.as_bytes();
    let _ = raw.send_frame(false, OP_TEXT, &b[..2000]);
    let _ = raw.send_frame(false, OP_CONT, &b[2000..4000]);
    let _ = raw.send_frame(true, OP_CONT, &b[4000..]);
    let (texts, end) = raw.read_until_close(T);
    assert_eq!(
        end,
        Ok(Some(1009)),
        "reassembled message over the limit closes with 1009 (texts: {texts:?})"
    );
}

#[test]
fn invalid_utf8_in_text_frame_closes_1007() {
    let s = TestServer::start(&[]);
    let mut c = s.register("alice");
    let mut bytes = br#"{"type":"ping","t":""#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    bytes.extend_from_slice(br#""}"#);
    let _ = c.send_raw_frame(OpData::Text, bytes, true);
    let (frames, end) = c.read_until_end(T);
    assert_eq!(
        end,
        Event::Closed(Some(1007)),
        "invalid UTF-8 closes with 1007 (frames: {frames:?})"
    );
    assert!(frames.iter().all(|f| f["type"] != "pong"), "{frames:?}");
}

#[test]
fn invalid_utf8_split_across_fragments_closes_1007() {
    let s = TestServer::start(&[]);
    let mut raw = s.raw();
    raw.auth_register("alice");
    // "é" is C3 A9; a lone C3 at the end of the message is invalid even though each fragment
    // on its own could be a prefix of valid text.
    let _ = raw.send_frame(false, OP_TEXT, br#"{"type":"ping","t":"ab"#);
    let _ = raw.send_frame(true, OP_CONT, &[0xC3, b'"', b'}']);
    let (texts, end) = raw.read_until_close(T);
    assert_eq!(
        end,
        Ok(Some(1007)),
        "invalid UTF-8 across fragments closes with 1007 (texts: {texts:?})"
    );
}

#[test]
fn non_object_json_is_bad_request_without_ref_and_stays_open() {
    let s = TestServer::start(&[]);
    let mut c = s.register("alice");
    for bad in [
        "[1,2,3]",
        "\"ping\"",
        "42",
        "null",
        "true",
        "not json at all",
        "{\"type\":\"ping\"",
        "",
    ] {
        c.send_text(bad);
        let e = c.expect_error("bad_request");
        assert!(
            e.get("ref").map(|r| r.is_null()).unwrap_or(true),
            "ref must be absent for a frame that is not a JSON object ({bad:?}): {e}"
        );
    }
    // Objects without a string `type`.
    for bad in [
        json!({}),
        json!({"type":5}),
        json!({"type":null}),
        json!({"type":["ping"]}),
        json!({"t":1}),
    ] {
        c.send_json(&bad);
        c.expect_error("bad_request");
    }
    // Still open and working.
    c.send_json(&json!({"type":"ping","t":"still here"}));
    assert_eq!(c.expect("pong")["t"], "still here");
}

#[test]
fn unknown_type_is_bad_request_with_ref_and_stays_open() {
    let s = TestServer::start(&[]);
    let mut c = s.register("alice");
    c.send_json(&json!({"type":"dance","room":"general"}));
    let e = c.expect_error("bad_request");
    assert_eq!(e["ref"], "dance", "ref is the offending frame's type: {e}");
    c.send_json(&json!({"type":"PING","t":1}));
    let e = c.expect_error("bad_request");
    assert_eq!(
        e["ref"], "PING",
        "types are case-sensitive; ref is the type: {e}"
    );
    let j = c.join("general");
    assert_eq!(j.members(), names(&["alice"]));
}

#[test]
fn unknown_fields_are_ignored() {
    let s = TestServer::start(&[]);
    let mut c = Client::connect(s.addr());
    c.auth_ok(json!({"type":"auth","user":"alice","password":PASSWORD,"register":true,"client":"tests","v":[1,2]}));
    c.send_json(&json!({"type":"join","room":"general","colour":"red","x":{"y":1}}));
    c.read_join_reply("general");
    c.send_json(
        &json!({"type":"send","room":"general","text":"hi","cid":"c1","priority":9,"extra":null}),
    );
    let ack = c.expect("ack");
    assert_eq!(ack["cid"], "c1");
    let m = c.expect("message");
    assert_eq!(m["text"], "hi");
    assert!(
        m.get("priority").is_none(),
        "unknown fields are not echoed: {m}"
    );
    c.send_json(&json!({"type":"ping","t":7,"junk":true}));
    assert_eq!(c.expect("pong")["t"], 7);
    c.send_json(&json!({"type":"who","room":"general","verbose":true}));
    c.expect("members");
}

#[test]
fn null_optional_fields_count_as_absent() {
    let s = TestServer::start(&["--rate", "1000", "--burst", "1000"]);
    let mut c = s.register("alice");
    c.join("general");
    // cid: null -> as if no cid: absent from ack and message.
    c.send_json(&json!({"type":"send","room":"general","text":"no cid","cid":null}));
    let ack = c.expect("ack");
    assert!(
        ack.get("cid").is_none(),
        "cid:null counts as absent, so ack has no cid: {ack}"
    );
    let m = c.expect("message");
    assert!(m.get("cid").is_none(), "message has no cid: {m}");
    for i in 0..3 {
        c.say("general", &format!("m{i}"));
    }
    // since: null -> like a join without since (last messages, more false).
    c.send_json(&json!({"type":"join","room":"general","since":null}));
    let j = c.read_join_reply("general");
    assert_eq!(
        j.messages.len(),
        4,
        "join with since:null replays like a join without since"
    );
    assert!(!j.more());
    // history with before: null and limit: null: newest, default limit.
    let h = c.history(
        json!({"type":"history","room":"general","before":null,"after":null,"limit":null}),
    );
    assert_eq!(h["type"], "history", "{h}");
    assert_eq!(h["messages"].as_array().unwrap().len(), 4, "{h}");
    // One of before/after null, the other set: not "both".
    let first = j.ids()[0];
    let h = c.history(json!({"type":"history","room":"general","before":null,"after":first}));
    assert_eq!(
        h["type"], "history",
        "before:null + after:N is just `after`: {h}"
    );
    assert_eq!(h["messages"].as_array().unwrap().len(), 3, "{h}");
}

#[test]
fn permessage_deflate_is_not_negotiated() {
    let s = TestServer::start(&[]);
    let raw = RawWs::connect_with_headers(
        s.addr(),
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    );
    assert!(
        raw.response_head.starts_with("HTTP/1.1 101"),
        "upgrade with an extension offer still succeeds: {}",
        raw.response_head
    );
    assert!(
        !raw.response_head
            .to_ascii_lowercase()
            .contains("permessage-deflate"),
        "version 1 does not negotiate compression: {}",
        raw.response_head
    );
}

#[test]
fn text_frames_from_server_hold_one_json_object_with_type() {
    // Every frame the server sent in a short session is a JSON object with a string `type`.
    let s = TestServer::start(&[]);
    let mut raw = s.raw();
    let w = raw.auth_register("alice");
    assert!(w.is_object() && w["type"].is_string());
    raw.send_json(&json!({"type":"join","room":"r"}));
    raw.send_json(&json!({"type":"send","room":"r","text":"x"}));
    raw.send_json(&json!({"type":"nope"}));
    raw.send_json(&json!({"type":"ping","t":"end"}));
    loop {
        let v = raw.read_json(T);
        assert!(v.is_object(), "{v}");
        assert!(v["type"].is_string(), "{v}");
        if v["type"] == "pong" {
            break;
        }
    }
}

#[test]
fn websocket_ping_from_the_client_gets_a_pong() {
    let s = TestServer::start(&[]);
    let mut raw = s.raw();
    raw.auth_register("alice");
    raw.send_frame(true, OP_PING, b"are you there").unwrap();
    loop {
        match raw.read_frame(T) {
            RawEvent::Frame {
                opcode: OP_PONG,
                payload,
                ..
            } => {
                assert_eq!(payload, b"are you there");
                break;
            }
            RawEvent::Frame {
                opcode: OP_PING, ..
            } => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}

#[test]
fn client_close_is_answered_with_a_close() {
    let s = TestServer::start(&[]);
    let mut raw = s.raw();
    raw.auth_register("alice");
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    raw.send_frame(true, OP_CLOSE, &payload).unwrap();
    let (texts, end) = raw.read_until_close(T);
    assert!(texts.is_empty(), "{texts:?}");
    assert_eq!(end, Ok(Some(1000)), "the server echoes the normal close");
    // Then the server ends the TCP connection.
    loop {
        match raw.read_frame(T) {
            RawEvent::Eof | RawEvent::Error(_) => break,
            RawEvent::Timeout => panic!("TCP connection still open after the close handshake"),
            RawEvent::Frame { .. } => {}
        }
    }
}
