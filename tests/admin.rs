//! `chatd admin`: every command against a running server and against a stopped one, exit codes
//! and usage errors.

mod admin_common;
mod common;

use admin_common::*;
use serde_json::Value;
use std::path::Path;

const T0: u64 = 1_700_000_000_000; // 2023-11-14T22:13:20Z

/// Two rooms, three authors, known ids and times.
fn seed(dir: &Path) {
    let r = ExportFile::new(0)
        .user("alice")
        .user("bob")
        .room("general", 0)
        .room("random", 0)
        .message("general", 1, "alice", "hello world", T0)
        .message("random", 2, "bob", "first in random", T0 + 1_000)
        .message("general", 3, "bob", "Hello again", T0 + 2_000)
        .message("general", 4, "alice", "lunch?", T0 + 3_000)
        .message("random", 5, "zed", "by zed", T0 + 4_000)
        .import_into(dir);
    assert_eq!(r["messages"], 5, "{r}");
}

/// Runs the whole command set; `live` says whether a server runs on `dir`.
fn exercise(dir: &Path, live: bool) {
    seed(dir);

    // stats: counters, and server figures only when live.
    let s = admin_json(dir, &["stats"]);
    assert_eq!(s["users"], 2, "{s}");
    assert_eq!(s["rooms"], 2);
    assert_eq!(s["messages"], 5);
    assert_eq!(s["oldest_ts"], T0);
    assert_eq!(s["newest_ts"], T0 + 4_000);
    assert_eq!(s["oldest"], "2023-11-14T22:13:20.000Z", "ISO twin: {s}");
    assert!(s["db_bytes"].as_u64().unwrap() > 0);
    assert_eq!(s["server"].is_object(), live, "{s}");
    let human = admin(dir, &["stats"]).ok().to_owned();
    assert!(human.contains("messages") && human.contains('5'), "{human}");

    // users
    add_user(dir, "Carol", "carol-password");
    let users = admin_json(dir, &["users", "list"]);
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob", "Carol"]);
    let table = admin(dir, &["users", "list"]).ok().to_owned();
    assert!(table.starts_with("NAME"), "{table}");
    let carol = admin_json(dir, &["users", "show", "carol"]);
    assert_eq!(carol["name"], "Carol");
    assert_eq!(carol["has_password"], true);
    assert_eq!(carol["token_epoch"], 0);
    let alice = admin_json(dir, &["users", "show", "alice"]);
    assert_eq!(alice["has_password"], false, "imported without secrets");
    admin_in(
        dir,
        &["users", "add", "carol", "--password-stdin"],
        Some("another-password\n"),
    )
    .fails(1);
    admin_in(
        dir,
        &["users", "passwd", "carol", "--password-stdin"],
        Some("new-carol-password\n"),
    )
    .ok();
    assert_eq!(
        admin_json(dir, &["users", "show", "carol"])["token_epoch"],
        1,
        "passwd revokes tokens"
    );
    admin_in(
        dir,
        &["users", "passwd", "carol", "--password-stdin"],
        Some("short\n"),
    )
    .fails(2);
    admin(dir, &["users", "ban", "carol"]).ok();
    let c = admin_json(dir, &["users", "show", "carol"]);
    assert_eq!(c["banned"], true);
    assert_eq!(c["token_epoch"], 2);
    admin(dir, &["users", "unban", "carol"]).ok();
    assert_eq!(
        admin_json(dir, &["users", "show", "carol"])["banned"],
        false
    );
    admin(dir, &["users", "show", "nobody"]).fails(1);
    admin(dir, &["users", "ban", "nobody"]).fails(1);
    // Without a terminal, `delete` must be told what happens to the messages.
    let e = admin(dir, &["users", "delete", "carol"])
        .fails(2)
        .to_owned();
    assert!(e.contains("--keep-messages"), "{e}");
    admin(dir, &["users", "delete", "carol", "--keep-messages"]).ok();
    admin(dir, &["users", "show", "carol"]).fails(1);
    assert_eq!(admin_json(dir, &["stats"])["users"], 2);

    // rooms
    let rooms = admin_json(dir, &["rooms", "list"]);
    assert_eq!(rooms[0]["name"], "general");
    assert_eq!(rooms[0]["messages"], 3);
    assert_eq!(rooms[0]["last_id"], 4);
    assert_eq!(rooms[1]["name"], "random");
    let general = admin_json(dir, &["rooms", "show", "general"]);
    assert_eq!(general["oldest_ts"], T0);
    assert_eq!(general["newest_ts"], T0 + 3_000);
    assert_eq!(general["online"].is_array(), live, "{general}");
    admin(dir, &["rooms", "show", "nope"]).fails(1);
    admin(dir, &["rooms", "show", "Bad Name"]).fails(2);

    // messages list: newest first by default, filters, --asc, --limit.
    assert_eq!(
        ids(&admin_json(dir, &["messages", "list"])),
        [5, 4, 3, 2, 1]
    );
    assert_eq!(
        ids(&admin_json(dir, &["messages", "list", "--asc"])),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        ids(&admin_json(dir, &["messages", "list", "--room", "general"])),
        [4, 3, 1]
    );
    assert_eq!(
        ids(&admin_json(dir, &["messages", "list", "--user", "BOB"])),
        [3, 2]
    );
    assert_eq!(
        ids(&admin_json(dir, &["messages", "list", "--grep", "hello"])),
        [3, 1]
    );
    assert_eq!(
        ids(&admin_json(dir, &["messages", "list", "--limit", "2"])),
        [5, 4]
    );
    let since = iso(T0 + 1_000);
    let until = iso(T0 + 3_000);
    assert_eq!(
        ids(&admin_json(
            dir,
            &["messages", "list", "--since", &since, "--until", &until]
        )),
        [4, 3, 2]
    );
    assert!(
        ids(&admin_json(dir, &["messages", "list", "--since", "2h"])).is_empty(),
        "relative time: nothing in the last 2 hours"
    );
    assert_eq!(
        ids(&admin_json(dir, &["messages", "list", "--since", "36500d"])).len(),
        5
    );
    let m = &admin_json(dir, &["messages", "list", "--limit", "1"])[0];
    assert_eq!(m["room"], "random");
    assert_eq!(m["user"], "zed");
    assert_eq!(m["text"], "by zed");
    assert_eq!(m["time"], iso(T0 + 4_000));
    let table = admin(dir, &["messages", "list"]).ok().to_owned();
    assert!(table.contains("first in random"), "{table}");
    admin(dir, &["messages", "list", "--since", "yesterday-ish"]).fails(2);
    admin(dir, &["messages", "list", "--room", "nope"]).fails(1);

    // messages delete: a missing id changes nothing.
    admin(dir, &["messages", "delete", "2", "999"]).fails(1);
    assert_eq!(admin_json(dir, &["stats"])["messages"], 5);
    admin(dir, &["messages", "delete", "2"]).ok();
    assert_eq!(ids(&admin_json(dir, &["messages", "list"])), [5, 4, 3, 1]);
    admin(dir, &["messages", "delete", "5", "--room", "general"]).fails(1);
    admin(dir, &["messages", "delete", "5", "--room", "random"]).ok();

    // users delete --delete-messages removes their messages too.
    add_user(dir, "dave", "dave-password");
    admin(dir, &["users", "delete", "alice", "--delete-messages"]).ok();
    assert_eq!(ids(&admin_json(dir, &["messages", "list"])), [3]);

    // prune (admin deletions above were sequenced events: each took an id of the room)
    let last_id = admin_json(dir, &["rooms", "show", "general"])["last_id"].clone();
    assert!(
        last_id.as_u64().unwrap() > 4,
        "deletions take ids: {last_id}"
    );
    let dry = admin_json(dir, &["prune", "--keep-last", "0", "--dry-run"]);
    assert_eq!(dry["removed"], 1);
    assert_eq!(admin_json(dir, &["stats"])["messages"], 1, "dry run");
    let done = admin_json(dir, &["prune", "--older-than", "1d"]);
    assert_eq!(done["removed"], 1);
    assert_eq!(admin_json(dir, &["stats"])["messages"], 0);
    assert_eq!(
        admin_json(dir, &["rooms", "show", "general"])["last_id"],
        last_id,
        "last_id never goes down"
    );

    // rooms delete
    admin(dir, &["rooms", "delete", "random"]).ok();
    admin(dir, &["rooms", "show", "random"]).fails(1);
    admin(dir, &["rooms", "delete", "random"]).fails(1);

    // export / import round trip within the same instance is idempotent.
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    admin(dir, &["export", "--out", &path]).ok();
    let again = admin_json(dir, &["import", &path]);
    assert_eq!(again["users"], 0, "{again}");
    assert_eq!(again["messages"], 0);

    // live-only commands
    if live {
        assert_eq!(admin_json(dir, &["online"]), Value::Array(vec![]));
        admin(dir, &["kick", "dave"]).fails(1); // not connected
        let a = admin_json(
            dir,
            &["announce", "--room", "general", "maintenance", "at", "5"],
        );
        assert_eq!(a["posted"][0]["room"], "general");
        let m = &admin_json(dir, &["messages", "list", "--limit", "1"])[0];
        assert_eq!(m["text"], "maintenance at 5");
        assert_eq!(m["user"], "[system]");
        assert!(m["id"].as_u64().unwrap() > 4, "new ids stay above old ones");
    } else {
        for args in [
            &["online"][..],
            &["kick", "dave"][..],
            &["announce", "hello"][..],
        ] {
            let e = admin(dir, args).fails(1).to_owned();
            assert!(e.contains("no chatd server is running"), "{args:?}: {e}");
        }
    }
}

#[test]
fn every_command_against_a_running_server() {
    let server = common::TestServer::start(&[]);
    exercise(server.data_dir(), true);
    // The server saw the admin traffic and still serves chat.
    let mut c = server.register("erin");
    c.join("general");
}

#[test]
fn every_command_against_a_stopped_server() {
    let dir = tempfile::tempdir().unwrap();
    exercise(dir.path(), false);
    // Everything written offline is there when a server starts on it.
    let mut server = common::TestServer::start_in(dir, &[]);
    let s = admin_json(server.data_dir(), &["stats"]);
    assert_eq!(s["users"], 2);
    assert!(s["server"].is_object());
    let mut c = server.login("dave", "dave-password");
    let j = c.join("general");
    let last_id = admin_json(server.data_dir(), &["rooms", "show", "general"])["last_id"].clone();
    assert!(last_id.as_u64().unwrap() > 4, "admin deletions took ids");
    assert_eq!(j.last_id(), last_id, "ids retired by pruning stay retired");
    server.sigterm();
    assert!(server.wait_exit(common::T).success());
}

#[test]
fn usage_errors_exit_2_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    seed(d);
    for args in [
        &["frobnicate"][..],
        &["prune"][..],
        &["prune", "--older-than", "soon"][..],
        &["messages", "list", "--limit", "many"][..],
        &["messages", "delete", "abc"][..],
        &["messages", "delete"][..],
        &["users", "add", "bad name!", "--password-stdin"][..],
        &[
            "users",
            "delete",
            "bob",
            "--keep-messages",
            "--delete-messages",
        ][..],
        &["generate", "--rooms", "0", "--messages", "1"][..],
    ] {
        admin_in(d, args, Some("a-good-password\n")).fails(2);
    }
    let s = admin_json(d, &["stats"]);
    assert_eq!(s["users"], 2);
    assert_eq!(s["messages"], 5);
}

#[test]
fn a_missing_database_is_an_error_naming_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let e = admin(&missing, &["stats"]).fails(1).to_owned();
    assert!(e.contains("nothing-here"), "{e}");
    assert!(!missing.exists(), "a query must not create a database");
}

#[test]
fn data_dir_comes_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let out = std::process::Command::new(BIN)
        .args(["admin", "stats", "--json"])
        .env("CHATD_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["messages"], 5);
}
