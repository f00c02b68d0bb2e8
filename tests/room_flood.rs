//! Room-creation floods (issue 8, item 3): creating rooms is limited per account, and rooms
//! nobody uses leave memory (their data stays on disk and comes back on the next join).
mod admin_common;
mod common;
use admin_common::{admin, admin_json, iso, ExportFile};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn rooms_loaded(s: &TestServer) -> u64 {
    s.metrics()
        .lines()
        .find_map(|l| l.strip_prefix("chatd_rooms_loaded "))
        .and_then(|v| v.trim().parse().ok())
        .expect("chatd_rooms_loaded in /metrics")
}

#[test]
fn an_account_creates_rooms_up_to_its_allowance_then_gets_rate_limited() {
    let s = TestServer::start(&["--rooms-per-hour", "5"]);
    let mut flooder = s.register("flooder");
    for i in 0..5 {
        flooder.join(&format!("flood-{i}"));
    }
    flooder.send_json(&json!({"type":"join","room":"flood-5"}));
    let refused = flooder.expect_error("rate_limited");
    assert_eq!(refused["ref"], "join");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("5 rooms per hour"),
        "the error says what the limit is: {refused}"
    );
    // Joining rooms that exist is never limited, and other accounts have their own allowance.
    let mut other = s.register("other");
    other.join("elsewhere");
    flooder.join("elsewhere");
    flooder.join("flood-0");
    // The refused room was not created: another account creates it fresh.
    let joined = s.register("third").join("flood-5");
    assert_eq!(joined.last_id(), 0);
}

/// The flood with the default allowance: an account trying to create 1,000 rooms as
/// fast as it can gets 60.
#[test]
fn the_default_allowance_stops_a_flood_at_sixty_rooms() {
    let s = TestServer::start(&["--rate", "1000000", "--burst", "1000000"]);
    let mut flooder = s.register("flooder");
    let started = Instant::now();
    let mut created = 0;
    for i in 0..1000 {
        flooder.send_json(&json!({"type":"join","room":format!("f{i}")}));
        let v = flooder.recv_json(T);
        match v["type"].as_str() {
            Some("joined") => {
                flooder.expect("synced");
                created += 1;
            }
            Some("error") => assert_eq!(v["code"], "rate_limited", "{v}"),
            _ => panic!("unexpected {v}"),
        }
    }
    eprintln!(
        "1000 creation attempts in {:?}: {created} rooms",
        started.elapsed()
    );
    assert_eq!(created, 60);
    assert_eq!(rooms_loaded(&s), 60);
}

#[test]
fn rooms_nobody_uses_are_unloaded_and_come_back_from_disk() {
    let s = TestServer::start(&["--room-unload-after", "300ms", "--presence-grace", "100ms"]);
    let mut keeper = s.register("keeper");
    keeper.join("kept");
    let mut visitor = s.register("visitor");
    let mut ids = Vec::new();
    for i in 0..20 {
        let room = format!("visited-{i}");
        visitor.join(&room);
        let (ack, _) = visitor.say(&room, "hello");
        ids.push(id_of(&ack));
    }
    assert!(rooms_loaded(&s) >= 21);
    drop(visitor);
    poll_until(Duration::from_secs(20), "idle rooms unloaded", || {
        (rooms_loaded(&s) == 1).then_some(())
    });

    // The room with a member stayed, and is the same room for a newcomer.
    let mut newcomer = s.register("newcomer");
    let joined = newcomer.join("kept");
    assert!(joined.members().contains(&"keeper".to_string()));
    keeper.expect("presence");
    let (ack, _) = newcomer.say("kept", "still here");
    let heard = keeper.expect("message");
    assert_eq!(heard["id"], ack["id"]);

    // An unloaded room loads again with its messages and ids.
    let joined = newcomer.join_since("visited-3", 0);
    assert_eq!(joined.ids(), vec![ids[3]]);
    let (ack, _) = newcomer.say("visited-3", "back");
    assert!(id_of(&ack) > ids[19], "ids continue after the reload");
}

fn room_names(dir: &std::path::Path) -> Vec<String> {
    let list = admin_json(dir, &["rooms", "list"]);
    let mut names: Vec<String> = list
        .as_array()
        .expect("rooms list --json is an array")
        .iter()
        .map(|r| r["name"].as_str().expect("name").to_owned())
        .collect();
    names.sort();
    names
}

/// After a flood, one admin command removes every empty room nobody is in; rooms with
/// messages or members stay.
#[test]
fn admin_prunes_empty_rooms_in_bulk_live() {
    let s = TestServer::start(&["--presence-grace", "100ms"]);
    let mut flooder = s.register("flooder");
    for i in 0..30 {
        flooder.join(&format!("empty-{i}"));
    }
    flooder.join("busy");
    flooder.say("busy", "keep me");
    let mut sitter = s.register("sitter");
    sitter.join("occupied");
    drop(flooder);
    let dir = s.data_dir().to_path_buf();
    let cutoff = iso(now_ms() + 60_000);
    let args = ["rooms", "prune", "--empty", "--older-than", cutoff.as_str()];
    let dry = poll_until(Duration::from_secs(10), "the flooder's rooms free", || {
        let dry = admin_json(&dir, &[&args[..], &["--dry-run"]].concat());
        (dry["rooms_matched"] == 30).then_some(dry)
    });
    assert_eq!(dry["rooms_deleted"], 0, "a dry run deletes nothing: {dry}");
    assert_eq!(room_names(&dir).len(), 32);

    let pruned = admin_json(&dir, &args);
    assert_eq!(pruned["rooms_deleted"], 30, "{pruned}");
    assert_eq!(room_names(&dir), vec!["busy", "occupied"]);
    // The sitter's room is untouched: it still works.
    sitter.say("occupied", "still open");
    // Without --empty the command refuses rather than guessing.
    let refused = admin(&dir, &["rooms", "prune", "--older-than", "30d"]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("--empty"), "{}", refused.stderr);
}

#[test]
fn admin_prunes_empty_rooms_offline_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ExportFile::new(0)
        .user("u")
        .room("old-empty", 0)
        .room("old-busy", 1)
        .message("old-busy", 1, "u", "kept", 5_000)
        .import_into(d);
    let recent = iso(500); // created_ms of imported rooms is 1,000: not before 500
    let none = admin_json(d, &["rooms", "prune", "--empty", "--older-than", &recent]);
    assert_eq!(none["rooms_deleted"], 0, "{none}");
    let pruned = admin_json(d, &["rooms", "prune", "--empty", "--older-than", "30d"]);
    assert_eq!(pruned["rooms_deleted"], 1, "{pruned}");
    assert_eq!(room_names(d), vec!["old-busy"]);
}
