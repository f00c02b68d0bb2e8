//! Cluster mode under load while things fail: three nodes sharing one Redis, senders on every
//! node keeping several sends in flight, members of every room on every node. Redis is SIGKILLed
//! and restarted (it fsyncs every write), or a node is SIGKILLed, while they send. Clients behave
//! as PROTOCOL.md section 10 says: a send refused with `internal` is resent with the same cid
//! until acked, a closed connection resumes with its token on a node that is up and joins its
//! rooms again with `since`.
//!
//! Afterwards, on every node: each acked cid is in its room exactly once, with the acked id;
//! nothing else is; ids strictly increase; and every member saw each of its rooms' messages
//! exactly once, in id order, with no gap.
//!
//! A send in flight when Redis dies may be stored although its node saw the link fail: the last
//! test reproduces that deterministically with a proxy that loses Redis's answer.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

/// Two rooms, each with senders on all three nodes and a member on every node.
const ROOMS: [&str; 2] = ["alpha", "beta"];
/// Sender `i` is on node `i % 3` and sends into room `i % 2`.
const SENDERS: usize = 6;
/// Sends each sender keeps unacknowledged at once.
const IN_FLIGHT: usize = 4;
/// Acks wanted before each failure and after each recovery.
const PER_PHASE: usize = 400;
/// Refusals to wait for while Redis is down (several resend rounds of every sender).
const DOWN_REFUSALS: usize = 5 * SENDERS * IN_FLIGHT;
/// How long a client waits before resending a send refused with `internal`.
const RESEND_AFTER: Duration = Duration::from_millis(30);
/// No phase of the load may take longer than this.
const PHASE: Duration = Duration::from_secs(30);

/// Nodes without the send rate limits: the load is as fast as the nodes and Redis allow.
fn node(redis: &Redis) -> TestServer {
    TestServer::start(&[
        "--cluster",
        &redis.url(),
        "--rate",
        "100000",
        "--burst",
        "100000",
    ])
}

/// What every client thread adds to while the load runs.
#[derive(Default)]
struct Load {
    /// Distinct cids acknowledged.
    acked: AtomicUsize,
    /// `internal` errors received for sends.
    refused: AtomicUsize,
    /// Acks of a cid already acked (the same id): a refused send that Redis had stored is
    /// acked by the feed, and its resend gets the original ack too.
    repeated_acks: AtomicUsize,
    /// Resumes and re-joins answered with `internal` (Redis down), retried.
    resumes_refused: AtomicUsize,
    /// Senders stop starting new sends (resends go on until acked).
    stop: AtomicBool,
}

/// A client as the load starts: logged in, its rooms joined with `since` 0.
struct Seat {
    client: Client,
    /// Where it resumes when its connection ends.
    fallback: SocketAddr,
    rooms: Vec<&'static str>,
    sends_to: Option<&'static str>,
}

#[derive(Debug, Clone, Copy)]
enum CidState {
    /// Sent on the current connection, no answer yet.
    InFlight,
    /// Refused (or its connection ended): to be sent again at this time.
    Resend(Instant),
    Acked(u64),
}

struct Sent {
    room: &'static str,
    text: String,
    state: CidState,
    /// The connection (count of reconnects) it was first sent on.
    first_life: u32,
    refused: u32,
    /// A refusal said it "may still be stored" (PROTOCOL.md 9).
    warned: bool,
}

/// What a client thread saw.
struct Report {
    user: String,
    rooms: Vec<&'static str>,
    /// Per room, the ids of the messages received (replays and live), in arrival order.
    seen: HashMap<String, Vec<u64>>,
    /// cid → room, acked id, text.
    acked: BTreeMap<String, (&'static str, u64, String)>,
    /// Acked cids that had been refused at least once.
    resent_then_acked: usize,
    reconnects: u32,
}

struct Member {
    client: Client,
    user: String,
    token: String,
    fallback: SocketAddr,
    rooms: Vec<&'static str>,
    sends_to: Option<&'static str>,
    load: Arc<Load>,
    life: u32,
    sent: BTreeMap<String, Sent>,
    /// cids not acked yet.
    open: BTreeSet<String>,
    seen: HashMap<String, Vec<u64>>,
}

impl Member {
    fn new(seat: Seat, load: Arc<Load>) -> Member {
        Member {
            user: seat.client.user.clone(),
            token: seat.client.token.clone(),
            client: seat.client,
            fallback: seat.fallback,
            rooms: seat.rooms,
            sends_to: seat.sends_to,
            load,
            life: 0,
            sent: BTreeMap::new(),
            open: BTreeSet::new(),
            seen: HashMap::new(),
        }
    }

    /// Sends and reads until the load stopped, this client's sends are all acked and it has
    /// received each of its rooms up to the id `targets` names for it.
    fn run(
        mut self,
        done: mpsc::Sender<HashMap<String, u64>>,
        targets: mpsc::Receiver<HashMap<String, u64>>,
    ) -> Report {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut reported = self.sends_to.is_none();
        let mut target: Option<HashMap<String, u64>> = None;
        loop {
            assert!(
                Instant::now() < deadline,
                "[{}] the load did not end: open cids {:?}, seen up to {:?}, target {target:?}",
                self.user,
                self.open,
                self.newest_seen()
            );
            if !self.send_what_is_due() {
                self.reconnect();
                continue;
            }
            if !reported && self.load.stop.load(Ordering::SeqCst) && self.open.is_empty() {
                done.send(self.newest_acked()).expect("the test waits");
                reported = true;
            }
            if target.is_none() {
                target = targets.try_recv().ok();
            }
            if let Some(target) = &target {
                if self.rooms.iter().all(|r| self.newest_in(r) >= target[*r]) {
                    self.settle();
                    break;
                }
            }
            let now = Instant::now();
            let wait = self
                .next_resend()
                .map_or(ms(50), |at| at.saturating_duration_since(now).min(ms(50)));
            match self.client.recv(wait.max(ms(1))) {
                Event::Json(v) => self.handle(v),
                Event::Timeout => {}
                Event::Closed(_) | Event::Ended(_) => self.reconnect(),
            }
        }
        self.report()
    }

    /// Resends what is due and starts new sends up to [`IN_FLIGHT`]; false if the connection
    /// failed.
    fn send_what_is_due(&mut self) -> bool {
        let Some(room) = self.sends_to else {
            return true;
        };
        let now = Instant::now();
        let due: Vec<String> = (self.open.iter())
            .filter(|cid| matches!(self.sent[*cid].state, CidState::Resend(at) if at <= now))
            .cloned()
            .collect();
        for cid in due {
            if !self.send(&cid) {
                return false;
            }
        }
        while !self.load.stop.load(Ordering::SeqCst) && self.in_flight() < IN_FLIGHT {
            let n = self.sent.len();
            let cid = format!("{}-{n:05}", self.user);
            let sent = Sent {
                room,
                text: format!("{} says {n}", self.user),
                state: CidState::InFlight,
                first_life: self.life,
                refused: 0,
                warned: false,
            };
            self.sent.insert(cid.clone(), sent);
            self.open.insert(cid.clone());
            if !self.send(&cid) {
                return false;
            }
        }
        true
    }

    fn send(&mut self, cid: &str) -> bool {
        let sent = self.sent.get_mut(cid).expect("a cid of ours");
        sent.state = CidState::InFlight;
        let frame = json!({"type":"send","room":sent.room,"text":sent.text,"cid":cid});
        self.client
            .try_send(Message::text(frame.to_string()))
            .is_ok()
    }

    fn in_flight(&self) -> usize {
        (self.open.iter())
            .filter(|cid| matches!(self.sent[*cid].state, CidState::InFlight))
            .count()
    }

    fn next_resend(&self) -> Option<Instant> {
        (self.open.iter())
            .filter_map(|cid| match self.sent[cid].state {
                CidState::Resend(at) => Some(at),
                _ => None,
            })
            .min()
    }

    fn handle(&mut self, v: Value) {
        match v["type"].as_str() {
            Some("message") => self.message(v),
            Some("ack") => self.ack(&v),
            Some("error") => {
                // PROTOCOL.md 13: while Redis is unreachable, writes get `internal`.
                assert_eq!(v["code"], "internal", "[{}] refused: {v}", self.user);
                let cid = v["ref"].as_str().unwrap_or_default();
                let sent = (self.sent.get_mut(cid))
                    .unwrap_or_else(|| panic!("[{}] an error for no send of ours: {v}", self.user));
                self.load.refused.fetch_add(1, Ordering::SeqCst);
                sent.refused += 1;
                let said = v["message"].as_str().unwrap_or_default();
                sent.warned |= said.contains("may still be stored");
                // Its ack may have come first (Redis stored it, then died before answering).
                if matches!(sent.state, CidState::InFlight) {
                    sent.state = CidState::Resend(Instant::now() + RESEND_AFTER);
                }
            }
            Some("presence") => {}
            _ => panic!("[{}] unexpected {v}", self.user),
        }
    }

    fn message(&mut self, v: Value) {
        let room = v["room"].as_str().expect("message.room").to_string();
        let id = id_of(&v);
        if v["user"] == self.user.as_str() {
            let cid = v["cid"].as_str().expect("our messages carry their cid");
            let sent = (self.sent.get(cid))
                .unwrap_or_else(|| panic!("[{}] a message of ours we never sent: {v}", self.user));
            assert_eq!(
                (room.as_str(), v["text"].as_str()),
                (sent.room, Some(sent.text.as_str())),
                "[{}] {v}",
                self.user
            );
            // Sent only on this connection: its ack comes before its copy (PROTOCOL.md 5, 13).
            // (One first sent on a connection that ended may be stored by that send and reach
            // this connection before the resend's ack.)
            if sent.first_life == self.life {
                assert!(
                    matches!(sent.state, CidState::Acked(acked) if acked == id),
                    "[{}] own message before its ack ({:?}): {v}",
                    self.user,
                    sent.state
                );
            }
        }
        self.seen.entry(room).or_default().push(id);
    }

    fn ack(&mut self, v: &Value) {
        let cid = v["cid"].as_str().expect("ack.cid");
        let id = id_of(v);
        let sent = (self.sent.get_mut(cid))
            .unwrap_or_else(|| panic!("[{}] an ack for no send of ours: {v}", self.user));
        assert_eq!(v["room"], sent.room, "[{}] {v}", self.user);
        match sent.state {
            CidState::Acked(first) => {
                assert_eq!(first, id, "[{}] one cid acked with two ids: {v}", self.user);
                // Acked by the feed and again for a resend: a refused send was stored.
                assert!(
                    sent.warned,
                    "[{}] {cid} was stored by a send refused without saying it may be: {v}",
                    self.user
                );
                self.load.repeated_acks.fetch_add(1, Ordering::SeqCst);
            }
            _ => {
                sent.state = CidState::Acked(id);
                self.open.remove(cid);
                self.load.acked.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// The connection ended: resume with the token on the fallback node, join every room with
    /// `since` the last id seen there, resend whatever is not acked (PROTOCOL.md 10).
    fn reconnect(&mut self) {
        self.life += 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        'again: loop {
            assert!(
                Instant::now() < deadline,
                "[{}] could not resume on {}",
                self.user,
                self.fallback
            );
            let mut client = Client::connect(self.fallback);
            let welcome = client.auth(json!({"type":"auth","token":self.token}));
            if welcome["type"] != "welcome" {
                assert_eq!(welcome["code"], "internal", "[{}] {welcome}", self.user);
                self.load.resumes_refused.fetch_add(1, Ordering::SeqCst);
                thread::sleep(ms(50)); // backoff before the next attempt
                continue;
            }
            self.client = client;
            for room in self.rooms.clone() {
                let since = self.newest_in(room);
                self.client
                    .send_json(&json!({"type":"join","room":room,"since":since}));
                loop {
                    let v = self.client.recv_json(T);
                    match v["type"].as_str() {
                        Some("joined") => assert_eq!(v["room"], room, "{v}"),
                        Some("synced") if v["room"] == room => break,
                        Some("error") => {
                            assert_eq!(v["code"], "internal", "[{}] {v}", self.user);
                            self.load.resumes_refused.fetch_add(1, Ordering::SeqCst);
                            thread::sleep(ms(50)); // backoff before the next attempt
                            continue 'again;
                        }
                        _ => self.handle(v),
                    }
                }
            }
            break;
        }
        let now = Instant::now();
        for cid in &self.open {
            let sent = self.sent.get_mut(cid).expect("open cids are sent");
            sent.state = CidState::Resend(now);
        }
    }

    /// After the last expected message: a round trip, so that a duplicate queued behind it
    /// would be seen too.
    fn settle(&mut self) {
        let t = format!("settle-{}", self.user);
        self.client.send_json(&json!({"type":"ping","t":t}));
        loop {
            let v = self.client.recv_json(T);
            if v["type"] == "pong" && v["t"] == t.as_str() {
                return;
            }
            self.handle(v);
        }
    }

    fn newest_in(&self, room: &str) -> u64 {
        self.seen
            .get(room)
            .and_then(|s| s.last())
            .copied()
            .unwrap_or(0)
    }

    fn newest_seen(&self) -> HashMap<String, u64> {
        (self.rooms.iter())
            .map(|r| (r.to_string(), self.newest_in(r)))
            .collect()
    }

    /// The highest acked id per room this client sent into.
    fn newest_acked(&self) -> HashMap<String, u64> {
        let mut newest = HashMap::new();
        for sent in self.sent.values() {
            if let CidState::Acked(id) = sent.state {
                let top = newest.entry(sent.room.to_string()).or_insert(0);
                *top = id.max(*top);
            }
        }
        newest
    }

    fn report(self) -> Report {
        let mut acked = BTreeMap::new();
        let mut resent_then_acked = 0;
        for (cid, sent) in self.sent {
            let CidState::Acked(id) = sent.state else {
                panic!("[{}] {cid} never acked", self.user);
            };
            if sent.refused > 0 {
                resent_then_acked += 1;
            }
            acked.insert(cid, (sent.room, id, sent.text));
        }
        Report {
            user: self.user,
            rooms: self.rooms,
            seen: self.seen,
            acked,
            resent_then_acked,
            reconnects: self.life,
        }
    }
}

/// The load, running on one thread per client.
struct Running {
    load: Arc<Load>,
    threads: Vec<thread::JoinHandle<Report>>,
    targets: Vec<mpsc::Sender<HashMap<String, u64>>>,
    done: mpsc::Receiver<HashMap<String, u64>>,
    started: Instant,
}

impl Running {
    fn start(seats: Vec<Seat>) -> Running {
        let load = Arc::new(Load::default());
        let (done_tx, done) = mpsc::channel();
        let mut threads = Vec::new();
        let mut targets = Vec::new();
        for seat in seats {
            let (target_tx, target_rx) = mpsc::channel();
            targets.push(target_tx);
            let member = Member::new(seat, load.clone());
            let done_tx = done_tx.clone();
            threads.push(thread::spawn(move || member.run(done_tx, target_rx)));
        }
        Running {
            load,
            threads,
            targets,
            done,
            started: Instant::now(),
        }
    }

    fn acked(&self) -> usize {
        self.load.acked.load(Ordering::SeqCst)
    }

    fn refused(&self) -> usize {
        self.load.refused.load(Ordering::SeqCst)
    }

    /// Waits until `more` sends were acked after this call, and returns how many there were.
    fn wait_for_more_acks(&mut self, more: usize, what: &str) -> usize {
        let from = self.acked();
        poll_until(PHASE, what, || {
            self.check_clients(what);
            (self.acked() >= from + more).then_some(())
        });
        self.acked()
    }

    /// Waits until `more` sends were refused after this call.
    fn wait_for_more_refusals(&mut self, more: usize, what: &str) {
        let from = self.refused();
        poll_until(PHASE, what, || {
            self.check_clients(what);
            (self.refused() >= from + more).then_some(())
        });
    }

    /// Fails with a client thread's own panic if one ended early.
    fn check_clients(&mut self, what: &str) {
        if let Some(i) = self.threads.iter().position(|t| t.is_finished()) {
            match self.threads.swap_remove(i).join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(r) => panic!("{} stopped early, during: {what}", r.user),
            }
        }
    }

    /// Stops the load: senders finish (every cid acked), then every client reads its rooms up
    /// to their newest acked id.
    fn finish(self) -> Vec<Report> {
        self.load.stop.store(true, Ordering::SeqCst);
        let mut newest: HashMap<String, u64> = HashMap::new();
        for _ in 0..SENDERS {
            let acked = self
                .done
                .recv_timeout(PHASE)
                .expect("every sender gets all its sends acked");
            for (room, id) in acked {
                let top = newest.entry(room).or_insert(0);
                *top = id.max(*top);
            }
        }
        for room in ROOMS {
            assert!(newest.contains_key(room), "{room} got no message");
        }
        for target in &self.targets {
            target.send(newest.clone()).expect("the client waits");
        }
        let reports = (self.threads.into_iter())
            .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect();
        eprintln!(
            "load ran {:?}: {} acked, {} refused with internal, {} acked again",
            self.started.elapsed(),
            self.load.acked.load(Ordering::SeqCst),
            self.load.refused.load(Ordering::SeqCst),
            self.load.repeated_acks.load(Ordering::SeqCst)
        );
        reports
    }
}

/// Registers and seats the clients: sender `i` on node `i % 3` sending into room `i % 2`, and
/// a member of both rooms on every node. `fallback(k, i)` is where client `i` of node `k`
/// resumes.
fn seat_everyone(nodes: &[SocketAddr], fallback: impl Fn(usize, usize) -> SocketAddr) -> Vec<Seat> {
    let mut seats = Vec::new();
    for i in 0..SENDERS {
        let k = i % nodes.len();
        let room = ROOMS[i % ROOMS.len()];
        let mut client = Client::register(nodes[k], &format!("sender{i}"), PASSWORD);
        client.join_since(room, 0);
        seats.push(Seat {
            client,
            fallback: fallback(k, i),
            rooms: vec![room],
            sends_to: Some(room),
        });
    }
    for (k, &addr) in nodes.iter().enumerate() {
        let mut client = Client::register(addr, &format!("member{k}"), PASSWORD);
        for room in ROOMS {
            client.join_since(room, 0);
        }
        seats.push(Seat {
            client,
            fallback: fallback(k, SENDERS + k),
            rooms: ROOMS.to_vec(),
            sends_to: None,
        });
    }
    seats
}

/// Room `room`'s whole history, paged with `after`, from a client that joined it.
fn whole_history(c: &mut Client, room: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    loop {
        let after = all.last().map_or(0, id_of);
        c.send_json(&json!({"type":"history","room":room,"after":after,"limit":200}));
        let (page, _) = c.wait_for(T, |v| v["type"] == "history");
        assert_eq!(page["room"], room, "{page}");
        let messages = page["messages"].as_array().expect("history.messages");
        all.extend(messages.iter().cloned());
        if page["more"] != true {
            return all;
        }
        assert!(!messages.is_empty(), "more, but an empty page: {page}");
    }
}

/// Reads every room from a fresh client on each of `nodes` (replay with `since` 0 and the
/// whole history) and checks it against what was acked and what each client saw. Returns the
/// number of messages per room.
fn check_everything(nodes: &[&TestServer], reports: &[Report], tag: &str) -> Vec<usize> {
    // (user, cid) → (room, id, text), for every acked send.
    let mut acked: HashMap<(String, String), (&str, u64, &str)> = HashMap::new();
    for r in reports {
        for (cid, (room, id, text)) in &r.acked {
            acked.insert((r.user.clone(), cid.clone()), (room, *id, text.as_str()));
        }
    }
    let mut histories: Vec<Vec<Value>> = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let mut c = node.register(&format!("{tag}check{k}"));
        let mut per_room = Vec::new();
        for room in ROOMS {
            let replay = c.join_since(room, 0);
            let history = whole_history(&mut c, room);
            let ids: Vec<u64> = history.iter().map(id_of).collect();
            let n = ids.len().min(500);
            assert_eq!(replay.ids(), ids[..n], "node {k}: replay from 0 of {room}");
            assert_eq!(replay.more(), ids.len() > 500, "node {k}: synced.more");
            per_room.push(history);
        }
        histories.push(per_room.concat());
        if let Some(first) = histories.first() {
            assert!(
                histories.last() == Some(first),
                "node {k} tells another history than node 0"
            );
        }
    }
    let mut counts = Vec::new();
    let mut stored: HashSet<(String, String)> = HashSet::new();
    for room in ROOMS {
        let history: Vec<&Value> = (histories[0].iter())
            .filter(|m| m["room"] == room)
            .collect();
        let ids: Vec<u64> = history.iter().map(|m| id_of(m)).collect();
        assert_strictly_increasing(&ids, room);
        for m in &history {
            let key = (
                m["user"].as_str().expect("user").to_string(),
                m["cid"]
                    .as_str()
                    .expect("every message was sent with a cid")
                    .to_string(),
            );
            let Some(&(acked_room, id, text)) = acked.get(&key) else {
                panic!("stored but never acked: {m}");
            };
            assert_eq!(
                (room, id_of(m), m["text"].as_str()),
                (acked_room, id, Some(text)),
                "stored otherwise than acked: {m}"
            );
            assert!(stored.insert(key), "a cid stored twice: {m}");
        }
        for r in reports.iter().filter(|r| r.rooms.contains(&room)) {
            assert!(
                r.seen.get(room) == Some(&ids),
                "{} did not see {room} exactly once in id order: saw {} messages, the room has \
                 {}; first difference at {:?}",
                r.user,
                r.seen.get(room).map_or(0, Vec::len),
                ids.len(),
                first_difference(r.seen.get(room).map_or(&[][..], Vec::as_slice), &ids)
            );
        }
        counts.push(ids.len());
    }
    assert_eq!(stored.len(), acked.len(), "every acked send is stored");
    counts
}

fn first_difference(seen: &[u64], want: &[u64]) -> Option<(usize, Option<u64>, Option<u64>)> {
    (0..seen.len().max(want.len()))
        .find(|&i| seen.get(i) != want.get(i))
        .map(|i| (i, seen.get(i).copied(), want.get(i).copied()))
}

/// The checks after node 2 was killed: everything on the two survivors, and only node 2's
/// clients (`homes`: each client's first node) had to reconnect.
fn check_after_node_2_died(nodes: &[TestServer], reports: &[Report], homes: &[usize], tag: &str) {
    let survivors: Vec<&TestServer> = nodes[..2].iter().collect();
    let counts = check_everything(&survivors, reports, tag);
    assert!(counts.iter().sum::<usize>() >= 2 * PER_PHASE, "{counts:?}");
    for (r, &home) in reports.iter().zip(homes) {
        if home == 2 {
            assert!(r.reconnects >= 1, "{} was on the killed node", r.user);
        } else {
            assert_eq!(r.reconnects, 0, "{} was on a node that stayed up", r.user);
        }
    }
}

#[test]
fn every_acked_send_survives_redis_killed_and_restarted_twice_under_load_on_three_nodes() {
    let mut redis = Redis::start();
    let nodes = [node(&redis), node(&redis), node(&redis)];
    let addrs: Vec<SocketAddr> = nodes.iter().map(TestServer::addr).collect();
    // Connections stay open while Redis is down (PROTOCOL.md 13); a client whose connection
    // ended anyway would resume on its own node.
    let seats = seat_everyone(&addrs, |k, _| addrs[k]);
    let mut running = Running::start(seats);

    let mut phases = vec![running.wait_for_more_acks(PER_PHASE, "acks before Redis is killed")];
    // First at once: the sends in flight when Redis dies are refused (or, stored just before,
    // acked) and resent.
    let refused = running.refused();
    redis.kill_and_restart();
    phases.push(running.wait_for_more_acks(PER_PHASE, "acks after the first restart"));
    assert!(
        running.refused() > refused,
        "no send was refused around the first restart: the outage missed the load"
    );
    // Then down for a while: every sender is refused and resends, until Redis is back.
    let refused = running.refused();
    redis.kill();
    running.wait_for_more_refusals(DOWN_REFUSALS, "sends refused while Redis is down");
    let acked_while_down = running.acked();
    redis.kill_and_restart();
    phases.push(running.wait_for_more_acks(PER_PHASE, "acks after the second restart"));
    assert!(running.refused() >= refused + DOWN_REFUSALS);
    let reports = running.finish();

    let counts = check_everything(&nodes.iter().collect::<Vec<_>>(), &reports, "r");
    let total: usize = counts.iter().sum();
    assert!(total >= 3 * PER_PHASE, "{counts:?} messages stored");
    let resent: usize = reports.iter().map(|r| r.resent_then_acked).sum();
    assert!(resent > 0, "no refused send was resent and acked");
    for r in &reports {
        assert_eq!(
            r.reconnects, 0,
            "{}: connections stay open while Redis is down",
            r.user
        );
    }
    eprintln!(
        "acked at each phase's end: {phases:?} ({acked_while_down} when Redis came back); \
         stored per room {counts:?}; {resent} acked after a refusal"
    );
}

#[test]
fn every_acked_send_survives_a_node_killed_under_load_its_clients_resuming_on_the_others() {
    let redis = Redis::start();
    let mut nodes = [node(&redis), node(&redis), node(&redis)];
    let addrs: Vec<SocketAddr> = nodes.iter().map(TestServer::addr).collect();
    // Node 2 will die: its clients move to node 0 or 1, the others stay where they are.
    let seats = seat_everyone(&addrs, |k, i| if k == 2 { addrs[i % 2] } else { addrs[k] });
    let homes: Vec<usize> = (0..SENDERS).map(|i| i % 3).chain(0..3).collect();
    let mut running = Running::start(seats);

    running.wait_for_more_acks(PER_PHASE, "acks before node 2 is killed");
    nodes[2].kill9();
    running.wait_for_more_acks(PER_PHASE, "acks after node 2 was killed");
    let reports = running.finish();
    check_after_node_2_died(&nodes, &reports, &homes, "n");
}

#[test]
fn a_node_killed_while_redis_is_down_loses_nothing_its_clients_resuming_once_redis_is_back() {
    let mut redis = Redis::start();
    let mut nodes = [node(&redis), node(&redis), node(&redis)];
    let addrs: Vec<SocketAddr> = nodes.iter().map(TestServer::addr).collect();
    let seats = seat_everyone(&addrs, |k, i| if k == 2 { addrs[i % 2] } else { addrs[k] });
    let homes: Vec<usize> = (0..SENDERS).map(|i| i % 3).chain(0..3).collect();
    let mut running = Running::start(seats);

    running.wait_for_more_acks(PER_PHASE, "acks before Redis is killed");
    redis.kill();
    running.wait_for_more_refusals(DOWN_REFUSALS, "sends refused while Redis is down");
    // Node 2 dies with sends of its clients refused or in flight; they resume on the other
    // nodes, which cannot log them in or load rooms until Redis is back.
    nodes[2].kill9();
    running.wait_for_more_refusals(DOWN_REFUSALS, "sends refused after node 2 died");
    redis.kill_and_restart();
    running.wait_for_more_acks(PER_PHASE, "acks after Redis is back");
    let resumes_refused = running.load.resumes_refused.load(Ordering::SeqCst);
    assert!(
        resumes_refused > 0,
        "node 2's clients tried to resume while Redis was down, and were refused"
    );
    let reports = running.finish();
    check_after_node_2_died(&nodes, &reports, &homes, "d");
}

/// A TCP proxy in front of Redis that, once armed, cuts the first connection whose traffic to
/// Redis contains a marker, right after passing that traffic on: Redis runs the command but its
/// answer never arrives, as when Redis dies between its fsync and its reply.
struct CuttingProxy {
    port: u16,
    armed: Arc<AtomicBool>,
}

impl CuttingProxy {
    fn start(redis_port: u16, marker: &'static [u8]) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("bound").port();
        let armed = Arc::new(AtomicBool::new(false));
        let arm = armed.clone();
        thread::spawn(move || {
            for node in listener.incoming() {
                let Ok(node) = node else { return };
                let Ok(redis) = TcpStream::connect(("127.0.0.1", redis_port)) else {
                    continue;
                };
                let cut = Arc::new(AtomicBool::new(false));
                let (mut from_node, mut to_redis) =
                    (node.try_clone().unwrap(), redis.try_clone().unwrap());
                let (armed, cut_here) = (arm.clone(), cut.clone());
                thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = from_node.read(&mut buf).unwrap_or(0);
                        if n == 0 {
                            let _ = to_redis.shutdown(Shutdown::Write);
                            return;
                        }
                        let chunk = &buf[..n];
                        let hit = chunk.windows(marker.len()).any(|w| w == marker)
                            && armed.swap(false, Ordering::SeqCst);
                        if hit {
                            // Nothing Redis answers from now on reaches the node.
                            cut_here.store(true, Ordering::SeqCst);
                        }
                        if to_redis.write_all(chunk).is_err() {
                            return;
                        }
                        if hit {
                            // A FIN after the command (never a reset, which could drop it):
                            // Redis runs it, then sees the connection end.
                            let _ = to_redis.shutdown(Shutdown::Write);
                            let _ = from_node.shutdown(Shutdown::Both);
                            return;
                        }
                    }
                });
                let (mut from_redis, mut to_node) = (redis, node);
                thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = from_redis.read(&mut buf).unwrap_or(0);
                        if n == 0 {
                            let _ = to_node.shutdown(Shutdown::Both);
                            return;
                        }
                        if !cut.load(Ordering::SeqCst) && to_node.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        CuttingProxy { port, armed }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Cuts the next connection that carries the marker to Redis.
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

/// PROTOCOL.md 9: an error stores and broadcasts nothing, except a write that failed while it
/// was being made, whose `internal` says the message "may still be stored". In cluster mode
/// that is every send whose link to Redis broke after the script was sent: here Redis runs it
/// and the answer is lost on the way.
#[test]
fn a_send_whose_answer_from_redis_is_lost_is_refused_as_may_still_be_stored_and_resent_once() {
    let redis = Redis::start();
    let proxy = CuttingProxy::start(redis.port, b"cut-here");
    let a = TestServer::start(&["--cluster", &proxy.url()]);
    let b = node(&redis);
    let mut alice = a.register("alice");
    alice.join("general");
    let mut bob = b.register("bob");
    bob.join("general");
    alice.wait_for(T, |v| v["type"] == "presence" && v["user"] == "bob");
    // A first send loads the append script into Redis (else the cut send would only ask for it).
    let (first, _) = alice.say_cid("general", "warm-up", "c0");
    bob.wait_for(T, |v| v["type"] == "message");

    proxy.arm();
    let send = json!({"type":"send","room":"general","text":"cut-here","cid":"c1"});
    alice.send_json(&send);
    // Redis stored it: the other node delivers it.
    let (stored, _) = bob.wait_for(Duration::from_secs(10), |v| v["type"] == "message");
    assert_eq!(
        (stored["text"].as_str(), stored["cid"].as_str()),
        (Some("cut-here"), Some("c1"))
    );
    let id = id_of(&stored);
    // Alice hears `internal` for it (the answer was lost), and, from her node's feed, its ack
    // and her copy, in some order between the two.
    let (mut refused, mut copied) = (None, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused.is_none() || !copied {
        let v = alice.recv_json(deadline.saturating_duration_since(Instant::now()));
        match v["type"].as_str() {
            Some("error") => refused = Some(v),
            Some("ack") => assert_eq!((v["cid"].as_str(), id_of(&v)), (Some("c1"), id), "{v}"),
            Some("message") => {
                assert_eq!(id_of(&v), id, "{v}");
                copied = true;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    let refused = refused.unwrap();
    assert_eq!(
        (refused["code"].as_str(), refused["ref"].as_str()),
        (Some("internal"), Some("c1"))
    );
    let said = refused["message"].as_str().unwrap_or_default();
    assert!(
        said.contains("may still be stored"),
        "the refusal of a send that was stored must say it may be: {refused}"
    );
    // The resend with the same cid gets the original ack and stores nothing.
    alice.send_json(&send);
    let (ack, _) = alice.wait_for(T, |v| v["type"] == "ack");
    assert_eq!(id_of(&ack), id, "{ack}");
    let history = alice.history(json!({"type":"history","room":"general","limit":50}));
    assert_eq!(message_ids(&history), vec![id_of(&first), id]);
    bob.assert_quiet("nothing stored twice");
}
