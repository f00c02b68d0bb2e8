//! PROTOCOL.md "Session start": auth deadline, frames before auth, register / login / token,
//! failures and their close codes, welcome contents, token lifetime.
mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tungstenite::Message;

fn login_frame(user: &str, pw: &str) -> serde_json::Value {
    json!({"type":"auth","user":user,"password":pw})
}

/// Sends `frame` on a fresh connection and requires `error` `code` then close 1008.
fn expect_auth_failure(s: &TestServer, frame: serde_json::Value, code: &str) -> serde_json::Value {
    let mut c = s.connect();
    c.send_json(&frame);
    let e = c.recv_json(T);
    assert_eq!(e["type"], "error", "{frame} must fail: {e}");
    assert_eq!(e["code"], code, "{frame}: {e}");
    assert_eq!(e["ref"], "auth", "ref is the frame type: {e}");
    let (more, end) = c.read_until_end(T);
    assert!(
        more.is_empty(),
        "nothing after the auth error but the close: {more:?}"
    );
    assert_eq!(
        end,
        Event::Closed(Some(1008)),
        "{frame}: auth failure closes with 1008"
    );
    e
}

#[test]
fn auth_timeout_closes_1008() {
    let s = TestServer::start(&["--auth-timeout", "400ms"]);
    let mut c = s.connect();
    let t0 = Instant::now();
    let end = c.recv(Duration::from_secs(5));
    let elapsed = t0.elapsed();
    assert_eq!(
        end,
        Event::Closed(Some(1008)),
        "no auth within --auth-timeout: close 1008"
    );
    assert!(
        elapsed >= ms(300),
        "closed after {elapsed:?}, before the 400 ms auth timeout"
    );
}

#[test]
fn frames_before_auth_are_unauthorized_and_the_connection_stays_open() {
    let s = TestServer::start(&["--auth-timeout", "10s"]);
    let mut c = s.connect();
    for f in [
        json!({"type":"join","room":"general"}),
        json!({"type":"send","room":"general","text":"hi","cid":"x1"}),
        json!({"type":"ping","t":1}),
        json!({"type":"who","room":"general"}),
        json!({"type":"history","room":"general"}),
        json!({"type":"leave","room":"general"}),
    ] {
        c.send_json(&f);
        let e = c.expect_error("unauthorized");
        let want_ref = if f["type"] == "send" {
            json!("x1")
        } else {
            f["type"].clone()
        };
        assert_eq!(e["ref"], want_ref, "ref for {f}: {e}");
    }
    let w = c.auth_ok(json!({"type":"auth","user":"alice","password":PASSWORD,"register":true}));
    assert_eq!(w["user"], "alice");
    // Nothing sent before auth took effect: the room is empty and unjoined.
    let j = c.join("general");
    assert_eq!(j.last_id(), 0, "the unauthorized send stored nothing");
}

#[test]
fn the_auth_deadline_keeps_running_while_unauthorized_frames_arrive() {
    let s = TestServer::start(&["--auth-timeout", "600ms"]);
    let mut c = s.connect();
    let t0 = Instant::now();
    let mut errors = 0;
    let mut tick = 0u32;
    let end = 'outer: loop {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still open 5 s after a 600 ms auth deadline"
        );
        // One unauthorized frame every 100 ms (paced, so it is not mistaken for a flood).
        // The server may close at any moment: ignore write errors, the read reports the close.
        let _ = c.try_send(Message::text(json!({"type":"ping","t":tick}).to_string()));
        tick += 1;
        let next = t0 + ms(100) * tick;
        loop {
            match c.recv(next.saturating_duration_since(Instant::now())) {
                Event::Json(v) => {
                    assert_eq!(v["code"], "unauthorized", "{v}");
                    errors += 1;
                }
                Event::Timeout => break,
                other => break 'outer other,
            }
        }
    };
    assert_eq!(
        end,
        Event::Closed(Some(1008)),
        "auth deadline closes with 1008 even while frames keep coming"
    );
    assert!(
        t0.elapsed() >= ms(500),
        "closed too early: {:?}",
        t0.elapsed()
    );
    assert!(
        errors >= 2,
        "the connection stayed open for unauthorized frames ({errors} errors)"
    );
}

#[test]
fn welcome_has_user_token_server_time_and_limits() {
    let s = TestServer::start(&["--rate", "7", "--burst", "13", "--max-frame", "32768"]);
    let before = now_ms();
    let c = s.register("alice");
    let after = now_ms();
    let w = &c.welcome;
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["user"], "alice");
    let token = w["token"].as_str().expect("token is a string");
    // At least 128 bits: 22 characters of base64 or 32 of hex at the very least.
    assert!(
        token.len() >= 22,
        "token too short for 128 random bits: {token:?}"
    );
    let st = w["server_time"]
        .as_u64()
        .expect("server_time is an integer (ms)");
    assert!(
        st + 2000 >= before && st <= after + 2000,
        "server_time {st} not within [{before}, {after}] ms"
    );
    let l = &w["limits"];
    assert_eq!(l["max_text"], 4000, "{w}");
    assert_eq!(l["max_frame"], 32768, "{w}");
    assert_eq!(l["rate_per_sec"], 7, "{w}");
    assert_eq!(l["rate_burst"], 13, "{w}");
}

#[test]
fn default_limits_in_welcome() {
    let s = TestServer::start(&[]);
    let c = s.register("alice");
    let l = &c.welcome["limits"];
    assert_eq!(l["max_text"], 4000, "{}", c.welcome);
    assert_eq!(l["max_frame"], 65536, "{}", c.welcome);
    assert_eq!(l["rate_per_sec"], 10, "{}", c.welcome);
    assert_eq!(l["rate_burst"], 20, "{}", c.welcome);
}

#[test]
fn register_then_login_and_resume() {
    let s = TestServer::start(&[]);
    let r = s.register("alice");
    let l1 = s.login("alice", PASSWORD);
    let l2 = s.login("alice", PASSWORD);
    assert_eq!(l1.user, "alice");
    assert_ne!(
        r.token, l1.token,
        "each password login starts a new session with a new token"
    );
    assert_ne!(
        l1.token, l2.token,
        "each password login starts a new session with a new token"
    );
    assert_ne!(r.token, l2.token);
    // Resuming with a token returns the same token; every token works.
    for t in [&r.token, &l1.token, &l2.token] {
        let c = s.resume(t);
        assert_eq!(&c.token, t, "resuming with a token returns the same token");
        assert_eq!(c.user, "alice");
    }
}

#[test]
fn user_exists_keeps_the_connection_open() {
    let s = TestServer::start(&[]);
    let _a = s.register("alice");
    let mut c = s.connect();
    let e =
        c.auth(json!({"type":"auth","user":"alice","password":"other-password","register":true}));
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "user_exists", "{e}");
    assert_eq!(e["ref"], "auth", "{e}");
    // Open for another auth; the existing password still works, the new one was not set.
    let e = c.auth(login_frame("alice", "other-password"));
    assert_eq!(
        e["code"], "auth_failed",
        "the failed register must not change the password: {e}"
    );
    assert_eq!(c.expect_close(T), Some(1008));
    let mut d = s.connect();
    let e =
        d.auth(json!({"type":"auth","user":"alice","password":"other-password","register":true}));
    assert_eq!(e["code"], "user_exists");
    d.auth_ok(login_frame("alice", PASSWORD));
}

#[test]
fn invalid_register_keeps_the_connection_open() {
    let s = TestServer::start(&[]);
    let mut c = s.connect();
    let e = c.auth(json!({"type":"auth","user":"bad name","password":PASSWORD,"register":true}));
    assert_eq!(e["code"], "bad_request", "{e}");
    let e = c.auth(json!({"type":"auth","user":"bob","password":"short","register":true}));
    assert_eq!(e["code"], "bad_request", "{e}");
    c.auth_ok(json!({"type":"auth","user":"bob","password":PASSWORD,"register":true}));
}

#[test]
fn registration_closed_for_new_and_existing_names() {
    let mut s = TestServer::start(&["--registration", "open"]);
    drop(s.register("alice"));
    s.sigterm();
    s.wait_exit(Duration::from_secs(10));
    s.restart_with(&["--registration", "closed"]);

    let mut c = s.connect();
    let e = c.auth(json!({"type":"auth","user":"newbie","password":PASSWORD,"register":true}));
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "registration_closed", "{e}");
    let e = c.auth(json!({"type":"auth","user":"alice","password":PASSWORD,"register":true}));
    assert_eq!(
        e["code"], "registration_closed",
        "an existing name also gets registration_closed: {e}"
    );
    let e =
        c.auth(json!({"type":"auth","user":"ALICE","password":"whatever-else","register":true}));
    assert_eq!(e["code"], "registration_closed", "{e}");
    // Stays open; logins still work.
    let w = c.auth_ok(login_frame("alice", PASSWORD));
    assert_eq!(w["user"], "alice");
    // The refused name was not created.
    expect_auth_failure(&s, login_frame("newbie", PASSWORD), "auth_failed");
}

#[test]
fn registration_closed_from_the_start() {
    let s = TestServer::start(&["--registration", "closed"]);
    let mut c = s.connect();
    let e = c.auth(json!({"type":"auth","user":"alice","password":PASSWORD,"register":true}));
    assert_eq!(e["code"], "registration_closed", "{e}");
    let e = c.auth(json!({"type":"auth","user":"bob","password":PASSWORD,"register":true}));
    assert_eq!(e["code"], "registration_closed", "{e}");
    c.send_json(&json!({"type":"ping","t":1}));
    c.expect_error("unauthorized");
}

#[test]
fn wrong_password_unknown_user_and_bad_token_look_the_same() {
    let s = TestServer::start(&[]);
    drop(s.register("alice"));
    let e1 = expect_auth_failure(&s, login_frame("alice", "wrong-password"), "auth_failed");
    let e2 = expect_auth_failure(&s, login_frame("nobody", "wrong-password"), "auth_failed");
    let e3 = expect_auth_failure(
        &s,
        json!({"type":"auth","token":"not-a-real-token-0123456789abcdef"}),
        "auth_failed",
    );
    assert_eq!(
        e1["message"], e2["message"],
        "one message for wrong password and unknown user (no probing)"
    );
    assert_eq!(
        e1["message"], e3["message"],
        "one message for bad password and bad token"
    );
    // The right password still works afterwards (a failed login changes nothing).
    s.login("alice", PASSWORD);
}

#[test]
fn login_with_impossible_name_or_password_is_auth_failed() {
    let s = TestServer::start(&[]);
    drop(s.register("alice"));
    for (user, pw) in [
        ("", PASSWORD.to_string()),
        ("has space", PASSWORD.to_string()),
        (&"a".repeat(33) as &str, PASSWORD.to_string()),
        ("alice", "short".to_string()),
        ("alice", "".to_string()),
        ("alice", "p".repeat(129)),
    ] {
        expect_auth_failure(&s, login_frame(user, &pw), "auth_failed");
    }
}

#[test]
fn second_auth_is_bad_request_and_the_connection_stays_open() {
    let s = TestServer::start(&[]);
    let mut c = s.register("alice");
    let token = c.token.clone();
    c.send_json(&json!({"type":"auth","user":"alice","password":PASSWORD}));
    let e = c.expect_error("bad_request");
    assert_eq!(e["ref"], "auth", "{e}");
    c.send_json(&json!({"type":"auth","token":token}));
    c.expect_error("bad_request");
    c.send_json(&json!({"type":"auth","user":"bob","password":PASSWORD,"register":true}));
    c.expect_error("bad_request");
    // Still the same session and usable.
    let j = c.join("r");
    assert_eq!(j.members(), names(&["alice"]));
    // The register attempt inside the session did not create bob.
    expect_auth_failure(&s, login_frame("bob", PASSWORD), "auth_failed");
}

#[test]
fn token_survives_a_graceful_restart() {
    let mut s = TestServer::start(&[]);
    let a = s.register("alice");
    let token = a.token.clone();
    drop(a);
    s.sigterm();
    assert!(s.wait_exit(Duration::from_secs(10)).success());
    s.restart();
    let c = s.resume(&token);
    assert_eq!(c.token, token);
    assert_eq!(c.user, "alice");
    s.login("alice", PASSWORD);
}

#[test]
fn token_expires_after_token_ttl() {
    let s = TestServer::start(&["--token-ttl", "1s"]);
    let a = s.register("alice");
    let issued = Instant::now();
    let token = a.token.clone();
    drop(a);
    let c = s.resume(&token);
    assert!(
        issued.elapsed() < ms(900),
        "resume took too long to test the TTL meaningfully"
    );
    assert_eq!(
        c.token, token,
        "within the TTL the token resumes the session"
    );
    drop(c);
    let last_use = Instant::now();
    // Proving expiry needs the clock to pass the TTL: wait 1 s after the last use (covers both
    // a fixed and a sliding expiry) plus margin.
    std::thread::sleep(Duration::from_millis(1600).saturating_sub(last_use.elapsed()));
    expect_auth_failure(&s, json!({"type":"auth","token":token}), "auth_failed");
    // The password still works and yields a fresh, working token.
    let l = s.login("alice", PASSWORD);
    assert_ne!(l.token, token);
    s.resume(&l.token);
}

#[test]
fn auth_frame_of_the_wrong_shape_does_not_authenticate() {
    let s = TestServer::start(&[]);
    drop(s.register("alice"));
    let mut c = s.connect();
    c.send_json(&json!({"type":"auth","user":"alice"}));
    let e = c.recv_json(T);
    assert_eq!(
        e["type"], "error",
        "auth without password or token must fail: {e}"
    );
    assert!(
        e["code"] == "bad_request" || e["code"] == "auth_failed",
        "missing password is bad_request or auth_failed: {e}"
    );
}

#[test]
fn register_false_or_null_is_a_login() {
    let s = TestServer::start(&[]);
    drop(s.register("alice"));
    let mut c = s.connect();
    c.auth_ok(json!({"type":"auth","user":"alice","password":PASSWORD,"register":false}));
    let mut c = s.connect();
    c.auth_ok(json!({"type":"auth","user":"alice","password":PASSWORD,"register":null}));
    // register:false for an unknown name does not create it.
    expect_auth_failure(
        &s,
        json!({"type":"auth","user":"nobody","password":PASSWORD,"register":false}),
        "auth_failed",
    );
}

#[test]
fn malformed_non_auth_frames_before_auth_are_still_unauthorized() {
    // "Any other frame before a successful auth: error unauthorized" - a frame whose type is
    // not auth is refused for that reason, whatever else is wrong with it.
    let s = TestServer::start(&[]);
    let mut c = s.connect();
    for f in [
        json!({"type":"join","room":"BAD ROOM"}),
        json!({"type":"send","room":"r","text":"   "}),
        json!({"type":"history","room":"r","before":1,"after":2}),
    ] {
        c.send_json(&f);
        let e = c.recv_json(T);
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["code"], "unauthorized", "{f} before auth: {e}");
    }
    c.auth_ok(json!({"type":"auth","user":"alice","password":PASSWORD,"register":true}));
}

#[test]
fn token_auth_ignores_null_and_unknown_fields() {
    let s = TestServer::start(&[]);
    let token = s.register("alice").token;
    let mut c = s.connect();
    let w = c.auth_ok(json!({"type":"auth","token":token,"user":null,"password":null,"register":null,"device":"x"}));
    assert_eq!(w["token"], token.as_str());
    assert_eq!(w["user"], "alice");
}
