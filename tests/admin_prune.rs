//! `chatd admin prune` boundaries and `serve --retention`.

mod admin_common;
mod common;

use admin_common::*;
use common::{now_ms, TestServer, T};
use std::path::Path;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;

fn all_ids(dir: &Path) -> Vec<u64> {
    ids(&admin_json(
        dir,
        &["messages", "list", "--asc", "--limit", "0"],
    ))
}

#[test]
fn older_than_removes_strictly_older_messages_and_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ExportFile::new(0)
        .room("a", 0)
        .room("b", 0)
        .message("a", 1, "u", "just before", T0 - 1)
        .message("a", 2, "u", "exactly at", T0)
        .message("a", 3, "u", "just after", T0 + 1)
        .message("b", 4, "u", "older", T0 - 5_000)
        .message("b", 5, "u", "newer", T0 + 5_000)
        .import_into(d);
    let cut = iso(T0);

    let dry = admin_json(d, &["prune", "--older-than", &cut, "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["removed"], 2, "{dry}");
    assert_eq!(dry["rooms"][0]["room"], "a");
    assert_eq!(dry["rooms"][0]["first_id"], 1);
    assert_eq!(dry["rooms"][0]["last_id"], 1);
    assert_eq!(dry["rooms"][0]["remaining"], 2);
    assert_eq!(dry["rooms"][1]["first_id"], 4);
    let text = admin(d, &["prune", "--older-than", &cut, "--dry-run"])
        .ok()
        .to_owned();
    assert!(text.contains("would be removed"), "{text}");
    assert_eq!(all_ids(d), [1, 2, 3, 4, 5], "dry run changed something");

    let r = admin_json(d, &["prune", "--older-than", &cut, "--room", "a"]);
    assert_eq!(r["removed"], 1);
    assert_eq!(
        all_ids(d),
        [2, 3, 4, 5],
        "the message exactly at the cut-off stays"
    );
    let r = admin_json(d, &["prune", "--older-than", &cut]);
    assert_eq!(r["removed"], 1);
    assert_eq!(all_ids(d), [2, 3, 5]);
    let r = admin_json(d, &["prune", "--older-than", &cut]);
    assert_eq!(r["removed"], 0, "idempotent");
    let rooms = admin_json(d, &["rooms", "list"]);
    assert_eq!(rooms[0]["messages"], 2, "counters follow: {rooms}");
    assert_eq!(rooms[1]["messages"], 1);
    assert_eq!(rooms[1]["last_id"], 5);
}

#[test]
fn keep_last_is_per_room_and_combines_with_older_than() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut f = ExportFile::new(0).room("c", 0).room("d", 0);
    for id in 10..16 {
        f = f.message("c", id, "u", "c", T0 + id);
    }
    f = f
        .message("d", 16, "u", "d", T0 + 16)
        .message("d", 17, "u", "d", T0 + 17);
    f.import_into(d);

    let dry = admin_json(d, &["prune", "--keep-last", "3", "--dry-run"]);
    assert_eq!(dry["removed"], 3);
    assert_eq!(all_ids(d), [10, 11, 12, 13, 14, 15, 16, 17]);
    let r = admin_json(d, &["prune", "--keep-last", "3", "--room", "d"]);
    assert_eq!(r["removed"], 0);
    let r = admin_json(d, &["prune", "--keep-last", "3"]);
    assert_eq!(r["removed"], 3);
    assert_eq!(all_ids(d), [13, 14, 15, 16, 17]);
    // Either rule selects: older than T0+15 OR beyond the newest 2.
    let cut = iso(T0 + 15);
    let r = admin_json(d, &["prune", "--older-than", &cut, "--keep-last", "2"]);
    assert_eq!(r["removed"], 2, "{r}");
    assert_eq!(all_ids(d), [15, 16, 17]);
}

#[test]
fn prune_through_a_running_server_matches_the_offline_result() {
    let dir = tempfile::tempdir().unwrap();
    let base = now_ms() - 60_000;
    let mut f = ExportFile::new(0).room("r", 0);
    for id in 1..=2_500 {
        f = f.message("r", id, "u", "x", base + id);
    }
    f.import_into(dir.path());
    let server = TestServer::start_in(dir, &[]);
    let d = server.data_dir();
    let r = admin_json(d, &["prune", "--keep-last", "100"]);
    assert_eq!(r["removed"], 2_400);
    assert_eq!(admin_json(d, &["stats"])["messages"], 100);
    let mut c = server.register("reader");
    let j = c.join_since("r", 0);
    assert_eq!(j.ids(), (2_401..=2_500).collect::<Vec<_>>());
}

#[test]
fn serve_retention_prunes_on_start_and_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    ExportFile::new(0)
        .room("old", 0)
        .room("busy", 0)
        .message("old", 1, "u", "ancient", T0)
        .message("old", 2, "u", "recent", now - 60_000)
        .message("busy", 3, "u", "b1", now - 50_000)
        .message("busy", 4, "u", "b2", now - 40_000)
        .message("busy", 5, "u", "b3", now - 30_000)
        .import_into(dir.path());
    let server = TestServer::start_in(dir, &["--retention", "30d", "--retention-per-room", "2"]);
    let d = server.data_dir();
    eventually(Duration::from_secs(10), "the retention prune", || {
        (admin_json(d, &["stats"])["messages"] == 3).then_some(())
    });
    assert_eq!(all_ids(d), [2, 4, 5]);
    let log = server.stderr();
    assert!(
        log.contains("retention pruned messages") && log.contains("retention prune done"),
        "the prune is logged: {log}"
    );
}

#[test]
fn serve_rejects_a_zero_retention() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--retention",
            "0s",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--retention"));
    let _ = T;
}
