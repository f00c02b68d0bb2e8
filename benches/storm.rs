//! Reconnect storm (issue 7 item 6): see benches/hot/storm.rs for what is measured and the
//! clients' reconnect policy. chatd only (the Node peer keeps no messages to resume).
//!
//! Run: `cargo bench --bench storm` (`-- --smoke`, `--runs N` restarts, `--clients N`,
//! `--rooms R`, `--no-pin`).

#[path = "hot/mod.rs"]
mod hot;

use std::time::Duration;

use hot::setup::Spread;
use hot::storm::{run, Cfg};

fn main() {
    let (flags, pin, nofile) = hot::setup::prologue();
    let num = |name: &str, smoke: usize, full: usize| flags.num(name, smoke, full);
    let cfg = Cfg {
        clients: num("--clients", 60, 10_000),
        rooms: num("--rooms", 4, 50),
        publish_every: Duration::from_millis(500),
        steady: Duration::from_secs(if flags.smoke { 1 } else { 3 }),
        restarts: flags.runs.unwrap_or(if flags.smoke { 1 } else { 3 }),
        sync_limit: Duration::from_secs(60),
        server_core: pin.server_core,
    };
    if (cfg.clients + 100) as u64 > nofile {
        eprintln!(
            "open-files limit {nofile} is too low for {} clients",
            cfg.clients
        );
        std::process::exit(1);
    }
    println!("storm: {} clients in {} rooms (one publisher per room, 2 msg/s each), {} restarts; pinning {pin:?}", cfg.clients, cfg.rooms, cfg.restarts);
    let runs = match run(&cfg, |l| eprintln!("{l}")) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("storm failed: {e}");
            std::process::exit(1);
        }
    };
    let sp =
        |f: &dyn Fn(&hot::storm::Run) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
    println!();
    println!("| restart | SIGTERM → exit / start → listening (s) | listening → all synced (s) | synced p50 / p99 (s) | missed | out of order | witness ping p50 / p99 ms (no rooms) | witness in all rooms: synced at s, ping p99 ms (until 1 s after all synced) | connect attempts (failed) | other closes |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (i, r) in runs.iter().enumerate() {
        println!(
            "| {} | {:.2} / {:.2} | {} | {:.2} / {:.2} | {} | {} | {:.1} / {:.1} ({} pings) | {}, {:.1} ({} pings) | {} ({}) | {:?} |",
            i + 1,
            r.shutdown_secs,
            r.restart_secs,
            r.all_synced_secs.map_or(format!("not all: {}/{}", r.synced, r.clients), |s| format!("{s:.2}")),
            r.sync_p50_secs, r.sync_p99_secs, r.missed, r.disorder,
            r.witness_plain_p50_ms, r.witness_plain_p99_ms, r.witness_plain_pings,
            r.witness_rooms_synced_secs.map_or("not within the run".into(), |s| format!("{s:.2}")),
            r.witness_rooms_p99_ms, r.witness_rooms_pings,
            r.attempts, r.failed_attempts, r.other_closes,
        );
    }
    println!(
        "| median (range) | | {} | | {} | | p99 {} | {} | | |",
        sp(&|r| r.all_synced_secs.unwrap_or(f64::NAN)).show(2),
        sp(&|r| r.missed as f64).show(0),
        sp(&|r| r.witness_plain_p99_ms).show(1),
        sp(&|r| r.witness_rooms_p99_ms).show(1),
    );
    let missed: u64 = runs.iter().map(|r| r.missed).sum();
    let all = sp(&|r| r.all_synced_secs.unwrap_or(f64::NAN));
    println!(
        "\nSUMMARY| reconnect storm, {} clients in {} rooms: listening → all synced; missed; witness ping p99 | | | {} s; {missed} missed; ping p99 {} ms | {}/{} restarts all synced | ≤ 5 s, 0 missed, p99 ≤ 50 ms |",
        cfg.clients,
        cfg.rooms,
        all.show(2),
        sp(&|r| r.witness_plain_p99_ms).show(1),
        all.n,
        runs.len(),
    );
}
