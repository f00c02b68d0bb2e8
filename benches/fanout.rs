//! Fan-out to many members, paced (issue 7 items 1–2): 1000 members in one room, one publisher at
//! 20 msg/s and at 100 msg/s, against the floor, the durable floor, the Node `ws` peer and chatd
//! in the same run. Servers pinned to core 0, this generator to core 1. Per window: server CPU
//! (% of a core and µs per delivery, from /proc/PID/stat), delivery latency p50/p99 over all
//! deliveries, both at the generator's read and at the bytes' arrival in the member's socket (the
//! kernel's receive timestamp: the first includes the generator's own queueing behind 1000 ready
//! sockets, the second does not), deliveries counted against the expected number, and the
//! generator's own CPU. Median (range) of the runs.
//!
//! Per message, the latency splits in two: until its first arrival at any member (what a server
//! does before its sweep starts: for chatd and the durable floor that includes storing and
//! syncing the message), and from the first arrival to the last (the sweep as the members saw
//! it). The durable floor (hot/floor.rs with a journal) is there because issue 7's latency bar is
//! set against the floor, which stores nothing; chatd's latency is also shown against the least a
//! server that syncs each message before announcing it can do.
//!
//! Run: `cargo bench --bench fanout` (`-- --smoke`, `--runs N`, `--seconds S`, `--members N`,
//! `--rates 20,100`, `--no-pin`).

#[path = "hot/mod.rs"]
mod hot;

use hot::fanout::{bring_up_or_exit, floor_sweeps, paced, Paced};
use hot::setup::{ratio, Spread};
use std::time::Duration;

fn main() {
    if std::env::args().any(|a| a == "--serve-floor") {
        hot::procs::serve_floor_main();
    }
    let (flags, pin, _) = hot::setup::prologue();
    let members = flags.num("--members", 50, 1000);
    let rates: Vec<f64> = flags
        .get("--rates")
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| {
            if flags.smoke {
                vec![20.0]
            } else {
                vec![20.0, 100.0]
            }
        });
    let secs = flags
        .seconds
        .unwrap_or(if flags.smoke { 1.0 } else { 10.0 });
    let runs = flags.runs.unwrap_or(if flags.smoke { 1 } else { 3 });
    println!(
        "fanout: {members} members in one room, one publisher at {rates:?} msg/s, {secs} s windows, {runs} runs; pinning {pin:?}"
    );
    let mut rig = bring_up_or_exit(members, pin, true);
    let names: Vec<String> = rig.servers.iter().map(|s| s.name.clone()).collect();
    // results[rate][server] = windows
    let mut results: Vec<Vec<Vec<Paced>>> = vec![vec![Vec::new(); names.len()]; rates.len()];
    let mut tag = 0u32;
    let mut failed = false;
    for run in 0..runs {
        for (ri, &rate) in rates.iter().enumerate() {
            for s in 0..names.len() {
                tag += 1;
                let g = rig.group(s, members);
                let quiet = rig.quiet_others(s);
                let drain = Duration::from_secs(if rate > 50.0 { 30 } else { 5 });
                let mut w = paced(&mut rig.net, &g, tag, rate, secs, drain);
                if s == 0 {
                    w.sweep_ms = floor_sweeps(&mut rig.net, &g);
                }
                drop(quiet);
                let ok = w.delivered == w.expected && w.closed == 0 && w.short_members == 0;
                failed |= !ok;
                eprintln!(
                    "  run {} {rate} msg/s {}: {}/{} delivered, cpu {} ({} µs/delivery), p50 {:.2} ms p99 {:.2} ms (at arrival {}), generator {:.0}%, ksoftirqd {}{}{}{}",
                    run + 1,
                    names[s],
                    w.delivered,
                    w.expected,
                    w.server_cpu_pct.map_or("n/a".into(), |c| format!("{c:.0}%")),
                    w.us_per_delivery.map_or("n/a".into(), |c| format!("{c:.1}")),
                    w.lat_p50_ms,
                    w.lat_p99_ms,
                    w.arrival_ms.map_or("n/a".into(), |(a, b)| format!("p50 {a:.2} ms p99 {b:.2} ms")),
                    w.gen_cpu_pct,
                    w.softirqd_pct.map_or("n/a".into(), |c| format!("{c:.0}%")),
                    w.sweep_ms.map_or(String::new(), |(a, b)| format!(", sweep p50 {a:.2} ms p99 {b:.2} ms")),
                    match (w.first_arrival_ms, w.spread_ms) {
                        (Some((f50, f99)), Some((s50, s99))) => format!(
                            ", first arrival p50 {f50:.2} ms p99 {f99:.2} ms, first to last p50 {s50:.2} ms p99 {s99:.2} ms"
                        ),
                        _ => String::new(),
                    },
                    if ok { "" } else { "  <-- INCOMPLETE" }
                );
                results[ri][s].push(w);
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    println!();
    println!("| rate | server | server CPU % | µs CPU / delivery | latency at read p50 ms | p99 ms | at arrival p50 ms | p99 ms | first arrival p50 ms | first to last p50 ms | delivered | generator CPU % | ksoftirqd CPU % | CPU vs floor | CPU vs ws |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (ri, &rate) in rates.iter().enumerate() {
        let us = |s: usize| {
            Spread::of(
                &results[ri][s]
                    .iter()
                    .filter_map(|w| w.us_per_delivery)
                    .collect::<Vec<_>>(),
            )
        };
        let floor_us = us(0).med;
        let ws_idx = names.iter().position(|n| n == "node ws");
        let ws_us = ws_idx.map_or(f64::NAN, |i| us(i).med);
        for s in 0..names.len() {
            let ws = &results[ri][s];
            let cpu = Spread::of(
                &ws.iter()
                    .filter_map(|w| w.server_cpu_pct)
                    .collect::<Vec<_>>(),
            );
            let p50 = Spread::of(&ws.iter().map(|w| w.lat_p50_ms).collect::<Vec<_>>());
            let p99 = Spread::of(&ws.iter().map(|w| w.lat_p99_ms).collect::<Vec<_>>());
            // One quantile (`q`) of a (p50, p99) figure, over the runs.
            let quantile = |f: fn(&Paced) -> Option<(f64, f64)>, q: fn(&(f64, f64)) -> f64| {
                Spread::of(
                    &ws.iter()
                        .filter_map(|w| f(w).as_ref().map(q))
                        .collect::<Vec<_>>(),
                )
            };
            let gen = Spread::of(&ws.iter().map(|w| w.gen_cpu_pct).collect::<Vec<_>>());
            let delivered: u64 = ws.iter().map(|w| w.delivered).sum();
            let expected: u64 = ws.iter().map(|w| w.expected).sum();
            println!(
                "| {rate} msg/s | {} | {} | {} | {} | {} | {} | {} | {} | {} | {delivered}/{expected} | {} | {} | {} | {} |",
                names[s],
                cpu.show(0),
                us(s).show(1),
                p50.show(2),
                p99.show(2),
                quantile(|w| w.arrival_ms, |a| a.0).show(2),
                quantile(|w| w.arrival_ms, |a| a.1).show(2),
                quantile(|w| w.first_arrival_ms, |a| a.0).show(2),
                quantile(|w| w.spread_ms, |a| a.0).show(2),
                gen.show(0),
                Spread::of(&ws.iter().filter_map(|w| w.softirqd_pct).collect::<Vec<_>>()).show(0),
                ratio(us(s).med, floor_us),
                ratio(us(s).med, ws_us),
            );
        }
        let sweeps: Vec<f64> = results[ri][0]
            .iter()
            .filter_map(|w| w.sweep_ms.map(|x| x.0))
            .collect();
        println!(
            "| {rate} msg/s | floor: one message to all {members} sockets (sweep p50) | {} ms | | | | | | | | | | | | |",
            Spread::of(&sweeps).show(2)
        );
    }
    // One-line rows for benches/run-all.sh's summary table:
    // | scenario | floor | Node ws | chatd | chatd ratios | bar |
    println!();
    let idx = |name: &str| names.iter().position(|n| n == name);
    for (ri, &rate) in rates.iter().enumerate() {
        let sp = |s: Option<usize>, f: &dyn Fn(&Paced) -> Option<f64>| {
            s.map_or(Spread::of(&[]), |s| {
                Spread::of(&results[ri][s].iter().filter_map(f).collect::<Vec<_>>())
            })
        };
        let (fl, ws, cd) = (Some(0), idx("node ws"), idx("chatd"));
        let cell = |s| {
            format!(
                "{} % · {} µs",
                sp(s, &|w| w.server_cpu_pct).show(0),
                sp(s, &|w| w.us_per_delivery).show(1)
            )
        };
        let us = |s| sp(s, &|w| w.us_per_delivery).med;
        println!(
            "SUMMARY| {members} members, {rate} msg/s: server CPU · per delivery | {} | {} | {} | {} floor, {} ws | ≤ 1.25× floor |",
            cell(fl),
            cell(ws),
            cell(cd),
            ratio(us(cd), us(fl)),
            ratio(us(cd), us(ws)),
        );
        let lat = |s| {
            format!(
                "{} / {} ms",
                sp(s, &|w| Some(w.lat_p50_ms)).show(1),
                sp(s, &|w| Some(w.lat_p99_ms)).show(1)
            )
        };
        let sweep = sp(fl, &|w| w.sweep_ms.map(|x| x.0));
        println!(
            "SUMMARY| same: delivery latency p50 / p99 (floor sweep p50) | {} ({} ms) | {} | {} | p99 {} sweep, p50 {} half-sweep | p99 ≤ 1.25× sweep, p50 ≤ 1.25× half |",
            lat(fl),
            sweep.show(1),
            lat(ws),
            lat(cd),
            ratio(sp(cd, &|w| Some(w.lat_p99_ms)).med, sweep.med),
            ratio(sp(cd, &|w| Some(w.lat_p50_ms)).med, sweep.med / 2.0),
        );
        let at_arrival = |s, q: fn(&(f64, f64)) -> f64| sp(s, &|w| w.arrival_ms.as_ref().map(q));
        let arrived = |s| {
            format!(
                "{} / {} ms",
                at_arrival(s, |a| a.0).show(1),
                at_arrival(s, |a| a.1).show(1)
            )
        };
        println!(
            "SUMMARY| same, at arrival in the socket: latency p50 / p99 (floor sweep p50) | {} ({} ms) | {} | {} | p99 {} sweep, p50 {} half-sweep | p99 ≤ 1.25× sweep, p50 ≤ 1.25× half |",
            arrived(fl),
            sweep.show(1),
            arrived(ws),
            arrived(cd),
            ratio(at_arrival(cd, |a| a.1).med, sweep.med),
            ratio(at_arrival(cd, |a| a.0).med, sweep.med / 2.0),
        );
        let durable = idx("durable floor");
        if durable.is_some() {
            let first = |s| sp(s, &|w| w.first_arrival_ms.map(|x| x.0));
            println!(
                "SUMMARY| same, at arrival, against the durable floor (stores and syncs each message before its sweep): p50 / p99 (first arrival p50) | {} ({} ms) | | {} ({} ms) | p50 {}, p99 {} the durable floor's | (report) |",
                arrived(durable),
                first(durable).show(2),
                arrived(cd),
                first(cd).show(2),
                ratio(at_arrival(cd, |a| a.0).med, at_arrival(durable, |a| a.0).med),
                ratio(at_arrival(cd, |a| a.1).med, at_arrival(durable, |a| a.1).med),
            );
        }
    }
    if failed {
        println!(
            "\nsome windows were incomplete (deliveries missing or connections closed): see above"
        );
    }
}
