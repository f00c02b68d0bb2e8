//! The conversation list (issue 9): `rooms` request → reply latency for a user in 200 rooms of
//! 10,000 messages each, in three read states, against a `ping` on the same connection in the
//! same run (the ratio shows what `rooms` itself costs over a round trip through the session).
//!
//! The database is built before the server starts with `chatd admin import` (a file of 25 rooms
//! per call): 200 rooms `room-001…`, 10,000 messages each with interleaved ids as live
//! traffic would give them, ~80-byte texts by 12 authors; 5 % of the messages mention the
//! measured users (`@reader-0 @reader-1 …`), another 10 % mention an author. Each run measures a
//! fresh reader (`reader-K`, a token session from the same import), so read markers, which only
//! move forward, start at 0 in every run. Per run:
//!
//! 1. the reader resumes with its token and joins all 200 rooms (that lists them);
//! 2. **never read**: markers at 0, so every room has its 10,000 messages unread and the count
//!    stops at the cap (1000 per room);
//! 3. **50 unread**: a `read` per room up to the 51st newest message (echoes awaited);
//! 4. **caught up**: a `read` per room up to its newest id.
//!
//! In each state: a few warm-up pairs, then `--requests` pairs of `rooms` then `ping`, one at a
//! time; latency from just before the request is written until its whole reply is read. The
//! first reply of each state is checked (room count, order, and per room `last_id`, `last`,
//! `unread`, `mentions`). Server CPU per pair from /proc/PID/stat (clock ticks, coarse). The
//! machine is shared: each run first waits until no build (`rustc`, `cargo`, clippy, other than
//! this program's own `cargo bench`) has run for 10 s; a run with a window that saw one at its
//! start or end is repeated with a spare reader (at most `--runs` times) and left out of the
//! table.
//! Server pinned to core 0, this program (the client, one thread) to core 1. Median (range) of
//! the runs, all in one server process.
//!
//! Run: `cargo bench --bench rooms` (`-- --smoke`, `--runs N`, `--requests N`, `--rooms N`,
//! `--messages N` (per room), `--only never|unread50|caught-up`, `--max-wait S` (how long a run
//! waits for builds to finish first; default 1800, 0 in a smoke run), `--no-pin`). For
//! profiling, `--only never --requests 1000` and `perf record -g -p PID` on the pid it prints.

#[path = "hot/mod.rs"]
mod hot;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hot::net::frame_type;
use hot::procs::{chatd_bin, cpu_ticks, import_accounts, now_ms, start_chatd, ticks_per_sec};
use hot::setup::{quantile, Spread};
use serde_json::Value;
use tungstenite::{Message, WebSocket};

/// The server's cap on one room's unread count (`UNREAD_CAP` in src/store/conversations.rs).
const UNREAD_CAP: usize = 1000;
/// Authors of the messages (the readers never write).
const AUTHORS: usize = 12;
/// Issue 9's bar for `rooms` p99.
const BAR_P99_MS: f64 = 20.0;
/// Rooms per `chatd admin import` call (it parses its whole input before writing).
const ROOMS_PER_IMPORT: usize = 25;

const WORDS: &[&str] = &[
    "hello", "world", "chat", "server", "message", "room", "deploy", "today", "lunch", "coffee",
    "review", "merge", "ticket", "build", "green", "red", "ship", "it", "works", "on", "my",
    "machine", "please", "thanks", "later", "meeting", "now", "sled", "rust", "async",
];

/// The synthetic history: which message has which id, author and text.
struct Shape {
    rooms: usize,
    per_room: usize,
    readers: usize,
}

impl Shape {
    fn room(&self, r: usize) -> String {
        format!("room-{:03}", r + 1)
    }

    /// Ids interleave across rooms as live traffic would hand them out.
    fn id(&self, r: usize, i: usize) -> u64 {
        1 + (i * self.rooms + r) as u64
    }

    /// Message `i` of room `r` mentions every reader (5 % of the messages).
    fn mentions_readers(&self, r: usize, i: usize) -> bool {
        (i + 3 * r) % 20 == 0
    }

    /// Message `i` of room `r` mentions an author (10 %): an `@` the count must parse and reject.
    fn mentions_author(&self, r: usize, i: usize) -> bool {
        (i + r) % 10 == 5
    }

    fn text(&self, r: usize, i: usize) -> String {
        let mut seed = self.id(r, i).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut text = String::with_capacity(120);
        if self.mentions_readers(r, i) {
            for k in 0..self.readers {
                text.push_str(&format!("@reader-{k} "));
            }
        }
        if self.mentions_author(r, i) {
            text.push_str(&format!("@author-{:02} ", (i + r) % AUTHORS + 1));
        }
        while text.len() < 80 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if !text.is_empty() && !text.ends_with(' ') {
                text.push(' ');
            }
            text.push_str(WORDS[(seed % WORDS.len() as u64) as usize]);
        }
        text
    }

    /// Mentions of a reader among the newest `n` messages of room `r`.
    fn mentions_in_newest(&self, r: usize, n: usize) -> u64 {
        (self.per_room - n.min(self.per_room)..self.per_room)
            .filter(|&i| self.mentions_readers(r, i))
            .count() as u64
    }
}

/// Writes the rooms and their messages into `dir` with `chatd admin import` (server stopped).
fn import_history(dir: &Path, shape: &Shape) {
    let now = now_ms();
    let total = (shape.rooms * shape.per_room) as u64;
    let span_ms = 30 * 86_400_000u64;
    let first_ts = now - span_ms;
    let mut first = true;
    for chunk in (0..shape.rooms)
        .collect::<Vec<_>>()
        .chunks(ROOMS_PER_IMPORT)
    {
        let mut text = format!(
            "{{\"type\":\"header\",\"format\":\"chatd-export\",\"version\":1,\"exported_ms\":{now},\"id_floor\":{total}}}\n"
        );
        if first {
            for a in 1..=AUTHORS {
                text.push_str(&format!(
                    "{{\"type\":\"user\",\"name\":\"author-{a:02}\",\"created_ms\":{first_ts},\"banned\":false,\"token_epoch\":0}}\n"
                ));
            }
            first = false;
        }
        for &r in chunk {
            text.push_str(&format!(
                "{{\"type\":\"room\",\"name\":\"{}\",\"created_ms\":{first_ts},\"last_id\":{},\"count\":{}}}\n",
                shape.room(r),
                shape.id(r, shape.per_room - 1),
                shape.per_room
            ));
        }
        for &r in chunk {
            let room = shape.room(r);
            for i in 0..shape.per_room {
                let id = shape.id(r, i);
                text.push_str(&format!(
                    "{{\"type\":\"message\",\"room\":\"{room}\",\"id\":{id},\"user\":\"author-{:02}\",\"text\":\"{}\",\"ts\":{}}}\n",
                    (id as usize * 7) % AUTHORS + 1,
                    shape.text(r, i),
                    first_ts + id * span_ms / total.max(1),
                ));
            }
        }
        // `admin import` reads a file (its `-` for stdin is taken for a flag by the parser).
        let file = dir.join("bench-history.jsonl");
        std::fs::write(&file, text).expect("writing the import file");
        let out = Command::new(chatd_bin())
            .args(["admin", "import", "--json", "--data-dir"])
            .arg(dir)
            .arg(&file)
            .output()
            .expect("running chatd admin import");
        assert!(
            out.status.success(),
            "chatd admin import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&file);
    }
}

/// One blocking WebSocket client (the measured user's connection).
struct Client {
    ws: WebSocket<TcpStream>,
}

impl Client {
    fn resume(addr: SocketAddr, token: &str) -> Client {
        let tcp = TcpStream::connect(addr).expect("TCP connect");
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let (ws, _) =
            tungstenite::client(format!("ws://{addr}/ws"), tcp).expect("WebSocket handshake");
        let mut c = Client { ws };
        c.send(&format!("{{\"type\":\"auth\",\"token\":\"{token}\"}}"));
        c.until("welcome");
        c
    }

    fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// The next text frame; panics on a close or an error frame.
    fn next(&mut self) -> String {
        loop {
            match self.ws.read().expect("read") {
                Message::Text(t) => {
                    let t = t.as_str().to_owned();
                    if frame_type(t.as_bytes()) == b"error" {
                        panic!("server error: {t}");
                    }
                    return t;
                }
                Message::Close(c) => panic!("closed by the server: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Skips frames (presence, …) until one of type `kind`.
    fn until(&mut self, kind: &str) -> String {
        loop {
            let t = self.next();
            if frame_type(t.as_bytes()) == kind.as_bytes() {
                return t;
            }
        }
    }
}

/// Each room's newest id and the oldest id of the 50 its join replayed.
struct Joined {
    last_id: Vec<u64>,
    oldest_replayed: Vec<u64>,
}

fn join_all(c: &mut Client, shape: &Shape) -> Joined {
    for r in 0..shape.rooms {
        c.send(&format!(
            "{{\"type\":\"join\",\"room\":\"{}\"}}",
            shape.room(r)
        ));
    }
    let index = |v: &Value| -> usize {
        let name = v["room"].as_str().expect("room");
        name["room-".len()..].parse::<usize>().expect("room number") - 1
    };
    let mut joined = Joined {
        last_id: vec![0; shape.rooms],
        oldest_replayed: vec![u64::MAX; shape.rooms],
    };
    let mut synced = 0;
    while synced < shape.rooms {
        let v: Value = serde_json::from_str(&c.next()).expect("JSON");
        match v["type"].as_str() {
            Some("joined") => assert_eq!(v["read"], 0, "a fresh reader has marker 0: {v}"),
            Some("message") => {
                let r = index(&v);
                let id = v["id"].as_u64().expect("id");
                joined.oldest_replayed[r] = joined.oldest_replayed[r].min(id);
            }
            Some("synced") => {
                let r = index(&v);
                joined.last_id[r] = v["last_id"].as_u64().expect("last_id");
                synced += 1;
            }
            _ => {}
        }
    }
    joined
}

/// Sets every room's marker to `marker(r)` and waits for every echo.
fn mark_all(c: &mut Client, shape: &Shape, marker: impl Fn(usize) -> u64) {
    for r in 0..shape.rooms {
        c.send(&format!(
            "{{\"type\":\"read\",\"room\":\"{}\",\"id\":{}}}",
            shape.room(r),
            marker(r)
        ));
    }
    for _ in 0..shape.rooms {
        c.until("read");
    }
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Never,
    Unread50,
    CaughtUp,
}

impl State {
    const ALL: [State; 3] = [State::Never, State::Unread50, State::CaughtUp];

    fn name(self) -> &'static str {
        match self {
            State::Never => "never read (marker 0, capped at 1000/room)",
            State::Unread50 => "50 unread per room",
            State::CaughtUp => "all caught up",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            State::Never => "never",
            State::Unread50 => "unread50",
            State::CaughtUp => "caught-up",
        }
    }

    /// Unread messages per room the server must report.
    fn unread(self, shape: &Shape) -> usize {
        match self {
            State::Never => shape.per_room.min(UNREAD_CAP),
            State::Unread50 => 50.min(shape.per_room),
            State::CaughtUp => 0,
        }
    }
}

/// One state of one run.
#[derive(Clone)]
struct Window {
    /// The state's first request: the server has counted nothing in this read state yet (its
    /// unread counts are cached per room and reader, so the warm-up and the measured requests
    /// only read what changed).
    rooms_first: f64,
    rooms_p50: f64,
    rooms_p99: f64,
    rooms_max: f64,
    ping_p50: f64,
    ping_p99: f64,
    reply_bytes: usize,
    unread: u64,
    mentions: u64,
    /// Server CPU per `rooms` + `ping` pair, ms.
    cpu_ms: Option<f64>,
    /// A build (rustc, cargo) was running at the start or the end of the window.
    compiler_seen: bool,
}

/// Checks the first reply of a state against what the history holds.
fn check(reply: &str, shape: &Shape, state: State, joined: &Joined) -> (u64, u64) {
    let v: Value = serde_json::from_str(reply).expect("JSON rooms reply");
    let list = v["rooms"].as_array().expect("rooms array");
    assert_eq!(list.len(), shape.rooms, "every joined room is listed");
    let (mut unread, mut mentions) = (0, 0);
    let mut previous = u64::MAX;
    for e in list {
        let name = e["room"].as_str().expect("room");
        let r = name["room-".len()..].parse::<usize>().expect("room number") - 1;
        let last_id = e["last_id"].as_u64().expect("last_id");
        assert!(last_id <= previous, "sorted by last_id, newest first");
        previous = last_id;
        assert_eq!(last_id, joined.last_id[r], "{name}: last_id");
        assert_eq!(
            e["last"]["id"], last_id,
            "{name}: last is the newest message"
        );
        let u = e["unread"].as_u64().expect("unread");
        let m = e["mentions"].as_u64().expect("mentions");
        let want = state.unread(shape);
        assert_eq!(u, want as u64, "{name}: unread in state {}", state.flag());
        assert_eq!(
            m,
            shape.mentions_in_newest(r, want),
            "{name}: mentions in state {}",
            state.flag()
        );
        unread += u;
        mentions += m;
    }
    (unread, mentions)
}

fn measure(
    c: &mut Client,
    pid: Option<u32>,
    shape: &Shape,
    state: State,
    joined: &Joined,
    warmup: usize,
    requests: usize,
) -> Window {
    let mut rooms_us = Vec::with_capacity(requests);
    let mut ping_us = Vec::with_capacity(requests);
    let mut reply_bytes = 0;
    let mut rooms_first = Duration::ZERO;
    let mut counts = (0, 0);
    let mut cpu_before = None;
    let mut compiler_seen = compilers_running() > 0;
    for k in 0..warmup + requests {
        if k == warmup {
            cpu_before = pid.and_then(cpu_ticks);
        }
        let t = Instant::now();
        c.send("{\"type\":\"rooms\"}");
        let reply = c.until("rooms");
        let rooms = t.elapsed();
        let t = Instant::now();
        c.send(&format!("{{\"type\":\"ping\",\"t\":{k}}}"));
        c.until("pong");
        let ping = t.elapsed();
        if k == 0 {
            rooms_first = rooms;
            counts = check(&reply, shape, state, joined);
            reply_bytes = reply.len();
        }
        if k >= warmup {
            rooms_us.push(rooms.as_micros() as u64);
            ping_us.push(ping.as_micros() as u64);
        }
    }
    let cpu_ms = match (cpu_before, pid.and_then(cpu_ticks)) {
        (Some(a), Some(b)) => Some((b - a) as f64 * 1000.0 / ticks_per_sec() / requests as f64),
        _ => None,
    };
    compiler_seen |= compilers_running() > 0;
    rooms_us.sort_unstable();
    ping_us.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    Window {
        rooms_first: rooms_first.as_secs_f64() * 1000.0,
        rooms_p50: ms(quantile(&rooms_us, 0.5)),
        rooms_p99: ms(quantile(&rooms_us, 0.99)),
        rooms_max: ms(*rooms_us.last().unwrap_or(&0)),
        ping_p50: ms(quantile(&ping_us, 0.5)),
        ping_p99: ms(quantile(&ping_us, 0.99)),
        reply_bytes,
        unread: counts.0,
        mentions: counts.1,
        cpu_ms,
        compiler_seen,
    }
}

/// Our own ancestors (`cargo bench` is one of them).
fn ancestors() -> Vec<u32> {
    let mut pids = Vec::new();
    let mut pid = std::process::id();
    while pid > 1 && pids.len() < 64 {
        pids.push(pid);
        let Some(parent) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 2..];
                rest.split_whitespace().nth(1)?.parse().ok()
            })
        else {
            break;
        };
        pid = parent;
    }
    pids
}

/// Builds running beside the benchmark (`rustc`, `cargo`, clippy; not our own `cargo bench`).
fn compilers_running() -> usize {
    let ours = ancestors();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok())
                    else {
                        return false;
                    };
                    let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                    matches!(
                        comm.trim(),
                        "rustc" | "cargo" | "cargo-clippy" | "clippy-driver"
                    ) && !ours.contains(&pid)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Waits until no build has been seen for 10 s, at most `limit`; returns the time waited and
/// whether the machine is free of builds now.
fn wait_for_no_compiler(limit: Duration) -> (Duration, bool) {
    let start = Instant::now();
    let mut quiet_since = start;
    loop {
        let busy = compilers_running() > 0;
        if busy {
            quiet_since = Instant::now();
        }
        if quiet_since.elapsed() >= Duration::from_secs(10) || start.elapsed() >= limit {
            return (start.elapsed(), !busy);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let (flags, pin, _) = hot::setup::prologue();
    let runs = flags.runs.unwrap_or(if flags.smoke { 1 } else { 3 });
    let shape = Shape {
        rooms: flags.num("--rooms", 5, 200),
        per_room: flags.num("--messages", 2000, 10_000),
        // A run that a build disturbed is repeated with a spare reader (at most `runs` times).
        readers: if flags.smoke { runs } else { 2 * runs },
    };
    assert!(
        shape.per_room >= 51,
        "--messages must be at least 51 per room"
    );
    let requests = flags.num("--requests", 20, 300);
    let warmup = if flags.smoke { 2 } else { 10 };
    let max_wait = Duration::from_secs(flags.num("--max-wait", 0, 1800) as u64);
    let states: Vec<State> = match flags.get("--only") {
        Some(only) => State::ALL
            .into_iter()
            .filter(|s| s.flag() == only)
            .collect(),
        None => State::ALL.to_vec(),
    };
    assert!(
        !states.is_empty(),
        "--only takes never, unread50 or caught-up"
    );
    println!(
        "rooms: one user in {} rooms of {} messages each; {requests} `rooms` + `ping` pairs per read state ({warmup} warm-up); {runs} runs; pinning {pin:?}; load {}",
        shape.rooms,
        shape.per_room,
        loadavg()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let t = Instant::now();
    let tokens = import_accounts(dir.path(), "reader-", shape.readers);
    import_history(dir.path(), &shape);
    let du = Command::new("du")
        .args(["-sh"])
        .arg(dir.path().join("db"))
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split('\t')
                .next()
                .unwrap_or("?")
                .to_owned()
        })
        .unwrap_or_default();
    eprintln!(
        "  database: {} messages imported in {:.1} s, {du} on disk",
        shape.rooms * shape.per_room,
        t.elapsed().as_secs_f64()
    );
    let server = start_chatd(
        "chatd",
        dir.path(),
        "127.0.0.1:0",
        // No `rate_limited` on the frames measured; offline at once when a reader leaves, so
        // no presence arrives during the next run.
        &[
            "--rate",
            "1000000",
            "--burst",
            "1000000",
            "--presence-grace",
            "0s",
        ],
        pin.server_core,
    );
    eprintln!(
        "  server pid {} on {}",
        server.pid.map_or("?".into(), |p| p.to_string()),
        server.addr
    );
    // results[run][state]; a run is disturbed if a build ran beside any of its windows.
    let mut results: Vec<Vec<Window>> = Vec::new();
    let mut disturbed: Vec<bool> = Vec::new();
    for (run, token) in tokens.iter().enumerate() {
        if disturbed.iter().filter(|d| !**d).count() == runs {
            break;
        }
        // The machine is shared: never measure while something compiles.
        let (waited, quiet) = wait_for_no_compiler(max_wait);
        eprintln!(
            "  run {}: reader-{run}, load {}{}",
            run + 1,
            loadavg(),
            if !quiet {
                format!(
                    ", WARNING: a build is still running after waiting {:.0} s",
                    waited.as_secs_f64()
                )
            } else if waited >= Duration::from_secs(11) {
                format!(
                    ", waited {:.0} s for builds to finish",
                    waited.as_secs_f64()
                )
            } else {
                String::new()
            }
        );
        let mut c = Client::resume(server.addr, token);
        let t = Instant::now();
        let joined = join_all(&mut c, &shape);
        eprintln!(
            "    joined {} rooms in {:.2} s",
            shape.rooms,
            t.elapsed().as_secs_f64()
        );
        let mut windows = Vec::new();
        for state in State::ALL {
            match state {
                State::Never => {}
                State::Unread50 => mark_all(&mut c, &shape, |r| joined.oldest_replayed[r] - 1),
                State::CaughtUp => mark_all(&mut c, &shape, |r| joined.last_id[r]),
            }
            if !states.contains(&state) {
                continue;
            }
            let w = measure(&mut c, server.pid, &shape, state, &joined, warmup, requests);
            eprintln!(
                "    {}: rooms first {:.2} ms p50 {:.2} ms p99 {:.2} ms max {:.2} ms; ping p50 {:.3} ms p99 {:.3} ms; {} B; unread {} mentions {}; server CPU {} ms/pair{}",
                state.name(),
                w.rooms_first,
                w.rooms_p50,
                w.rooms_p99,
                w.rooms_max,
                w.ping_p50,
                w.ping_p99,
                w.reply_bytes,
                w.unread,
                w.mentions,
                w.cpu_ms.map_or("n/a".into(), |c| format!("{c:.2}")),
                if w.compiler_seen {
                    "  <-- a build ran during this window"
                } else {
                    ""
                },
            );
            windows.push(w);
        }
        let _ = c.ws.close(None);
        let spoilt = windows.iter().any(|w| w.compiler_seen);
        if spoilt && run + 1 < tokens.len() {
            eprintln!(
                "    (a build ran beside this run: it is repeated and left out of the table)"
            );
        }
        disturbed.push(spoilt);
        results.push(windows);
        std::thread::sleep(Duration::from_millis(200));
    }
    let clean = disturbed.iter().filter(|d| !**d).count();
    // The clean runs when there are enough of them, else every run (flagged below).
    let counted: Vec<usize> = (0..results.len())
        .filter(|&r| clean < runs || !disturbed[r])
        .collect();
    println!();
    println!(
        "| read state | unread / mentions (all rooms) | reply bytes | first rooms ms | rooms p50 ms | rooms p99 ms | rooms max ms | ping p50 ms | ping p99 ms | rooms / ping, p50 | rooms / ping, p99 | server CPU ms per request | p99 ≤ {BAR_P99_MS} ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (slot, state) in states.iter().enumerate() {
        let ws: Vec<&Window> = counted.iter().map(|&r| &results[r][slot]).collect();
        let sp = |f: fn(&Window) -> f64| Spread::of(&ws.iter().map(|w| f(w)).collect::<Vec<_>>());
        let p99 = sp(|w| w.rooms_p99);
        let ping99 = sp(|w| w.ping_p99);
        let ratios = sp;
        println!(
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {}× | {}× | {} | {} |",
            state.name(),
            ws.first().map_or(0, |w| w.unread),
            ws.first().map_or(0, |w| w.mentions),
            ws.first().map_or(0, |w| w.reply_bytes),
            sp(|w| w.rooms_first).show(2),
            sp(|w| w.rooms_p50).show(2),
            p99.show(2),
            sp(|w| w.rooms_max).show(2),
            sp(|w| w.ping_p50).show(3),
            ping99.show(3),
            ratios(|w| w.rooms_p50 / w.ping_p50).show(0),
            ratios(|w| w.rooms_p99 / w.ping_p99).show(1),
            Spread::of(&ws.iter().filter_map(|w| w.cpu_ms).collect::<Vec<_>>()).show(2),
            if p99.med <= BAR_P99_MS { "yes" } else { "no" },
        );
    }
    println!(
        "\nMedian (range) of {} run(s){}.",
        counted.len(),
        if clean < runs {
            format!(
                ", {} of them with a build running beside them (no spare reader left)",
                counted.len() - clean
            )
        } else if clean < results.len() {
            format!(
                "; {} run(s) with a build beside them were repeated and are left out",
                results.len() - clean
            )
        } else {
            String::new()
        }
    );
    println!("\nload at the end: {}", loadavg());
}
