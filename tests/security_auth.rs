//! Authentication abuse, look-alike names and per-account sending (issue 8, the auth part):
//! each test is an attack that used to succeed.

mod common;

use std::net::IpAddr;

use common::*;
use serde_json::{json, Value};

fn other_address() -> IpAddr {
    "127.0.0.2".parse().unwrap()
}

fn login_frame(user: &str, password: &str) -> Value {
    json!({"type":"auth","user":user,"password":password})
}

fn register_frame(user: &str, password: &str) -> Value {
    json!({"type":"auth","user":user,"password":password,"register":true})
}

/// Sends `frame` and requires the answer to be the error `code`; returns it.
fn refused(c: &mut Client, frame: &Value, code: &str) -> Value {
    c.send_json(frame);
    c.expect_error(code)
}

/// Sends a message and returns its `ack` or `error`, skipping broadcasts on the way.
fn send_answer(c: &mut Client, room: &str, text: &str, cid: &str) -> Value {
    c.send_json(&json!({"type":"send","room":room,"text":text,"cid":cid}));
    c.wait_for(T, |v| v["type"] == "ack" || v["type"] == "error")
        .0
}

#[test]
fn a_password_guessing_address_backs_off_while_the_owner_logs_in_from_elsewhere() {
    let free = 3;
    let server = TestServer::start(&["--login-free-failures", &free.to_string()]);
    server.register("alice");
    let mut failures = 0;
    let throttled = loop {
        let mut c = server.connect();
        let reply = c.auth(login_frame("alice", "wrong-password-guess"));
        match reply["code"].as_str() {
            Some("auth_failed") => failures += 1,
            Some("rate_limited") => break reply,
            _ => panic!("unexpected answer to a wrong password: {reply}"),
        }
        assert!(
            failures <= free + 1,
            "{failures} wrong passwords from one address and still no backoff"
        );
    };
    assert!(
        failures > free,
        "backoff started before the free failures were used"
    );
    let message = throttled["message"].as_str().unwrap();
    assert!(message.contains("retry in"), "{message}");
    // Locked out: even the right password is not tried (it is refused without hashing).
    let mut c = server.connect();
    refused(&mut c, &login_frame("alice", PASSWORD), "rate_limited");
    // The real user, from her own address, is not locked out of her account.
    let mut alice = Client::connect_from(server.addr(), other_address());
    alice.auth_ok(login_frame("alice", PASSWORD));
    assert!(server.metric("chatd_auth_throttled_total") >= 2.0);
}

#[test]
fn one_address_cannot_register_more_than_its_hourly_allowance() {
    let server = TestServer::start(&["--registrations-per-ip", "3"]);
    for name in ["reg1", "reg2", "reg3"] {
        server.register(name);
    }
    let mut c = server.connect();
    let e = refused(&mut c, &register_frame("reg4", PASSWORD), "rate_limited");
    assert!(
        e["message"].as_str().unwrap().contains("registrations"),
        "{e}"
    );
    // The connection stays open; another address still has its allowance.
    c.auth_ok(login_frame("reg1", PASSWORD));
    let mut elsewhere = Client::connect_from(server.addr(), other_address());
    elsewhere.auth_ok(register_frame("reg4", PASSWORD));
}

#[test]
fn registering_a_taken_name_costs_a_hash_like_a_new_one() {
    let server = TestServer::start(&[]);
    server.register("alice");
    let before = server.metric("chatd_password_hashes_total") as u64;
    let mut c = server.connect();
    refused(&mut c, &register_frame("alice", PASSWORD), "user_exists");
    refused(&mut c, &register_frame("ALICE", PASSWORD), "user_exists");
    assert_eq!(
        server.metric("chatd_password_hashes_total") as u64,
        before + 2,
        "a taken name must cost one hash per attempt, like a new name, so its answer takes as long"
    );
    c.auth_ok(register_frame("bob", PASSWORD));
    assert_eq!(
        server.metric("chatd_password_hashes_total") as u64,
        before + 3
    );
}

#[test]
fn common_blank_and_repeated_passwords_are_refused_on_registration() {
    let server = TestServer::start(&[]);
    let mut c = server.connect();
    for weak in [
        "password",
        "        ",
        "PassWord",
        "12345678",
        "iloveyou",
        "zzzzzzzzzz",
    ] {
        let e = refused(&mut c, &register_frame("carol", weak), "bad_request");
        assert!(e["message"].as_str().unwrap().contains("password"), "{e}");
    }
    c.auth_ok(register_frame("carol", "violet-otter-lamp"));
}

#[test]
fn names_that_look_like_an_existing_one_are_refused() {
    let server = TestServer::start(&[]);
    server.register("alice");
    let mut c = server.connect();
    for look_alike in ["aIice", "a1ice", "al.ice", "alice_", "AIice"] {
        let e = refused(&mut c, &register_frame(look_alike, PASSWORD), "user_exists");
        assert!(e["message"].as_str().unwrap().contains("looks"), "{e}");
    }
    for distinct in ["alicia", "malice", "alice2"] {
        server.register(distinct);
    }
    // Still refused after a restart (the index is on disk).
    let mut server = server;
    server.restart();
    let mut c = server.connect();
    refused(&mut c, &register_frame("a1ice", PASSWORD), "user_exists");
}

#[test]
fn an_account_shares_one_send_rate_across_its_connections() {
    let server = TestServer::start(&[
        "--rate",
        "100",
        "--burst",
        "100",
        "--account-rate",
        "1",
        "--account-burst",
        "4",
    ]);
    let mut first = server.register("alice");
    let mut second = server.login("alice", PASSWORD);
    first.join("general");
    second.join("general");
    let mut acked = 0;
    let mut errors = Vec::new();
    for i in 0..5 {
        for c in [&mut first, &mut second] {
            let reply = send_answer(
                c,
                "general",
                "hi",
                &format!("c{i}-{}", acked + errors.len()),
            );
            if reply["type"] == "ack" {
                acked += 1;
            } else {
                errors.push(reply);
            }
        }
    }
    // 4 from the burst, and at most a couple more refilled at 1/s while the test ran.
    assert!((4..=6).contains(&acked), "{acked} of 10 sends accepted");
    let message = errors[0]["message"].as_str().unwrap();
    assert_eq!(errors[0]["code"], "rate_limited");
    assert!(message.contains("account"), "{message}");
}

#[test]
fn an_account_cannot_store_more_than_its_daily_quota() {
    let server = TestServer::start(&[
        "--rate",
        "1000",
        "--burst",
        "1000",
        "--account-rate",
        "1000",
        "--account-burst",
        "1000",
        "--account-quota-mb",
        "1",
    ]);
    let mut c = server.register("alice");
    c.join("general");
    // 4000 three-byte characters: 12,000 bytes, so 87 fit in 1 MiB.
    let text = "€".repeat(4000);
    let mut stored = 0;
    let quota_error = loop {
        let reply = send_answer(&mut c, "general", &text, &format!("q{stored}"));
        if reply["type"] == "error" {
            break reply;
        }
        stored += 1;
        assert!(stored <= 87, "more than 1 MiB stored in one day");
    };
    assert_eq!(stored, 87);
    assert_eq!(quota_error["code"], "rate_limited");
    assert!(
        quota_error["message"].as_str().unwrap().contains("quota"),
        "{quota_error}"
    );
    // Another account is unaffected.
    let mut bob = server.register("bob");
    bob.join("general");
    let (ack, _) = bob.say("general", &text);
    assert_eq!(ack["type"], "ack");
}

#[test]
fn ping_echoes_a_null_t_and_leaves_an_absent_one_absent() {
    let server = TestServer::start(&[]);
    let mut c = server.register("alice");
    c.send_json(&json!({"type":"ping","t":null}));
    let pong = c.expect("pong");
    assert!(
        pong.as_object().unwrap().get("t") == Some(&Value::Null),
        "pong must echo t: null, got {pong}"
    );
    c.send_json(&json!({"type":"ping"}));
    let pong = c.expect("pong");
    assert!(pong.get("t").is_none(), "{pong}");
}

#[test]
fn a_login_flood_from_one_address_leaves_room_for_everyone_else() {
    // The queue holds 64 hashes per hashing thread: flood it well past that from one address
    // (whose sockets the connection limits would otherwise stop at 32 before they log in).
    let server = TestServer::start(&[
        "--login-free-failures",
        "1000",
        "--hash-jobs-per-ip",
        "4",
        "--max-unauthenticated-per-ip",
        "1000",
    ]);
    let mut flood: Vec<Client> = (0..200).map(|_| server.connect()).collect();
    for (i, c) in flood.iter_mut().enumerate() {
        c.send_json(&login_frame(&format!("nobody{i}"), "wrong-password-guess"));
    }
    // The flood is being refused: the queue (old) or the address's share of it (now) is full.
    poll_until(T, "the flood to be refused", || {
        (server.metric("chatd_errors_total{code=\"rate_limited\"}") > 0.0).then_some(())
    });
    let mut legit = Client::connect_from(server.addr(), other_address());
    let started = std::time::Instant::now();
    legit.auth_ok(register_frame("dave", PASSWORD));
    assert!(started.elapsed() < T);
}
