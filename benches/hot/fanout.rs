//! Fan-out to many members (issue 7 items 1–3): one room of N members per server (floor, Node
//! `ws` peer, chatd), all held open by one generator. A window drives one server:
//! - paced: one publisher (a member) sends at a fixed rate, open loop; every member's delivery
//!   latency comes from the send time embedded in the text;
//! - saturation: a few publishers (members) each keep W messages in flight, a new one as soon as
//!   the previous one comes back (its own copy of the broadcast, or its ack).

use std::time::{Duration, Instant};

use super::net::{field_u64, find, frame_type, Ev, Net};
use super::procs::{cpu_ticks, self_ticks, ticks_per_sec, Server};
use super::setup::{micros, quantile};

/// One server's room in the generator: connections `base..base + n`, publishers first.
pub struct Group {
    /// The server process (None: in-process floor, no CPU figure).
    pub pid: Option<u32>,
    /// `ksoftirqd/N` of the server's core, if pinned.
    pub softirqd: Option<u32>,
    pub base: usize,
    pub n: usize,
    pub room: String,
}

/// What a paced window saw.
#[derive(Clone, Debug, Default)]
pub struct Paced {
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    /// Deliveries out of order or repeated (per connection, by sequence number).
    pub disorder: u64,
    /// Members that did not get exactly one copy of every message.
    pub short_members: u64,
    /// Latency at the generator's read of each delivery.
    pub lat_p50_ms: f64,
    pub lat_p99_ms: f64,
    /// Latency at each delivery's arrival in the member's socket (the kernel's receive
    /// timestamp, see `net.rs`); `None` if the generator's sockets do not carry timestamps.
    pub arrival_ms: Option<(f64, f64)>,
    pub secs: f64,
    pub server_cpu_pct: Option<f64>,
    pub us_per_delivery: Option<f64>,
    pub gen_cpu_pct: f64,
    /// CPU of the server core's ksoftirqd over the window (charged to no server).
    pub softirqd_pct: Option<f64>,
    pub errors: u64,
    pub closed: u64,
    /// Floor only: time to write one message to all members (p50, p99), ms.
    pub sweep_ms: Option<(f64, f64)>,
    /// Per message, from its send to its first arrival at any member (p50, p99), ms: the
    /// server's fixed delay before its sweep starts (for chatd: parse, commit, sync, hand-off).
    pub first_arrival_ms: Option<(f64, f64)>,
    /// Per message, from its first arrival to its last (p50, p99), ms: the server's own sweep,
    /// as the members saw it.
    pub spread_ms: Option<(f64, f64)>,
}

/// The text of a bench message: `~TAG~SEQ~MICROS~Pn` and padding to about 80 bytes.
fn text(tag: u32, seq: u64, publisher: usize) -> String {
    let us = micros(Instant::now());
    format!("~{tag:05}~{seq:08}~{us:013}~P{publisher:03} lorem ipsum dolor sit amet consectetur")
}

/// (tag, seq, micros, publisher) from a message frame.
fn parse_text(payload: &[u8]) -> Option<(u32, u64, u64, usize)> {
    let at = find(payload, b"\"text\":\"~")? + 9;
    let t = payload.get(at..at + 5 + 1 + 8 + 1 + 13 + 2 + 3)?;
    let num = |s: &[u8]| -> Option<u64> {
        let mut v = 0u64;
        for &d in s {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u64::from(d - b'0');
        }
        Some(v)
    };
    Some((
        num(&t[0..5])? as u32,
        num(&t[6..14])?,
        num(&t[15..28])?,
        num(&t[30..33])? as usize,
    ))
}

fn cpu_pct(ticks: u64, secs: f64) -> f64 {
    ticks as f64 / ticks_per_sec() / secs * 100.0
}

/// One paced window: publisher = the group's first connection, `rate` messages/s for `secs`,
/// then up to `drain` for the last deliveries. CPU is taken from the first send until the last
/// delivery arrived (or the drain ended).
pub fn paced(net: &mut Net, g: &Group, tag: u32, rate: f64, secs: f64, drain: Duration) -> Paced {
    let total = (rate * secs).round().max(1.0) as u64;
    let send_frame = |seq: u64| -> String {
        let t = text(tag, seq, 0);
        format!(
            "{{\"type\":\"send\",\"room\":\"{}\",\"text\":\"{t}\",\"cid\":\"f{tag}-{seq}\"}}",
            g.room
        )
    };
    let mut got = vec![0u32; g.n];
    let mut last_seq = vec![u64::MAX; g.n];
    let mut lat: Vec<u32> = Vec::with_capacity((total as usize) * g.n);
    let mut arrival: Vec<u32> = Vec::with_capacity((total as usize) * g.n);
    // Per message sequence: earliest and latest arrival latency, µs.
    let mut first_last: Vec<(u32, u32)> = vec![(u32::MAX, 0); total as usize];
    let (mut delivered, mut disorder, mut errors, mut closed) = (0u64, 0u64, 0u64, 0u64);
    let expected = total * g.n as u64;
    let cpu0 = g.pid.and_then(cpu_ticks);
    let sirq0 = g.softirqd.and_then(cpu_ticks);
    let gen0 = self_ticks();
    let t0 = Instant::now();
    let mut sent = 0u64;
    let hard_end = t0 + Duration::from_secs_f64(secs) + drain;
    let mut end = t0;
    while Instant::now() < hard_end {
        let now = Instant::now();
        if sent < total {
            let due = t0 + Duration::from_secs_f64(sent as f64 / rate);
            if now >= due {
                net.send(g.base, send_frame(sent).as_bytes());
                sent += 1;
                continue;
            }
        } else if delivered >= expected {
            end = now;
            break;
        }
        let wait = if sent < total {
            (t0 + Duration::from_secs_f64(sent as f64 / rate)).saturating_duration_since(now)
        } else {
            Duration::from_millis(5)
        };
        net.pump(wait.min(Duration::from_millis(5)), |i, c, ev, at| {
            if i < g.base || i >= g.base + g.n {
                return;
            }
            let j = i - g.base;
            match ev {
                Ev::Text(p) => match frame_type(p) {
                    b"message" => {
                        if let Some((t, seq, us, _)) = parse_text(p) {
                            if t != tag {
                                return;
                            }
                            delivered += 1;
                            got[j] += 1;
                            if last_seq[j] != u64::MAX && seq <= last_seq[j] {
                                disorder += 1;
                            }
                            last_seq[j] = seq;
                            lat.push(micros(at).saturating_sub(us) as u32);
                            if let Some(arrived) = c.arrived_us {
                                let a = arrived.saturating_sub(us) as u32;
                                arrival.push(a);
                                if let Some(fl) = first_last.get_mut(seq as usize) {
                                    fl.0 = fl.0.min(a);
                                    fl.1 = fl.1.max(a);
                                }
                            }
                        }
                    }
                    b"error" => errors += 1,
                    _ => {}
                },
                Ev::Closed(_) => closed += 1,
                Ev::Opened => {}
            }
        });
        end = Instant::now();
    }
    let secs_used = end.duration_since(t0).as_secs_f64().max(1e-3);
    let cpu = match (cpu0, g.pid.and_then(cpu_ticks)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let gen = self_ticks() - gen0;
    let sirq = match (sirq0, g.softirqd.and_then(cpu_ticks)) {
        (Some(a), Some(b)) => Some(cpu_pct(b - a, secs_used)),
        _ => None,
    };
    lat.sort_unstable();
    arrival.sort_unstable();
    let ms = |v: &[u32], q: f64| f64::from(quantile(v, q)) / 1000.0;
    let seen: Vec<(u32, u32)> = first_last.into_iter().filter(|fl| fl.0 <= fl.1).collect();
    let mut firsts: Vec<u32> = seen.iter().map(|fl| fl.0).collect();
    let mut spreads: Vec<u32> = seen.iter().map(|fl| fl.1 - fl.0).collect();
    firsts.sort_unstable();
    spreads.sort_unstable();
    let p50_p99 = |v: &[u32]| (!v.is_empty()).then(|| (ms(v, 0.5), ms(v, 0.99)));
    Paced {
        first_arrival_ms: p50_p99(&firsts),
        spread_ms: p50_p99(&spreads),
        arrival_ms: (arrival.len() == lat.len() && !arrival.is_empty())
            .then(|| (ms(&arrival, 0.5), ms(&arrival, 0.99))),
        short_members: got.iter().filter(|&&n| u64::from(n) != sent).count() as u64,
        softirqd_pct: sirq,
        sent,
        expected,
        delivered,
        disorder,
        lat_p50_ms: ms(&lat, 0.5),
        lat_p99_ms: ms(&lat, 0.99),
        secs: secs_used,
        server_cpu_pct: cpu.map(|c| cpu_pct(c, secs_used)),
        us_per_delivery: cpu.map(|c| c as f64 / ticks_per_sec() * 1e6 / delivered.max(1) as f64),
        gen_cpu_pct: cpu_pct(gen, secs_used),
        errors,
        closed,
        sweep_ms: None,
    }
}

/// Asks the floor (over the group's first connection) for its sweep times since the last ask.
pub fn floor_sweeps(net: &mut Net, g: &Group) -> Option<(f64, f64)> {
    net.send(g.base, br#"{"type":"floor_stats"}"#);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = None;
    while out.is_none() && Instant::now() < deadline {
        net.pump(Duration::from_millis(10), |i, _, ev, _| {
            if let (true, Ev::Text(p)) = (i == g.base, ev) {
                if frame_type(p) == b"floor_stats" {
                    let p50 = field_u64(p, b"\"p50_us\":").unwrap_or(0) as f64 / 1000.0;
                    let p99 = field_u64(p, b"\"p99_us\":").unwrap_or(0) as f64 / 1000.0;
                    out = Some((p50, p99));
                }
            }
        });
    }
    out
}

/// How a saturation publisher knows a message is done.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flow {
    /// Its own copy of the broadcast came back.
    Echo,
    /// Its `ack` came back.
    Ack,
}

#[derive(Clone, Debug, Default)]
pub struct Saturated {
    pub sent: u64,
    /// Deliveries inside the window.
    pub delivered: u64,
    pub secs: f64,
    pub per_sec: f64,
    pub server_cpu_pct: Option<f64>,
    pub us_per_delivery: Option<f64>,
    pub gen_cpu_pct: f64,
    /// CPU of the server core's ksoftirqd over the window (charged to no server).
    pub softirqd_pct: Option<f64>,
    pub errors: u64,
    pub closed: u64,
    /// Every message sent was delivered to every member by the end of the drain.
    pub complete: bool,
    pub lat_p50_ms: f64,
    pub lat_p99_ms: f64,
}

/// One saturation window: `publishers` members each keep `inflight` sends outstanding for
/// `secs`; deliveries inside the window per second, CPU over the window. Then a bounded drain.
pub fn saturate(
    net: &mut Net,
    g: &Group,
    tag: u32,
    publishers: usize,
    inflight: usize,
    secs: f64,
    flow: Flow,
) -> Saturated {
    let publishers = publishers.min(g.n).max(1);
    let mut outstanding = vec![0usize; publishers];
    let mut next_seq = 0u64;
    let mut lat: Vec<u32> = Vec::new();
    let (mut delivered, mut total_delivered, mut errors, mut closed) = (0u64, 0u64, 0u64, 0u64);
    let cpu0 = g.pid.and_then(cpu_ticks);
    let sirq0 = g.softirqd.and_then(cpu_ticks);
    let mut sirq1 = None;
    let gen0 = self_ticks();
    let t0 = Instant::now();
    let stop = t0 + Duration::from_secs_f64(secs);
    let mut cpu1 = None;
    let mut gen1 = 0;
    let hard_end = stop + Duration::from_secs(20);
    let room = g.room.clone();
    let mut queue: Vec<usize> = (0..publishers)
        .flat_map(|p| std::iter::repeat_n(p, inflight))
        .collect();
    let mut quiet_since = None::<Instant>;
    while Instant::now() < hard_end {
        let now = Instant::now();
        if now < stop {
            for p in queue.drain(..) {
                let f = format!(
                    "{{\"type\":\"send\",\"room\":\"{room}\",\"text\":\"{}\",\"cid\":\"s{tag}-{next_seq}\"}}",
                    text(tag, next_seq, p)
                );
                next_seq += 1;
                outstanding[p] += 1;
                net.send(g.base + p, f.as_bytes());
            }
        } else {
            queue.clear();
            if cpu1.is_none() {
                cpu1 = Some(g.pid.and_then(cpu_ticks));
                sirq1 = g.softirqd.and_then(cpu_ticks);
                gen1 = self_ticks();
            }
            let expected = next_seq * g.n as u64;
            if total_delivered >= expected || outstanding.iter().all(|&o| o == 0) {
                let q = *quiet_since.get_or_insert(now);
                if total_delivered >= expected || q.elapsed() > Duration::from_secs(1) {
                    break;
                }
            }
        }
        net.pump(Duration::from_millis(2), |i, _, ev, at| {
            if i < g.base || i >= g.base + g.n {
                return;
            }
            let j = i - g.base;
            match ev {
                Ev::Text(p) => match frame_type(p) {
                    b"message" => {
                        if let Some((t, _, us, from)) = parse_text(p) {
                            if t != tag {
                                return;
                            }
                            total_delivered += 1;
                            if at < stop {
                                delivered += 1;
                                lat.push(micros(at).saturating_sub(us) as u32);
                            }
                            if flow == Flow::Echo && j == from && j < publishers {
                                outstanding[j] -= 1;
                                if at < stop {
                                    queue.push(j);
                                }
                            }
                        }
                    }
                    b"ack" if flow == Flow::Ack && j < publishers => {
                        outstanding[j] = outstanding[j].saturating_sub(1);
                        if at < stop {
                            queue.push(j);
                        }
                    }
                    b"error" => errors += 1,
                    _ => {}
                },
                Ev::Closed(_) => closed += 1,
                Ev::Opened => {}
            }
        });
    }
    let secs_used = secs;
    let cpu = match (cpu0, cpu1.flatten()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    if cpu1.is_none() {
        gen1 = self_ticks();
    }
    lat.sort_unstable();
    Saturated {
        softirqd_pct: match (sirq0, sirq1) {
            (Some(a), Some(b)) => Some(cpu_pct(b - a, secs_used)),
            _ => None,
        },
        sent: next_seq,
        delivered,
        secs: secs_used,
        per_sec: delivered as f64 / secs_used,
        server_cpu_pct: cpu.map(|c| cpu_pct(c, secs_used)),
        us_per_delivery: cpu.map(|c| c as f64 / ticks_per_sec() * 1e6 / delivered.max(1) as f64),
        gen_cpu_pct: cpu_pct(gen1 - gen0, secs_used),
        errors,
        closed,
        complete: total_delivered == next_seq * g.n as u64,
        lat_p50_ms: f64::from(quantile(&lat, 0.5)) / 1000.0,
        lat_p99_ms: f64::from(quantile(&lat, 0.99)) / 1000.0,
    }
}

/// Which servers take part and how they run.
#[derive(Clone, Debug)]
pub struct Setup {
    pub members: usize,
    pub pin: super::procs::Pinning,
    /// Floor as a process (benches) or a thread of this process (tests: no CPU figure).
    pub floor_process: bool,
    /// Also the durable floor (the floor with a journal, synced before each sweep): the least a
    /// server that stores every message before announcing it can do.
    pub durable_floor: bool,
    pub peer: bool,
    /// Install `ws` with npm if missing.
    pub npm_install: bool,
}

/// The servers with their rooms open in one generator.
pub struct Rig {
    pub servers: Vec<Server>,
    pub softirqd: Option<u32>,
    pub net: Net,
    _dirs: Vec<tempfile::TempDir>,
}

impl Rig {
    /// Stops the other servers while server `s` is measured (see [`super::procs::quiet_others`]).
    pub fn quiet_others(&self, s: usize) -> super::procs::Quiet {
        super::procs::quiet_others(&self.servers, s)
    }

    pub fn group(&self, s: usize, members: usize) -> Group {
        Group {
            pid: self.servers[s].pid,
            softirqd: self.softirqd,
            base: s * members,
            n: members,
            room: "fanout".into(),
        }
    }
}

/// The bench programs' rig: floor as a process (and the durable floor if asked), the Node peer
/// (installed if missing) and chatd, `members` each, pinned as `pin` says. Exits the program if
/// they cannot be brought up.
pub fn bring_up_or_exit(members: usize, pin: super::procs::Pinning, durable_floor: bool) -> Rig {
    let setup = Setup {
        members,
        pin,
        floor_process: true,
        durable_floor,
        peer: true,
        npm_install: true,
    };
    bring_up(&setup).unwrap_or_else(|e| {
        eprintln!("setup failed: {e}");
        std::process::exit(1);
    })
}

/// Starts floor, durable floor (if asked), peer (if asked and available) and chatd; opens
/// `members` members in room `fanout` on each (chatd: distinct imported accounts, token resume);
/// waits for the presence flood to settle. Returns the rig; prints progress.
pub fn bring_up(s: &Setup) -> Result<Rig, String> {
    use super::procs::{
        import_accounts, start_chatd, start_floor_process, start_floor_thread, start_peer,
    };
    use super::setup::{open_members, settle, Member};
    let core = s.pin.server_core;
    let mut servers = vec![if s.floor_process {
        start_floor_process(core, None)
    } else {
        start_floor_thread(None)
    }];
    let mut dirs = Vec::new();
    if s.durable_floor {
        let journal_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = journal_dir.path().join("floor-journal");
        dirs.push(journal_dir);
        servers.push(if s.floor_process {
            start_floor_process(core, Some(&path))
        } else {
            let journal = super::floor::open_journal(&path).map_err(|e| e.to_string())?;
            start_floor_thread(Some(journal))
        });
    }
    if s.peer {
        if let Some(p) = start_peer(core, s.npm_install) {
            servers.push(p);
        }
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let tokens = import_accounts(dir.path(), "m", s.members);
    servers.push(start_chatd(
        "chatd",
        dir.path(),
        "127.0.0.1:0",
        &[
            "--rate",
            "1000000",
            "--burst",
            "1000000",
            "--max-connections",
            "20000",
        ],
        core,
    ));
    let mut net = Net::new(0).with_arrival_times();
    for (k, server) in servers.iter().enumerate() {
        let members: Vec<Member> = tokens
            .iter()
            .map(|t| Member {
                token: t.clone(),
                rooms: vec!["fanout".into()],
            })
            .collect();
        let took = open_members(
            &mut net,
            k * s.members,
            server.addr,
            &members,
            256,
            Duration::from_secs(120),
        )
        .map_err(|e| format!("{}: {e}", server.name))?;
        let (frames, quiet) = settle(
            &mut net,
            Duration::from_millis(500),
            Duration::from_secs(120),
        );
        eprintln!(
            "  {}: {} members joined in {:.1} s, then {frames} presence/other frames{}",
            server.name,
            s.members,
            took.as_secs_f64(),
            if quiet {
                ""
            } else {
                " (still not quiet after 120 s)"
            }
        );
    }
    dirs.push(dir);
    Ok(Rig {
        servers,
        softirqd: super::procs::ksoftirqd(s.pin.server_core),
        net,
        _dirs: dirs,
    })
}
