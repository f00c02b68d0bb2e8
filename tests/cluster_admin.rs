//! `chatd admin … --cluster URL`: the admin commands acting on what a cluster's nodes share,
//! through its Redis, with their effects on live connections on every node. Each test starts
//! its own Redis (tests/common/redis.rs) and its own nodes.

mod admin_common;
mod common;

use std::time::Duration;

use admin_common::{admin, admin_in, eventually, Out};
use common::redis::Redis;
use common::*;
use serde_json::{json, Value};

fn node(redis: &Redis) -> TestServer {
    TestServer::start(&["--cluster", &redis.url()])
}

fn is_presence(user: &'static str, state: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["type"] == "presence" && v["user"] == user && v["state"] == state
}

/// Runs admin commands against one cluster from a scratch directory.
struct ClusterCli {
    url: String,
    dir: tempfile::TempDir,
}

impl ClusterCli {
    fn new(redis: &Redis) -> ClusterCli {
        ClusterCli {
            url: redis.url(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Out {
        let mut all = args.to_vec();
        all.extend(["--cluster", self.url.as_str()]);
        admin_in(self.dir.path(), &all, None)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(self.run(&all).ok()).unwrap()
    }
}

/// Reads until the connection closes, skipping frames; returns the close code and the frames.
fn until_closed(c: &mut Client) -> (Option<u16>, Vec<Value>) {
    let mut frames = Vec::new();
    loop {
        match c.recv(Duration::from_secs(10)) {
            Event::Json(v) => frames.push(v),
            Event::Closed(code) => return (code, frames),
            other => panic!("[{}] expected frames then a close, got {other:?}", c.user),
        }
    }
}

#[test]
fn announcements_kicks_and_bans_from_the_admin_cli_reach_every_node() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let url = redis.url();
    let cli = tempfile::tempdir().unwrap();
    let admin_on = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--cluster", url.as_str()]);
        admin(cli.path(), &all)
    };
    let mut alice_a = a.register("alice");
    let mut alice_b = b.login("alice", PASSWORD);
    let mut bob = b.register("bob");
    for c in [&mut alice_a, &mut alice_b, &mut bob] {
        c.join("general");
    }
    let online = admin_on(&["online", "--json"]);
    let online: Value = serde_json::from_str(online.ok()).unwrap();
    let users: Vec<&str> = online
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user"].as_str().unwrap())
        .collect();
    assert_eq!(
        users,
        ["alice", "alice", "bob"],
        "every node's connections, oldest first: {online}"
    );
    assert!(
        online
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["rooms"] == json!(["general"])),
        "{online}"
    );
    admin_on(&["announce", "--room", "general", "maintenance at noon"]).ok();
    for c in [&mut alice_a, &mut alice_b, &mut bob] {
        let (m, _) = c.wait_for(T, |v| v["type"] == "message");
        assert_eq!(
            (m["user"].as_str(), m["text"].as_str()),
            (Some("[system]"), Some("maintenance at noon"))
        );
    }
    admin_on(&["announce", "--room", "nowhere", "hello"]).fails(1);

    // A kick closes alice's connections on both nodes.
    let kicked = admin_on(&["kick", "alice", "--json"]);
    let kicked: Value = serde_json::from_str(kicked.ok()).unwrap();
    assert_eq!(kicked["closed_connections"], 2, "{kicked}");
    for c in [&mut alice_a, &mut alice_b] {
        assert_eq!(until_closed(c).0, Some(1008));
    }
    admin_on(&["kick", "nobody"]).fails(1);

    // A ban closes bob's connection with `banned`, and keeps him out of every node.
    let token = bob.token.clone();
    admin_on(&["users", "ban", "bob"]).ok();
    let (code, frames) = until_closed(&mut bob);
    assert_eq!(code, Some(1008));
    assert!(frames.iter().any(|v| v["code"] == "banned"), "{frames:?}");
    for node in [&a, &b] {
        let mut again = node.connect();
        let refused = again.auth(json!({"type":"auth","token":token}));
        assert_eq!(refused["code"], "banned", "{refused}");
        let mut login = node.connect();
        let refused = login.auth(json!({"type":"auth","user":"bob","password":PASSWORD}));
        assert_eq!(refused["code"], "banned", "{refused}");
    }
    admin_on(&["users", "unban", "bob"]).ok();
    a.login("bob", PASSWORD);
}

#[test]
fn the_admin_cli_reads_and_changes_what_the_nodes_share() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let url = redis.url();
    let cli = tempfile::tempdir().unwrap();
    let on = |args: &[&str], stdin: Option<&str>| {
        let mut all = args.to_vec();
        all.extend(["--cluster", url.as_str()]);
        admin_common::admin_in(cli.path(), &all, stdin)
    };
    let json = |args: &[&str]| -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(on(&all, None).ok()).unwrap()
    };
    let mut alice = a.register("alice");
    alice.join("general");
    let (first, _) = alice.say("general", "one");
    let (second, _) = alice.say("general", "two");
    let mut bob = b.register("bob");
    bob.join(&dm_room("alice", "bob"));
    bob.join("general");

    let stats = json(&["stats"]);
    assert_eq!(
        (
            &stats["users"],
            &stats["rooms"],
            &stats["dm_rooms"],
            &stats["messages"]
        ),
        (&json!(2), &json!(2), &json!(1), &json!(2)),
        "{stats}"
    );
    let users: Vec<Value> = serde_json::from_value(json(&["users", "list"])).unwrap();
    let names: Vec<&str> = users.iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(json(&["users", "show", "ALICE"])["name"], "alice");
    let rooms = json(&["rooms", "list", "--dm"]);
    assert_eq!(rooms.as_array().unwrap().len(), 1, "{rooms}");
    assert_eq!(rooms[0]["participants"], json!(["alice", "bob"]));
    let general = json(&["rooms", "show", "general"]);
    assert_eq!(
        (general["messages"].as_u64(), general["last_id"].as_u64()),
        (Some(2), Some(id_of(&first) + 1)),
        "{general}"
    );

    // Accounts made and changed by the CLI work on every node.
    on(
        &["users", "add", "carol", "--password-stdin"],
        Some("first-password\n"),
    )
    .ok();
    let carol = b.login("carol", "first-password");
    on(
        &["users", "passwd", "carol", "--password-stdin"],
        Some("second-password\n"),
    )
    .ok();
    let mut stale = a.connect();
    assert_eq!(
        stale.auth(json!({"type":"auth","token":carol.token}))["code"],
        "auth_failed"
    );
    a.login("carol", "second-password");
    on(
        &["users", "add", "carol", "--password-stdin"],
        Some("whatever-else\n"),
    )
    .fails(1);

    // An admin deletion reaches the members on both nodes as a `deleted` event by [system].
    on(
        &[
            "messages",
            "delete",
            "--room",
            "general",
            &id_of(&first).to_string(),
        ],
        None,
    )
    .ok();
    for c in [&mut alice, &mut bob] {
        let (deleted, _) = c.wait_for(T, |v| v["type"] == "deleted");
        assert_eq!(
            (deleted["id"].as_u64(), deleted["user"].as_str()),
            (Some(id_of(&first)), Some("[system]"))
        );
    }
    on(
        &[
            "messages",
            "delete",
            "--room",
            "general",
            &id_of(&first).to_string(),
        ],
        None,
    )
    .fails(1);
    // Without --room every room is searched.
    on(&["messages", "delete", &id_of(&first).to_string()], None).fails(1);
    assert_eq!(json(&["stats"])["messages"], 1);
    let out = json(&["messages", "delete", &id_of(&second).to_string()]);
    assert_eq!(
        out["deleted"],
        json!([{"room": "general", "id": id_of(&second)}])
    );
    assert_eq!(json(&["stats"])["messages"], 0);
}

#[test]
fn a_room_deleted_by_the_admin_cli_is_left_on_every_node_and_starts_afresh() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let cli = tempfile::tempdir().unwrap();
    let mut alice = a.register("alice");
    let mut bob = b.register("bob");
    alice.join("doomed");
    bob.join("doomed");
    alice.wait_for(T, is_presence("bob", "online"));
    alice.say("doomed", "one");
    alice.say("doomed", "two");
    bob.wait_for(T, |v| v["type"] == "message" && v["text"] == "two");
    let out = admin(
        cli.path(),
        &[
            "rooms",
            "delete",
            "doomed",
            "--cluster",
            &redis.url(),
            "--json",
        ],
    );
    let out: Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(out["messages_deleted"], 2, "{out}");
    for c in [&mut alice, &mut bob] {
        let (left, _) = c.wait_for(T, |v| v["type"] == "left");
        assert_eq!(left["room"], "doomed");
    }
    alice.send_json(&json!({"type":"send","room":"doomed","text":"still here?"}));
    alice.expect_error("not_joined");
    admin(
        cli.path(),
        &["rooms", "show", "doomed", "--cluster", &redis.url()],
    )
    .fails(1);
    // Joining again makes a new, empty room, on either node.
    let again = bob.join_since("doomed", 0);
    assert!(again.ids().is_empty());
    assert!(alice.room_entry("doomed").is_none(), "off alice's list");
}

#[test]
fn deleting_a_user_closes_them_everywhere_and_removes_the_account_and_its_conversations() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let cli = ClusterCli::new(&redis);
    let dm = dm_room("alice", "bob");
    let mut alice = a.register("alice");
    let mut bob = b.register("bob");
    for c in [&mut alice, &mut bob] {
        c.join("general");
        c.join(&dm);
    }
    alice.wait_for(T, |v| {
        is_presence("bob", "online")(v) && v["room"] == dm.as_str()
    });
    let (mine, _) = alice.say("general", "mine");
    alice.say(&dm, "just between us");
    bob.wait_for(T, |v| {
        v["type"] == "message" && v["text"] == "just between us"
    });
    bob.say("general", "bob's");
    let token = alice.token.clone();

    let out = cli.json(&["users", "delete", "alice", "--delete-messages"]);
    assert_eq!(
        (
            &out["closed_connections"],
            &out["messages_deleted"],
            &out["dm_rooms_deleted"]
        ),
        (&json!(1), &json!(2), &json!([dm])),
        "{out}"
    );
    assert!(out["sessions_revoked"].as_u64() >= Some(1), "{out}");
    assert_eq!(until_closed(&mut alice).0, Some(1008));
    let (deleted, _) = bob.wait_for(T, |v| v["type"] == "deleted" && v["room"] == "general");
    assert_eq!(
        (id_of(&deleted), deleted["user"].as_str()),
        (id_of(&mine), Some("[system]"))
    );
    let (left, _) = bob.wait_for(T, |v| v["type"] == "left");
    assert_eq!(left["room"], dm.as_str());
    // The token is dead on every node; bob's message stays.
    for n in [&a, &b] {
        let mut again = n.connect();
        assert_eq!(
            again.auth(json!({"type":"auth","token":token}))["code"],
            "auth_failed"
        );
    }
    let general = bob.history(json!({"type":"history","room":"general","limit":50}));
    let texts: Vec<&str> = general["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["bob's"]);
    let users: Vec<Value> = serde_json::from_value(cli.json(&["users", "list"])).unwrap();
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(cli.json(&["stats"])["users"], 1);
    cli.run(&["users", "delete", "alice", "--keep-messages"])
        .fails(1);

    // The name is free again; the new alice starts with nothing of the old one's.
    let mut new_alice = b.register("alice");
    assert!(new_alice.join_since(&dm, 0).ids().is_empty());
    assert!(new_alice.room_entry("general").is_none());
}

#[test]
fn read_markers_are_shown_and_reset_from_the_admin_cli_on_every_node() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let cli = ClusterCli::new(&redis);
    let mut alice_a = a.register("alice");
    alice_a.join11("general");
    let mut alice_b = b.login("alice", PASSWORD);
    alice_b.join11("general");
    let mut bob = b.register("bob");
    bob.join11("general");
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        ids.push(id_of(&bob.say("general", text).0));
    }
    assert_eq!(alice_a.mark_read("general", ids[1]), ids[1]);
    alice_b.wait_for(T, |v| v["type"] == "read");

    let reads = cli.json(&["users", "reads", "ALICE"]);
    assert_eq!(
        reads,
        json!({"user":"alice","rooms":[{"room":"general","read":ids[1],"newest":ids[2],
            "unread":1,"listed":true}]})
    );
    let out = cli.json(&["users", "reads", "reset", "alice"]);
    assert_eq!(out["reset"], json!([{"room":"general","read":0}]), "{out}");
    for c in [&mut alice_a, &mut alice_b] {
        let (read, _) = c.wait_for(T, |v| v["type"] == "read");
        assert_eq!(read, json!({"type":"read","room":"general","id":0}));
    }
    let reads = cli.json(&["users", "reads", "alice", "--room", "general"]);
    assert_eq!(
        (&reads["rooms"][0]["read"], &reads["rooms"][0]["unread"]),
        (&json!(0), &json!(3)),
        "{reads}"
    );
    // A marker set beyond the room's newest id is lowered to it.
    let out = cli.json(&[
        "users", "reads", "reset", "alice", "--room", "general", "--to", "999999",
    ]);
    assert_eq!(
        out["reset"],
        json!([{"room":"general","read":ids[2]}]),
        "{out}"
    );
    let entry = alice_b.room_entry("general").expect("listed");
    assert_eq!(entry["unread"], 0, "{entry}");
    cli.run(&["users", "reads", "alice", "--room", "nowhere"])
        .fails(1);
    cli.run(&["users", "reads", "nobody"]).fails(1);
}

#[test]
fn messages_are_listed_shown_with_their_history_and_pruned_from_the_admin_cli() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let cli = ClusterCli::new(&redis);
    let mut alice = a.register("alice");
    alice.join11("general");
    let mut bob = b.register("bob");
    bob.join11("random");
    let hello = id_of(&alice.say("general", "Hello world").0);
    let second = id_of(&alice.say("general", "secnod").0);
    let (edit, _) = alice.edit_and_echo("general", second, "second");
    let oops = id_of(&alice.say("general", "oops").0);
    let (deletion, _) = alice.delete_and_echo("general", oops);
    let there = id_of(&bob.say("random", "hello there").0);
    let last = id_of(&alice.say("general", "last").0);

    let list = cli.json(&["messages", "list"]);
    let listed: Vec<(u64, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (id_of(m), m["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [
            (last, "last"),
            (there, "hello there"),
            (second, "second"),
            (hello, "Hello world")
        ],
        "newest first across rooms, edits applied, deletions gone"
    );
    assert_eq!(
        ids_of(&cli.json(&["messages", "list", "--user", "BOB"])),
        [there]
    );
    assert_eq!(
        ids_of(&cli.json(&["messages", "list", "--grep", "HELLO", "--asc"])),
        [hello, there]
    );
    assert_eq!(
        ids_of(&cli.json(&["messages", "list", "--room", "general", "--asc", "--limit", "2"])),
        [hello, second]
    );
    cli.run(&["messages", "list", "--room", "nowhere"]).fails(1);

    let shown = cli.json(&["messages", "show", "general", &second.to_string()]);
    assert_eq!(
        (&shown["state"], &shown["author"], &shown["message"]["text"]),
        (&json!("stored"), &json!("alice"), &json!("second")),
        "{shown}"
    );
    assert_eq!(shown["message"]["edited_ts"], edit["ts"], "{shown}");
    assert_eq!(
        (
            &shown["events"][0]["seq"],
            &shown["events"][0]["change"],
            &shown["events"][0]["text"],
            &shown["events"][0]["replaced"]
        ),
        (
            &json!(id_of(&edit)),
            &json!("edited"),
            &json!("second"),
            &json!("secnod")
        ),
        "{shown}"
    );
    let shown = cli.json(&["messages", "show", "general", &oops.to_string()]);
    assert_eq!(
        (
            &shown["state"],
            &shown["events"][0]["seq"],
            &shown["events"][0]["user"]
        ),
        (&json!("deleted"), &json!(id_of(&deletion)), &json!("alice")),
        "{shown}"
    );
    let seq = cli
        .run(&["messages", "show", "general", &id_of(&edit).to_string()])
        .fails(1)
        .to_string();
    assert!(
        seq.contains(&format!("change to message {second}")),
        "{seq}"
    );
    let elsewhere = cli
        .run(&["messages", "show", "general", &there.to_string()])
        .fails(1)
        .to_string();
    assert!(elsewhere.contains("it is in room `random`"), "{elsewhere}");

    // Keep the newest message of each room: a dry run counts, then they go.
    let dry = cli.json(&["prune", "--keep-last", "1", "--dry-run"]);
    assert_eq!(dry["removed"], 2, "{dry}");
    assert_eq!(cli.json(&["stats"])["messages"], 4);
    let pruned = cli.json(&["prune", "--keep-last", "1"]);
    assert_eq!(pruned["removed"], 2, "{pruned}");
    assert_eq!(ids_of(&cli.json(&["messages", "list"])), [last, there]);
    let mut fresh = b.login("alice", PASSWORD);
    let replay = fresh.join11_since("general", 0);
    assert_eq!(replay.message_ids(), [last], "{:?}", replay.items);
    assert!(
        replay
            .items
            .iter()
            .any(|v| v["type"] == "deleted" && id_of(v) == oops),
        "deletions stay in the log: {:?}",
        replay.items
    );
    cli.run(&["messages", "show", "general", &hello.to_string()])
        .fails(1);
    let pruned = cli.json(&["prune", "--older-than", "0s", "--room", "random"]);
    assert_eq!(pruned["removed"], 1, "{pruned}");
    assert_eq!(cli.json(&["rooms", "show", "random"])["messages"], 0);
}

fn ids_of(list: &Value) -> Vec<u64> {
    list.as_array().unwrap().iter().map(id_of).collect()
}

#[test]
fn nodes_with_retention_prune_the_shared_logs_and_never_below_the_rule() {
    let redis = Redis::start();
    let a = node(&redis);
    let cli = ClusterCli::new(&redis);
    let mut alice = a.register("alice");
    alice.join("general");
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(id_of(&alice.say("general", &format!("m{i}")).0));
    }
    // Two nodes start with the same rule and prune at once.
    let rule = ["--cluster", &redis.url(), "--retention-per-room", "3"];
    let (c, d) = (TestServer::start(&rule), TestServer::start(&rule));
    // Whichever ran second found nothing left to remove (logged only at debug level).
    eventually(Duration::from_secs(10), "the retention prune", || {
        [&c, &d]
            .iter()
            .any(|n| n.stderr().contains("retention prune done"))
            .then_some(())
    });
    eventually(Duration::from_secs(10), "the rule applied", || {
        (cli.json(&["rooms", "show", "general"])["messages"] == 3).then_some(())
    });
    let mut fresh = a.login("alice", PASSWORD);
    assert_eq!(fresh.join_since("general", 0).ids(), ids[9..]);
    assert_eq!(cli.json(&["rooms", "show", "general"])["messages"], 3);
}

#[test]
fn rooms_prune_removes_only_empty_rooms_nobody_is_in() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let cli = ClusterCli::new(&redis);
    let mut alice = a.register("alice");
    let mut bob = b.register("bob");
    alice.join("occupied");
    bob.join("talked-in");
    bob.say("talked-in", "hi");
    bob.join("abandoned");
    bob.send_json(&json!({"type":"leave","room":"abandoned"}));
    bob.wait_for(T, |v| v["type"] == "left");
    // Presence leaves Redis shortly after the `leave`.
    let dry = eventually(Duration::from_secs(10), "abandoned to be unused", || {
        let dry = cli.json(&[
            "rooms",
            "prune",
            "--empty",
            "--older-than",
            "0s",
            "--dry-run",
        ]);
        (dry["rooms_matched"] == 1).then_some(dry)
    });
    assert_eq!(dry["rooms_deleted"], 0, "{dry}");
    let done = cli.json(&["rooms", "prune", "--empty", "--older-than", "0s"]);
    assert_eq!(done["rooms_deleted"], 1, "{done}");
    cli.run(&["rooms", "show", "abandoned"]).fails(1);
    for kept in ["occupied", "talked-in"] {
        cli.run(&["rooms", "show", kept]).ok();
    }
    let none = cli.json(&["rooms", "prune", "--empty", "--older-than", "0s", "--dm"]);
    assert_eq!(none["rooms_matched"], 0, "{none}");
}
