//! Cluster mode (issue 10): three `chatd serve --cluster` nodes and their Redis against one
//! plain chatd, in the same run, all server processes pinned to core 0 and this generator to
//! core 1. Clients of the cluster are spread round-robin over the nodes.
//! - paced fan-out: 1000 members in one room, one publisher at 20 msg/s: delivery latency
//!   p50/p99 (at read and at arrival), CPU of all server processes per delivery; the cluster's
//!   p99 against the single node's (target: within 2×);
//! - saturation: 4 publishers with 4 messages in flight each: deliveries/s;
//! - durable sends: 64 publishers each alone in its room, 8 in flight: acked sends/s, ack p99.
//!
//! Median (range) of the runs. Needs `redis-server` (Debian's).
//!
//! Run: `cargo bench --bench cluster` (`-- --smoke`, `--runs N`, `--seconds S`, `--members N`,
//! `--nodes N`, `--no-pin`).

#[path = "hot/mod.rs"]
pub(crate) mod hot;

// The tests' Redis harness: one Redis, fsync on every write, as cluster mode requires.
#[allow(dead_code)]
#[path = "../tests/common/redis.rs"]
mod redis;

use std::time::Duration;

use hot::durable::{window, Durable};
use hot::fanout::{paced, saturate, Flow, Group, Paced, Saturated};
use hot::net::Net;
use hot::procs::{cpu_ticks, import_accounts_into, start_chatd, ticks_per_sec, Server};
use hot::setup::{open_members, ratio, settle, Member, Spread};

/// One side of the comparison: its processes and where its clients connect.
struct Side {
    name: &'static str,
    nodes: Vec<Server>,
    /// Processes whose CPU counts (the nodes, and Redis for the cluster).
    pids: Vec<u32>,
    /// The cluster's Redis, whose share is also shown on its own.
    redis: Option<u32>,
}

impl Side {
    fn ticks(&self) -> u64 {
        self.pids.iter().filter_map(|&p| cpu_ticks(p)).sum()
    }

    fn redis_ticks(&self) -> u64 {
        self.redis.and_then(cpu_ticks).unwrap_or(0)
    }

    /// ", of which Redis N%" since `before` (Redis's ticks then), for the cluster.
    fn redis_share(&self, before: u64, secs: f64) -> String {
        match self.redis {
            Some(_) => format!(
                ", of which Redis {:.0}%",
                self.redis_ticks().saturating_sub(before) as f64 / ticks_per_sec() / secs * 100.0
            ),
            None => String::new(),
        }
    }
}

/// Opens `members` as connections `base..base + members.len()`, in order, spread over the
/// side's nodes in contiguous shares (connection `base + j` is `members[j]`).
fn open_spread(net: &mut Net, side: &Side, base: usize, members: &[Member]) {
    let share = members.len().div_ceil(side.nodes.len());
    let mut offset = 0;
    for (node, chunk) in members.chunks(share).enumerate() {
        let took = open_members(
            net,
            base + offset,
            side.nodes[node].addr,
            chunk,
            256,
            Duration::from_secs(180),
        )
        .unwrap_or_else(|e| {
            eprintln!("{} node {node}: {e}", side.name);
            std::process::exit(1);
        });
        eprintln!(
            "  {} node {node}: {} clients in {:.1} s",
            side.name,
            chunk.len(),
            took.as_secs_f64()
        );
        offset += chunk.len();
    }
    settle(net, Duration::from_millis(500), Duration::from_secs(120));
}

/// CPU of `side`'s processes over a window that took `secs`, as % of one core.
fn cpu_pct(side: &Side, before: u64, secs: f64) -> f64 {
    side.ticks().saturating_sub(before) as f64 / ticks_per_sec() / secs * 100.0
}

fn main() {
    let (flags, pin, _) = hot::setup::prologue();
    let options = Options {
        members: flags.num("--members", 30, 1000),
        nodes: flags.num("--nodes", 2, 3),
        pubs: flags.num("--publishers", 4, 64),
        secs: flags.seconds.unwrap_or(if flags.smoke { 1.0 } else { 8.0 }),
        runs: flags.runs.unwrap_or(if flags.smoke { 1 } else { 3 }),
        pin,
    };
    if run(&options).incomplete {
        println!("\nsome windows were incomplete (deliveries or acks missing, or connections closed): see above");
    }
}

/// What to run.
#[derive(Clone, Copy)]
pub struct Options {
    pub members: usize,
    pub nodes: usize,
    pub pubs: usize,
    pub secs: f64,
    pub runs: usize,
    pub pin: hot::procs::Pinning,
}

/// What a run saw, beyond the printed tables: per side (one chatd, the cluster), the windows.
pub struct Summary {
    pub fan: Vec<Vec<Paced>>,
    pub saturated: Vec<Vec<Saturated>>,
    pub durable: Vec<Vec<Durable>>,
    /// A window lost a delivery or an ack, or a connection closed.
    pub incomplete: bool,
}

/// Runs the scenarios and prints the table.
pub fn run(o: &Options) -> Summary {
    let Options {
        members,
        nodes,
        pubs,
        secs,
        runs,
        pin,
    } = *o;
    println!(
        "cluster: {nodes} nodes + Redis against one chatd; {members} members at 20 msg/s, saturation 4x4, durable {pubs}x8; {secs} s windows, {runs} runs; pinning {pin:?}"
    );
    let core = pin.server_core;
    let redis = redis::Redis::start_pinned(redis::DURABLE, core);
    let single_dir = tempfile::tempdir().expect("temp dir");
    let cluster_dirs: Vec<tempfile::TempDir> = (0..nodes)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let accounts = members + pubs;
    let single_tokens = import_accounts_into(single_dir.path(), None, "m", accounts);
    let url = redis.url();
    let cluster_tokens = import_accounts_into(cluster_dirs[0].path(), Some(&url), "m", accounts);
    let limits = [
        "--rate",
        "1000000",
        "--burst",
        "1000000",
        "--max-connections",
        "20000",
    ];
    let one = start_chatd("chatd", single_dir.path(), "127.0.0.1:0", &limits, core);
    let single = Side {
        name: "one chatd",
        pids: one.pid.into_iter().collect(),
        nodes: vec![one],
        redis: None,
    };
    let mut cluster_args = limits.to_vec();
    cluster_args.extend(["--cluster", &url]);
    let cluster_nodes: Vec<Server> = cluster_dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            start_chatd(
                &format!("node {i}"),
                dir.path(),
                "127.0.0.1:0",
                &cluster_args,
                core,
            )
        })
        .collect();
    let mut pids: Vec<u32> = cluster_nodes.iter().filter_map(|s| s.pid).collect();
    pids.push(redis.pid());
    let cluster = Side {
        name: "cluster",
        nodes: cluster_nodes,
        pids,
        redis: Some(redis.pid()),
    };
    let sides = [&single, &cluster];

    // Per side: `members` fan-out members in room `fanout` (the first is the publisher), then
    // `pubs` durable publishers, each in its own room.
    let mut net = Net::new(0).with_arrival_times();
    let stride = members + pubs;
    let rooms: Vec<String> = (0..pubs).map(|j| format!("durable-{j}")).collect();
    for (s, side) in sides.iter().enumerate() {
        let tokens = if s == 0 {
            &single_tokens
        } else {
            &cluster_tokens
        };
        let fan: Vec<Member> = (0..members)
            .map(|j| Member {
                token: tokens[j].clone(),
                rooms: vec!["fanout".into()],
            })
            .collect();
        open_spread(&mut net, side, s * stride, &fan);
        let durable: Vec<Member> = (0..pubs)
            .map(|j| Member {
                token: tokens[members + j].clone(),
                rooms: vec![rooms[j].clone()],
            })
            .collect();
        open_spread(&mut net, side, s * stride + members, &durable);
    }
    let group = |s: usize| Group {
        pid: None,
        softirqd: None,
        base: s * stride,
        n: members,
        room: "fanout".into(),
    };
    let mut fan: Vec<Vec<(Paced, f64)>> = vec![Vec::new(), Vec::new()];
    let mut sat: Vec<Vec<(Saturated, f64)>> = vec![Vec::new(), Vec::new()];
    let mut dur: Vec<Vec<(Durable, f64)>> = vec![Vec::new(), Vec::new()];
    let mut tag = 0;
    let mut incomplete = false;
    for run in 0..runs {
        for (s, side) in sides.iter().enumerate() {
            tag += 1;
            let before = side.ticks();
            let w = paced(&mut net, &group(s), tag, 20.0, secs, Duration::from_secs(5));
            let cpu = cpu_pct(side, before, w.secs);
            incomplete |= w.delivered != w.expected || w.closed > 0;
            eprintln!(
                "  run {} {} 20 msg/s: {}/{} delivered, p50 {:.2} ms p99 {:.2} ms, cpu {cpu:.0}%",
                run + 1,
                side.name,
                w.delivered,
                w.expected,
                w.lat_p50_ms,
                w.lat_p99_ms
            );
            fan[s].push((w, cpu));
            std::thread::sleep(Duration::from_millis(300));
            tag += 1;
            let (before, redis_before) = (side.ticks(), side.redis_ticks());
            let w = saturate(&mut net, &group(s), tag, 4, 4, secs, Flow::Echo);
            let cpu = cpu_pct(side, before, w.secs);
            incomplete |= !w.complete || w.closed > 0;
            eprintln!(
                "  run {} {} saturation: {:.0} deliveries/s, cpu {cpu:.0}%{}",
                run + 1,
                side.name,
                w.per_sec,
                side.redis_share(redis_before, w.secs)
            );
            sat[s].push((w, cpu));
            std::thread::sleep(Duration::from_millis(300));
            tag += 1;
            let (before, redis_before) = (side.ticks(), side.redis_ticks());
            let d = window(&mut net, None, s * stride + members, &rooms, 8, secs, tag);
            let cpu = cpu_pct(side, before, d.secs);
            incomplete |= d.closed > 0 || d.unacked > 0;
            eprintln!(
                "  run {} {} durable {pubs}x8: {:.0} acked/s, p50 {:.2} ms p99 {:.2} ms, errors {}, cpu {cpu:.0}%{}",
                run + 1,
                side.name,
                d.per_sec,
                d.p50_ms,
                d.p99_ms,
                d.errors,
                side.redis_share(redis_before, d.secs)
            );
            dur[s].push((d, cpu));
        }
    }
    let sp = |xs: Vec<f64>| Spread::of(&xs);
    println!();
    println!("| scenario | one chatd | {nodes} nodes + Redis | cluster / one |");
    println!("| --- | --- | --- | --- |");
    let fan_p = |s: usize, f: fn(&Paced) -> f64| sp(fan[s].iter().map(|(w, _)| f(w)).collect());
    for (label, f) in [
        (
            "20 msg/s into {members}: latency p50 ms",
            (|w: &Paced| w.lat_p50_ms) as fn(&Paced) -> f64,
        ),
        ("same: latency p99 ms", |w: &Paced| w.lat_p99_ms),
        ("same: at arrival p99 ms", |w: &Paced| {
            w.arrival_ms.map_or(f64::NAN, |a| a.1)
        }),
    ] {
        println!(
            "| {} | {} | {} | {} |",
            label.replace("{members}", &members.to_string()),
            fan_p(0, f).show(2),
            fan_p(1, f).show(2),
            ratio(fan_p(1, f).med, fan_p(0, f).med)
        );
    }
    let fan_cpu = |s: usize| {
        sp(fan[s]
            .iter()
            .map(|(w, cpu)| cpu / 100.0 * w.secs * 1e6 / w.delivered.max(1) as f64)
            .collect())
    };
    println!(
        "| same: CPU of all server processes per delivery µs | {} | {} | {} |",
        fan_cpu(0).show(1),
        fan_cpu(1).show(1),
        ratio(fan_cpu(1).med, fan_cpu(0).med)
    );
    let sat_rate = |s: usize| sp(sat[s].iter().map(|(w, _)| w.per_sec).collect());
    println!(
        "| saturation 4x4 into {members}: deliveries/s | {} | {} | {} |",
        sat_rate(0).show(0),
        sat_rate(1).show(0),
        ratio(sat_rate(1).med, sat_rate(0).med)
    );
    let dur_p = |s: usize, f: fn(&Durable) -> f64| sp(dur[s].iter().map(|(d, _)| f(d)).collect());
    for (label, f, prec) in [
        (
            "durable {pubs}x8: acked sends/s",
            (|d: &Durable| d.per_sec) as fn(&Durable) -> f64,
            0,
        ),
        ("same: ack p99 ms", |d: &Durable| d.p99_ms, 1),
    ] {
        println!(
            "| {} | {} | {} | {} |",
            label.replace("{pubs}", &pubs.to_string()),
            dur_p(0, f).show(prec),
            dur_p(1, f).show(prec),
            ratio(dur_p(1, f).med, dur_p(0, f).med)
        );
    }
    let cpu = |v: &[(Durable, f64)]| sp(v.iter().map(|(_, c)| *c).collect());
    println!(
        "| same: CPU of all server processes % | {} | {} | |",
        cpu(&dur[0]).show(0),
        cpu(&dur[1]).show(0)
    );
    Summary {
        fan: fan
            .into_iter()
            .map(|v| v.into_iter().map(|(w, _)| w).collect())
            .collect(),
        saturated: sat
            .into_iter()
            .map(|v| v.into_iter().map(|(w, _)| w).collect())
            .collect(),
        durable: dur
            .into_iter()
            .map(|v| v.into_iter().map(|(d, _)| d).collect())
            .collect(),
        incomplete,
    }
}
