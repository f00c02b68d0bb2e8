//! Durable sends (issue 7 item 4): 64 publishers, each a different account alone in its own
//! room, 8 sends in flight each, chatd with its default strict durability: acked sends/s and ack
//! p50/p99; then one sender in lock-step (1 in flight): ack p50/p99. Two references run the same
//! in the same run: the durable floor (hot/floor.rs: one thread that writes and syncs what each
//! turn of its event loop read, then acks; the least a server that stores messages can do here)
//! and the Node `ws` peer (which stores nothing). Median (range) of the runs.
//! `--ceiling N` (sled's own rate for the same records, from benches/storage.rs) and `--fsync-us
//! N` (one raw fsync) print the ratios.
//!
//! Run: `cargo bench --bench durable` (`-- --smoke`, `--runs N`, `--seconds S`, `--publishers P`,
//! `--inflight W`, `--ceiling N`, `--fsync-us N`, `--no-pin`).

#[path = "hot/mod.rs"]
mod hot;

use std::time::Duration;

use hot::durable::{window, Durable};
use hot::net::Net;
use hot::procs::{import_accounts, quiet_others, start_chatd, start_floor_process, start_peer};
use hot::setup::{open_members, ratio, settle, Member, Spread};

fn main() {
    if std::env::args().any(|a| a == "--serve-floor") {
        hot::procs::serve_floor_main();
    }
    let (flags, pin, _) = hot::setup::prologue();
    let num = |name: &str, smoke: usize, full: usize| flags.num(name, smoke, full);
    let pubs = num("--publishers", 4, 64);
    let inflight = num("--inflight", 2, 8);
    let secs = flags.seconds.unwrap_or(if flags.smoke { 1.0 } else { 8.0 });
    let lock_secs = if flags.smoke { 1.0 } else { 4.0 };
    let runs = flags.runs.unwrap_or(if flags.smoke { 1 } else { 3 });
    let ceiling: Option<f64> = flags.get("--ceiling").and_then(|v| v.parse().ok());
    let fsync_us: Option<f64> = flags.get("--fsync-us").and_then(|v| v.parse().ok());
    println!("durable: {pubs} publishers x {inflight} in flight, each alone in its room, {secs} s; lock-step 1 x 1 for {lock_secs} s; {runs} runs; pinning {pin:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = import_accounts(dir.path(), "d", pubs + 1);
    let chatd = start_chatd(
        "chatd",
        dir.path(),
        "127.0.0.1:0",
        &["--rate", "1000000", "--burst", "1000000"],
        pin.server_core,
    );
    // On the disk chatd writes to: its journal lives beside chatd's data.
    let floor = start_floor_process(pin.server_core, Some(&dir.path().join("floor-journal")));
    let peer = start_peer(pin.server_core, true);
    let mut servers = vec![chatd, floor];
    servers.extend(peer);
    let mut net = Net::new(0);
    let rooms: Vec<String> = (0..pubs).map(|j| format!("durable-{j}")).collect();
    let lock_room = vec!["lockstep".to_string()];
    let stride = pubs + 1;
    for (k, s) in servers.iter().enumerate() {
        let members: Vec<Member> = (0..=pubs)
            .map(|j| Member {
                token: tokens[j].clone(),
                rooms: vec![if j < pubs {
                    rooms[j].clone()
                } else {
                    lock_room[0].clone()
                }],
            })
            .collect();
        if let Err(e) = open_members(
            &mut net,
            k * stride,
            s.addr,
            &members,
            128,
            Duration::from_secs(60),
        ) {
            eprintln!("{}: {e}", s.name);
            std::process::exit(1);
        }
        settle(
            &mut net,
            Duration::from_millis(200),
            Duration::from_secs(10),
        );
    }
    let mut many: Vec<Vec<Durable>> = vec![Vec::new(); servers.len()];
    let mut one: Vec<Vec<Durable>> = vec![Vec::new(); servers.len()];
    let mut tag = 0;
    for run in 0..runs {
        for (k, s) in servers.iter().enumerate() {
            let _quiet = quiet_others(&servers, k);
            tag += 1;
            let d = window(&mut net, s.pid, k * stride, &rooms, inflight, secs, tag);
            eprintln!("  run {} {} {pubs}x{inflight}: {:.0} acked/s, p50 {:.2} ms p99 {:.2} ms, cpu {}, errors {}, closed {}, unacked {}",
                run + 1, s.name, d.per_sec, d.p50_ms, d.p99_ms, d.server_cpu_pct.map_or("n/a".into(), |c| format!("{c:.0}%")), d.errors, d.closed, d.unacked);
            many[k].push(d);
            tag += 1;
            let d = window(
                &mut net,
                s.pid,
                k * stride + pubs,
                &lock_room,
                1,
                lock_secs,
                tag,
            );
            eprintln!(
                "  run {} {} lock-step: {:.0} acked/s, p50 {:.3} ms p99 {:.3} ms",
                run + 1,
                s.name,
                d.per_sec,
                d.p50_ms,
                d.p99_ms
            );
            one[k].push(d);
        }
    }
    println!();
    println!("| server | {pubs}×{inflight} acked sends/s | ack p50 ms | ack p99 ms | server CPU % | lock-step acks/s | lock-step p50 ms | p99 ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (k, s) in servers.iter().enumerate() {
        let sp = |v: &[Durable], f: fn(&Durable) -> f64| {
            Spread::of(&v.iter().map(f).collect::<Vec<_>>())
        };
        println!(
            "| {}{} | {} | {} | {} | {} | {} | {} | {} |",
            s.name,
            match s.name.as_str() {
                "chatd" => " (strict)",
                "durable floor" => " (one write + sync per loop turn)",
                _ => " (stores nothing)",
            },
            sp(&many[k], |d| d.per_sec).show(0),
            sp(&many[k], |d| d.p50_ms).show(2),
            sp(&many[k], |d| d.p99_ms).show(2),
            Spread::of(
                &many[k]
                    .iter()
                    .filter_map(|d| d.server_cpu_pct)
                    .collect::<Vec<_>>()
            )
            .show(0),
            sp(&one[k], |d| d.per_sec).show(0),
            sp(&one[k], |d| d.p50_ms).show(3),
            sp(&one[k], |d| d.p99_ms).show(3),
        );
    }
    let median = |v: &[Durable], f: fn(&Durable) -> f64| {
        Spread::of(&v.iter().map(f).collect::<Vec<_>>()).med
    };
    let chatd_rate = median(&many[0], |d| d.per_sec);
    let chatd_p50 = median(&one[0], |d| d.p50_ms);
    let row = |v: &[Durable]| {
        format!(
            "{}/s · p50 {} · p99 {} ms",
            Spread::of(&v.iter().map(|d| d.per_sec).collect::<Vec<_>>()).show(0),
            Spread::of(&v.iter().map(|d| d.p50_ms).collect::<Vec<_>>()).show(1),
            Spread::of(&v.iter().map(|d| d.p99_ms).collect::<Vec<_>>()).show(1)
        )
    };
    let lock = |v: &[Durable]| {
        format!(
            "p50 {} · p99 {} ms",
            Spread::of(&v.iter().map(|d| d.p50_ms).collect::<Vec<_>>()).show(2),
            Spread::of(&v.iter().map(|d| d.p99_ms).collect::<Vec<_>>()).show(2)
        )
    };
    let peer_idx = servers.iter().position(|s| s.name == "node ws");
    let floor_idx = servers.iter().position(|s| s.name == "durable floor");
    let vs_floor = |chatd: f64, f: fn(&Durable) -> f64, of: &[Vec<Durable>]| {
        floor_idx.map_or("n/a".into(), |i| ratio(chatd, median(&of[i], f)))
    };
    let rate_vs_floor = vs_floor(chatd_rate, |d| d.per_sec, &many);
    let lock_vs_floor = vs_floor(chatd_p50, |d| d.p50_ms, &one);
    println!(
        "\nSUMMARY| {pubs} publishers each in own room, {inflight} in flight: acked sends/s, ack latency | {} (durable floor) | {} (stores nothing) | {} | {} of sled ceiling, {rate_vs_floor} the durable floor's rate | ≥ 15,000/s, p99 ≤ 20 ms, ≥ 70 % of ceiling |",
        floor_idx.map_or("n/a".into(), |i| row(&many[i])),
        peer_idx.map_or("n/a".into(), |i| row(&many[i])),
        row(&many[0]),
        ceiling.map_or("n/a".into(), |c| ratio(chatd_rate, c)),
    );
    println!(
        "SUMMARY| one sender in lock-step: ack latency | {} (durable floor) | {} | {} | {} of one fsync, {lock_vs_floor} the durable floor's | p50 ≤ 1.5× fsync |",
        floor_idx.map_or("n/a".into(), |i| lock(&one[i])),
        peer_idx.map_or("n/a".into(), |i| lock(&one[i])),
        lock(&one[0]),
        fsync_us.map_or("n/a".into(), |f| ratio(chatd_p50 * 1000.0, f)),
    );
    let floor_lock_vs_fsync = match (floor_idx, fsync_us) {
        (Some(i), Some(f)) => ratio(median(&one[i], |d| d.p50_ms) * 1000.0, f),
        _ => "n/a".into(),
    };
    println!(
        "\nchatd / sled ceiling: {}   lock-step p50 / one raw fsync: {} (the durable floor's: {floor_lock_vs_fsync})   chatd / durable floor: rate {rate_vs_floor}, lock-step p50 {lock_vs_floor}",
        ceiling.map_or("n/a (no --ceiling)".into(), |c| ratio(chatd_rate, c)),
        fsync_us.map_or("n/a (no --fsync-us)".into(), |f| ratio(
            chatd_p50 * 1000.0,
            f
        )),
    );
}
