//! Export, import, compact and generate.

mod admin_common;
mod common;

use admin_common::*;
use common::{id_of, TestServer, PASSWORD, T};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The parts of users/rooms/messages that must survive a round trip.
fn snapshot(dir: &Path) -> (Value, Value, Value) {
    let mut users = admin_json(dir, &["users", "list"]);
    for u in users.as_array_mut().unwrap() {
        let u = u.as_object_mut().unwrap();
        u.remove("has_password");
        u.remove("connections");
    }
    (
        users,
        admin_json(dir, &["rooms", "list"]),
        admin_json(dir, &["messages", "list", "--limit", "0"]),
    )
}

#[test]
fn export_from_a_running_server_and_import_into_a_fresh_directory_reproduces_it() {
    let server = TestServer::start(&[]);
    let src = server.data_dir();
    let mut alice = server.register("alice");
    let token = alice.token.clone();
    alice.join("general");
    alice.join("random");
    let (ack, _) = alice.say_cid("general", "with a cid", "cid-1");
    alice.say("random", "line one\nline two ünïcödé 🎉");
    let mut bob = server.register("Bob");
    bob.join("general");
    alice.expect("presence");
    bob.say("general", "hi");
    admin(src, &["users", "ban", "bob"]).ok();

    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.jsonl");
    let secret = dir.path().join("secret.jsonl");
    let out = admin(src, &["export", "--out", plain.to_str().unwrap()]);
    assert!(out.ok().contains("exported 2 user(s)"), "{}", out.stdout);
    admin(
        src,
        &[
            "export",
            "--with-secrets",
            "--out",
            secret.to_str().unwrap(),
        ],
    )
    .ok();
    for f in [&plain, &secret] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "export files are private");
    }
    let text = std::fs::read_to_string(&plain).unwrap();
    assert!(!text.contains("argon2"), "no hashes without --with-secrets");
    assert!(std::fs::read_to_string(&secret).unwrap().contains("argon2"));
    let expected = snapshot(src);

    // Without secrets: same users, rooms, messages; users must get a password.
    let fresh = tempfile::tempdir().unwrap();
    let out = admin(fresh.path(), &["import", plain.to_str().unwrap()]);
    out.ok();
    assert!(out.stderr.contains("users passwd"), "{}", out.stderr);
    assert_eq!(snapshot(fresh.path()), expected);
    let u = admin_json(fresh.path(), &["users", "show", "alice"]);
    assert_eq!(u["has_password"], false);
    // Importing again changes nothing.
    let again = admin_json(fresh.path(), &["import", plain.to_str().unwrap()]);
    assert_eq!(again["messages"], 0);
    assert_eq!(again["messages_skipped"], 3);
    assert_eq!(again["users_skipped"], 2);
    assert_eq!(snapshot(fresh.path()), expected);

    // With secrets: passwords, tokens and cids work on a server started on the copy.
    let full = tempfile::tempdir().unwrap();
    admin(full.path(), &["import", secret.to_str().unwrap()]).ok();
    assert_eq!(snapshot(full.path()), expected);
    let copy = TestServer::start_in(full, &[]);
    copy.login("alice", PASSWORD);
    let mut resumed = copy.resume(&token);
    resumed.join("general");
    let again = resumed.send_msg("general", "retry", Some("cid-1"));
    assert_eq!(id_of(&again), id_of(&ack), "cids survive the round trip");
    let mut c = copy.connect();
    let reply = c.auth(json!({"type":"auth","user":"bob","password":PASSWORD}));
    assert_eq!(reply["code"], "banned");
    // New messages get ids above everything imported.
    let (new, _) = resumed.say("general", "new");
    let max = expected.2[0]["id"].as_u64().unwrap();
    assert!(id_of(&new) > max);
}

#[test]
fn import_into_a_running_server_publishes_to_joined_clients() {
    let server = TestServer::start(&[]);
    let d = server.data_dir();
    let mut alice = server.register("alice");
    alice.join("general");
    let (ack, _) = alice.say("general", "live one");
    let base = id_of(&ack);
    let now = common::now_ms();
    ExportFile::new(0)
        .room("general", 0)
        .message("general", base + 100, "ghost", "imported", now)
        .import_into(d);
    let mut bob = server.register("bob");
    let j = bob.join("general");
    assert_eq!(j.ids(), [base, base + 100]);
    alice.expect("presence");
    let (next, _) = alice.say("general", "after import");
    assert!(id_of(&next) > base + 100);
}

#[test]
fn export_while_messages_flow_is_consistent() {
    let server = TestServer::start(&["--rate", "100000", "--burst", "100000"]);
    let d = server.data_dir().to_owned();
    let mut alice = server.register("alice");
    alice.join("general");
    for i in 0..200 {
        alice.say("general", &format!("seed {i}"));
    }
    let writer = std::thread::spawn(move || {
        for i in 0..300 {
            alice.say("general", &format!("during {i}"));
        }
        alice
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    admin(&d, &["export", "--out", file.path().to_str().unwrap()]).ok();
    let _alice = writer.join().unwrap();
    let lines: Vec<Value> = std::fs::read_to_string(file.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let room = lines.iter().find(|l| l["type"] == "room").unwrap();
    let last = room["last_id"].as_u64().unwrap();
    let exported: Vec<u64> = lines
        .iter()
        .filter(|l| l["type"] == "message")
        .map(|l| l["id"].as_u64().unwrap())
        .collect();
    // Exactly the messages up to the room's last_id at export start: no gap, nothing newer.
    let all = ids(&admin_json(
        &d,
        &["messages", "list", "--asc", "--limit", "0"],
    ));
    let expected: Vec<u64> = all.into_iter().filter(|&id| id <= last).collect();
    assert_eq!(exported, expected);
    assert!(exported.len() >= 200);
}

#[test]
fn a_bad_import_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.jsonl");
    let target = dir.path().join("data");
    std::fs::write(&file, "{\"type\":\"header\",\"format\":\"chatd-export\",\"version\":1,\"exported_ms\":0,\"id_floor\":0}\n{\"type\":\"room\",\"name\":\"ok\",\"created_ms\":0,\"last_id\":0,\"count\":0}\nnot json\n").unwrap();
    let e = admin(&target, &["import", file.to_str().unwrap()])
        .fails(2)
        .to_owned();
    assert!(e.contains("line 3"), "{e}");
    assert!(!target.join("db").exists(), "nothing was created");
    std::fs::write(
        &file,
        "{\"type\":\"room\",\"name\":\"ok\",\"created_ms\":0,\"last_id\":0,\"count\":0}\n",
    )
    .unwrap();
    admin(&target, &["import", file.to_str().unwrap()]).fails(2);
    admin(&target, &["import", "/nonexistent/file"]).fails(1);
}

#[test]
fn export_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    ExportFile::new(7)
        .room("a", 3)
        .message("a", 3, "u", "x", 1)
        .import_into(dir.path());
    let out = admin(dir.path(), &["export"]);
    let lines: Vec<Value> = out
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "header");
    assert_eq!(lines[0]["id_floor"], 7);
    assert_eq!(lines.len(), 3);
    assert!(
        out.stderr.contains("exported"),
        "summary on stderr: {}",
        out.stderr
    );
}

#[test]
fn generate_and_compact_work_offline_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(
        d,
        &[
            "generate",
            "--rooms",
            "3",
            "--messages",
            "3000",
            "--users",
            "4",
            "--span",
            "10s",
        ],
    )
    .ok();
    let s = admin_json(d, &["stats"]);
    assert_eq!(s["rooms"], 3);
    assert_eq!(s["messages"], 3000);
    assert_eq!(s["users"], 4);
    admin(d, &["prune", "--keep-last", "10"]).ok();
    let before = snapshot(d);
    let c = admin_json(d, &["compact"]);
    assert!(c["bytes_after"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(snapshot(d), before);
    let left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["db"], "no leftovers: {left:?}");

    let mut server = TestServer::start_in(dir, &[]);
    let d = server.data_dir();
    let mut c = server.login("user-0001", "password123");
    let j = c.join("room-001");
    assert_eq!(j.messages.len(), 10);
    let e = admin(d, &["compact"]).fails(1).to_owned();
    assert!(e.contains("stop it"), "{e}");
    admin(d, &["generate", "--rooms", "1", "--messages", "1"]).fails(1);
    server.sigterm();
    assert!(server.wait_exit(T).success());
}
