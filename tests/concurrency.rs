//! PROTOCOL.md "Sending" guarantees under concurrency: ids strictly increase per room for every
//! receiver, one connection's sends are accepted in order, every acked message reaches every
//! member exactly once.
mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::thread;
use std::time::Duration;

const FAST: &[&str] = &["--rate", "100000", "--burst", "100000"];

struct SenderResult {
    user: String,
    acks: Vec<Value>,
    seen: Vec<Value>,
}

/// Reads until `want_acks` acks and `want_msgs` messages of `room` have arrived. Presence
/// frames are allowed (other users joining); anything else is a failure.
fn drain(
    c: &mut Client,
    room: &str,
    want_acks: usize,
    want_msgs: usize,
) -> (Vec<Value>, Vec<Value>) {
    let mut acks = Vec::new();
    let mut msgs = Vec::new();
    while acks.len() < want_acks || msgs.len() < want_msgs {
        let v = match c.recv(Duration::from_secs(20)) {
            Event::Json(v) => v,
            other => panic!(
                "[{}] after {} acks / {} messages (want {want_acks}/{want_msgs}): {other:?}",
                c.user,
                acks.len(),
                msgs.len()
            ),
        };
        match v["type"].as_str() {
            Some("ack") => acks.push(v),
            Some("message") => {
                assert_eq!(v["room"], room);
                msgs.push(v)
            }
            Some("presence") => {}
            _ => panic!("[{}] unexpected frame {v}", c.user),
        }
    }
    (acks, msgs)
}

#[test]
fn twenty_concurrent_senders_in_one_room() {
    const SENDERS: usize = 20;
    const N: usize = 25;
    let s = TestServer::start(FAST);
    let addr = s.addr();
    let room = "load";

    // Two pure receivers, joined first.
    let mut receivers: Vec<Client> = (0..2).map(|i| s.register(&format!("watcher{i}"))).collect();
    for r in receivers.iter_mut() {
        r.join(room);
    }

    let results: Vec<SenderResult> = run_together(
        addr,
        SENDERS,
        |i| (format!("sender{i:02}"), room.to_owned()),
        |mut c, room| {
            let user = c.user.clone();
            for k in 0..N {
                c.send_json(&json!({"type":"send","room":room,"text":format!("{user} #{k}"),"cid":format!("{user}-{k}")}));
            }
            let (acks, seen) = drain(&mut c, &room, N, SENDERS * N);
            SenderResult { user, acks, seen }
        },
    );

    // Every sender's acks: in the order sent, ids strictly increasing.
    let mut acked: HashMap<u64, (String, String)> = HashMap::new();
    for r in &results {
        let cids: Vec<&str> = r.acks.iter().map(|a| a["cid"].as_str().unwrap()).collect();
        let want: Vec<String> = (0..N).map(|k| format!("{}-{k}", r.user)).collect();
        assert_eq!(
            cids, want,
            "{}: acks in the order the sends were made",
            r.user
        );
        let ids: Vec<u64> = r.acks.iter().map(id_of).collect();
        assert_strictly_increasing(&ids, &format!("{}'s acks", r.user));
        for (k, a) in r.acks.iter().enumerate() {
            let prev = acked.insert(id_of(a), (r.user.clone(), format!("{} #{k}", r.user)));
            assert!(prev.is_none(), "id {} acked twice", id_of(a));
        }
    }
    assert_eq!(acked.len(), SENDERS * N);
    let all_ids: BTreeSet<u64> = acked.keys().copied().collect();

    let check_receiver = |who: &str, msgs: &[Value]| {
        let ids: Vec<u64> = msgs.iter().map(id_of).collect();
        assert_strictly_increasing(&ids, &format!("{who}'s received messages"));
        let set: BTreeSet<u64> = ids.iter().copied().collect();
        assert_eq!(set, all_ids, "{who} received exactly the acked messages");
        for m in msgs {
            let (user, text) = &acked[&id_of(m)];
            assert_eq!(m["user"], user.as_str(), "{m}");
            assert_eq!(m["text"], text.as_str(), "{m}");
        }
    };
    for r in &results {
        check_receiver(&r.user, &r.seen);
        // The sender's own copy comes after its ack: check per sender via positions isn't
        // possible across two lists, but the copies carry its cids in order.
        let own: Vec<&str> = r
            .seen
            .iter()
            .filter(|m| m["user"] == r.user.as_str())
            .map(|m| m["cid"].as_str().unwrap())
            .collect();
        let want: Vec<String> = (0..N).map(|k| format!("{}-{k}", r.user)).collect();
        assert_eq!(own, want, "{}'s own messages in order", r.user);
    }
    for (i, r) in receivers.iter_mut().enumerate() {
        let (_, msgs) = drain(r, room, 0, SENDERS * N);
        check_receiver(&format!("watcher{i}"), &msgs);
        let extra = r.barrier();
        assert!(
            extra.iter().all(|v| v["type"] == "presence"),
            "no duplicates after the last message: {extra:?}"
        );
    }

    // A late joiner replays everything in the same order.
    let mut late = s.register("late");
    let j = late.join_since(room, 0);
    let ids: BTreeSet<u64> = j.ids().into_iter().collect();
    assert_eq!(ids, all_ids, "replay holds exactly the acked messages");
}

#[test]
fn concurrent_senders_across_rooms_get_server_unique_ids() {
    const ROOMS: usize = 4;
    const PER_ROOM: usize = 3;
    const N: usize = 20;
    let s = TestServer::start(FAST);
    let addr = s.addr();
    let results: Vec<_> = run_together(
        addr,
        ROOMS * PER_ROOM,
        |i| (format!("u{i}"), format!("room{}", i % ROOMS)),
        |mut c, room| {
            for k in 0..N {
                c.send_json(&json!({"type":"send","room":room,"text":format!("{k}")}));
            }
            let (acks, seen) = drain(&mut c, &room, N, PER_ROOM * N);
            (room, acks, seen)
        },
    );
    let mut all = BTreeSet::new();
    let mut per_room: HashMap<String, BTreeSet<u64>> = HashMap::new();
    for (room, acks, _) in &results {
        for a in acks {
            assert!(
                all.insert(id_of(a)),
                "id {} used twice across the server",
                id_of(a)
            );
            per_room.entry(room.clone()).or_default().insert(id_of(a));
        }
    }
    for (room, _, seen) in &results {
        let ids: Vec<u64> = seen.iter().map(id_of).collect();
        assert_strictly_increasing(&ids, room);
        let set: BTreeSet<u64> = ids.into_iter().collect();
        assert_eq!(
            &set, &per_room[room],
            "{room}: each member saw exactly that room's acked messages"
        );
    }
}

#[test]
fn joining_during_a_flood_misses_nothing_and_duplicates_nothing() {
    // Replay + live delivery must join up without gaps or duplicates: a client that joins with
    // since=0 while messages are being accepted ends up with every message exactly once, in
    // strictly increasing order; a client joining without since gets a gap-free suffix.
    use std::sync::atomic::{AtomicUsize, Ordering};
    const TOTAL: usize = 400;
    const BATCH: usize = 20;
    let s = TestServer::start(FAST);
    let room = "flood";
    let progress = std::sync::Arc::new(AtomicUsize::new(0));

    let mut sender = s.register("sender");
    sender.join(room);
    // Joiners authenticate up front (argon2 is slow); they join at different points.
    let joiners: Vec<(Client, usize, bool)> = (0..5)
        .map(|k| {
            (
                s.register(&format!("joiner{k}")),
                (k * TOTAL) / 5 + 10,
                k % 2 == 0,
            )
        })
        .collect();

    let handles: Vec<_> = joiners
        .into_iter()
        .map(|(mut c, join_at, with_since)| {
            let progress = progress.clone();
            thread::spawn(move || {
                poll_until(
                    Duration::from_secs(30),
                    "the flood to reach this joiner's turn",
                    || (progress.load(Ordering::SeqCst) >= join_at).then_some(()),
                );
                let j = if with_since {
                    c.join_since(room, 0)
                } else {
                    c.join(room)
                };
                let mut ids = j.ids();
                let mut texts: Vec<String> = j
                    .messages
                    .iter()
                    .map(|m| m["text"].as_str().unwrap().to_string())
                    .collect();
                // A late joiner may find END already in its replay.
                while texts.last().map(|t| t.as_str()) != Some("END") {
                    let v = match c.recv(Duration::from_secs(20)) {
                        Event::Json(v) => v,
                        other => {
                            let mut sorted = ids.clone();
                            sorted.sort();
                            sorted.dedup();
                            panic!(
                                "[{}] {other:?} waiting for END after {} messages ({} distinct; replay had {}, synced {}); last ids {:?}, last texts {:?}",
                                c.user,
                                ids.len(),
                                sorted.len(),
                                j.messages.len(),
                                j.synced,
                                &ids[ids.len().saturating_sub(5)..],
                                &texts[texts.len().saturating_sub(5)..]
                            )
                        }
                    };
                    match v["type"].as_str() {
                        Some("message") => {
                            ids.push(id_of(&v));
                            let t = v["text"].as_str().unwrap().to_string();
                            texts.push(t.clone());
                        }
                        Some("presence") => {}
                        _ => panic!("[{}] unexpected {v}", c.user),
                    }
                }
                (c.user.clone(), with_since, ids)
            })
        })
        .collect();

    let mut acked = Vec::new();
    while acked.len() < TOTAL {
        for k in 0..BATCH {
            sender.send_json(
                &json!({"type":"send","room":room,"text":format!("f{}", acked.len() + k)}),
            );
        }
        acked.extend(sender.acks_and_echoes(BATCH));
        progress.store(acked.len(), Ordering::SeqCst);
    }
    // Late joiners may still come online: skip presence while waiting for END's ack.
    sender.send_json(&json!({"type":"send","room":room,"text":"END"}));
    let (end, _) = sender.wait_for(T, |v| v["type"] == "ack");
    acked.push(id_of(&end));

    for h in handles {
        let (user, with_since, ids) = h.join().expect("joiner panicked");
        assert_strictly_increasing(&ids, &format!("{user}: replay followed by live messages"));
        if with_since {
            assert_eq!(
                ids, acked,
                "{user} joined with since=0 mid-flood: every message exactly once"
            );
        } else {
            let first = ids[0];
            let start = acked
                .iter()
                .position(|&i| i == first)
                .expect("first id was acked");
            assert_eq!(
                ids,
                acked[start..].to_vec(),
                "{user} joined without since: a gap-free suffix"
            );
            assert!(ids.len() >= 50, "{user}: at least the 50-message replay");
        }
    }
}

#[test]
fn concurrent_registration_of_one_name_in_different_cases_creates_one_account() {
    let s = TestServer::start(&[]);
    let addr = s.addr();
    let go = Gate::new();
    let spellings = ["zed", "Zed", "ZED", "zEd", "zeD", "ZeD"];
    let handles: Vec<_> = spellings
        .iter()
        .map(|&name| {
            let go = go.clone();
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                go.wait(Duration::from_secs(30));
                let v = c.auth(json!({"type":"auth","user":name,"password":format!("pw-of-{name}-123"),"register":true}));
                (name, v)
            })
        })
        .collect();
    go.open();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<_> = results
        .iter()
        .filter(|(_, v)| v["type"] == "welcome")
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one registration wins: {results:?}"
    );
    for (_, v) in results.iter().filter(|(_, v)| v["type"] != "welcome") {
        assert_eq!(v["code"], "user_exists", "{v}");
    }
    let (winner, w) = winners[0];
    assert_eq!(w["user"], *winner);
    // Only the winner's password works, under any spelling.
    s.login("ZED", &format!("pw-of-{winner}-123"));
}

#[test]
fn the_same_cid_sent_concurrently_from_two_connections_is_stored_once() {
    let s = TestServer::start(FAST);
    let addr = s.addr();
    let mut watcher = s.register("watcher");
    watcher.join("r");
    let token = s.register("alice").token;
    for round in 0..10 {
        let go = Gate::new();
        let cid = format!("race-{round}");
        let handles: Vec<_> = (0..3)
            .map(|k| {
                let (go, cid, token) = (go.clone(), cid.clone(), token.clone());
                thread::spawn(move || {
                    let mut c = Client::resume(addr, &token);
                    c.join("r");
                    go.wait(Duration::from_secs(30));
                    c.send_json(
                        &json!({"type":"send","room":"r","text":format!("copy {k}"),"cid":cid}),
                    );
                    let (ack, _) = c.wait_for(T, |v| v["type"] == "ack");
                    ack
                })
            })
            .collect();
        go.open();
        let acks: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(
            acks.iter().all(|a| *a == acks[0]),
            "round {round}: every copy gets the same ack: {acks:?}"
        );
        let (m, _) = watcher.wait_for(T, |v| v["type"] == "message" && v["cid"] == cid.as_str());
        assert_eq!(m["id"], acks[0]["id"]);
    }
    let h = watcher.history(json!({"type":"history","room":"r","limit":200}));
    let n = h["messages"].as_array().unwrap().len();
    assert_eq!(n, 10, "one message per cid: {h}");
}
