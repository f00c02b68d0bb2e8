//! Idle memory with distinct accounts (issue 7 item 5): N connections (default 10,000), each a
//! different account (created with `chatd admin import`: users and session tokens, no password
//! hashing), authenticated by token and joined to one of R rooms (default 100 rooms of 100),
//! measured after a warm-up of 500 such connections: server RSS delta per connection, chatd vs
//! the Node `ws` peer (same clients, same rooms). A fresh server per run; median (range).
//!
//! Run: `cargo bench --bench idle` (`-- --smoke`, `--runs N`, `--conns N`, `--warm N`,
//! `--rooms R`, `--no-pin`).

#[path = "hot/mod.rs"]
mod hot;

use hot::idle::{measure, Idle};
use hot::net::Net;
use hot::procs::{import_accounts, start_chatd, start_peer};
use hot::setup::{ratio, Spread};

fn main() {
    let (flags, pin, nofile) = hot::setup::prologue();
    let num = |name: &str, smoke: usize, full: usize| flags.num(name, smoke, full);
    let conns = num("--conns", 200, 10_000);
    let warm = num("--warm", 20, 500);
    let rooms = num("--rooms", 4, 100);
    let runs = flags.runs.unwrap_or(if flags.smoke { 1 } else { 3 });
    if (conns + warm + 100) as u64 > nofile {
        eprintln!(
            "open-files limit {nofile} is too low for {} connections",
            conns + warm
        );
        std::process::exit(1);
    }
    println!("idle: {conns} connections after a {warm}-connection warm-up, distinct accounts, {rooms} rooms, {runs} runs; pinning {pin:?}");
    let mut chatd: Vec<Idle> = Vec::new();
    let mut peer: Vec<Idle> = Vec::new();
    for run in 0..runs {
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = import_accounts(dir.path(), "i", warm + conns);
        {
            let server = start_chatd(
                "chatd",
                dir.path(),
                "127.0.0.1:0",
                &["--max-connections", "20000"],
                pin.server_core,
            );
            let mut net = Net::new(0);
            match measure(&mut net, &server, &tokens, warm, conns, rooms) {
                Ok(m) => {
                    eprintln!("  run {} chatd: {} -> {} KiB: {:.2} KiB per connection (opened in {:.1} s, {} presence frames)", run + 1, m.rss_before_kib, m.rss_after_kib, m.per_conn_kib, m.open_secs, m.settle_frames);
                    chatd.push(m);
                }
                Err(e) => eprintln!("  run {} chatd failed: {e}", run + 1),
            }
        }
        if let Some(server) = start_peer(pin.server_core, true) {
            let mut net = Net::new(0);
            match measure(&mut net, &server, &tokens, warm, conns, rooms) {
                Ok(m) => {
                    eprintln!(
                        "  run {} node ws: {} -> {} KiB: {:.2} KiB per connection",
                        run + 1,
                        m.rss_before_kib,
                        m.rss_after_kib,
                        m.per_conn_kib
                    );
                    peer.push(m);
                }
                Err(e) => eprintln!("  run {} node ws failed: {e}", run + 1),
            }
        }
    }
    let c = Spread::of(&chatd.iter().map(|m| m.per_conn_kib).collect::<Vec<_>>());
    let p = Spread::of(&peer.iter().map(|m| m.per_conn_kib).collect::<Vec<_>>());
    println!();
    println!("| server | KiB RSS per idle connection ({conns}, distinct accounts, joined) |");
    println!("| --- | --- |");
    println!("| node ws | {} |", p.show(2));
    println!("| chatd | {} |", c.show(2));
    println!("\nchatd / ws: {}", ratio(c.med, p.med));
    println!(
        "\nSUMMARY| {conns} idle connections, distinct accounts, joined ({rooms} rooms), after {warm} warm-up: KiB RSS each | | {} | {} | {} ws | ≤ 4 KiB |",
        p.show(2),
        c.show(2),
        ratio(c.med, p.med)
    );
}
