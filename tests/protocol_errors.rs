//! PROTOCOL.md "Errors and close codes": ref, rate limiting, errors store nothing.
mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn ref_is_the_cid_or_the_type() {
    let s = TestServer::start(&[]);
    let mut a = s.register("alice");
    a.join("r");
    a.send_json(&json!({"type":"send","room":"r","text":" ","cid":"ref-cid-1"}));
    let e = a.expect_error("bad_request");
    assert_eq!(e["ref"], "ref-cid-1", "{e}");
    a.send_json(&json!({"type":"send","room":"r","text":" "}));
    let e = a.expect_error("bad_request");
    assert_eq!(e["ref"], "send", "{e}");
    a.send_json(&json!({"type":"send","room":"zz","text":"x","cid":"ref-cid-2"}));
    let e = a.expect_error("not_joined");
    assert_eq!(e["ref"], "ref-cid-2", "{e}");
    a.send_json(&json!({"type":"join","room":"BAD"}));
    let e = a.expect_error("bad_request");
    assert_eq!(e["ref"], "join", "{e}");
    a.send_text("[]");
    let e = a.expect_error("bad_request");
    assert!(e.get("ref").map(|r| r.is_null()).unwrap_or(true), "{e}");
    assert!(
        !e["message"].as_str().unwrap().is_empty(),
        "message is human readable text: {e}"
    );
}

#[test]
fn rate_limited_sends_are_dropped_and_nothing_is_stored_or_broadcast() {
    let s = TestServer::start(&["--rate", "1", "--burst", "3"]);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    assert_eq!(a.welcome["limits"]["rate_per_sec"], 1);
    assert_eq!(a.welcome["limits"]["rate_burst"], 3);
    a.join("r");
    b.join("r");
    a.expect("presence");

    for i in 0..8 {
        a.send_json(
            &json!({"type":"send","room":"r","text":format!("flood {i}"),"cid":format!("f{i}")}),
        );
    }
    let mut acked = Vec::new();
    let mut limited = Vec::new();
    let mut echoed = 0;
    while acked.len() + limited.len() < 8 || echoed < acked.len() {
        let v = a.recv_json(T);
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("ack"), _) => acked.push(v["cid"].as_str().unwrap().to_string()),
            (Some("message"), _) => echoed += 1,
            (Some("error"), Some("rate_limited")) => limited.push(
                v["ref"]
                    .as_str()
                    .unwrap_or_else(|| panic!("rate_limited ref is the cid: {v}"))
                    .to_string(),
            ),
            _ => panic!("unexpected {v}"),
        }
    }
    // The first `burst` sends pass; at 1 token/s at most one more can have been earned.
    assert!(
        acked.len() >= 3 && acked.len() <= 4,
        "acked {acked:?}, limited {limited:?}"
    );
    assert_eq!(&acked[..3], &["f0", "f1", "f2"]);
    assert!(
        limited.contains(&"f7".to_string()),
        "the last of 8 instant sends is limited: {limited:?}"
    );

    // Only acked messages were broadcast and stored.
    let got: Vec<String> = (0..acked.len())
        .map(|_| b.expect("message")["cid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, acked, "bob receives exactly the acked messages");
    let extra = b.barrier();
    assert!(
        extra.is_empty(),
        "rate limited sends are not broadcast: {extra:?}"
    );
    let h = b.history(json!({"type":"history","room":"r"}));
    assert_eq!(h["type"], "history", "{h}");
    let stored: Vec<String> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["cid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored, acked, "rate limited sends are not stored");

    // A dropped send left no trace: after the bucket refills, the same cid is a new message.
    let retry = limited[0].clone();
    let ack = poll_until(Duration::from_secs(4), "the token bucket to refill", || {
        a.send_json(&json!({"type":"send","room":"r","text":"retried","cid":retry}));
        let v = a.recv_json(T);
        match v["type"].as_str() {
            Some("ack") => Some(v),
            Some("error") if v["code"] == "rate_limited" => None,
            _ => panic!("unexpected {v}"),
        }
    });
    assert_eq!(ack["cid"], retry.as_str());
    let m = a.expect("message");
    assert_eq!(
        m["text"], "retried",
        "a previously rate-limited cid is stored as new"
    );
}

#[test]
fn the_bucket_refills_at_the_configured_rate() {
    let s = TestServer::start(&["--rate", "5", "--burst", "1"]);
    let mut a = s.register("alice");
    a.join("r");
    let start = std::time::Instant::now();
    let mut ok = 0;
    let mut limited = 0;
    // One send every 50 ms (20/s, four times the rate) for 1.2 s. Paced so that it is not
    // "flooding far beyond" the limit, which may be closed with 1008.
    let mut n = 0u32;
    while start.elapsed() < ms(1200) {
        a.send_json(&json!({"type":"send","room":"r","text":"tick"}));
        n += 1;
        let v = a.recv_json(T);
        match v["type"].as_str() {
            Some("ack") => {
                ok += 1;
                a.expect("message");
            }
            Some("error") => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                limited += 1;
            }
            _ => panic!("unexpected {v}"),
        }
        let next = start + ms(50) * n;
        if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
            // Pacing the sender: nothing to poll for here.
            std::thread::sleep(wait);
        }
    }
    // burst 1 + 5/s * 1.2 s = about 7; allow generous scheduling slack but not unlimited.
    assert!(
        (4..=10).contains(&ok),
        "{ok} sends passed in 1.2 s with rate 5 burst 1 ({limited} limited)"
    );
    assert!(limited > 0);
}

#[test]
fn errors_store_and_broadcast_nothing() {
    let s = TestServer::start(&[]);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    a.join("r");
    b.join("r");
    a.expect("presence");
    let bad = [
        json!({"type":"send","room":"r","text":""}),
        json!({"type":"send","room":"r","text":"\u{3000}\n"}),
        json!({"type":"send","room":"r","text":"x".repeat(4001)}),
        json!({"type":"send","room":"r","text":"ok","cid":"bad cid"}),
        json!({"type":"send","room":"R","text":"ok"}),
        json!({"type":"send","room":"r","text":7}),
        json!({"type":"send","room":"q","text":"not joined"}),
    ];
    for f in &bad {
        a.send_json(f);
        let e = a.expect("error");
        assert!(e["code"].is_string(), "{e}");
    }
    let extra = b.barrier();
    assert!(extra.is_empty(), "errors broadcast nothing: {extra:?}");
    let h = b.history(json!({"type":"history","room":"r"}));
    assert_eq!(h["messages"], json!([]), "errors store nothing: {h}");
    let j = b.join("r");
    assert_eq!(j.last_id(), 0);
    // The connection stays open after all of these.
    a.say("r", "still fine");
}

#[test]
fn flooding_far_beyond_the_limit_is_limited_or_closed_with_1008() {
    // "A connection that keeps flooding far beyond it may be closed with 1008": either every
    // excess send gets rate_limited, or the connection is closed with 1008. Nothing else.
    let s = TestServer::start(&["--rate", "1", "--burst", "1"]);
    let mut a = s.register("alice");
    a.join("r");
    let mut sent = 0;
    for i in 0..300 {
        let f = json!({"type":"send","room":"r","text":"spam","cid":format!("s{i}")}).to_string();
        if a.try_send(tungstenite::Message::text(f)).is_err() {
            break; // already closed by the server
        }
        sent += 1;
    }
    let mut acks = 0;
    let mut answered = 0;
    while answered < sent {
        match a.recv(T) {
            Event::Json(v) if v["type"] == "ack" => {
                acks += 1;
                answered += 1;
            }
            Event::Json(v) if v["type"] == "message" => {}
            Event::Json(v) => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                answered += 1;
            }
            Event::Closed(code) => {
                assert_eq!(code, Some(1008), "abuse closes with 1008");
                break;
            }
            Event::Ended(e) => panic!("connection ended without a close frame: {e}"),
            Event::Timeout => panic!("{answered} of {sent} sends answered, then silence"),
        }
    }
    assert!(
        acks <= 5,
        "{acks} of 300 instant sends accepted with rate 1 burst 1"
    );
}

#[test]
fn the_rate_limit_is_per_connection() {
    let s = TestServer::start(&["--rate", "1", "--burst", "2"]);
    let mut a1 = s.register("alice");
    let mut a2 = s.login("alice", PASSWORD);
    a1.join("r");
    a2.join("r");
    // Each connection has its own bucket of 2: all four sends pass.
    for c in [&mut a1, &mut a2] {
        for text in ["one", "two"] {
            c.send_json(&json!({"type":"send","room":"r","text":text}));
            let (v, _) = c.wait_for(T, |v| v["type"] == "ack" || v["type"] == "error");
            assert_eq!(v["type"], "ack", "each connection has its own bucket: {v}");
        }
    }
    a1.send_json(&json!({"type":"send","room":"r","text":"three"}));
    let (v, _) = a1.wait_for(T, |v| v["type"] == "ack" || v["type"] == "error");
    assert_eq!(v["code"], "rate_limited", "{v}");
}

#[test]
fn deeply_nested_json_does_not_hurt_the_server() {
    let s = TestServer::start(&[]);
    let mut a = s.register("alice");
    let depth = 20_000;
    let t = "[".repeat(depth) + &"]".repeat(depth);
    a.send_text(&format!(r#"{{"type":"ping","t":{t}}}"#));
    let v = a.recv_json(T);
    // Either answered or refused as bad_request; the server and the connection survive.
    assert!(v["type"] == "pong" || v["code"] == "bad_request", "{v}");
    a.send_json(&json!({"type":"ping","t":"after"}));
    assert_eq!(a.expect("pong")["t"], "after");
    s.register("bob");
}
