//! A short run of each issue-7 benchmark scenario (benches/hot/) at tiny size against the real
//! chatd binary, so none of them can rot. Loopback, ephemeral ports, temporary directories; the
//! Node peer only when node and its `ws` package are already installed. Correctness facts only
//! (every delivery arrived, nothing missed, every server answered): no timing assertions.

#[path = "../benches/hot/mod.rs"]
mod hot;

use std::time::Duration;

use hot::fanout::{bring_up, floor_sweeps, paced, saturate, Flow, Setup};
use hot::net::Net;
use hot::procs::{import_accounts, start_chatd, start_floor_thread, start_peer, Pinning};
use hot::setup::{open_members, settle, Member};

fn setup(members: usize, durable_floor: bool) -> Setup {
    Setup {
        members,
        pin: Pinning::NONE,
        floor_process: false,
        durable_floor,
        peer: true,
        npm_install: false,
    }
}

#[test]
fn fanout_paced_delivers_everything_to_every_member() {
    let members = 20;
    let mut rig = bring_up(&setup(members, true)).expect("servers up, members joined");
    assert!(
        rig.servers.len() >= 3,
        "floor, durable floor and chatd at least"
    );
    for s in 0..rig.servers.len() {
        let g = rig.group(s, members);
        let w = paced(
            &mut rig.net,
            &g,
            s as u32 + 1,
            20.0,
            0.5,
            Duration::from_secs(10),
        );
        let name = &rig.servers[s].name;
        assert_eq!(w.delivered, w.expected, "{name}: {w:?}");
        assert_eq!(w.sent * members as u64, w.expected);
        assert_eq!(
            (w.disorder, w.short_members, w.closed, w.errors),
            (0, 0, 0, 0),
            "{name}: {w:?}"
        );
        if name == "chatd" {
            assert!(w.server_cpu_pct.is_some(), "chatd's CPU is read from /proc");
        }
        if let Some((p50, p99)) = w.arrival_ms {
            // Every message's first arrival is at or before each of its arrivals, so the
            // quantiles of first arrivals cannot exceed those of all arrivals; and one sweep
            // writes to 20 sockets one after another, so the last arrives after the first.
            let ((first_p50, first_p99), (spread_p50, _)) = (
                w.first_arrival_ms.expect("first arrivals"),
                w.spread_ms.expect("first-to-last spreads"),
            );
            assert!(first_p50 <= p50 && first_p99 <= p99, "{name}: {w:?}");
            assert!(spread_p50 > 0.0, "{name}: {w:?}");
        }
        if s == 0 {
            let sweeps = floor_sweeps(&mut rig.net, &g);
            assert!(sweeps.is_some(), "the floor reports its sweep times");
        }
    }
}

#[test]
fn saturation_completes_with_echo_and_ack_flow() {
    let members = 12;
    let mut rig = bring_up(&setup(members, false)).expect("servers up, members joined");
    let mut tag = 100;
    for s in 0..rig.servers.len() {
        for flow in [Flow::Echo, Flow::Ack] {
            tag += 1;
            let g = rig.group(s, members);
            let w = saturate(&mut rig.net, &g, tag, 2, 2, 0.3, flow);
            let name = &rig.servers[s].name;
            assert!(w.sent > 0 && w.delivered > 0, "{name} {flow:?}: {w:?}");
            assert!(
                w.complete,
                "{name} {flow:?}: every message reached every member: {w:?}"
            );
            assert_eq!((w.closed, w.errors), (0, 0), "{name} {flow:?}: {w:?}");
        }
    }
}

#[test]
fn durable_windows_ack_every_send() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = import_accounts(dir.path(), "d", 4);
    let chatd = start_chatd(
        "chatd",
        dir.path(),
        "127.0.0.1:0",
        &["--rate", "1000000", "--burst", "1000000"],
        None,
    );
    let journal = hot::floor::open_journal(&dir.path().join("floor-journal")).unwrap();
    let mut servers = vec![chatd, start_floor_thread(Some(journal))];
    servers.extend(start_peer(None, false));
    let rooms: Vec<String> = (0..3).map(|j| format!("durable-{j}")).collect();
    let mut net = Net::new(0);
    let mut floor_acked = 0;
    for (k, s) in servers.iter().enumerate() {
        let members: Vec<Member> = (0..4)
            .map(|j| Member {
                token: tokens[j].clone(),
                rooms: vec![if j < 3 {
                    rooms[j].clone()
                } else {
                    "lockstep".into()
                }],
            })
            .collect();
        open_members(
            &mut net,
            k * 4,
            s.addr,
            &members,
            8,
            Duration::from_secs(30),
        )
        .unwrap();
        let d = hot::durable::window(&mut net, s.pid, k * 4, &rooms, 2, 0.3, 1);
        assert!(d.acked > 0, "{}: {d:?}", s.name);
        assert_eq!(
            (d.unacked, d.errors, d.closed),
            (0, 0, 0),
            "{}: {d:?}",
            s.name
        );
        let one = hot::durable::window(&mut net, s.pid, k * 4 + 3, &["lockstep".into()], 1, 0.2, 2);
        assert!(one.acked > 0 && one.unacked == 0, "{}: {one:?}", s.name);
        if s.name == "durable floor" {
            floor_acked = d.acked + one.acked;
        }
    }
    // The durable floor acks only what its journal holds (the file is preallocated: count the
    // messages' frames in it, not its length).
    let journal = std::fs::read(dir.path().join("floor-journal")).unwrap();
    let stored = journal
        .windows(b"durable message".len())
        .filter(|w| w == b"durable message")
        .count() as u64;
    assert!(
        floor_acked > 0 && stored >= floor_acked,
        "{stored} in the journal, {floor_acked} acked"
    );
}

#[test]
fn idle_opens_distinct_accounts_and_reads_memory() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = import_accounts(dir.path(), "i", 30);
    let chatd = start_chatd("chatd", dir.path(), "127.0.0.1:0", &[], None);
    let mut net = Net::new(0);
    let m = hot::idle::measure(&mut net, &chatd, &tokens, 5, 25, 3).expect("all joined");
    assert!(m.rss_after_kib > 0 && m.rss_before_kib > 0, "{m:?}");
    // 30 distinct accounts online, as the server itself reports them.
    let out = std::process::Command::new(hot::procs::chatd_bin())
        .args(["admin", "online", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "admin online: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut users = std::collections::BTreeSet::new();
    collect_users(&v, &mut users);
    assert_eq!(users.len(), 30, "{v}");
    if let Some(peer) = start_peer(None, false) {
        let mut net = Net::new(0);
        hot::idle::measure(&mut net, &peer, &tokens, 5, 25, 3).expect("peer: all joined");
    }
    // Accounts that were not imported cannot log in.
    let mut net = Net::new(0);
    let bogus = vec![Member {
        token: "not-a-token".into(),
        rooms: vec![],
    }];
    assert!(open_members(&mut net, 0, chatd.addr, &bogus, 1, Duration::from_secs(10)).is_err());
    settle(&mut net, Duration::from_millis(50), Duration::from_secs(1));
}

#[test]
fn storm_resyncs_every_client_without_missing_messages() {
    let cfg = hot::storm::Cfg {
        clients: 30,
        rooms: 3,
        publish_every: Duration::from_millis(100),
        steady: Duration::from_millis(700),
        restarts: 2,
        sync_limit: Duration::from_secs(60),
        server_core: None,
    };
    let runs = hot::storm::run(&cfg, |l| eprintln!("{l}")).expect("storm ran");
    assert_eq!(runs.len(), 2);
    for r in &runs {
        assert!(r.all_synced_secs.is_some(), "every client synced: {r:?}");
        assert_eq!(r.synced, 30);
        assert_eq!((r.missed, r.disorder), (0, 0), "{r:?}");
        assert!(r.acked_total > 0, "messages flowed: {r:?}");
        assert!(r.witness_plain_pings > 0, "the witness was answered: {r:?}");
    }
}

/// Every `user` of an object that also has a `peer` (a connection in `admin online`).
fn collect_users(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let (Some(u), true) = (
                m.get("user").and_then(|u| u.as_str()),
                m.contains_key("peer"),
            ) {
                out.insert(u.to_owned());
            }
            m.values().for_each(|x| collect_users(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_users(x, out)),
        _ => {}
    }
}

#[path = "../benches/storage.rs"]
#[allow(dead_code)] // the bench's own `main` is not called here
mod storage;

#[test]
fn storage_bench_measures_sled_and_the_committer() {
    let summary = storage::run(true);
    assert_eq!(
        summary.ceiling.len(),
        4,
        "batches of 1, 8, 64, 512: {summary:?}"
    );
    assert!(
        summary.ceiling.iter().all(|&(_, rate)| rate > 0.0),
        "{summary:?}"
    );
    assert_eq!(summary.acknowledged.len(), 3, "{summary:?}");
    assert!(
        summary.acknowledged.iter().all(|&n| n > 0),
        "every committer run acknowledged appends: {summary:?}"
    );
}
