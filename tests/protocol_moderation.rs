//! PROTOCOL.md `banned` and close code 1008 for "banned or kicked by an admin". The admin side is
//! driven through `chatd admin` (not part of the serve CLI contract; used only to trigger the
//! wire-level behaviour under test).
mod common;
use common::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `chatd admin <cmd...> --data-dir DIR -- <name>`
fn admin(s: &TestServer, cmd: &[&str], name: &str) {
    let args: Vec<&str> = cmd.iter().copied().chain(["--", name]).collect();
    let mut command = Command::new(BIN);
    command.env_remove("CHATD_CLUSTER");
    // A two-node stand-in (`CHATD_TEST_CLUSTER=1`): the admin acts on the cluster.
    if let Some(url) = cluster_of(s.data_dir()) {
        command.env("CHATD_CLUSTER", url);
    }
    let mut child = command
        .arg("admin")
        .args(cmd)
        .arg("--data-dir")
        .arg(s.data_dir())
        .arg("--")
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatd admin");
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("chatd admin {args:?} did not finish within 15 s");
        }
        // Polling the child's exit: std has no wait-with-timeout.
        std::thread::sleep(ms(20));
    };
    let out = child.wait_with_output().unwrap();
    assert!(
        st.success(),
        "chatd admin {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ban_closes_connections_with_1008_and_refuses_logins_with_banned() {
    let s = TestServer::start(&[]);
    let mut a = s.register("alice");
    a.join("r");
    let token = a.token.clone();
    let mut b = s.register("bob");
    b.join("r");

    // Usernames are case-insensitive, also for the admin.
    admin(&s, &["users", "ban"], "Alice");
    let (frames, end) = a.read_until_end(T);
    assert_eq!(
        end,
        Event::Closed(Some(1008)),
        "a banned user's connection closes with 1008 ({frames:?})"
    );

    // Password login: `banned`, then 1008.
    let mut c = s.connect();
    let e = c.auth(json!({"type":"auth","user":"alice","password":PASSWORD}));
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "banned", "{e}");
    assert_eq!(c.expect_close(T), Some(1008));

    // The token no longer resumes the session (banned, or auth_failed for a revoked token).
    let mut c = s.connect();
    let e = c.auth(json!({"type":"auth","token":token}));
    assert_eq!(e["type"], "error", "{e}");
    assert!(e["code"] == "banned" || e["code"] == "auth_failed", "{e}");
    assert_eq!(c.expect_close(T), Some(1008));

    // Others are unaffected.
    b.say("r", "still here");

    admin(&s, &["users", "unban"], "alice");
    let c = s.login("alice", PASSWORD);
    assert_eq!(c.user, "alice");
}

#[test]
fn kick_closes_connections_with_1008_and_they_may_reconnect() {
    let s = TestServer::start(&[]);
    let mut a1 = s.register("alice");
    let mut a2 = s.login("alice", PASSWORD);
    a1.join("r");
    let mut b = s.register("bob");
    b.join("r");
    admin(&s, &["kick"], "alice");
    assert_eq!(
        a1.read_until_end(T).1,
        Event::Closed(Some(1008)),
        "kick closes with 1008"
    );
    assert_eq!(
        a2.read_until_end(T).1,
        Event::Closed(Some(1008)),
        "every connection of the user"
    );
    b.say("r", "bob stays");
    let mut again = s.resume(&a1.token);
    again.join("r");
}
