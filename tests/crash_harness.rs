//! Crash safety as a harness: SIGKILL the server at random moments under send load, restart it,
//! and check after every restart that each acknowledged message is stored exactly once, with
//! the id its ack gave, in strictly increasing order, and that a resend of every unacknowledged
//! message with the same `cid` is stored at most once in all (PROTOCOL.md: "cids make sends
//! idempotent" and "an acked message survives kill -9").
//!
//! A moment is random in the stream of acks: each round kills the server once the senders have
//! seen a random number of acks, so the kill lands while sends, group commits and fan-out are
//! in flight. `CHATD_CRASH_KILLS` sets the number of kills (5 by default, what CI runs; 20 for
//! the full harness: `CHATD_CRASH_KILLS=20 cargo test --release --test crash_harness`),
//! `CHATD_CRASH_SEED` replays a run (the seed is printed).
mod common;
use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::Message;

const SENDERS: usize = 4;
const ROOMS: usize = 2;
const IN_FLIGHT: usize = 8;
const FLAGS: &[&str] = &[
    "--rate",
    "100000",
    "--burst",
    "100000",
    "--replay-limit",
    "1000000",
];

/// What one sender knows: acks it got, and sends it made whose ack it never saw.
#[derive(Default)]
struct Ledger {
    /// cid → (id from the ack, text).
    acked: BTreeMap<String, (u64, String)>,
    /// cid → text, sent but not acknowledged before the kill.
    unacked: BTreeMap<String, String>,
    next: u64,
}

/// A small xorshift generator: the harness only needs reproducible, spread-out numbers.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn room_of(sender: usize) -> String {
    format!("crash{}", sender % ROOMS)
}

/// Sends with cids, `IN_FLIGHT` at a time, until the connection dies. First resends everything
/// the last round left unacknowledged, with the same cid and text.
fn send_until_killed(
    addr: std::net::SocketAddr,
    token: &str,
    sender: usize,
    mut ledger: Ledger,
    acks: &AtomicUsize,
    ready: &AtomicUsize,
) -> Ledger {
    let mut c = Client::resume(addr, token);
    let room = room_of(sender);
    c.join(&room);
    ready.fetch_add(1, Ordering::Relaxed);
    let mut queue: Vec<(String, String)> = ledger
        .unacked
        .iter()
        .map(|(cid, text)| (cid.clone(), text.clone()))
        .collect();
    let mut in_flight = 0usize;
    loop {
        while in_flight < IN_FLIGHT {
            let (cid, text) = queue.pop().unwrap_or_else(|| {
                ledger.next += 1;
                let cid = format!("s{sender}-{}", ledger.next);
                (cid.clone(), format!("crash text {cid}"))
            });
            let frame = json!({"type":"send","room":room,"text":text,"cid":cid});
            ledger.unacked.insert(cid, text);
            if c.try_send(Message::text(frame.to_string())).is_err() {
                return ledger;
            }
            in_flight += 1;
        }
        match c.recv(Duration::from_secs(20)) {
            Event::Json(v) if v["type"] == "ack" => {
                let cid = v["cid"].as_str().expect("ack carries the cid").to_owned();
                let text = ledger
                    .unacked
                    .remove(&cid)
                    .unwrap_or_else(|| panic!("ack for a cid never sent or acked twice: {v}"));
                let id = id_of(&v);
                ledger.acked.insert(cid, (id, text));
                in_flight -= 1;
                acks.fetch_add(1, Ordering::Relaxed);
            }
            Event::Json(v) if v["type"] == "message" || v["type"] == "presence" => {}
            Event::Json(v) => panic!("sender {sender}: unexpected frame {v}"),
            Event::Closed(_) | Event::Ended(_) => return ledger,
            Event::Timeout => panic!("sender {sender}: no ack within 20 s"),
        }
    }
}

/// Every acked message once with its id, every other text at most once, ids increasing.
fn check_rooms(s: &TestServer, ledgers: &[Ledger], round: usize) {
    let mut checker = s.resume(&checker_token(s));
    for r in 0..ROOMS {
        let room = format!("crash{r}");
        let joined = checker.join_since(&room, 0);
        assert!(!joined.more(), "the whole room fits the replay limit");
        let ids = joined.ids();
        assert_strictly_increasing(&ids, &format!("room {room} after restart {round}"));
        let mut stored: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for m in &joined.messages {
            let text = m["text"].as_str().expect("text").to_owned();
            stored.entry(text).or_default().push(id_of(m));
        }
        for (text, ids) in &stored {
            assert_eq!(
                ids.len(),
                1,
                "round {round}: {text:?} stored {} times: {ids:?}",
                ids.len()
            );
        }
        for (sender, ledger) in ledgers.iter().enumerate() {
            if room_of(sender) != room {
                continue;
            }
            for (cid, (id, text)) in &ledger.acked {
                assert_eq!(
                    stored.get(text),
                    Some(&vec![*id]),
                    "round {round}: acked {cid} (id {id}) lost or moved after kill -9"
                );
            }
        }
        checker.send_json(&json!({"type":"leave","room":room}));
        checker.expect("left");
    }
}

fn checker_token(s: &TestServer) -> String {
    s.login("checker", PASSWORD).token
}

#[test]
fn acked_messages_survive_random_kills_exactly_once() {
    let kills: usize = std::env::var("CHATD_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("CHATD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| now_ms() | 1);
    eprintln!("crash harness: {kills} kills, CHATD_CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    let mut s = TestServer::start(FLAGS);
    let tokens: Vec<String> = (0..SENDERS)
        .map(|i| s.register(&format!("writer{i}")).token)
        .collect();
    drop(s.register("checker"));
    let mut ledgers: Vec<Ledger> = (0..SENDERS).map(|_| Ledger::default()).collect();

    for round in 1..=kills {
        let acks = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicUsize::new(0));
        let target = 20 + rng.below(400) as usize;
        let addr = s.addr();
        let handles: Vec<_> = ledgers
            .drain(..)
            .enumerate()
            .map(|(i, ledger)| {
                let token = tokens[i].clone();
                let (acks, ready) = (acks.clone(), ready.clone());
                thread::spawn(move || send_until_killed(addr, &token, i, ledger, &acks, &ready))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        // Every sender must be joined before the kill, or its resume would fail, not its sends.
        while ready.load(Ordering::Relaxed) < SENDERS || acks.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "round {round}: only {} of {target} acks within 60 s",
                acks.load(Ordering::Relaxed)
            );
            thread::sleep(Duration::from_millis(1));
        }
        s.kill9();
        ledgers = handles
            .into_iter()
            .map(|h| h.join().expect("sender thread"))
            .collect();
        s.restart();
        check_rooms(&s, &ledgers, round);
    }

    // The last round's unacked sends, resent with their cids, are each stored exactly once.
    let acks = AtomicUsize::new(0);
    for (i, ledger) in ledgers.iter_mut().enumerate() {
        let mut c = s.resume(&tokens[i]);
        let room = room_of(i);
        c.join(&room);
        for (cid, text) in std::mem::take(&mut ledger.unacked) {
            c.send_json(&json!({"type":"send","room":room,"text":text,"cid":cid}));
            let (ack, _) = c.wait_for(T, |v| v["type"] == "ack" && v["cid"] == cid.as_str());
            ledger.acked.insert(cid, (id_of(&ack), text));
            acks.fetch_add(1, Ordering::Relaxed);
        }
    }
    check_rooms(&s, &ledgers, kills + 1);
    let total: usize = ledgers.iter().map(|l| l.acked.len()).sum();
    // How often a kill cut a group commit short, so that the restart had to remove messages
    // nobody was told about (store::message_batch): the checks above cover those restarts too.
    let repairs = s.stderr().matches("a crash cut short").count();
    eprintln!(
        "crash harness: {kills} kills, {total} acked messages checked, {} resent at the end, {repairs} restarts removed a batch a kill cut short",
        acks.load(Ordering::Relaxed)
    );
    assert!(total >= kills * 20, "the load reached every kill");
}
