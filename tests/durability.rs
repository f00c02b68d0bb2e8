//! PROTOCOL.md durability claims: acked messages survive `kill -9`; cids are remembered across
//! restarts; tokens are stored before `welcome` and survive restarts.
mod common;
use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

const FAST: &[&str] = &["--rate", "100000", "--burst", "100000"];

#[test]
fn every_acked_message_survives_kill_9() {
    const SENDERS: usize = 4;
    const N: usize = 60;
    let mut s = TestServer::start(FAST);
    let addr = s.addr();
    let room = "durable";
    // An observer: a message anyone has seen survives too.
    let mut observer = s.register("observer");
    observer.join(room);

    let mut acked = BTreeMap::new();
    let results = run_together(
        addr,
        SENDERS,
        |i| (format!("writer{i}"), room.to_owned()),
        |mut c, room| {
            let user = c.user.clone();
            // Pipelined: group commit may batch these.
            for k in 0..N {
                c.send_json(&json!({"type":"send","room":room,"text":format!("{user} durable {k}"),"cid":format!("{user}-{k}")}));
            }
            let mut acks = BTreeMap::new();
            while acks.len() < N {
                let v = c.recv_json(Duration::from_secs(20));
                match v["type"].as_str() {
                    Some("ack") => {
                        let k: usize = v["cid"]
                            .as_str()
                            .unwrap()
                            .rsplit('-')
                            .next()
                            .unwrap()
                            .parse()
                            .unwrap();
                        acks.insert(id_of(&v), format!("{user} durable {k}"));
                    }
                    Some("message") | Some("presence") => {}
                    _ => panic!("unexpected {v}"),
                }
            }
            acks
        },
    );
    for acks in results {
        acked.extend(acks);
    }
    // Kill -9 right after the last ack.
    s.kill9();
    assert_eq!(acked.len(), SENDERS * N);

    // What the observer had seen before the kill must also be there.
    let mut seen = Vec::new();
    loop {
        match observer.recv(ms(200)) {
            Event::Json(v) if v["type"] == "message" => seen.push(v),
            Event::Json(_) => {}
            _ => break,
        }
    }

    s.restart();
    let mut c = s.register("checker");
    let j = c.join_since(room, 0);
    let got: BTreeMap<u64, String> = j
        .messages
        .iter()
        .map(|m| (id_of(m), m["text"].as_str().unwrap().to_string()))
        .collect();
    for (id, text) in &acked {
        assert_eq!(
            got.get(id),
            Some(text),
            "acked message {id} ({text:?}) lost after kill -9"
        );
    }
    assert_eq!(
        got.len(),
        acked.len(),
        "nothing but the acked messages is in the room"
    );
    for m in &seen {
        assert_eq!(
            got.get(&id_of(m)).map(|s| s.as_str()),
            m["text"].as_str(),
            "a message the observer saw was lost: {m}"
        );
    }
    // Ids keep increasing after the restart.
    let max_old = *acked.keys().last().unwrap();
    let (ack, _) = c.say(room, "after restart");
    assert!(
        id_of(&ack) > max_old,
        "new id {} not above pre-crash max {max_old}",
        id_of(&ack)
    );
}

#[test]
fn a_single_acked_message_survives_an_immediate_kill_9() {
    // The smallest case: one send, kill -9 the moment the ack arrives (no group to hide in).
    let mut s = TestServer::start(&[]);
    let mut a = s.register("alice");
    a.join("r");
    a.send_json(&json!({"type":"send","room":"r","text":"only one"}));
    let ack = a.expect("ack");
    s.kill9();
    s.restart();
    let mut c = s.login("alice", PASSWORD);
    let j = c.join_since("r", 0);
    assert_eq!(
        j.ids(),
        vec![id_of(&ack)],
        "the acked message must survive kill -9"
    );
    assert_eq!(j.messages[0]["text"], "only one");
}

#[test]
fn cids_are_remembered_across_kill_9() {
    let mut s = TestServer::start(&[]);
    let mut a = s.register("alice");
    a.join("r");
    let (orig, _) = a.say_cid("r", "exactly once", "crash-cid-1");
    let token = a.token.clone();
    s.kill9();
    s.restart();
    // Say the client lost the ack: it resends with the same cid.
    let mut a2 = s.resume(&token);
    a2.join_since("r", id_of(&orig));
    a2.send_json(&json!({"type":"send","room":"r","text":"exactly once","cid":"crash-cid-1"}));
    assert_eq!(
        a2.expect("ack"),
        orig,
        "the original ack after a crash and restart"
    );
    let extra = a2.barrier();
    assert!(extra.is_empty(), "a repeat is not broadcast: {extra:?}");
    let h = a2.history(json!({"type":"history","room":"r"}));
    assert_eq!(
        h["messages"].as_array().unwrap().len(),
        1,
        "stored once: {h}"
    );
}

#[test]
fn cids_are_remembered_across_a_graceful_restart() {
    let mut s = TestServer::start(&[]);
    let mut a = s.register("alice");
    a.join("r");
    a.join("s");
    let (orig, _) = a.say_cid("r", "once", "graceful-cid-1");
    drop(a);
    s.sigterm();
    assert!(s.wait_exit(Duration::from_secs(10)).success());
    s.restart();
    let mut a2 = s.login("alice", PASSWORD);
    a2.join("s");
    a2.send_json(
        &json!({"type":"send","room":"s","text":"other room, other text","cid":"graceful-cid-1"}),
    );
    assert_eq!(
        a2.expect("ack"),
        orig,
        "the original ack after a restart, in any room"
    );
    a2.join("r");
    let h = a2.history(json!({"type":"history","room":"r"}));
    assert_eq!(h["messages"].as_array().unwrap().len(), 1, "{h}");
    let h = a2.history(json!({"type":"history","room":"s"}));
    assert_eq!(h["messages"], json!([]), "{h}");
}

#[test]
fn account_and_token_survive_kill_9() {
    // "it is stored before welcome is sent and survives server restarts": a crash right after
    // welcome must not lose the token (nor the account just registered).
    let mut s = TestServer::start(&[]);
    let a = s.register("alice");
    let reg_token = a.token.clone();
    let login_token = s.login("alice", PASSWORD).token;
    s.kill9();
    s.restart();
    for t in [&reg_token, &login_token] {
        let c = s.resume(t);
        assert_eq!(c.user, "alice");
        assert_eq!(&c.token, t);
    }
    s.login("alice", PASSWORD);
}

#[test]
fn relaxed_durability_still_serves() {
    // No crash guarantee is promised for relaxed mode; it must still work and survive a
    // graceful restart.
    let mut s = TestServer::start(&["--durability", "relaxed"]);
    let mut a = s.register("alice");
    a.join("r");
    let (ack, _) = a.say("r", "relaxed");
    drop(a);
    s.sigterm();
    assert!(s.wait_exit(Duration::from_secs(10)).success());
    s.restart();
    let mut b = s.login("alice", PASSWORD);
    let j = b.join_since("r", 0);
    assert_eq!(
        j.ids(),
        vec![id_of(&ack)],
        "a graceful shutdown flushes everything"
    );
}
