//! Soak: many short-lived clients churning against one server, with hostile frames mixed in,
//! while one watcher per room checks the ordering and delivery guarantees.
//!
//! Churners connect, resume with a token, join rooms (with `since`), send bursts with cids,
//! page history, leave or just drop, and now and then send garbage, binary or oversized frames
//! (which close their connection). Watchers stay connected. At the end it checks:
//! - every watcher saw strictly increasing ids in its room, and every acked id of that room;
//! - the server is healthy, its connection count returned to the watchers alone;
//! - resident memory after the churn, against the level before it (leak check);
//! - the server's resident memory, open files and threads, sampled through the run, stay flat:
//!   after the first third (warm-up: the page cache filling, allocator arenas, the database's
//!   in-memory index growing from empty) memory grows by at most 10 % + 8 MiB, and once the churn ends open files and threads are back to where they were
//!   before it, so no connection leaks a socket or a task.
//!
//! Exits non-zero if a check fails.
//! Run: `cargo bench --bench soak` (CHATD_SOAK_SECONDS, CHATD_SOAK_CLIENTS, and
//! CHATD_SOAK_MAX_BURST — sends per session, 0 for connection churn alone — to change).
//! CI runs it for 60 s; docs/BENCHMARKS.md has a 30-minute run.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use futures_lite::StreamExt;
use serde_json::{json, Value};
use support::*;

const ROOMS: usize = 8;

/// Memory the embedded database keeps per stored message (the message and its cid entry), on
/// top of its page cache. Measured: a database of 2,000,000 messages opened with an 8 MiB cache
/// holds 71 MB resident, one of 500,000 holds 22 MB, so about 33 bytes per key; twice that for
/// the two keys of a message with a cid.
const INDEX_BYTES_PER_MESSAGE: u64 = 64;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift: deterministic per task, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

#[derive(Default)]
struct Tally {
    sessions: u64,
    acked: u64,
    hostile: u64,
    histories: u64,
    /// room index -> acked ids
    acks: HashMap<usize, BTreeSet<u64>>,
}

fn main() {
    let seconds = env("CHATD_SOAK_SECONDS", 30);
    let clients = env("CHATD_SOAK_CLIENTS", 200);
    println!(
        "soak: {clients} churning clients over {ROOMS} rooms for {seconds} s, one watcher per room"
    );
    let server = start_chatd(
        "chatd",
        &[
            "--rate",
            "1000",
            "--burst",
            "1000",
            "--presence-grace",
            "200ms",
            "--send-queue",
            "65536",
            // A small page cache fills within the warm-up, so growth after it is a leak, not
            // the cache filling up to its bound.
            "--cache-mb",
            "8",
        ],
    );
    let ok = smol::block_on(soak(&server, seconds, clients));
    // Stops the server first: `exit` skips destructors, and the server would outlive the bench.
    drop(server);
    if !ok {
        std::process::exit(1);
    }
}

async fn soak(server: &ServerProcess, seconds: u64, clients: u64) -> bool {
    let addr = server.addr;
    let pid = server.child.id();
    let mut tokens = Vec::new();
    for u in 0..20 {
        tokens.push(register(addr, &format!("soaker{u}")).await.1);
    }
    let seen: Arc<Mutex<HashMap<usize, Vec<u64>>>> = Arc::default();
    let mut watchers = Vec::new();
    for r in 0..ROOMS {
        let mut ws = connect(addr).await;
        send(&mut ws, json!({"type":"auth","token":tokens[0]})).await;
        recv_type(&mut ws, "welcome").await;
        send(&mut ws, json!({"type":"join","room":format!("soak-{r}")})).await;
        recv_type(&mut ws, "synced").await;
        let seen = seen.clone();
        watchers.push(smol::spawn(async move {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap_or_default();
                        if v["type"] == "message" {
                            let id = v["id"].as_u64().unwrap_or(0);
                            seen.lock().unwrap().entry(r).or_default().push(id);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        }));
    }
    let rss_before = rss_kib(pid);
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let before = Sample::take(pid, addr, Duration::ZERO, &tally).await;
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let every = Duration::from_secs((seconds / 12).clamp(5, 150));
    let sampled = tally.clone();
    let sampler = smol::spawn(async move {
        let mut samples = Vec::new();
        while Instant::now() + every < end {
            smol::Timer::after(every).await;
            samples.push(Sample::take(pid, addr, started.elapsed(), &sampled).await);
        }
        samples
    });
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let tokens = tokens.clone();
            let tally = tally.clone();
            smol::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (c + 1).wrapping_mul(0x1000_0001));
                let mut n = 0u64;
                while Instant::now() < end {
                    churn_once(addr, &tokens, &mut rng, c, &mut n, &tally).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    let samples = sampler.await;
    let churn = started.elapsed();
    // Let the last broadcasts reach the watchers: wait until their counts stop changing.
    let mut last = usize::MAX;
    loop {
        smol::Timer::after(Duration::from_millis(500)).await;
        let now: usize = seen.lock().unwrap().values().map(Vec::len).sum();
        if now == last {
            break;
        }
        last = now;
    }
    // Connections close asynchronously; poll /healthz with a deadline until only watchers remain.
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let h = healthz(addr);
        if h["connections"].as_u64() == Some(ROOMS as u64) || Instant::now() > deadline {
            break h;
        }
        smol::Timer::after(Duration::from_millis(100)).await;
    };
    let rss_after = rss_kib(pid);
    let after = Sample::take(pid, addr, started.elapsed(), &tally).await;
    let tally = tally.lock().unwrap();
    let seen = seen.lock().unwrap();
    let mut ok = true;
    for r in 0..ROOMS {
        let ids = seen.get(&r).cloned().unwrap_or_default();
        if !ids.windows(2).all(|w| w[0] < w[1]) {
            println!("FAIL room {r}: the watcher saw ids out of order");
            ok = false;
        }
        let got: BTreeSet<u64> = ids.into_iter().collect();
        let acked = tally.acks.get(&r).cloned().unwrap_or_default();
        let missing = acked.difference(&got).count();
        if missing > 0 {
            println!("FAIL room {r}: {missing} acked messages never reached the watcher");
            ok = false;
        }
    }
    if health["ok"] != true || health["connections"].as_u64() != Some(ROOMS as u64) {
        println!("FAIL health after churn: {health}");
        ok = false;
    }
    println!(
        "{} sessions, {} acked sends ({:.0}/s), {} history pages, {} hostile frames in {:.1?}",
        tally.sessions,
        tally.acked,
        tally.acked as f64 / churn.as_secs_f64(),
        tally.histories,
        tally.hostile,
        churn
    );
    println!(
        "server RSS: {rss_before} KiB before the churn, {rss_after} KiB after it; health {health}"
    );
    println!("| at | acked sends | server RSS KiB | open files | threads | connections |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for s in std::iter::once(&before).chain(&samples).chain([&after]) {
        println!(
            "| {:.0} s | {} | {} | {} | {} | {} |",
            s.at.as_secs_f64(),
            s.stored,
            s.rss_kib,
            s.open_files,
            s.threads,
            s.connections
        );
    }
    ok &= flat(&before, &samples, &after);
    println!(
        "{}",
        if ok {
            "soak: all checks passed"
        } else {
            "soak: CHECKS FAILED"
        }
    );
    drop(watchers);
    ok
}

/// What the server holds at one moment of the run.
struct Sample {
    at: Duration,
    /// Acked sends so far.
    stored: u64,
    rss_kib: u64,
    open_files: usize,
    threads: u64,
    connections: u64,
}

impl Sample {
    async fn take(
        pid: u32,
        addr: std::net::SocketAddr,
        at: Duration,
        tally: &Mutex<Tally>,
    ) -> Sample {
        let health = smol::unblock(move || healthz(addr)).await;
        let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Threads:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        Sample {
            at,
            stored: tally.lock().unwrap().acked,
            rss_kib: rss_kib(pid),
            open_files: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
            threads,
            connections: health["connections"].as_u64().unwrap_or(0),
        }
    }
}

/// Memory flat after the warm-up third (beyond the database's index for what was stored since);
/// files and threads back to their level before the churn.
fn flat(before: &Sample, during: &[Sample], after: &Sample) -> bool {
    let mut ok = true;
    let warm = during.get(during.len() / 3).unwrap_or(before);
    for late in during.iter().skip(during.len() / 3).chain([after]) {
        let index_kib = late.stored.saturating_sub(warm.stored) * INDEX_BYTES_PER_MESSAGE / 1024;
        let allowed = warm.rss_kib + warm.rss_kib / 10 + 8 * 1024 + index_kib;
        if late.rss_kib > allowed {
            println!(
                "FAIL memory grew after the warm-up: {} KiB at {:.0} s → {} KiB at {:.0} s (allowed {allowed}, of which {index_kib} for the {} messages stored since)",
                warm.rss_kib,
                warm.at.as_secs_f64(),
                late.rss_kib,
                late.at.as_secs_f64(),
                late.stored - warm.stored
            );
            ok = false;
            break;
        }
    }
    if after.open_files > before.open_files + 2 {
        println!(
            "FAIL open files: {} before the churn, {} after it",
            before.open_files, after.open_files
        );
        ok = false;
    }
    if after.threads > before.threads {
        println!(
            "FAIL threads: {} before the churn, {} after it",
            before.threads, after.threads
        );
        ok = false;
    }
    ok
}

fn healthz(addr: std::net::SocketAddr) -> Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect for /healthz");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    let json = body.split("\r\n\r\n").nth(1).unwrap_or("{}");
    serde_json::from_str(json).unwrap_or_default()
}

/// One client session: connect, resume, do a few things, go away (politely or not).
async fn churn_once(
    addr: std::net::SocketAddr,
    tokens: &[String],
    rng: &mut Rng,
    client: u64,
    n: &mut u64,
    tally: &Mutex<Tally>,
) {
    let mut ws = connect(addr).await;
    let token = &tokens[rng.next(tokens.len() as u64) as usize];
    send(&mut ws, json!({"type":"auth","token":token})).await;
    recv_type(&mut ws, "welcome").await;
    tally.lock().unwrap().sessions += 1;
    let room = rng.next(ROOMS as u64) as usize;
    let name = format!("soak-{room}");
    send(
        &mut ws,
        json!({"type":"join","room":name,"since":rng.next(1000)}),
    )
    .await;
    recv_type(&mut ws, "synced").await;
    let burst = rng.next(env("CHATD_SOAK_MAX_BURST", 20));
    let mut pending: HashMap<String, ()> = HashMap::new();
    for _ in 0..burst {
        *n += 1;
        let cid = format!("c{client}-{n}");
        pending.insert(cid.clone(), ());
        send(
            &mut ws,
            json!({"type":"send","room":name,"text":format!("soak {client} {n}"),"cid":cid}),
        )
        .await;
    }
    let mut acked = Vec::new();
    while !pending.is_empty() {
        let v = recv(&mut ws, Duration::from_secs(30)).await;
        if v["type"] == "ack" {
            if let Some(cid) = v["cid"].as_str() {
                if pending.remove(cid).is_some() {
                    acked.push(v["id"].as_u64().unwrap_or(0));
                }
            }
        }
    }
    if rng.next(3) == 0 {
        send(&mut ws, json!({"type":"history","room":name,"limit":50})).await;
        recv_type(&mut ws, "history").await;
        tally.lock().unwrap().histories += 1;
    }
    let hostile = rng.next(10);
    {
        let mut t = tally.lock().unwrap();
        t.acked += acked.len() as u64;
        t.acks.entry(room).or_default().extend(acked);
        if hostile < 2 {
            t.hostile += 1;
        }
    }
    match hostile {
        0 => {
            let _ = ws.send(Message::binary(vec![0u8; 16])).await;
        }
        1 => {
            let _ = ws.send(Message::text("x".repeat(70_000))).await;
        }
        2 => {
            send(&mut ws, json!({"type":"leave","room":name})).await;
            recv_type(&mut ws, "left").await;
            let _ = ws.close(None).await;
        }
        _ => {} // just drop the connection
    }
}
