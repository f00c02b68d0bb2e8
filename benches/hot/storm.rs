//! Reconnect storm (issue 7 item 6): N clients, each a different account, joined to one of R
//! rooms, one publisher per room sending with cids; the server is SIGTERMed and started again on
//! the same port and data directory; every client reconnects (token resume, `join` with `since` =
//! the last id it saw; publishers re-send an unacked send with the same cid). Measured: time from
//! "listening again" to every client `synced`, messages missed (every acked id of a client's room
//! after its first join must arrive, in increasing order), and ping round trips of two witness
//! clients (one joined to every room, one to none) from "listening again" to "all synced".
//!
//! Client reconnect policy (a good client per PROTOCOL.md, with a short cap so the figure is
//! about the server): after a close, wait U(0, 500 ms); after a failed attempt, full jitter
//! U(0, min(1 s, 250 ms × 2^k)). A connection attempt not open within 15 s is abandoned and retried.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::net::{field_str, field_u64, frame_type, Ev, Net};
use super::procs::{import_accounts, start_chatd};
use super::setup::{micros, quantile};

#[derive(Clone, Debug)]
pub struct Cfg {
    pub clients: usize,
    pub rooms: usize,
    /// Each room's publisher sends one message per this interval.
    pub publish_every: Duration,
    /// Messages flowing before each restart.
    pub steady: Duration,
    pub restarts: usize,
    /// Give up waiting for all clients synced after this long.
    pub sync_limit: Duration,
    pub server_core: Option<usize>,
}

#[derive(Clone, Debug, Default)]
pub struct Run {
    /// SIGTERM → the old process exited (graceful shutdown).
    pub shutdown_secs: f64,
    /// Process start → `listening on` of the new server.
    pub restart_secs: f64,
    /// `listening on` → every client synced (None: not within the limit).
    pub all_synced_secs: Option<f64>,
    pub synced: usize,
    pub clients: usize,
    pub sync_p50_secs: f64,
    pub sync_p99_secs: f64,
    pub attempts: u64,
    pub failed_attempts: u64,
    pub missed: u64,
    pub disorder: u64,
    pub witness_rooms_p99_ms: f64,
    pub witness_rooms_pings: usize,
    /// When the witness joined to every room was synced again (from "listening").
    pub witness_rooms_synced_secs: Option<f64>,
    pub witness_plain_p50_ms: f64,
    pub witness_plain_p99_ms: f64,
    pub witness_plain_pings: usize,
    /// Close codes clients got other than the restart's 1001 (4008 etc.), with counts.
    pub other_closes: Vec<(Option<u16>, u64)>,
    pub errors: u64,
    pub acked_total: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    Down,
    Connecting,
    Authing,
    Joining(usize),
    Live,
}

impl St {
    /// Between a connection attempt and being live.
    fn attempting(self) -> bool {
        matches!(self, St::Connecting | St::Authing | St::Joining(_))
    }
}

struct Client {
    st: St,
    token: String,
    rooms: Vec<usize>,
    /// Per room: last id seen (None before the first synced).
    last: Vec<Option<u64>>,
    /// Per room: the last id at the first `synced` (what came before is not checked).
    base: Vec<Option<u64>>,
    /// Per room: ids received after the first join, in arrival order.
    ids: Vec<Vec<u64>>,
    disorder: u64,
    retry: u32,
    /// When the current connection's attempt began: abandoned if not live 15 s later, and
    /// after the old server exited it can only have reached the new one.
    connected_at: Option<Instant>,
    synced_at: Option<Instant>,
    /// Publisher: the send awaiting its ack (cid, frame).
    in_flight: Option<String>,
    next_send: Instant,
    sent: u64,
    /// Witness: pings sent at (micros) awaiting pong, by `t`.
    pinged: u64,
}

/// An event copied out of the generator: (connection, text, closed with, opened, time).
type Queued = (usize, Option<Vec<u8>>, Option<Option<u16>>, bool, Instant);

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

struct World {
    cfg: Cfg,
    net: Net,
    cs: Vec<Client>,
    addr: SocketAddr,
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    rng: Rng,
    acked: Vec<Vec<u64>>,
    publishing: bool,
    /// Record witness samples and close codes from this time.
    window_from: Option<Instant>,
    /// Witness pings answered: (sent at, micros; round trip, micros).
    ping_rooms: Vec<(u64, u32)>,
    ping_plain: Vec<(u64, u32)>,
    attempts: u64,
    failed: u64,
    closes: Vec<(Option<u16>, u64)>,
    errors: u64,
    par: Option<usize>,
}

const W_ROOMS: usize = 0; // offset from cfg.clients
const W_PLAIN: usize = 1;

impl World {
    fn room_name(r: usize) -> String {
        format!("storm-{r}")
    }

    fn schedule(&mut self, i: usize, after: Duration) {
        self.due.push(Reverse((Instant::now() + after, i)));
    }

    fn in_progress(&self) -> usize {
        self.cs.iter().filter(|c| c.st.attempting()).count()
    }

    fn start_due(&mut self) {
        let now = Instant::now();
        let mut budget = self.par.map(|p| p.saturating_sub(self.in_progress()));
        while let Some(Reverse((at, i))) = self.due.peek().copied() {
            if at > now || budget == Some(0) {
                break;
            }
            self.due.pop();
            if self.cs[i].st != St::Down {
                continue;
            }
            self.attempts += 1;
            match self.net.connect(i, self.addr) {
                Ok(()) => {
                    self.cs[i].st = St::Connecting;
                    // Not `now`: a storm's worth of connects takes tens of milliseconds.
                    self.cs[i].connected_at = Some(Instant::now());
                    if let Some(b) = &mut budget {
                        *b -= 1;
                    }
                }
                Err(_) => {
                    self.failed += 1;
                    let d = self.backoff(i);
                    self.schedule(i, d);
                }
            }
        }
        // Abandon attempts stuck for 15 s.
        for i in 0..self.cs.len() {
            let attempting = self.cs[i].st.attempting();
            if let Some(t) = self.cs[i].connected_at.filter(|_| attempting) {
                if now.saturating_duration_since(t) > Duration::from_secs(15) {
                    self.net.close(i);
                    self.down(i, None, false);
                }
            }
        }
    }

    fn backoff(&mut self, i: usize) -> Duration {
        let c = &mut self.cs[i];
        c.retry = (c.retry + 1).min(10);
        let is_witness = i >= self.cfg.clients;
        let cap_ms = if is_witness {
            50
        } else {
            (250u64 << c.retry.min(6)).min(1000)
        };
        Duration::from_millis(self.rng.below(cap_ms + 1))
    }

    fn down(&mut self, i: usize, code: Option<u16>, was_open: bool) {
        let c = &mut self.cs[i];
        c.st = St::Down;
        c.synced_at = None;
        if self.window_from.is_some() && code != Some(1001) && was_open {
            match self.closes.iter_mut().find(|(k, _)| *k == code) {
                Some((_, n)) => *n += 1,
                None => self.closes.push((code, 1)),
            }
        }
        let d = if was_open {
            self.cs[i].retry = 0;
            let cap = if i >= self.cfg.clients { 50 } else { 500 };
            Duration::from_millis(self.rng.below(cap))
        } else {
            self.failed += 1;
            self.backoff(i)
        };
        self.schedule(i, d);
    }

    fn on_event(&mut self, i: usize, ev: Ev<'_>, at: Instant) {
        match ev {
            Ev::Opened => {
                let f = format!("{{\"type\":\"auth\",\"token\":\"{}\"}}", self.cs[i].token);
                self.net.send(i, f.as_bytes());
                self.cs[i].st = St::Authing;
            }
            Ev::Closed(code) => {
                let was_open = !matches!(self.cs[i].st, St::Connecting);
                self.down(i, code, was_open);
            }
            Ev::Text(p) => {
                let kind = frame_type(p);
                match kind {
                    b"welcome" => {
                        let c = &mut self.cs[i];
                        let n = c.rooms.len();
                        let mut out = Vec::new();
                        for (k, &r) in c.rooms.iter().enumerate() {
                            let since = c.last[k]
                                .map(|l| format!(",\"since\":{l}"))
                                .unwrap_or_default();
                            out.push(format!(
                                "{{\"type\":\"join\",\"room\":\"{}\"{since}}}",
                                Self::room_name(r)
                            ));
                        }
                        c.st = if n == 0 { St::Live } else { St::Joining(n) };
                        if n == 0 {
                            c.synced_at = Some(at);
                        }
                        for f in out {
                            self.net.send(i, f.as_bytes());
                        }
                    }
                    b"message" => {
                        let (Some(id), Some(room)) =
                            (field_u64(p, b"\"id\":"), field_str(p, b"\"room\":\""))
                        else {
                            return;
                        };
                        let c = &mut self.cs[i];
                        let Some(k) = c
                            .rooms
                            .iter()
                            .position(|&r| Self::room_name(r).as_bytes() == room)
                        else {
                            return;
                        };
                        if let Some(l) = c.last[k] {
                            if id > l {
                                c.ids[k].push(id);
                                c.last[k] = Some(id);
                            } else {
                                c.disorder += 1;
                            }
                        }
                    }
                    b"synced" => {
                        let room = field_str(p, b"\"room\":\"").unwrap_or(b"");
                        let last_id = field_u64(p, b"\"last_id\":").unwrap_or(0);
                        let c = &mut self.cs[i];
                        if let Some(k) = c
                            .rooms
                            .iter()
                            .position(|&r| Self::room_name(r).as_bytes() == room)
                        {
                            if c.last[k].is_none() {
                                c.last[k] = Some(last_id);
                                c.base[k] = Some(last_id);
                            }
                        }
                        if let St::Joining(left) = c.st {
                            if left <= 1 {
                                c.st = St::Live;
                                c.synced_at = Some(at);
                                c.retry = 0;
                                // A publisher re-sends what was not acked, with the same cid.
                                if let Some(f) = c.in_flight.clone() {
                                    self.net.send(i, f.as_bytes());
                                }
                            } else {
                                c.st = St::Joining(left - 1);
                            }
                        }
                    }
                    b"ack" => {
                        let c = &mut self.cs[i];
                        if c.in_flight.take().is_some() {
                            if let Some(id) = field_u64(p, b"\"id\":") {
                                let r = c.rooms[0];
                                self.acked[r].push(id);
                            }
                        }
                    }
                    b"pong" => {
                        if let Some(t) = field_u64(p, b"\"t\":") {
                            let rtt = micros(at).saturating_sub(t) as u32;
                            if i == self.cfg.clients + W_ROOMS {
                                self.ping_rooms.push((t, rtt));
                            } else {
                                self.ping_plain.push((t, rtt));
                            }
                        }
                    }
                    b"error" => self.errors += 1,
                    _ => {}
                }
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        // Publishers: client r publishes in room r.
        if self.publishing {
            for r in 0..self.cfg.rooms.min(self.cfg.clients) {
                let c = &mut self.cs[r];
                if c.st == St::Live && c.in_flight.is_none() && now >= c.next_send {
                    c.sent += 1;
                    let f = format!(
                        "{{\"type\":\"send\",\"room\":\"{}\",\"text\":\"storm message {} from publisher {r}\",\"cid\":\"p{r}-{}\"}}",
                        Self::room_name(r),
                        c.sent,
                        c.sent
                    );
                    c.in_flight = Some(f.clone());
                    c.next_send = now + self.cfg.publish_every;
                    self.net.send(r, f.as_bytes());
                }
            }
        }
        // Witnesses ping every 20 ms.
        for w in [W_ROOMS, W_PLAIN] {
            let i = self.cfg.clients + w;
            let c = &mut self.cs[i];
            if c.st == St::Live && now >= c.next_send {
                c.next_send = now + Duration::from_millis(20);
                c.pinged += 1;
                let f = format!("{{\"type\":\"ping\",\"t\":{}}}", micros(now));
                self.net.send(i, f.as_bytes());
            }
        }
        self.start_due();
    }

    fn pump(&mut self) {
        let mut evs: Vec<Queued> = Vec::new();
        // Collect first (the handler needs the whole world, the net is borrowed while pumping).
        self.net
            .pump(Duration::from_millis(2), |i, _, ev, at| match ev {
                Ev::Opened => evs.push((i, None, None, true, at)),
                Ev::Text(p) => evs.push((i, Some(p.to_vec()), None, false, at)),
                Ev::Closed(c) => evs.push((i, None, Some(c), false, at)),
            });
        for (i, text, closed, opened, at) in evs {
            if opened {
                self.on_event(i, Ev::Opened, at);
            } else if let Some(t) = text {
                self.on_event(i, Ev::Text(&t), at);
            } else if let Some(c) = closed {
                self.on_event(i, Ev::Closed(c), at);
            }
        }
        self.tick();
    }

    fn clients_live(&self) -> usize {
        self.cs[..self.cfg.clients]
            .iter()
            .filter(|c| c.st == St::Live)
            .count()
    }

    /// Missed acked ids and disorder over all clients so far.
    fn check(&self) -> (u64, u64) {
        let mut missed = 0;
        let mut disorder = 0;
        for c in &self.cs[..self.cfg.clients] {
            disorder += c.disorder;
            for (k, &r) in c.rooms.iter().enumerate() {
                let Some(base) = c.base[k] else { continue };
                let got = &c.ids[k];
                for id in self.acked[r].iter().filter(|&&id| id > base) {
                    if got.binary_search(id).is_err() {
                        missed += 1;
                    }
                }
            }
        }
        (missed, disorder)
    }
}

/// Runs the whole storm scenario: accounts, server, clients, `cfg.restarts` restarts.
pub fn run(cfg: &Cfg, mut log: impl FnMut(&str)) -> Result<Vec<Run>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data: PathBuf = dir.path().to_path_buf();
    let n = cfg.clients + 2;
    let tokens = import_accounts(&data, "c", n);
    let extra = ["--max-connections", "20000"];
    let mut server = start_chatd("chatd", &data, "127.0.0.1:0", &extra, cfg.server_core);
    let addr = server.addr;
    let mut cs = Vec::with_capacity(n);
    for (i, token) in tokens.into_iter().enumerate() {
        let rooms: Vec<usize> = if i < cfg.clients {
            vec![i % cfg.rooms]
        } else if i == cfg.clients + W_ROOMS {
            (0..cfg.rooms).collect()
        } else {
            Vec::new()
        };
        cs.push(Client {
            st: St::Down,
            token,
            last: vec![None; rooms.len()],
            base: vec![None; rooms.len()],
            ids: vec![Vec::new(); rooms.len()],
            rooms,
            disorder: 0,
            retry: 0,
            connected_at: None,
            synced_at: None,
            in_flight: None,
            next_send: Instant::now(),
            sent: 0,
            pinged: 0,
        });
    }
    let mut w = World {
        cfg: cfg.clone(),
        net: Net::new(n),
        cs,
        addr,
        due: BinaryHeap::new(),
        rng: Rng(0x2545_F491_4F6C_DD1D),
        acked: vec![Vec::new(); cfg.rooms],
        publishing: false,
        window_from: None,
        ping_rooms: Vec::new(),
        ping_plain: Vec::new(),
        attempts: 0,
        failed: 0,
        closes: Vec::new(),
        errors: 0,
        par: Some(256),
    };
    // Initial connect, bounded parallelism.
    let t = Instant::now();
    for i in 0..n {
        w.schedule(i, Duration::ZERO);
    }
    while w.cs.iter().any(|c| c.st != St::Live) {
        if t.elapsed() > Duration::from_secs(300) {
            return Err(format!("only {} clients joined in 300 s", w.clients_live()));
        }
        w.pump();
    }
    let joined = t.elapsed();
    let (frames, _) = {
        let mut f = 0u64;
        let mut last = Instant::now();
        while last.elapsed() < Duration::from_millis(500) && t.elapsed() < Duration::from_secs(400)
        {
            let before = w.errors;
            let mut got = false;
            w.net.pump(Duration::from_millis(20), |_, _, ev, _| {
                if let Ev::Text(_) = ev {
                    f += 1;
                    got = true;
                }
            });
            let _ = before;
            if got {
                last = Instant::now();
            }
        }
        (f, ())
    };
    log(&format!(
        "  {n} clients joined in {:.1} s, then {frames} presence/other frames",
        joined.as_secs_f64()
    ));
    w.par = None;
    let mut runs = Vec::new();
    for run in 0..cfg.restarts {
        // Messages flowing.
        w.publishing = true;
        let t = Instant::now();
        while t.elapsed() < cfg.steady {
            w.pump();
        }
        let acked_before: usize = w.acked.iter().map(Vec::len).sum();
        w.ping_rooms.clear();
        w.ping_plain.clear();
        w.closes.clear();
        let (attempts0, failed0, errors0) = (w.attempts, w.failed, w.errors);
        // Restart on a helper thread while the clients keep running.
        let (tx, rx) = std::sync::mpsc::channel();
        let core = cfg.server_core;
        let data2 = data.clone();
        let listen = addr.to_string();
        let mut old = server;
        std::thread::spawn(move || {
            let term = Instant::now();
            let exited = old.terminate(Duration::from_secs(30));
            let stop_took = term.elapsed();
            drop(old);
            let old_gone = Instant::now();
            let new = start_chatd(
                "chatd",
                &data2,
                &listen,
                &["--max-connections", "20000"],
                core,
            );
            // Clients may already be syncing on the new server: the time it printed that it
            // listens, not the time this loop hears of it, is where sync times start.
            let listening = Instant::now();
            let restart_took = listening - old_gone;
            let _ = tx.send((new, restart_took, exited, stop_took, old_gone, listening));
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (new, restart_took, listening, stop_took, old_gone) = loop {
            w.pump();
            if let Ok((s, took, exited, stop_took, old_gone, listening)) = rx.try_recv() {
                if !exited {
                    log("  the old server did not exit within 30 s of SIGTERM (killed)");
                }
                break (s, took, listening, stop_took, old_gone);
            }
            if Instant::now() > deadline {
                return Err("the server did not come back within 60 s".into());
            }
        };
        server = new;
        w.window_from = Some(listening);
        let limit = listening + cfg.sync_limit;
        // Synced on the new server: live on a connection begun after the old one exited (a
        // sync may come before this thread heard that the new server listens: it counts as 0).
        let synced_again = |c: &Client| -> Option<Instant> {
            let on_new = c.connected_at.is_some_and(|t| t >= old_gone);
            if c.st == St::Live && on_new {
                c.synced_at
            } else {
                None
            }
        };
        while Instant::now() < limit {
            if w.cs[..cfg.clients]
                .iter()
                .all(|c| synced_again(c).is_some())
            {
                break;
            }
            w.pump();
        }
        let sync_times: Vec<f64> = {
            let mut v: Vec<f64> = w.cs[..cfg.clients]
                .iter()
                .filter_map(synced_again)
                .map(|s| s.saturating_duration_since(listening).as_secs_f64())
                .collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v
        };
        let synced = sync_times.len();
        let all_synced = (synced == cfg.clients).then(|| sync_times.last().copied().unwrap_or(0.0));
        let synced_end = Instant::now();
        w.window_from = None;
        // More messages, then stop and drain before checking.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(1) {
            w.pump();
        }
        let post_end = Instant::now();
        w.publishing = false;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10)
            && w.cs[..cfg.rooms.min(cfg.clients)]
                .iter()
                .any(|c| c.in_flight.is_some())
        {
            w.pump();
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(1500) {
            w.pump();
        }
        let (missed, disorder) = w.check();
        let witness_rooms_synced = synced_again(&w.cs[cfg.clients + W_ROOMS])
            .map(|s| s.saturating_duration_since(listening).as_secs_f64());
        // Pings sent between "listening" and "all synced", answered by now.
        let window = |v: &[(u64, u32)], end: Instant| -> Vec<u32> {
            let (a, b) = (micros(listening), micros(end));
            let mut x: Vec<u32> = v
                .iter()
                .filter(|(t, _)| *t >= a && *t <= b)
                .map(|&(_, r)| r)
                .collect();
            x.sort_unstable();
            x
        };
        // The witness in every room often syncs after the others: its pings count until one
        // second after all clients synced.
        let pr = window(&w.ping_rooms, post_end);
        let pp = window(&w.ping_plain, synced_end);
        let r = Run {
            shutdown_secs: stop_took.as_secs_f64(),
            restart_secs: restart_took.as_secs_f64(),
            all_synced_secs: all_synced,
            synced,
            clients: cfg.clients,
            sync_p50_secs: quantile(&sync_times, 0.5),
            sync_p99_secs: quantile(&sync_times, 0.99),
            attempts: w.attempts - attempts0,
            failed_attempts: w.failed - failed0,
            missed,
            disorder,
            witness_rooms_p99_ms: f64::from(quantile(&pr, 0.99)) / 1000.0,
            witness_rooms_pings: pr.len(),
            witness_rooms_synced_secs: witness_rooms_synced,
            witness_plain_p50_ms: f64::from(quantile(&pp, 0.5)) / 1000.0,
            witness_plain_p99_ms: f64::from(quantile(&pp, 0.99)) / 1000.0,
            witness_plain_pings: pp.len(),
            other_closes: w.closes.clone(),
            errors: w.errors - errors0,
            acked_total: w.acked.iter().map(|a| a.len() as u64).sum::<u64>() - acked_before as u64,
        };
        log(&format!("  restart {}: {r:?}", run + 1));
        runs.push(r);
    }
    drop(server);
    Ok(runs)
}
