//! Saturation (issue 7 item 3): 1000 members in one room, a few publishers (members) each
//! keeping W messages in flight, a new one as soon as the previous one is back (default: its own
//! copy of the broadcast; `--flow ack` to use acks). Deliveries/s inside the window, server CPU
//! (% of a core, µs per delivery) and the generator's CPU, for the floor, the Node `ws` peer and
//! chatd in the same run. Median (range) of the runs.
//!
//! Run: `cargo bench --bench saturation` (`-- --smoke`, `--runs N`, `--seconds S`, `--members N`,
//! `--publishers P`, `--inflight W`, `--flow echo|ack`, `--no-pin`).

#[path = "hot/mod.rs"]
mod hot;

use hot::fanout::{bring_up_or_exit, saturate, Flow, Saturated};
use hot::setup::{ratio, Spread};
use std::time::Duration;

fn main() {
    if std::env::args().any(|a| a == "--serve-floor") {
        hot::procs::serve_floor_main();
    }
    let (flags, pin, _) = hot::setup::prologue();
    let num = |name: &str, smoke: usize, full: usize| flags.num(name, smoke, full);
    let members = num("--members", 50, 1000);
    let publishers = num("--publishers", 2, 4);
    let inflight = num("--inflight", 2, 4);
    let flow = if flags.get("--flow") == Some("ack") {
        Flow::Ack
    } else {
        Flow::Echo
    };
    let secs = flags.seconds.unwrap_or(if flags.smoke { 1.0 } else { 5.0 });
    let runs = flags.runs.unwrap_or(if flags.smoke { 1 } else { 3 });
    println!(
        "saturation: {members} members, {publishers} publishers x {inflight} in flight (flow: {flow:?}), {secs} s windows, {runs} runs; pinning {pin:?}"
    );
    let mut rig = bring_up_or_exit(members, pin, false);
    let names: Vec<String> = rig.servers.iter().map(|s| s.name.clone()).collect();
    let mut results: Vec<Vec<Saturated>> = vec![Vec::new(); names.len()];
    let mut tag = 0;
    for run in 0..runs {
        for s in 0..names.len() {
            tag += 1;
            let g = rig.group(s, members);
            let quiet = rig.quiet_others(s);
            let w = saturate(&mut rig.net, &g, tag, publishers, inflight, secs, flow);
            drop(quiet);
            eprintln!(
                "  run {} {}: {:.0} deliveries/s ({} sent), cpu {} ({} µs/delivery), generator {:.0}%, ksoftirqd {}, p50 {:.1} ms p99 {:.1} ms, complete {}, closed {}, errors {}",
                run + 1,
                names[s],
                w.per_sec,
                w.sent,
                w.server_cpu_pct.map_or("n/a".into(), |c| format!("{c:.0}%")),
                w.us_per_delivery.map_or("n/a".into(), |c| format!("{c:.1}")),
                w.gen_cpu_pct,
                w.softirqd_pct.map_or("n/a".into(), |c| format!("{c:.0}%")),
                w.lat_p50_ms,
                w.lat_p99_ms,
                w.complete,
                w.closed,
                w.errors
            );
            results[s].push(w);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let rate = |s: usize| Spread::of(&results[s].iter().map(|w| w.per_sec).collect::<Vec<_>>());
    let ws = names.iter().position(|n| n == "node ws");
    println!();
    println!("| server | deliveries/s | server CPU % | µs CPU / delivery | latency p50 / p99 ms | generator CPU % | ksoftirqd CPU % | vs ws (deliveries/s) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for s in 0..names.len() {
        let r = &results[s];
        let cpu = Spread::of(
            &r.iter()
                .filter_map(|w| w.server_cpu_pct)
                .collect::<Vec<_>>(),
        );
        let us = Spread::of(
            &r.iter()
                .filter_map(|w| w.us_per_delivery)
                .collect::<Vec<_>>(),
        );
        let gen = Spread::of(&r.iter().map(|w| w.gen_cpu_pct).collect::<Vec<_>>());
        let p50 = Spread::of(&r.iter().map(|w| w.lat_p50_ms).collect::<Vec<_>>());
        let p99 = Spread::of(&r.iter().map(|w| w.lat_p99_ms).collect::<Vec<_>>());
        println!(
            "| {} | {} | {} | {} | {} / {} | {} | {} | {} |",
            names[s],
            rate(s).show(0),
            cpu.show(0),
            us.show(1),
            p50.show(1),
            p99.show(1),
            gen.show(0),
            Spread::of(&r.iter().filter_map(|w| w.softirqd_pct).collect::<Vec<_>>()).show(0),
            ws.map_or("n/a".into(), |i| ratio(rate(s).med, rate(i).med)),
        );
    }
    let cell = |s: Option<usize>| {
        s.map_or("n/a".into(), |s| {
            let r = &results[s];
            format!(
                "{}/s · {} µs · gen {} %",
                rate(s).show(0),
                Spread::of(
                    &r.iter()
                        .filter_map(|w| w.us_per_delivery)
                        .collect::<Vec<_>>()
                )
                .show(1),
                Spread::of(&r.iter().map(|w| w.gen_cpu_pct).collect::<Vec<_>>()).show(0)
            )
        })
    };
    let cd = names.iter().position(|n| n == "chatd");
    println!(
        "\nSUMMARY| {members} members, {publishers}×{inflight} in flight: deliveries/s · CPU per delivery · generator CPU | {} | {} | {} | {} ws | ≥ 3× ws |",
        cell(Some(0)),
        cell(ws),
        cell(cd),
        match (cd, ws) {
            (Some(c), Some(w)) => ratio(rate(c).med, rate(w).med),
            _ => "n/a".into(),
        }
    );
    println!("\nA generator CPU near 100% means the load tool, not the server, set the pace: compare µs CPU per delivery then.");
}
