//! PROTOCOL.md "Names": user, room, text and cid validation.
mod common;
use common::*;
use serde_json::{json, Value};

fn register_frame(user: Value, password: &str) -> Value {
    json!({"type":"auth","user":user,"password":password,"register":true})
}

#[test]
fn user_name_rules_on_register() {
    let s = TestServer::start(&[]);
    let mut c = s.connect();
    let bad: Vec<Value> = vec![
        json!(""),
        json!("a".repeat(33)),
        json!("has space"),
        json!("at@sign"),
        json!("slash/"),
        json!("caf\u{e9}"),
        json!("tab\t"),
        json!("plus+"),
        json!(42),
        json!(["alice"]),
    ];
    for name in bad {
        let e = c.auth(register_frame(name.clone(), PASSWORD));
        assert_eq!(e["type"], "error", "register {name} must fail: {e}");
        assert_eq!(
            e["code"], "bad_request",
            "register with invalid name {name}: {e}"
        );
    }
    // The connection stayed open through all of these; a valid 32-character name with every
    // allowed punctuation character works.
    let good = "Az09_.-".to_string() + &"x".repeat(25);
    assert_eq!(good.len(), 32);
    let w = c.auth_ok(register_frame(json!(good), PASSWORD));
    assert_eq!(w["user"], good.as_str());
}

#[test]
fn single_character_name_is_valid() {
    let s = TestServer::start(&[]);
    let c = s.register("q");
    assert_eq!(c.user, "q");
}

#[test]
fn user_names_are_case_insensitive_and_shown_as_first_registered() {
    let s = TestServer::start(&[]);
    let mut a = s.register("Alice");
    assert_eq!(a.user, "Alice");

    let mut c = s.connect();
    let e = c.auth(register_frame(json!("alice"), "another-password"));
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(
        e["code"], "user_exists",
        "`alice` is the same account as `Alice`: {e}"
    );
    let e = c.auth(register_frame(json!("ALICE"), "another-password"));
    assert_eq!(e["code"], "user_exists", "{e}");

    // Log in with a different case: the account's registered spelling is shown.
    let w = c.auth_ok(json!({"type":"auth","user":"aLiCe","password":PASSWORD}));
    assert_eq!(
        w["user"], "Alice",
        "welcome shows the name as first registered: {w}"
    );

    a.join("r");
    let j = c.join("r");
    assert_eq!(
        j.members(),
        names(&["Alice"]),
        "one account, shown as first registered"
    );
    let (_, m) = c.say("r", "hello");
    assert_eq!(
        m["user"], "Alice",
        "messages carry the registered spelling: {m}"
    );
    let ma = a.wait_for(T, |v| v["type"] == "message").0;
    assert_eq!(ma["user"], "Alice");
    assert_eq!(c.who("r"), names(&["Alice"]));
}

#[test]
fn password_length_rules_on_register() {
    let s = TestServer::start(&[]);
    let mut c = s.connect();
    for pw in ["", "1234567", &"p".repeat(129)] {
        let e = c.auth(register_frame(json!("bob"), pw));
        assert_eq!(
            e["type"],
            "error",
            "password of {} chars: {e}",
            pw.chars().count()
        );
        assert_eq!(
            e["code"],
            "bad_request",
            "password of {} chars: {e}",
            pw.chars().count()
        );
    }
    let e = c.auth(json!({"type":"auth","user":"bob","password":12345678,"register":true}));
    assert_eq!(
        e["code"], "bad_request",
        "password of the wrong JSON type: {e}"
    );
    // 8 and 128 characters are fine (128 multi-byte characters are still 128 characters).
    // (Not a common password, nor one character repeated: those rules are tested in
    // security_auth.rs.)
    c.auth_ok(register_frame(json!("bob"), "7c4-q9zk"));
    let mut d = s.connect();
    let long: String = "\u{e9}x".repeat(64);
    d.auth_ok(register_frame(json!("carol"), &long));
    let mut e = s.connect();
    e.auth_ok(json!({"type":"auth","user":"carol","password":long}));
}

#[test]
fn room_name_rules() {
    let s = TestServer::start(&[]);
    let mut c = s.register("alice");
    let bad: Vec<Value> = vec![
        json!(""),
        json!("General"),
        json!("ROOM"),
        json!("a".repeat(65)),
        json!("with space"),
        json!("dot.ted"),
        json!("caf\u{e9}"),
        json!("slash/x"),
        json!(7),
        json!({"name":"x"}),
    ];
    for room in bad {
        c.send_json(&json!({"type":"join","room":room}));
        let e = c.expect_error("bad_request");
        assert_eq!(e["ref"], "join", "ref is the frame type: {e}");
    }
    c.send_json(&json!({"type":"join"}));
    c.expect_error("bad_request");
    // Upper case is refused, not folded: no room `general` was joined by the attempts above.
    c.send_json(&json!({"type":"who","room":"general"}));
    c.expect_error("not_joined");
    // Valid: 64 characters with every allowed kind.
    let good = "az09_-".to_string() + &"r".repeat(58);
    assert_eq!(good.len(), 64);
    let j = c.join(&good);
    assert_eq!(j.joined["room"], good.as_str());
    c.join("x");
}

#[test]
fn blank_text_is_bad_request_including_unicode_white_space() {
    let s = TestServer::start(&[]);
    let mut c = s.register("alice");
    c.join("r");
    let blanks = [
        "",
        " ",
        "   \t  ",
        "\n",
        "\r\n\r\n",
        "\u{3000}",                 // IDEOGRAPHIC SPACE
        "\u{00A0}",                 // NO-BREAK SPACE
        "\u{2003}\u{2028}\u{2029}", // EM SPACE, LINE/PARAGRAPH SEPARATOR
        "\u{0085}\u{1680}\u{202F}\u{205F}\u{000B}\u{000C}",
    ];
    for (i, t) in blanks.iter().enumerate() {
        let cid = format!("blank{i}");
        c.send_json(&json!({"type":"send","room":"r","text":t,"cid":cid}));
        let e = c.expect_error("bad_request");
        assert_eq!(
            e["ref"],
            cid.as_str(),
            "blank text {t:?}: ref is the cid: {e}"
        );
    }
    c.send_json(&json!({"type":"send","room":"r"}));
    c.expect_error("bad_request");
    c.send_json(&json!({"type":"send","room":"r","text":5}));
    c.expect_error("bad_request");
    // Nothing was stored.
    let h = c.history(json!({"type":"history","room":"r"}));
    assert_eq!(h["messages"], json!([]), "errors store nothing: {h}");
}

#[test]
fn non_white_space_invisible_characters_are_not_blank() {
    // U+200B ZERO WIDTH SPACE and U+FEFF are not White_Space in Unicode.
    let s = TestServer::start(&[]);
    let mut c = s.register("alice");
    c.join("r");
    for t in ["\u{200B}", "\u{FEFF}", " . ", "\u{3000}x\u{3000}"] {
        let (_, m) = c.say("r", t);
        assert_eq!(m["text"], t);
    }
}

#[test]
fn text_length_counts_unicode_scalar_values() {
    let s = TestServer::start(&[]);
    let mut c = s.register("alice");
    c.join("r");
    assert_eq!(c.welcome["limits"]["max_text"], 4000, "{}", c.welcome);

    // 4000 four-byte scalar values (16000 bytes): allowed, delivered exactly.
    let t4000: String = "\u{1F600}".repeat(4000);
    let (ack, m) = c.say("r", &t4000);
    assert_eq!(m["text"].as_str().unwrap(), t4000);
    // 2000 x (e + COMBINING ACUTE) = 4000 scalar values (2000 graphemes): allowed.
    let comb: String = "e\u{301}".repeat(2000);
    let (_, m2) = c.say("r", &comb);
    assert_eq!(m2["text"].as_str().unwrap(), comb);

    // 4001 scalar values: too_long, with ref = cid.
    let t4001 = format!("{t4000}a");
    c.send_json(&json!({"type":"send","room":"r","text":t4001,"cid":"long1"}));
    let e = c.expect_error("too_long");
    assert_eq!(e["ref"], "long1", "{e}");
    let comb1 = format!("{comb}\u{301}");
    c.send_json(&json!({"type":"send","room":"r","text":comb1}));
    let e = c.expect_error("too_long");
    assert_eq!(e["ref"], "send", "without a cid, ref is the type: {e}");
    // 4001 spaces: both too long and blank; either error is acceptable, but it is not stored.
    c.send_json(&json!({"type":"send","room":"r","text":" ".repeat(4001)}));
    let e = c.expect("error");
    assert!(e["code"] == "too_long" || e["code"] == "bad_request", "{e}");

    let h = c.history(json!({"type":"history","room":"r"}));
    let ids = message_ids(&h);
    assert_eq!(
        ids,
        vec![id_of(&ack), id_of(&m2)],
        "only the two valid messages are stored: {h}"
    );
}

#[test]
fn text_is_stored_and_delivered_exactly_as_sent() {
    let s = TestServer::start(&[]);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    a.join("r");
    b.join("r");
    a.wait_for(T, |v| v["type"] == "presence");
    let texts = [
        "  leading and trailing  ",
        "line1\nline2\r\nline3\n",
        "tabs\tand a NUL \u{0} char, quotes \" and \\ backslash",
        "emoji \u{1F469}\u{200D}\u{1F4BB} and RTL \u{5E9}\u{5DC}\u{5D5}\u{5DD}",
        "<script>alert(1)</script> &amp;",
        "NFD e\u{301} vs NFC \u{e9}",
    ];
    let mut ids = Vec::new();
    for t in texts {
        let (ack, m) = a.say("r", t);
        assert_eq!(m["text"].as_str().unwrap(), t, "sender's copy");
        let (mb, _) = b.wait_for(T, |v| v["type"] == "message" && v["id"] == ack["id"]);
        assert_eq!(mb["text"].as_str().unwrap(), t, "other member's copy");
        ids.push(id_of(&ack));
    }
    let h = b.history(json!({"type":"history","room":"r"}));
    let got: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(got, texts.to_vec(), "history returns the exact texts");
    let j = b.join("r");
    let got: Vec<&str> = j
        .messages
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(got, texts.to_vec(), "replay returns the exact texts");
}

#[test]
fn cid_rules() {
    let s = TestServer::start(&["--rate", "1000", "--burst", "1000"]);
    let mut c = s.register("alice");
    c.join("r");
    let bad: Vec<Value> = vec![
        json!(""),
        json!("c".repeat(65)),
        json!("has space"),
        json!("tab\tx"),
        json!("caf\u{e9}"),
        json!("del\u{7f}"),
        json!("nl\n"),
        json!(12),
        json!(["x"]),
    ];
    for cid in bad {
        c.send_json(&json!({"type":"send","room":"r","text":"hello","cid":cid}));
        let e = c.recv_json(T);
        assert_eq!(e["type"], "error", "cid {cid} must be refused: {e}");
        assert_eq!(e["code"], "bad_request", "cid {cid}: {e}");
    }
    let h = c.history(json!({"type":"history","room":"r"}));
    assert_eq!(h["messages"], json!([]), "invalid cids store nothing: {h}");

    // Boundaries: every printable ASCII character, 1 and 64 characters.
    let all: String = (0x21u8..=0x7e).map(|b| b as char).collect();
    for cid in ["!", "~", &"c".repeat(64), &all[..64], &all[64..]] {
        let ack = c.send_msg("r", "ok", Some(cid));
        assert_eq!(ack["cid"], cid, "{ack}");
        let m = c.expect("message");
        assert_eq!(m["cid"], cid, "{m}");
    }
}

#[test]
fn wrong_json_types_are_bad_request() {
    let s = TestServer::start(&[]);
    let mut c = s.register("alice");
    c.join("r");
    let frames = [
        json!({"type":"join","room":"r","since":"5"}),
        json!({"type":"join","room":"r","since":-1}),
        json!({"type":"join","room":"r","since":1.5}),
        json!({"type":"send","room":"r","text":["hi"]}),
        json!({"type":"send","room":["r"],"text":"hi"}),
        json!({"type":"history","room":"r","before":"9"}),
        json!({"type":"history","room":"r","limit":"10"}),
        json!({"type":"leave","room":1}),
        json!({"type":"who","room":null}),
    ];
    for f in frames {
        c.send_json(&f);
        let e = c.recv_json(T);
        assert_eq!(e["type"], "error", "{f} must be refused: {e}");
        assert_eq!(e["code"], "bad_request", "{f}: {e}");
        assert_eq!(e["ref"], f["type"], "ref is the type: {e}");
    }
    // Still joined and working.
    c.say("r", "fine");
}

#[test]
fn lone_surrogate_escapes_are_not_text() {
    // "\ud800" is not a Unicode scalar value: bad_request, nothing stored.
    let s = TestServer::start(&[]);
    let mut c = s.register("alice");
    c.join("r");
    c.send_text(r#"{"type":"send","room":"r","text":"a\ud800b","cid":"sur-1"}"#);
    let e = c.expect("error");
    assert_eq!(e["code"], "bad_request", "{e}");
    // A proper surrogate pair is fine and is delivered as the character it encodes.
    c.send_text(r#"{"type":"send","room":"r","text":"\ud83d\ude00","cid":"sur-2"}"#);
    let ack = c.expect("ack");
    let m = c.expect("message");
    assert_eq!(m["text"], "\u{1F600}", "{m}");
    let h = c.history(json!({"type":"history","room":"r"}));
    let ids = message_ids(&h);
    assert_eq!(ids, vec![id_of(&ack)]);
}
